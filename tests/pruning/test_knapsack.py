"""Knapsack pruning with inner distillation (Aflalo et al. 2020): knapsack optimality, MACs budget,
residual groups pruned together, and the inner-KD loss."""

from __future__ import annotations

import copy
import itertools
from typing import Any, Literal

import pytest
import torch
from torch import nn

from torchslim.core.cost import profile
from torchslim.core.errors import ConfigError
from torchslim.pruning import PruneError
from torchslim.pruning.knapsack import (
    InnerKD,
    KnapsackPrune,
    channel_costs,
    default_taps,
    inner_distill,
    inner_kd_loss,
    knapsack_prune_,
    knapsack_select,
)
from torchslim.train import TrainConfig
from torchslim.zoo.resnet import ResNet


def _tiny_resnet() -> nn.Module:
    torch.manual_seed(0)
    return ResNet(widths=(8, 16), blocks=(1, 1), strides=(1, 2), stem_stride=1)


def _calib() -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(1)
    return [(torch.randn(16, 1, 8, 8, generator=g), torch.randint(0, 10, (16,), generator=g))]


def test_dp_selection_equals_brute_force() -> None:
    """Metric: total value of the kept channels; reference: enumeration of every subset that keeps >= 1
    channel per group within the capacity; tolerance 1e-9 (exact up to float sums)."""
    g = torch.Generator().manual_seed(3)
    values = {"a": torch.rand(4, generator=g, dtype=torch.float64), "b": torch.rand(5, generator=g, dtype=torch.float64)}
    costs = {"a": 3.0, "b": 2.0}
    capacity = 13.0
    keep = knapsack_select(values, costs, capacity, "dp", resolution=1000)
    got = sum(float(values[n][k].sum()) for n, k in keep.items())
    used = sum(costs[n] * len(k) for n, k in keep.items())
    assert used <= capacity + 1e-9
    items = [(n, c) for n in values for c in range(values[n].numel())]
    best = 0.0
    for r in range(len(items) + 1):
        for sub in itertools.combinations(items, r):
            if sum(costs[n] for n, _ in sub) > capacity:
                continue
            if not all(any(n == m for m, _ in sub) for n in values):
                continue
            best = max(best, sum(float(values[n][c]) for n, c in sub))
    assert got == pytest.approx(best, abs=1e-9)
    greedy = knapsack_select(values, costs, capacity, "greedy", resolution=1000)
    assert sum(float(values[n][k].sum()) for n, k in greedy.items()) <= best + 1e-9


def test_knapsack_select_rejects_too_small_capacity() -> None:
    with pytest.raises(PruneError, match=r"one block of 1 channel\(s\) per group"):
        knapsack_select({"a": torch.ones(3), "b": torch.ones(2)}, {"a": 5.0, "b": 5.0}, capacity=6.0)


def test_channel_costs_hand_count() -> None:
    """Per-channel MACs of a conv -> conv group, against the hand formula (exact)."""
    from torchslim.pruning.structured.dependency import build_groups

    m = nn.Sequential(nn.Conv2d(2, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(), nn.Conv2d(6, 3, 1))
    x = (torch.randn(1, 2, 5, 5),)
    groups = [g for g in build_groups(m, x) if g.prunable]
    # producer: 25 positions * 2 in * 9 taps per out-channel; consumer: 25 * 3 out * 1 per in-channel
    assert channel_costs(m, groups, x) == {"0": 25 * 2 * 9 + 25 * 3}


@pytest.mark.parametrize("solver", ["dp", "greedy"])
def test_pruned_macs_within_budget_and_residuals_together(solver: Literal["dp", "greedy"]) -> None:
    """The pruned model's measured MACs are <= macs_ratio * original; the residual stream (stem, block-1
    conv2 and the stage-1 add) keeps one width across all its layers; the forward still runs."""
    m: Any = _tiny_resnet()
    x1 = torch.randn(1, 1, 8, 8)
    before = profile(m, (x1,)).macs
    r = knapsack_prune_(m, KnapsackPrune(macs_ratio=0.5, solver=solver, max_rounds=8), (x1,), _calib())
    after = profile(m, (x1,)).macs
    assert after == r.macs_after <= r.budget == int(0.5 * before)
    assert after > 0.3 * before  # the bisection uses the budget, not a tiny model
    w = m.stem[0].out_channels
    assert m.stem[1].num_features == w
    b = m.layer1[0]
    assert b.conv2.out_channels == w and b.bn2.num_features == w and b.conv1.in_channels == w
    assert m(torch.randn(2, 1, 8, 8)).shape == (2, 10)
    for n, k in r.keep.items():
        assert r.widths[n] == len(k)


def test_bad_budget_fails_clearly() -> None:
    with pytest.raises(ConfigError):
        KnapsackPrune(macs_ratio=0.0)
    m = _tiny_resnet()
    with pytest.raises(PruneError, match="raise macs_ratio"):
        knapsack_prune_(m, KnapsackPrune(macs_ratio=0.001), (torch.randn(1, 1, 8, 8),), _calib())


def test_inner_kd_loss_hand_computation() -> None:
    """Metric: the loss value; reference: the mean over taps of the element-mean squared error against
    the parent's kept channels, written out by hand; tolerance 1e-6."""
    t1 = torch.arange(24.0).reshape(1, 4, 3, 2)
    s1 = torch.ones(1, 2, 3, 2)
    t2 = torch.tensor([[1.0, 2.0, 3.0]])
    s2 = torch.tensor([[0.0, 2.0, 5.0]])
    keep = {"a": torch.tensor([1, 3]), "b": None}
    got = inner_kd_loss({"a": s1, "b": s2}, {"a": t1, "b": t2}, keep)
    sel = [v for c in (1, 3) for v in t1[0, c].reshape(-1).tolist()]
    mse_a = sum((1.0 - v) ** 2 for v in sel) / len(sel)
    mse_b = (1.0 + 0.0 + 4.0) / 3
    assert float(got) == pytest.approx((mse_a + mse_b) / 2, rel=1e-6)
    with pytest.raises(ConfigError, match="after channel"):
        inner_kd_loss({"a": s1}, {"a": t1}, {"a": torch.tensor([0])})


def test_inner_distill_runs_and_taps_match_kept_channels() -> None:
    """Default taps are the pruned groups' BatchNorms; after pruning the student's tapped features have the
    kept-channel counts, and one inner-KD epoch runs with a finite loss."""
    parent = _tiny_resnet().eval()
    student = copy.deepcopy(parent)
    x1 = torch.randn(1, 1, 8, 8)
    r = knapsack_prune_(student, KnapsackPrune(macs_ratio=0.6, max_rounds=6), (x1,), _calib())
    taps = default_taps(parent, (x1,), r.keep)
    assert taps and all(student.get_submodule(p).num_features == len(k) for p, k in taps.items())
    x, y = _calib()[0]
    data = torch.utils.data.TensorDataset(x, y)
    res = inner_distill(student, parent, data, InnerKD(train=TrainConfig(epochs=1, batch_size=8)), dict(taps))
    assert res.steps == 2 and torch.isfinite(torch.tensor(res.history[-1]["loss"]))


def test_round_to_blocks_equal_brute_force_and_give_multiples() -> None:
    """knapsack_select(round_to=4): kept counts are multiples of 4 and the kept value equals the best over
    all block subsets that fit (brute force over the blocks of value-ordered channels; tolerance 1e-5,
    float32 sums)."""
    g = torch.Generator().manual_seed(0)
    values = {"a": torch.rand(12, generator=g), "b": torch.rand(8, generator=g)}
    costs = {"a": 3.0, "b": 5.0}
    cap = 3.0 * 4 + 5.0 * 4 + 40.0  # the forced first blocks + room for a few more
    keep = knapsack_select(values, costs, cap, "dp", round_to=4)
    assert all(len(k) % 4 == 0 for k in keep.values())
    blocks = []
    for n in values:
        order = torch.argsort(values[n], descending=True).tolist()
        blocks += [(n, order[i : i + 4]) for i in range(4, len(order), 4)]
    free = cap - 3.0 * 4 - 5.0 * 4
    best = max(
        sum(float(values[n][b].sum()) for n, b in sub)
        for r in range(len(blocks) + 1)
        for sub in itertools.combinations(blocks, r)
        if sum(costs[n] * len(b) for n, b in sub) <= free
    )
    got = sum(float(values[n][k].sum()) for n, k in keep.items()) - sum(
        float(values[n][torch.argsort(values[n], descending=True)[:4]].sum()) for n in values
    )
    assert abs(got - best) < 1e-5


def test_knapsack_prune_round_to_keeps_multiples() -> None:
    m: Any = _tiny_resnet()
    x1 = torch.randn(1, 1, 8, 8)
    r = knapsack_prune_(m, KnapsackPrune(macs_ratio=0.5, round_to=4, max_rounds=6), (x1,), _calib())
    assert r.widths and all(w % 4 == 0 for w in r.widths.values())
    assert r.macs_after <= r.budget
