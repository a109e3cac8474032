"""AutoLR (Ro & Choi 2021, reference code youngminPIL/AutoLR): weight variation and sorting quality against
hand computations, desired variations, the linear LR update hitting its target exactly where the relation is
exact (one full-batch SGD step), epoch roll-back, ascending variation after auto-tuning on a toy model,
per-layer LRs as gradient multipliers, and layer dropping."""

from __future__ import annotations

import copy
import math
from typing import cast

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from torchslim.core.errors import ConfigError
from torchslim.pruning.autolr import (
    AutoLRConfig,
    autolr_finetune,
    choose_drops,
    desired_variation,
    drop_layers_,
    is_ascending,
    layer_weights,
    low_variation_layers,
    sorting_score,
    update_lrs,
    weight_variation,
)
from torchslim.train import TrainConfig, Trainer


def test_weight_variation_equals_hand_computation() -> None:
    """Metric: relative L2 weight change per layer (a block gathers its conv + linear weights); reference:
    sqrt(sum (a-b)^2) / sqrt(sum b^2) written out with Python floats; tolerance 1e-12."""
    torch.manual_seed(0)
    conv, bn, lin = nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.Linear(2, 3)
    m = nn.Sequential(nn.Sequential(conv, bn), nn.Flatten(), lin)
    b = layer_weights(m, ["0", "2"])
    before = [p.detach().clone() for p in (conv.weight, lin.weight)]
    with torch.no_grad():
        conv.weight.add_(0.1 * torch.randn_like(conv.weight))
        bn.weight.mul_(5.0)  # BatchNorm is not a Conv/Linear weight: ignored
        lin.weight.mul_(1.5)
    v = weight_variation(b, layer_weights(m, ["0", "2"]), mode="relative")
    vw = weight_variation(b, layer_weights(m, ["0", "2"]))  # default: per weight (reference code)
    for name, old, new in (("0", before[0], conv.weight), ("2", before[1], lin.weight)):
        num = math.sqrt(sum((x - y) ** 2 for x, y in zip(new.flatten().tolist(), old.flatten().tolist(),
                                                          strict=True)))
        den = math.sqrt(sum(y * y for y in old.flatten().tolist()))
        assert v[name] == pytest.approx(num / den, abs=1e-12)
        assert vw[name] == pytest.approx(num / old.numel(), abs=1e-12)
    assert v["2"] == pytest.approx(0.5, abs=1e-6)  # float32 weights
    with pytest.raises(ConfigError, match="per_weight"):
        weight_variation(b, b, mode="l1")  # type: ignore[arg-type]


def test_sorting_score_against_brute_force() -> None:
    """Metric: sorting quality 1 - 2 sum_j |j - sigma(j)| / n^2; reference: the rank displacement counted
    by brute force over all 24 orders of 4 values (1 for ascending, 0 for reversed); exact."""
    import itertools

    for perm in itertools.permutations(range(4)):
        vals = [float(p) for p in perm]
        # sigma(j) = position of value j
        disp = sum(abs(j - vals.index(float(j))) for j in range(4))
        assert sorting_score(vals) == 1 - 2 * disp / 16
    assert sorting_score([1, 2, 3, 4]) == 1.0 and sorting_score([4, 3, 2, 1]) == 0.0


def test_desired_variation_by_hand() -> None:
    """Metric: desired variations; reference: hand computation of the two rules (first epoch: linear from
    3*min to 0.4*max; later: repaired from the middle outwards in steps (max-min)/(n-1)); 1e-12."""
    d = desired_variation([1.0, 10.0, 20.0, 5.0, 50.0], first=True)
    assert d == pytest.approx([3.0, 7.25, 11.5, 15.75, 20.0], abs=1e-12)
    # range empty (3*min >= 0.4*max): linear from min to max
    assert desired_variation([2.0, 1.0, 3.0], first=True) == pytest.approx([1.0, 2.0, 3.0], abs=1e-12)
    # step (9-1)/4 = 2, middle index 2 (value 5)
    d2 = desired_variation([9.0, 4.0, 5.0, 1.0, 7.0], first=False)
    # down from i=2: d[2]=5 >= d[1]=4 ok; d[1]=4 < d[0]=9 -> d[0]=4-2=2. up: d[2]=5 > d[3]=1 -> d[3]=7;
    # d[3]=7 > d[4]=7? no (equal) -> unchanged
    assert d2 == pytest.approx([2.0, 4.0, 5.0, 7.0, 7.0], abs=1e-12)
    assert is_ascending(d2)
    assert min(desired_variation([0.1, 5.0, 0.1, 9.0], first=False)) > 0  # floored positive


def test_update_lrs_linear_relation() -> None:
    """Metric: new LRs; reference: lr + (v* - v) / (v / lr) by hand; 1e-12."""
    assert update_lrs([0.1, 0.02], [0.4, 0.01], [0.2, 0.03]) == pytest.approx([0.05, 0.06], abs=1e-12)


def test_one_update_hits_desired_variation_when_relation_is_exact() -> None:
    """One full-batch SGD step per epoch without momentum: the weight change is lr * grad, so the variation
    is exactly linear in the LR. Metric: variation of the re-trained (rolled-back) epoch; reference: the
    desired variation built from the rejected trial by hand (first-epoch rule); relative tolerance 1e-8
    (float64 model: float32 rounding of W + dW would be ~1e-4 of the small change dW).
    Also checks the roll-back: the second trial starts from the same weights (same gradient)."""
    m, data = _toy()
    m, data = m.double(), TensorDataset(data.tensors[0].double(), data.tensors[1])
    tc = TrainConfig(epochs=1, batch_size=128, lr=0.01, schedule="constant", weight_decay=0.0, momentum=0.0)
    cfg = AutoLRConfig(train=tc, score_threshold=1.0, max_trials=2, max_mult=1e6, min_mult=1e-6)
    r = autolr_finetune(m, data, cfg)
    assert len(r.trials) == 2 and r.history[0]["trials"] == 2 and r.epochs_trained == 2
    v1 = [r.trials[0]["variation"][p] for p in r.layers]
    assert sorting_score(v1) < 1.0  # the first trial was rejected for a reason
    want = desired_variation(v1, first=True)
    got = [r.trials[1]["variation"][p] for p in r.layers]
    assert got == pytest.approx(want, rel=1e-8)
    assert is_ascending(got)


def test_first_layer_tied_to_second() -> None:
    """Metric: LR multipliers of the re-trained epoch and the scored variations; reference: the first layer
    at exactly 0.5 x the second's LR (the reference code's conv1 rule) and the other layers' variations at
    the desired values built from the rejected trial without the first layer; rel. tolerance 1e-8 (float64)."""
    m, data = _toy()
    m, data = m.double(), TensorDataset(data.tensors[0].double(), data.tensors[1])
    tc = TrainConfig(epochs=1, batch_size=128, lr=0.01, schedule="constant", weight_decay=0.0, momentum=0.0)
    # layer order 0, 6, 4, 2 (a mechanics test: the toy's single-step variations of 2, 4, 6 rise, so the
    # reversed order is rejected and re-tuned)
    cfg = AutoLRConfig(train=tc, layers=["0", "6", "4", "2"], score_threshold=1.0, max_trials=2, max_mult=1e6,
                       min_mult=1e-6, first_layer_factor=0.5)
    r = autolr_finetune(m, data, cfg)
    assert len(r.trials) == 2
    mult = r.trials[1]["multipliers"]
    assert mult["0"] == pytest.approx(0.5 * mult["6"], rel=1e-12)
    v1 = [r.trials[0]["variation"][p] for p in r.layers[1:]]
    got = [r.trials[1]["variation"][p] for p in r.layers[1:]]
    assert got == pytest.approx(desired_variation(v1, first=True), rel=1e-8)
    with pytest.raises(ConfigError, match="at least two"):
        autolr_finetune(m, data, AutoLRConfig(train=tc, layers=["0"], first_layer_factor=0.5))


def test_low_variation_layers_by_hand() -> None:
    """Metric: proposed drops; reference: hand scan from the top (variation below the mean of the layers
    under it, droppable only, stop at the first miss); exact."""
    v = {"a": 4.0, "b": 2.0, "c": 1.0, "d": 1.5}
    # d: 1.5 < mean(4,2,1)=2.33 -> drop; c: 1 < mean(4,2)=3 -> drop; b: 2 < 4 but not droppable -> stop
    assert low_variation_layers(v, ["a", "b", "c", "d"], droppable=["c", "d"]) == ["d", "c"]
    assert low_variation_layers(v, ["a", "b", "c", "d"], droppable=["c"]) == []  # d not droppable: stop
    assert low_variation_layers({"a": 1.0, "b": 2.0}, ["a", "b"], droppable=["b"]) == []


def _toy() -> tuple[nn.Sequential, TensorDataset]:
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(),
                      nn.Linear(16, 3))
    first, last = cast(nn.Linear, m[0]), cast(nn.Linear, m[6])
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():  # a small-norm first layer and a large last one: single-LR variation descends
        first.weight.mul_(0.1)
        last.weight.mul_(4.0)
    x = torch.randn(128, 6, generator=g)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 0.5).long()
    return m, TensorDataset(x, y)


def test_tuning_makes_variation_ascending() -> None:
    """Metric: per-layer weight variation of the last epoch, in depth order; reference: ascending order
    after AutoLR tuning (and the single-LR run of the same toy model is NOT ascending, so the test can
    fail); exact order comparison."""
    m, data = _toy()
    single = copy.deepcopy(m)
    tc = TrainConfig(epochs=8, batch_size=32, lr=0.05, schedule="constant", weight_decay=0.0)
    r0 = autolr_finetune(single, data, AutoLRConfig(train=tc, tune=False))
    assert not is_ascending(r0.last_variation)
    assert all(h["trials"] == 1 for h in r0.history)  # single LR: no roll-back
    r = autolr_finetune(m, data, AutoLRConfig(train=tc))
    assert is_ascending(r.last_variation), r.last_variation
    assert r.history[-1]["score"] == 1.0
    assert r.multipliers["0"] < r.multipliers["6"]


def test_multipliers_are_per_layer_lrs() -> None:
    """Metric: parameters after one SGD step (no momentum, no decay) with fixed multipliers; reference: a
    plain SGD step with per-param-group LRs lr * m_l; tolerance 1e-7."""
    m, data = _toy()
    ref = copy.deepcopy(m)
    tc = TrainConfig(epochs=1, batch_size=128, lr=0.1, schedule="constant", weight_decay=0.0, momentum=0.0)
    autolr_finetune(m, data, AutoLRConfig(train=tc, tune=False))  # multipliers 1: plain SGD
    Trainer(ref, tc, progress=False).fit(data)
    for a, b in zip(m.parameters(), ref.parameters(), strict=True):
        assert torch.allclose(a, b, atol=1e-7)


def test_drop_layers() -> None:
    """Metric: output after dropping a shape-preserving layer; reference: the model with that layer
    removed by hand; exact."""
    m, data = _toy()
    x = data.tensors[0][:4]
    by_hand = nn.Sequential(m[0], m[1], m[4], m[5], m[6])
    drop_layers_(m, ["2", "3"], (x[:1],))
    assert torch.equal(m(x), by_hand(x))
    with pytest.raises(ConfigError, match="shape-preserving"):
        drop_layers_(m, ["6"], (x[:1],))
    with pytest.raises(ConfigError, match="no module"):
        drop_layers_(m, ["nope"], (x[:1],))
    m2, _ = _toy()
    kept, scores = choose_drops(m2, ["4", "2"], lambda mm: 1.0, (x[:1],), tolerance=0.0)
    assert kept == ["4", "2"] and scores == [1.0, 1.0]
    kept, _ = choose_drops(m2, ["4", "2"], lambda mm: 0.0 if isinstance(mm.get_submodule("4"), nn.Identity) else 1.0, (x[:1],))
    assert kept == []


def test_bad_layers() -> None:
    m, data = _toy()
    with pytest.raises(ConfigError, match="do not exist"):
        autolr_finetune(m, data, AutoLRConfig(layers=["9"]))
    with pytest.raises(ConfigError, match="no Conv/Linear"):
        autolr_finetune(m, data, AutoLRConfig(layers=["1"]))
    with pytest.raises(ConfigError, match="constant"):
        autolr_finetune(m, data, AutoLRConfig(train=TrainConfig(schedule="cosine")))
    with pytest.raises(ConfigError, match="score_layers"):
        autolr_finetune(m, data, AutoLRConfig(layers=["0", "2"], score_layers=["4"]))
