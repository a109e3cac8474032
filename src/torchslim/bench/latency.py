"""Latency measurement that can be trusted on a shared machine.

What :func:`compare` does, and why (DESIGN.md section 7):

* fixes ``torch.set_num_threads`` (and uses the same count for ONNX Runtime) and states it;
* warms every variant up, then **interleaves** them (A B C A B C ...), so drift of the machine hits all
  variants alike: only ratios measured in one interleaved run count;
* sleeps ``pause_s`` between samples of different variants: thread pools keep spinning after a run;
* each sample runs a variant ``number`` times (calibrated so that a sample lasts >= ``min_sample_s``,
  which the 10 ms resolution of ``/proc/stat`` needs) and records wall time, this process's CPU time and the
  CPU time *other* processes used meanwhile; samples during which others used more cores than this run left
  free are dropped (``LatencyStats.dropped`` says how many);
* :func:`tune_malloc` keeps glibc from returning freed activation buffers to the OS, which otherwise makes
  eager PyTorch up to 2x slower than it is.

Example::

    >>> tune_malloc()                                                   # doctest: +SKIP
    >>> stats = compare({"torch": torch_callable(model, x),
    ...                  "ort": ort_callable("model.onnx", x)}, threads=1)  # doctest: +SKIP
    >>> stats["torch"].median_ms / stats["ort"].median_ms               # speedup of ORT  # doctest: +SKIP
"""

from __future__ import annotations

import ctypes
import ctypes.util
import dataclasses
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

__all__ = [
    "LatencyStats",
    "compare",
    "torch_callable",
    "ort_callable",
    "tune_malloc",
    "environment",
]

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_MALLOC_TUNED: dict[str, Any] | None = None


def tune_malloc(threshold: int = 1_000_000_000) -> dict[str, Any]:
    """Set glibc ``M_MMAP_THRESHOLD`` and ``M_TRIM_THRESHOLD`` to ``threshold`` bytes for this process.

    Large freed buffers then stay in the heap instead of going back to the OS, so eager PyTorch does not
    page-fault its activation buffers in again on every call (measured: up to 2x slower without it; ONNX
    Runtime and compiled torch use their own arenas and are unaffected). Equivalent to starting Python with
    ``MALLOC_MMAP_THRESHOLD_=MALLOC_TRIM_THRESHOLD_=1000000000``. A no-op off glibc.

    Returns ``{"applied": bool, "mmap_threshold": int | None, "trim_threshold": int | None, "libc": str}``.
    """
    global _MALLOC_TUNED
    libc_name, libc_ver = platform.libc_ver()
    info: dict[str, Any] = {
        "applied": False,
        "mmap_threshold": None,
        "trim_threshold": None,
        "libc": f"{libc_name} {libc_ver}".strip(),
    }
    if not sys.platform.startswith("linux") or libc_name != "glibc":
        _MALLOC_TUNED = info
        return info
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
        mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
        mallopt.restype = ctypes.c_int
    except (OSError, AttributeError):
        _MALLOC_TUNED = info
        return info
    value = min(int(threshold), 2**31 - 1)
    if mallopt(_M_MMAP_THRESHOLD, value) == 1:
        info["mmap_threshold"] = value
    else:  # older glibc caps the mmap threshold at HEAP_MAX/2 (32 MiB on 64-bit)
        capped = 32 * 1024 * 1024
        if mallopt(_M_MMAP_THRESHOLD, capped) == 1:
            info["mmap_threshold"] = capped
    if mallopt(_M_TRIM_THRESHOLD, value) == 1:
        info["trim_threshold"] = value
    info["applied"] = info["mmap_threshold"] is not None and info["trim_threshold"] is not None
    _MALLOC_TUNED = info
    return info


def _malloc_state() -> dict[str, Any]:
    if _MALLOC_TUNED is not None:
        return _MALLOC_TUNED
    env = {k: os.environ[k] for k in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_") if k in os.environ}
    return {"applied": bool(env), "env": env}


# --------------------------------------------------------------------------- callables
def torch_callable(model: torch.nn.Module, x: Any) -> Callable[[], Any]:
    """A zero-argument callable running ``model(x)`` in eval mode under ``torch.inference_mode``."""
    model.eval()
    args = x if isinstance(x, tuple) else (x,)

    def run() -> Any:
        with torch.inference_mode():
            return model(*args)

    return run


def ort_callable(onnx_path: str | os.PathLike[str], x: Any, threads: int | None = None) -> Callable[[], Any]:
    """A zero-argument callable running the ONNX model on ``x`` (a tensor or numpy array).

    The session uses ``threads`` intra-op threads (default ``torch.get_num_threads()``), sequential execution
    and all graph optimisations; the input is converted to numpy once, outside the timed call.
    """
    import numpy as np

    from torchslim.export.parity import ort_session

    sess = ort_session(onnx_path, threads)
    name = sess.get_inputs()[0].name
    arr = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    feed = {name: arr}

    def run() -> Any:
        return sess.run(None, feed)

    return run


# --------------------------------------------------------------------------- /proc/stat
def _system_busy_s() -> float | None:
    """CPU seconds all processes spent not idle since boot (``/proc/stat``), or None off Linux."""
    try:
        with open("/proc/stat") as f:
            parts = f.readline().split()
    except OSError:
        return None
    if not parts or parts[0] != "cpu":
        return None
    vals = [int(v) for v in parts[1:]]
    idle = vals[3] + (vals[4] if len(vals) > 4 else 0)  # idle + iowait
    busy = sum(vals[:8]) - idle  # user nice system idle iowait irq softirq steal (guest is inside user)
    hz = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    return busy / float(hz)


def _n_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


@dataclass
class LatencyStats:
    """Per-call latency of one variant: median / p10 / p90 in milliseconds over ``n`` kept samples.

    ``dropped`` samples were discarded because other processes used more CPU than the run left free;
    ``other_load`` is the mean number of cores other processes used during the kept samples; ``cpu_util``
    the mean ratio of this process's CPU time to wall time (about ``threads`` when nothing else interferes);
    ``number`` the calls per sample.
    """

    name: str
    median_ms: float
    p10_ms: float
    p90_ms: float
    mean_ms: float
    n: int
    dropped: int = 0
    number: int = 1
    threads: int = 1
    other_load: float | None = None
    cpu_util: float | None = None
    contaminated: bool = False  # too few clean samples: kept the least contaminated ones anyway
    samples_ms: list[float] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _quantile(sorted_vals: list[float], q: float) -> float:
    if len(sorted_vals) == 1:
        return sorted_vals[0]
    pos = q * (len(sorted_vals) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(sorted_vals) - 1)
    return sorted_vals[lo] + (sorted_vals[hi] - sorted_vals[lo]) * (pos - lo)


def compare(
    variants: dict[str, Callable[[], object]],
    repeats: int = 20,
    warmup: int = 3,
    pause_s: float = 0.2,
    threads: int | None = None,
    min_sample_s: float = 0.05,
    max_other_cores: float | None = None,
    min_kept: int | None = None,
    progress: bool = False,
) -> dict[str, LatencyStats]:
    """Time zero-argument callables, interleaved, and return per-call latency statistics per variant.

    Args:
        variants: name -> callable (see :func:`torch_callable`, :func:`ort_callable`).
        repeats: timed samples per variant (>= 10 recommended for a median).
        warmup: untimed calls per variant before timing.
        pause_s: sleep between samples of different variants (lets thread pools go idle).
        threads: ``torch.set_num_threads`` for the run (restored afterwards); default: the current count.
        min_sample_s: each sample repeats the call until it lasts about this long (calibrated in warm-up).
        max_other_cores: drop a sample when other processes used more cores than this during it
            (default: the cores this run leaves free + 0.5).
        min_kept: never keep fewer samples than this (default ``max(3, repeats // 2)``); if contamination
            would, the least contaminated samples are kept and ``contaminated`` is set.
        progress: show a rich progress bar.
    """
    if not variants:
        raise ValueError("compare() needs at least one variant: pass {'name': callable, ...}.")
    if repeats < 1 or warmup < 0:
        raise ValueError(f"repeats must be >= 1 and warmup >= 0 (got repeats={repeats}, warmup={warmup}).")
    prev_threads = torch.get_num_threads()
    n_threads = int(threads or prev_threads)
    torch.set_num_threads(n_threads)
    cores = _n_cores()
    limit = max_other_cores if max_other_cores is not None else max(0.0, cores - n_threads) + 0.5
    keep_min = min_kept if min_kept is not None else max(3, repeats // 2)
    names = list(variants)
    try:
        # Warm-up and calibration of calls per sample.
        number: dict[str, int] = {}
        for name in names:
            fn = variants[name]
            for _ in range(warmup):
                fn()
            t0 = time.perf_counter()
            fn()
            one = max(time.perf_counter() - t0, 1e-7)
            number[name] = max(1, min(10_000, math.ceil(min_sample_s / one)))
            if pause_s > 0:
                time.sleep(pause_s)

        samples: dict[str, list[tuple[float, float, float]]] = {n: [] for n in names}  # (ms, other, util)
        bar_ctx: Any = None
        task = None
        if progress:
            from rich.progress import Progress

            bar_ctx = Progress(transient=True)
            bar_ctx.start()
            task = bar_ctx.add_task("timing", total=repeats * len(names))
        try:
            for _ in range(repeats):
                for name in names:
                    fn, k = variants[name], number[name]
                    sys0 = _system_busy_s()
                    c0 = time.process_time()
                    t0 = time.perf_counter()
                    for _ in range(k):
                        fn()
                    wall = time.perf_counter() - t0
                    cpu = time.process_time() - c0
                    sys1 = _system_busy_s()
                    other = 0.0
                    if sys0 is not None and sys1 is not None and wall > 0:
                        other = max(0.0, (sys1 - sys0) - cpu) / wall
                    samples[name].append((wall * 1000.0 / k, other, cpu / wall if wall > 0 else 0.0))
                    if bar_ctx is not None:
                        bar_ctx.advance(task)
                    if pause_s > 0 and len(names) > 1:
                        time.sleep(pause_s)
        finally:
            if bar_ctx is not None:
                bar_ctx.stop()
    finally:
        torch.set_num_threads(prev_threads)

    out: dict[str, LatencyStats] = {}
    for name in names:
        rows = samples[name]
        clean = [r for r in rows if r[1] <= limit]
        contaminated = False
        if len(clean) < min(keep_min, len(rows)):
            clean = sorted(rows, key=lambda r: r[1])[: min(keep_min, len(rows))]
            contaminated = True
        ms = sorted(r[0] for r in clean)
        out[name] = LatencyStats(
            name=name,
            median_ms=statistics.median(ms),
            p10_ms=_quantile(ms, 0.1),
            p90_ms=_quantile(ms, 0.9),
            mean_ms=statistics.fmean(ms),
            n=len(ms),
            dropped=len(rows) - len(clean),
            number=number[name],
            threads=n_threads,
            other_load=statistics.fmean(r[1] for r in clean),
            cpu_util=statistics.fmean(r[2] for r in clean),
            contaminated=contaminated,
            samples_ms=[r[0] for r in rows],
        )
    return out


# --------------------------------------------------------------------------- environment
_ISA_FLAGS = (
    "sse4_2",
    "avx",
    "avx2",
    "fma",
    "f16c",
    "avx512f",
    "avx512bw",
    "avx512vl",
    "avx512_vnni",
    "avx512_bf16",
    "avx512_fp16",
    "avx_vnni",
    "amx_bf16",
    "amx_int8",
)


def _cpuinfo() -> tuple[str, list[str]]:
    model = platform.processor() or platform.machine()
    flags: list[str] = []
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name") and ":" in line:
                    model = line.split(":", 1)[1].strip()
                elif line.startswith(("flags", "Features")) and ":" in line and not flags:
                    have = set(line.split(":", 1)[1].split())
                    flags = [fl for fl in _ISA_FLAGS if fl in have]
    except OSError:
        pass
    return model, flags


def _version(mod: str) -> str | None:
    try:
        from importlib.metadata import version

        return version(mod)
    except Exception:
        return None


def environment() -> dict[str, Any]:
    """What a measurement ran on, laid out as a report's ``meta`` expects it.

    ``{"versions": {python, torch, onnxruntime, onnx, torchslim}, "machine": {cpu, cores, cpu_count, isa,
    platform}, "threads": torch.get_num_threads(), "malloc": tune_malloc state}``; ``isa`` lists the relevant
    /proc/cpuinfo flags present (avx2, avx512f, avx512_vnni, amx_int8, ...).
    """
    cpu, flags = _cpuinfo()
    return {
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "onnxruntime": _version("onnxruntime"),
            "onnx": _version("onnx"),
            "torchslim": _version("torchslim"),
        },
        "machine": {
            "cpu": cpu,
            "cores": _n_cores(),
            "cpu_count": os.cpu_count(),
            "isa": flags,
            "platform": platform.platform(),
        },
        "threads": torch.get_num_threads(),
        "malloc": _malloc_state(),
    }
