"""Report plots as PNG bytes (matplotlib, Agg canvas: no display, no pyplot state).

Example::

    >>> png = accuracy_vs_latency(report)      # b"\\x89PNG..." or None without the data  # doctest: +SKIP
"""

from __future__ import annotations

import io
from typing import Any

from torchslim.reports.schema import Report

__all__ = ["accuracy_vs_latency", "size_bars"]


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
