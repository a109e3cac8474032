"""Plots return PNG bytes, or None when there is nothing to plot."""

from __future__ import annotations

from torchslim.reports.plots import accuracy_vs_latency, size_bars
from torchslim.reports.schema import Report, StageMetrics

PNG = b"\x89PNG\r\n\x1a\n"


def test_plots_are_png():
    r = Report(
        "t",
        [
            StageMetrics("a", accuracy=0.9, latency_ms_ort=10.0, size_bytes=4000),
            StageMetrics("b", accuracy=0.88, latency_ms_ort=4.0, size_bytes=1000),
        ],
    )
    a = accuracy_vs_latency(r)
    s = size_bars(r)
    assert a is not None and a.startswith(PNG) and len(a) > 1000
    assert s is not None and s.startswith(PNG)
    assert accuracy_vs_latency(r, "torch") is None  # no torch latency recorded
    assert size_bars(Report("empty")) is None


def test_sensitivity_plot_is_png_and_none_when_empty():
    from torchslim.reports.plots import sensitivity_plot

    table = {"a": {"params": 10, "kl": {"2": 0.3, "8": 0.0}, "bits": 8}, "b": {"params": 5, "kl": {"2": 0.1, "8": 1e-4}, "bits": 2}}
    png = sensitivity_plot(table, title="t")
    assert png is not None and png[:8] == b"\x89PNG\r\n\x1a\n"
    assert sensitivity_plot({}) is None
