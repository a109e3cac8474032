"""LSQ-binary: least-squares binary / ternary / 2-bit quantisation with closed-form scales.

Pouransari, Tu, Tuzel, *Least squares binary quantization of neural networks* (CVPR-W 2020, 2001.02786).
Every scheme approximates a vector ``x`` (one output channel of a weight, or the whole tensor) as a sum of
scaled {-1, +1} (or {-1, 0, +1}) vectors and chooses the scales that minimise ``||x - x_hat||^2``:

* ``"1bit"``: ``x_hat = a sign(x)`` with ``a = mean|x|`` (the least-squares optimum).
* ``"ternary"``: ``x_hat = a t``, ``t in {-1, 0, 1}^n``. For a support of the ``k`` largest ``|x_i|`` the best
  scale is their mean and the error is ``||x||^2 - (sum of top-k |x|)^2 / k``; sorting ``|x|`` and scanning
  ``k`` gives the global optimum.
* ``"2bit"`` (the paper's optimal 2-bit scheme): ``x_hat = a1 b1 + a2 b2``, ``a1 >= a2 >= 0``. Its values are
  ``{+-(a1 + a2), +-(a1 - a2)}``: any symmetric pair of magnitudes ``v_hi >= v_lo >= 0``. The optimum splits
  the sorted ``|x|`` at one index into a low and a high group, each represented by its mean; scanning the
  split gives the least-squares optimum in ``O(n log n)`` (``a1 = (v_hi + v_lo)/2``, ``a2 = (v_hi - v_lo)/2``).
* ``"greedy"`` (k-bit residual): ``a_i = mean|r_i|``, ``b_i = sign(r_i)``, ``r_{i+1} = r_i - a_i b_i``.

The functions work row-wise on a 2-D view (``per_channel=True``: one set of scales per output channel).
:func:`lsbq_fake_quantize` adds a straight-through gradient for QAT. :func:`apply_lsbq` quantises the weights
of every ``Conv2d``/``Linear`` in place.

Example::

    import torch
    from torchslim.quantization.binary.lsbq import lsbq_quantize
    w = torch.randn(64, 3, 3, 3)
    w2 = lsbq_quantize(w, "2bit")            # per output channel, 4 levels {+-(a1+a2), +-(a1-a2)}
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn

from torchslim.core.config import Config
from torchslim.quantization.weights import FilterFn, select_weight_layers, weight_error

Scheme = Literal["1bit", "ternary", "2bit", "greedy"]

__all__ = [
    "LSBQ",
    "apply_lsbq",
    "binary_1bit",
    "greedy_kbit",
    "lsbq_fake_quantize",
    "lsbq_quantize",
    "ls_2bit",
    "ternary",
]


def _rows(x: Tensor, per_channel: bool) -> Tensor:
    if x.dim() == 0:
        raise ValueError("lsbq: expected a tensor with at least one dimension, got a scalar")
    if not bool(torch.isfinite(x).all()):
        raise ValueError("lsbq: input contains NaN or Inf; quantise finite weights only")
    return x.reshape(x.shape[0], -1) if per_channel and x.dim() > 1 else x.reshape(1, -1)


def _sign(x: Tensor) -> Tensor:
    return torch.where(x >= 0, torch.ones_like(x), -torch.ones_like(x))


def binary_1bit(x: Tensor, per_channel: bool = True) -> tuple[Tensor, Tensor]:
    """``(x_hat, alpha)`` with ``x_hat = alpha sign(x)``, ``alpha = mean|x|`` per row (sign(0) = +1)."""
    r = _rows(x, per_channel)
    alpha = r.abs().mean(dim=1, keepdim=True)
    return (alpha * _sign(r)).reshape(x.shape), alpha.squeeze(1)


def ternary(x: Tensor, per_channel: bool = True) -> tuple[Tensor, Tensor]:
    """Least-squares optimal ternary ``(x_hat, alpha)``: ``x_hat = alpha t``, ``t in {-1,0,1}``.

    Keeps the ``k`` largest magnitudes with ``k = argmax_k (sum of top-k |x|)^2 / k`` and ``alpha`` their mean.
    """
    r = _rows(x, per_channel)
    a = r.abs()
    s, idx = torch.sort(a, dim=1, descending=True)
    cs = torch.cumsum(s, dim=1)
    k = torch.arange(1, r.shape[1] + 1, dtype=r.dtype, device=r.device)
    gain = cs**2 / k  # error = ||x||^2 - gain
    kbest = torch.argmax(gain, dim=1, keepdim=True)  # index k-1
    alpha = torch.gather(cs, 1, kbest) / (kbest + 1).to(r.dtype)
    keep_sorted = (torch.arange(r.shape[1], device=r.device)[None, :] <= kbest).to(r.dtype)
    keep = torch.zeros_like(r).scatter(1, idx, keep_sorted)
    return (alpha * _sign(r) * keep).reshape(x.shape), alpha.squeeze(1)


def ls_2bit(x: Tensor, per_channel: bool = True) -> tuple[Tensor, Tensor]:
    """Least-squares optimal 2-bit ``(x_hat, alphas)`` with ``x_hat = a1 b1 + a2 b2`` (``alphas[:, 0] = a1``).

    Sorts ``|x|`` and scans the split between the low group (mean ``v_lo``) and the high group (mean
    ``v_hi``); the split with the largest ``n_lo v_lo^2 + n_hi v_hi^2`` minimises the error.
    """
    r = _rows(x, per_channel)
    a = r.abs()
    n = r.shape[1]
    s, _ = torch.sort(a, dim=1)
    cs = torch.cumsum(s, dim=1)
    total = cs[:, -1:]
    # split j = size of the low group, 0..n-1 (the high group is never empty)
    j = torch.arange(0, n, dtype=r.dtype, device=r.device)[None, :]
    low_sum = torch.cat([torch.zeros_like(total), cs[:, :-1]], dim=1)
    high_sum = total - low_sum
    low_mean = torch.where(j > 0, low_sum / j.clamp(min=1), torch.zeros_like(low_sum))
    high_mean = high_sum / (n - j)
    gain = low_mean * low_sum + high_mean * high_sum
    jb = torch.argmax(gain, dim=1, keepdim=True)
    v_lo = torch.gather(low_mean, 1, jb)
    v_hi = torch.gather(high_mean, 1, jb)
    # assign each |x| to the nearer level (equivalent to the split for the optimum; ties go high)
    mag = torch.where((a - v_lo).abs() < (a - v_hi).abs(), v_lo, v_hi)
    a1, a2 = (v_hi + v_lo) / 2, (v_hi - v_lo) / 2
    return (_sign(r) * mag).reshape(x.shape), torch.cat([a1, a2], dim=1)


def greedy_kbit(x: Tensor, bits: int = 2, per_channel: bool = True) -> tuple[Tensor, Tensor]:
    """Greedy residual ``bits``-bit binary approximation ``(x_hat, alphas [rows, bits])``."""
    if bits < 1:
        raise ValueError(f"greedy_kbit: bits must be >= 1, got {bits}")
    r = _rows(x, per_channel)
    res = r.clone()
    out = torch.zeros_like(r)
    alphas = []
    for _ in range(bits):
        al = res.abs().mean(dim=1, keepdim=True)
        step = al * _sign(res)
        out = out + step
        res = res - step
        alphas.append(al)
    return out.reshape(x.shape), torch.cat(alphas, dim=1)


def lsbq_quantize(x: Tensor, scheme: Scheme = "2bit", per_channel: bool = True, bits: int = 2) -> Tensor:
    """Quantised ``x`` (same shape) under ``scheme``; ``bits`` is used by ``"greedy"`` only."""
    if scheme == "1bit":
        return binary_1bit(x, per_channel)[0]
    if scheme == "ternary":
        return ternary(x, per_channel)[0]
    if scheme == "2bit":
        return ls_2bit(x, per_channel)[0]
    if scheme == "greedy":
        return greedy_kbit(x, bits, per_channel)[0]
    raise ValueError(f"lsbq: unknown scheme {scheme!r}; use one of '1bit', 'ternary', '2bit', 'greedy'")


def lsbq_fake_quantize(x: Tensor, scheme: Scheme = "2bit", per_channel: bool = True, bits: int = 2) -> Tensor:
    """:func:`lsbq_quantize` with a straight-through gradient (identity), for quantisation-aware training."""
    q = lsbq_quantize(x.detach(), scheme, per_channel, bits)
    return q + (x - x.detach())


class LSBQ(Config):
    """Weight-only least-squares binary quantisation of Conv2d/Linear layers.

    ``scheme``: ``1bit`` | ``ternary`` | ``2bit`` (optimal) | ``greedy`` (``bits`` residual binary terms).
    ``per_channel``: one set of scales per output channel (else one per tensor).
    """

    type_name = "lsbq"
    scheme: Scheme = "2bit"
    bits: int = 2
    per_channel: bool = True


@torch.no_grad()
def apply_lsbq(
    model: nn.Module, config: LSBQ, filter_fn: FilterFn | None = None
) -> dict[str, dict[str, float]]:
    """Quantise the weights of every Conv2d/Linear (``filter_fn(name, module)`` selects) in place.

    Returns ``{layer name: {"mse": ..., "sqnr_db": ..., "numel": ...}}``. Raises ``ValueError`` when no layer
    is selected.
    """
    report: dict[str, dict[str, float]] = {}
    for name, mod in select_weight_layers(model, filter_fn, "apply_lsbq").items():
        w = mod.weight.data
        q = lsbq_quantize(w.float(), config.scheme, config.per_channel, config.bits).to(w.dtype)
        report[name] = weight_error(w, q)
        mod.weight.data.copy_(q)
    return report
