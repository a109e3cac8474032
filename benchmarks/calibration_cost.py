"""Calibration cost: seconds and peak memory to calibrate 512 samples on the Fashion-MNIST ResNet, vs peers.

Run: ``python -m benchmarks.calibration_cost [--quick]``

Each tool runs in a FRESH subprocess (``--worker TOOL``), so one tool's allocations cannot hide another's.
The worker loads the model, the 512 calibration images (train split, fixed seed, as in
``benchmarks/ptq_vs_ort.py``) and, for the ONNX peers, the BN-folded FP32 ONNX; then it records its resident
set size (RSS), runs the calibration/quantisation call alone under a timer while a thread samples RSS every
2 ms (psutil when installed, else /proc/self/statm), and reports:

* ``seconds``: wall time of the call (everything from the FP32 model/ONNX to the quantised model);
* ``peak_rss_delta_mb``: peak sampled RSS during the call minus RSS just before it (memory the call needs);
* ``ru_maxrss_mb``: ``resource.getrusage(RUSAGE_SELF).ru_maxrss`` at the end (whole-process high-water mark,
  including the interpreter, torch and the loaded model).

Tools: ours (``quantize_static`` with each calibrator: minmax, percentile, mse, entropy), ours ZeroQ (data
distillation of 512 samples from BatchNorm statistics + min-max calibration on them; iterations given in the
table), ONNX Runtime ``quantize_static`` (MinMax, Entropy, Percentile), NNCF ``nncf.quantize`` (when
installed; includes loading its compiled CPU extension from the on-disk cache). Seconds on a shared machine
are contaminated by other load: compare within one run. Writes ``benchmarks/results/calibration_cost.json``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results" / "calibration_cost.json"

OURS = ("minmax", "percentile", "mse", "entropy")
ORT = ("minmax", "entropy", "percentile")


def tools(zeroq_iterations: int) -> list[str]:
    """Tool names in table order (``nncf`` only when installed)."""
    names = [f"ours_{c}" for c in OURS] + [f"ours_zeroq_{zeroq_iterations}it"] + [f"ort_{c}" for c in ORT]
    if importlib.util.find_spec("nncf") is not None:
        names.append("nncf")
    return names


def _rss_bytes() -> int:
    try:
        import psutil

        return int(psutil.Process().memory_info().rss)
    except ImportError:  # pragma: no cover - psutil comes with nncf; /proc fallback on Linux
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class _PeakSampler:
    """Samples RSS every ``interval_s`` in a daemon thread; ``peak`` is the largest value seen."""

    def __init__(self, interval_s: float = 0.002) -> None:
        self.interval_s = interval_s
        self.peak = _rss_bytes()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, _rss_bytes())
            time.sleep(self.interval_s)

    def __enter__(self) -> _PeakSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss_bytes())


def _worker(tool: str, n_calib: int, zeroq_iterations: int) -> dict[str, Any]:
    """Run one tool's calibration in this process and measure it."""
    import torch

    torch.set_num_threads(1)
    torch.manual_seed(0)
    from torchslim import data, zoo

    model = zoo.load("resnet-fmnist").eval()
    train = data.fashion_mnist("train")
    g = torch.Generator().manual_seed(0)
    calib = train.images[torch.randperm(len(train.images), generator=g)[:n_calib]].contiguous()
    tmp = Path(tempfile.mkdtemp(prefix="calib_cost_"))
    fn: Callable[[], Any]
    if tool.startswith("ours_zeroq"):
        from torchslim.quantization import StaticPTQ, quantize_static
        from torchslim.quantization.ptq.zeroq import distill_data

        def fn() -> Any:
            distilled = distill_data(
                model, num_samples=n_calib, input_shape=(1, 28, 28), iterations=zeroq_iterations, lr=0.2
            )
            return quantize_static(model, StaticPTQ(num_calibration=n_calib), distilled, progress=False)

    elif tool.startswith("ours_"):
        from torchslim.quantization import StaticPTQ, quantize_static

        cfg = StaticPTQ(num_calibration=n_calib, calibrator=tool.removeprefix("ours_"))  # type: ignore[arg-type]

        def fn() -> Any:
            return quantize_static(model, cfg, calib, progress=False)

    elif tool.startswith("ort_"):
        import logging

        from torchslim.bench.peers import fold_batchnorm_eager, ort_quantize_static
        from torchslim.export.onnx import export_onnx

        logging.getLogger().setLevel(logging.ERROR)
        fp32 = export_onnx(fold_batchnorm_eager(model), calib[:64], tmp / "fp32.onnx")
        method = tool.removeprefix("ort_")

        def fn() -> Any:
            return ort_quantize_static(fp32, tmp / "q.onnx", calib, batch=64, calibrate_method=method)

    elif tool == "nncf":
        from torchslim.bench.peers import nncf_quantize

        def fn() -> Any:
            return nncf_quantize(model, calib, batch=64)

    else:
        raise SystemExit(f"unknown tool {tool!r}")
    rss0 = _rss_bytes()
    t0 = time.perf_counter()
    with _PeakSampler() as s:
        fn()
    seconds = time.perf_counter() - t0
    return {
        "tool": tool,
        "seconds": seconds,
        "rss_before_mb": rss0 / 2**20,
        "peak_rss_delta_mb": (s.peak - rss0) / 2**20,
        "ru_maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,  # Linux: KiB
        "n_calibration": n_calib,
    }


def _run_worker(tool: str, n_calib: int, zeroq_iterations: int, timeout_s: float) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "benchmarks.calibration_cost", "--worker", tool, "--n-calib", str(n_calib)]
    cmd += ["--zeroq-iterations", str(zeroq_iterations)]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    root = Path(__file__).resolve().parent.parent
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, cwd=root, env=env)
    except subprocess.TimeoutExpired:
        return {"tool": tool, "error": f"timed out after {timeout_s:.0f} s"}
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        return {"tool": tool, "error": (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]}
    return dict(json.loads(lines[-1]))


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="ZeroQ with 10 distillation iterations (else 100)")
    ap.add_argument("--n-calib", type=int, default=512)
    ap.add_argument("--zeroq-iterations", type=int, default=None)
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--timeout", type=float, default=900.0, help="seconds per tool")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    zq_it = args.zeroq_iterations if args.zeroq_iterations is not None else (10 if args.quick else 100)
    if args.n_calib < 1:
        ap.error("--n-calib must be >= 1")
    if args.worker:
        res = _worker(args.worker, args.n_calib, zq_it)
        print(json.dumps(res))
        return res

    from rich.console import Console
    from rich.table import Table

    from torchslim.bench import latency
    from torchslim.core.io import atomic_write_json

    t0 = time.time()
    rows = [_run_worker(t, args.n_calib, zq_it, args.timeout) for t in tools(zq_it)]
    out = {
        "benchmark": "calibration_cost",
        "quick": args.quick,
        "model": "resnet-fmnist",
        "n_calibration": args.n_calib,
        "zeroq_iterations": zq_it,
        "method": "one fresh subprocess per tool, 1 thread; peak RSS sampled every 2 ms during the call",
        "tools": rows,
        "wall_seconds": time.time() - t0,
        "environment": latency.environment(),
        "note": "seconds measured on a shared 2-core machine: compare within this run only",
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.out, out)
    table = Table(title=f"calibration cost, resnet-fmnist, {args.n_calib} samples, 1 thread, fresh process per tool")
    for col in ("tool", "seconds", "peak RSS delta MB", "process max RSS MB"):
        table.add_column(col, justify="left" if col == "tool" else "right")
    for r in rows:
        if "error" in r:
            table.add_row(r["tool"], "error", str(r["error"])[:60], "")
        else:
            table.add_row(
                r["tool"], f"{r['seconds']:.2f}", f"{r['peak_rss_delta_mb']:.0f}", f"{r['ru_maxrss_mb']:.0f}"
            )
    Console(width=120).print(table)
    return out


if __name__ == "__main__":
    main()
