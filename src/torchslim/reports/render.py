"""Render a :class:`~torchslim.reports.schema.Report` as markdown, self-contained HTML, JSON or a rich table.

Example::

    >>> paths = write_report(report, "out/")     # {"md": out/report.md, "html": ..., "json": ...}  # doctest: +SKIP
    >>> print_table(report)                                                                        # doctest: +SKIP
"""

from __future__ import annotations

import base64
import html
import os
from pathlib import Path
from typing import Any

from torchslim.core.io import atomic_write_json, atomic_write_text
from torchslim.reports.schema import Report, StageMetrics

__all__ = ["to_markdown", "to_html", "to_json", "write_report", "print_table", "sensitivity_rows", "COLUMNS"]

COLUMNS = (
    "Stage",
    "Accuracy %",
    "Params",
    "MACs",
    "Size on disk",
    "Torch ms",
    "ORT ms",
    "Speedup ORT",
    "Speedup torch",
    "Size ratio",
)

_JSON_STAGE_KEYS = ("name", "accuracy", "params", "macs", "size_bytes", "latency_ms_torch", "latency_ms_ort")
_META_KEYS = ("batch", "threads", "versions")


# --------------------------------------------------------------------------- formatting
def _count(v: int | None) -> str:
    if v is None:
        return "–"
    for div, unit in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(v) >= div:
            return f"{v / div:.2f}{unit}"
    return str(v)


def _bytes(v: int | None) -> str:
    if v is None:
        return "–"
    for div, unit in ((2**30, "GiB"), (2**20, "MiB"), (2**10, "KiB")):
        if v >= div:
            return f"{v / div:.2f} {unit}"
    return f"{v} B"


def _num(v: float | None, fmt: str) -> str:
    return "–" if v is None else format(v, fmt)


def _size_ratio(report: Report, s: StageMetrics) -> float | None:
    base = report.baseline()
    if base is None or base.size_bytes in (None, 0) or s.size_bytes in (None, 0):
        return None
    assert base.size_bytes is not None and s.size_bytes is not None
    return base.size_bytes / s.size_bytes


def _ratio_text(sr: float | None) -> str:
    if sr is None:
        return "–"
    if abs(sr - 1.0) < 0.005:
        return "1.00x"
    return f"{sr:.2f}x smaller" if sr > 1 else f"{1 / sr:.2f}x larger"


def _rows(report: Report) -> list[list[str]]:
    rows = []
    for s in report.stages:
        sp_ort, sp_t, sr = report.speedup(s, "ort"), report.speedup(s, "torch"), _size_ratio(report, s)
        rows.append(
            [
                s.name,
                _num(None if s.accuracy is None else 100 * s.accuracy, ".2f"),
                _count(s.params),
                _count(s.macs),
                _bytes(s.size_bytes),
                _num(s.latency_ms_torch, ".2f"),
                _num(s.latency_ms_ort, ".2f"),
                "–" if sp_ort is None else f"{sp_ort:.2f}x",
                "–" if sp_t is None else f"{sp_t:.2f}x",
                _ratio_text(sr),
            ]
        )
    return rows


def _conditions(report: Report) -> list[tuple[str, str]]:
    """(label, value) lines describing how the figures were measured."""
    m = report.meta
    out: list[tuple[str, str]] = []
    for key, label in (("batch", "batch"), ("input_shape", "input shape"), ("threads", "threads")):
        if m.get(key) is not None:
            out.append((label, str(m[key])))
    env: dict[str, Any] = m["environment"] if isinstance(m.get("environment"), dict) else {}
    versions = m.get("versions") or env.get("versions")
    if isinstance(versions, dict) and versions:
        out.append(("versions", ", ".join(f"{k} {v}" for k, v in versions.items() if v is not None)))
    machine = m.get("machine") or env.get("machine")
    if isinstance(machine, dict) and machine:
        parts = [str(machine.get("cpu", ""))]
        if machine.get("cores") is not None:
            parts.append(f"{machine['cores']} cores")
        if machine.get("isa"):
            isa = machine["isa"]
            parts.append(" ".join(isa) if isinstance(isa, list) else str(isa))
        out.append(("machine", ", ".join(p for p in parts if p)))
    elif machine:
        out.append(("machine", str(machine)))
    malloc = m.get("malloc") or env.get("malloc")
    if isinstance(malloc, dict) and "applied" in malloc:
        out.append(
            ("malloc", "glibc trim/mmap thresholds raised" if malloc["applied"] else "default (not tuned)")
        )
    for key, label in (("eval_data", "evaluated on"), ("seed", "seed"), ("latency_note", "latency")):
        if m.get(key) is not None:
            out.append((label, str(m[key])))
    return out


# --------------------------------------------------------------------------- markdown / JSON / HTML
_KEPT_KEYS = {"kept_channels": "kept channels", "kept_heads": "kept attention heads", "kept_neurons": "kept FFN neurons"}


def _details(report: Report) -> list[tuple[str, list[tuple[str, str]]]]:
    """Per stage, the figures that do not fit the table: what a pruning stage kept per dependency group,
    the PyTorch/ONNX Runtime parity of an exported quantized model, training steps."""
    out = []
    for st in report.stages:
        items: list[tuple[str, str]] = []
        for key, label in _KEPT_KEYS.items():
            kept = st.extra.get(key)
            if isinstance(kept, dict) and kept:
                text = ", ".join(f"{g}: {b}->{a}" for g, (b, a) in kept.items())
                items.append((label, text))
        sens = st.extra.get("sensitivity")
        if isinstance(sens, dict) and sens:
            text = ", ".join(f"{g}: {100 * d:+.1f} pt" for g, d in sens.items())
            items.append(("sensitivity (accuracy drop with only that group pruned, training samples)", text))
        parity = st.extra.get("parity")
        if isinstance(parity, dict) and parity:
            fig = ", ".join(
                f"{k.replace('_', ' ')} {v:.6g}" if k == "cosine" else f"{k.replace('_', ' ')} {v:.4g}"
                for k, v in parity.items()
                if isinstance(v, int | float)
            )
            items.append(("parity, simulated vs ONNX Runtime", fig))
        items += _quant_items(st)
        if st.extra.get("skipped"):
            items.append(("left intact (not understood)", "; ".join(" ".join(x) for x in st.extra["skipped"])))
        mb = st.extra.get("macs_budget")
        if isinstance(mb, dict):
            items.append(("MACs budget", f"{mb.get('macs_ratio')} of the input: {int(mb.get('macs_after') or 0):,} "
                                         f"of {int(mb.get('macs_before') or 0):,} MACs"))
        if st.extra.get("dcp_left_intact"):
            items.append(("left intact by DCP", "; ".join(" ".join(x) for x in st.extra["dcp_left_intact"])))
        if st.extra.get("inner_taps"):
            items.append(("inner distillation taps (original model)", ", ".join(map(str, st.extra["inner_taps"]))))
        if st.extra.get("note"):
            items.append(("note", str(st.extra["note"])))
        if st.extra.get("train_steps"):
            items.append(("training steps", str(st.extra["train_steps"])))
        if items:
            out.append((st.name, items))
    return out


def _quant_items(st: StageMetrics) -> list[tuple[str, str]]:
    """Stage-detail lines of a quantization stage: method, sizes (packed vs ONNX file), budget, deployment."""
    x = st.extra
    items: list[tuple[str, str]] = []
    q = x.get("quantization")
    if isinstance(q, dict) and q:
        items.append(("quantization", ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in q.items())))
    wb = x.get("weight_bytes")
    if isinstance(wb, dict) and wb:
        labels = {
            "packed": "packed (bit-packed weights + scales; theoretical, no runtime reads it)",
            "packed_int8": "same, all weights at 8 bits",
            "onnx_file": "ONNX file as deployed (int8 containers; what ONNX Runtime loads)",
            "onnx_file_float": "ONNX file as deployed (float graph emulating the rounding; what ONNX Runtime loads)",
            "fp32": "FP32 weights",
        }
        items.append(
            ("weight size", "; ".join(f"{labels.get(k, k)}: {_bytes(int(v))}" for k, v in wb.items()))
        )
    budget = x.get("budget")
    if isinstance(budget, dict) and budget:
        items.append(("size budget", f"{budget.get('spec')} = {_bytes(int(budget.get('bytes') or 0))} packed"))
    if x.get("left_in_float"):
        items.append(("left in float (unsupported layer types)", ", ".join(map(str, x["left_in_float"]))))
    sq = x.get("layer_sqnr_db")
    if isinstance(sq, dict) and sq:
        items.append(("weight SQNR per layer (dB)", ", ".join(f"{k}: {v}" for k, v in sq.items())))
    if x.get("deployment"):
        items.append(("deployment", str(x["deployment"])))
    return items


def sensitivity_rows(st: StageMetrics) -> tuple[list[str], list[list[str]]] | None:
    """Header and rows of a stage's per-layer sensitivity table (layer, params, KL at each width, chosen bits),
    or ``None`` when the stage has none (``extra["sensitivity_table"]``, written by mixed precision)."""
    table = st.extra.get("sensitivity_table")
    if not isinstance(table, dict) or not table:
        return None
    widths = sorted({int(k) for r in table.values() for k in (r.get("kl") or {})})
    header = ["Layer", "Params"] + [f"KL @ {w} bit" for w in widths] + ["Chosen bits"]
    rows = []
    for layer, r in table.items():
        kl = r.get("kl") or {}
        rows.append(
            [str(layer), _count(int(r.get("params") or 0))]
            + [_num(kl.get(str(w)), ".3g") for w in widths]
            + [str(r.get("bits", "–"))]
        )
    return header, rows


def to_markdown(report: Report) -> str:
    """A markdown page: title, one table row per stage, then the measurement conditions."""
    lines = [f"# {report.title}", ""]
    lines.append("| " + " | ".join(COLUMNS) + " |")
    lines.append("|" + "|".join("---" if i == 0 else "---:" for i in range(len(COLUMNS))) + "|")
    for r in _rows(report):
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in r) + " |")
    lines.append("")
    lines.append("Speedups and size ratios are relative to the first stage, measured in the same run.")
    details = _details(report)
    if details:
        lines += ["", "## Stage details", ""]
        by_name = {st.name: st for st in report.stages}
        for name, items in details:
            lines.append(f"**{name}**")
            lines += [f"- {k}: {v}" for k, v in items]
            lines.append("")
            sens = sensitivity_rows(by_name[name]) if name in by_name else None
            if sens is not None:
                header, rows = sens
                lines.append("Per-layer sensitivity (ZeroQ KL divergence with only that layer's weights quantised):")
                lines.append("")
                lines.append("| " + " | ".join(header) + " |")
                lines.append("|---|" + "|".join("---:" for _ in header[1:]) + "|")
                lines += ["| " + " | ".join(r) + " |" for r in rows]
                lines.append("")
    conds = _conditions(report)
    if conds:
        lines += ["", "## Measurement conditions", ""]
        lines += [f"- **{k}**: {v}" for k, v in conds]
    return "\n".join(lines) + "\n"


def to_json(report: Report) -> dict[str, Any]:
    """The JSON document of ``report.json``: title, ``stages`` (the figures plus speedups) and ``meta``."""
    stages = []
    for s in report.stages:
        d = {k: getattr(s, k) for k in _JSON_STAGE_KEYS}
        d["seconds"] = s.seconds
        d["speedup_ort"] = report.speedup(s, "ort")
        d["speedup_torch"] = report.speedup(s, "torch")
        d["size_ratio"] = _size_ratio(report, s)
        d["extra"] = s.extra
        stages.append(d)
    meta = dict(report.meta)
    env: dict[str, Any] = meta["environment"] if isinstance(meta.get("environment"), dict) else {}
    for k in _META_KEYS:
        if meta.get(k) is None:
            meta[k] = env.get(k)
    return {"title": report.title, "stages": stages, "meta": meta}


_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:2em auto;max-width:1100px;
color:#222;padding:0 1em}
h1{font-size:1.5em}h2{font-size:1.15em;margin-top:1.6em}
table{border-collapse:collapse;width:100%;font-size:.92em}
th,td{border-bottom:1px solid #ddd;padding:.4em .6em;text-align:right}
th:first-child,td:first-child{text-align:left}
th{background:#f4f4f4}tr:hover td{background:#fafafa}
.note{color:#666;font-size:.85em}
img{max-width:100%;height:auto;margin:.5em 0}
dl{display:grid;grid-template-columns:max-content auto;gap:.2em 1em}dt{font-weight:600}dd{margin:0}
"""


def _img(png: bytes | None, alt: str) -> str:
    if not png:
        return ""
    b64 = base64.b64encode(png).decode("ascii")
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{b64}">'


def _sensitivity_html(st: StageMetrics, plots: bool) -> str:
    sens = sensitivity_rows(st)
    if sens is None:
        return ""
    e = html.escape
    header, rows = sens
    out = "<p>Per-layer sensitivity (ZeroQ KL divergence with only that layer's weights quantised):</p>"
    out += "<table><thead><tr>" + "".join(f"<th>{e(c)}</th>" for c in header) + "</tr></thead><tbody>"
    out += "".join("<tr>" + "".join(f"<td>{e(c)}</td>" for c in r) + "</tr>" for r in rows) + "</tbody></table>"
    if plots:
        from torchslim.reports.plots import sensitivity_plot

        out += _img(sensitivity_plot(st.extra["sensitivity_table"], title=st.name), "per-layer sensitivity")
    return out


def to_html(report: Report, plots: bool = True) -> str:
    """A self-contained HTML page (inline CSS, plots as base64 PNG: no external asset or URL)."""
    e = html.escape
    head = "".join(f"<th>{e(c)}</th>" for c in COLUMNS)
    body = "".join("<tr>" + "".join(f"<td>{e(c)}</td>" for c in r) + "</tr>" for r in _rows(report))
    imgs = ""
    if plots:
        from torchslim.reports.plots import accuracy_vs_latency, size_bars

        imgs = _img(accuracy_vs_latency(report, "ort"), "accuracy vs ONNX Runtime latency")
        if not imgs:
            imgs = _img(accuracy_vs_latency(report, "torch"), "accuracy vs PyTorch latency")
        imgs += _img(size_bars(report), "size on disk per stage")
    conds = "".join(f"<dt>{e(k)}</dt><dd>{e(v)}</dd>" for k, v in _conditions(report))
    by_name = {st.name: st for st in report.stages}
    details = "".join(
        f"<h3>{e(name)}</h3><dl>"
        + "".join(f"<dt>{e(k)}</dt><dd>{e(v)}</dd>" for k, v in items)
        + "</dl>"
        + (_sensitivity_html(by_name[name], plots) if name in by_name else "")
        for name, items in _details(report)
    )
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{e(report.title)}</title><style>{_CSS}</style></head><body>"
        f"<h1>{e(report.title)}</h1>"
        f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
        '<p class="note">Speedups and size ratios are relative to the first stage, measured in the same run.</p>'
        + (f"<h2>Plots</h2>{imgs}" if imgs else "")
        + (f"<h2>Stage details</h2>{details}" if details else "")
        + (f"<h2>Measurement conditions</h2><dl>{conds}</dl>" if conds else "")
        + "</body></html>\n"
    )


def write_report(report: Report, directory: str | os.PathLike[str]) -> dict[str, Path]:
    """Write ``report.md``, ``report.html`` and ``report.json`` into ``directory`` (atomically, each).

    Returns ``{"md": path, "html": path, "json": path}``.
    """
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    paths = {"md": d / "report.md", "html": d / "report.html", "json": d / "report.json"}
    atomic_write_json(paths["json"], to_json(report))
    atomic_write_text(paths["md"], to_markdown(report))
    atomic_write_text(paths["html"], to_html(report))
    return paths


def print_table(report: Report, console: Any = None) -> None:
    """Print the per-stage table (and the measurement conditions) with rich."""
    from rich.console import Console
    from rich.table import Table

    if console is None:
        console = Console()
        if not console.is_terminal:  # logs and CI: don't squeeze ten columns into 80
            console = Console(width=160)
    table = Table(title=report.title)
    for i, c in enumerate(COLUMNS):
        table.add_column(c, justify="left" if i == 0 else "right", no_wrap=i == 0)
    for r in _rows(report):
        table.add_row(*r)
    console.print(table)
    conds = _conditions(report)
    if conds:
        console.print("; ".join(f"{k}: {v}" for k, v in conds), style="dim")
