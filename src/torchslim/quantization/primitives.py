"""Reference quantisation primitives: pure tensor functions.

These are the reference implementations every quantiser in torchslim is tested against:

* :func:`qrange` -- integer range of a ``bits``-wide (un)signed format,
* :func:`choose_qparams` -- scale and zero point from a (per-tensor or per-channel) min/max,
* :func:`quantize` / :func:`dequantize` -- affine mapping to integers and back (round half to even,
  the same rounding as ONNX ``QuantizeLinear``),
* :func:`fake_quantize` -- quantize-dequantize in float with a straight-through-estimator gradient.

Guarantees of :func:`choose_qparams`: the scale is never 0 (at least ``eps``), the zero point lies
inside ``[qmin, qmax]`` and 0.0 is exactly representable (the range is widened to include 0).

Example::

    import torch
    from torchslim.quantization.primitives import choose_qparams, fake_quantize, qrange
    x = torch.randn(1000)
    scale, zp = choose_qparams(x.min(), x.max(), bits=8, signed=False)
    qmin, qmax = qrange(8, signed=False)
    y = fake_quantize(x, scale, zp, qmin, qmax)       # |y - x| <= scale / 2 inside the range
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

#: Smallest scale ever returned; keeps ``x / scale`` finite for constant (all-zero) tensors.
EPS = float(torch.finfo(torch.float32).eps)


def qrange(bits: int = 8, signed: bool = False, narrow_range: bool = False) -> tuple[int, int]:
    """Integer range ``(qmin, qmax)`` of a ``bits``-wide format.

    ``narrow_range`` drops the most negative value of a signed format (int8 -> [-127, 127]) so that
    a symmetric range maps onto it without bias.
    """
    if not 1 <= bits <= 32:
        raise ValueError(f"bits must be in [1, 32], got {bits}")
    if signed:
        qmin, qmax = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
        if narrow_range:
            qmin += 1
    else:
        qmin, qmax = 0, 2**bits - 1
        if narrow_range:
            qmax -= 1
    return qmin, qmax


def _as_tensor(v: Tensor | float) -> Tensor:
    return v.detach().to(torch.float32) if isinstance(v, Tensor) else torch.tensor(float(v))


def choose_qparams(
    min_val: Tensor | float,
    max_val: Tensor | float,
    bits: int = 8,
    symmetric: bool = False,
    signed: bool = False,
    narrow_range: bool = False,
    eps: float = EPS,
) -> tuple[Tensor, Tensor]:
    """Scale (float32) and zero point (int32) mapping ``[min_val, max_val]`` onto the integer range.

    ``min_val``/``max_val`` are scalars (per tensor) or 1-D tensors (per channel); the result has the
    same shape. The range is first widened to contain 0 so that 0.0 is exactly representable.

    * asymmetric: ``scale = (max - min) / (qmax - qmin)``, ``zp = qmin - round(min / scale)``;
    * symmetric: ``scale = max(|min|, |max|) / ((qmax - qmin) / 2)``, ``zp = 0`` for signed formats and
      the mid-point (128 for uint8) for unsigned ones.

    Example::

        >>> s, z = choose_qparams(torch.tensor([-1.0, 0.0]), torch.tensor([1.0, 2.0]), symmetric=True, signed=True,
        ...                       narrow_range=True)
        >>> s * 127
        tensor([1., 2.])
    """
    mn = _as_tensor(min_val)
    mx = _as_tensor(max_val)
    if mn.shape != mx.shape:
        raise ValueError(
            f"min_val and max_val must have the same shape, got {tuple(mn.shape)} and {tuple(mx.shape)}"
        )
    if not (torch.isfinite(mn).all() and torch.isfinite(mx).all()):
        raise ValueError("choose_qparams: min/max contain NaN or Inf; check the calibration data")
    if bool((mn > mx).any()):
        raise ValueError("choose_qparams: min_val > max_val for some channel")
    qmin, qmax = qrange(bits, signed, narrow_range)
    mn = torch.clamp(mn, max=0.0)
    mx = torch.clamp(mx, min=0.0)
    if symmetric:
        absmax = torch.maximum(-mn, mx)
        scale = absmax / ((qmax - qmin) / 2.0)
        scale = torch.clamp(scale, min=eps)
        zp_value = 0 if signed else (qmin + qmax + 1) // 2
        zp = torch.full_like(scale, zp_value, dtype=torch.int32)
    else:
        scale = (mx - mn) / float(qmax - qmin)
        scale = torch.clamp(scale, min=eps)
        zp = qmin - torch.round(mn / scale)
        zp = torch.clamp(zp, qmin, qmax).to(torch.int32)
    return scale.to(torch.float32), zp


def _bcast(p: Tensor, x: Tensor, axis: int | None) -> Tensor:
    if axis is None or p.dim() == 0:
        return p
    shape = [1] * x.dim()
    shape[axis] = -1
    return p.reshape(shape)


def quantize(
    x: Tensor, scale: Tensor | float, zero_point: Tensor | int, qmin: int, qmax: int, axis: int | None = None
) -> Tensor:
    """``clamp(round(x / scale) + zp, qmin, qmax)`` as an int32 tensor (round half to even).

    ``axis`` names the channel dimension when ``scale``/``zero_point`` are per channel.
    """
    s = _bcast(_as_tensor(scale), x, axis)
    z = _bcast(torch.as_tensor(zero_point), x, axis).to(torch.float32)
    q = torch.round(x.to(torch.float32) / s) + z
    return torch.clamp(q, qmin, qmax).to(torch.int32)


def dequantize(q: Tensor, scale: Tensor | float, zero_point: Tensor | int, axis: int | None = None) -> Tensor:
    """``(q - zp) * scale`` in float32."""
    s = _bcast(_as_tensor(scale), q, axis)
    z = _bcast(torch.as_tensor(zero_point), q, axis).to(torch.float32)
    return (q.to(torch.float32) - z) * s


def fake_quantize(
    x: Tensor,
    scale: Tensor | float,
    zero_point: Tensor | int,
    qmin: int,
    qmax: int,
    axis: int | None = None,
) -> Tensor:
    """Quantize then dequantize ``x``, keeping float dtype; gradient is the straight-through estimator.

    The gradient w.r.t. ``x`` is 1 where ``qmin <= round(x / scale) + zp <= qmax`` and 0 outside.
    For ranges that fit in 8 bits this calls ``torch.fake_quantize_per_tensor_affine`` /
    ``torch.fake_quantize_per_channel_affine``, which the (legacy) ONNX exporter turns into
    ``QuantizeLinear``/``DequantizeLinear``; wider ranges use a pure-tensor implementation.
    """
    s = _as_tensor(scale).to(x.device)
    z = torch.as_tensor(zero_point).to(device=x.device, dtype=torch.int32)
    per_channel = axis is not None and s.dim() > 0
    if qmax - qmin <= 255 and -128 <= qmin and qmax <= 255 and x.dtype == torch.float32:
        if per_channel:
            assert axis is not None
            return torch.fake_quantize_per_channel_affine(x, s.reshape(-1), z.reshape(-1), axis, qmin, qmax)
        return torch.fake_quantize_per_tensor_affine(x, s.reshape(()), z.reshape(()), qmin, qmax)
    sb = _bcast(s, x, axis if per_channel else None)
    zb = _bcast(z, x, axis if per_channel else None).to(x.dtype)
    q = torch.round(x / sb) + zb
    inside = (q >= qmin) & (q <= qmax)
    y = (torch.clamp(q, qmin, qmax) - zb) * sb
    # straight-through: value y, gradient 1 inside the range and 0 outside
    return y.detach() + (x - x.detach()) * inside.to(x.dtype)


def sqnr_db(reference: Tensor, approx: Tensor) -> float:
    """Signal-to-quantisation-noise ratio ``10 log10(||ref||^2 / ||ref - approx||^2)`` in dB."""
    ref = reference.detach().to(torch.float64)
    noise = (ref - approx.detach().to(torch.float64)).pow(2).sum()
    signal = ref.pow(2).sum()
    if float(noise) == 0.0:
        return math.inf
    return float(10.0 * torch.log10(signal / noise))
