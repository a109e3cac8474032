"""LEO: lossless compression of ReLU MLPs by removing stable units (Serra, Kumar, Ramalingam, CPAIOR 2020).

A ReLU whose pre-activation is ``<= 0`` for every input in the domain box is *stably inactive*: its output
is always 0, so the unit is deleted (its incoming row and outgoing column go). A ReLU whose pre-activation
is ``>= 0`` everywhere is *stably active*: it is linear, ``relu(z) = z``, so

* if every surviving unit of a layer is stably active, the layer is a linear map and is **folded** into
  the next one (``W' = W_next @ W``, ``b' = W_next @ b + b_next``), removing the layer and its ReLU;
* otherwise the ``|A|`` stably active units, whose weights ``W_A`` have rank ``r``, are replaced by ``r``
  units ``g = V h + c`` (``V``: an orthonormal basis of the row space of ``W_A``, ``c`` a shift that keeps
  them active over the domain), and the next layer absorbs ``W_A = M V`` — a saving only when ``r < |A|``.

Stability is decided from sound bounds on each pre-activation over the input box:

* ``method="interval"``: interval arithmetic (fast, looser);
* ``method="milp"``: for each unit, maximise and minimise its pre-activation with the earlier layers
  encoded exactly (big-M ReLU formulation, big-M from the best bounds found so far) using
  :func:`scipy.optimize.milp` (HiGHS). An LP relaxation is tried first; a MILP stopped by its time limit
  contributes its dual bound, which is still sound. Units observed with both signs on optional sample
  inputs are unstable, so their MILPs are skipped (their bounds stay at the LP/interval bound).

The result equals the original network on the whole box (up to floating-point rounding: the surgery is
done in float64, and the check in the tests is in float64 to <= 1e-6).

Example::

    from torchslim.pruning.leo import LosslessCompress, compress_lossless
    new, report = compress_lossless(mlp, LosslessCompress(lower=0.0, upper=1.0, method="interval"))
    print(report.summary())
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import ClassVar, Literal

import numpy as np
import torch
from pydantic import field_validator, model_validator
from torch import nn

from torchslim.core.config import Config
from torchslim.core.errors import ConfigError, UnsupportedModelError

__all__ = [
    "LayerReport",
    "LosslessCompress",
    "LosslessReport",
    "bounds_from_data",
    "compress_lossless",
    "interval_bounds",
    "milp_bounds",
]

Bounds = list[tuple[np.ndarray, np.ndarray]]


class LosslessCompress(Config):
    """Config of LEO lossless compression.

    ``lower``/``upper``: the input domain box, one float for every feature or one value per (flattened)
    feature, e.g. ``0.0``/``1.0`` for raw pixels or :func:`bounds_from_data` for normalised data.
    ``method``: ``"interval"`` or ``"milp"``. ``time_limit_s``: per MILP solve; ``total_time_limit_s``:
    after this many seconds of MILP solving the remaining units keep their LP/interval bounds (still sound).
    ``tolerance``: a unit counts as stable only if its bound clears 0 by this margin (guards against
    solver feasibility tolerances; 0 is fine for interval bounds, which are computed in float64).
    """

    type_name: ClassVar[str] = "leo"

    lower: float | list[float] = 0.0
    upper: float | list[float] = 1.0
    method: Literal["interval", "milp"] = "interval"
    time_limit_s: float = 2.0
    total_time_limit_s: float | None = None
    tolerance: float = 1e-6

    @field_validator("time_limit_s")
    @classmethod
    def _positive_time(cls, v: float) -> float:
        if v <= 0:
            raise ValueError("time_limit_s must be > 0 (seconds per MILP solve)")
        return v

    @field_validator("tolerance")
    @classmethod
    def _non_negative_tol(cls, v: float) -> float:
        if v < 0:
            raise ValueError("tolerance must be >= 0")
        return v

    @model_validator(mode="after")
    def _box_ordered(self) -> LosslessCompress:
        lo, hi = np.atleast_1d(np.asarray(self.lower, float)), np.atleast_1d(np.asarray(self.upper, float))
        if lo.size > 1 and hi.size > 1 and lo.size != hi.size:
            raise ValueError(
                f"lower has {lo.size} values but upper has {hi.size}; give equal lengths or scalars"
            )
        if np.any(lo > hi):
            raise ValueError("the input box is empty: some lower > upper; swap them")
        return self


@dataclass
class LayerReport:
    """What happened to one hidden layer."""

    index: int
    width: int
    stably_inactive: int
    stably_active: int
    unstable: int
    kept_units: int
    folded: bool

    @property
    def removed(self) -> int:
        return self.width - self.kept_units


@dataclass
class LosslessReport:
    """Result of :func:`compress_lossless`: per-layer counts, bounds and solver statistics."""

    method: str
    layers: list[LayerReport]
    bounds: Bounds
    params_before: int
    params_after: int
    seconds: float
    milp_solves: int = 0
    milp_timeouts: int = 0
    milp_skipped_by_samples: int = 0
    lp_solves: int = 0
    notes: list[str] = field(default_factory=list)

    @property
    def units_before(self) -> int:
        return sum(layer.width for layer in self.layers)

    @property
    def units_removed(self) -> int:
        return sum(layer.removed for layer in self.layers)

    def summary(self) -> str:
        rows = [
            f"layer {x.index}: width {x.width}, inactive {x.stably_inactive}, active {x.stably_active}, "
            f"kept {x.kept_units}{' (folded)' if x.folded else ''}"
            for x in self.layers
        ]
        frac = self.units_removed / max(1, self.units_before)
        rows.append(
            f"{self.method}: removed {self.units_removed}/{self.units_before} hidden units ({100 * frac:.1f}%), "
            f"params {self.params_before} -> {self.params_after}, {self.seconds:.2f}s"
        )
        return "\n".join(rows)


# --------------------------------------------------------------------------------------------------
# parsing


def _parse(mlp: nn.Module) -> tuple[bool, list[tuple[np.ndarray, np.ndarray]]]:
    """Return (has leading Flatten, [(W, b) float64]) for Flatten? Linear (ReLU Linear)*."""
    if not isinstance(mlp, nn.Sequential):
        raise UnsupportedModelError(
            f"compress_lossless needs an nn.Sequential of Linear/ReLU, got {type(mlp).__name__}; "
            "rebuild the MLP as nn.Sequential(Linear, ReLU, ..., Linear)"
        )
    mods = list(mlp)
    flatten = bool(mods) and isinstance(mods[0], nn.Flatten)
    if flatten:
        mods = mods[1:]
    layers: list[tuple[np.ndarray, np.ndarray]] = []
    for i, m in enumerate(mods):
        want_linear = i % 2 == 0
        ok = isinstance(m, nn.Linear) if want_linear else isinstance(m, nn.ReLU)
        if not ok:
            raise UnsupportedModelError(
                f"compress_lossless: module {i + int(flatten)} is {type(m).__name__}, expected "
                f"{'Linear' if want_linear else 'ReLU'}; only [Flatten,] Linear, ReLU, ..., Linear is supported "
                "(remove Dropout/BatchNorm first, e.g. fold BN into the Linear)"
            )
        if want_linear:
            assert isinstance(m, nn.Linear)
            w = m.weight.detach().double().cpu().numpy()
            bias = m.bias
            b = bias.detach().double().cpu().numpy() if bias is not None else np.zeros(w.shape[0])
            layers.append((w, b))
    if not layers or len(mods) % 2 == 0:
        raise UnsupportedModelError(
            "compress_lossless: the Sequential must end with a Linear (no final ReLU) and contain at least one"
        )
    return flatten, layers


def _box(config: LosslessCompress, n_in: int) -> tuple[np.ndarray, np.ndarray]:
    lo = np.atleast_1d(np.asarray(config.lower, float))
    hi = np.atleast_1d(np.asarray(config.upper, float))
    out = []
    for name, v in (("lower", lo), ("upper", hi)):
        if v.size == 1:
            v = np.full(n_in, float(v[0]))
        elif v.size != n_in:
            raise ConfigError(
                f"leo.{name}: has {v.size} values but the network takes {n_in} inputs; give a scalar or {n_in} values"
            )
        out.append(v)
    if np.any(out[0] > out[1]):
        raise ConfigError("leo: the input box is empty (lower > upper for some feature); swap them")
    return out[0], out[1]


def bounds_from_data(x: torch.Tensor) -> tuple[list[float], list[float]]:
    """Per-feature min and max of ``x`` (flattened per example): a data-derived input box.

    Note: the compressed network is then exact on this box, which covers the data but not other inputs.
    """
    flat = x.detach().reshape(x.shape[0], -1).double()
    return flat.min(0).values.tolist(), flat.max(0).values.tolist()


# --------------------------------------------------------------------------------------------------
# bounds


def _affine_bounds(
    w: np.ndarray, b: np.ndarray, lo: np.ndarray, hi: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    wp, wn = np.clip(w, 0, None), np.clip(w, None, 0)
    return wp @ lo + wn @ hi + b, wp @ hi + wn @ lo + b


def interval_bounds(mlp: nn.Sequential, lower: np.ndarray | float, upper: np.ndarray | float) -> Bounds:
    """Sound pre-activation bounds of every Linear of ``mlp`` over the box, by interval arithmetic."""
    _, layers = _parse(mlp)
    n_in = layers[0][0].shape[1]
    lo = np.broadcast_to(np.asarray(lower, float), (n_in,)).copy()
    hi = np.broadcast_to(np.asarray(upper, float), (n_in,)).copy()
    if np.any(lo > hi):
        raise ConfigError("interval_bounds: the input box is empty (lower > upper for some feature)")
    return _interval(layers, lo, hi)


def _interval(layers: list[tuple[np.ndarray, np.ndarray]], lo: np.ndarray, hi: np.ndarray) -> Bounds:
    out: Bounds = []
    for k, (w, b) in enumerate(layers):
        lz, uz = _affine_bounds(w, b, lo, hi)
        out.append((lz, uz))
        if k < len(layers) - 1:
            lo, hi = np.maximum(lz, 0.0), np.maximum(uz, 0.0)
    return out


@dataclass
class _MilpStats:
    solves: int = 0
    timeouts: int = 0
    skipped: int = 0
    lp: int = 0


def milp_bounds(
    mlp: nn.Sequential,
    config: LosslessCompress,
    samples: torch.Tensor | None = None,
) -> Bounds:
    """Pre-activation bounds of every hidden Linear of ``mlp`` by MILP (final layer: interval from these)."""
    _, layers = _parse(mlp)
    lo, hi = _box(config, layers[0][0].shape[1])
    bounds, _ = _milp(layers, lo, hi, config, _pre_acts(layers, samples))
    return bounds


def _pre_acts(
    layers: list[tuple[np.ndarray, np.ndarray]], samples: torch.Tensor | None
) -> list[np.ndarray] | None:
    if samples is None:
        return None
    h = samples.detach().reshape(samples.shape[0], -1).double().cpu().numpy()
    if h.shape[1] != layers[0][0].shape[1]:
        raise ConfigError(
            f"compress_lossless: samples have {h.shape[1]} features per example but the network takes "
            f"{layers[0][0].shape[1]}; pass inputs shaped like the model's input"
        )
    out = []
    for w, b in layers:
        z = h @ w.T + b
        out.append(z)
        h = np.maximum(z, 0.0)
    return out


def _milp(
    layers: list[tuple[np.ndarray, np.ndarray]],
    lo: np.ndarray,
    hi: np.ndarray,
    cfg: LosslessCompress,
    observed: list[np.ndarray] | None,
) -> tuple[Bounds, _MilpStats]:
    from scipy.optimize import Bounds as SBounds
    from scipy.optimize import LinearConstraint, milp

    stats = _MilpStats()
    start = time.perf_counter()
    ibp = _interval(layers, lo, hi)
    bounds: Bounds = [(ibp[0][0].copy(), ibp[0][1].copy())]  # first layer: interval is exact over a box
    tol = cfg.tolerance
    for k in range(1, len(layers)):
        if k == len(layers) - 1:
            # output layer: no ReLU to decide; interval from the tightened hidden bounds
            plo, phi = np.maximum(bounds[-1][0], 0.0), np.maximum(bounds[-1][1], 0.0)
            bounds.append(_affine_bounds(*layers[k], plo, phi))
            break
        a_mat, c_lo, c_hi, v_lo, v_hi, integrality, prev_off, prev_n = _encode(layers, bounds, lo, hi, k)
        n_vars = v_lo.size
        cons = [] if a_mat is None else [LinearConstraint(a_mat, c_lo, c_hi)]
        vb = SBounds(v_lo, v_hi)
        w, b = layers[k]
        lz, uz = ibp[k][0].copy(), ibp[k][1].copy()
        # interval from the tightened previous bounds is also sound and usually tighter than plain IBP
        t_lo, t_hi = _affine_bounds(
            w, b, np.maximum(bounds[k - 1][0], 0.0), np.maximum(bounds[k - 1][1], 0.0)
        )
        lz, uz = np.maximum(lz, t_lo), np.minimum(uz, t_hi)
        obs = observed[k] if observed is not None else None
        for u in range(w.shape[0]):
            for sense in (1.0, -1.0):  # 1: maximise (upper), -1: minimise (lower)
                cur = uz[u] if sense > 0 else lz[u]
                if (sense > 0 and cur <= -tol) or (sense < 0 and cur >= tol):
                    continue  # already stable by this side: nothing to gain for compression
                if (sense > 0 and lz[u] >= tol) or (sense < 0 and uz[u] <= -tol):
                    continue  # stable from the other side
                seen_both = obs is not None and bool(obs[:, u].max() > tol and obs[:, u].min() < -tol)
                if seen_both and k == len(layers) - 2:
                    stats.skipped += 1  # unstable, and no deeper hidden layer needs its bounds for big-M
                    continue
                c = np.zeros(n_vars)
                c[prev_off : prev_off + prev_n] = -sense * w[u]
                # LP relaxation first
                stats.lp += 1
                res = milp(
                    c, constraints=cons, bounds=vb, integrality=None, options={"time_limit": cfg.time_limit_s}
                )
                bound = _sound_bound(res, sense)
                if bound is not None:
                    val = bound + b[u]
                    uz[u], lz[u] = (min(uz[u], val), lz[u]) if sense > 0 else (uz[u], max(lz[u], val))
                still = (sense > 0 and uz[u] > -tol) or (sense < 0 and lz[u] < tol)
                over = (
                    cfg.total_time_limit_s is not None
                    and time.perf_counter() - start > cfg.total_time_limit_s
                )
                if still and seen_both:
                    stats.skipped += 1  # seen with both signs: unstable, no MILP can make it stable
                elif still and integrality.any() and not over:
                    stats.solves += 1
                    res = milp(
                        c,
                        constraints=cons,
                        bounds=vb,
                        integrality=integrality,
                        options={"time_limit": cfg.time_limit_s},
                    )
                    if res.status == 1:
                        stats.timeouts += 1
                    bound = _sound_bound(res, sense)
                    if bound is not None:
                        val = bound + b[u]
                        uz[u], lz[u] = (min(uz[u], val), lz[u]) if sense > 0 else (uz[u], max(lz[u], val))
        # margin for solver tolerances, then never looser than interval
        pad = tol * (1.0 + np.maximum(np.abs(lz), np.abs(uz)))
        lz, uz = np.maximum(lz - pad, ibp[k][0]), np.minimum(uz + pad, ibp[k][1])
        bounds.append((lz, uz))
    return bounds, stats


@dataclass
class _Sparse:
    """Rows of a sparse constraint matrix, built block by block."""

    rows: list[np.ndarray] = field(default_factory=list)
    cols: list[np.ndarray] = field(default_factory=list)
    vals: list[np.ndarray] = field(default_factory=list)
    lo: list[np.ndarray] = field(default_factory=list)
    hi: list[np.ndarray] = field(default_factory=list)
    n_rows: int = 0

    def add(
        self, entries: list[tuple[np.ndarray, np.ndarray, np.ndarray]], n: int, lo: np.ndarray, hi: np.ndarray
    ) -> None:
        """Append ``n`` rows; ``entries``: (local row index, column, value) triples."""
        for r, c, v in entries:
            self.rows.append(self.n_rows + r)
            self.cols.append(c)
            self.vals.append(v)
        self.lo.append(lo)
        self.hi.append(hi)
        self.n_rows += n


def _encode(
    layers: list[tuple[np.ndarray, np.ndarray]], bounds: Bounds, lo: np.ndarray, hi: np.ndarray, k: int
) -> tuple[object, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, int, int]:
    """Big-M MILP encoding of layers ``0..k-1`` over the box: variables x, then per layer h (and delta).

    Stably inactive units are fixed at 0, stably active ones are ``h = z``; an unstable unit with bounds
    ``l < 0 < u`` gets ``h >= z``, ``h <= z - l (1 - d)``, ``h <= u d``, ``h >= 0``, ``d`` binary.
    Returns the constraint matrix and row bounds, variable bounds, integrality and the offset/size of
    ``h_{k-1}`` (the input of layer ``k``).
    """
    from scipy.sparse import coo_matrix

    sp = _Sparse()
    n_vars = lo.size
    var_lo, var_hi, integ = [lo], [hi], [np.zeros(lo.size)]
    prev_off, prev_n = 0, lo.size
    for j in range(k):
        w, b = layers[j]
        lz, uz = bounds[j]
        m = w.shape[0]
        h_off = n_vars
        n_vars += m
        var_lo.append(np.zeros(m))
        var_hi.append(np.maximum(uz, 0.0))  # inactive units: h in [0, 0]
        integ.append(np.zeros(m))
        unstable = np.where((lz < 0) & (uz > 0))[0]
        active = np.where(lz >= 0)[0]
        d_off = n_vars
        n_vars += unstable.size
        var_lo.append(np.zeros(unstable.size))
        var_hi.append(np.ones(unstable.size))
        integ.append(np.ones(unstable.size))
        wi, wj = np.nonzero(w)
        wv = w[wi, wj]
        for units, kind in ((active, "eq"), (unstable, "ge"), (unstable, "le_big_m"), (unstable, "le_ud")):
            n = units.size
            if n == 0:
                continue
            r_of = np.full(m, -1)
            r_of[units] = np.arange(n)
            sel = r_of[wi] >= 0
            local = np.arange(n)
            minus_w = (r_of[wi[sel]], prev_off + wj[sel], -wv[sel])  # - W h_prev
            h_term = (local, h_off + units, np.ones(n))
            inf = np.full(n, np.inf)
            if kind == "eq":  # h - W h_prev = b
                sp.add([minus_w, h_term], n, b[units], b[units])
            elif kind == "ge":  # h - W h_prev >= b
                sp.add([minus_w, h_term], n, b[units], inf)
            elif kind == "le_big_m":  # h - W h_prev - l d <= b - l
                r_of_u = np.searchsorted(unstable, units)
                d_term = (local, d_off + r_of_u, -lz[units])
                sp.add([minus_w, h_term, d_term], n, -inf, b[units] - lz[units])
            else:  # h - u d <= 0
                r_of_u = np.searchsorted(unstable, units)
                sp.add([h_term, (local, d_off + r_of_u, -uz[units])], n, -inf, np.zeros(n))
        prev_off, prev_n = h_off, m
    if sp.n_rows == 0:  # every earlier unit is stably inactive: no constraints beyond variable bounds
        empty = np.zeros(0)
        return (
            None,
            empty,
            empty,
            np.concatenate(var_lo),
            np.concatenate(var_hi),
            np.concatenate(integ),
            prev_off,
            prev_n,
        )
    a = coo_matrix(
        (np.concatenate(sp.vals), (np.concatenate(sp.rows), np.concatenate(sp.cols))),
        shape=(sp.n_rows, n_vars),
    ).tocsr()
    return (
        a,
        np.concatenate(sp.lo),
        np.concatenate(sp.hi),
        np.concatenate(var_lo),
        np.concatenate(var_hi),
        np.concatenate(integ),
        prev_off,
        prev_n,
    )


def _sound_bound(res: object, sense: float) -> float | None:
    """Best proven bound on max (sense=1) or min (sense=-1) of the objective from a scipy milp result."""
    status = getattr(res, "status", None)
    if status == 0 and getattr(res, "fun", None) is not None:
        dual = getattr(res, "mip_dual_bound", None)
        val = float(res.fun) if dual is None or not np.isfinite(dual) else float(dual)  # type: ignore[attr-defined]
    elif status == 1:
        dual = getattr(res, "mip_dual_bound", None)
        if dual is None or not np.isfinite(dual):
            return None
        val = float(dual)
    else:
        return None
    # we minimised -sense * obj; min value m  =>  max obj = -m (sense 1), min obj = m (sense -1)
    return -val if sense > 0 else val


# --------------------------------------------------------------------------------------------------
# surgery


def compress_lossless(
    mlp: nn.Sequential,
    config: LosslessCompress,
    samples: torch.Tensor | None = None,
) -> tuple[nn.Sequential, LosslessReport]:
    """Remove the stable ReLUs of ``mlp`` over the config's input box; return ``(new_model, report)``.

    ``mlp``: ``nn.Sequential([Flatten,] Linear, ReLU, ..., Linear)``; it is not modified.
    ``samples``: optional inputs (e.g. a training batch) used only to skip MILPs for units seen with both
    signs; they never make a unit count as stable. The new model computes the same function on the box.
    """
    t0 = time.perf_counter()
    flatten, layers = _parse(mlp)
    lo, hi = _box(config, layers[0][0].shape[1])
    stats = _MilpStats()
    observed = _pre_acts(layers, samples)  # also validates the samples' shape
    if config.method == "interval":
        bounds = _interval(layers, lo, hi)
    else:
        bounds, stats = _milp(layers, lo, hi, config, observed)
    tol = config.tolerance if config.method == "milp" else 0.0

    new: list[tuple[np.ndarray, np.ndarray]] = []
    cur_w, cur_b = layers[0]
    in_lo, in_hi = lo, hi  # bounds of the current layer's input (output of the last kept layer)
    reports: list[LayerReport] = []
    for k in range(len(layers) - 1):
        lz, uz = bounds[k]
        nw, nb = layers[k + 1]
        inactive = uz <= -tol
        active = (lz >= tol) & ~inactive
        unstable = ~inactive & ~active
        keep = ~inactive
        w, b, nw = cur_w[keep], cur_b[keep], nw[:, keep]
        act, uns = active[keep], unstable[keep]
        width = int(lz.size)
        if not uns.any():  # the layer is linear over the box: fold it into the next
            cur_w, cur_b = nw @ w, nw @ b + nb
            reports.append(LayerReport(k, width, int(inactive.sum()), int(active.sum()), 0, 0, True))
            continue
        w_u, b_u, nw_u = w[uns], b[uns], nw[:, uns]
        w_a, b_a, nw_a = w[act], b[act], nw[:, act]
        n_a = int(act.sum())
        kept_w, kept_b, next_cols, next_b = [w_u], [b_u], [nw_u], nb.copy()
        u_lo, u_hi = np.maximum(lz[unstable], 0.0), np.maximum(uz[unstable], 0.0)
        out_lo, out_hi = [u_lo], [u_hi]
        if n_a:
            # W_A = M V with V orthonormal rows spanning W_A's row space; g = V h + c >= 0 on the box
            _, s, vt = np.linalg.svd(w_a, full_matrices=False)
            r = (
                int((s > s.max() * max(w_a.shape) * np.finfo(float).eps).sum())
                if s.size and s.max() > 0
                else 0
            )
            if r < n_a:
                v = vt[:r]
                m = w_a @ v.T
                g_lo, g_hi = _affine_bounds(v, np.zeros(r), in_lo, in_hi)
                c = -g_lo + 1e-3 * (1.0 + np.abs(g_lo))  # strictly positive margin; cancels exactly below
                kept_w.append(v)
                kept_b.append(c)
                next_cols.append(nw_a @ m)
                next_b = next_b + nw_a @ (b_a - m @ c)
                out_lo.append(g_lo + c)
                out_hi.append(g_hi + c)
            else:
                kept_w.append(w_a)
                kept_b.append(b_a)
                next_cols.append(nw_a)
                out_lo.append(np.maximum(lz[active], 0.0))
                out_hi.append(np.maximum(uz[active], 0.0))
        new.append((np.concatenate(kept_w), np.concatenate(kept_b)))
        cur_w, cur_b = np.concatenate(next_cols, axis=1), next_b
        in_lo, in_hi = np.concatenate(out_lo), np.concatenate(out_hi)
        kept = new[-1][0].shape[0]
        reports.append(
            LayerReport(k, width, int(inactive.sum()), int(active.sum()), int(unstable.sum()), kept, False)
        )
    new.append((cur_w, cur_b))

    dtype = next(mlp.parameters()).dtype
    mods: list[nn.Module] = [nn.Flatten()] if flatten else []
    for i, (w, b) in enumerate(new):
        lin = nn.Linear(w.shape[1], w.shape[0])
        with torch.no_grad():
            lin.weight.copy_(torch.from_numpy(w))
            lin.bias.copy_(torch.from_numpy(b))
        mods.append(lin)
        if i < len(new) - 1:
            mods.append(nn.ReLU())
    out = nn.Sequential(*mods).to(dtype)
    report = LosslessReport(
        method=config.method,
        layers=reports,
        bounds=bounds,
        params_before=sum(p.numel() for p in mlp.parameters()),
        params_after=sum(p.numel() for p in out.parameters()),
        seconds=time.perf_counter() - t0,
        milp_solves=stats.solves,
        milp_timeouts=stats.timeouts,
        milp_skipped_by_samples=stats.skipped,
        lp_solves=stats.lp,
    )
    return out, report
