"""Tests of LSBQ quantisation-aware training (quantization/binary/qat.py).

References: the closed-form quantisers of ``lsbq.py`` (forward, exact equality), hand-computed STE gradients
(exact up to float32 rounding, ``atol=1e-6``), and a short training run (loss must fall by 30%).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from torchslim.core.errors import ConfigError
from torchslim.quantization.binary.lsbq import lsbq_quantize
from torchslim.quantization.binary.qat import (
    LSBQQAT,
    ActivationQuantizer,
    LSBQConv2d,
    LSBQLinear,
    lsbq_qat_quantize,
    prepare_lsbq_qat,
    sign_sum,
)

SCHEMES = ["1bit", "ternary", "2bit", "greedy"]


@pytest.mark.parametrize("scheme", SCHEMES)
def test_conv_forward_equals_closed_form_on_weights_and_activations(scheme: str) -> None:
    # metric: exact equality (torch.equal) with conv2d(lsbq_quantize(x per sample), lsbq_quantize(W per channel))
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 5, 3, padding=1)
    q = LSBQConv2d.from_float(conv, LSBQQAT(weight_scheme=scheme, act_scheme=scheme))  # type: ignore[arg-type]
    x = torch.randn(4, 3, 6, 6)
    wq = lsbq_quantize(conv.weight.detach(), scheme, per_channel=True)  # type: ignore[arg-type]
    xq = lsbq_quantize(x, scheme, per_channel=True)  # type: ignore[arg-type]  # rows = samples
    assert torch.equal(q.quantized_weight().detach(), wq)
    ref = F.conv2d(xq, wq, conv.bias, padding=1)
    assert torch.equal(q(x).detach(), ref)


@pytest.mark.parametrize("scheme", SCHEMES)
def test_linear_forward_equals_closed_form(scheme: str) -> None:
    # metric: exact equality with linear(lsbq_quantize(x), lsbq_quantize(W)); greedy uses 3 terms here
    torch.manual_seed(1)
    lin = nn.Linear(12, 7)
    cfg = LSBQQAT(weight_scheme=scheme, act_scheme=scheme, bits=3)  # type: ignore[arg-type]
    q = LSBQLinear.from_float(lin, cfg)
    x = torch.randn(5, 12)
    wq = lsbq_quantize(lin.weight.detach(), scheme, True, bits=3)  # type: ignore[arg-type]
    xq = lsbq_quantize(x, scheme, True, bits=3)  # type: ignore[arg-type]
    assert torch.equal(q(x).detach(), F.linear(xq, wq, lin.bias))


@pytest.mark.parametrize("scheme", SCHEMES)
def test_sign_sum_reproduces_closed_form_with_its_coefficients(scheme: str) -> None:
    # metric: max abs difference <= 1e-6 (the sign-sum form is the STE graph; ties have probability 0)
    torch.manual_seed(2)
    x = torch.randn(6, 50) * 2
    q, c = lsbq_qat_quantize(x, scheme)  # type: ignore[arg-type]
    assert c is not None
    assert torch.allclose(sign_sum(x, c), q, atol=1e-6, rtol=0)


def test_paper_ste_1bit_hand_example() -> None:
    # x = [0.5, -0.25, 3.0]: a = mean|x| = 1.25; d(sum q)/dx = a * 1[|x| <= 1] = [1.25, 1.25, 0] (exact)
    x = torch.tensor([[0.5, -0.25, 3.0]], requires_grad=True)
    q, _ = lsbq_qat_quantize(x, "1bit")
    assert torch.equal(q.detach(), torch.tensor([[1.25, -1.25, 1.25]]))
    q.sum().backward()
    assert x.grad is not None
    assert torch.equal(x.grad, torch.tensor([[1.25, 1.25, 0.0]]))


def test_paper_ste_2bit_matches_hand_chain_rule() -> None:
    # hand: q = a1 s(x) + a2 s(x - a1 s(x)), s' = 1[|arg| <= 1], scales constant
    #   => dq/dx = 1 - (1 - a1 g1)(1 - a2 g2), g1 = 1[|x| <= 1], g2 = 1[|x - a1 sign x| <= 1]; atol 1e-6
    torch.manual_seed(3)
    x = (torch.randn(3, 40) * 1.5).requires_grad_(True)
    q, c = lsbq_qat_quantize(x, "2bit")
    assert c is not None
    up = torch.randn_like(x)
    (q * up).sum().backward()
    xd = x.detach()
    a1, a2 = c[:, :1], c[:, 1:]
    sgn = torch.where(xd >= 0, 1.0, -1.0)
    g1 = (xd.abs() <= 1).float()
    g2 = ((xd - a1 * sgn).abs() <= 1).float()
    expected = up * (1 - (1 - a1 * g1) * (1 - a2 * g2))
    assert x.grad is not None
    assert torch.allclose(x.grad, expected, atol=1e-6, rtol=0)
    # some entries lie outside the clip range for both signs, and get exactly zero gradient there
    outside = (g1 == 0) & (g2 == 0)
    assert bool(outside.any())
    assert bool((x.grad[outside] == 0).all())


@pytest.mark.parametrize("scheme", SCHEMES)
def test_identity_ste_passes_inside_clip_and_blocks_outside(scheme: str) -> None:
    # metric: exact equality of the gradient with upstream * 1[|x| <= clip], clip = 0.8
    torch.manual_seed(4)
    x = (torch.randn(4, 30) * 1.5).requires_grad_(True)
    q, _ = lsbq_qat_quantize(x, scheme, ste="identity", ste_clip=0.8)  # type: ignore[arg-type]
    up = torch.randn_like(x)
    (q * up).sum().backward()
    assert x.grad is not None
    assert torch.equal(x.grad, up * (x.detach().abs() <= 0.8).float())


def test_scales_get_no_gradient_and_weight_grad_flows_through_layer() -> None:
    # the STE graph must reach the float weight; check against the hand formula for 1-bit weights, fp acts:
    # d(sum y)/dW[o, i] = a_o * 1[|W| <= 1] * sum_b x[b, i]   (exact up to 1e-5)
    torch.manual_seed(5)
    lin = nn.Linear(6, 3, bias=False)
    q = LSBQLinear.from_float(lin, LSBQQAT(weight_scheme="1bit", act_scheme="fp"))
    x = torch.randn(8, 6)
    q(x).sum().backward()
    w = lin.weight.detach()
    a = w.abs().mean(dim=1, keepdim=True)
    expected = a * (w.abs() <= 1).float() * x.sum(0, keepdim=True)
    assert q.weight.grad is not None
    assert torch.allclose(q.weight.grad, expected, atol=1e-5, rtol=0)


def test_activation_clamp_and_running_scales() -> None:
    torch.manual_seed(6)
    aq = ActivationQuantizer("2bit", clamp=1.5, scales="running", momentum=0.5)
    with pytest.raises(RuntimeError, match="no training batch"):
        aq.eval()(torch.randn(2, 4))
    aq.train()
    x1, x2 = torch.randn(4, 10) * 2, torch.randn(4, 10) * 2
    # training: per-sample closed form of the clamped input (exact)
    assert torch.equal(aq(x1), lsbq_quantize(x1.clamp(-1.5, 1.5), "2bit", True))
    c1 = lsbq_qat_quantize(x1.clamp(-1.5, 1.5), "2bit")[1]
    c2 = lsbq_qat_quantize(x2.clamp(-1.5, 1.5), "2bit")[1]
    assert c1 is not None and c2 is not None
    aq(x2)
    ema = 0.5 * c1.mean(0) + 0.5 * c2.mean(0)  # first batch initialises, then momentum 0.5
    assert torch.allclose(aq.running_coeffs, ema, atol=1e-6, rtol=0)
    aq.eval()
    x3 = torch.randn(3, 10)
    y = aq(x3)
    # eval: nearest of the 4 levels +-(a1 +- a2) built from the running scales (hand reference)
    a1, a2 = float(ema[0]), float(ema[1])
    mag = torch.where(x3.clamp(-1.5, 1.5).abs() >= a1, a1 + a2, a1 - a2)
    assert torch.allclose(y, torch.where(x3 >= 0, 1.0, -1.0) * mag, atol=1e-6, rtol=0)


def _net() -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.BatchNorm2d(8),
        nn.Conv2d(8, 8, 3, padding=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.BatchNorm1d(8 * 64),
        nn.Linear(8 * 64, 32),
        nn.ReLU(),
        nn.Linear(32, 10),
    )


def test_prepare_keeps_first_and_last_and_is_configurable() -> None:
    torch.manual_seed(7)
    m = _net()
    assert prepare_lsbq_qat(m, LSBQQAT()) == ["4", "8"]
    assert type(m[0]) is nn.Conv2d and type(m[10]) is nn.Linear
    assert isinstance(m[4], LSBQConv2d) and isinstance(m[8], LSBQLinear)
    m2 = _net()
    assert prepare_lsbq_qat(m2, LSBQQAT(keep_first=False, keep_last=False)) == ["0", "4", "8", "10"]
    m3 = _net()
    assert prepare_lsbq_qat(m3, LSBQQAT(), filter_fn=lambda n, mod: isinstance(mod, nn.Linear)) == ["8"]
    with pytest.raises(ValueError, match="no layer swapped"):
        prepare_lsbq_qat(nn.Sequential(nn.Linear(3, 3)), LSBQQAT())
    with pytest.raises(ValueError, match="single layer"):
        prepare_lsbq_qat(nn.Linear(3, 3), LSBQQAT(keep_first=False, keep_last=False))
    with pytest.raises(ConfigError, match="bits"):
        LSBQConv2d.from_float(nn.Conv2d(2, 2, 1), LSBQQAT(bits=0))


def test_prepare_with_fp_schemes_is_the_original_model() -> None:
    # metric: max abs output difference <= 1e-6 (weights and biases copied; 'fp' quantises nothing)
    torch.manual_seed(8)
    m = _net().eval()
    x = torch.randn(5, 1, 8, 8)
    ref = m(x)
    prepare_lsbq_qat(m, LSBQQAT(weight_scheme="fp", act_scheme="fp"))
    assert torch.allclose(m(x), ref, atol=1e-6, rtol=0)


def test_tiny_model_trains_with_1bit_weights_and_2bit_activations() -> None:
    # 20 Adam steps (batch 32) on 512 synthetic 8x8 images of 10 classes (class prototype + noise): the
    # training loss (mean of the last 10 steps) must fall below 0.5x the first step's loss
    # (measured: 2.40 -> 0.50; 1.5 s of CPU time on one thread)
    g = torch.Generator().manual_seed(0)
    protos = torch.randn(10, 1, 8, 8, generator=g)
    y = torch.randint(0, 10, (512,), generator=g)
    x = protos[y] + 0.8 * torch.randn(512, 1, 8, 8, generator=g)
    torch.manual_seed(0)
    m = _net()
    prepare_lsbq_qat(m, LSBQQAT(weight_scheme="1bit", act_scheme="2bit"))
    opt = torch.optim.Adam(m.parameters(), lr=3e-3)
    losses = []
    for step in range(20):
        idx = torch.randint(0, 512, (32,), generator=torch.Generator().manual_seed(step))
        loss = F.cross_entropy(m(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert sum(losses[-10:]) / 10 < 0.5 * losses[0], (losses[0], losses[-10:])
