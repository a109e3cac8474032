"""Tests of torchslim.train: config validation, LR schedules, the training loop, callbacks, NaN guard and
exact checkpoint/resume (the key acceptance test: interrupted + resumed == uninterrupted, bit for bit)."""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset, TensorDataset

from torchslim.core.errors import CheckpointError, ConfigError, NumericalError
from torchslim.train import (
    Callback,
    EvalCallback,
    LRSchedule,
    TrainConfig,
    Trainer,
    TrainResult,
    top1_accuracy,
)

torch.set_num_threads(1)


# ---- helpers ------------------------------------------------------------------------------------------


def digits() -> tuple[TensorDataset, TensorDataset]:
    """sklearn digits (1797 8x8 images), scaled to [0, 1]: 1400 train / 397 test."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.data / 16.0, dtype=torch.float32)
    y = torch.tensor(d.target, dtype=torch.int64)
    return TensorDataset(x[:1400], y[:1400]), TensorDataset(x[1400:], y[1400:])


def make_model(seed: int = 0) -> nn.Module:
    """A tiny MLP with BatchNorm (buffers) and dropout (global RNG) to exercise every piece of state."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(64, 48), nn.BatchNorm1d(48), nn.ReLU(), nn.Dropout(0.2), nn.Linear(48, 10))


def weights_equal(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


class Interrupt(Exception):
    pass


class KillAt(Callback):
    """Simulates a crash: raises from ``on_step_end`` at step ``k``."""

    def __init__(self, k: int) -> None:
        self.k = k

    def on_step_end(self, trainer: Any, step: int, loss: float) -> None:
        if step == self.k:
            raise Interrupt(f"killed at step {step}")


TRAIN, TEST = digits()


# ---- config -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "bad, field",
    [
        ({"lr": 0.0}, "lr"),
        ({"lr": -1.0}, "lr"),
        ({"epochs": 0}, "epochs"),
        ({"batch_size": 0}, "batch_size"),
        ({"momentum": 1.0}, "momentum"),
        ({"weight_decay": -1e-4}, "weight_decay"),
        ({"optimizer": "lbfgs"}, "optimizer"),
        ({"schedule": "step"}, "schedule"),
        ({"max_steps": 0}, "max_steps"),
        ({"grad_clip": 0.0}, "grad_clip"),
        ({"label_smoothing": 1.0}, "label_smoothing"),
        ({"checkpoint_every_steps": 0}, "checkpoint_every_steps"),
        ({"num_workers": -1}, "num_workers"),
        ({"num_threads": 0}, "num_threads"),
        ({"epoch": 3}, "epoch"),  # unknown field (typo)
    ],
)
def test_config_rejects_bad_values_naming_the_field(bad: dict[str, Any], field: str) -> None:
    with pytest.raises(ConfigError, match=rf"train\.{field}"):
        TrainConfig(**bad)


def test_config_defaults_and_round_trip() -> None:
    cfg = TrainConfig(epochs=3, lr=0.1, optimizer="adamw", max_steps=10, grad_clip=1.0)
    assert TrainConfig().schedule == "onecycle" and TrainConfig().batch_size == 128
    assert TrainConfig.type_name == "train"
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg
    assert TrainConfig.from_yaml(cfg.to_yaml()) == cfg


# ---- LR schedule --------------------------------------------------------------------------------------


def test_lr_schedules_match_their_formulas() -> None:
    n, lr = 100, 0.2
    const = LRSchedule("constant", lr, n)
    assert all(const.lr_at(s) == lr for s in range(n))
    cos = LRSchedule("cosine", lr, n)
    for s in (0, 10, 50, 99):  # exact formula, allclose 1e-12
        assert math.isclose(cos.lr_at(s), lr * 0.5 * (1 + math.cos(math.pi * s / n)), rel_tol=1e-12)
    one = LRSchedule("onecycle", lr, n)
    lrs = [one.lr_at(s) for s in range(n)]
    assert math.isclose(lrs[0], lr / 25, rel_tol=1e-12)  # warm-up starts at lr / div_factor
    assert max(lrs) == pytest.approx(lr, rel=1e-12) and lrs.index(max(lrs)) == 30  # peak after 30% of steps
    assert all(a <= b for a, b in zip(lrs[:30], lrs[1:31], strict=True))  # increasing warm-up
    assert all(a >= b for a, b in zip(lrs[30:], lrs[31:], strict=False))  # decreasing annealing
    assert lrs[-1] < lr / 100


def test_trainer_applies_the_schedule_per_step() -> None:
    cfg = TrainConfig(epochs=2, batch_size=200, lr=0.1, schedule="cosine")
    tr = Trainer(make_model(), cfg, progress=False)
    tr.fit(TRAIN)
    total = 2 * math.ceil(1400 / 200)
    expected = [0.1 * 0.5 * (1 + math.cos(math.pi * s / total)) for s in range(total)]
    got = [lr for _, _, lr in tr.metrics.steps]
    assert got == pytest.approx(expected, rel=1e-12)


# ---- training loop ------------------------------------------------------------------------------------


def test_fit_learns_digits_and_eval_callback_records_accuracy() -> None:
    model = make_model()
    ev = EvalCallback(TEST)
    res = Trainer(model, TrainConfig(epochs=4, batch_size=64, lr=0.1), callbacks=[ev], progress=False).fit(
        TRAIN
    )
    assert isinstance(res, TrainResult)
    assert res.steps == 4 * math.ceil(1400 / 64) and res.epochs == 4
    assert [h["epoch"] for h in res.history] == [0, 1, 2, 3]
    assert res.history[-1]["loss"] < res.history[0]["loss"]
    # metric: top-1 accuracy on the 397 held-out digits; a linear model reaches ~0.93, we require >= 0.90
    assert res.history[-1]["val_acc"] >= 0.90
    # the callback's figure equals an independent evaluation of the final model (exact)
    assert res.history[-1]["val_acc"] == top1_accuracy(model, TEST)
    assert [e for e, _ in ev.results] == [0, 1, 2, 3]
    assert model.training  # evaluation restored train mode


def test_default_step_fn_is_label_smoothed_cross_entropy_on_the_seeded_order() -> None:
    cfg = TrainConfig(epochs=1, batch_size=32, lr=0.05, label_smoothing=0.1, max_steps=1, seed=3)
    model = make_model()
    ref_model = make_model()
    tr = Trainer(model, cfg, progress=False)
    order = torch.randperm(len(TRAIN), generator=torch.Generator().manual_seed(3))[:32]
    x, y = TRAIN.tensors[0][order], TRAIN.tensors[1][order]
    ref_model.train()
    torch.manual_seed(3)  # the trainer seeds the global RNG with cfg.seed: same dropout mask
    expected = F.cross_entropy(ref_model(x), y, label_smoothing=0.1).item()
    tr.fit(TRAIN)
    assert tr.metrics.steps[0][1] == pytest.approx(expected, rel=1e-6)  # allclose 1e-6


def test_max_steps_stops_training() -> None:
    res = Trainer(make_model(), TrainConfig(epochs=5, batch_size=100, max_steps=17), progress=False).fit(
        TRAIN
    )
    assert res.steps == 17
    assert res.epochs == 2  # 14 steps per epoch: one full epoch + a partial one
    assert res.history[-1]["step"] == 17


def test_extra_loss_hook_is_added_to_the_loss() -> None:
    class Const(Callback):
        def extra_loss(self, trainer: Any, model: nn.Module) -> torch.Tensor:
            return torch.tensor(2.5)

    def zero_step(model: nn.Module, batch: Any) -> torch.Tensor:
        return (model(batch[0]) * 0.0).sum()

    tr = Trainer(
        make_model(),
        TrainConfig(max_steps=3, batch_size=64),
        step_fn=zero_step,
        callbacks=[Const()],
        progress=False,
    )
    tr.fit(TRAIN)
    assert [loss for _, loss, _ in tr.metrics.steps] == [2.5, 2.5, 2.5]  # exact


def test_extra_loss_regulariser_changes_the_weights() -> None:
    class L2(Callback):
        def extra_loss(self, trainer: Any, model: nn.Module) -> torch.Tensor:
            return 1.0 * sum((p**2).sum() for p in model.parameters())  # type: ignore[return-value]

    cfg = TrainConfig(epochs=1, batch_size=64, lr=0.05, weight_decay=0.0)
    a, b = make_model(), make_model()
    Trainer(a, cfg, progress=False).fit(TRAIN)
    Trainer(b, cfg, callbacks=[L2()], progress=False).fit(TRAIN)
    norm = lambda m: sum(float((p.detach() ** 2).sum()) for p in m.parameters())  # noqa: E731
    assert norm(b) < 0.5 * norm(a)


def test_progress_false_is_silent(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    Trainer(make_model(), TrainConfig(max_steps=3), checkpoint_dir=tmp_path, progress=False).fit(
        TRAIN, resume=True
    )
    out = capsys.readouterr()
    assert out.out == "" and out.err == ""


def test_num_threads_only_when_asked() -> None:
    before = torch.get_num_threads()
    Trainer(make_model(), TrainConfig(max_steps=1), progress=False).fit(TRAIN)
    assert torch.get_num_threads() == before
    try:
        Trainer(make_model(), TrainConfig(max_steps=1, num_threads=2), progress=False).fit(TRAIN)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_bad_inputs_get_clear_errors() -> None:
    with pytest.raises(ConfigError, match="empty"):
        Trainer(make_model(), TrainConfig(), progress=False).fit(
            TensorDataset(torch.zeros(0, 64), torch.zeros(0))
        )
    with pytest.raises(ConfigError, match="checkpoint_dir"):
        Trainer(make_model(), TrainConfig(), progress=False).fit(TRAIN, resume=True)
    with pytest.raises(ConfigError, match="TrainConfig"):
        Trainer(make_model(), {"lr": 0.1}, progress=False)  # type: ignore[arg-type]


# ---- NaN / Inf guard ----------------------------------------------------------------------------------


def test_nonfinite_loss_raises_numerical_error_naming_step_epoch_loss() -> None:
    def nan_at_5(model: nn.Module, batch: Any) -> torch.Tensor:
        loss = F.cross_entropy(model(batch[0]), batch[1])
        return loss * float("nan") if tr.step + 1 == 5 else loss

    tr = Trainer(make_model(), TrainConfig(epochs=1, batch_size=64), step_fn=nan_at_5, progress=False)
    with pytest.raises(NumericalError, match=r"step 5 \(epoch 0\): loss = nan.*lower lr.*grad_clip"):
        tr.fit(TRAIN)


def test_nonfinite_gradient_raises_numerical_error() -> None:
    class Sqrt(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = nn.Parameter(torch.zeros(3))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x[:, :3] * torch.sqrt(self.w)  # d sqrt(w)/dw = inf at w = 0, loss stays finite

    def step(model: nn.Module, batch: Any) -> torch.Tensor:
        return model(batch[0]).sum()

    with pytest.raises(NumericalError, match=r"non-finite gradient at step 1 \(epoch 0\): loss = 0.0"):
        Trainer(Sqrt(), TrainConfig(max_steps=2), step_fn=step, progress=False).fit(TRAIN)


def test_exploding_lr_is_caught() -> None:
    with pytest.raises(NumericalError, match="lower lr"):
        Trainer(
            make_model(), TrainConfig(epochs=2, lr=1e12, momentum=0.0, schedule="constant"), progress=False
        ).fit(TRAIN)


# ---- checkpoint / resume ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "cfg, kill_at",
    [
        # mid-epoch checkpoints every 5 steps, crash in epoch 1 between two checkpoints
        (TrainConfig(epochs=3, batch_size=64, lr=0.1, checkpoint_every_steps=5), 31),
        # epoch-end checkpoints only, AdamW, grad clipping, label smoothing: crash in the middle of epoch 2
        (
            TrainConfig(
                epochs=3,
                batch_size=100,
                lr=0.01,
                optimizer="adamw",
                schedule="cosine",
                grad_clip=0.5,
                label_smoothing=0.1,
            ),
            35,
        ),
    ],
)
def test_interrupted_and_resumed_run_equals_uninterrupted_run_exactly(
    cfg: TrainConfig, kill_at: int, tmp_path: Path
) -> None:
    ref = make_model()
    ref_res = Trainer(ref, cfg, callbacks=[EvalCallback(TEST)], progress=False).fit(TRAIN)

    crashed = make_model()
    with pytest.raises(Interrupt):
        Trainer(
            crashed,
            cfg,
            callbacks=[EvalCallback(TEST), KillAt(kill_at)],
            checkpoint_dir=tmp_path,
            progress=False,
        ).fit(TRAIN, resume=True)
    assert (tmp_path / "last.pt").exists()

    # a fresh process would rebuild the model from scratch: the weights must come from last.pt
    resumed = make_model(seed=123)
    res = Trainer(resumed, cfg, callbacks=[EvalCallback(TEST)], checkpoint_dir=tmp_path, progress=False).fit(
        TRAIN, resume=True
    )
    assert weights_equal(resumed, ref)  # metric: torch.equal on every parameter and buffer
    assert res.steps == ref_res.steps
    assert res.history == ref_res.history  # losses, lrs and accuracies identical, including pre-crash epochs


class ItemDataset(Dataset):  # type: ignore[type-arg]
    """A generic map-style data set (not a TensorDataset): batches go through the DataLoader + collate path."""

    def __init__(self, base: TensorDataset) -> None:
        self.base = base

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.base[i]


def test_generic_dataset_path_equals_tensor_fast_path_and_resumes_exactly(tmp_path: Path) -> None:
    cfg = TrainConfig(epochs=2, batch_size=64, lr=0.1, checkpoint_every_steps=6)
    fast = make_model()
    Trainer(fast, cfg, progress=False).fit(TRAIN)  # TensorDataset: sliced batches
    crashed = make_model()
    with pytest.raises(Interrupt):
        Trainer(crashed, cfg, callbacks=[KillAt(27)], checkpoint_dir=tmp_path, progress=False).fit(
            ItemDataset(TRAIN)
        )
    resumed = make_model(seed=5)
    Trainer(resumed, cfg, checkpoint_dir=tmp_path, progress=False).fit(ItemDataset(TRAIN), resume=True)
    assert weights_equal(resumed, fast)  # exact: same batches, same order, same result


def test_checkpoint_is_weights_only_loadable_and_complete(tmp_path: Path) -> None:
    cfg = TrainConfig(epochs=1, batch_size=64, checkpoint_every_steps=4, max_steps=10)
    model = make_model()
    Trainer(model, cfg, checkpoint_dir=tmp_path, progress=False).fit(TRAIN)
    state = torch.load(tmp_path / "last.pt", weights_only=True)
    assert {"model", "optimizer", "schedule", "step", "epoch", "rng", "data", "history", "config"} <= set(
        state
    )
    assert set(state["rng"]) >= {"torch", "numpy", "python"}
    assert state["step"] == 10 and state["data"]["seed"] == 0
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state["model"].items())
    assert not list(tmp_path.glob(".*.tmp"))  # atomic write left no temp file


def test_resume_without_checkpoint_starts_fresh_and_says_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = TrainConfig(epochs=1, batch_size=64, max_steps=6)
    a = make_model()
    Trainer(a, cfg, checkpoint_dir=tmp_path / "x", progress=True).fit(TRAIN, resume=True)
    assert "starting fresh" in capsys.readouterr().err
    b = make_model()
    Trainer(b, cfg, progress=False).fit(TRAIN)
    assert weights_equal(a, b)
    c = make_model()
    res = Trainer(c, cfg, checkpoint_dir=tmp_path / "x", progress=True).fit(TRAIN, resume=True)
    assert "resuming from" in capsys.readouterr().err
    # a finished run: resume loads the final state and trains nothing more
    assert res.steps == 6 and weights_equal(c, a)


def test_resume_refuses_other_config_or_corrupted_file(tmp_path: Path) -> None:
    cfg = TrainConfig(epochs=1, batch_size=64, max_steps=4)
    Trainer(make_model(), cfg, checkpoint_dir=tmp_path, progress=False).fit(TRAIN)
    other = TrainConfig(epochs=1, batch_size=32, max_steps=4)
    with pytest.raises(CheckpointError, match="batch_size: checkpoint 64 vs now 32"):
        Trainer(make_model(), other, checkpoint_dir=tmp_path, progress=False).fit(TRAIN, resume=True)
    with pytest.raises(CheckpointError, match="1400 examples"):
        Trainer(make_model(), cfg, checkpoint_dir=tmp_path, progress=False).fit(TEST, resume=True)
    (tmp_path / "last.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="corrupted"):
        Trainer(make_model(), cfg, checkpoint_dir=tmp_path, progress=False).fit(TRAIN, resume=True)


_KILL_SCRIPT = textwrap.dedent(
    """
    import os, signal, sys, torch
    sys.path.insert(0, {testdir!r})
    from test_trainer import TRAIN, make_model
    from torchslim.train import Trainer, TrainConfig
    torch.set_num_threads(1)
    cfg = TrainConfig(epochs=2, batch_size=64, lr=0.1, checkpoint_every_steps=3)
    class Kill:
        def on_step_end(self, trainer, step, loss):
            if step == int(sys.argv[2]):
                os.kill(os.getpid(), signal.SIGKILL)
    kill = [Kill()] if int(sys.argv[2]) > 0 else []
    model = make_model()
    Trainer(model, cfg, callbacks=kill, checkpoint_dir=sys.argv[1], progress=False).fit(TRAIN, resume=True)
    torch.save(model.state_dict(), os.path.join(sys.argv[1], "final.pt"))
    """
)


@pytest.mark.slow  # two fresh interpreters importing torch: ~20 s on the shared 2-core machine
def test_sigkilled_process_resumes_to_identical_weights(tmp_path: Path) -> None:
    script = tmp_path / "run.py"
    script.write_text(_KILL_SCRIPT.format(testdir=str(Path(__file__).parent)))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    ckpt = tmp_path / "ckpt"
    killed = subprocess.run(
        [sys.executable, str(script), str(ckpt), "29"], env=env, capture_output=True, timeout=120
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr.decode()
    assert not (ckpt / "final.pt").exists()
    done = subprocess.run(
        [sys.executable, str(script), str(ckpt), "0"], env=env, capture_output=True, timeout=120
    )
    assert done.returncode == 0, done.stderr.decode()
    resumed = torch.load(ckpt / "final.pt", weights_only=True)

    ref = make_model()
    Trainer(ref, TrainConfig(epochs=2, batch_size=64, lr=0.1, checkpoint_every_steps=3), progress=False).fit(
        TRAIN
    )
    assert all(torch.equal(resumed[k], v) for k, v in ref.state_dict().items())  # exact


class StepCounter:
    """A stateful callback: counts steps and keeps the running sum of losses (a tensor) for the test."""

    def __init__(self) -> None:
        self.steps = 0
        self.loss_sum = torch.zeros(())

    def on_step_end(self, trainer: Trainer, step: int, loss: float) -> None:
        self.steps += 1
        self.loss_sum = self.loss_sum + loss

    def state_dict(self) -> dict[str, object]:
        return {"steps": self.steps, "loss_sum": self.loss_sum.clone()}

    def load_state_dict(self, state: dict[str, object]) -> None:
        self.steps = int(state["steps"])  # type: ignore[call-overload]
        self.loss_sum = state["loss_sum"].clone()  # type: ignore[attr-defined]


def test_stateful_callback_state_is_checkpointed_and_restored(tmp_path: Path) -> None:
    cfg = TrainConfig(epochs=2, batch_size=64, lr=0.1, checkpoint_every_steps=5)
    ref_cb = StepCounter()
    Trainer(make_model(), cfg, callbacks=[ref_cb], progress=False).fit(TRAIN)
    with pytest.raises(Interrupt):
        Trainer(make_model(), cfg, callbacks=[StepCounter(), KillAt(23)], checkpoint_dir=tmp_path,
                progress=False).fit(TRAIN)
    cb = StepCounter()
    Trainer(make_model(), cfg, callbacks=[cb], checkpoint_dir=tmp_path, progress=False).fit(TRAIN, resume=True)
    # metric: exact equality of the callback's counters with an uninterrupted run (restored, not restarted)
    assert cb.steps == ref_cb.steps
    assert torch.equal(cb.loss_sum, ref_cb.loss_sum)
    # a resume that lacks the callback's saved state is refused with a message naming it
    (tmp_path / "other").mkdir()
    Trainer(make_model(), cfg.model_copy(update={"max_steps": 3}), checkpoint_dir=tmp_path / "other",
            progress=False).fit(TRAIN)
    with pytest.raises(CheckpointError, match="StepCounter"):
        Trainer(make_model(), cfg.model_copy(update={"max_steps": 3}), callbacks=[StepCounter()],
                checkpoint_dir=tmp_path / "other", progress=False).fit(TRAIN, resume=True)
