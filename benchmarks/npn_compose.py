"""NPN pruning composed with recovery (fine-tuning / Hinton KD / inner KD) and static int8 PTQ, vs uniform L1.

Run: ``python -m benchmarks.npn_compose [--quick] [--threads N]``

The NPN paper (Verma et al., WACV 2020, PAPERS #32) says NPN is compatible with knowledge distillation and
quantisation. Here each combination runs as a RECIPE through :func:`torchslim.pipeline.compress` (the path of
``torchslim compress --recipe``), starting from the trained ``zoo.load("resnet-fmnist")``:

* ``npn+{finetune,hinton_kd,inner_kd}``: ``examples/recipes/npn_kd_int8.yaml`` with its recovery stage
  swapped: ``npn_prune`` (sparsity 1.0: about half the MACs, learned per-layer widths) -> recovery ->
  ``static_ptq`` (int8 weights per channel, uint8 activations, ORT QDQ kernels);
* ``l1+{...}``: the same recipe with ``channel_prune`` (uniform L1 ratio, bisected so the MACs are at or
  just below NPN's) in place of ``npn_prune``;
* ``npn_r8+inner_kd`` / ``l1_r8+inner_kd``: the same with every kept width rounded up to a multiple of 8
  (``round_to: 8``), the widths ORT's fast kernels want.

Every recovery stage gets the same schedule (one pass over the same training subset, SGD cosine, LR 0.01;
Hinton KD T=4 alpha=0.9; inner KD T=4 alpha=0.9 beta=1). Reported per recipe: test top-1 after each stage,
MACs, params, size on disk of the int8 ONNX file, and ORT latency (batch 64, 1 thread) of the pruned FP32 and
the final int8 models as ratios to the unpruned FP32 model, all timed in ONE interleaved run at the end
(``torchslim.bench.latency.compare``). The machine is shared: latency ratios only, re-measure on a quiet one.

``--quick``: 4,096 training images, 60 pruner steps, 1,024 gate samples, 2,000 test images, 256
calibration images, 10 latency samples. Full: 20,000 training images, the recipe's 300 pruner steps, 2,048
gate samples, the 10,000 test images, 512 calibration images, 20 latency samples.
Writes ``benchmarks/results/npn_compose.json`` (``npn_compose_quick.json`` with ``--quick``).
"""

from __future__ import annotations

import argparse
import copy
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

RESULTS = Path(__file__).resolve().parent / "results" / "npn_compose.json"
RECIPE = Path(__file__).resolve().parents[1] / "examples" / "recipes" / "npn_kd_int8.yaml"
RECOVERIES = ["finetune", "hinton_kd", "inner_kd"]


def recovery_stage(kind: str, train: dict[str, Any]) -> dict[str, Any]:
    """The recovery stage of ``kind`` with the shared training schedule ``train``."""
    if kind == "finetune":
        return {"type": "finetune", "train": train}
    if kind == "hinton_kd":
        return {"type": "hinton_kd", "temperature": 4.0, "alpha": 0.9, "train": train}
    if kind == "inner_kd":
        return {"type": "inner_kd", "temperature": 4.0, "alpha": 0.9, "beta": 1.0, "train": train}
    raise ValueError(f"unknown recovery {kind!r}; use one of {RECOVERIES}")


def l1_ratio_at(base: torch.nn.Module, budget: int, x1: torch.Tensor, steps: int = 14) -> tuple[float, int]:
    """Smallest uniform L1 channel ratio whose pruned copy of ``base`` costs ``<= budget`` MACs (bisection on
    measured MACs). Returns ``(ratio, macs)``."""
    from torchslim.core.cost import profile
    from torchslim.pruning import ChannelPrune, prune_

    lo, hi, hi_macs = 0.0, 0.97, 0
    for _ in range(steps):
        mid = (lo + hi) / 2
        m = copy.deepcopy(base)
        prune_(m, ChannelPrune(ratio=mid, importance="l1"), (x1,))
        macs = int(profile(m, (x1,)).macs)
        if macs <= budget:
            hi, hi_macs = mid, macs
        else:
            lo = mid
    return hi, hi_macs


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="smaller training / test subsets (about 4 minutes)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    out_path = args.out or (RESULTS.with_name("npn_compose_quick.json") if args.quick else RESULTS)
    torch.set_num_threads(args.threads)

    from torchslim import data, zoo
    from torchslim.bench import latency
    from torchslim.core.cost import profile
    from torchslim.core.io import atomic_write_json
    from torchslim.pipeline import Recipe, compress, load_recipe
    from torchslim.reports.store import RunStore

    t0 = time.time()
    latency.tune_malloc()
    base = zoo.load("resnet-fmnist", progress=False).eval()
    train, test = data.fashion_mnist("train"), data.fashion_mnist("test")
    n_train, n_test = (4096, 2000) if args.quick else (20000, 10000)
    g = torch.Generator().manual_seed(0)
    idx = torch.randperm(len(train), generator=g)[:n_train]
    train_set = torch.utils.data.TensorDataset(train.images[idx], train.labels[idx])
    test_set = torch.utils.data.TensorDataset(test.images, test.labels)
    x1 = test.images[:1]
    xb = test.images[:64]
    base_cost = profile(base, (x1,))

    shipped = load_recipe(RECIPE).to_dict()
    npn_stage, _, ptq_stage = shipped["stages"]
    if args.quick:
        npn_stage["gate_samples"] = 1024
        npn_stage["train"] = {**npn_stage["train"], "max_steps": 60}
        ptq_stage["num_calibration"] = 256
    ft = {"epochs": 1, "lr": 0.01, "batch_size": 64, "schedule": "cosine", "seed": 0}
    common = {"type": "recipe", "seed": 0, "latency_batch": 64, "latency_repeats": 3, "threads": args.threads,
              "eval_limit": n_test, "sensitivity_samples": 0}

    work = Path(tempfile.mkdtemp(prefix="npn_compose_"))
    store = RunStore(work / "runs.db")
    rows: dict[str, dict[str, Any]] = {}
    onnx: dict[str, Path] = {}

    def run(name: str, prune_stage: dict[str, Any], recovery: str) -> None:
        recipe = Recipe.from_dict({**common, "name": name,
                                   "stages": [prune_stage, recovery_stage(recovery, ft), ptq_stage]})
        t = time.time()
        r = compress(copy.deepcopy(base), recipe, data=train_set, eval_data=test_set, example_input=xb,
                     work_dir=work / name, store=store, progress=False)
        orig, pruned, rec, q = r.report.stages
        macs, params = int(pruned.macs or 0), int(pruned.params or 0)
        rows[name] = {
            "acc_original": orig.accuracy, "acc_pruned": pruned.accuracy, "acc_recovered": rec.accuracy,
            "acc_int8": q.accuracy,
            "macs": macs, "macs_ratio": macs / base_cost.macs,
            "params": params, "params_ratio": params / base_cost.params,
            "widths": {k: v[1] for k, v in pruned.extra["kept_channels"].items()},
            "size_fp32_bytes": rec.size_bytes, "size_int8_bytes": q.size_bytes,
            "size_original_bytes": orig.size_bytes,
            "parity": q.extra["parity"],
            "in_run_ort_ms": {s.name: s.latency_ms_ort for s in r.report.stages},
            "stage_s": {s.name: round(float(s.seconds or 0.0), 1) for s in r.report.stages},
            "wall_s": time.time() - t,
        }
        onnx[f"{name}:fp32"] = Path(r.artifacts[2].onnx_path)
        onnx[f"{name}:int8"] = Path(r.onnx_path)
        onnx.setdefault("original:fp32", Path(r.artifacts[0].onnx_path))
        print(f"  {name}: MACs {rows[name]['macs_ratio']:.1%}  top-1 {orig.accuracy:.4f} -> pruned "
              f"{pruned.accuracy:.4f} -> recovered {rec.accuracy:.4f} -> int8 {q.accuracy:.4f} "
              f"({rows[name]['wall_s']:.0f} s)", flush=True)

    # NPN first (its MACs set the L1 ratio), then uniform L1 at matched MACs
    for rec in RECOVERIES:
        run(f"npn+{rec}", npn_stage, rec)
    npn_macs = min(int(rows[f"npn+{r}"]["macs"]) for r in RECOVERIES)
    ratio, l1_macs = l1_ratio_at(base, npn_macs, x1)
    for rec in RECOVERIES:
        run(f"l1+{rec}", {"type": "channel_prune", "ratio": ratio, "importance": "l1"}, rec)
    # the same with every width a multiple of 8 (fast ORT kernels): NPN's kept counts rounded up, L1's too
    run("npn_r8+inner_kd", {**npn_stage, "round_to": 8}, "inner_kd")
    run("l1_r8+inner_kd", {"type": "channel_prune", "ratio": ratio, "importance": "l1", "round_to": 8}, "inner_kd")

    # ORT latency of every deployable, interleaved in one run (batch 64)
    calls = {k: latency.ort_callable(p, xb, threads=args.threads) for k, p in onnx.items()}
    stats = latency.compare(calls, repeats=10 if args.quick else 20, warmup=3, pause_s=0.1, threads=args.threads)
    shutil.rmtree(work, ignore_errors=True)  # checkpoints and ONNX files of the 6 runs
    ref = stats["original:fp32"].median_ms
    lat = {k: {"ms": s.median_ms, "ratio": s.median_ms / ref, "kept": s.n} for k, s in stats.items()}
    for name, row in rows.items():
        row["ort_fp32_ratio"] = lat[f"{name}:fp32"]["ratio"]
        row["ort_int8_ratio"] = lat[f"{name}:int8"]["ratio"]

    print(f"\nresnet-fmnist; recovery: 1 pass over {n_train} train images; test n={n_test}; ORT batch 64, "
          f"{args.threads} thread(s); latency as a ratio to the unpruned FP32 model ({ref:.1f} ms)")
    print(f"{'recipe':18s} {'MACs':>6s} {'pruned':>7s} {'recov':>7s} {'int8':>7s} {'int8 KB':>8s} "
          f"{'ORT fp32':>8s} {'ORT int8':>8s} {'parity':>7s}")
    for name, r in rows.items():
        print(f"{name:18s} {r['macs_ratio']:6.1%} {r['acc_pruned']:7.4f} {r['acc_recovered']:7.4f} "
              f"{r['acc_int8']:7.4f} {r['size_int8_bytes'] / 1024:8.1f} {r['ort_fp32_ratio']:8.3f} "
              f"{r['ort_int8_ratio']:8.3f} {r['parity']['top1_agreement']:7.4f}")
    orig_acc = next(iter(rows.values()))["acc_original"]
    print(f"original: top-1 {orig_acc:.4f}, {base_cost.macs:,} MACs, "
          f"{next(iter(rows.values()))['size_original_bytes'] / 1024:.1f} KB FP32 ONNX")
    out = {
        "benchmark": "npn_compose", "quick": args.quick, "recipe": str(RECIPE.relative_to(RECIPE.parents[2])),
        "npn_stage": npn_stage, "ptq_stage": ptq_stage, "recovery_train": ft,
        "l1_ratio": ratio, "l1_macs": l1_macs, "npn_macs": npn_macs,
        "original": {"acc": orig_acc, "macs": base_cost.macs, "params": base_cost.params},
        "n_train": n_train, "n_test": n_test, "results": rows, "latency": lat,
        "latency_note": "ORT batch 64, all deployables interleaved in one run on a shared machine: ratios only",
        "threads": args.threads, "environment": latency.environment(), "wall_s": time.time() - t0,
    }
    atomic_write_json(out_path, out)
    print(f"wrote {out_path} ({time.time() - t0:.0f} s)")
    return out


if __name__ == "__main__":
    main()
