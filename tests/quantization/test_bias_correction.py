"""DFQ bias correction: clipped-normal mean, shift formula, and reduced output bias at 4 bits."""

from __future__ import annotations

import torch
from torch import nn

from torchslim.quantization.ptq.bias_correction import (
    clipped_normal_mean,
    correct_bias,
    expected_output_shift,
    input_means_from_bn,
    input_means_from_data,
)
from torchslim.quantization.ptq.zeroq import quantize_lowbit


def test_clipped_normal_mean_vs_monte_carlo():
    """Analytic E[relu(N(mu, s^2))] matches a 2e6-sample Monte Carlo estimate (abs 5e-3)."""
    g = torch.Generator().manual_seed(0)
    mu = torch.tensor([-1.0, 0.0, 0.5, 2.0])
    s = torch.tensor([0.5, 1.0, 2.0, 0.1])
    z = torch.randn(2_000_000, 4, generator=g) * s + mu
    torch.testing.assert_close(clipped_normal_mean(mu, s), z.clamp(min=0).mean(0), atol=5e-3, rtol=0)


def test_expected_shift_matches_direct_computation():
    """For a constant input x = E[x], conv(x; W + eps) - conv(x; W) equals the predicted shift at interior
    pixels (allclose 1e-5), dense and depthwise."""
    torch.manual_seed(0)
    for conv in (nn.Conv2d(4, 6, 3), nn.Conv2d(4, 4, 3, groups=4)):
        mean = torch.rand(4)
        x = mean.reshape(1, 4, 1, 1).expand(1, 4, 7, 7)
        eps = torch.randn_like(conv.weight) * 0.01
        with torch.no_grad():
            base = conv(x)
            conv.weight.add_(eps)
            diff = (conv(x) - base)[0, :, 2, 2]
        torch.testing.assert_close(expected_output_shift(conv, eps, mean), diff, atol=1e-5, rtol=1e-5)


def _bn_net():
    torch.manual_seed(3)
    net = nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
        nn.Conv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
        nn.Flatten(), nn.Linear(16 * 8 * 8, 10),
    )
    # give the BNs consistent statistics by running data through them in train mode
    net.train()
    with torch.no_grad():
        for _ in range(20):
            net(torch.randn(64, 1, 8, 8))
        for bn in (net[1], net[4]):
            bn.bias.uniform_(0.2, 1.0)  # positive shifts: large post-ReLU means -> a large bias shift
    return net.eval()


def test_bias_correction_reduces_output_bias_at_4_bits():
    """DFQ claim at small scale: W4A8, mean |E[y_q - y]| over logits drops > 2x with empirical means and
    drops with data-free BN means (measured: 0.046 -> 0.018 empirical, -> 0.034 data-free)."""
    net = _bn_net()
    x = torch.randn(512, 1, 8, 8)
    q4 = quantize_lowbit(net, x, weight_bits=4, act_bits=8)
    emp = correct_bias(q4, input_means_from_data(q4, x))
    free = correct_bias(q4, input_means_from_bn(net))
    with torch.no_grad():
        ref = net(x)

        def bias(q):
            return float((q(x) - ref).mean(0).abs().mean())

        b0, b_emp, b_free = bias(q4), bias(emp), bias(free)
    assert b_emp < b0 / 2
    assert b_free < b0


def test_bn_means_found_for_relu_bn_inputs():
    """Layers fed by relu(BN) get a BN-derived mean; the first conv (fed by the model input) does not."""
    means = input_means_from_bn(_bn_net())
    assert set(means) == {"3"}
    assert means["3"].shape == (16,) and bool((means["3"] > 0).all())
