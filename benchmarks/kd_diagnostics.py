"""KD diagnostics (Tang et al. 2020) on Fashion-MNIST: which part of the teacher's knowledge helps.

Run: ``python -m benchmarks.kd_diagnostics [--quick] [--threads N]``

Teacher: ``zoo.load("resnet-fmnist")``. Student: the small CNN of ``benchmarks.distill_cnn`` (``cnn_body``)
at width 8. Every ablation of :mod:`torchslim.distillation.diagnostics` (CE, label smoothing matched to the
teacher's mean confidence, instance-weighted CE, KD with uniform non-target mass, KD with permuted non-target
mass, KD with class-mean teacher distributions, full KD) trains the same student for the same steps, for
several seeds; reported: Fashion-MNIST test top-1, mean and std over seeds, and the contrasts that isolate
each part (``diagnostics.decomposition``). Accuracy only (no latency). Writes
``benchmarks/results/kd_diagnostics.json``.
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

    n_train, n_test, epochs, seeds = (3000, 2000, 2, (0, 1)) if quick else (20000, 10000, 5, (0, 1, 2))
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
    table["setup"] = {"n_train": n_train, "n_test": n_test, "config": cfg.to_dict()}
    return table


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="3,000 training images, 2 epochs, 2 seeds")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args(argv)

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
    print(f"{'ablation':<24}{'universe':>9}{'domain':>8}{'instance':>9}{'top-1 mean':>12}{'std':>8}")
    for k, v in table["accuracy"].items():
        u, d, i = table["parts"][k]
        print(
            f"{k:<24}{'x' if u else '':>9}{'x' if d else '':>8}{'x' if i else '':>9}"
            f"{v['mean']:>12.4f}{v['std']:>8.4f}"
        )
    for k, v in table["decomposition"].items():
        print(f"{k:<52}{v:+.4f}")
    print(f"wall {out['wall_seconds']:.0f} s -> {args.out}")
    return out


if __name__ == "__main__":
    main()
