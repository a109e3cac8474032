"""Latency-aware channel widths (performance-aware pruning, Radu et al., IISWC 2019, arXiv 2002.08697).

Latency is *not monotonic* in the channel count: a conv with fewer channels can be slower than a wider
one when it falls off the runtime's fast kernel path (DESIGN.md section 7: ONNX Runtime on this machine
wants multiples of 16). So instead of removing a fixed fraction of channels, measure each dependency
group's layers at candidate widths and pick widths from the table:

1. :func:`measure_table` builds, for every prunable group and candidate width ``w`` (multiples of
   ``step`` plus the full width), a probe holding the group's layers resized to ``w`` (producers with
   ``w`` outputs, consumers with ``w`` inputs, depthwise pass-throughs with ``w`` channels) at the
   shapes they see with the model's example input, and times it in ONNX Runtime or PyTorch, the widths
   of one group interleaved in one run. The table is cached as JSON (atomic write) keyed by the model's
   group structure, input shape, runtime and threads.
2. :func:`choose_widths` starts at full width and greedily shrinks, one step at a time, the group whose
   next step loses the least importance per millisecond saved, until the estimated latency (sum of the
   groups' probe latencies) meets the budget. Only widths on each group's *Pareto frontier* are
   candidates: a width is never picked when a larger width measured no slower.
3. :func:`plot_table` draws latency vs width per group, marking the non-monotonic (dominated) points.
4. :func:`snap_widths` moves FLOPs-proportional widths onto each group's frontier (local minima).

Example::

    >>> table = measure_table(model, (x,), runtime="ort", step=16, cache="table.json")   # doctest: +SKIP
    >>> choice = choose_widths(model, table, target_ratio=0.5)                           # doctest: +SKIP
    >>> prune_(model, ChannelPrune(ratio=0.0), (x,), widths=choice.widths)               # doctest: +SKIP

The table's raw estimate is additive: a conv that consumes one group and produces another is timed in
both groups' probes (with its other side at full width), and the un-prunable layers and runtime overhead
are not timed at all, so the sum over-counts some layers and misses others. :func:`fit_latency_model`
calibrates it against reality: it physically prunes copies of the model to ``K`` random width
assignments, times them end to end (interleaved), and fits ``measured_ms = a + b * table.estimate(widths)``
by least squares, reporting R^2, MAPE and Spearman rank correlation on held-out assignments. The fitted
:class:`LatencyModel` is stored on the table (``table.latency_model``, saved with it) and, passed to
:func:`choose_widths`, makes ``target_latency_ms`` a budget in *measured end-to-end* milliseconds::

    >>> lm = fit_latency_model(model, table, (x,), k=16)                                  # doctest: +SKIP
    >>> lm.fit_quality["r2"], lm.fit_quality["mape"]                                      # doctest: +SKIP
    >>> choice = choose_widths(model, table, target_latency_ms=10.0, latency_model=lm)    # doctest: +SKIP
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import os
import random
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from torchslim.core.graph import run_with_hooks
from torchslim.pruning.api import PruneError

__all__ = [
    "LatencyModel",
    "LatencyTable",
    "WidthChoice",
    "choose_widths",
    "fit_affine",
    "fit_latency_model",
    "fit_quality",
    "measure_table",
    "plot_table",
    "random_widths",
    "snap_widths",
]

Runtime = Literal["ort", "torch"]


# ------------------------------------------------------------------------------------------------ end-to-end model
def fit_affine(x: Sequence[float], y: Sequence[float]) -> tuple[float, float]:
    """Least-squares ``(a, b)`` of ``y ~ a + b * x`` (float64).

    Example::

        >>> fit_affine([1.0, 2.0, 3.0], [2.5, 4.5, 6.5])
        (0.5, 2.0)

    Raises:
        ValueError: fewer than two points, different lengths, or all ``x`` equal (slope undetermined).
    """
    if len(x) != len(y):
        raise ValueError(f"fit_affine: x has {len(x)} values and y {len(y)}; pass one y per x")
    if len(x) < 2:
        raise ValueError(f"fit_affine: need at least 2 points to fit a line, got {len(x)}")
    xt = torch.tensor(list(x), dtype=torch.float64)
    yt = torch.tensor(list(y), dtype=torch.float64)
    if float(xt.max() - xt.min()) <= 1e-12 * max(1.0, float(xt.abs().max())):
        raise ValueError("fit_affine: all x are equal, the slope is undetermined; use assignments whose "
                         "table estimates differ")
    design = torch.stack([torch.ones_like(xt), xt], dim=1)
    sol = torch.linalg.lstsq(design, yt[:, None], driver="gelsd").solution[:, 0]
    return round(float(sol[0]), 12), round(float(sol[1]), 12)


def _ranks(v: Sequence[float]) -> list[float]:
    order = sorted(range(len(v)), key=lambda i: v[i])
    ranks = [0.0] * len(v)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and v[order[j + 1]] == v[order[i]]:
            j += 1
        for k in range(i, j + 1):  # ties get the average rank
            ranks[order[k]] = (i + j) / 2.0
        i = j + 1
    return ranks


def fit_quality(measured: Sequence[float], predicted: Sequence[float]) -> dict[str, float]:
    """Agreement of predictions with measurements: ``r2`` (1 - SS_res / SS_tot), ``mape`` (mean |error| /
    measured, a fraction), ``spearman`` (rank correlation, average ranks for ties) and ``n``.

    Example::

        >>> q = fit_quality([1.0, 2.0, 4.0], [1.0, 2.0, 4.0])
        >>> (q["r2"], q["mape"], round(q["spearman"], 12))
        (1.0, 0.0, 1.0)
    """
    if len(measured) != len(predicted) or len(measured) < 2:
        raise ValueError(f"fit_quality: need >= 2 paired values, got {len(measured)} and {len(predicted)}")
    y = torch.tensor(list(measured), dtype=torch.float64)
    p = torch.tensor(list(predicted), dtype=torch.float64)
    ss_tot = float(((y - y.mean()) ** 2).sum())
    ss_res = float(((y - p) ** 2).sum())
    r2 = 1.0 - ss_res / ss_tot if ss_tot > 0 else (1.0 if ss_res == 0 else -math.inf)
    mape = float(((y - p).abs() / y.abs().clamp_min(1e-12)).mean())
    ry = torch.tensor(_ranks(list(measured)), dtype=torch.float64)
    rp = torch.tensor(_ranks(list(predicted)), dtype=torch.float64)
    ry, rp = ry - ry.mean(), rp - rp.mean()
    den = float(ry.norm() * rp.norm())
    rho = float((ry * rp).sum()) / den if den > 0 else math.nan
    return {"r2": r2, "mape": mape, "spearman": rho, "n": float(len(measured))}


@dataclass
class LatencyModel:
    """Whole-model latency predicted from a :class:`LatencyTable`: ``ms = a + b * table.estimate(widths)``.

    Attributes:
        a, b: intercept (ms; un-timed layers and runtime overhead) and slope (measured ms per table ms).
        fit_quality: ``{"fit": {...}, "test": {...}}`` each from :func:`fit_quality` (held-out ``test``).
        points: the measured assignments: ``{"widths", "table_ms", "measured_ms", "split"}``.
        runtime, threads, input_shape: how the end-to-end latencies were measured.
        table_key: the :attr:`LatencyTable.key` the model was fitted for.

    Example::

        >>> lm = LatencyModel(a=1.0, b=0.5)
        >>> lm.predict_sum(10.0), lm.table_budget(6.0)
        (6.0, 10.0)
    """

    a: float
    b: float
    fit_quality: dict[str, dict[str, float]] = field(default_factory=dict)
    points: list[dict[str, Any]] = field(default_factory=list)
    runtime: str = "ort"
    threads: int = 1
    input_shape: list[int] = field(default_factory=list)
    table_key: str = ""

    def predict_sum(self, table_ms: float) -> float:
        """Predicted end-to-end ms for a table estimate (sum of probe latencies) of ``table_ms``."""
        return self.a + self.b * table_ms

    def predict(self, table: LatencyTable, widths: Mapping[str, int]) -> float:
        """Predicted end-to-end ms of the model pruned to ``widths`` (groups not named stay at full width)."""
        return self.predict_sum(table.estimate(widths))

    def table_budget(self, ms: float) -> float:
        """The table estimate whose prediction is ``ms`` (inverse of :meth:`predict_sum`)."""
        if self.b <= 0:
            raise ValueError(f"latency model slope b={self.b:.4g} <= 0: the table does not predict the model's "
                             "latency; re-measure with more repeats or a wider spread of widths")
        return (ms - self.a) / self.b

    def to_dict(self) -> dict[str, Any]:
        return {"a": self.a, "b": self.b, "fit_quality": self.fit_quality, "points": self.points,
                "runtime": self.runtime, "threads": self.threads, "input_shape": self.input_shape,
                "table_key": self.table_key}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LatencyModel:
        try:
            return cls(float(d["a"]), float(d["b"]), dict(d.get("fit_quality", {})), list(d.get("points", [])),
                       str(d.get("runtime", "ort")), int(d.get("threads", 1)), list(d.get("input_shape", [])),
                       str(d.get("table_key", "")))
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"not a latency model ({e}); refit it with fit_latency_model") from e


@dataclass
class LatencyTable:
    """Measured latency (ms) per group and width.

    Attributes:
        entries: group name -> {width: median ms}.
        channels: group name -> full width.
        runtime: ``"ort"`` or ``"torch"``.
        input_shape: the model's example input shape the layers were timed at.
        threads: intra-op threads used.
        key: fingerprint of (group structure, input shape, runtime, threads, widths) for the cache.
        meta: free-form details (versions, repeats).
        latency_model: the end-to-end :class:`LatencyModel` fitted for this table (:func:`fit_latency_model`),
            saved and loaded with it; None until fitted.
    """

    entries: dict[str, dict[int, float]]
    channels: dict[str, int]
    runtime: str = "ort"
    input_shape: list[int] = field(default_factory=list)
    threads: int = 1
    key: str = ""
    meta: dict[str, Any] = field(default_factory=dict)
    latency_model: LatencyModel | None = None

    def estimate(self, widths: Mapping[str, int]) -> float:
        """Sum over the table's groups of the probe latency at ``widths[group]`` (full width when absent).

        Example::

            >>> t = LatencyTable({"a": {8: 1.0, 16: 2.0}, "b": {4: 0.5, 8: 1.5}}, {"a": 16, "b": 8})
            >>> t.estimate({"a": 8}), t.estimate({})
            (2.5, 3.5)
        """
        unknown = sorted(set(widths) - set(self.entries))
        if unknown:
            raise KeyError(f"groups {unknown} are not in the latency table; table groups: {sorted(self.entries)}")
        return sum(self.latency(g, int(widths.get(g, self.channels[g]))) for g in self.entries)

    def latency(self, group: str, width: int) -> float:
        """Measured ms of ``group`` at ``width`` (KeyError naming the measured widths otherwise)."""
        try:
            return self.entries[group][width]
        except KeyError:
            have = sorted(self.entries.get(group, {}))
            raise KeyError(f"no latency for group {group!r} at width {width}; measured widths: {have}") from None

    def frontier(self, group: str, rel_tol: float = 0.0) -> list[int]:
        """Widths (ascending) not dominated by a larger width: ``w`` is dropped when some ``w' > w`` was
        measured no slower (with ``rel_tol > 0``: faster by more than that fraction, so that timing noise of
        a few percent does not thin the frontier out)."""
        if rel_tol < 0:
            raise ValueError(f"rel_tol must be >= 0, got {rel_tol}")
        row = self.entries[group]
        out = []
        best_above = math.inf
        for w in sorted(row, reverse=True):
            if row[w] < best_above * (1.0 + rel_tol) or (rel_tol > 0 and row[w] == best_above):
                out.append(w)
            best_above = min(best_above, row[w])
        return sorted(out)

    def non_monotonic(self, group: str) -> list[int]:
        """Widths slower than (or as slow as) some larger width of the same group."""
        front = set(self.frontier(group))
        return sorted(w for w in self.entries[group] if w not in front)

    def to_dict(self) -> dict[str, Any]:
        return {
            "entries": {g: {str(w): ms for w, ms in row.items()} for g, row in self.entries.items()},
            "channels": self.channels, "runtime": self.runtime, "input_shape": self.input_shape,
            "threads": self.threads, "key": self.key, "meta": self.meta,
            "latency_model": self.latency_model.to_dict() if self.latency_model is not None else None,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LatencyTable:
        try:
            entries = {g: {int(w): float(ms) for w, ms in row.items()} for g, row in d["entries"].items()}
            lm = d.get("latency_model")
            return cls(entries, {g: int(c) for g, c in d["channels"].items()}, d.get("runtime", "ort"),
                       list(d.get("input_shape", [])), int(d.get("threads", 1)), d.get("key", ""), d.get("meta", {}),
                       LatencyModel.from_dict(lm) if lm is not None else None)
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise ValueError(f"not a latency table ({e}); delete the file to re-measure") from e

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write as JSON atomically (temp file + fsync + rename)."""
        from torchslim.core.io import atomic_write_json

        p = Path(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(p, self.to_dict())
        return p

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> LatencyTable:
        """Read a table written by :meth:`save`."""
        with open(path, encoding="utf-8") as f:
            return cls.from_dict(json.load(f))


# ------------------------------------------------------------------------------------------------ probes
class _Probe(nn.Module):
    def __init__(self, layers: list[nn.Module]) -> None:
        super().__init__()
        self.layers = nn.ModuleList(layers)

    def forward(self, *xs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(layer(x) for layer, x in zip(self.layers, xs, strict=True))


def _input_shapes(model: nn.Module, example_inputs: tuple[Any, ...], paths: set[str]) -> dict[str, list[int]]:
    shapes: dict[str, list[int]] = {}
    hooks = []
    for p in paths:
        def hook(_m: nn.Module, inp: Any, _out: Any, p: str = p) -> None:
            if p in shapes:
                raise PruneError(f"latency table: module {p!r} is called more than once; cannot time it alone")
            shapes[p] = list(inp[0].shape)
        hooks.append((model.get_submodule(p), hook))
    run_with_hooks(model, example_inputs, hooks)
    return shapes


def _probe_for(model: nn.Module, group: Any, width: int, shapes: dict[str, list[int]]
               ) -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    from torchslim.pruning.structured.handlers import DepthwiseConvHandler

    keep = torch.arange(width)
    layers: list[nn.Module] = []
    inputs: list[torch.Tensor] = []
    gen = torch.Generator().manual_seed(0)
    for m in group.members:
        mod = model.get_submodule(m.path)
        shape = list(shapes[m.path])
        if m.role == "out":
            layers.append(m.handler.prune_out(copy.deepcopy(mod), keep))
        elif m.role == "in":
            idx = keep if m.expand == 1 else (keep[:, None] * m.expand + torch.arange(m.expand)[None, :]).reshape(-1)
            layers.append(m.handler.prune_in(copy.deepcopy(mod), idx))
            shape[1 if len(shape) > 2 else -1] = width * m.expand
        elif isinstance(m.handler, DepthwiseConvHandler):
            layers.append(m.handler.prune_out(copy.deepcopy(mod), keep))
            shape[1] = width
        else:
            continue  # BatchNorm: folded/fused by the runtimes
        inputs.append(torch.randn(*shape, generator=gen))
    return _Probe(layers).eval(), tuple(inputs)


def _ort_runner(probe: nn.Module, xs: tuple[torch.Tensor, ...], path: Path, threads: int) -> Any:
    from torchslim.export import export_onnx
    from torchslim.export.parity import ort_session

    export_onnx(probe, xs, path, dynamic_batch=False)
    sess = ort_session(path, threads)
    feed = {i.name: x.numpy() for i, x in zip(sess.get_inputs(), xs, strict=True)}

    def run() -> Any:
        return sess.run(None, feed)

    return run


def _candidate_widths(channels: int, step: int) -> list[int]:
    return sorted({*range(step, channels, step), channels})


def _table_key(groups: Sequence[Any], input_shape: list[int], runtime: str, threads: int, step: int) -> str:
    desc = json.dumps([[str(m) for m in g.members] + [g.channels] for g in groups])
    return hashlib.sha256(f"{desc}|{input_shape}|{runtime}|{threads}|{step}".encode()).hexdigest()[:16]


def measure_table(
    model: nn.Module,
    example_inputs: tuple[Any, ...],
    runtime: Runtime = "ort",
    step: int = 16,
    widths: dict[str, list[int]] | None = None,
    repeats: int = 10,
    threads: int = 1,
    cache: str | os.PathLike[str] | None = None,
    groups: Sequence[str] | None = None,
    min_sample_s: float = 0.01,
) -> LatencyTable:
    """Time every prunable group's layers at candidate widths.

    Args:
        model: the model (not modified; layers are copied).
        example_inputs: the model's input at the shape it will be run with (batch included).
        runtime: ``"ort"`` (ONNX Runtime, CPU) or ``"torch"`` (eager).
        step: candidate widths are multiples of ``step`` below the full width, plus the full width.
        widths: explicit candidate widths per group name (overrides ``step`` for those groups).
        repeats: timed samples per width (median kept), interleaved across a group's widths.
        threads: intra-op threads for both runtimes.
        cache: JSON path; a table there with the same key is returned without measuring, otherwise the
            new table is written there atomically.
        groups: only these group names (default: all prunable groups).
        min_sample_s: each timed sample repeats the probe for about this long (see ``bench.latency.compare``).

    Raises:
        PruneError: a requested group is not prunable, or a layer is called more than once.
    """
    from torchslim.bench import latency as bench
    from torchslim.pruning.structured.dependency import build_groups

    if runtime not in ("ort", "torch"):
        raise ValueError(f"runtime must be 'ort' or 'torch', got {runtime!r}")
    if step < 1:
        raise ValueError(f"step must be >= 1, got {step}")
    if not isinstance(example_inputs, tuple):
        raise PruneError(f"example_inputs must be a tuple, got {type(example_inputs).__name__}; wrap as (x,)")
    all_groups = [g for g in build_groups(model, example_inputs) if g.prunable]
    if groups is not None:
        names = {g.name for g in all_groups}
        missing = [n for n in groups if n not in names]
        if missing:
            raise PruneError(f"measure_table: {missing} are not prunable groups; prunable: {sorted(names)}")
        all_groups = [g for g in all_groups if g.name in groups]
    input_shape = list(example_inputs[0].shape) if isinstance(example_inputs[0], torch.Tensor) else []
    key = _table_key(all_groups, input_shape, runtime, threads, step) + (
        hashlib.sha256(json.dumps(widths, sort_keys=True).encode()).hexdigest()[:8] if widths else "")
    if cache is not None and Path(cache).is_file():
        try:
            cached = LatencyTable.load(cache)
            if cached.key == key:
                return cached
        except ValueError:
            pass
    shapes = _input_shapes(model, example_inputs, {m.path for g in all_groups for m in g.members})
    table = LatencyTable({}, {}, runtime, input_shape, threads, key,
                         {"repeats": repeats, "step": step, "environment": bench.environment()})
    with tempfile.TemporaryDirectory(prefix="torchslim_lat_") as tmp:
        for gi, g in enumerate(all_groups):
            cand = sorted(widths[g.name]) if widths and g.name in widths else _candidate_widths(g.channels, step)
            calls = {}
            for w in cand:
                if not 1 <= w <= g.channels:
                    raise PruneError(f"measure_table: width {w} for group {g.name} outside [1, {g.channels}]")
                probe, xs = _probe_for(model, g, w, shapes)
                calls[str(w)] = (_ort_runner(probe, xs, Path(tmp) / f"g{gi}_w{w}.onnx", threads)
                                 if runtime == "ort" else bench.torch_callable(probe, xs))
            stats = bench.compare(calls, repeats=repeats, warmup=2, pause_s=0.0, threads=threads,
                                  min_sample_s=min_sample_s)
            table.entries[g.name] = {int(w): s.median_ms for w, s in stats.items()}
            table.channels[g.name] = g.channels
    if cache is not None:
        table.save(cache)
    return table


def random_widths(table: LatencyTable, k: int, seed: int = 0, min_width: int = 1,
                  low: float = 0.15) -> list[dict[str, int]]:
    """``k`` random width assignments over the table's measured widths, spread over the whole latency range.

    Each assignment draws a global keep fraction ``s ~ U(low, 1)`` and, per group, the measured width nearest
    to ``s * channels * U(0.75, 1.25)`` (at least ``min_width`` where measured): assignments then range from
    heavily pruned to full, and groups vary independently around the common level, so that a fit on them
    sees both the overall scale and the per-group differences. The first assignment is always full width.

    Example::

        >>> t = LatencyTable({"a": {8: 1.0, 16: 2.0}}, {"a": 16})
        >>> ws = random_widths(t, 4, seed=0)
        >>> ws[0], all(w["a"] in (8, 16) for w in ws)
        ({'a': 16}, True)
    """
    if k < 1:
        raise ValueError(f"random_widths: k must be >= 1, got {k}")
    if not 0 < low <= 1:
        raise ValueError(f"random_widths: low must be in (0, 1], got {low}")
    rng = random.Random(seed)
    out = [{g: table.channels[g] for g in table.entries}]
    while len(out) < k:
        s = rng.uniform(low, 1.0)
        a: dict[str, int] = {}
        for g in table.entries:
            ws = sorted(w for w in table.entries[g] if w >= min(min_width, table.channels[g]))
            ws = ws or [table.channels[g]]
            goal = s * table.channels[g] * rng.uniform(0.75, 1.25)
            a[g] = min(ws, key=lambda w: (abs(w - goal), w))  # noqa: B023 (used at once)
        out.append(a)
    return out


def fit_latency_model(
    model: nn.Module,
    table: LatencyTable,
    example_inputs: tuple[Any, ...],
    k: int = 16,
    holdout: float = 0.25,
    assignments: Sequence[Mapping[str, int]] | None = None,
    repeats: int = 7,
    seed: int = 0,
    min_width: int = 1,
    min_sample_s: float = 0.05,
    pause_s: float = 0.0,
) -> LatencyModel:
    """Fit ``measured_ms = a + b * table.estimate(widths)`` on physically pruned copies of ``model``.

    Copies of ``model`` are pruned to ``k`` width assignments (:func:`random_widths`, or ``assignments``)
    with ``prune_(widths=...)``, and timed end to end, interleaved in one :func:`~torchslim.bench.latency.compare`
    run, in the table's runtime (ORT: exported with a static batch, like the table's probes) and thread count at
    ``example_inputs``. The first ``k - round(holdout * k)`` assignments are fitted by least squares
    (:func:`fit_affine`), the rest only evaluated: ``fit_quality["test"]`` (R^2, MAPE, Spearman) is the honest
    figure. The model is attached to ``table.latency_model`` (save the table to keep it) and returned.

    Args:
        model: the unpruned model (not modified).
        table: its :class:`LatencyTable` (from :func:`measure_table` with the same ``example_inputs`` shape).
        example_inputs: the input the latency is measured at, e.g. ``(x,)`` with the deployment batch.
        k: number of assignments (>= 4; 16-24 suit a small CNN).
        holdout: fraction of assignments held out for the quality figures (0 disables; then ``test`` is empty).
        assignments: explicit width assignments instead of random ones (widths must be in the table).
        repeats, min_sample_s, pause_s: timing settings passed to ``compare``.
        seed, min_width: for :func:`random_widths`.

    Raises:
        ValueError: bad ``k``/``holdout``, or too few fit points.
        PruneError: an assignment cannot be applied to the model.

    Example::

        >>> table = measure_table(model, (x,), runtime="ort", step=16)          # doctest: +SKIP
        >>> lm = fit_latency_model(model, table, (x,), k=16)                     # doctest: +SKIP
        >>> lm.fit_quality["test"]["mape"]        # mean relative error on held-out assignments  # doctest: +SKIP
    """
    from torchslim.bench import latency as bench
    from torchslim.pruning.api import ChannelPrune, prune_

    if not isinstance(example_inputs, tuple):
        raise PruneError(f"example_inputs must be a tuple, got {type(example_inputs).__name__}; wrap as (x,)")
    if not 0 <= holdout < 1:
        raise ValueError(f"holdout must be in [0, 1), got {holdout}")
    if assignments is None:
        if k < 4:
            raise ValueError(f"fit_latency_model: k must be >= 4 (2 fit + 2 held out at least), got {k}")
        assignments = random_widths(table, k, seed=seed, min_width=min_width)
    assign = [dict(a) for a in assignments]
    n_test = round(holdout * len(assign))
    n_fit = len(assign) - n_test
    if n_fit < 2 or (holdout > 0 and n_test < 2):
        raise ValueError(f"fit_latency_model: {len(assign)} assignments leave {n_fit} to fit and {n_test} held "
                         "out; need >= 2 of each (raise k)")
    sums = [table.estimate(wa) for wa in assign]  # validates the widths against the table first
    x_small = tuple(t[:1] if isinstance(t, torch.Tensor) else t for t in example_inputs)
    calls: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="torchslim_e2e_") as tmp:
        for i, wa in enumerate(assign):
            m = copy.deepcopy(model).eval()
            prune_(m, ChannelPrune(ratio=0.0), x_small, widths=wa)
            if table.runtime == "ort":
                calls[str(i)] = _ort_runner(m, example_inputs, Path(tmp) / f"m{i}.onnx", table.threads)
            else:
                calls[str(i)] = bench.torch_callable(m, example_inputs)
        stats = bench.compare(calls, repeats=repeats, warmup=2, pause_s=pause_s, threads=table.threads,
                              min_sample_s=min_sample_s)
    measured = [stats[str(i)].median_ms for i in range(len(assign))]
    a, b = fit_affine(sums[:n_fit], measured[:n_fit])
    pred = [a + b * x for x in sums]
    quality = {"fit": fit_quality(measured[:n_fit], pred[:n_fit])}
    if n_test:
        quality["test"] = fit_quality(measured[n_fit:], pred[n_fit:])
    # the uncalibrated table sum taken as the latency, on the same held-out points (what the model corrects)
    quality["raw_sum"] = fit_quality(measured[n_fit:] or measured, sums[n_fit:] or sums)
    points = [{"widths": w, "table_ms": s_, "measured_ms": m_, "predicted_ms": p_,
               "split": "fit" if i < n_fit else "test", "contaminated": stats[str(i)].contaminated}
              for i, (w, s_, m_, p_) in enumerate(zip(assign, sums, measured, pred, strict=True))]
    input_shape = list(example_inputs[0].shape) if isinstance(example_inputs[0], torch.Tensor) else []
    lm = LatencyModel(a, b, quality, points, table.runtime, table.threads, input_shape, table.key)
    table.latency_model = lm
    return lm


def snap_widths(table: LatencyTable, widths: Mapping[str, int], mode: Literal["down", "nearest"] = "down",
                min_width: int = 1, rel_tol: float = 0.0) -> dict[str, int]:
    """Move each group's width onto its latency frontier (a local minimum of the measured curve).

    ``"down"`` takes the largest frontier width <= the requested one (never more channels than asked, so
    never more latency than the table's frontier allows there); ``"nearest"`` the closest frontier width
    (ties to the larger). Groups missing from ``widths`` stay at full width. This turns FLOPs-proportional
    widths (``round(f * C)``) into latency-aware ones with about the same channel budget. ``rel_tol`` is
    passed to :meth:`LatencyTable.frontier` (use a few percent on a noisy table).

    Example::

        >>> t = LatencyTable({"a": {16: 3.0, 32: 2.0, 48: 5.0, 64: 4.5}}, {"a": 64})
        >>> snap_widths(t, {"a": 60}), snap_widths(t, {"a": 20}, mode="nearest")
        ({'a': 32}, {'a': 32})
    """
    if mode not in ("down", "nearest"):
        raise ValueError(f"snap_widths: mode must be 'down' or 'nearest', got {mode!r}")
    unknown = sorted(set(widths) - set(table.entries))
    if unknown:
        raise KeyError(f"groups {unknown} are not in the latency table; table groups: {sorted(table.entries)}")
    out = {}
    for g in table.entries:
        w = int(widths.get(g, table.channels[g]))
        front = [v for v in table.frontier(g, rel_tol) if v >= min(min_width, table.channels[g])]
        front = front or [table.channels[g]]
        if mode == "down":
            below = [v for v in front if v <= w]
            out[g] = max(below) if below else min(front)
        else:
            out[g] = min(front, key=lambda v: (abs(v - w), -v))  # noqa: B023 (used at once)
    return out


# ------------------------------------------------------------------------------------------------ choice
@dataclass
class WidthChoice:
    """What :func:`choose_widths` picked: ``widths`` (group -> kept channels, for ``prune_(widths=)``),
    the estimated latency (sum of group probe latencies) at full width and at the chosen widths, the
    budget (in table ms), and the greedy steps taken ``(group, from, to, ms saved, importance lost)``.
    With a :class:`LatencyModel`, ``predicted_ms`` / ``full_predicted_ms`` / ``budget_predicted_ms`` are the
    end-to-end figures (None without one)."""

    widths: dict[str, int]
    full_ms: float
    estimated_ms: float
    budget_ms: float
    steps: list[tuple[str, int, int, float, float]] = field(default_factory=list)
    predicted_ms: float | None = None
    full_predicted_ms: float | None = None
    budget_predicted_ms: float | None = None


def choose_widths(
    model: nn.Module | None,
    table: LatencyTable,
    target_latency_ms: float | None = None,
    target_ratio: float | None = None,
    scores: dict[str, torch.Tensor] | None = None,
    importance: str = "l1",
    example_inputs: tuple[Any, ...] | None = None,
    min_width: int = 1,
    latency_model: LatencyModel | None = None,
) -> WidthChoice:
    """Pick per-group widths whose table latency meets a budget, greedily by importance lost per ms saved.

    Args:
        model: the model (used to score channels when ``scores`` is not given).
        table: a :class:`LatencyTable` for this model.
        target_latency_ms: budget on the estimated latency: the sum over groups of the probe latency, or,
            with ``latency_model``, the *predicted end-to-end* latency ``a + b * sum``.
        target_ratio: budget as a fraction of the full-width estimate (e.g. ``0.5`` halves it; with
            ``latency_model``, of the predicted full-width end-to-end latency). Give exactly one of the two.
        scores: per-group channel importance (any scale; each group's |scores| are divided by their sum, so
            the cost of a step is the fraction of the group's importance it removes, which protects thin
            groups). Default: ``importance`` scores; a group missing from ``scores`` counts channels uniformly.
        min_width: never choose fewer channels than this (DESIGN.md: stay >= 16 on small convs for ORT).
        importance: a data-free criterion name used when ``scores`` is None.
        example_inputs: inputs for graph capture when scoring (default: random of ``table.input_shape``).
        latency_model: a :class:`LatencyModel` fitted for ``table`` (:func:`fit_latency_model`); the budget is
            then converted to table ms by ``(ms - a) / b`` (same greedy order, as ``b > 0``).

    Returns:
        a :class:`WidthChoice`; only Pareto-frontier widths are ever chosen (never a width measured slower
        than a larger width of the same group).

    Raises:
        ValueError: both/neither target given, a ratio outside (0, 1], or a latency model fitted for another
            table or with a slope <= 0.
        PruneError: the budget cannot be met even at the smallest frontier widths (message gives the minimum).

    Example::

        >>> t = LatencyTable({"a": {8: 1.0, 16: 2.0}, "b": {4: 0.5, 8: 1.5}}, {"a": 16, "b": 8})
        >>> lm = LatencyModel(a=2.0, b=0.5)              # end-to-end ms = 2 + 0.5 * table sum
        >>> c = choose_widths(None, t, target_latency_ms=3.5, scores={}, latency_model=lm)
        >>> c.widths, c.predicted_ms
        ({'a': 8, 'b': 8}, 3.25)
    """
    if (target_latency_ms is None) == (target_ratio is None):
        raise ValueError("choose_widths: give exactly one of target_latency_ms or target_ratio")
    if target_ratio is not None and not 0 < target_ratio <= 1:
        raise ValueError(f"target_ratio must be in (0, 1], got {target_ratio}")
    names = list(table.entries)
    if scores is None:
        if model is None:
            raise ValueError("choose_widths: pass the model (to score channels) or scores={group: tensor}")
        scores = _scores(model, table, importance, example_inputs)
    full = {g: table.channels[g] for g in names}
    if any(full[g] not in table.entries[g] for g in names):
        raise ValueError("the latency table must include each group's full width")
    fronts = {g: table.frontier(g) for g in names}
    cur = {g: (full[g] if full[g] in fronts[g] else max(fronts[g])) for g in names}
    full_ms = sum(table.latency(g, full[g]) for g in names)
    budget_pred: float | None = None
    if latency_model is not None:
        if latency_model.table_key and table.key and latency_model.table_key != table.key:
            raise ValueError(f"choose_widths: the latency model was fitted for table {latency_model.table_key!r}, "
                             f"not this one ({table.key!r}); refit it with fit_latency_model(model, table, ...)")
        full_pred = latency_model.predict_sum(full_ms)
        budget_pred = (target_latency_ms if target_latency_ms is not None
                       else full_pred * float(target_ratio or 1.0))
        budget = latency_model.table_budget(budget_pred)
    else:
        budget = target_latency_ms if target_latency_ms is not None else full_ms * float(target_ratio or 1.0)
    sorted_scores = {}
    for g in names:
        s = scores[g].detach().to(torch.float64) if g in scores else torch.ones(full[g], dtype=torch.float64)
        if s.numel() != full[g]:
            raise ValueError(f"scores[{g!r}] has {s.numel()} entries, the group has {full[g]} channels")
        total = s.abs().sum()
        sorted_scores[g] = torch.sort(s.abs() / (total if total > 0 else 1.0)).values
    est = sum(table.latency(g, cur[g]) for g in names)
    choice = WidthChoice(dict(cur), full_ms, est, budget)
    while est > budget:
        best: tuple[float, str, int, float, float] | None = None
        for g in names:
            smaller = [w for w in fronts[g] if min(min_width, full[g]) <= w < cur[g]]
            if not smaller:
                continue
            nxt = max(smaller)
            saved = table.latency(g, cur[g]) - table.latency(g, nxt)
            lost = float(sorted_scores[g][: cur[g] - nxt].sum())  # the lowest-scored channels go first
            cost = lost / max(saved, 1e-12)
            if best is None or cost < best[0]:
                best = (cost, g, nxt, saved, lost)
        if best is None:
            if latency_model is not None:
                raise PruneError(
                    f"choose_widths: end-to-end budget {budget_pred:.3f} ms is below the prediction at the "
                    f"fastest frontier widths, {latency_model.predict_sum(est):.3f} ms (full width "
                    f"{latency_model.predict_sum(full_ms):.3f} ms); raise the target or measure smaller widths"
                )
            raise PruneError(
                f"choose_widths: budget {budget:.3f} ms is below the fastest frontier widths' estimate "
                f"{est:.3f} ms (full width {full_ms:.3f} ms); raise the target or measure smaller widths"
            )
        _, g, nxt, saved, lost = best
        choice.steps.append((g, cur[g], nxt, saved, lost))
        cur[g] = nxt
        est -= saved
    choice.widths, choice.estimated_ms = cur, est
    if latency_model is not None:
        choice.predicted_ms = latency_model.predict_sum(est)
        choice.full_predicted_ms = latency_model.predict_sum(full_ms)
        choice.budget_predicted_ms = budget_pred
    return choice


def _scores(model: nn.Module, table: LatencyTable, importance: str,
            example_inputs: tuple[Any, ...] | None) -> dict[str, torch.Tensor]:
    from torchslim.pruning.structured.dependency import build_groups
    from torchslim.pruning.structured.importance import ScoreContext, get_criterion

    crit = get_criterion(importance)
    if crit.needs_data:
        raise ValueError(f"choose_widths: importance={importance!r} needs data; compute scores yourself and "
                         f"pass scores={{group: tensor}}")
    if example_inputs is None:
        if not table.input_shape:
            raise ValueError("choose_widths: pass example_inputs (the table has no input shape)")
        example_inputs = (torch.randn(*table.input_shape),)
    groups = [g for g in build_groups(model, example_inputs) if g.prunable and g.name in table.entries]
    return dict(zip([g.name for g in groups], crit(model, groups, ScoreContext()), strict=True))


def plot_table(table: LatencyTable, path: str | os.PathLike[str], groups: Sequence[str] | None = None) -> Path:
    """Plot latency vs width per group to ``path`` (PNG/SVG by suffix); dominated (non-monotonic) points
    are marked with red crosses. Needs matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:
        raise ImportError("plot_table needs matplotlib: pip install matplotlib") from e
    names = list(groups) if groups is not None else list(table.entries)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for g in names:
        row = table.entries[g]
        ws = sorted(row)
        ax.plot(ws, [row[w] for w in ws], marker="o", ms=3, label=g)
        bad = table.non_monotonic(g)
        if bad:
            ax.scatter(bad, [row[w] for w in bad], marker="x", color="red", zorder=3, s=40)
    ax.set_xlabel("channels kept")
    ax.set_ylabel(f"{table.runtime} latency of the group's layers (ms)")
    ax.set_title(f"latency vs width (input {table.input_shape}, {table.threads} thread(s)); x = non-monotonic")
    ax.legend(fontsize=7)
    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    plt.close(fig)
    return out
