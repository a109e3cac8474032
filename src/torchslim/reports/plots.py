"""Report plots as PNG bytes (matplotlib, Agg canvas: no display, no pyplot state).

Example::

    >>> png = accuracy_vs_latency(report)      # b"\\x89PNG..." or None without the data  # doctest: +SKIP
"""

from __future__ import annotations

import io
from typing import Any

from torchslim.reports.schema import Report

__all__ = ["accuracy_vs_latency", "sensitivity_plot", "size_bars"]


def _figure(w: float = 6.4, h: float = 4.2) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(w, h), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", metadata={"Software": None})
    return buf.getvalue()


def accuracy_vs_latency(report: Report, runtime: str = "ort") -> bytes | None:
    """Top-1 accuracy (%) vs median latency (ms) per stage, points labelled, arrows in stage order.

    ``runtime``: ``"ort"`` or ``"torch"``. Returns ``None`` when no stage has both figures.
    """
    attr = f"latency_ms_{runtime}"
    pts = [
        (s.name, float(getattr(s, attr)), 100.0 * float(s.accuracy))
        for s in report.stages
        if getattr(s, attr) is not None and s.accuracy is not None
    ]
    if not pts:
        return None
    fig = _figure()
    ax = fig.add_subplot(1, 1, 1)
    xs = [p[1] for p in pts]
    ys = [p[2] for p in pts]
    ax.scatter(xs, ys, s=40, color="#1f77b4", zorder=3)
    for i, (name, x, y) in enumerate(pts):
        # alternate the label above/below so neighbouring stages (often close together) stay readable
        ax.annotate(name, (x, y), textcoords="offset points", xytext=(6, 8 if i % 2 == 0 else -14), fontsize=8)
        if i:
            ax.annotate(
                "",
                xy=(x, y),
                xytext=(pts[i - 1][1], pts[i - 1][2]),
                arrowprops={"arrowstyle": "->", "color": "#888888", "lw": 1.0},
            )
    ax.set_xlabel(f"latency, {'ONNX Runtime' if runtime == 'ort' else 'PyTorch eager'} (ms, median)")
    ax.set_ylabel("top-1 accuracy (%)")
    ax.set_title(report.title or "accuracy vs latency")
    ax.grid(True, alpha=0.3)
    span = (max(ys) - min(ys)) or 1.0
    ax.set_ylim(min(ys) - 0.15 * span, max(ys) + 0.25 * span)
    xspan = (max(xs) - min(xs)) or max(xs) or 1.0
    ax.set_xlim(max(0.0, min(xs) - 0.15 * xspan), max(xs) + 0.3 * xspan)
    return _png(fig)


def size_bars(report: Report) -> bytes | None:
    """Bar chart of the bytes on disk per stage (in MiB), ratio to the first stage on each bar."""
    pts = [(s.name, int(s.size_bytes)) for s in report.stages if s.size_bytes is not None]
    if not pts:
        return None
    fig = _figure(6.4, 3.6)
    ax = fig.add_subplot(1, 1, 1)
    names = [p[0] for p in pts]
    mib = [p[1] / 2**20 for p in pts]
    bars = ax.bar(range(len(pts)), mib, color="#2ca02c")
    base = pts[0][1] or 1
    for b, (_, v) in zip(bars, pts, strict=True):
        ax.annotate(
            f"{v / base:.2f}x",
            (b.get_x() + b.get_width() / 2, b.get_height()),
            ha="center",
            va="bottom",
            fontsize=8,
        )
    ax.set_xticks(range(len(pts)))
    ax.set_xticklabels(names, rotation=20, ha="right", fontsize=8)
    ax.set_ylabel("size on disk (MiB)")
    ax.set_title("size on disk per stage")
    ax.grid(True, axis="y", alpha=0.3)
    return _png(fig)


def sensitivity_plot(table: dict[str, Any], title: str = "") -> bytes | None:
    """Per-layer sensitivity (ZeroQ KL, log scale) at each candidate width, the chosen width marked.

    ``table``: ``{layer: {"params": n, "kl": {"2": kl, "4": kl, ...}, "bits": chosen}}`` (the
    ``sensitivity_table`` a mixed-precision stage records). Returns ``None`` for an empty table.
    """
    if not table:
        return None
    layers = list(table)
    widths = sorted({int(k) for r in table.values() for k in (r.get("kl") or {})})
    if not widths:
        return None
    fig = _figure(max(6.4, 0.55 * len(layers) + 2), 4.2)
    ax = fig.add_subplot(1, 1, 1)
    colors = ["#d62728", "#ff7f0e", "#2ca02c", "#1f77b4", "#9467bd", "#8c564b", "#e377c2"]
    bar_w = 0.8 / len(widths)
    floor = 1e-9
    for j, w in enumerate(widths):
        xs = [i + (j - (len(widths) - 1) / 2) * bar_w for i in range(len(layers))]
        ys = [max(float((table[n].get("kl") or {}).get(str(w), floor)), floor) for n in layers]
        ax.bar(xs, ys, width=bar_w, color=colors[j % len(colors)], label=f"{w} bit")
        chosen = [(x, y) for x, y, n in zip(xs, ys, layers, strict=True) if int(table[n].get("bits", -1)) == w]
        if chosen:
            ax.scatter(
                [c[0] for c in chosen], [c[1] * 1.6 for c in chosen], marker="v", color="black", s=28, zorder=3,
                label="chosen" if j == 0 else None,
            )
    handles, labels = ax.get_legend_handles_labels()
    if "chosen" not in labels:
        from matplotlib.lines import Line2D

        handles.append(Line2D([], [], marker="v", color="black", linestyle="none"))
        labels.append("chosen")
    ax.legend(handles, labels, fontsize=8)
    ax.set_yscale("log")
    ax.set_xticks(range(len(layers)))
    ax.set_xticklabels(layers, rotation=35, ha="right", fontsize=7)
    ax.set_ylabel("KL(FP32 || layer quantised)")
    ax.set_title(f"per-layer sensitivity{': ' + title if title else ''} (marker: chosen width)")
    ax.grid(True, axis="y", alpha=0.3)
    return _png(fig)
