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

Example::

    >>> table = measure_table(model, (x,), runtime="ort", step=16, cache="table.json")   # doctest: +SKIP
    >>> choice = choose_widths(model, table, target_ratio=0.5)                           # doctest: +SKIP
    >>> prune_(model, ChannelPrune(ratio=0.0), (x,), widths=choice.widths)               # doctest: +SKIP

The latency model is additive: a conv that consumes one group and produces another is timed in both
groups' probes, so the estimate over-counts absolute time; it is used for relative changes only. Measure
the pruned model end to end (``torchslim.bench.latency.compare``) to confirm.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from torchslim.core.graph import run_with_hooks
from torchslim.pruning.api import PruneError

__all__ = ["LatencyTable", "WidthChoice", "choose_widths", "measure_table", "plot_table"]

Runtime = Literal["ort", "torch"]


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
    """

    entries: dict[str, dict[int, float]]
    channels: dict[str, int]
    runtime: str = "ort"
    input_shape: list[int] = field(default_factory=list)
    threads: int = 1
    key: str = ""
    meta: dict[str, Any] = field(default_factory=dict)

    def latency(self, group: str, width: int) -> float:
        """Measured ms of ``group`` at ``width`` (KeyError naming the measured widths otherwise)."""
        try:
            return self.entries[group][width]
        except KeyError:
            have = sorted(self.entries.get(group, {}))
            raise KeyError(f"no latency for group {group!r} at width {width}; measured widths: {have}") from None

    def frontier(self, group: str) -> list[int]:
        """Widths (ascending) not dominated by a larger width: ``w`` is dropped when some ``w' > w`` was
        measured no slower."""
        row = self.entries[group]
        out = []
        best_above = math.inf
        for w in sorted(row, reverse=True):
            if row[w] < best_above:
                out.append(w)
                best_above = row[w]
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
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LatencyTable:
        try:
            entries = {g: {int(w): float(ms) for w, ms in row.items()} for g, row in d["entries"].items()}
            return cls(entries, {g: int(c) for g, c in d["channels"].items()}, d.get("runtime", "ort"),
                       list(d.get("input_shape", [])), int(d.get("threads", 1)), d.get("key", ""), d.get("meta", {}))
        except (KeyError, TypeError, ValueError) as e:
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


# ------------------------------------------------------------------------------------------------ choice
@dataclass
class WidthChoice:
    """What :func:`choose_widths` picked: ``widths`` (group -> kept channels, for ``prune_(widths=)``),
    the estimated latency (sum of group probe latencies) at full width and at the chosen widths, the
    budget, and the greedy steps taken ``(group, from, to, ms saved, importance lost)``."""

    widths: dict[str, int]
    full_ms: float
    estimated_ms: float
    budget_ms: float
    steps: list[tuple[str, int, int, float, float]] = field(default_factory=list)


def choose_widths(
    model: nn.Module | None,
    table: LatencyTable,
    target_latency_ms: float | None = None,
    target_ratio: float | None = None,
    scores: dict[str, torch.Tensor] | None = None,
    importance: str = "l1",
    example_inputs: tuple[Any, ...] | None = None,
    min_width: int = 1,
) -> WidthChoice:
    """Pick per-group widths whose table latency meets a budget, greedily by importance lost per ms saved.

    Args:
        model: the model (used to score channels when ``scores`` is not given).
        table: a :class:`LatencyTable` for this model.
        target_latency_ms: budget on the estimated latency (sum over groups of the probe latency).
        target_ratio: budget as a fraction of the full-width estimate (e.g. ``0.5`` halves it). Give exactly
            one of the two.
        scores: per-group channel importance (any scale; each group's |scores| are divided by their sum, so
            the cost of a step is the fraction of the group's importance it removes, which protects thin
            groups). Default: ``importance`` scores; a group missing from ``scores`` counts channels uniformly.
        min_width: never choose fewer channels than this (DESIGN.md: stay >= 16 on small convs for ORT).
        importance: a data-free criterion name used when ``scores`` is None.
        example_inputs: inputs for graph capture when scoring (default: random of ``table.input_shape``).

    Returns:
        a :class:`WidthChoice`; only Pareto-frontier widths are ever chosen (never a width measured slower
        than a larger width of the same group).

    Raises:
        ValueError: both/neither target given, or a ratio outside (0, 1].
        PruneError: the budget cannot be met even at the smallest frontier widths (message gives the minimum).
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
            raise PruneError(
                f"choose_widths: budget {budget:.3f} ms is below the fastest frontier widths' estimate "
                f"{est:.3f} ms (full width {full_ms:.3f} ms); raise the target or measure smaller widths"
            )
        _, g, nxt, saved, lost = best
        choice.steps.append((g, cur[g], nxt, saved, lost))
        cur[g] = nxt
        est -= saved
    choice.widths, choice.estimated_ms = cur, est
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
