"""PWLQ: piecewise linear post-training quantisation of weights (Fang et al., ECCV 2020, 2002.00104).

Each weight vector (one output channel, or the whole tensor) with range ``[-m, m]`` (``m = max|w|``) is split
at a breakpoint ``0 < p < m`` into a dense centre ``[-p, p]`` and sparse tails ``[-m, -p) U (p, m]``. With
``b`` bits, one bit names the region and both regions get ``b - 1`` bits (sign included):

* centre (sign-magnitude, ``b - 2`` magnitude bits): magnitudes ``k p / (2^(b-2) - 1)``,
  ``k = 0 .. 2^(b-2) - 1``, i.e. a symmetric uniform grid on ``[-p, p]``;
* tails (sign-magnitude, ``b - 2`` magnitude bits): magnitudes ``p + k (m - p) / 2^(b-2)``,
  ``k = 1 .. 2^(b-2)`` (``k = 0`` is ``p`` itself, already a centre code).

So PWLQ at ``b`` bits stores exactly ``b`` bits per weight, like ``b``-bit uniform (plus one float breakpoint
per channel), and has ``2^b - 1`` distinct values (15 at 4 bits), as many as narrow-range symmetric ``b``-bit
uniform. ``b >= 3``. (The paper quantises each region's magnitudes "with ``b - 1`` bits"; how the sign and
region bits are counted is our reading, chosen so that storage is strictly equal to ``b``-bit uniform.)

The breakpoint minimises the quantisation MSE, found one of two ways (``PWLQ.breakpoint``):

* ``"search"`` (default): :func:`search_breakpoint` scans a grid of ``p/m`` ratios and refines around the
  best by golden-section search on the empirical MSE of the row (the paper's 1-D search);
* ``"gaussian"`` / ``"laplace"``: :func:`closed_form_breakpoint`, the paper's fast approximation of the
  optimum of its expected-error model ``E(p) ~ (m - p)^2 + m (2p - m)(2F(p) - 1)`` for a zero-mean
  unit-variance Gaussian or Laplace ``F``, in units of the row's standard deviation ``s``:
  ``p / s = ln(0.8614 (m/s) + 0.6079)`` (Gaussian) and ``p / s = 0.8030 sqrt(m/s) - 0.3167`` (Laplace).
  No search; we checked both fits against the numerical minimiser of ``E(p)`` (within 2% for
  ``3 <= m/s <= 10``, see the tests).

Bias correction (``PWLQ.bias_correction``, off by default): per row, the quantised weights are shifted and
scaled so that their mean and standard deviation equal the float row's (the weight bias correction of
Banner et al. 2019, which the PWLQ paper applies on top of its quantiser). It costs one float offset and one
float scale per channel, and the corrected values are an affine map of the PWLQ codebook.

Example::

    import torch
    from torchslim.quantization.ptq.pwlq import pwlq_quantize
    w = torch.randn(64, 576)
    wq, p = pwlq_quantize(w, bits=4)         # per row: breakpoint p[i] and the quantised weights
    wq2, p2 = pwlq_quantize(w, bits=4, breakpoint="gaussian", bias_correction=True)   # no search
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn

from torchslim.core.config import Config
from torchslim.quantization.weights import FilterFn, select_weight_layers, weight_error

__all__ = [
    "PWLQ",
    "apply_pwlq",
    "closed_form_breakpoint",
    "correct_weight_bias",
    "pwlq_error",
    "pwlq_quantize",
    "pwlq_with_breakpoint",
    "search_breakpoint",
]

Breakpoint = Literal["search", "gaussian", "laplace"]
_BREAKPOINTS = ("search", "gaussian", "laplace")


def _rows(x: Tensor, per_channel: bool) -> Tensor:
    if x.dim() == 0:
        raise ValueError("pwlq: expected a tensor with at least one dimension, got a scalar")
    if not bool(torch.isfinite(x).all()):
        raise ValueError("pwlq: input contains NaN or Inf; quantise finite weights only")
    return x.reshape(x.shape[0], -1) if per_channel and x.dim() > 1 else x.reshape(1, -1)


def _check_bits(bits: int) -> None:
    if not 3 <= bits <= 16:
        raise ValueError(f"pwlq: bits must be in [3, 16] (1 region bit + >= 2 bits per region), got {bits}")


def pwlq_with_breakpoint(w: Tensor, p: Tensor, bits: int) -> Tensor:
    """Piecewise-linear quantisation of the rows of 2-D ``w`` with breakpoints ``p`` (``[rows]`` or ``[rows, k]``).

    With ``p`` of shape ``[rows, k]`` the result has shape ``[rows, k, n]`` (one quantisation per candidate).
    """
    _check_bits(bits)
    levels = 2 ** (bits - 2) - 1
    m = w.abs().amax(dim=1)
    if p.dim() == 1:
        pp, mm, ww = p[:, None], m[:, None], w
    else:
        pp, mm, ww = p[:, :, None], m[:, None, None], w[:, None, :]
    a = ww.abs()
    s1 = (pp / levels).clamp(min=1e-30)
    centre = torch.round(a / s1).clamp(max=levels) * s1
    s2 = ((mm - pp) / (levels + 1)).clamp(min=1e-30)
    tail = pp + torch.round((a - pp).clamp(min=0) / s2).clamp(max=levels + 1) * s2
    mag = torch.where(a <= pp, centre, tail)
    return torch.sign(ww) * mag


def pwlq_error(w: Tensor, p: Tensor, bits: int) -> Tensor:
    """Per-row (per-candidate) mean squared error of :func:`pwlq_with_breakpoint`."""
    q = pwlq_with_breakpoint(w, p, bits)
    ref = w if p.dim() == 1 else w[:, None, :]
    return ((q - ref) ** 2).mean(dim=-1)


def search_breakpoint(w: Tensor, bits: int, grid: int = 200, refine_steps: int = 20) -> Tensor:
    """Breakpoint per row of 2-D ``w`` minimising the PWLQ MSE.

    Scans ``p/m`` on ``grid`` points in ``(0, 1)``, then golden-section search on the bracket around the
    best grid point (``refine_steps`` iterations), keeping the best value ever evaluated.
    """
    m = w.abs().amax(dim=1)
    ratios = torch.linspace(0, 1, grid + 2, dtype=w.dtype, device=w.device)[1:-1]
    cand = m[:, None] * ratios[None, :]
    chunk = max(1, 2**22 // max(1, w.numel()))  # bound memory: ~4M elements per evaluation
    err = torch.cat([pwlq_error(w, cand[:, i : i + chunk], bits) for i in range(0, grid, chunk)], dim=1)
    best_i = torch.argmin(err, dim=1)
    best_p = torch.gather(cand, 1, best_i[:, None]).squeeze(1)
    best_e = torch.gather(err, 1, best_i[:, None]).squeeze(1)
    step = 1.0 / (grid + 1)
    lo = (torch.gather(ratios.expand(len(m), -1), 1, best_i[:, None]).squeeze(1) - step).clamp(min=1e-6) * m
    hi = (torch.gather(ratios.expand(len(m), -1), 1, best_i[:, None]).squeeze(1) + step).clamp(
        max=1 - 1e-6
    ) * m
    g = (5**0.5 - 1) / 2
    c, d = hi - g * (hi - lo), lo + g * (hi - lo)
    ec, ed = pwlq_error(w, c, bits), pwlq_error(w, d, bits)
    for _ in range(refine_steps):
        for pt, e in ((c, ec), (d, ed)):
            better = e < best_e
            best_p = torch.where(better, pt, best_p)
            best_e = torch.where(better, e, best_e)
        left = ec <= ed
        hi = torch.where(left, d, hi)
        lo = torch.where(left, lo, c)
        c, d = hi - g * (hi - lo), lo + g * (hi - lo)
        ec, ed = pwlq_error(w, c, bits), pwlq_error(w, d, bits)
    for pt, e in ((c, ec), (d, ed)):
        better = e < best_e
        best_p = torch.where(better, pt, best_p)
        best_e = torch.where(better, e, best_e)
    return best_p


def closed_form_breakpoint(w: Tensor, distribution: Literal["gaussian", "laplace"] = "gaussian") -> Tensor:
    """The paper's closed-form approximate optimal breakpoint per row of 2-D ``w`` (no search).

    With ``s`` the row's standard deviation and ``m = max|w|``: ``p = s ln(0.8614 m/s + 0.6079)`` for a
    Gaussian fit, ``p = s (0.8030 sqrt(m/s) - 0.3167)`` for a Laplace fit; clamped into ``(0, m)``.

    Example::

        >>> w = torch.randn(4, 10000, dtype=torch.float64)
        >>> p = closed_form_breakpoint(w, "gaussian")
        >>> bool(((p / w.abs().amax(1)) > 0.25).all() and ((p / w.abs().amax(1)) < 0.45).all())
        True
    """
    if distribution not in ("gaussian", "laplace"):
        raise ValueError(f"closed_form_breakpoint: distribution must be 'gaussian' or 'laplace', got {distribution!r}")
    if w.dim() != 2 or w.shape[1] < 2:
        raise ValueError(f"closed_form_breakpoint: expected a 2-D tensor with >= 2 values per row, got {tuple(w.shape)}")
    m = w.abs().amax(dim=1)
    sd = w.std(dim=1, correction=0).clamp(min=1e-30)
    r = m / sd
    if distribution == "gaussian":
        ratio = torch.log(0.8614 * r + 0.6079)
    else:
        ratio = 0.8030 * torch.sqrt(r) - 0.3167
    return torch.minimum(torch.maximum(ratio * sd, 1e-6 * m), (1 - 1e-6) * m)


def correct_weight_bias(w: Tensor, q: Tensor) -> Tensor:
    """Per row of 2-D ``w``: affine-correct ``q`` so its mean and standard deviation equal ``w``'s.

    ``q' = (q - mean(q)) * std(w) / std(q) + mean(w)`` (Banner et al. 2019's weight bias correction; rows whose
    quantised values are constant are only shifted).

    Example::

        >>> w = torch.randn(2, 100); q = torch.round(w)
        >>> qc = correct_weight_bias(w, q)
        >>> bool(torch.allclose(qc.mean(1), w.mean(1), atol=1e-5))
        True
    """
    if w.shape != q.shape or w.dim() != 2:
        raise ValueError(f"correct_weight_bias: w and q must be 2-D of one shape, got {tuple(w.shape)} and {tuple(q.shape)}")
    mw, mq = w.mean(dim=1, keepdim=True), q.mean(dim=1, keepdim=True)
    sw, sq = w.std(dim=1, correction=0, keepdim=True), q.std(dim=1, correction=0, keepdim=True)
    scale = torch.where(sq > 0, sw / sq.clamp(min=1e-30), torch.ones_like(sq))
    return (q - mq) * scale + mw


def pwlq_quantize(
    w: Tensor,
    bits: int = 4,
    per_channel: bool = True,
    grid: int = 200,
    refine_steps: int = 20,
    breakpoint: Breakpoint = "search",
    bias_correction: bool = False,
) -> tuple[Tensor, Tensor]:
    """PWLQ of ``w``: ``(w_hat with w's shape, breakpoints [rows])``.

    ``breakpoint`` is ``"search"`` (MSE search, :func:`search_breakpoint`), ``"gaussian"`` or ``"laplace"``
    (:func:`closed_form_breakpoint`); ``bias_correction`` applies :func:`correct_weight_bias` per row.

    Example::

        >>> w = torch.randn(8, 288)
        >>> wq, p = pwlq_quantize(w, bits=4)
        >>> wq.shape == w.shape and p.shape == (8,)
        True
    """
    _check_bits(bits)
    if breakpoint not in _BREAKPOINTS:
        raise ValueError(f"pwlq: breakpoint must be one of {_BREAKPOINTS}, got {breakpoint!r}")
    r = _rows(w, per_channel).to(torch.float64)
    if breakpoint == "search":
        p = search_breakpoint(r, bits, grid, refine_steps)
    else:
        if r.shape[1] < 2:
            raise ValueError("pwlq: a closed-form breakpoint needs >= 2 values per row; use breakpoint='search'")
        p = closed_form_breakpoint(r, breakpoint)
    q = pwlq_with_breakpoint(r, p, bits)
    if bias_correction:
        q = correct_weight_bias(r, q)
    return q.reshape(w.shape).to(w.dtype), p.to(w.dtype)


class PWLQ(Config):
    """Weight-only piecewise linear quantisation of Conv2d/Linear layers (``bits`` per weight, incl. region bit)."""

    type_name = "pwlq"
    bits: int = 4
    per_channel: bool = True
    grid: int = 200
    refine_steps: int = 20
    breakpoint: Breakpoint = "search"
    bias_correction: bool = False


@torch.no_grad()
def apply_pwlq(
    model: nn.Module, config: PWLQ, filter_fn: FilterFn | None = None
) -> dict[str, dict[str, float]]:
    """PWLQ the weights of every Conv2d/Linear (``filter_fn(name, module)`` selects) in place.

    Returns ``{layer: {"mse", "sqnr_db", "numel", "mean_breakpoint_ratio"}}``; raises ``ValueError`` when no
    layer is selected.
    """
    _check_bits(config.bits)
    report: dict[str, dict[str, float]] = {}
    for name, mod in select_weight_layers(model, filter_fn, "apply_pwlq").items():
        w = mod.weight.data
        q, p = pwlq_quantize(
            w.float(),
            config.bits,
            config.per_channel,
            config.grid,
            config.refine_steps,
            config.breakpoint,
            config.bias_correction,
        )
        m = _rows(w.float(), config.per_channel).abs().amax(dim=1).clamp(min=1e-30)
        report[name] = {**weight_error(w, q), "mean_breakpoint_ratio": float((p / m).mean())}
        mod.weight.data.copy_(q.to(w.dtype))
    if not report:
        raise ValueError("apply_pwlq: no Conv2d/Linear layer selected; check the model and filter_fn")
    return report
