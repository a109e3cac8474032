"""LFME vs cross-entropy vs single-teacher KD on long-tailed (100:1) Fashion-MNIST.

Run: ``python -m benchmarks.lfme [--quick] [--threads N] [--ablations]``

Data: Fashion-MNIST train cut to an exponential long-tailed profile, imbalance 100 (head class ``n_max``
images, tail class ``n_max / 100``), the classes in a fixed random order (seed 0); a balanced validation set
of 30 images per class from the unused training images (the self-paced weights need one, as ImageNet-LT's
20-per-class val set); evaluation on the balanced 10,000-image test set. Class groups: classes sorted by
count, cut into many (4) / medium (3) / few (3) shot groups.

Models: the same small CNN (``benchmarks.distill_cnn.cnn_body``) for every student, expert and the teacher;
every student gets the same epochs, batch, optimizer and schedule.

* CE: cross-entropy on the long-tailed set.
* KD: Hinton KD (T=2, alpha=0.5) from a single teacher trained with CE on the whole long-tailed set (the CE
  model of the same seed: the teacher has the student's architecture, like each LFME expert).
* LFME: one expert per group trained on that group's images only (each expert gets about as many optimizer
  steps as a student: epochs scaled by ``n_total / n_group``, capped at 60), then the student is trained
  with CE + self-paced expert KD (T=2, alpha=0.6, over all classes) + curriculum instance selection (start 0.5, full set from
  half of the epochs on).
* ``--ablations``: LFME without self-paced weights, LFME without curriculum, LFME with each expert's KD over
  its group's classes only instead of all classes.

Reported per method (mean over seeds): overall test top-1, many / medium / few-shot group top-1 (prediction
over all 10 classes), and the LFME self-paced weights per epoch. Writes ``benchmarks/results/lfme.json``.
No latency is measured.
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import TensorDataset

from benchmarks.distill_cnn import _logits, cnn_body

RESULTS = Path(__file__).resolve().parent / "results" / "lfme.json"


def _group_top1(logits: torch.Tensor, y: torch.Tensor, groups: list[list[int]]) -> dict[str, float]:
    pred = logits.argmax(1)
    out = {"overall": float((pred == y).float().mean())}
    for name, g in zip(("many", "medium", "few"), groups, strict=True):
        sel = torch.isin(y, torch.tensor(g))
        out[name] = float((pred[sel] == y[sel]).float().mean())
    return out


def run_seed(
    seed: int, quick: bool, ablations: bool, width: int, only: set[str] | None = None
) -> dict[str, Any]:
    from torchslim import data
    from torchslim.distillation import HintonKD, distill
    from torchslim.distillation.methods.lfme import (
        LFME,
        lfme_distill,
        long_tailed_indices,
        split_groups,
        train_experts,
    )
    from torchslim.train import TrainConfig, Trainer

    n_max, epochs = (2000, 6) if quick else (6000, 10)
    full, test = data.fashion_mnist("train"), data.fashion_mnist("test")
    order = torch.randperm(10, generator=torch.Generator().manual_seed(0)).tolist()
    idx = long_tailed_indices(full.labels, imbalance=100, n_max=n_max, class_order=order, seed=seed)
    train = TensorDataset(full.images[idx].contiguous(), full.labels[idx].contiguous())
    rest = torch.ones(len(full.labels), dtype=torch.bool)
    rest[idx] = False
    g = torch.Generator().manual_seed(1000 + seed)
    val_idx = torch.cat(
        [
            torch.nonzero(rest & (full.labels == c)).flatten()[
                torch.randperm(int((rest & (full.labels == c)).sum()), generator=g)[:30]
            ]
            for c in range(10)
        ]
    )
    val = TensorDataset(full.images[val_idx].contiguous(), full.labels[val_idx].contiguous())
    counts = torch.bincount(train.tensors[1], minlength=10).tolist()
    groups = split_groups(counts, 3)
    x_test, y_test = test.images, test.labels
    tc = TrainConfig(epochs=epochs, batch_size=64, lr=0.05, schedule="onecycle", seed=seed)

    def model() -> nn.Module:
        return nn.Sequential(cnn_body(width), nn.Linear(128, 10))

    res: dict[str, Any] = {"counts": counts, "groups": groups, "class_order": order, "n_train": len(idx)}
    acc: dict[str, dict[str, float]] = {}
    secs: dict[str, float] = {}

    t0 = time.time()
    torch.manual_seed(seed)
    ce = model()
    Trainer(ce, tc, progress=False).fit(train)
    secs["ce"] = time.time() - t0
    acc["ce"] = _group_top1(_logits(ce, x_test), y_test, groups)

    t0 = time.time()
    torch.manual_seed(seed)
    kd = model()
    distill(kd, ce.eval(), train, HintonKD(temperature=2.0, alpha=0.5, train=tc), progress=False)
    secs["kd"] = time.time() - t0
    acc["kd"] = _group_top1(_logits(kd, x_test), y_test, groups)

    t0 = time.time()
    n_group = [sum(counts[c] for c in g_) for g_ in groups]
    ecfgs = [
        tc.model_copy(update={"epochs": min(60, math.ceil(epochs * len(idx) / n)), "seed": seed + 10 + k})
        for k, n in enumerate(n_group)
    ]
    torch.manual_seed(seed + 10)
    experts = train_experts(model, train, train.tensors[1], groups, ecfgs)
    secs["experts"] = time.time() - t0
    res["expert_epochs"] = [c.epochs for c in ecfgs]
    zs = [_logits(e, x_test) for e in experts]
    from torchslim.distillation.methods.lfme import group_accuracy

    res["expert_within_group_test_top1"] = [
        group_accuracy(z, y_test, [g_])[0] for z, g_ in zip(zs, groups, strict=True)
    ]

    variants = {"lfme": LFME(temperature=2.0, alpha=0.6, curriculum_start=0.5, train=tc)}
    if ablations:
        variants["lfme_no_self_paced"] = variants["lfme"].model_copy(update={"self_paced": False})
        variants["lfme_no_curriculum"] = variants["lfme"].model_copy(update={"curriculum_start": 1.0})
        variants["lfme_kd_group_classes"] = variants["lfme"].model_copy(update={"kd_classes": "group"})
    variants = {k: v for k, v in variants.items() if only is None or k in only}
    for name, cfg in variants.items():
        t0 = time.time()
        torch.manual_seed(seed)
        st = model()
        r = lfme_distill(st, experts, groups, train, cfg, val_data=val, progress=False)
        secs[name] = time.time() - t0
        acc[name] = _group_top1(_logits(st, x_test), y_test, groups)
        res[f"{name}_weights_per_epoch"] = [[h[f"lfme_w{k}"] for k in range(3)] for h in r.history]
    res["top1"] = acc
    res["train_seconds"] = secs
    return res


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="n_max 2,000 (4,970 images), 6 epochs, 1 seed")
    ap.add_argument("--seeds", type=int, default=None, help="default: 1 (quick) / 3")
    ap.add_argument("--ablations", action="store_true", help="also LFME without self-paced / curriculum")
    ap.add_argument("--width", type=int, default=12)
    ap.add_argument("--only", default=None, help="comma-separated LFME variants to run (CE and KD always run)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args(argv)

    from torchslim.bench import latency
    from torchslim.core.io import atomic_write_json

    torch.set_num_threads(args.threads)
    seeds = args.seeds or (1 if args.quick else 3)
    t0 = time.time()
    only = None if args.only is None else set(args.only.split(","))
    runs = [run_seed(s, args.quick, args.ablations, args.width, only) for s in range(seeds)]
    methods = list(runs[0]["top1"])
    mean = {
        m: {k: sum(r["top1"][m][k] for r in runs) / len(runs) for k in runs[0]["top1"][m]} for m in methods
    }
    out = {
        "benchmark": "lfme",
        "quick": args.quick,
        "threads": args.threads,
        "width": args.width,
        "seeds": seeds,
        "mean_top1": mean,
        "runs": runs,
        "wall_seconds": time.time() - t0,
        "environment": latency.environment(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.out, out)

    r0 = runs[0]
    names = ("many", "medium", "few")
    print(
        f"long-tailed Fashion-MNIST (100:1): {r0['n_train']} train images, counts {r0['counts']}; "
        + ", ".join(f"{n}-shot classes {g}" for n, g in zip(names, r0["groups"], strict=True))
    )
    print(f"{'method':<22}{'overall':>9}{'many':>8}{'medium':>8}{'few':>8}   (balanced test, mean of {seeds})")
    for m in methods:
        a = mean[m]
        print(f"{m:<22}{a['overall']:>9.4f}{a['many']:>8.4f}{a['medium']:>8.4f}{a['few']:>8.4f}")
    print("expert within-group test top-1 (seed 0):", [round(v, 4) for v in r0["expert_within_group_test_top1"]])
    for k in (k for k in r0 if k.endswith("_weights_per_epoch")):
        print(f"{k[: -len('_weights_per_epoch')]} self-paced weights per epoch (seed 0):",
              [[round(w, 2) for w in ws] for ws in r0[k]])  # fmt: skip
    print(f"wall {out['wall_seconds']:.0f} s -> {args.out}")
    return out


if __name__ == "__main__":
    main()
