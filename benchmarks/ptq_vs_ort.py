"""Our static int8 PTQ vs ONNX Runtime's ``quantize_static`` and NNCF on the Fashion-MNIST ResNet.

Run: ``python -m benchmarks.ptq_vs_ort [--quick] [--threads N]``

Both quantisers see the same 512 calibration images (train split, fixed seed) and start from the same
BN-folded FP32 model: ours quantises the PyTorch model and exports QDQ; ORT's ``quantize_static``
(QDQ, U8S8, per-channel, min-max) quantises the BN-folded FP32 ONNX exported from the same folded
model. NNCF (when installed): ``nncf.quantize`` (default recipe) on the same BN-folded eager model with the
same 512 images, exported as ONNX QDQ pairs (``nncf``), and the same model with its signed per-tensor
activation quantizers rewritten to the equivalent uint8 ones (``nncf_u8act``, exact). Reported: test-split accuracy, top-1 agreement with FP32, ORT latency at batch 64 (interleaved,
median, fixed threads), file size, sim-vs-ORT parity of ours, and the int8 ops ORT actually runs.
Writes ``benchmarks/results/ptq_vs_ort.json``.
"""

from __future__ import annotations

import argparse
import importlib.util
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

RESULTS = Path(__file__).resolve().parent / "results" / "ptq_vs_ort.json"


def _export_fp32(model: torch.nn.Module, x: torch.Tensor, path: Path) -> Path:
    from torchslim.export.onnx import export_onnx

    return export_onnx(model, x, path)


def _ort_quantize_static(fp32: Path, out: Path, calib: torch.Tensor, reduce_range: bool) -> Path:
    from torchslim.bench.peers import ort_quantize_static

    return ort_quantize_static(fp32, out, calib, reduce_range=reduce_range, batch=64)


def _predict(path: Path, x: torch.Tensor, threads: int, batch: int = 500) -> torch.Tensor:
    from torchslim.export.parity import ort_session

    sess = ort_session(path, threads)
    name = sess.get_inputs()[0].name
    outs = [
        torch.from_numpy(np.asarray(sess.run(None, {name: x[i : i + batch].numpy()})[0]))
        for i in range(0, len(x), batch)
    ]
    return torch.cat(outs)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="2,000 test images, 10 latency samples")
    ap.add_argument("--threads", type=int, default=1, help="intra-op threads for every runtime (fixed)")
    ap.add_argument("--repeats", type=int, default=None)
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args(argv)

    from rich.console import Console
    from rich.table import Table

    from torchslim import data, zoo
    from torchslim.bench import latency
    from torchslim.core.io import atomic_write_json
    from torchslim.quantization import StaticPTQ, quantize_static
    from torchslim.quantization.onnx_qdq import ort_optimized_op_counts

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    console = Console(width=130)
    t0 = time.time()
    model = zoo.load("resnet-fmnist", progress=True).eval()
    train, test = data.fashion_mnist("train"), data.fashion_mnist("test")
    g = torch.Generator().manual_seed(0)
    calib = train.images[torch.randperm(len(train.images), generator=g)[:512]].contiguous()
    n_test = 2000 if args.quick else len(test.images)
    x_test, y_test = test.images[:n_test].contiguous(), test.labels[:n_test]
    x64 = test.images[:64].contiguous()

    cfg = StaticPTQ(num_calibration=512)
    t_q = time.time()
    q = quantize_static(model, cfg, calib, progress=False)
    quant_s = time.time() - t_q

    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp_s:
        tmp = Path(tmp_s)
        fp32 = _export_fp32(q.float_model, x64, tmp / "fp32_folded.onnx")
        ours = q.export_onnx(tmp / "ours_int8.onnx", x64)
        variants = {"fp32": fp32, "ours_w8a8": ours}
        t_o = time.time()
        variants["ort_quantize_static"] = _ort_quantize_static(
            fp32, tmp / "ort_qs.onnx", calib, reduce_range=False
        )
        ort_s = time.time() - t_o
        nncf_parity: dict[str, float] | None = None
        nncf_s = 0.0
        if importlib.util.find_spec("nncf") is not None:
            from torchslim.bench.peers import activations_to_uint8, nncf_export_onnx, nncf_quantize

            t_n = time.time()
            nq = nncf_quantize(model, calib, batch=64)
            nncf_s = time.time() - t_n
            variants["nncf"] = nncf_export_onnx(nq, x64, tmp / "nncf.onnx")
            variants["nncf_u8act"], _ = activations_to_uint8(variants["nncf"], tmp / "nncf_u8act.onnx")
            with torch.no_grad():
                nsim = torch.cat([nq(x_test[i : i + 500]) for i in range(0, n_test, 500)])
        if not args.quick:
            variants["ort_quantize_static_rr"] = _ort_quantize_static(
                fp32, tmp / "ort_qs_rr.onnx", calib, reduce_range=True
            )

        preds = {k: _predict(p, x_test, args.threads) for k, p in variants.items()}
        ref = preds["fp32"].argmax(1)
        for k, logits in preds.items():
            results[k] = {
                "accuracy": float((logits.argmax(1) == y_test).float().mean()),
                "top1_agreement_fp32": float((logits.argmax(1) == ref).float().mean()),
                "file_bytes": variants[k].stat().st_size,
            }
            if k != "fp32":
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    ops = ort_optimized_op_counts(variants[k])
                results[k]["ort_ops"] = {
                    o: c
                    for o, c in sorted(ops.items())
                    if o.startswith("Q")
                    or o in ("Conv", "FusedConv", "Gemm", "DequantizeLinear", "QuantizeLinear")
                }
        with torch.no_grad():
            results["torch_fp32"] = {"accuracy": float((model(x_test).argmax(1) == y_test).float().mean())}
        parity = q.parity(ours, x_test, threads=args.threads)
        if "nncf" in variants:
            n_ort = preds["nncf"]
            nncf_parity = {
                "max_abs_diff": float((n_ort - nsim).abs().max()),
                "cosine": float(torch.nn.functional.cosine_similarity(n_ort.flatten(), nsim.flatten(), dim=0)),
                "top1_agreement": float((n_ort.argmax(1) == nsim.argmax(1)).float().mean()),
            }

        calls = {k: latency.ort_callable(p, x64, threads=args.threads) for k, p in variants.items()}
        repeats = args.repeats or (10 if args.quick else 20)
        stats = latency.compare(calls, repeats=repeats, warmup=3, pause_s=0.2, threads=args.threads)
    for k, st in stats.items():
        results[k]["latency_ms_b64"] = st.median_ms
        results[k]["latency_p10_p90_ms"] = [st.p10_ms, st.p90_ms]
        results[k]["latency_samples_kept"] = st.n
        results[k]["latency_contaminated"] = st.contaminated
    base = results["ort_quantize_static"]["latency_ms_b64"]
    out = {
        "benchmark": "ptq_vs_ort",
        "quick": args.quick,
        "model": "resnet-fmnist",
        "dataset": getattr(test, "name", "fashion_mnist"),
        "n_test": n_test,
        "n_calibration": int(q.num_calibration),
        "batch": 64,
        "threads": args.threads,
        "config": cfg.to_dict(),
        "reduce_range_resolved": cfg.resolved_reduce_range(),
        "variants": results,
        "ours_vs_ort_latency_ratio": results["ours_w8a8"]["latency_ms_b64"] / base,
        "ours_parity_sim_vs_ort": {
            "max_abs_diff": parity.max_abs_diff,
            "mean_abs_diff": parity.mean_abs_diff,
            "cosine": parity.cosine,
            "top1_agreement": parity.top1_agreement,
        },
        "nncf_installed": "nncf" in variants,
        "nncf_parity_sim_vs_ort": nncf_parity,
        "quantize_seconds": {"ours": quant_s, "ort_quantize_static": ort_s}
        | ({"nncf": nncf_s} if "nncf" in variants else {}),
        "wall_seconds": time.time() - t0,
        "environment": latency.environment(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.out, out)

    table = Table(
        title=f"static int8 PTQ, resnet-fmnist, batch 64, {args.threads} thread(s), {n_test} test images"
    )
    for col in ("variant", "accuracy", "agree FP32", "ORT ms (median)", "vs ORT-QS", "size KB"):
        table.add_column(col, justify="right" if col != "variant" else "left", no_wrap=True)
    for k in variants:
        r = results[k]
        table.add_row(
            k,
            f"{100 * r['accuracy']:.2f}%",
            f"{100 * r['top1_agreement_fp32']:.2f}%",
            f"{r['latency_ms_b64']:.2f}",
            f"{r['latency_ms_b64'] / base:.2f}x",
            f"{r['file_bytes'] / 1024:.0f}",
        )
    console.print(table)
    console.print(
        f"ours: sim vs ORT parity cosine {parity.cosine:.6f}, top-1 agreement {parity.top1_agreement:.4f}, "
        f"max |diff| {parity.max_abs_diff:.4f}; reduce_range={cfg.resolved_reduce_range()}; wrote {args.out}"
    )
    return out


if __name__ == "__main__":
    main()
