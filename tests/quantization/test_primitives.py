"""Property tests of the reference quantisation primitives (hypothesis)."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from torchslim.quantization.primitives import choose_qparams, dequantize, fake_quantize, qrange, quantize

finite = st.floats(min_value=-1e3, max_value=1e3, allow_nan=False, allow_infinity=False, width=32)
bits_st = st.integers(min_value=2, max_value=16)


@st.composite
def ranges(draw):  # type: ignore[no-untyped-def]
    a = draw(finite)
    b = draw(finite)
    return min(a, b), max(a, b)


@settings(max_examples=200, deadline=None)
@given(r=ranges(), bits=bits_st, symmetric=st.booleans(), signed=st.booleans(), narrow=st.booleans())
def test_choose_qparams_invariants(r, bits, symmetric, signed, narrow):  # type: ignore[no-untyped-def]
    """Scale > 0, zero point inside the range, 0.0 exactly representable (exact)."""
    lo, hi = r
    qmin, qmax = qrange(bits, signed, narrow)
    scale, zp = choose_qparams(lo, hi, bits, symmetric, signed, narrow)
    assert float(scale) > 0
    assert qmin <= int(zp) <= qmax
    zero = torch.zeros(1)
    q = quantize(zero, scale, zp, qmin, qmax)
    assert float(dequantize(q, scale, zp)) == 0.0


@settings(max_examples=150, deadline=None)
@given(
    r=ranges(), bits=st.integers(min_value=2, max_value=12), signed=st.booleans(), seed=st.integers(0, 2**16)
)
def test_round_trip_error_within_half_scale(r, bits, signed, seed):  # type: ignore[no-untyped-def]
    """|dequant(quant(x)) - x| <= scale/2 (+ float slack) for x inside the calibrated range (allclose)."""
    lo, hi = r
    qmin, qmax = qrange(bits, signed)
    scale, zp = choose_qparams(lo, hi, bits, symmetric=False, signed=signed)
    g = torch.Generator().manual_seed(seed)
    x = lo + (hi - lo) * torch.rand(256, generator=g)
    y = dequantize(quantize(x, scale, zp, qmin, qmax), scale, zp)
    tol = float(scale) / 2 + 1e-5 * (abs(lo) + abs(hi) + 1)
    assert float((y - x).abs().max()) <= tol


@settings(max_examples=100, deadline=None)
@given(
    r=ranges(), bits=st.integers(min_value=2, max_value=16), signed=st.booleans(), seed=st.integers(0, 2**16)
)
def test_fake_quantize_idempotent_and_matches_reference(r, bits, signed, seed):  # type: ignore[no-untyped-def]
    """fq(fq(x)) == fq(x) and fq == dequant(quant(x)) (allclose, atol 1e-5 * range)."""
    lo, hi = r
    qmin, qmax = qrange(bits, signed)
    scale, zp = choose_qparams(lo, hi, bits, signed=signed)
    g = torch.Generator().manual_seed(seed)
    x = (lo - 1) + (hi - lo + 2) * torch.rand(128, generator=g)
    y = fake_quantize(x, scale, zp, qmin, qmax)
    atol = 1e-5 * (abs(lo) + abs(hi) + 1)
    torch.testing.assert_close(fake_quantize(y, scale, zp, qmin, qmax), y, atol=atol, rtol=0)
    ref = dequantize(quantize(x, scale, zp, qmin, qmax), scale, zp)
    torch.testing.assert_close(y, ref, atol=atol, rtol=0)


@settings(max_examples=100, deadline=None)
@given(bits=st.integers(min_value=2, max_value=16), signed=st.booleans())
def test_clamping_and_ste_gradient(bits, signed):  # type: ignore[no-untyped-def]
    """Outside the range values clamp to the end points; STE gradient is 1 inside and 0 outside (exact)."""
    qmin, qmax = qrange(bits, signed)
    scale, zp = choose_qparams(-1.0, 1.0, bits, signed=signed)
    lo_val = float(dequantize(torch.tensor(qmin), scale, zp))
    hi_val = float(dequantize(torch.tensor(qmax), scale, zp))
    x = torch.tensor([lo_val - 5.0, lo_val + 0.25 * (hi_val - lo_val), 0.0, hi_val + 5.0], requires_grad=True)
    y = fake_quantize(x, scale, zp, qmin, qmax)
    yd = y.detach()
    assert abs(float(yd[0]) - lo_val) < 1e-6 and abs(float(yd[3]) - hi_val) < 1e-6
    y.sum().backward()
    assert x.grad is not None
    assert x.grad.tolist() == [0.0, 1.0, 1.0, 0.0]


def test_per_channel_qparams_and_fake_quant():
    """Per-channel symmetric int8: scale = absmax/127, zero point 0; per-channel fq equals reference (allclose 1e-6)."""
    w = torch.randn(8, 4, 3, 3)
    absmax = w.reshape(8, -1).abs().max(dim=1).values
    scale, zp = choose_qparams(-absmax, absmax, 8, symmetric=True, signed=True, narrow_range=True)
    torch.testing.assert_close(scale, absmax / 127)
    assert (zp == 0).all()
    y = fake_quantize(w, scale, zp, -127, 127, axis=0)
    ref = dequantize(quantize(w, scale, zp, -127, 127, axis=0), scale, zp, axis=0)
    torch.testing.assert_close(y, ref, atol=1e-6, rtol=0)
    assert float((y - w).abs().max()) <= float(scale.max()) / 2 + 1e-6


def test_constant_tensor_gets_nonzero_scale():
    """All-zero ranges give scale == eps > 0 (exact), never a division by zero."""
    scale, zp = choose_qparams(torch.zeros(3), torch.zeros(3))
    assert (scale > 0).all() and torch.isfinite(scale).all()
    x = torch.zeros(3, 5)
    assert torch.equal(fake_quantize(x, scale, zp, 0, 255, axis=0), x)


def test_invalid_ranges_raise():
    """min > max and non-finite ranges are rejected with a clear message."""
    import pytest

    with pytest.raises(ValueError, match="min_val > max_val"):
        choose_qparams(1.0, -1.0)
    with pytest.raises(ValueError, match="NaN or Inf"):
        choose_qparams(float("nan"), 1.0)
