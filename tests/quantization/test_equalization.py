"""Cross-layer equalization: exact function preservation, equal ranges, better per-tensor quantisation."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from torchslim.core.errors import ConfigError
from torchslim.quantization.primitives import choose_qparams, fake_quantize, qrange
from torchslim.quantization.ptq.equalization import equalize, equalize_pair, find_equalization_pairs
from torchslim.quantization.static import sqnr_db


def _imbalanced_net(seed: int = 0) -> nn.Module:
    """conv -> BN -> ReLU -> depthwise conv -> ReLU -> conv, with channel ranges spread over 4 decades."""
    torch.manual_seed(seed)
    net = nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
        nn.Conv2d(16, 16, 3, padding=1, groups=16), nn.ReLU(),
        nn.Conv2d(16, 8, 1),
    )
    with torch.no_grad():
        spread = torch.logspace(-2, 2, 16)
        net[0].weight.mul_(spread.reshape(-1, 1, 1, 1))
        net[0].bias.mul_(spread)
        net[3].weight.div_(spread.reshape(-1, 1, 1, 1))
        net[1].running_mean.uniform_(-0.5, 0.5)
        net[1].running_var.uniform_(0.5, 2.0)
    return net.eval()


def _per_tensor_w8(gm: nn.Module) -> nn.Module:
    q = __import__("copy").deepcopy(gm)
    qmin, qmax = qrange(8, True, True)
    with torch.no_grad():
        for m in q.modules():
            if isinstance(m, nn.Conv2d):
                s, z = choose_qparams(m.weight.min(), m.weight.max(), 8, True, True, True)
                m.weight.copy_(fake_quantize(m.weight, s, z, qmin, qmax))
    return q


def test_pairs_found_including_depthwise():
    """Both conv->relu->conv pairs are found (the second is depthwise -> 1x1)."""
    gm = equalize(_imbalanced_net(), iterations=1)
    assert find_equalization_pairs(gm) == [("0", "3"), ("3", "5")]


def test_equalize_preserves_output_exactly():
    """Equalized model equals the original model (allclose rtol 1e-4, atol 1e-4 on outputs of scale ~10)."""
    net = _imbalanced_net()
    x = torch.randn(8, 3, 10, 10)
    gm = equalize(net)
    with torch.no_grad():
        torch.testing.assert_close(gm(x), net(x), rtol=1e-4, atol=1e-4)


def test_equalize_pair_makes_ranges_equal():
    """After one step, r1_c == r2_c == sqrt(r1_c r2_c) (rel 1e-5) for a dense pair."""
    torch.manual_seed(1)
    c1, c2 = nn.Conv2d(4, 6, 3), nn.Conv2d(6, 5, 3)
    r1 = c1.weight.detach().reshape(6, -1).abs().amax(1)
    r2 = c2.weight.detach().transpose(0, 1).reshape(6, -1).abs().amax(1)
    equalize_pair(c1, c2)
    n1 = c1.weight.detach().reshape(6, -1).abs().amax(1)
    n2 = c2.weight.detach().transpose(0, 1).reshape(6, -1).abs().amax(1)
    torch.testing.assert_close(n1, torch.sqrt(r1 * r2), rtol=1e-5, atol=0)
    torch.testing.assert_close(n2, torch.sqrt(r1 * r2), rtol=1e-5, atol=0)


def test_equalization_improves_per_tensor_int8():
    """DFQ claim at small scale: with per-tensor int8 weights, output SQNR after equalization exceeds the
    SQNR without it by > 10 dB on a net whose channel ranges span 4 decades (measured: 5.0 -> 44.4 dB)."""
    net = _imbalanced_net()
    x = torch.randn(32, 3, 10, 10)
    from torchslim.quantization.fold import fold_batchnorm

    plain, eq = fold_batchnorm(net), equalize(net)
    with torch.no_grad():
        ref = net(x)
        before = sqnr_db(ref, _per_tensor_w8(plain)(x))
        after = sqnr_db(ref, _per_tensor_w8(eq)(x))
    assert after > before + 10.0


def test_bad_pair_errors():
    """Unknown paths and grouped (non-depthwise) convs fail with ConfigError."""
    with pytest.raises(ConfigError, match="unknown module path"):
        equalize(_imbalanced_net(), pairs=[("0", "nope")])
    with pytest.raises(ConfigError, match="only depthwise"):
        equalize_pair(nn.Conv2d(3, 8, 1), nn.Conv2d(8, 8, 1, groups=2))
