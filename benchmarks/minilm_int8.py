"""Dynamic int8 on MiniLM-L6 sentence embeddings: ours vs ORT ``quantize_dynamic`` vs PyTorch's own.

Run: ``python -m benchmarks.minilm_int8 [--quick] [--threads N]``

SmoothQuant (``quantization.smooth``, alpha 0.8 by default) is calibrated on 256 other tweets (64 in
--quick); the per-tensor variants then map to ORT's fused ``DynamicQuantizeMatMul`` kernels.

Model: ``zoo.load("minilm-l6")`` (all-MiniLM-L6-v2, eager attention), real texts from
``data.health_tweets()`` (512; 64 in --quick), batches of 32 x 128 tokens (padded to 128). Quality: mean
cosine between each variant's sentence embedding and the PyTorch FP32 one, every variant run in the
runtime it is timed in. Latency: one batch 32 x 128, all variants interleaved in one run
(``bench.latency.compare``, fixed threads, contaminated samples dropped, glibc malloc tuned for eager
PyTorch). Variants: PyTorch FP32, ORT FP32 (legacy export), ORT ``quantize_dynamic`` per-channel (the
peer; also after ORT's transformer fusions), ours (per-token / per-tensor activations, with and without
SmoothQuant, 7-bit int8-stored or 8-bit uint8-stored weights, the most sensitive Linears in float),
``torch.ao.quantization.quantize_dynamic`` (per-channel qconfig).
Writes ``benchmarks/results/minilm_int8.json``.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

RESULTS = Path(__file__).resolve().parent / "results" / "minilm_int8.json"
SEQ = 128
BATCH = 32
#: calibration texts for SmoothQuant come from here on (disjoint from the evaluation texts [0, 512))
CALIB_OFFSET = 1024


def _ort_runner(path: Path, threads: int) -> Any:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    names = [i.name for i in sess.get_inputs()]

    def run(ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        feed = dict(zip(names, (ids.numpy(), mask.numpy()), strict=False))
        return torch.from_numpy(np.asarray(sess.run(None, feed)[0]))

    return run


def _batches(enc: Any, texts: list[str]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    out = []
    for i in range(0, len(texts), BATCH):
        tok = enc.tokenizer(
            texts[i : i + BATCH], padding="max_length", truncation=True, max_length=SEQ, return_tensors="pt"
        )
        out.append((tok["input_ids"], tok["attention_mask"]))
    return out


def _mean_cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.nn.functional.cosine_similarity(a.double(), b.double(), dim=1).mean())


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="64 texts, 3 latency samples (smoke run)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--alpha", type=float, default=0.8, help="SmoothQuant migration strength")
    ap.add_argument("--keep-float", type=int, default=3, help="most sensitive Linears left in float")
    ap.add_argument("--full-range", type=int, default=6, help="most sensitive Linears given 8-bit weights")
    args = ap.parse_args(argv)

    from torchslim import data, zoo
    from torchslim.bench.latency import compare, environment, tune_malloc
    from torchslim.core.io import atomic_write_json
    from torchslim.export import export_onnx
    from torchslim.quantization.dynamic import DynamicPTQ, layer_sensitivity, quantize_dynamic
    from torchslim.quantization.onnx_qdq import ort_optimized_op_counts
    from torchslim.quantization.smooth import SmoothQuant, bert_fold_map, smooth_quant

    malloc = tune_malloc()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    n_texts = 64 if args.quick else 512
    n_calib = 64 if args.quick else 256
    repeats = 3 if args.quick else 10
    t0 = time.time()

    enc: Any = zoo.load("minilm-l6")
    inner = enc.model
    if hasattr(inner, "set_attn_implementation"):
        inner.set_attn_implementation("eager")
    else:
        inner.config._attn_implementation = "eager"
    enc.eval()
    texts = data.health_tweets().texts[:n_texts]
    batches = _batches(enc, texts)
    ids0, mask0 = batches[0]

    with torch.inference_mode():
        ref = torch.cat([enc(i, m) for i, m in batches]).float()

    tmp = Path(tempfile.mkdtemp(prefix="minilm_int8_"))
    runners: dict[str, Any] = {}
    notes: dict[str, Any] = {}

    fp32 = export_onnx(enc, (ids0, mask0), tmp / "fp32.onnx")
    runners["ort_fp32_legacy"] = _ort_runner(fp32, args.threads)

    from onnxruntime.quantization import QuantType
    from onnxruntime.quantization import quantize_dynamic as ort_quantize_dynamic

    peer = tmp / "ort_qd_pc.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ort_quantize_dynamic(str(fp32), str(peer), per_channel=True, weight_type=QuantType.QInt8)
    runners["ort_quantize_dynamic_pc"] = _ort_runner(peer, args.threads)
    notes["ort_quantize_dynamic_pc_ops"] = ort_optimized_op_counts(peer)
    # the same peer after ORT's transformer fusions (Attention, SkipLayerNorm, BiasGelu) on the FP32 graph:
    # quantize_dynamic then emits QAttention (ORT's recommended recipe for BERT)
    try:
        from onnxruntime.transformers.optimizer import optimize_model

        cfg: Any = enc.model.config
        opt = optimize_model(
            str(fp32), model_type="bert", num_heads=cfg.num_attention_heads, hidden_size=cfg.hidden_size
        )
        opt.save_model_to_file(str(tmp / "fp32_opt.onnx"))
        peer_opt = tmp / "ort_opt_qd_pc.onnx"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ort_quantize_dynamic(
                str(tmp / "fp32_opt.onnx"),
                str(peer_opt),
                per_channel=True,
                weight_type=QuantType.QInt8,
                extra_options={"DefaultTensorType": 1},  # onnx.TensorProto.FLOAT (fused ops lack types)
            )
        runners["ort_opt_quantize_dynamic_pc"] = _ort_runner(peer_opt, args.threads)
        notes["ort_opt_quantize_dynamic_pc_ops"] = ort_optimized_op_counts(peer_opt)
        notes["ort_optimizer_fusions"] = opt.get_fused_operator_statistics()
    except Exception as err:  # noqa: BLE001 - an optional peer; record why it is missing
        notes["ort_opt_quantize_dynamic_pc_error"] = repr(err)

    # SmoothQuant calibration on texts disjoint from the evaluation texts
    calib_texts = data.health_tweets().texts[CALIB_OFFSET : CALIB_OFFSET + n_calib]
    calib = _batches(enc, calib_texts)
    t_smooth = time.time()
    smoothed = smooth_quant(enc, calib, SmoothQuant(alpha=args.alpha, fold_into=bert_fold_map(enc)))
    notes["smooth"] = {
        "alpha": args.alpha,
        "calib_texts": len(calib_texts),
        "seconds": time.time() - t_smooth,
        "groups": len(smoothed.groups),
        "folded": len(smoothed.folded),
        "explicit": len(smoothed.explicit),
        "rejected_folds": len(smoothed.rejected_folds),
        "float_max_change": smoothed.max_change,
    }
    fast = DynamicPTQ(activations="per_tensor", weight_dtype="int8", reduce_range=True)
    sens = layer_sensitivity(smoothed.model, calib[:2], fast)
    keep_float = list(sens)[: args.keep_float]
    notes["sensitivity_sqnr_db_worst5"] = dict(list(sens.items())[:5])
    notes["kept_float"] = keep_float

    ours: dict[str, tuple[Any, DynamicPTQ]] = {
        "ours_per_token": (enc, DynamicPTQ(activations="per_token")),
        "ours_per_tensor": (enc, DynamicPTQ(activations="per_tensor")),
        "ours_smooth_per_tensor_u8store": (smoothed.model, DynamicPTQ(activations="per_tensor")),
        "ours_smooth_per_tensor_w7": (smoothed.model, fast),
        f"ours_smooth_per_tensor_w7_float{args.keep_float}": (
            smoothed.model,
            fast.model_copy(update={"exclude": keep_float}),
        ),
        f"ours_smooth_per_tensor_w7_w8top{args.full_range}": (
            smoothed.model,
            fast.model_copy(update={"full_range": list(sens)[: args.full_range]}),
        ),
    }
    sims: dict[str, Any] = {}
    for name, (model, cfg) in ours.items():
        q = quantize_dynamic(model, cfg)
        path = q.export_onnx(tmp / f"{name}.onnx", (ids0, mask0), input_names=["input_ids", "attention_mask"])
        runners[name] = _ort_runner(path, args.threads)
        sims[name] = q
        notes[f"{name}_ops"] = ort_optimized_op_counts(path)
        notes[f"{name}_parity_vs_sim"] = q.parity(path, (ids0[:8], mask0[:8])).__dict__
        notes[f"{name}_weight_dtype"] = cfg.resolved_weight_dtype()

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch_ao_pc = torch.ao.quantization.quantize_dynamic(
            enc, {torch.nn.Linear: torch.ao.quantization.per_channel_dynamic_qconfig}, dtype=torch.qint8
        )

    quality: dict[str, float] = {}
    for name, run in runners.items():
        out = torch.cat([run(i, m) for i, m in batches]).float()
        quality[name] = _mean_cosine(out, ref)
    with torch.inference_mode():
        quality["torch_ao_dynamic_int8_pc"] = _mean_cosine(
            torch.cat([torch_ao_pc(i, m) for i, m in batches]).float(), ref
        )
        n_sim = 2  # the PyTorch simulation is slow: its cosine on the first 64 texts only
        for name, q in sims.items():
            sim_out = torch.cat([q.sim(i, m) for i, m in batches[:n_sim]]).float()
            quality[f"{name}_sim"] = _mean_cosine(sim_out, ref[: len(sim_out)])
            quality[f"{name}_ort_first64"] = _mean_cosine(
                torch.cat([runners[name](i, m) for i, m in batches[:n_sim]]).float(), ref[: len(sim_out)]
            )
    quality["torch_fp32"] = 1.0

    def torch_fn(model: torch.nn.Module) -> Any:
        def run() -> Any:
            with torch.inference_mode():
                return model(ids0, mask0)

        return run

    def ort_fn(run: Any) -> Any:
        return lambda: run(ids0, mask0)

    variants = {"torch_fp32": torch_fn(enc)}
    variants.update({n: ort_fn(r) for n, r in runners.items()})
    variants["torch_ao_dynamic_int8_pc"] = torch_fn(torch_ao_pc)
    stats = compare(variants, repeats=repeats, warmup=2, threads=args.threads, min_sample_s=0.0)
    peer_ms = stats["ort_quantize_dynamic_pc"].median_ms
    peers = ("ort_quantize_dynamic_pc", "ort_opt_quantize_dynamic_pc", "torch_ao_dynamic_int8_pc")
    best_peer = min((n for n in peers if n in stats), key=lambda n: stats[n].median_ms)
    best_ms = stats[best_peer].median_ms

    rows = []
    print(f"\nMiniLM-L6, {len(texts)} health tweets, batch {BATCH} x {SEQ}, {args.threads} thread(s)")
    print(f"best peer in this run: {best_peer}")
    print(f"{'variant':40s} {'cosine vs FP32':>15s} {'median ms':>10s} {'x peer':>8s} {'x best':>8s}")
    for name in variants:
        s = stats[name]
        ratio = s.median_ms / peer_ms
        best = s.median_ms / best_ms
        rows.append(
            {
                "variant": name,
                "cosine": quality[name],
                "latency": s.to_dict(),
                "ratio_to_peer": ratio,
                "ratio_to_best_peer": best,
                "ratio_to_ort_fp32": s.median_ms / stats["ort_fp32_legacy"].median_ms,
            }
        )
        print(f"{name:40s} {quality[name]:15.5f} {s.median_ms:10.1f} {ratio:8.2f} {best:8.2f}")
    for name in sims:
        print(
            f"{name + '_sim':40s} first 64 texts: sim {quality[name + '_sim']:.5f}, "
            f"ORT {quality[name + '_ort_first64']:.5f}, sim vs ORT {notes[name + '_parity_vs_sim']}"
        )
    print("smoothing:", notes["smooth"], "kept in float:", keep_float)

    result = {
        "benchmark": "minilm_int8",
        "quick": args.quick,
        "texts": len(texts),
        "batch": BATCH,
        "seq_len": SEQ,
        "threads": args.threads,
        "rows": rows,
        "best_peer": best_peer,
        "quality": quality,
        "notes": notes,
        "malloc": malloc,
        "environment": environment(),
        "wall_s": time.time() - t0,
        "caveat": "shared 2-core machine: only latency ratios within this one interleaved run are meaningful",
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(RESULTS if not args.quick else RESULTS.with_name("minilm_int8_quick.json"), result)
    shutil.rmtree(tmp, ignore_errors=True)
    return result


if __name__ == "__main__":
    main()
