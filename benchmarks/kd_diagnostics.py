"""KD diagnostics (Tang et al. 2020) on Fashion-MNIST: which part of the teacher's knowledge helps.

Run: ``python -m benchmarks.kd_diagnostics [--quick] [--threads N]``

Teacher: ``zoo.load("resnet-fmnist")``. Student: the small CNN of ``benchmarks.distill_cnn`` (``cnn_body``)
at width 8. Every ablation of :mod:`torchslim.distillation.diagnostics` (CE, label smoothing matched to the
teacher's mean confidence, instance-weighted CE, CE rescaled per example by KD's ground-truth-logit gradient
factor, KD with uniform non-target mass, KD with permuted non-target
mass, KD with class-mean teacher distributions, KD-sim built from the teacher's logit-layer class geometry,
full KD) trains the same student for the same steps, for several seeds; reported: Fashion-MNIST test top-1,
mean and std over seeds; the contrasts that isolate each part (``diagnostics.decomposition``) with the
standard error of each difference over the paired seeds (and the unpaired one) and whether the difference
exceeds twice the paired one; the diagnosis tools: each student's logit-layer geometry agreement with the
teacher's, the gradient-rescaling weight of KD against the teacher's confidence, and the teacher report.
Accuracy only (no latency). Writes ``benchmarks/results/kd_diagnostics.json`` (``--quick``:
``kd_diagnostics_quick.json``).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import TensorDataset

RESULTS = Path(__file__).resolve().parent / "results" / "kd_diagnostics.json"


def run(quick: bool) -> dict[str, Any]:
    from benchmarks.distill_cnn import cnn_body
    from torchslim import data, zoo
    from torchslim.distillation.diagnostics import KDDiagnostics, decomposition, run_ablations
    from torchslim.train import TrainConfig

    seeds: tuple[int, ...]
    if quick:
        n_train, n_test, epochs, seeds = 1500, 1000, 2, (0, 1, 2, 3)
    else:
        n_train, n_test, epochs, seeds = 5000, 5000, 3, (0, 1, 2, 3, 4)
    teacher = zoo.load("resnet-fmnist", progress=False).eval()
    full, test = data.fashion_mnist("train"), data.fashion_mnist("test")
    g = torch.Generator().manual_seed(0)
    idx = torch.randperm(len(full.images), generator=g)[:n_train]
    train = TensorDataset(full.images[idx].contiguous(), full.labels[idx].contiguous())
    test_set = TensorDataset(test.images[:n_test], test.labels[:n_test])
    cfg = KDDiagnostics(
        temperature=4.0,
        alpha=0.9,
        seeds=seeds,
        train=TrainConfig(epochs=epochs, batch_size=64, lr=0.05, schedule="onecycle"),
    )

    def student() -> nn.Module:
        return nn.Sequential(cnn_body(8, feat=64), nn.Linear(64, 10))

    table = run_ablations(teacher, student, train, test_set, cfg)
    table["decomposition"] = decomposition(table)
    table["contrasts"] = contrasts(table)
    table["setup"] = {"n_train": n_train, "n_test": n_test, "config": cfg.to_dict()}
    return table


def contrasts(table: dict[str, Any]) -> dict[str, dict[str, float | bool]]:
    """Each decomposition difference with its standard error over seeds and whether it exceeds 2 SE.

    Seed ``s`` gives every ablation the same student initialisation and data order, so the runs are paired:
    ``se_paired`` = std of the per-seed differences / sqrt(n) (the test used for ``exceeds_2se``);
    ``se_unpaired`` = sqrt(s_a^2 / n + s_b^2 / n) is reported too.
    """
    acc = table["accuracy"]
    out: dict[str, dict[str, float | bool]] = {}
    for name, diff in table["decomposition"].items():
        a, b = name.split("(")[1].rstrip(")").split(" - ")
        ra, rb = acc[a]["runs"], acc[b]["runs"]
        n = len(ra)
        se_u = (acc[a]["std"] ** 2 / n + acc[b]["std"] ** 2 / len(rb)) ** 0.5
        d = [x - y for x, y in zip(ra, rb, strict=True)]
        md = sum(d) / n
        se_p = (sum((v - md) ** 2 for v in d) / max(n - 1, 1)) ** 0.5 / n**0.5
        out[name] = {
            "diff": diff,
            "se_paired": se_p,
            "se_unpaired": se_u,
            "exceeds_2se": abs(diff) > 2 * se_p,
        }
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="1,500 training images, 2 epochs, 4 seeds")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    if args.out is None:
        args.out = RESULTS.with_name("kd_diagnostics_quick.json") if args.quick else RESULTS

    from torchslim.bench import latency
    from torchslim.core.io import atomic_write_json

    torch.set_num_threads(args.threads)
    t0 = time.time()
    table = run(args.quick)
    out = {
        "benchmark": "kd_diagnostics",
        "quick": args.quick,
        "threads": args.threads,
        **table,
        "wall_seconds": time.time() - t0,
        "environment": latency.environment(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.out, out)
    s = table["setup"]
    print(
        f"Fashion-MNIST, {s['n_train']} train images, {s['n_test']} test images; teacher top-1 "
        f"{table['teacher_accuracy']:.4f}, mean p(y) at T={table['temperature']}: "
        f"{table['teacher_mean_confidence']:.3f}"
    )
    for k, v in table["teacher"].items():
        print(f"teacher at {k}: " + ", ".join(f"{a} {b:.3f}" for a, b in v.items()))
    print(
        f"{'ablation':<24}{'universe':>9}{'domain':>8}{'instance':>9}{'top-1 mean':>12}{'std':>8}"
        f"{'geometry':>10}{'std':>8}"
    )
    for k, v in table["accuracy"].items():
        u, d, i = table["parts"][k]
        g = table["geometry"].get(k, {"mean": float("nan"), "std": float("nan")})
        print(
            f"{k:<24}{'x' if u else '':>9}{'x' if d else '':>8}{'x' if i else '':>9}"
            f"{v['mean']:>12.4f}{v['std']:>8.4f}{g['mean']:>10.3f}{g['std']:>8.3f}"
        )
    for k, c in table["contrasts"].items():
        print(
            f"{k:<52}{c['diff']:+.4f} ± {c['se_paired']:.4f} (paired SE; unpaired {c['se_unpaired']:.4f})"
            f"{'  > 2 SE' if c['exceeds_2se'] else ''}"
        )
    if "rescaling" in table:
        r = table["rescaling"]
        print(
            f"gradient rescaling w (trained CE student): spearman(w, teacher p_y) "
            f"{r['spearman_w_vs_teacher_p_y']:+.3f}; mean w by p_y quartile (low -> high): "
            + ", ".join(f"{v:.3f}" for v in r["mean_w_by_p_y_quartile"])
        )
    if "sim_temperature" in table:
        print(f"kd_sim beta (calibrated to the teacher's non-target entropy): {table['sim_temperature']:.3f}")
    print(f"wall {out['wall_seconds']:.0f} s -> {args.out}")
    return out


if __name__ == "__main__":
    main()
