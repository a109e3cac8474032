"""Self-ensemble / self-distillation (Xu et al. 2020, SDA and SDV): teacher, loss, training loop."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import TensorDataset

from torchslim.core.errors import ConfigError
from torchslim.distillation.methods.self_distill import (
    SelfDistill,
    SnapshotTeacher,
    self_distill,
    self_distill_loss,
)
from torchslim.train import TrainConfig


def _net() -> nn.Sequential:
    return nn.Sequential(nn.Linear(5, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3))


def _perturb(m: nn.Sequential, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(torch.randn(p.shape, generator=g))
        bn = m[1]
        assert isinstance(bn, nn.BatchNorm1d)
        assert (
            bn.running_mean is not None and bn.running_var is not None and bn.num_batches_tracked is not None
        )
        bn.running_mean.add_(torch.randn(8, generator=g))
        bn.running_var.mul_(1 + torch.rand(8, generator=g))
        bn.num_batches_tracked.add_(seed)


def _states(
    k_total: int,
) -> tuple[nn.Sequential, list[dict[str, torch.Tensor]], SnapshotTeacher, SnapshotTeacher]:
    torch.manual_seed(0)
    m = _net()
    sda, sdv = SnapshotTeacher(m, k=3, mode="sda"), SnapshotTeacher(m, k=3, mode="sdv")
    states = []
    for i in range(k_total):
        _perturb(m, i + 1)
        states.append({k: v.clone() for k, v in m.state_dict().items()})
        sda.push(m)
        sdv.push(m)
    return m, states, sda, sdv


def test_sda_teacher_parameters_are_the_mean_of_the_last_k_snapshots() -> None:
    """Metric: max abs difference of every parameter/float buffer to the hand-computed mean of the last K=3 of
    5 snapshots; tolerance 1e-6. Integer buffers come from the newest snapshot (exact)."""
    _, states, sda, _ = _states(5)
    assert len(sda) == 3
    avg = sda.averaged_state()
    last = states[-3:]
    for name, v in avg.items():
        if v.is_floating_point():
            ref = (last[0][name] + last[1][name] + last[2][name]) / 3
            assert torch.allclose(v, ref, atol=1e-6), name
        else:
            assert torch.equal(v, last[-1][name]), name
    # the teacher model uses exactly these parameters (eval mode: BN with the averaged running stats)
    x = torch.randn(6, 5)
    ref_model = _net().eval()
    ref_model.load_state_dict({k: v for k, v in avg.items()})
    assert torch.allclose(sda.logits(x), ref_model(x), atol=1e-6)
    # batch_norm="batch": the same averaged weights, BatchNorm normalising with the batch's statistics
    m, _, _, _ = _states(0)
    batch_t = SnapshotTeacher(m, k=3, mode="sda", batch_norm="batch")
    for s in last:
        m.load_state_dict(s)
        batch_t.push(m)
    ref_model.train()
    with torch.no_grad():
        assert torch.allclose(batch_t.logits(x), ref_model(x), atol=1e-5)


def test_sdv_teacher_logits_are_the_mean_of_the_snapshots_logits() -> None:
    """Metric: max abs difference to the mean of the K=3 newest snapshots' eval-mode logits; tolerance 1e-5.
    SDA and SDV differ for a non-linear network (checked: > 1e-3 apart)."""
    _, states, sda, sdv = _states(4)
    x = torch.randn(7, 5)
    outs = []
    for s in states[-3:]:
        net = _net().eval()
        net.load_state_dict(s)
        outs.append(net(x))
    ref = torch.stack(outs).mean(0)
    assert torch.allclose(sdv.logits(x), ref, atol=1e-5)
    assert (sdv.logits(x) - sda.logits(x)).abs().max() > 1e-3


def test_loss_matches_hand_computation() -> None:
    """Metric: CE + lam * mean squared logit difference written out by hand; tolerance 1e-6."""
    torch.manual_seed(1)
    s, t = torch.randn(4, 5, requires_grad=True), torch.randn(4, 5)
    y = torch.tensor([0, 3, 1, 4])
    logp = s.log_softmax(-1)
    ce = -sum(logp[i, y[i]] for i in range(4)) / 4
    mse = ((s - t) ** 2).sum() / 20
    got = self_distill_loss(s, y, t, lam=0.7)
    assert torch.allclose(got, ce + 0.7 * mse, atol=1e-6)
    got.backward()
    assert s.grad is not None  # gradient reaches the student ...
    assert torch.allclose(self_distill_loss(s, y, None, lam=0.7), F.cross_entropy(s, y))  # no teacher yet
    with pytest.raises(ConfigError, match="differ in shape"):
        self_distill_loss(s, y, torch.zeros(4, 3), lam=1.0)


def test_training_step_uses_previous_snapshots_only() -> None:
    """Replay of the training loop by hand (SGD, constant lr, K=2, SDA, lam=1.5, full batch, 4 steps): the
    final weights equal a manual loop whose teacher at step t averages theta_{t-1}, theta_{t-2}
    (CE only at t=0). Metric: max abs weight difference; tolerance 1e-6."""
    torch.manual_seed(0)
    x, y = torch.randn(16, 5), torch.randint(0, 3, (16,))
    data = TensorDataset(x, y)
    tc = TrainConfig(epochs=4, batch_size=16, lr=0.2, momentum=0.0, weight_decay=0.0, schedule="constant")
    torch.manual_seed(3)
    model = nn.Linear(5, 3)
    ref = nn.Linear(5, 3)
    ref.load_state_dict(model.state_dict())
    self_distill(model, data, SelfDistill(mode="sda", k=2, lam=1.5, train=tc), progress=False)

    history: list[dict[str, torch.Tensor]] = []
    opt = torch.optim.SGD(ref.parameters(), lr=0.2)
    for _ in range(4):
        # each epoch is one full batch; the order within the batch does not change the mean loss
        loss = F.cross_entropy(ref(x), y)
        if history:
            w = torch.stack([h["weight"] for h in history[-2:]]).mean(0)
            b = torch.stack([h["bias"] for h in history[-2:]]).mean(0)
            loss = loss + 1.5 * F.mse_loss(ref(x), (x @ w.T + b).detach())
        history.append({k: v.detach().clone() for k, v in ref.state_dict().items()})
        opt.zero_grad()
        loss.backward()
        opt.step()
    for k, v in ref.state_dict().items():
        assert torch.allclose(model.state_dict()[k], v, atol=1e-6), k


def test_mode_none_is_plain_cross_entropy_and_bad_input() -> None:
    """mode='none' equals lam=0 SDA (both plain CE): identical weights (exact). Missing labels and a wrong
    config type fail with clear messages."""
    x, y = torch.randn(24, 5), torch.randint(0, 3, (24,))
    tc = TrainConfig(epochs=1, batch_size=8, lr=0.1, schedule="constant")
    torch.manual_seed(0)
    a = _net()
    b = _net()
    b.load_state_dict(a.state_dict())
    self_distill(a, TensorDataset(x, y), SelfDistill(mode="none", train=tc), progress=False)
    self_distill(b, TensorDataset(x, y), SelfDistill(mode="sdv", lam=0.0, train=tc), progress=False)
    for k, v in a.state_dict().items():
        assert torch.equal(v, b.state_dict()[k]), k
    with pytest.raises(ConfigError, match="no labels"):
        self_distill(_net(), TensorDataset(x), SelfDistill(train=tc), progress=False)
    with pytest.raises(ConfigError, match="must be a SelfDistill"):
        self_distill(_net(), TensorDataset(x, y), tc, progress=False)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="push"):
        SnapshotTeacher(_net(), k=2).logits(x)
    with pytest.raises(ConfigError, match="k must be"):
        SnapshotTeacher(_net(), k=0)


@pytest.mark.parametrize("mode", ["sda", "sdv"])
def test_interrupted_self_distillation_resumes_exactly(mode: str, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """The snapshot queue is checkpointed: a run interrupted at step 7 and resumed ends with the weights of an
    uninterrupted run. Metric: torch.equal on every parameter and buffer."""
    from torchslim.train.callbacks import Callback

    class Stop(Exception):
        pass

    class StopAt(Callback):
        def on_step_end(self, trainer, step, loss):  # type: ignore[no-untyped-def]
            if step == 7:
                raise Stop

    torch.manual_seed(0)
    data = TensorDataset(torch.randn(48, 5), torch.randint(0, 3, (48,)))
    cfg = SelfDistill(mode=mode, k=3, lam=1.0, train=TrainConfig(epochs=2, batch_size=8, lr=0.1,
                                                                 checkpoint_every_steps=3))
    torch.manual_seed(1)
    ref = _net()
    start = {k: v.clone() for k, v in ref.state_dict().items()}
    self_distill(ref, data, cfg, progress=False)
    crashed = _net()
    crashed.load_state_dict(start)
    with pytest.raises(Stop):
        self_distill(crashed, data, cfg, checkpoint_dir=tmp_path, progress=False, callbacks=[StopAt()])
    resumed = _net()
    resumed.load_state_dict(start)
    self_distill(resumed, data, cfg, checkpoint_dir=tmp_path, resume=True, progress=False)
    for k, v in ref.state_dict().items():
        assert torch.equal(resumed.state_dict()[k], v), k
