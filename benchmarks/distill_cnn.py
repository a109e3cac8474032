"""Distillation methods on Fashion-MNIST (CE vs Hinton KD vs Residual KD vs Hydra) and regression KD.

Run: ``python -m benchmarks.distill_cnn [--quick] [--threads N]``

Part 1 (classification). Teacher: ``zoo.load("resnet-fmnist")``. Students: a plain CNN at ~25% of the
teacher's MACs (checked with ``core.cost.profile``), each trained with the same budget (same images, epochs,
optimizer, schedule): cross-entropy only; Hinton KD; Residual KD with student (~70% of the budget) +
assistant (~30%) mimicking the teacher's pooled feature (input of ``fc``); Hydra distilled from an ensemble
of ``M`` CNNs trained with CE (the ResNet teacher is a single model, Hydra needs an ensemble). Reported:
Fashion-MNIST test top-1; out-of-distribution detection of MNIST digits (renormalised with Fashion-MNIST's
statistics) fed to the Fashion-MNIST models, AUROC (sklearn ``roc_auc_score``) of Hydra's head disagreement
(mutual information) vs the ensemble's, and, for reference, of the predictive entropy and of the maximum
softmax probability (the single-model baseline) of every model. Hydra is trained as the paper does: pure
distillation (``alpha = 1``), one linear head per ensemble member.

Part 2 (regression). Noisy sinusoid (and sklearn's bundled diabetes data set) with 20% of training labels
replaced by uniform outliers; a large MLP teacher trained with MSE on the noisy labels; small students:
labels only, plain MSE-KD, teacher outlier rejection with a two-head student. Test MSE on clean targets.

Accuracy figures are deterministic for a given seed and machine; no latency is measured here.
Writes ``benchmarks/results/distill_cnn.json``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import TensorDataset

RESULTS = Path(__file__).resolve().parent / "results" / "distill_cnn.json"


def cnn_body(w: int, feat: int = 128) -> nn.Sequential:
    """Four 3x3 convs (w, 2w, 4w, feat channels; strides 1, 2, 2, 2) + global average pool -> [B, feat]."""
    layers: list[nn.Module] = []
    chans = [1, w, 2 * w, 4 * w, feat]
    for i, (a, b) in enumerate(zip(chans, chans[1:], strict=False)):
        layers += [
            nn.Conv2d(a, b, 3, stride=1 if i == 0 else 2, padding=1, bias=False),
            nn.BatchNorm2d(b),
            nn.ReLU(),
        ]
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())


def _auroc(s_in: torch.Tensor, s_out: torch.Tensor) -> float:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score([0] * len(s_in) + [1] * len(s_out), torch.cat([s_in, s_out]).double().numpy()))


def _entropy(logits: torch.Tensor) -> torch.Tensor:
    lp = F.log_softmax(logits.float(), dim=-1)
    return -(lp.exp() * lp).sum(-1)


def _neg_msp(logits: torch.Tensor) -> torch.Tensor:
    """Minus the maximum softmax probability (higher = more likely out of distribution)."""
    return -F.softmax(logits.float(), dim=-1).max(-1).values


@torch.no_grad()
def _logits(model: nn.Module, x: torch.Tensor, bs: int = 500) -> torch.Tensor:
    was = model.training
    model.eval()
    out = torch.cat([model(x[i : i + bs]) for i in range(0, len(x), bs)])
    model.train(was)
    return out


@torch.no_grad()
def fmnist_with_mnist_ood(n_train: int, n_test: int, n_ood: int) -> tuple[Any, ...]:
    """A fixed random Fashion-MNIST training subset (seed 0), the first ``n_test`` test images and ``n_ood``
    MNIST test digits re-normalised with Fashion-MNIST's statistics (the out-of-distribution inputs).
    Returns ``(train, test, x_test, y_test, x_ood, generator)``; the generator continues the seed-0 stream."""
    from torchslim import data

    train_full, test = data.fashion_mnist("train"), data.fashion_mnist("test")
    g = torch.Generator().manual_seed(0)
    idx = torch.randperm(len(train_full.images), generator=g)[:n_train]
    train = TensorDataset(train_full.images[idx].contiguous(), train_full.labels[idx].contiguous())
    x_test, y_test = test.images[:n_test], test.labels[:n_test]
    mn = data.mnist("test")
    raw = mn.images[:n_ood] * float(mn.std) + float(mn.mean)  # type: ignore[arg-type]
    x_ood = (raw - float(test.mean)) / float(test.std)  # type: ignore[arg-type]
    return train, test, x_test, y_test, x_ood, g


def train_members(make: Any, tc: Any, train: Any, n: int, step_fn: Any = None) -> list[nn.Module]:
    """An ensemble of ``n`` models ``make()``, member ``i`` seeded ``100 + i`` (initialisation and data
    order), trained with ``tc`` (and ``step_fn``, default cross-entropy) on ``train``; returned in eval mode."""
    from torchslim.train import Trainer

    members = []
    for i in range(n):
        torch.manual_seed(100 + i)
        m = make()
        Trainer(m, tc.model_copy(update={"seed": 100 + i}), step_fn=step_fn, progress=False).fit(train)
        members.append(m.eval())
    return members


def _head_logits(model: Any, x: torch.Tensor, bs: int = 500) -> torch.Tensor:
    was = model.training
    model.eval()
    out = torch.cat([model.head_logits(x[i : i + bs]) for i in range(0, len(x), bs)], dim=1)
    model.train(was)
    return out


def classification(quick: bool) -> dict[str, Any]:
    from torchslim import zoo
    from torchslim.core.cost import profile
    from torchslim.distillation import HintonKD, distill
    from torchslim.distillation.methods.hydra import HydraKD, HydraStudent, disagreement, hydra_distill
    from torchslim.distillation.methods.residual import ResidualKD, ResidualStudent, residual_distill
    from torchslim.train import TrainConfig, Trainer

    n_train, n_test, n_ood = (4000, 2000, 2000) if quick else (20000, 10000, 10000)
    epochs, members_n = (2, 4) if quick else (5, 4)
    teacher = zoo.load("resnet-fmnist", progress=False).eval()
    train, test, x_test, y_test, x_ood, g = fmnist_with_mnist_ood(n_train, n_test, n_ood)
    # second OOD set: uniform-noise images in pixel range [0, 1], Fashion-MNIST normalisation
    x_noise = (torch.rand(n_ood, 1, 28, 28, generator=g) - float(test.mean)) / float(test.std)  # type: ignore[arg-type]

    x1 = torch.randn(1, 1, 28, 28)
    t_macs = profile(teacher, (x1,)).macs
    width, w_s, w_a = 18, 14, 8
    tc = TrainConfig(epochs=epochs, batch_size=64, lr=0.05, schedule="onecycle", seed=0)

    def student() -> nn.Module:
        return nn.Sequential(cnn_body(width), nn.Linear(128, 10))

    macs = {
        "teacher": t_macs,
        "student": profile(student(), (x1,)).macs,
        "residual_S": profile(cnn_body(w_s), (x1,)).macs,
        "residual_A": profile(cnn_body(w_a), (x1,)).macs,
    }
    res: dict[str, Any] = {
        "macs": macs,
        "n_train": n_train,
        "n_test": n_test,
        "n_ood": n_ood,
        "epochs": epochs,
    }
    acc: dict[str, float] = {}
    logits_in: dict[str, torch.Tensor] = {}
    logits_out: dict[str, torch.Tensor] = {}
    secs: dict[str, float] = {}

    def record(name: str, m: nn.Module) -> None:
        logits_in[name], logits_out[name] = _logits(m, x_test), _logits(m, x_ood)
        acc[name] = float((logits_in[name].argmax(1) == y_test).float().mean())
        record_noise(name, m)

    logits_noise: dict[str, torch.Tensor] = {}

    def record_noise(name: str, m: nn.Module) -> None:
        logits_noise[name] = _logits(m, x_noise)

    record("teacher", teacher)
    t0 = time.time()
    torch.manual_seed(0)
    ce = student()
    Trainer(ce, tc, progress=False).fit(train)
    secs["ce"] = time.time() - t0
    record("ce", ce)

    t0 = time.time()
    torch.manual_seed(0)
    kd = student()
    distill(kd, teacher, train, HintonKD(temperature=4.0, alpha=0.9, train=tc), progress=False)
    secs["hinton"] = time.time() - t0
    record("hinton", kd)

    t0 = time.time()
    torch.manual_seed(0)
    rs = ResidualStudent(cnn_body(w_s), cnn_body(w_a), nn.Linear(128, 10))
    rcfg = ResidualKD(
        teacher_layer="fc", teacher_mode="input", temperature=4.0, alpha=0.9, beta=1.0, train=tc
    )
    residual_distill(rs, teacher, train, rcfg, progress=False)
    secs["residual"] = time.time() - t0
    record("residual", rs)

    t0 = time.time()
    members = train_members(student, tc, train, members_n)
    secs["ensemble"] = time.time() - t0
    ens_in = torch.stack([_logits(m, x_test) for m in members])
    ens_out = torch.stack([_logits(m, x_ood) for m in members])
    ens_mean_in = torch.log(ens_in.softmax(-1).mean(0))
    ens_mean_out = torch.log(ens_out.softmax(-1).mean(0))
    logits_in["ensemble"], logits_out["ensemble"] = ens_mean_in, ens_mean_out
    ens_noise = torch.stack([_logits(m, x_noise) for m in members])
    logits_noise["ensemble"] = torch.log(ens_noise.softmax(-1).mean(0))
    acc["ensemble"] = float((ens_mean_in.argmax(1) == y_test).float().mean())
    acc["ensemble_member_mean"] = float((ens_in.argmax(-1) == y_test).float().mean())

    t0 = time.time()
    torch.manual_seed(0)
    hydra = HydraStudent(cnn_body(width), nn.Linear(128, 10), num_heads=members_n)  # light (linear) heads
    hcfg = HydraKD(
        temperature=2.0,
        alpha=1.0,  # the paper distils only; a label term pulls all heads to the same targets
        phase1=tc,
        phase2=tc.model_copy(update={"epochs": 2, "lr": 0.05, "schedule": "cosine"}),
    )
    hydra_distill(hydra, members, train, hcfg, progress=False)
    secs["hydra"] = time.time() - t0
    record("hydra", hydra)
    h_in, h_out = _head_logits(hydra, x_test), _head_logits(hydra, x_ood)
    h_noise = _head_logits(hydra, x_noise)
    macs["hydra"] = profile(hydra, (x1,)).macs

    res["accuracy"] = acc
    res["ood_auroc_mnist_vs_fmnist"] = {
        "hydra_head_disagreement": _auroc(disagreement(h_in), disagreement(h_out)),
        "ensemble_disagreement": _auroc(disagreement(ens_in), disagreement(ens_out)),
        **{f"{k}_entropy": _auroc(_entropy(logits_in[k]), _entropy(logits_out[k])) for k in logits_in},
        # max-softmax baseline (Hendrycks & Gimpel): score = -max_c p_c
        **{f"{k}_max_softmax": _auroc(_neg_msp(logits_in[k]), _neg_msp(logits_out[k])) for k in logits_in},
    }
    res["ood_auroc_noise_vs_fmnist"] = {
        "hydra_head_disagreement": _auroc(disagreement(h_in), disagreement(h_noise)),
        "ensemble_disagreement": _auroc(disagreement(ens_in), disagreement(ens_noise)),
        **{f"{k}_entropy": _auroc(_entropy(logits_in[k]), _entropy(logits_noise[k])) for k in logits_in},
    }
    res["train_seconds"] = secs
    res["configs"] = {"train": tc.to_dict(), "residual": rcfg.to_dict(), "hydra": hcfg.to_dict()}
    return res


def _sinusoid(n: int, seed: int, outliers: float) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, generator=g) * 6 - 3
    y = torch.sin(2 * x) + 0.1 * torch.randn(n, 1, generator=g)
    bad = torch.rand(n, 1, generator=g) < outliers
    return x, torch.where(bad, torch.rand(n, 1, generator=g) * 6 - 3, y)


def _regression_case(
    x: torch.Tensor, y: torch.Tensor, xt: torch.Tensor, yt: torch.Tensor, hidden: int, epochs: int, seeds: int
) -> dict[str, Any]:
    from torchslim.distillation.methods.regression import RegressionKD, TwoHeadRegressor, regression_distill
    from torchslim.train import TrainConfig, Trainer

    d = x.shape[1]
    train = TensorDataset(x, y)
    tc = TrainConfig(
        epochs=epochs, batch_size=64, lr=0.01, optimizer="adamw", schedule="cosine", weight_decay=0.0
    )
    torch.manual_seed(0)
    teacher = nn.Sequential(nn.Linear(d, 128), nn.Tanh(), nn.Linear(128, 128), nn.Tanh(), nn.Linear(128, 1))
    Trainer(teacher, tc, step_fn=lambda m, b: F.mse_loss(m(b[0]), b[1]), progress=False).fit(train)
    with torch.no_grad():
        out: dict[str, Any] = {"teacher": float(F.mse_loss(teacher(xt), yt))}

    def body() -> nn.Module:
        return nn.Sequential(nn.Linear(d, hidden), nn.Tanh(), nn.Linear(hidden, hidden), nn.Tanh())

    runs: dict[str, list[float]] = {
        "label_only": [],
        "mse_kd": [],
        "outlier_rejection": [],
        "tor_teacher_head": [],
    }
    for seed in range(seeds):
        for mode, key in (
            ("label", "label_only"),
            ("mse_kd", "mse_kd"),
            ("outlier_rejection", "outlier_rejection"),
        ):
            torch.manual_seed(seed)
            s: nn.Module = (
                TwoHeadRegressor(body(), nn.Linear(hidden, 1), nn.Linear(hidden, 1))
                if mode == "outlier_rejection"
                else nn.Sequential(body(), nn.Linear(hidden, 1))
            )
            cfg = RegressionKD(mode=mode, train=tc.model_copy(update={"seed": seed}))  # type: ignore[arg-type]
            regression_distill(s, teacher, train, cfg, progress=False)
            with torch.no_grad():
                runs[key].append(float(F.mse_loss(s(xt), yt)))
                if isinstance(s, TwoHeadRegressor):
                    s.output = "teacher"
                    runs["tor_teacher_head"].append(float(F.mse_loss(s(xt), yt)))
    out["students_test_mse"] = {k: {"mean": sum(v) / len(v), "runs": v} for k, v in runs.items()}
    return out


def regression(quick: bool) -> dict[str, Any]:
    seeds = 2 if quick else 5
    x, y = _sinusoid(1000, 0, 0.2)
    xt = torch.linspace(-3, 3, 500).unsqueeze(1)
    res: dict[str, Any] = {
        "sinusoid": _regression_case(x, y, xt, torch.sin(2 * xt), hidden=16, epochs=60, seeds=seeds)
    }
    from sklearn.datasets import load_diabetes

    d = load_diabetes()
    xd = torch.tensor(d.data, dtype=torch.float32)
    yd = torch.tensor(d.target, dtype=torch.float32).unsqueeze(1)
    xd = (xd - xd.mean(0)) / xd.std(0)
    yd = (yd - yd.mean()) / yd.std()
    g = torch.Generator().manual_seed(0)
    perm = torch.randperm(len(xd), generator=g)
    tr, te = perm[:332], perm[332:]
    y_noisy = yd[tr].clone()
    bad = torch.rand(len(tr), 1, generator=g) < 0.2
    y_noisy = torch.where(bad, torch.rand(len(tr), 1, generator=g) * 6 - 3, y_noisy)
    res["diabetes"] = _regression_case(xd[tr], y_noisy, xd[te], yd[te], hidden=8, epochs=100, seeds=seeds)
    res["setup"] = (
        "20% of training labels replaced by U[-3, 3]; teacher 128-128 tanh MLP trained with MSE on the noisy "
        "labels; test MSE against clean targets (sinusoid: sin(2x) on 500 grid points; diabetes: 110 held-out "
        "patients, standardised target)"
    )
    return res


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument(
        "--quick", action="store_true", help="4,000 training images, 2 epochs, 2 regression seeds"
    )
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args(argv)

    from torchslim.bench import latency
    from torchslim.core.io import atomic_write_json

    torch.set_num_threads(args.threads)
    t0 = time.time()
    cls = classification(args.quick)
    reg = regression(args.quick)
    out = {
        "benchmark": "distill_cnn",
        "quick": args.quick,
        "threads": args.threads,
        "classification": cls,
        "regression": reg,
        "wall_seconds": time.time() - t0,
        "environment": latency.environment(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.out, out)

    m = cls["macs"]
    print(
        f"Fashion-MNIST, {cls['n_train']} train images x {cls['epochs']} epochs, {cls['n_test']} test images; "
        f"MACs: teacher {m['teacher'] / 1e6:.2f}M, student {m['student'] / 1e6:.2f}M "
        f"({m['student'] / m['teacher']:.0%}), ResKD S+A {(m['residual_S'] + m['residual_A']) / 1e6:.2f}M, "
        f"Hydra {m['hydra'] / 1e6:.2f}M"
    )
    au, an = cls["ood_auroc_mnist_vs_fmnist"], cls["ood_auroc_noise_vs_fmnist"]
    print(f"{'model':<22}{'top-1':>8}{'AUROC entropy MNIST':>22}{'AUROC entropy noise':>22}")
    for k, v in cls["accuracy"].items():
        e, e2 = au.get(f"{k}_entropy"), an.get(f"{k}_entropy")
        print(f"{k:<22}{v:>8.4f}{'' if e is None else f'{e:>22.3f}'}{'' if e2 is None else f'{e2:>22.3f}'}")
    for name, a in (("MNIST digits", au), ("uniform noise", an)):
        print(
            f"OOD AUROC ({name}) from disagreement: Hydra heads {a['hydra_head_disagreement']:.3f}, "
            f"ensemble {a['ensemble_disagreement']:.3f}"
        )
    print(
        "OOD AUROC (MNIST digits) from max softmax: "
        + ", ".join(f"{k[: -len('_max_softmax')]} {v:.3f}" for k, v in au.items() if k.endswith("_max_softmax"))
    )
    for case in ("sinusoid", "diabetes"):
        r = reg[case]
        mses = ", ".join(f"{k} {v['mean']:.4f}" for k, v in r["students_test_mse"].items())
        print(f"regression {case}: test MSE teacher {r['teacher']:.4f}; {mses}")
    print(f"wall {out['wall_seconds']:.0f} s -> {args.out}")
    return out


if __name__ == "__main__":
    main()
