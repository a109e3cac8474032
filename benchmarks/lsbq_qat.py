"""Least-squares binary QAT (Pouransari et al. 2020) on digits: FP32 vs 1-bit vs ternary vs greedy-2 vs LS-2.

Run: ``python -m benchmarks.lsbq_qat [--quick] [--threads N]``

Data: scikit-learn's 8x8 digits (``torchslim.data.digits``), a fixed random split (seed 0) of 1,397
training and 400 test images. Model: a small CNN in the XNOR-Net block order the paper uses (BatchNorm before
every quantised layer, so quantised inputs are signed): FP conv(1->32) -> BN -> ReLU, then
[BN -> Q-conv(32->64) -> ReLU -> maxpool], [BN -> Q-conv(64->64) -> ReLU -> maxpool], BN -> Q-linear(256->128)
-> ReLU -> FP linear(128->10). The first and last layers stay FP32 (as in the paper); the three middle layers
quantise weights (per output channel, scales recomputed every step) AND input activations (per sample,
scales computed on the fly) with the same scheme, trained with the paper's sign STE (gradient blocked where
``|arg| > 1``). Every scheme starts from the same random initialisation per seed and gets the same budget
(Adam, lr 2e-3, cosine decay, batch 64, 8 epochs; 3 seeds quick, 5 full). The full run adds the paper's
main setting, 1-bit weights with k-bit activations (W1/Ak).

Metric: test top-1 (mean and per seed). The paper's expectation: LS-2bit >= greedy-2bit (and both > ternary
> 1-bit). Writes ``benchmarks/results/lsbq_qat.json`` (``--quick``: ``lsbq_qat_quick.json``). No latency.
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

RESULTS = Path(__file__).resolve().parent / "results"

#: (label, weight scheme, activation scheme); "fp" = no quantisation
SAME_SCHEME = [
    ("fp32", "fp", "fp"),
    ("1bit", "1bit", "1bit"),
    ("ternary", "ternary", "ternary"),
    ("greedy2", "greedy", "greedy"),
    ("ls2", "2bit", "2bit"),
]
W1_AK = [
    ("W1/Afp", "1bit", "fp"),
    ("W1/A1", "1bit", "1bit"),
    ("W1/Aternary", "1bit", "ternary"),
    ("W1/Agreedy2", "1bit", "greedy"),
    ("W1/Als2", "1bit", "2bit"),
]


def make_cnn() -> nn.Sequential:
    """The digits CNN described in the module docstring (float; quantise it with ``prepare_lsbq_qat``)."""
    return nn.Sequential(
        nn.Conv2d(1, 32, 3, padding=1, bias=False),
        nn.BatchNorm2d(32),
        nn.ReLU(),
        nn.BatchNorm2d(32),
        nn.Conv2d(32, 64, 3, padding=1, bias=False),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.BatchNorm2d(64),
        nn.Conv2d(64, 64, 3, padding=1, bias=False),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.BatchNorm1d(256),
        nn.Linear(256, 128, bias=False),
        nn.ReLU(),
        nn.Linear(128, 10),
    )


def _split() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    from torchslim.data import digits

    ds = digits()
    perm = torch.randperm(len(ds.labels), generator=torch.Generator().manual_seed(0))
    test, train = perm[:400], perm[400:]
    return ds.images[train], ds.labels[train], ds.images[test], ds.labels[test]


def train_one(
    w_scheme: str,
    a_scheme: str,
    seed: int,
    epochs: int,
    data: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor],
) -> dict[str, Any]:
    """Train the CNN with the given weight / activation schemes from a seed-fixed init; return metrics."""
    from torchslim.bench.accuracy import top1
    from torchslim.quantization.binary.qat import LSBQQAT, prepare_lsbq_qat

    xtr, ytr, xte, yte = data
    torch.manual_seed(seed)
    model = make_cnn()
    if (w_scheme, a_scheme) != ("fp", "fp"):
        prepare_lsbq_qat(model, LSBQQAT(weight_scheme=w_scheme, act_scheme=a_scheme, bits=2))  # type: ignore[arg-type]
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    bs = 64
    steps_per_epoch = math.ceil(len(ytr) / bs)
    total = epochs * steps_per_epoch
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * s / total)))
    g = torch.Generator().manual_seed(1000 + seed)
    t0 = time.time()
    model.train()
    last = float("nan")
    for _ in range(epochs):
        perm = torch.randperm(len(ytr), generator=g)
        for i in range(steps_per_epoch):
            idx = perm[i * bs : (i + 1) * bs]
            loss = F.cross_entropy(model(xtr[idx]), ytr[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            last = float(loss.detach())
    acc = top1(model, (xte, yte), batch_size=400)
    return {"top1": acc, "final_train_loss": last, "train_seconds": time.time() - t0}


def run(quick: bool, seeds: int) -> dict[str, Any]:
    data = _split()
    epochs = 8
    configs = SAME_SCHEME if quick else SAME_SCHEME + W1_AK
    rows: dict[str, Any] = {}
    for label, w, a in configs:
        per_seed = [train_one(w, a, s, epochs, data) for s in range(seeds)]
        accs = [r["top1"] for r in per_seed]
        mean = sum(accs) / len(accs)
        std = (sum((x - mean) ** 2 for x in accs) / max(len(accs) - 1, 1)) ** 0.5
        rows[label] = {
            "weights": w,
            "activations": a,
            "top1_mean": mean,
            "top1_std": std,
            "top1_per_seed": accs,
            "final_train_loss": [r["final_train_loss"] for r in per_seed],
            "train_seconds": sum(r["train_seconds"] for r in per_seed),
        }
        print(f"  {label:12s} top1 {mean:.4f} +- {std:.4f}  {accs}", flush=True)
    ls2, gr2 = rows["ls2"]["top1_per_seed"], rows["greedy2"]["top1_per_seed"]
    return {
        "n_train": len(data[1]),
        "n_test": len(data[3]),
        "epochs": epochs,
        "seeds": seeds,
        "rows": rows,
        "ls2_ge_greedy2_mean": rows["ls2"]["top1_mean"] >= rows["greedy2"]["top1_mean"],
        "ls2_ge_greedy2_seeds": sum(a >= b for a, b in zip(ls2, gr2, strict=True)),
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="W=A schemes only, 3 seeds (full: + W1/Ak, 5 seeds)")
    ap.add_argument("--seeds", type=int, default=None, help="default 3 (quick) / 5 (full)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)

    from torchslim.bench import latency
    from torchslim.core.io import atomic_write_json

    torch.set_num_threads(args.threads)
    out_path = args.out or RESULTS / ("lsbq_qat_quick.json" if args.quick else "lsbq_qat.json")
    t0 = time.time()
    seeds = args.seeds or (3 if args.quick else 5)
    print(f"LSBQ QAT on digits ({'quick' if args.quick else 'full'}, {seeds} seeds)")
    res = run(args.quick, seeds)
    out = {
        "benchmark": "lsbq_qat",
        "quick": args.quick,
        "threads": args.threads,
        **res,
        "wall_seconds": time.time() - t0,
        "environment": latency.environment(),
    }
    out_path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out_path, out)
    print(f"\n{res['n_train']} train / {res['n_test']} test digits, {res['epochs']} epochs, {seeds} seeds")
    print("| config | W | A | top-1 mean | std | per seed |")
    print("|---|---|---|---|---|---|")
    for label, r in res["rows"].items():
        seeds_s = ", ".join(f"{a:.4f}" for a in r["top1_per_seed"])
        print(
            f"| {label} | {r['weights']} | {r['activations']} | {r['top1_mean']:.4f} | {r['top1_std']:.4f} | "
            f"{seeds_s} |"
        )
    print(
        f"LS-2bit >= greedy-2bit: mean {res['ls2_ge_greedy2_mean']}, "
        f"seeds {res['ls2_ge_greedy2_seeds']}/{seeds}; wall {out['wall_seconds']:.0f} s -> {out_path}"
    )
    return out


if __name__ == "__main__":
    main()
