"""compare() orders variants by latency, interleaves them, and reports clean statistics."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch
from torch import nn

from torchslim.bench.latency import (
    LatencyStats,
    compare,
    environment,
    ort_callable,
    torch_callable,
    tune_malloc,
)
from torchslim.export.onnx import export_onnx

torch.set_num_threads(1)


def test_compare_orders_and_interleaves():
    calls: list[str] = []

    def slow() -> None:
        calls.append("slow")
        time.sleep(0.006)

    def fast() -> None:
        calls.append("fast")
        time.sleep(0.002)

    stats = compare(
        {"slow": slow, "fast": fast},
        repeats=6,
        warmup=1,
        pause_s=0.0,
        threads=1,
        min_sample_s=0.0,
        min_kept=6,
    )
    assert set(stats) == {"slow", "fast"}
    s, f = stats["slow"], stats["fast"]
    assert isinstance(s, LatencyStats) and s.n + s.dropped == 6 and s.number == 1
    # metric: medians within the sleep plus scheduling slack, and correctly ordered
    assert 5.5 <= s.median_ms <= 30 and 1.8 <= f.median_ms <= 20
    assert s.median_ms > f.median_ms
    assert s.p10_ms <= s.median_ms <= s.p90_ms
    # warm-up/calibration (1 + 1 calls each, variant by variant), then strictly alternating samples
    timed = calls[4:]
    assert calls[:4] == ["slow", "slow", "fast", "fast"]
    assert timed == ["slow", "fast"] * 6
    d = s.to_dict()
    assert d["name"] == "slow" and len(d["samples_ms"]) == 6 and d["threads"] == 1


def test_compare_calibrates_calls_per_sample_and_restores_threads():
    before = torch.get_num_threads()
    n = {"k": 0}

    def tiny() -> None:
        n["k"] += 1

    stats = compare({"tiny": tiny}, repeats=3, warmup=0, pause_s=0.0, threads=1, min_sample_s=0.01)
    assert stats["tiny"].number > 1  # a no-op needs many calls to fill 10 ms
    assert n["k"] == 1 + 3 * stats["tiny"].number
    assert torch.get_num_threads() == before
    with pytest.raises(ValueError, match="at least one variant"):
        compare({})


def test_torch_and_ort_callables_agree(tmp_path):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 3))
    x = torch.randn(2, 1, 8, 8)
    p = export_onnx(net, x, tmp_path / "m.onnx")
    t_out = torch_callable(net, x)()
    o_out = ort_callable(p, x, threads=1)()
    np.testing.assert_allclose(o_out[0], t_out.numpy(), rtol=1e-4, atol=1e-5)  # metric: allclose
    stats = compare(
        {"torch": torch_callable(net, x), "ort": ort_callable(p, x, threads=1)},
        repeats=3,
        warmup=1,
        pause_s=0.01,
        threads=1,
        min_sample_s=0.005,
    )
    assert all(s.median_ms > 0 and s.n >= 1 for s in stats.values())


def test_tune_malloc_and_environment():
    info = tune_malloc()
    assert set(info) >= {"applied", "mmap_threshold", "trim_threshold"}
    import platform

    if platform.libc_ver()[0] == "glibc":
        assert info["applied"] and info["trim_threshold"] == 1_000_000_000
    env = environment()
    assert env["versions"]["torch"] == torch.__version__ and env["machine"]["cores"] >= 1
    assert isinstance(env["machine"]["isa"], list) and env["versions"]["onnxruntime"]
    assert env["threads"] == torch.get_num_threads()
