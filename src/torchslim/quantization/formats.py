"""Number formats: int-n, FP8 (E4M3 / E5M2) rounding emulation and S2FP8 (shifted and squeezed FP8).

Everything here is a pure tensor function that *emulates* a format in float32: the result holds exactly the
values the format can represent (fake quantisation), so it can be compared with a brute-force enumeration of
the format (:func:`representable_values`).

* :class:`IntFormat` -- ``bits``-wide signed/unsigned integers; :func:`int_quantize` fake-quantises with a
  per-tensor or per-channel symmetric / min-max scale (through :mod:`torchslim.quantization.primitives`).
* :class:`FloatFormat` -- a minifloat with ``exp_bits`` exponent and ``man_bits`` mantissa bits, IEEE-style
  subnormals, round to nearest, ties to even. :data:`E4M3` is the OCP "E4M3FN" variant (no infinities,
  max 448, NaN = S.1111.111); :data:`E5M2` is IEEE-like (max 57344, infinities and NaNs).
  :func:`round_to_format` saturates to +-max by default (``saturate=False``: overflow gives inf for E5M2
  and NaN for E4M3, as a cast does).
* S2FP8 (Cambier et al., ICLR 2020): per tensor, ``mu = mean(log2|x|)`` and ``m = max(log2|x|)`` over the
  non-zero entries; squeeze ``alpha = log2(max_fp8_exponent_range) / (m - mu)`` and shift ``beta = -alpha mu``
  so that ``alpha log2|x| + beta`` has mean 0 and maximum at the top of the FP8 range (15 for E5M2).
  The stored value is ``y = sign(x) 2^(alpha log2|x| + beta)`` rounded to FP8 and decoded as
  ``sign(y) 2^((log2|y| - beta) / alpha)``. :func:`s2fp8_quantize` is the round trip.

Example::

    import torch
    from torchslim.quantization.formats import E4M3, E5M2, round_to_format, s2fp8_quantize
    x = torch.randn(1000) * 100
    y = round_to_format(x, E4M3)               # |y| <= 448, every y representable in E4M3
    z = s2fp8_quantize(torch.randn(1000).exp() * 1e-6)   # tiny tensor: plain E5M2 would underflow
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from torchslim.quantization.primitives import choose_qparams, fake_quantize, qrange

__all__ = [
    "E4M3",
    "E5M2",
    "FloatFormat",
    "IntFormat",
    "S2FP8Params",
    "int_quantize",
    "representable_values",
    "round_to_format",
    "s2fp8_params",
    "s2fp8_quantize",
]


@dataclass(frozen=True)
class IntFormat:
    """A ``bits``-wide integer format (``signed`` two's complement or unsigned)."""

    bits: int
    signed: bool = True

    def __post_init__(self) -> None:
        if not 1 <= self.bits <= 16:
            raise ValueError(f"IntFormat.bits must be in [1, 16], got {self.bits}")

    @property
    def qrange(self) -> tuple[int, int]:
        """``(qmin, qmax)`` of the format."""
        return qrange(self.bits, self.signed)


@dataclass(frozen=True)
class FloatFormat:
    """A sign + ``exp_bits`` + ``man_bits`` minifloat.

    ``ieee_special``: the top exponent code is reserved for inf/NaN (E5M2). Otherwise only the all-ones
    code is NaN and the rest of the top binade holds finite values (E4M3FN).
    """

    name: str
    exp_bits: int
    man_bits: int
    ieee_special: bool

    def __post_init__(self) -> None:
        if self.exp_bits < 2 or self.man_bits < 1 or self.exp_bits + self.man_bits > 15:
            raise ValueError(
                f"FloatFormat {self.name}: need exp_bits >= 2, man_bits >= 1 and exp_bits + man_bits <= 15,"
                f" got {self.exp_bits}/{self.man_bits}"
            )

    @property
    def bias(self) -> int:
        return 2 ** (self.exp_bits - 1) - 1

    @property
    def min_normal_exp(self) -> int:
        """Exponent of the smallest normal number (``1 - bias``)."""
        return 1 - self.bias

    @property
    def max_value(self) -> float:
        """Largest finite value (448 for E4M3, 57344 for E5M2)."""
        top = 2**self.exp_bits - 1
        if self.ieee_special:
            e, frac = top - 1 - self.bias, 2.0 - 2.0 ** (-self.man_bits)
        else:  # all-ones mantissa in the top binade is NaN
            e, frac = top - self.bias, 2.0 - 2.0 * 2.0 ** (-self.man_bits)
        return frac * 2.0**e

    @property
    def min_subnormal(self) -> float:
        """Smallest positive value."""
        return 2.0 ** (self.min_normal_exp - self.man_bits)

    def decode(self, code: int) -> float:
        """Value of an ``1 + exp_bits + man_bits``-bit code (may be inf or NaN)."""
        width = 1 + self.exp_bits + self.man_bits
        if not 0 <= code < 2**width:
            raise ValueError(f"{self.name}: code {code} outside [0, {2**width})")
        sign = -1.0 if code >> (self.exp_bits + self.man_bits) else 1.0
        e = (code >> self.man_bits) & (2**self.exp_bits - 1)
        m = code & (2**self.man_bits - 1)
        top = 2**self.exp_bits - 1
        if self.ieee_special and e == top:
            return sign * math.inf if m == 0 else math.nan
        if not self.ieee_special and e == top and m == 2**self.man_bits - 1:
            return math.nan
        if e == 0:
            return sign * m * 2.0 ** (self.min_normal_exp - self.man_bits)
        return sign * (1.0 + m / 2**self.man_bits) * 2.0 ** (e - self.bias)


#: OCP FP8 E4M3 (FN: finite only, max 448, subnormals down to 2^-9).
E4M3 = FloatFormat("e4m3", exp_bits=4, man_bits=3, ieee_special=False)
#: OCP FP8 E5M2 (IEEE-like, max 57344, subnormals down to 2^-16).
E5M2 = FloatFormat("e5m2", exp_bits=5, man_bits=2, ieee_special=True)


def representable_values(fmt: FloatFormat) -> Tensor:
    """All finite values of ``fmt``, sorted ascending, without duplicates (``-0`` and ``+0`` merge).

    A brute-force enumeration of every code: the reference the rounding tests compare against.
    """
    width = 1 + fmt.exp_bits + fmt.man_bits
    vals = {fmt.decode(c) for c in range(2**width)}
    finite = sorted(v for v in vals if math.isfinite(v))
    return torch.tensor(finite, dtype=torch.float64)


def round_to_format(x: Tensor, fmt: FloatFormat, saturate: bool = True) -> Tensor:
    """Round ``x`` to the nearest value of ``fmt`` (ties to even mantissa), in ``x``'s float dtype.

    Subnormals are kept (gradual underflow); values below half the smallest subnormal become (signed) 0.
    Overflow (after rounding above ``fmt.max_value``): ``saturate=True`` clamps to ``+-max_value``;
    ``saturate=False`` gives ``+-inf`` for IEEE-style formats (E5M2) and NaN for E4M3. NaN stays NaN;
    ``+-inf`` input saturates to ``+-max`` (or stays inf / becomes NaN when not saturating).
    """
    if not x.is_floating_point():
        raise TypeError(
            f"round_to_format expects a floating-point tensor, got {x.dtype}; call x.float() first"
        )
    xf = x.to(torch.float64)
    a = xf.abs()
    finite = torch.isfinite(a)
    safe = torch.where(finite & (a > 0), a, torch.ones_like(a))
    e = torch.floor(torch.log2(safe)).clamp(min=fmt.min_normal_exp)
    step = torch.exp2(e - fmt.man_bits)
    q = torch.round(safe / step) * step  # torch.round: round half to even; exact in float64
    q = torch.where(finite & (a > 0), q, a)
    over = q > fmt.max_value
    if saturate:
        q = torch.where(over, torch.full_like(q, fmt.max_value), q)
    else:
        big = math.inf if fmt.ieee_special else math.nan
        q = torch.where(over, torch.full_like(q, big), q)
    out = torch.copysign(q, xf)
    out = torch.where(torch.isnan(xf), xf, out)
    return out.to(x.dtype)


def int_quantize(x: Tensor, fmt: IntFormat, symmetric: bool = True, axis: int | None = None) -> Tensor:
    """Fake-quantise ``x`` to ``fmt`` with a min-max scale, per tensor (``axis=None``) or per channel.

    Symmetric signed formats use the narrow range (``[-(2^(b-1) - 1), 2^(b-1) - 1]``) so that the grid is
    symmetric around 0.
    """
    if axis is None:
        mn, mx = x.detach().min(), x.detach().max()
    else:
        flat = x.detach().movedim(axis, 0).reshape(x.shape[axis], -1)
        mn, mx = flat.min(dim=1).values, flat.max(dim=1).values
    narrow = symmetric and fmt.signed
    scale, zp = choose_qparams(mn, mx, fmt.bits, symmetric=symmetric, signed=fmt.signed, narrow_range=narrow)
    qmin, qmax = qrange(fmt.bits, fmt.signed, narrow)
    return fake_quantize(x, scale, zp, qmin, qmax, axis=axis)


@dataclass(frozen=True)
class S2FP8Params:
    """Per-tensor S2FP8 statistics: squeeze ``alpha`` and shift ``beta`` (in the log2 domain)."""

    alpha: float
    beta: float


def s2fp8_params(x: Tensor, fmt: FloatFormat = E5M2) -> S2FP8Params:
    """Squeeze and shift of S2FP8 for ``x``: ``alpha mu + beta = 0`` and ``alpha m + beta = log2-range``.

    ``mu``/``m`` are the mean / max of ``log2|x|`` over the non-zero finite entries; the target maximum is
    ``floor(log2(fmt.max_value))`` (15 for E5M2, as in the paper). A tensor whose non-zero magnitudes are
    all equal (``m == mu``) gets ``alpha = 1`` and ``beta = -mu``; an all-zero tensor gets ``(1, 0)``.
    """
    a = x.detach().abs().to(torch.float64)
    if not bool(torch.isfinite(a).all()):
        raise ValueError("s2fp8_params: x contains NaN or Inf; S2FP8 statistics need finite values")
    nz = a[a > 0]
    if nz.numel() == 0:
        return S2FP8Params(1.0, 0.0)
    lg = torch.log2(nz)
    mu, m = float(lg.mean()), float(lg.max())
    target = float(math.floor(math.log2(fmt.max_value)))
    if m - mu < 1e-12:
        return S2FP8Params(1.0, -mu)
    alpha = target / (m - mu)
    return S2FP8Params(alpha, -alpha * mu)


def s2fp8_quantize(x: Tensor, fmt: FloatFormat = E5M2, params: S2FP8Params | None = None) -> Tensor:
    """S2FP8 round trip of ``x``: shift and squeeze in log2 space, round to ``fmt``, decode.

    Zeros stay zero. Values whose stored FP8 code underflows to 0 decode to 0.
    """
    p = params or s2fp8_params(x, fmt)
    xf = x.to(torch.float64)
    a = xf.abs()
    nz = a > 0
    y = torch.where(nz, torch.exp2(p.alpha * torch.log2(torch.where(nz, a, torch.ones_like(a))) + p.beta), a)
    yq = round_to_format(y, fmt, saturate=True)
    ok = yq > 0
    back = torch.exp2((torch.log2(torch.where(ok, yq, torch.ones_like(yq))) - p.beta) / p.alpha)
    out = torch.where(ok, back, torch.zeros_like(back))
    return torch.copysign(out, xf).to(x.dtype)
