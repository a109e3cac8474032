"""ZeroQ: distilled data matches BN statistics, KL sensitivity, Pareto mixed precision, low-bit simulation."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from torchslim.core.errors import ConfigError
from torchslim.quantization.fold import fold_batchnorm
from torchslim.quantization.ptq.zeroq import (
    distill_data,
    layer_sensitivity,
    mixed_precision,
    quantizable_layers,
    quantize_lowbit,
    quantize_weight,
    set_bits,
)
from torchslim.quantization.static import ActFakeQuant, WeightQuantWrapper


def _bn_cnn() -> nn.Module:
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 16, 3, padding=1, stride=2), nn.BatchNorm2d(16), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 5),
    )
    net.train()
    with torch.no_grad():
        for _ in range(10):  # BN statistics of a shifted, scaled input distribution
            net(torch.rand(64, 1, 12, 12) * 3 + 1)
    return net.eval()


def _bn_loss(net: nn.Module, x: torch.Tensor) -> float:
    losses = []

    def hook(m, args):
        a = args[0]
        mean, std = a.mean((0, 2, 3)), torch.sqrt(a.var((0, 2, 3), unbiased=False) + m.eps)
        losses.append(float((mean - m.running_mean).pow(2).sum() + (std - torch.sqrt(m.running_var + m.eps)).pow(2).sum()))

    hs = [m.register_forward_pre_hook(hook) for m in net.modules() if isinstance(m, nn.BatchNorm2d)]
    with torch.no_grad():
        net(x)
    for h in hs:
        h.remove()
    return sum(losses)


def test_distilled_data_matches_bn_statistics():
    """The BN-statistics loss of distilled data is < 5% of that of the Gaussian noise it starts from."""
    net = _bn_cnn()
    xd = distill_data(net, num_samples=32, input_shape=(1, 12, 12), iterations=150, lr=0.1)
    noise = torch.randn(32, 1, 12, 12, generator=torch.Generator().manual_seed(0))
    assert xd.shape == (32, 1, 12, 12)
    assert _bn_loss(net, xd) < 0.05 * _bn_loss(net, noise)
    assert not any(p.requires_grad is False for p in net.parameters())  # parameters restored


def test_distill_needs_batchnorm():
    """A model without BatchNorm fails with a ConfigError naming the alternative."""
    with pytest.raises(ConfigError, match="no BatchNorm"):
        distill_data(nn.Linear(3, 2), input_shape=(3,))


def test_sensitivity_definition_and_monotonicity():
    """Omega_i(k) equals a direct KL computation (rel 1e-4) and decreases with k for every layer."""
    net = _bn_cnn()
    x = torch.rand(64, 1, 12, 12) * 3 + 1
    sens = layer_sensitivity(net, x, bits=(2, 4, 8))
    assert list(sens) == ["0", "3", "8"]
    folded = fold_batchnorm(net)
    p = F.log_softmax(folded(x), -1).detach()
    with torch.no_grad():
        folded.get_submodule("3").weight.copy_(quantize_weight(folded.get_submodule("3").weight, 4))
    qlog = F.log_softmax(folded(x), -1).detach()
    direct = float((p.exp() * (p - qlog)).sum(-1).mean())
    assert sens["3"][4] == pytest.approx(direct, rel=1e-4)
    for v in sens.values():
        assert v[2] > v[4] > v[8] >= 0.0


def test_mixed_precision_budget_and_optimality():
    """The Pareto-DP assignment fits a 4-bit-average budget and its summed sensitivity is <= uniform 4-bit's."""
    net = _bn_cnn()
    x = torch.rand(64, 1, 12, 12) * 3 + 1
    sens = layer_sensitivity(net, x, bits=(2, 4, 8))
    bits = mixed_precision(sens, net, budget_bits=4.0)
    layers = quantizable_layers(net)
    size = sum(layers[n].weight.numel() * b for n, b in bits.items())
    assert size <= 4 * sum(m.weight.numel() for m in layers.values())
    assert sum(sens[n][b] for n, b in bits.items()) <= sum(sens[n][4] for n in sens) + 1e-12


def test_set_bits_w4a4_grid():
    """W4A4: every activation fake-quant uses [0, 15]; each weight channel takes <= 15 distinct levels
    (symmetric narrow range), and W8A8 and W4A4 from the same calibration differ."""
    net = _bn_cnn()
    x = torch.rand(64, 1, 12, 12) * 3 + 1
    q8 = quantize_lowbit(net, x, 8, 8)
    q4 = set_bits(q8, 4, 4)
    for m in q4.sim.modules():
        if isinstance(m, ActFakeQuant):
            assert (m.qmin, m.qmax) == (0, 15)
        if isinstance(m, WeightQuantWrapper):
            w = m.quantized_weight().detach().reshape(m.module.weight.shape[0], -1)
            assert all(torch.unique(row).numel() <= 15 for row in w)
    assert not torch.equal(q8(x), q4(x))
    with pytest.raises(ConfigError, match="not quantised layers"):
        set_bits(q8, {"nope": 4}, 8)
