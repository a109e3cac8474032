"""Direct sparsity control: exact k non-zeros, schedule values, hard thresholding against a sort."""

from __future__ import annotations

from typing import Literal

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from torchslim.core.errors import ConfigError
from torchslim.pruning.dsc import (
    DSCConfig,
    MaskKeeper,
    dsc_schedule,
    dsc_train,
    hard_threshold_,
    magnitude_prune_,
    nonzeros,
    prunable_weights,
)
from torchslim.train import TrainConfig, Trainer


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 6, 3), nn.ReLU(), nn.Flatten(), nn.Linear(6 * 4 * 4, 10))


def _data() -> TensorDataset:
    g = torch.Generator().manual_seed(0)
    return TensorDataset(torch.randn(48, 1, 6, 6, generator=g), torch.randint(0, 10, (48,), generator=g))


def test_schedule_values() -> None:
    """Hand-computed values of the three schedules (exact integers)."""
    # fsa: 10 + 90 * max(0, (20 - 2t) / (2 t mu + 20)), mu = 2
    assert [dsc_schedule(t, 20, 100, 10, "fsa", mu=2.0) for t in (0, 1, 5, 10, 30)] == [
        100, 10 + round(90 * 18 / 24), 10 + round(90 * 10 / 40), 10, 10]
    assert [dsc_schedule(t, 4, 100, 20, "linear") for t in range(6)] == [100, 80, 60, 40, 20, 20]
    assert dsc_schedule(2, 4, 100, 20, "cubic") == 30  # 20 + 80 / 8
    ks = [dsc_schedule(t, 50, 1000, 37) for t in range(60)]
    assert all(a >= b for a, b in zip(ks, ks[1:], strict=False))  # non-increasing
    with pytest.raises(ConfigError):
        dsc_schedule(0, 0, 10, 1)
    with pytest.raises(ConfigError):
        dsc_schedule(0, 10, 10, 11)


def test_hard_threshold_matches_sort() -> None:
    """Kept entries are exactly the k largest magnitudes (reference: a full sort), global and per tensor."""
    g = torch.Generator().manual_seed(1)
    w = {"a": torch.randn(5, 7, generator=g), "b": torch.randn(13, generator=g)}
    ref = torch.cat([w["a"].abs().reshape(-1), w["b"].abs()]).sort(descending=True).values[:17]
    hard_threshold_(w, 17)
    kept = torch.cat([w["a"].reshape(-1), w["b"]])
    assert nonzeros(w) == 17
    assert torch.equal(kept[kept != 0].abs().sort(descending=True).values, ref)
    w2 = {"a": torch.randn(10, generator=g), "b": torch.randn(10, generator=g)}
    hard_threshold_(w2, {"a": 3, "b": 0})
    assert nonzeros([w2["a"]]) == 3 and nonzeros([w2["b"]]) == 0
    # ties: exactly k kept even when all magnitudes are equal
    w3 = {"a": torch.ones(10)}
    hard_threshold_(w3, 4)
    assert w3["a"].tolist() == [1.0] * 4 + [0.0] * 6


@pytest.mark.parametrize("scope", ["layer", "global"])
def test_dsc_ends_with_exactly_k_nonzeros(scope: Literal["layer", "global"]) -> None:
    m = _net()
    cfg = DSCConfig(density=0.1, scope=scope, train=TrainConfig(epochs=2, batch_size=16, lr=0.05))
    res = dsc_train(m, _data(), cfg)
    w = prunable_weights(m)
    if scope == "layer":
        assert res.k_target == round(0.1 * 54) + round(0.1 * 960)
        assert [nonzeros([t]) for t in w.values()] == [round(0.1 * 54), round(0.1 * 960)]
    else:
        assert res.k_target == round(0.1 * (54 + 960))
    assert nonzeros(w) == res.nonzeros == res.k_target
    ks = [k for _, k in res.k_history]
    assert ks[0] < res.dense and ks[-1] == res.k_target and len(ks) == 6  # one projection per step
    assert all(a >= b for a, b in zip(ks, ks[1:], strict=False))


def test_magnitude_prune_and_mask_keeper() -> None:
    """One-shot pruning keeps round(density * n) per tensor; MaskKeeper holds the zeros through training."""
    m = _net()
    masks = magnitude_prune_(m, 0.25)
    before = nonzeros(prunable_weights(m))
    assert before == round(0.25 * 54) + round(0.25 * 960)
    Trainer(m, TrainConfig(epochs=1, batch_size=16), callbacks=[MaskKeeper(m, masks)], progress=False).fit(_data())
    w = prunable_weights(m)
    assert all(not bool(w[n][~mk].any()) for n, mk in masks.items())
    with pytest.raises(ConfigError):
        magnitude_prune_(m, 0.0)
