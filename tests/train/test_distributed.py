"""Tests of data-parallel training (torchslim.train.distributed + the Trainer under DDP, gloo, CPU).

The acceptance test: 2 processes on this machine (loopback), global batch B split B/2 per rank, end with the
same weights as single-process training with batch B and the same seed. Metric: max absolute difference of
every parameter / buffer; tolerance 1e-5 (the float summation order of the gradient average differs:
(g0 + g1) / 2 over two half-batch means instead of one mean over the batch).

All distributed scenarios run in ONE ``launch`` (2 spawned processes) to keep the file fast; the single-process
references are computed in the test process.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset, TensorDataset

from torchslim.core.errors import ConfigError
from torchslim.train import Callback, TrainConfig, Trainer
from torchslim.train import distributed as D

torch.set_num_threads(1)

WORLD = 2
TOL = 1e-5


# ---- shared by the test process and the ranks ---------------------------------------------------------


def make_data(n: int = 301, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A learnable 10-class problem with 20 features; 301 examples so the last batch of 32 is 13 (uneven)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 20, generator=g)
    w = torch.randn(20, 10, generator=g)
    y = (x @ w).argmax(dim=1)
    return x, y


def mlp(seed: int, bn: bool = False) -> nn.Module:
    torch.manual_seed(seed)
    if bn:
        return nn.Sequential(nn.Linear(20, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Linear(32, 10))
    return nn.Sequential(nn.Linear(20, 32), nn.ReLU(), nn.Linear(32, 10))


CFG = TrainConfig(epochs=4, batch_size=32, lr=0.1, schedule="cosine", weight_decay=1e-4)  # 40 SGD steps


class ItemDataset(Dataset):  # type: ignore[type-arg]
    """Not a TensorDataset: exercises the DataLoader path of the shard loader."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.x, self.y = x, y

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.x[i], self.y[i]


class Stop(Exception):
    pass


class StopAt(Callback):
    def __init__(self, k: int) -> None:
        self.k = k

    def on_step_end(self, trainer: Any, step: int, loss: float) -> None:
        if step == self.k:
            raise Stop


def per_rank_bn_step(model: nn.Module, batch: Any) -> torch.Tensor:
    """Single-process reference of DDP with per-rank BatchNorm: each half of the batch is normalised with its
    own statistics, losses weighted by the share of the batch (what the ranks compute, then DDP averages)."""
    x, y = batch
    sizes = D.shard_sizes(len(x), WORLD)
    loss = x.new_zeros(())
    for xs, ys in zip(x.split(sizes), y.split(sizes), strict=True):
        loss = loss + F.cross_entropy(model(xs), ys) * (len(xs) / len(x))
    return loss


def rank_scenarios(x: torch.Tensor, y: torch.Tensor, tmp: str) -> dict[str, Any]:
    """Runs in each of the 2 ranks (launched by the test below)."""
    from torchslim.distillation import HintonKD, distill
    from torchslim.train import trainer as trainer_mod
    from torchslim.train.distributed import convert_sync_batchnorm, rank, world_size

    out: dict[str, Any] = {"rank": rank(), "world": world_size()}
    data = TensorDataset(x, y)

    # 1. plain MLP, TensorDataset fast path (the acceptance test)
    m = mlp(0)
    res = Trainer(m, CFG, progress=False).fit(data)
    out["plain"] = m.state_dict()
    out["plain_loss"] = [h["loss"] for h in res.history]
    out["steps"] = res.steps

    # 2. the DataLoader path (generic dataset) gives the same shards
    m = mlp(0)
    Trainer(m, CFG, progress=False).fit(ItemDataset(x, y))
    out["items"] = m.state_dict()

    # 3. BatchNorm, per-rank statistics, and with DistributedBatchNorm (global-batch statistics)
    m = mlp(0, bn=True)
    Trainer(m, CFG, progress=False).fit(data)
    out["bn_local"] = m.state_dict()
    m = convert_sync_batchnorm(mlp(0, bn=True))
    Trainer(m, CFG, progress=False).fit(data)
    out["bn_sync"] = m.state_dict()

    # 4. checkpoints by rank 0 only, and an interrupted + resumed DDP run equals the uninterrupted one
    writes: list[str] = []
    real_save = trainer_mod.atomic_torch_save

    def counting_save(path: Any, obj: Any) -> None:
        writes.append(str(path))
        real_save(path, obj)

    trainer_mod.atomic_torch_save = counting_save  # type: ignore[assignment]
    try:
        ckpt = os.path.join(tmp, "ckpt")
        cfg = CFG.model_copy(update={"checkpoint_every_steps": 7})
        m = mlp(0)
        try:
            Trainer(m, cfg, callbacks=[StopAt(15)], checkpoint_dir=ckpt, progress=False).fit(data)
        except Stop:
            pass
        m = mlp(5)  # other initial weights: the checkpoint must restore them
        res = Trainer(m, cfg, checkpoint_dir=ckpt, progress=False).fit(data, resume=True)
        out["resumed"] = m.state_dict()
        out["resumed_steps"] = res.steps
    finally:
        trainer_mod.atomic_torch_save = real_save  # type: ignore[assignment]
    out["writes"] = len(writes)
    saved = torch.load(os.path.join(ckpt, "last.pt"), weights_only=True)
    out["ckpt_world"] = int(saved["data"]["world_size"])
    out["ckpt_rng_ranks"] = len(saved["rng_per_rank"])

    # 5. distill runs on the Trainer, so it is data-parallel too
    teacher = mlp(1)
    student = mlp(2)
    kd = HintonKD(
        temperature=4.0, alpha=0.7, train=TrainConfig(epochs=2, batch_size=32, lr=0.05, schedule="constant")
    )
    distill(student, teacher, data, kd, progress=False)
    out["distilled"] = student.state_dict()

    # 7. a last batch of 1 example: rank 1 has an empty slice (runs with loss weight 0)
    m = mlp(0)
    Trainer(m, CFG, progress=False).fit(TensorDataset(x[:33], y[:33]))
    out["tiny_last"] = m.state_dict()

    # 6. clear error: fewer examples than processes
    try:
        Trainer(mlp(0), CFG, progress=False).fit(TensorDataset(x[:1], y[:1]))
        out["small_data_error"] = ""
    except ConfigError as err:
        out["small_data_error"] = str(err)
    return out


# ---- helpers ------------------------------------------------------------------------------------------


def max_abs_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], params_only: bool = False) -> float:
    assert a.keys() == b.keys()
    keys = [k for k in a if not params_only or ("running" not in k and "num_batches" not in k)]
    return max(float((a[k].double() - b[k].double()).abs().max()) for k in keys if a[k].numel())


def single(
    model: nn.Module, data: Dataset[Any], cfg: TrainConfig = CFG, **kw: Any
) -> dict[str, torch.Tensor]:
    Trainer(model, cfg, progress=False, **kw).fit(data)
    return model.state_dict()


@pytest.fixture(scope="module")
def ranks(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    x, y = make_data()
    tmp = tmp_path_factory.mktemp("ddp")
    return D.launch(f"{__file__}:rank_scenarios", WORLD, x, y, str(tmp), timeout_s=120)


# ---- the acceptance test ------------------------------------------------------------------------------


def test_two_ranks_equal_single_process_with_the_global_batch(ranks: list[dict[str, Any]]) -> None:
    """Metric: max abs weight difference vs single-process batch 32; tolerance 1e-5, after 40 SGD steps
    (with momentum, cosine schedule, an uneven last batch 7/6)."""
    x, y = make_data()
    ref_model = mlp(0)
    ref_res = Trainer(ref_model, CFG, progress=False).fit(TensorDataset(x, y))
    ref = ref_model.state_dict()
    assert [r["rank"] for r in ranks] == [0, 1] and all(r["world"] == WORLD for r in ranks)
    for r in ranks:
        assert r["steps"] == ref_res.steps == 40
        assert max_abs_diff(r["plain"], ref) <= TOL
        assert max_abs_diff(r["items"], ref) <= TOL
        # the logged (global-batch) epoch losses match too (relative 1e-5)
        for a, b in zip(r["plain_loss"], [h["loss"] for h in ref_res.history], strict=True):
            assert abs(a - b) <= 1e-5 * max(1.0, abs(b))
    # training changed the weights far more than the tolerance (the comparison is not vacuous)
    assert max_abs_diff(ranks[0]["plain"], mlp(0).state_dict()) > 1e-2
    # both ranks hold exactly the same weights
    assert all(torch.equal(ranks[0]["plain"][k], ranks[1]["plain"][k]) for k in ref)


def test_batchnorm_per_rank_stats_and_distributed_batchnorm(ranks: list[dict[str, Any]]) -> None:
    """Plain BatchNorm under DDP normalises each half-batch with its own statistics: it equals (params, 1e-5)
    the single-process reference that does the same, and differs from full-batch BN by far more than 1e-5.
    DistributedBatchNorm equals single-process full-batch BN (params and running stats, 1e-5)."""
    x, y = make_data()
    data = TensorDataset(x, y)
    full = single(mlp(0, bn=True), data)
    halves = single(mlp(0, bn=True), data, step_fn=per_rank_bn_step)
    for r in ranks:
        assert max_abs_diff(r["bn_local"], halves, params_only=True) <= TOL
        assert max_abs_diff(r["bn_local"], full, params_only=True) > 1e-3
        assert max_abs_diff(r["bn_sync"], full) <= TOL
    assert all(torch.equal(ranks[0]["bn_local"][k], ranks[1]["bn_local"][k]) for k in full)


def test_only_rank0_writes_checkpoints_and_ddp_resume_is_exact(ranks: list[dict[str, Any]]) -> None:
    """Interrupted at step 15 (checkpoint at step 14) and resumed: bit-identical (torch.equal) to the
    uninterrupted 2-rank run."""
    r0, r1 = ranks
    assert r0["writes"] > 0 and r1["writes"] == 0
    assert r0["ckpt_world"] == WORLD and r0["ckpt_rng_ranks"] == WORLD
    for r in ranks:
        assert r["resumed_steps"] == 40
        assert all(torch.equal(r["resumed"][k], r["plain"][k]) for k in r["plain"])


def test_distill_under_ddp_equals_single_process(ranks: list[dict[str, Any]]) -> None:
    from torchslim.distillation import HintonKD, distill

    x, y = make_data()
    student = mlp(2)
    kd = HintonKD(
        temperature=4.0, alpha=0.7, train=TrainConfig(epochs=2, batch_size=32, lr=0.05, schedule="constant")
    )
    distill(student, mlp(1), TensorDataset(x, y), kd, progress=False)
    for r in ranks:
        assert max_abs_diff(r["distilled"], student.state_dict()) <= TOL


def test_last_batch_smaller_than_world_size(ranks: list[dict[str, Any]]) -> None:
    """33 examples, batch 32: the last batch has 1 example, rank 1 gets none; still equal to one process
    (max abs diff <= 1e-5)."""
    x, y = make_data()
    ref = single(mlp(0), TensorDataset(x[:33], y[:33]))
    for r in ranks:
        assert max_abs_diff(r["tiny_last"], ref) <= TOL


def test_more_processes_than_examples_is_a_clear_error(ranks: list[dict[str, Any]]) -> None:
    for r in ranks:
        assert "1 examples but there are 2 processes" in r["small_data_error"]


# ---- unit tests (no processes) ------------------------------------------------------------------------


def test_shard_sizes_cover_the_batch_and_rank0_is_never_empty() -> None:
    assert D.shard_sizes(32, 2) == [16, 16]
    assert D.shard_sizes(13, 2) == [7, 6]
    assert D.shard_sizes(10, 4) == [3, 3, 2, 2]
    assert D.shard_sizes(1, 3) == [1, 0, 0]
    for b in range(1, 40):
        for w in range(1, 6):
            s = D.shard_sizes(b, w)
            assert sum(s) == b and s[0] >= 1 and max(s) - min(s) <= 1


def test_single_process_is_unaffected_and_not_distributed() -> None:
    assert not D.is_distributed() and D.rank() == 0 and D.world_size() == 1 and D.is_main_process()
    t = Trainer(mlp(0), CFG, progress=False)
    assert t.is_main and t.world_size == 1


def test_distributed_batchnorm_without_process_group_is_batchnorm() -> None:
    """Outside a process group (and in eval mode) DistributedBatchNorm is plain BatchNorm: equal outputs and
    running stats (exact)."""
    torch.manual_seed(0)
    bn = nn.BatchNorm2d(5)
    nn.init.uniform_(bn.weight)
    conv = D.convert_sync_batchnorm(nn.Sequential(nn.BatchNorm2d(5)))
    conv[0].load_state_dict(bn.state_dict())
    assert isinstance(conv[0], D.DistributedBatchNorm)
    x = torch.randn(4, 5, 3, 3)
    assert torch.equal(conv(x), bn(x))
    assert torch.equal(conv[0].running_var, bn.running_var)
    bare = D.convert_sync_batchnorm(bn)
    assert isinstance(bare, D.DistributedBatchNorm) and torch.equal(bare.running_mean, bn.running_mean)


def test_backend_and_environment_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigError, match="unknown"):
        D.check_backend("carrier-pigeon")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="nccl"):
            D.check_backend("nccl")
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert D.init_distributed() is False  # plain `python train.py`: single process
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.delenv("RANK", raising=False)
    with pytest.raises(ConfigError, match="RANK"):
        D.init_distributed()
    monkeypatch.setenv("RANK", "5")
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", "29999")
    with pytest.raises(ConfigError, match="0 <= RANK < WORLD_SIZE"):
        D.init_distributed()
    with pytest.raises(ConfigError, match="world_size"):
        D.launch(max, 0)
    with pytest.raises(ConfigError, match="existing"):
        D.launch("/no/such/file.py:f", 2)
    assert not D.is_distributed()


def test_free_port_is_a_loopback_port() -> None:
    p = D.free_port()
    assert 1024 <= p <= 65535


@pytest.mark.slow
def test_torchrun_launch(tmp_path: Path) -> None:
    """torchrun-style launch: 2 processes started by torch.distributed.run, env:// rendezvous on loopback;
    weights match single-process (max abs diff <= 1e-5)."""
    import subprocess
    import sys

    out = tmp_path / "w.pt"
    script = tmp_path / "job.py"
    script.write_text(
        "import sys, torch\n"
        f"sys.path.insert(0, {str(Path(__file__).parent)!r})\n"
        "from torch.utils.data import TensorDataset\n"
        "from torchslim.train import Trainer\n"
        "from torchslim.train.distributed import init_distributed, is_main_process\n"
        "import test_distributed as T\n"
        "torch.set_num_threads(1)\n"
        "assert init_distributed('gloo')\n"
        "m = T.mlp(0)\n"
        "Trainer(m, T.CFG, progress=False).fit(TensorDataset(*T.make_data()))\n"
        f"if is_main_process(): torch.save(m.state_dict(), {str(out)!r})\n"
    )
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc-per-node",
        "2",
        "--master-addr",
        "127.0.0.1",
        "--master-port",
        str(D.free_port()),
        str(script),
    ]
    subprocess.run(cmd, check=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    x, y = make_data()
    ref = single(mlp(0), TensorDataset(x, y))
    assert max_abs_diff(torch.load(out, weights_only=True), ref) <= TOL
