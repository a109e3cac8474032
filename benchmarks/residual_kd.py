"""Residual KD with S and A carved out of one given student (Gao et al. 2020) on scikit-learn digits.

Run: ``python -m benchmarks.residual_kd [--quick] [--threads N]``

Teacher: a wide 4-conv CNN (widths 64/128/256, 64-d pooled feature, linear head) trained with cross-entropy.
Given student (the budget): the same architecture at width ``w`` (default 4/8/16 channels, same 64-d feature) + the
same kind of head. At that fixed MACs budget, each trained with the same data, epochs, optimizer and schedule:

* ``ce``: the given student, cross-entropy only;
* ``kd``: the given student, Hinton KD (T = 4, alpha = 0.9);
* ``feature_kd``: the given student, Hinton KD + MSE to the teacher's pooled feature (input of its head),
  i.e. ``ResidualStudent(body, None, head)`` trained by :func:`residual_distill` (the paper's baseline);
* ``residual_kd``: ``S, A = carve(body, 0.7, ...)`` (S ~70% and A ~30% of the body's MACs, checked with
  ``core.cost.profile``), ``ResidualStudent(S, A, head)`` trained by :func:`residual_distill`.

Reported: held-out top-1 (mean and per seed), MACs of every model, and the relative feature error
``||F - F_T||^2 / ||F_T||^2`` on the test images (``F = F_S + F_A`` for ResKD, ``F_S`` alone as well).
Accuracy figures are deterministic for a given seed and machine; no latency is measured here.
Writes ``benchmarks/results/residual_kd.json`` (``residual_kd_quick.json`` with ``--quick``).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import TensorDataset

RESULTS_DIR = Path(__file__).resolve().parent / "results"

FEAT = 64


def cnn_body(w: int, feat: int = FEAT) -> nn.Sequential:
    """Four 3x3 convs (w, 2w, 4w, feat channels; strides 1, 2, 2, 2) + BN + ReLU, global pool -> [B, feat]."""
    layers: list[nn.Module] = []
    chans = [1, w, 2 * w, 4 * w, feat]
    for i, (a, b) in enumerate(zip(chans, chans[1:], strict=False)):
        layers += [
            nn.Conv2d(a, b, 3, stride=1 if i == 0 else 2, padding=1, bias=False),
            nn.BatchNorm2d(b),
            nn.ReLU(),
        ]
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())


def _split(n_train: int) -> tuple[TensorDataset, TensorDataset]:
    from torchslim import data

    d = data.digits()
    perm = torch.randperm(len(d.labels), generator=torch.Generator().manual_seed(0))
    tr, te = perm[:n_train], perm[n_train:]
    return (
        TensorDataset(d.images[tr].contiguous(), d.labels[tr].contiguous()),
        TensorDataset(d.images[te].contiguous(), d.labels[te].contiguous()),
    )


@torch.no_grad()
def _rel_err(f: torch.Tensor, f_t: torch.Tensor) -> float:
    return float(((f - f_t) ** 2).sum() / (f_t**2).sum())


def run(quick: bool, seeds: int | None = None, width: int = 4, n_train: int = 500) -> dict[str, Any]:
    from torchslim.core.cost import profile
    from torchslim.distillation import HintonKD, distill
    from torchslim.distillation.methods.residual import (
        ResidualKD,
        ResidualStudent,
        carve,
        carve_plan,
        residual_distill,
    )
    from torchslim.train import TrainConfig, Trainer, top1_accuracy

    n_seeds = seeds if seeds is not None else 5 if quick else 10
    epochs, t_epochs = (12, 20) if quick else (30, 40)
    train, test = _split(n_train)
    x_test, y_test = test.tensors
    x1 = x_test[:1]

    torch.manual_seed(0)
    teacher = nn.Sequential(cnn_body(64), nn.Linear(FEAT, 10))
    Trainer(teacher, TrainConfig(epochs=t_epochs, batch_size=64, lr=0.05, schedule="cosine"), progress=False).fit(
        train
    )
    teacher.eval()
    with torch.no_grad():
        f_t = teacher[0](x_test)

    body0 = cnn_body(width)
    plan = carve_plan(body0, 0.7, (x1,))
    head_macs = FEAT * 10
    macs = {
        "teacher": profile(teacher, (x1,)).macs,
        "given_student": profile(nn.Sequential(cnn_body(width), nn.Linear(FEAT, 10)), (x1,)).macs,
        "residual_S": plan.macs_student,
        "residual_A": plan.macs_assistant,
        "residual_S_plus_A_plus_head": plan.macs_total + head_macs,
    }

    tc = TrainConfig(epochs=epochs, batch_size=64, lr=0.05, schedule="cosine")
    rcfg = ResidualKD(teacher_layer="1", teacher_mode="input", temperature=4.0, alpha=0.9, beta=1.0, train=tc)
    acc: dict[str, list[float]] = {k: [] for k in ("ce", "kd", "feature_kd", "residual_kd")}
    feat_err: dict[str, list[float]] = {"feature_kd": [], "residual_kd_S_plus_A": [], "residual_kd_S_alone": []}
    secs: dict[str, float] = dict.fromkeys(acc, 0.0)
    for seed in range(n_seeds):
        tcs = tc.model_copy(update={"seed": seed})
        rcs = rcfg.model_copy(update={"train": tcs})

        t0 = time.time()
        torch.manual_seed(seed)
        ce = nn.Sequential(cnn_body(width), nn.Linear(FEAT, 10))
        Trainer(ce, tcs, progress=False).fit(train)
        acc["ce"].append(top1_accuracy(ce, test))
        secs["ce"] += time.time() - t0

        t0 = time.time()
        torch.manual_seed(seed)
        kd = nn.Sequential(cnn_body(width), nn.Linear(FEAT, 10))
        distill(kd, teacher, train, HintonKD(temperature=4.0, alpha=0.9, train=tcs), progress=False)
        acc["kd"].append(top1_accuracy(kd, test))
        secs["kd"] += time.time() - t0

        t0 = time.time()
        torch.manual_seed(seed)
        fk = ResidualStudent(cnn_body(width), None, nn.Linear(FEAT, 10))
        residual_distill(fk, teacher, train, rcs, progress=False)
        acc["feature_kd"].append(top1_accuracy(fk, test))
        secs["feature_kd"] += time.time() - t0
        fk.eval()
        with torch.no_grad():
            feat_err["feature_kd"].append(_rel_err(fk.features(x_test)[0], f_t))

        t0 = time.time()
        torch.manual_seed(seed)
        s, a = carve(cnn_body(width), 0.7, (x1,))
        rk = ResidualStudent(s, a, nn.Linear(FEAT, 10))
        residual_distill(rk, teacher, train, rcs, progress=False)
        acc["residual_kd"].append(top1_accuracy(rk, test))
        secs["residual_kd"] += time.time() - t0
        rk.eval()
        with torch.no_grad():
            f_s, f_a = rk.features(x_test)
            assert f_a is not None
            feat_err["residual_kd_S_plus_A"].append(_rel_err(f_s + f_a, f_t))
            feat_err["residual_kd_S_alone"].append(_rel_err(f_s, f_t))
        if seed == 0:
            macs["residual_model_measured"] = profile(rk.eval(), (x1,)).macs

    def mean(v: list[float]) -> float:
        return sum(v) / len(v)

    return {
        "seeds": n_seeds,
        "epochs": epochs,
        "teacher_epochs": t_epochs,
        "n_train": len(train),
        "n_test": len(test),
        "given_width": width,
        "teacher_top1": top1_accuracy(teacher, test),
        "macs": macs,
        "carve": {
            "ratio": plan.ratio,
            "widths_given": plan.widths_given,
            "widths_student": plan.widths_student,
            "widths_assistant": plan.widths_assistant,
            "budget_used": plan.budget_used,
            "student_share": plan.macs_student / plan.macs_given,
            "assistant_share": plan.macs_assistant / plan.macs_given,
        },
        "top1": {k: {"mean": mean(v), "per_seed": v} for k, v in acc.items()},
        "feature_rel_error": {k: mean(v) for k, v in feat_err.items()},
        "train_seconds": secs,
        "y_test_balance": torch.bincount(y_test, minlength=10).tolist(),
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="5 seeds, 12 epochs (default: 10 seeds, 30 epochs)")
    ap.add_argument("--seeds", type=int, default=None)
    ap.add_argument("--width", type=int, default=4, help="given student's first-stage width (default 4)")
    ap.add_argument("--n-train", type=int, default=500, help="training images (the rest of the 1,797 are test)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)

    from torchslim.bench import latency
    from torchslim.core.io import atomic_write_json

    torch.set_num_threads(args.threads)
    out_path = args.out or RESULTS_DIR / ("residual_kd_quick.json" if args.quick else "residual_kd.json")
    t0 = time.time()
    res = run(args.quick, args.seeds, args.width, args.n_train)
    out = {
        "benchmark": "residual_kd",
        "quick": args.quick,
        "threads": args.threads,
        **res,
        "wall_seconds": time.time() - t0,
        "environment": latency.environment(),
    }
    out_path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out_path, out)

    m, c = res["macs"], res["carve"]
    print(
        f"digits, {res['n_train']} train / {res['n_test']} test, {res['epochs']} epochs, {res['seeds']} seeds; "
        f"teacher top-1 {res['teacher_top1']:.4f} at {m['teacher'] / 1e3:.0f}K MACs"
    )
    print(
        f"given student {m['given_student'] / 1e3:.1f}K MACs (widths {c['widths_given']}); carved S "
        f"{c['widths_student']} {c['student_share']:.1%} + A {c['widths_assistant']} {c['assistant_share']:.1%} "
        f"of the body = {c['budget_used']:.1%}; ResKD model {m['residual_model_measured'] / 1e3:.1f}K MACs"
    )
    print(f"{'method':<14}{'top-1 mean':>12}  per seed")
    for k, v in res["top1"].items():
        print(f"{k:<14}{v['mean']:>12.4f}  " + " ".join(f"{x:.4f}" for x in v["per_seed"]))
    fe = res["feature_rel_error"]
    print(
        "relative feature error ||F - F_T||^2/||F_T||^2: "
        + ", ".join(f"{k} {v:.3f}" for k, v in fe.items())
    )
    print(f"wall {out['wall_seconds']:.0f} s -> {out_path}")
    return out


if __name__ == "__main__":
    main()
