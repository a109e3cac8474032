"""Rendering a made-up report: markdown rows, JSON keys, self-contained HTML, rich table."""

from __future__ import annotations

import io
import json
import re

from rich.console import Console

from torchslim.reports.render import COLUMNS, print_table, to_html, to_markdown, write_report
from torchslim.reports.schema import Report, StageMetrics


def _report() -> Report:
    return Report(
        title="ResNet Fashion-MNIST",
        stages=[
            StageMetrics("baseline", 0.927, 700_000, 90_000_000, 2_800_000, 40.0, 21.4),
            StageMetrics("prune 50%", 0.925, 180_000, 25_000_000, 720_000, 15.0, 8.0),
            StageMetrics("int8", 0.9250, 180_000, 25_000_000, 260_000, None, 3.9),
        ],
        meta={
            "batch": 64,
            "threads": 1,
            "versions": {"torch": "2.13.0", "onnxruntime": "1.32.0"},
            "machine": {"cpu": "Test CPU", "cores": 2, "isa": ["avx2"]},
        },
    )


def test_markdown_rows_and_speedups():
    md = to_markdown(_report())
    rows = [ln for ln in md.splitlines() if ln.startswith("|")]
    assert len(rows) == 2 + 3  # header + separator + one per stage
    assert rows[0].count("|") == len(COLUMNS) + 1
    assert "| baseline | 92.70 |" in rows[2]
    prune = rows[3]
    assert "2.67x" in prune  # ORT speedup 21.4 / 8.0 = 2.675 -> "2.67x" / "2.68x" rounding
    assert "3.89x smaller" in prune  # 2.8 MB / 720 kB
    assert "5.49x" in rows[4]  # 21.4 / 3.9
    assert "**threads**: 1" in md and "**batch**: 64" in md and "torch 2.13.0" in md and "Test CPU" in md


def test_write_report_json_html(tmp_path):
    paths = write_report(_report(), tmp_path / "out")
    assert set(paths) == {"md", "html", "json"} and all(p.exists() for p in paths.values())
    doc = json.loads(paths["json"].read_text())
    for st in doc["stages"]:
        assert {
            "name",
            "accuracy",
            "params",
            "macs",
            "size_bytes",
            "latency_ms_torch",
            "latency_ms_ort",
        } <= set(st)
    assert doc["stages"][2]["latency_ms_torch"] is None
    assert abs(doc["stages"][1]["speedup_ort"] - 21.4 / 8.0) < 1e-12  # metric: exact ratio
    assert {"batch", "threads", "versions"} <= set(doc["meta"])
    page = paths["html"].read_text()
    assert (
        page.count('<img alt="') == 2
        and '<img alt="accuracy vs ONNX Runtime latency" src="data:image/png;base64,' in page
    )
    text = re.sub(r"data:image/png;base64,[A-Za-z0-9+/=]+", "", page)  # base64 may contain "//"
    assert not re.search(r"(https?:)?//[a-z]", text)  # no external URL or asset
    assert not re.search(r"(src|href)=\"(?!data:)", page)
    assert "<link" not in page and "<script" not in page
    assert page.count("<tr>") == 1 + 3
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["report.html", "report.json", "report.md"]


def test_html_escapes_and_handles_missing_figures():
    r = Report(title="<b>x</b>", stages=[StageMetrics("a<b")], meta={})
    page = to_html(r)
    assert "<b>x</b>" not in page and "&lt;b&gt;x&lt;/b&gt;" in page
    assert "data:image/png" not in page  # nothing to plot


def test_meta_from_pipeline_environment_block():
    from torchslim.reports.render import to_json

    r = Report(
        "t",
        [StageMetrics("a")],
        meta={
            "batch": 8,
            "threads": 2,
            "environment": {"versions": {"torch": "9.9"}, "machine": {"cpu": "Zen", "cores": 2, "isa": []}},
        },
    )
    assert to_json(r)["meta"]["versions"] == {"torch": "9.9"}
    md = to_markdown(r)
    assert "torch 9.9" in md and "Zen, 2 cores" in md


def test_print_table():
    buf = io.StringIO()
    print_table(_report(), console=Console(file=buf, width=200, color_system=None))
    out = buf.getvalue()
    assert "prune 50%" in out and "92.70" in out and "threads: 1" in out


def test_stage_details_list_kept_channels_and_parity():
    from torchslim.reports.render import to_html, to_markdown
    from torchslim.reports.schema import Report, StageMetrics

    rep = Report(
        title="t",
        stages=[
            StageMetrics(name="original", accuracy=0.9),
            StageMetrics(name="1. channel_prune", extra={"kept_channels": {"stem.0": [32, 16]}}),
            StageMetrics(name="2. static_ptq", extra={"parity": {"cosine": 0.9999, "top1_agreement": 0.998}}),
        ],
    )
    md = to_markdown(rep)
    assert "## Stage details" in md and "stem.0: 32->16" in md
    assert "top1 agreement 0.998" in md
    assert "stem.0: 32-&gt;16" in to_html(rep, plots=False)


def _quant_report():
    from torchslim.reports.schema import Report, StageMetrics

    table = {
        "stem.0": {"params": 288, "kl": {"2": 0.5, "4": 0.02, "8": 1e-5}, "bits": 8},
        "fc": {"params": 1280, "kl": {"2": 0.1, "4": 0.004, "8": 2e-6}, "bits": 4},
    }
    extra = {
        "sensitivity_table": table,
        "quantization": {"method": "mixed_precision", "weights": "mixed int4/int8"},
        "weight_bytes": {"packed": 1000, "packed_int8": 1800, "onnx_file": 5000},
        "budget": {"spec": "size=0.6x", "bytes": 1080},
        "deployment": "ONNX Runtime runs int8 QDQ kernels",
    }
    return Report(title="q", stages=[StageMetrics(name="original", accuracy=0.9),
                                     StageMetrics(name="1. mixed_precision", extra=extra)])


def test_sensitivity_table_in_markdown_html_json(tmp_path):
    """The per-layer sensitivity table (layer, params, KL per width, chosen bits) appears in report.md and
    report.html with a plot, and report.json carries the raw table; sizes are labelled packed vs ONNX file."""
    import json

    from torchslim.reports.render import sensitivity_rows, to_markdown

    rep = _quant_report()
    header, rows = sensitivity_rows(rep.stages[1])
    assert header == ["Layer", "Params", "KL @ 2 bit", "KL @ 4 bit", "KL @ 8 bit", "Chosen bits"]
    assert rows[1] == ["fc", "1.28k", "0.1", "0.004", "2e-06", "4"]
    md = to_markdown(rep)
    assert "| fc | 1.28k | 0.1 | 0.004 | 2e-06 | 4 |" in md
    assert "packed (bit-packed weights + scales; theoretical" in md and "ONNX file as deployed" in md
    assert "size=0.6x = 1.05 KiB packed" in md
    paths = write_report(rep, tmp_path)
    page = paths["html"].read_text()
    assert "<td>stem.0</td>" in page and 'alt="per-layer sensitivity"' in page
    assert json.loads(paths["json"].read_text())["stages"][1]["extra"]["sensitivity_table"]["fc"]["bits"] == 4


def test_pruning_method_details_are_rendered():
    """The details the new pruning stages record (MACs budget, DCP's untouched groups, inner-KD taps, notes)
    appear in the markdown report."""
    st = StageMetrics(name="1. knapsack_prune", accuracy=0.9, params=1, macs=1, size_bytes=1, seconds=0.1,
                      extra={"macs_budget": {"macs_ratio": 0.5, "macs_before": 1000, "macs_after": 498},
                             "dcp_left_intact": [["layer1", "residual stream"]],
                             "inner_taps": ["bn1", "layer1.0.bn1"], "note": "logit KD only"})
    md = to_markdown(Report(title="t", stages=[st]))
    assert "0.5 of the input: 498 of 1,000 MACs" in md
    assert "layer1 residual stream" in md and "bn1, layer1.0.bn1" in md and "logit KD only" in md
