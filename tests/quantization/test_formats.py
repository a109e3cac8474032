"""FP8 / int / S2FP8 format emulation vs brute-force enumeration of every code."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from torchslim.quantization.formats import (
    E4M3,
    E5M2,
    FloatFormat,
    IntFormat,
    int_quantize,
    representable_values,
    round_to_format,
    s2fp8_params,
    s2fp8_quantize,
)

torch.set_num_threads(1)

_VALUES = {f.name: representable_values(f) for f in (E4M3, E5M2)}
_CODES = {}
for _f in (E4M3, E5M2):
    # value -> mantissa LSB of its (positive) code, for the ties-to-even reference
    width = 1 + _f.exp_bits + _f.man_bits
    _CODES[_f.name] = {_f.decode(c): c & 1 for c in range(2 ** (width - 1)) if math.isfinite(_f.decode(c))}


def _brute_round(x: float, fmt: FloatFormat) -> float:
    """Nearest representable value (ties: even code), saturating at +-max: the reference."""
    vals = _VALUES[fmt.name]
    a = min(abs(x), fmt.max_value)
    d = (vals - a).abs()
    best = d.min()
    cands = [float(v) for v in vals[d == best] if v >= 0]
    if len(cands) > 1:
        cands = [v for v in cands if _CODES[fmt.name][v] == 0]
    return math.copysign(cands[0], x)


def test_format_constants() -> None:
    # metric: exact equality with the OCP FP8 specification values
    assert E4M3.max_value == 448.0 and E5M2.max_value == 57344.0
    assert E4M3.min_subnormal == 2.0**-9 and E5M2.min_subnormal == 2.0**-16
    assert float(_VALUES["e4m3"].max()) == 448.0 and float(_VALUES["e5m2"].max()) == 57344.0
    assert len(_VALUES["e4m3"]) == 253 and len(_VALUES["e5m2"]) == 247  # 256 codes - NaN/inf, +-0 merged


@pytest.mark.parametrize("fmt", [E4M3, E5M2], ids=lambda f: f.name)
@settings(max_examples=300, deadline=None)
@given(x=st.floats(min_value=-1e6, max_value=1e6, allow_nan=False, width=32))
def test_round_matches_brute_force(fmt: FloatFormat, x: float) -> None:
    # metric: exact equality with the brute-force nearest representable value (ties to even, saturating)
    y = float(round_to_format(torch.tensor([x], dtype=torch.float32), fmt)[0])
    assert y == _brute_round(x, fmt)


@pytest.mark.parametrize("fmt", [E4M3, E5M2], ids=lambda f: f.name)
def test_ties_and_representables_exact(fmt: FloatFormat) -> None:
    # every representable value is a fixed point; every midpoint goes to the even code (exact)
    vals = _VALUES[fmt.name]
    assert torch.equal(round_to_format(vals, fmt), vals)
    mids = (vals[1:] + vals[:-1]) / 2
    got = round_to_format(mids, fmt)
    ref = torch.tensor([_brute_round(float(m), fmt) for m in mids], dtype=torch.float64)
    assert torch.equal(got, ref)


def test_e5m2_matches_torch_cast_and_overflow() -> None:
    # metric: exact equality with torch's float8_e5m2 cast (round-to-nearest-even, inf on overflow)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(20000, generator=g) * torch.exp(torch.randn(20000, generator=g) * 6)
    y = round_to_format(x, E5M2, saturate=False)
    assert torch.equal(y, x.to(torch.float8_e5m2).float())
    assert float(round_to_format(torch.tensor([1e6]), E4M3)[0]) == 448.0
    assert math.isnan(float(round_to_format(torch.tensor([1e6]), E4M3, saturate=False)[0]))
    assert math.isinf(float(round_to_format(torch.tensor([-1e6]), E5M2, saturate=False)[0]))


def test_subnormals_and_underflow() -> None:
    # exact: smallest subnormal kept, half of it (a tie with 0) rounds to 0 (even)
    s = E4M3.min_subnormal
    got = round_to_format(torch.tensor([s, s / 2, 0.75 * s, 3 * s]), E4M3)
    assert got.tolist() == [s, 0.0, s, 3 * s]


def test_int_quantize_grid() -> None:
    # exact: symmetric int4 per-channel values lie on k * max|row| / 7, |k| <= 7
    w = torch.randn(8, 50)
    q = int_quantize(w, IntFormat(4), symmetric=True, axis=0)
    step = w.abs().amax(1, keepdim=True) / 7
    k = q / step
    assert torch.allclose(k, k.round(), atol=1e-4) and float(k.abs().max()) <= 7 + 1e-4
    with pytest.raises(ValueError, match="bits"):
        IntFormat(0)


def test_s2fp8_params_and_roundtrip() -> None:
    # mechanics: alpha*mu + beta = 0 and alpha*m + beta = 15 (abs tol 1e-9)
    g = torch.Generator().manual_seed(1)
    x = torch.exp(torch.randn(5000, generator=g) * 2) * 1e-6 * torch.sign(torch.randn(5000, generator=g))
    p = s2fp8_params(x)
    lg = torch.log2(x.abs().double())
    assert abs(p.alpha * float(lg.mean()) + p.beta) < 1e-9
    assert abs(p.alpha * float(lg.max()) + p.beta - 15.0) < 1e-9
    # claim (paper): on log-normal tensors far from 1 the S2FP8 round trip has lower error than plain FP8
    for scale in (1e-6, 1.0, 1e4):
        z = x / 1e-6 * scale
        err_fp8 = float(((round_to_format(z, E5M2) - z) ** 2).sum() / (z**2).sum())
        err_s2 = float(((s2fp8_quantize(z) - z) ** 2).sum() / (z**2).sum())
        assert err_s2 < err_fp8, (scale, err_s2, err_fp8)
    assert torch.equal(s2fp8_quantize(torch.zeros(4)), torch.zeros(4))
    with pytest.raises(ValueError, match="NaN"):
        s2fp8_params(torch.tensor([1.0, float("nan")]))
