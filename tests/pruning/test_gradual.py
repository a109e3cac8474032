"""Gradual channel pruning with feature relevance scores (Aketi et al. 2020): the relevance score against a
hand computation and LRP conservation, global ranking, the pruning schedule and the final MACs."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from torchslim.core.cost import profile
from torchslim.core.errors import ConfigError
from torchslim.pruning import ChannelPrune
from torchslim.pruning.api import PruneError
from torchslim.pruning.gradual import GradualConfig, feature_relevance, global_removal, gradual_train
from torchslim.train import TrainConfig


def _cnn(w: int = 8) -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, w, 3, padding=1), nn.BatchNorm2d(w), nn.ReLU(),
        nn.Conv2d(w, w, 3, padding=1, stride=2), nn.BatchNorm2d(w), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(w, 4),
    )


def test_relevance_equals_hand_computation() -> None:
    """Metric: per-channel FRS of a 1x1-conv / ReLU / Linear net on 1x1 inputs; reference: by hand,
    R_c = relu(w_c x) * V[y, c] per sample, mean per class, mean over classes, abs, /L2 norm;
    tolerance 1e-12 (float64)."""
    m = nn.Sequential(nn.Conv2d(1, 3, 1, bias=False), nn.ReLU(), nn.Flatten(), nn.Linear(3, 2, bias=False)).double()
    w = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    v = torch.tensor([[1.0, 2.0, -3.0], [0.5, -1.0, 4.0]], dtype=torch.float64)
    with torch.no_grad():
        m[0].weight.copy_(w.reshape(3, 1, 1, 1))
        m[3].weight.copy_(v)
    xs = torch.tensor([1.0, -1.0, 2.0, 3.0], dtype=torch.float64)
    ys = torch.tensor([0, 0, 1, 1])
    got = feature_relevance(m, [(xs.reshape(4, 1, 1, 1), ys)], (xs.reshape(4, 1, 1, 1)[:1],))["0"]
    per_class = []
    for c in (0, 1):
        rows = [[max(w[k].item() * x, 0.0) * v[c, k].item() for k in range(3)]
                for x, y in zip(xs.tolist(), ys.tolist(), strict=True) if y == c]
        per_class.append([sum(r[k] for r in rows) / len(rows) for k in range(3)])
    ref = torch.tensor([abs((per_class[0][k] + per_class[1][k]) / 2) for k in range(3)], dtype=torch.float64)
    ref = ref / ref.norm()
    assert torch.allclose(got, ref, atol=1e-12, rtol=0)


def test_relevance_is_conserved() -> None:
    """Metric: per-channel relevance summed over channels, times H*W, at each ReLU layer of a bias-free
    ReLU net with non-negative weights and inputs (so abs() is the identity); reference: the true-class
    logit (LRP conservation, exact for bias-free ReLU nets with average pooling); tolerance 1e-9."""
    torch.manual_seed(2)
    m = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1, bias=False), nn.ReLU(),
                      nn.Conv2d(4, 3, 3, padding=1, bias=False), nn.ReLU(),
                      nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(3, 2, bias=False)).double()
    with torch.no_grad():
        for p in m.parameters():
            p.abs_()
    x = torch.rand(1, 1, 5, 5, dtype=torch.float64)
    y = torch.tensor([1])
    logit = float(m(x)[0, 1].detach())
    for g in ("0", "2"):  # conservation holds at every layer
        r = feature_relevance(m, [(x, y)], (x,), normalize=False)[g]
        assert abs(float(r.sum()) * 25 - logit) < 1e-9


def test_global_removal_and_min_channels() -> None:
    """Metric: widths after removing the n globally lowest channels; reference: hand ranking."""
    s = {"a": torch.tensor([0.1, 0.9, 0.2]), "b": torch.tensor([0.15, 0.05])}
    assert global_removal(s, 2) == {"a": 2, "b": 1}
    assert global_removal(s, 3) == {"a": 1, "b": 1}  # b is at min_channels=1, its 0.15 is skipped
    assert global_removal(s, 1, min_channels=2) == {"a": 2, "b": 2}
    with pytest.raises(PruneError, match="only 3 channels"):
        global_removal(s, 4)


def _data(n: int = 96) -> TensorDataset:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 1, 8, 8, generator=g)
    y = torch.randint(0, 4, (n,), generator=g)
    return TensorDataset(x, y)


@pytest.mark.parametrize("criterion", ["feature_relevance", "l1"])
def test_schedule_removes_asked_channels_then_hits_target(criterion: str) -> None:
    """Metric: channels removed at each scheduled step and the final MACs; reference: channels_per_step
    at every step but the last, the last one stops at the target; final MACs <= target (exact counts)."""
    m = _cnn(8)
    x1 = _data().tensors[0][:1]
    cfg = GradualConfig(train=TrainConfig(epochs=5, batch_size=32, lr=0.05), macs_ratio=0.4, prune_every=1,
                        start_epoch=1, end_epoch=4, channels_per_step=2, criterion=criterion, min_channels=1)
    assert cfg.prune_epochs() == [1, 2, 3, 4]
    res = gradual_train(m, _data(), cfg, (x1,))
    assert [h["epoch"] for h in res.history] == [0, 1, 2, 3]
    for h in res.history[:-1]:
        assert h["removed"] == 2
        assert sum(h["widths_before"].values()) - sum(h["widths_after"].values()) == 2
    assert res.macs_after <= res.target_macs == int(0.4 * res.macs_before)
    assert profile(m, (x1,)).macs == res.macs_after
    assert m(x1).shape == (1, 4)


def test_linear_schedule_reaches_target() -> None:
    """Metric: MACs after each step of the automatic (linear MACs) schedule; reference: the step targets
    macs0 - (macs0 - target) * i / steps; exact counts."""
    m = _cnn(8)
    x1 = _data().tensors[0][:1]
    cfg = GradualConfig(train=TrainConfig(epochs=3, batch_size=32), macs_ratio=0.5, start_epoch=1, end_epoch=2,
                        min_channels=1)
    res = gradual_train(m, _data(), cfg, (x1,))
    assert len(res.history) == 2
    m0, t = res.macs_before, res.target_macs
    assert res.history[0]["macs"] <= int(m0 - (m0 - t) * 1 / 2)
    assert res.history[-1]["macs"] <= t


def test_bad_config() -> None:
    with pytest.raises(ConfigError, match="macs_ratio"):
        GradualConfig(macs_ratio=0.0)
    with pytest.raises(ConfigError, match="unknown criterion"):
        GradualConfig(criterion="nope")
    assert ChannelPrune(ratio=0.1, importance="feature_relevance").importance == "feature_relevance"
