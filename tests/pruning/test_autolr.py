"""AutoLR (Ro & Choi 2021): weight variation against a hand computation, ascending variation after
auto-tuning on a toy model, per-layer LRs as gradient multipliers, and layer dropping."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from torchslim.core.errors import ConfigError
from torchslim.pruning.autolr import (
    AutoLRConfig,
    autolr_finetune,
    choose_drops,
    drop_layers_,
    is_ascending,
    layer_weights,
    weight_variation,
)
from torchslim.train import TrainConfig, Trainer


def test_weight_variation_equals_hand_computation() -> None:
    """Metric: relative L2 weight change per layer (a block gathers its conv + linear weights); reference:
    sqrt(sum (a-b)^2) / sqrt(sum b^2) written out with Python floats; tolerance 1e-12."""
    torch.manual_seed(0)
    m = nn.Sequential(nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2)), nn.Flatten(), nn.Linear(2, 3))
    b = layer_weights(m, ["0", "2"])
    before = [p.detach().clone() for p in (m[0][0].weight, m[2].weight)]
    with torch.no_grad():
        m[0][0].weight.add_(0.1 * torch.randn_like(m[0][0].weight))
        m[0][1].weight.mul_(5.0)  # BatchNorm is not a Conv/Linear weight: ignored
        m[2].weight.mul_(1.5)
    v = weight_variation(b, layer_weights(m, ["0", "2"]))
    for name, old, new in (("0", before[0], m[0][0].weight), ("2", before[1], m[2].weight)):
        num = math.sqrt(sum((x - y) ** 2 for x, y in zip(new.flatten().tolist(), old.flatten().tolist(),
                                                          strict=True)))
        den = math.sqrt(sum(y * y for y in old.flatten().tolist()))
        assert v[name] == pytest.approx(num / den, abs=1e-12)
    assert v["2"] == pytest.approx(0.5, abs=1e-6)  # float32 weights


def _toy() -> tuple[nn.Sequential, TensorDataset]:
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(),
                      nn.Linear(16, 3))
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():  # a small-norm first layer and a large last one: single-LR variation descends
        m[0].weight.mul_(0.1)
        m[6].weight.mul_(4.0)
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
    r = autolr_finetune(m, data, AutoLRConfig(train=tc))
    assert is_ascending(r.last_variation), r.last_variation
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
    kept, _ = choose_drops(m2, ["4", "2"], lambda mm: 0.0 if isinstance(mm[4], nn.Identity) else 1.0, (x[:1],))
    assert kept == []


def test_bad_layers() -> None:
    m, data = _toy()
    with pytest.raises(ConfigError, match="do not exist"):
        autolr_finetune(m, data, AutoLRConfig(layers=["9"]))
    with pytest.raises(ConfigError, match="no Conv/Linear"):
        autolr_finetune(m, data, AutoLRConfig(layers=["1"]))
