"""Activation-density pruning (Foldy-Porto et al. 2020): density against a hand count, surgery widths,
the stop rule and the training-MACs counter."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from torchslim.core.cost import profile
from torchslim.core.errors import ConfigError
from torchslim.pruning.adp import ADPConfig, activation_density, adp_train, adp_widths, relu_groups
from torchslim.train import TrainConfig


def _cnn(width: int = 12) -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
        nn.Conv2d(width, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, 10),
    )


def test_density_equals_hand_count() -> None:
    """Metric: layer and per-channel densities; reference: counting (relu(bn(conv(x))) != 0) by hand on the
    same inputs over two batches; tolerance exact (float64 counts)."""
    m = _cnn().eval()
    xs = [torch.randn(4, 1, 6, 6), torch.randn(3, 1, 6, 6)]
    dens = activation_density(m, xs, (xs[0][:1],))
    with torch.no_grad():
        a1 = torch.cat([m[2](m[1](m[0](x))) for x in xs])
        a2 = torch.cat([m[5](m[4](m[3](m[2](m[1](m[0](x)))))) for x in xs])
    for name, a in (("0", a1), ("3", a2)):
        per = (a != 0).double().mean(dim=(0, 2, 3))
        assert torch.allclose(dens[name].channel, per, atol=0, rtol=0)
        assert dens[name].layer == pytest.approx(float((a != 0).double().mean()), abs=1e-12)


def test_relu_groups_residual() -> None:
    """In a ResNet block the ReLU after the add measures the residual stream's group."""
    from torchslim.zoo.resnet import ResNet

    m = ResNet(widths=(8,), blocks=(1,), strides=(1,), stem_stride=1)
    rg = relu_groups(m, (torch.randn(1, 1, 8, 8),))
    assert rg["stem.0"] == ["stem.2", "layer1.0.relu2"]
    assert rg["layer1.0.conv1"] == ["layer1.0.relu1"]


def test_surgery_width_is_ceil_density_times_width() -> None:
    """After one resize every group has ceil(AD * width) channels (AD measured right before the resize)."""
    m = _cnn(width=16)
    g = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.randn(64, 1, 6, 6, generator=g), torch.randint(0, 10, (64,), generator=g))
    cfg = ADPConfig(train=TrainConfig(epochs=2, batch_size=32, lr=0.05), prune_every=1, tol=0.0,
                    warmup_epochs=1, density_samples=64)
    res = adp_train(m, data, cfg, (torch.randn(1, 1, 6, 6),))
    h = res.history[0]
    for name, ad in h["density"].items():
        assert h["widths_after"][name] == max(2, math.ceil(ad * h["widths_before"][name] - 1e-9))
    assert m[0].out_channels == h["widths_after"]["0"] and m[3].out_channels == h["widths_after"]["3"]
    assert m[4].num_features == m[3].out_channels == m[8].in_features
    assert m(torch.randn(2, 1, 6, 6)).shape == (2, 10)


def test_adp_widths_and_stop_rule() -> None:
    from torchslim.pruning.adp import GroupDensity

    assert adp_widths({"g": GroupDensity(0.26, torch.zeros(8), [])}) == {"g": 3}
    assert adp_widths({"g": GroupDensity(0.0, torch.zeros(8), [])}, min_channels=2) == {"g": 2}
    data = TensorDataset(torch.randn(32, 1, 6, 6), torch.randint(0, 10, (32,)))
    x1 = (torch.randn(1, 1, 6, 6),)
    # tol = 1 - tiny: any density stops at the first check (after warmup_epochs=2), nothing is resized
    m = _cnn(width=8)
    res = adp_train(m, data, ADPConfig(train=TrainConfig(epochs=4, batch_size=32), tol=0.999, density_samples=32), x1)
    assert res.stopped_at == 1 and len(res.history) == 1 and m[0].out_channels == 8
    # stable_tol = 1: the first check resizes, the second sees "stable" densities and stops
    m = _cnn(width=16)
    cfg = ADPConfig(train=TrainConfig(epochs=5, batch_size=32), tol=0.0, stable_tol=1.0, warmup_epochs=1,
                    density_samples=32)
    res = adp_train(m, data, cfg, x1)
    assert [h["epoch"] for h in res.history] == [0, 1] and res.stopped_at == 1
    assert res.history[1]["widths_after"] == res.history[1]["widths_before"] == res.history[0]["widths_after"]
    assert res.history[0]["widths_after"]["0"] < 16 and m[0].out_channels == res.history[0]["widths_after"]["0"]
    # max_resizes = 0: never resize
    m = _cnn(width=8)
    res = adp_train(m, data, ADPConfig(train=TrainConfig(epochs=3, batch_size=32), tol=0.0, max_resizes=0,
                                       warmup_epochs=1, density_samples=32), x1)
    assert m[0].out_channels == 8 and res.stopped_at == 0


def test_training_macs_counter() -> None:
    """train_macs = sum over epochs of 3 * forward MACs at that epoch's width * samples (exact); without any
    resize it equals the full-width count."""
    m = _cnn(width=8)
    x1 = torch.randn(1, 1, 6, 6)
    fwd = profile(m, (x1,)).macs
    data = TensorDataset(torch.randn(20, 1, 6, 6), torch.randint(0, 10, (20,)))
    cfg = ADPConfig(train=TrainConfig(epochs=2, batch_size=10), tol=0.999, density_samples=20)
    res = adp_train(m, data, cfg, (x1,))
    assert res.train_macs == res.full_width_train_macs == 3 * fwd * 20 * 2


def test_bad_config() -> None:
    with pytest.raises(ConfigError):
        ADPConfig(tol=1.5)
    with pytest.raises(ConfigError, match="tuple"):
        adp_train(_cnn(), TensorDataset(torch.randn(2, 1, 6, 6), torch.zeros(2, dtype=torch.long)),
                  ADPConfig(), torch.randn(1, 1, 6, 6))  # type: ignore[arg-type]
