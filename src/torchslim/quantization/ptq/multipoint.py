"""Multi-point post-training weight quantisation (Liu, Ye, Zhou, Liu, AAAI 2021, 2002.09049).

Each output channel ``w`` (a row of the 2-D weight view) is approximated by a sum of scaled low-bit vectors
``w_hat = sum_i a_i q_i`` with ``q_i`` integer vectors in the symmetric ``bits``-bit grid
``[-(2^(b-1) - 1), 2^(b-1) - 1]``. The points are built greedily: point ``i`` quantises the current residual
with the scale that minimises its squared error (grid search over ``scale_grid`` clipping ratios), then all
scales ``a_1..a_i`` are re-fitted jointly by least squares. Because ``a_i = 0`` is admissible, the error never
increases with the number of points (:func:`multipoint_rows` returns the whole chain).

Extra points are allocated adaptively: every channel starts with one point and a budget of
``round((mean_points - 1) * channels)`` extra points goes, one at a time, to the channel whose next point
reduces the *output* error most. With calibration inputs the output error of channel ``c`` is
``dw_c^T H dw_c`` with ``H = E[x x^T]`` over the layer's input patches (exactly the mean squared output error);
without calibration data it falls back to the weight error ``||dw_c||^2``.

Storage: a channel with ``k`` points stores ``k * bits`` bits per weight (plus ``k`` float scales), so the
mean storage is ``mean_points * bits`` bits per weight. The paper's mixed-precision view: ``bits``-bit
arithmetic only, more of it where it pays.

Example::

    import torch
    from torchslim.quantization.ptq.multipoint import multipoint_quantize
    w = torch.randn(32, 144)
    wq, points = multipoint_quantize(w, bits=4, mean_points=1.25)   # points[c] in {1, 2, ...}
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from torchslim.core.config import Config
from torchslim.quantization.weights import FilterFn, select_weight_layers, weight_error

__all__ = [
    "MultiPoint",
    "allocate_points",
    "apply_multipoint",
    "input_second_moments",
    "multipoint_quantize",
    "multipoint_rows",
]


def _check(bits: int, points: int) -> None:
    if not 2 <= bits <= 16:
        raise ValueError(f"multipoint: bits must be in [2, 16], got {bits}")
    if points < 1:
        raise ValueError(f"multipoint: the number of points must be >= 1, got {points}")


def _best_scale(r: Tensor, qmax: int, scale_grid: int) -> Tensor:
    """Per row, the scale (clipping ratio of ``max|r| / qmax``) minimising ``||r - a clamp(round(r/a))||^2``."""
    m = r.abs().amax(dim=1).clamp(min=1e-30)
    ratios = torch.linspace(1.0 / scale_grid, 1.0, scale_grid, dtype=r.dtype, device=r.device)
    a = (m[:, None] * ratios[None, :] / qmax)[:, :, None]  # [R, G, 1]
    q = torch.round(r[:, None, :] / a).clamp(-qmax, qmax)
    err = ((r[:, None, :] - a * q) ** 2).sum(dim=-1)
    return a.squeeze(-1).gather(1, err.argmin(dim=1, keepdim=True)).squeeze(1)


def multipoint_rows(w: Tensor, bits: int, points: int, scale_grid: int = 32) -> list[Tensor]:
    """Greedy multi-point approximations of the rows of 2-D ``w``: ``[w_hat with 1 point, ..., with points]``."""
    _check(bits, points)
    if w.dim() != 2:
        raise ValueError(
            f"multipoint_rows expects a 2-D [channels, fan_in] tensor, got shape {tuple(w.shape)}"
        )
    if not bool(torch.isfinite(w).all()):
        raise ValueError("multipoint: weights contain NaN or Inf; quantise finite weights only")
    wd = w.to(torch.float64)
    qmax = 2 ** (bits - 1) - 1
    qs: list[Tensor] = []
    approx = torch.zeros_like(wd)
    chain = []
    for _ in range(points):
        r = wd - approx
        a = _best_scale(r, qmax, scale_grid)
        qs.append(torch.round(r / a[:, None].clamp(min=1e-30)).clamp(-qmax, qmax))
        basis = torch.stack(qs, dim=2)  # [R, N, i]
        # joint least-squares re-fit of all scales (ridge 1e-12 keeps all-zero points harmless)
        gram = basis.transpose(1, 2) @ basis
        gram = gram + 1e-12 * torch.eye(len(qs), dtype=wd.dtype, device=wd.device)
        coef = torch.linalg.solve(gram, basis.transpose(1, 2) @ wd[:, :, None])
        new = (basis @ coef).squeeze(2)
        # keep the previous approximation where the re-fit did not help (numerical safety: monotone error)
        worse = ((wd - new) ** 2).sum(1) > ((wd - approx) ** 2).sum(1)
        approx = torch.where(worse[:, None], approx, new)
        chain.append(approx.to(w.dtype))
    return chain


def allocate_points(errors: Tensor, mean_points: float) -> Tensor:
    """Points per row from ``errors[c, k]`` (error of row ``c`` with ``k + 1`` points), greedily by error drop.

    Every row gets one point; ``round((mean_points - 1) * rows)`` extra points go one at a time to the row whose
    next point lowers its error most (at most ``errors.shape[1]`` points per row).
    """
    rows, pmax = errors.shape
    if mean_points < 1 or mean_points > pmax:
        raise ValueError(
            f"allocate_points: mean_points must be in [1, {pmax}] (max_points), got {mean_points}"
        )
    budget = int(round((mean_points - 1) * rows))
    n = torch.ones(rows, dtype=torch.long)
    for _ in range(budget):
        nxt = n.clamp(max=pmax - 1)
        gain = errors[torch.arange(rows), n - 1] - errors[torch.arange(rows), nxt]
        gain = torch.where(n >= pmax, torch.full_like(gain, -float("inf")), gain)
        n[int(torch.argmax(gain))] += 1
    return n


@torch.no_grad()
def input_second_moments(
    model: nn.Module, layers: Mapping[str, nn.Module], batches: Iterable[Tensor], max_positions: int = 4096
) -> dict[str, Tensor]:
    """``H = E[x x^T]`` over the input patches (conv) / input rows (linear) of each named layer.

    Conv inputs are unfolded (``groups == 1`` only; grouped convs are skipped); at most ``max_positions``
    random positions per batch are kept to bound memory.
    """
    sums: dict[str, Tensor] = {}
    counts: dict[str, int] = {}
    gen = torch.Generator().manual_seed(0)

    def hook(name: str, mod: nn.Module) -> Callable[..., None]:
        def fn(_m: nn.Module, inp: tuple[Tensor, ...], _out: Tensor) -> None:
            x = inp[0].detach().to(torch.float64)
            if isinstance(mod, nn.Conv2d):
                cols = F.unfold(x, mod.kernel_size, mod.dilation, mod.padding, mod.stride)  # type: ignore[arg-type]
                x = cols.transpose(1, 2).reshape(-1, cols.shape[1])
            else:
                x = x.reshape(-1, x.shape[-1])
            if x.shape[0] > max_positions:
                x = x[torch.randperm(x.shape[0], generator=gen)[:max_positions]]
            sums[name] = sums.get(name, 0) + x.T @ x  # type: ignore[assignment, operator]
            counts[name] = counts.get(name, 0) + x.shape[0]

        return fn

    handles = [
        m.register_forward_hook(hook(n, m))
        for n, m in layers.items()
        if not (isinstance(m, nn.Conv2d) and m.groups != 1)
    ]
    was_training = model.training
    model.eval()
    try:
        for xb in batches:
            model(xb)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return {n: sums[n] / counts[n] for n in sums}


def multipoint_quantize(
    w: Tensor,
    bits: int = 4,
    mean_points: float = 1.25,
    max_points: int = 4,
    h: Tensor | None = None,
    scale_grid: int = 32,
) -> tuple[Tensor, Tensor]:
    """Multi-point quantisation of ``w`` (rows = dim 0) with adaptive allocation: ``(w_hat, points per row)``.

    ``h``: input second-moment matrix ``[fan_in, fan_in]`` for the output-error criterion (None: weight error).
    """
    rows = w.reshape(w.shape[0], -1) if w.dim() > 1 else w.reshape(1, -1)
    if h is not None and h.shape != (rows.shape[1], rows.shape[1]):
        raise ValueError(f"multipoint: h must be [{rows.shape[1]}, {rows.shape[1]}], got {tuple(h.shape)}")
    chain = multipoint_rows(rows, bits, max_points, scale_grid)
    errs = []
    for approx in chain:
        d = (rows - approx).to(torch.float64)
        errs.append(
            torch.einsum("rn,nm,rm->r", d, h.to(torch.float64), d) if h is not None else (d**2).sum(1)
        )
    n = allocate_points(torch.stack(errs, dim=1), mean_points)
    stacked = torch.stack(chain, dim=0)  # [P, R, N]
    out = stacked[n - 1, torch.arange(rows.shape[0])]
    return out.reshape(w.shape).to(w.dtype), n


class MultiPoint(Config):
    """Weight-only multi-point quantisation of Conv2d/Linear layers (per output channel).

    Storage: ``mean_points * bits`` bits per weight on average (plus per-channel float scales).
    """

    type_name = "multipoint"
    bits: int = Field(4, ge=2, le=16)
    mean_points: float = Field(1.25, ge=1.0)
    max_points: int = Field(default=4, ge=1)
    scale_grid: int = Field(default=32, ge=1)


@torch.no_grad()
def apply_multipoint(
    model: nn.Module,
    config: MultiPoint,
    filter_fn: FilterFn | None = None,
    calibration: Iterable[Tensor] | None = None,
) -> dict[str, dict[str, float]]:
    """Multi-point quantise the weights of every selected Conv2d/Linear in place.

    ``calibration``: batches of model inputs; when given, extra points go where the layer's *output* error
    drops most (else where the weight error drops most). Returns ``{layer: {"mse", "sqnr_db", "numel",
    "mean_points", "bits_per_weight"}}``; raises ``ValueError`` when no layer is selected.
    """
    if config.mean_points > config.max_points:
        raise ValueError(
            f"multipoint: mean_points={config.mean_points} exceeds max_points={config.max_points}; raise max_points"
        )
    layers = select_weight_layers(model, filter_fn, "apply_multipoint")
    hs = input_second_moments(model, layers, calibration) if calibration is not None else {}
    report: dict[str, dict[str, float]] = {}
    for name, mod in layers.items():
        weight = mod.weight
        assert isinstance(weight, Tensor)
        w = weight.data
        q, n = multipoint_quantize(
            w.float(), config.bits, config.mean_points, config.max_points, hs.get(name), config.scale_grid
        )
        report[name] = {
            **weight_error(w, q),
            "mean_points": float(n.float().mean()),
            "bits_per_weight": float(n.float().mean()) * config.bits,
        }
        w.copy_(q.to(w.dtype))
    return report
