"""Hydra (Tran et al. 2020): temperature re-scaling (classification) and Gaussian heads (regression).

Run: ``python -m benchmarks.hydra [--quick] [--threads N]``

Part A (classification). An ensemble of ``M`` small CNNs (``benchmarks.distill_cnn.cnn_body``) trained with
cross-entropy on a Fashion-MNIST subset; Hydra students (same body, linear heads, ``alpha = 1``, the
paper's pure distillation) distilled from it, one per phase-1 target: the default (tempered ensemble mean,
``softmax(log pbar / T)``) and ``temperature_rescaling=True`` (``mean_m softmax(t_m / T)``, our reading of the
paper's temperature re-scaling), each at T = 2 and T = 4, plus T = 1. Reported: Fashion-MNIST test top-1; AUROC (sklearn) of the disagreement
(mutual information) for Fashion-MNIST test images (negative) vs MNIST test digits renormalised with
Fashion-MNIST's statistics (positive), heads vs members; the ratio of the heads' mean disagreement to the
members' on the digits (1 = the heads reproduce the size of the ensemble's uncertainty); and the ensemble
mean's max-softmax AUROC as the single-model baseline.

Part B (regression). Deep ensemble of 5 MLPs with Gaussian outputs (mean, variance; trained by Gaussian NLL,
different seeds) on (1) sklearn's bundled diabetes data (442 patients, 10 standardised features, 332 train /
110 test) and (2) a synthetic heteroscedastic task ``y = sin(3x) + (0.05 + 0.2|x|) eps`` on ``x in [-2, 2]``.
Students with a smaller body: Hydra (5 Gaussian heads, :func:`hydra_regression_distill`) and single-head KD
(one Gaussian head matching the members' moment-matched mixture, i.e. Hydra's phase 1 run for all its
epochs). Reported: test MSE of the predictive mean and test NLL of the predictive distribution (the mixture of
the heads / members; the single Gaussian for single-head KD); OOD AUROC of the epistemic variance (variance
of the head / member means) for test inputs vs the same inputs shifted off the training range (diabetes:
``x + 3`` in standardised units along a fixed random unit direction scaled to norm 3 * sqrt(10)); synthetic:
``|x| in [2.5, 3.5]``); single-head KD has no epistemic part, so its total variance is used.

Seeds are fixed; accuracy figures are deterministic for a given machine. No latency is measured.
Writes ``benchmarks/results/hydra.json``.
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
from torch.utils.data import TensorDataset

from benchmarks.distill_cnn import (
    _auroc,
    _head_logits,
    _logits,
    _neg_msp,
    cnn_body,
    fmnist_with_mnist_ood,
    train_members,
)

RESULTS = Path(__file__).resolve().parent / "results" / "hydra.json"


def classification(quick: bool) -> dict[str, Any]:
    from torchslim.distillation.methods.hydra import HydraKD, HydraStudent, disagreement, hydra_distill
    from torchslim.train import TrainConfig

    n_train, n_test, n_ood = (3000, 2000, 2000) if quick else (10000, 5000, 5000)
    epochs, members_n, width, feat = (2, 4, 8, 64) if quick else (3, 4, 12, 96)
    train, test, x_test, y_test, x_ood, _ = fmnist_with_mnist_ood(n_train, n_test, n_ood)
    tc = TrainConfig(epochs=epochs, batch_size=64, lr=0.05, schedule="onecycle", seed=0)

    def student() -> nn.Module:
        return nn.Sequential(cnn_body(width, feat), nn.Linear(feat, 10))

    secs: dict[str, float] = {}
    t0 = time.time()
    members = train_members(student, tc, train, members_n)
    secs["ensemble"] = time.time() - t0
    e_in = torch.stack([_logits(m, x_test) for m in members])
    e_out = torch.stack([_logits(m, x_ood) for m in members])
    d_e_in, d_e_out = disagreement(e_in), disagreement(e_out)
    ens_mean_in = torch.log(e_in.softmax(-1).mean(0))
    ens_mean_out = torch.log(e_out.softmax(-1).mean(0))
    res: dict[str, Any] = {
        "n_train": n_train,
        "n_test": n_test,
        "n_ood": n_ood,
        "epochs": epochs,
        "members": members_n,
        "cnn_width": width,
        "ensemble": {
            "top1": float((ens_mean_in.argmax(1) == y_test).float().mean()),
            "member_top1_mean": float((e_in.argmax(-1) == y_test).float().mean()),
            "auroc_disagreement": _auroc(d_e_in, d_e_out),
            "auroc_max_softmax": _auroc(_neg_msp(ens_mean_in), _neg_msp(ens_mean_out)),
            "mean_disagreement_fmnist": float(d_e_in.mean()),
            "mean_disagreement_mnist": float(d_e_out.mean()),
        },
    }
    variants = (
        ("hydra", 2.0, False),
        ("hydra_rescaled", 2.0, True),
        ("hydra_T1", 1.0, False),
        ("hydra_T4", 4.0, False),
        ("hydra_T4_rescaled", 4.0, True),
    )
    res["variants"] = [v[0] for v in variants]
    for name, temp, rescale in variants:
        t0 = time.time()
        torch.manual_seed(0)
        hydra = HydraStudent(cnn_body(width, feat), nn.Linear(feat, 10), num_heads=members_n)
        hcfg = HydraKD(
            temperature=temp,
            alpha=1.0,
            temperature_rescaling=rescale,
            phase1=tc,
            phase2=tc.model_copy(update={"epochs": 2, "schedule": "cosine"}),
        )
        hydra_distill(hydra, members, train, hcfg, progress=False)
        secs[name] = time.time() - t0
        h_in, h_out = _head_logits(hydra, x_test), _head_logits(hydra, x_ood)
        d_in, d_out = disagreement(h_in), disagreement(h_out)
        res[name] = {
            "top1": float((_logits(hydra, x_test).argmax(1) == y_test).float().mean()),
            "auroc_disagreement": _auroc(d_in, d_out),
            "mean_disagreement_fmnist": float(d_in.mean()),
            "mean_disagreement_mnist": float(d_out.mean()),
            "disagreement_ratio_mnist": float(d_out.mean() / d_e_out.mean()),
            "config": hcfg.to_dict(),
        }
    res["train_seconds"] = secs
    return res


def _mixture_nll(y: torch.Tensor, mu: torch.Tensor, var: torch.Tensor) -> float:
    """Mean ``-log (1/M sum_m N(y; mu_m, var_m))`` of ``[M, B, D]`` Gaussians at ``y`` ``[B, D]``."""
    from torchslim.distillation.methods.hydra import gaussian_nll

    logp = -gaussian_nll(y.unsqueeze(0), mu, var)
    return float(-(torch.logsumexp(logp, dim=0) - math.log(mu.shape[0])).mean())


def _regression_case(
    x: torch.Tensor,
    y: torch.Tensor,
    xt: torch.Tensor,
    yt: torch.Tensor,
    x_ood: torch.Tensor,
    hidden: int,
    student_hidden: int,
    epochs: int,
) -> dict[str, Any]:
    from torchslim.distillation.methods.hydra import (
        HydraKD,
        HydraRegressionStudent,
        ensemble_gaussians,
        gaussian_nll,
        gaussian_params,
        hydra_regression_distill,
        mixture_kl_loss,
        regression_uncertainty,
    )
    from torchslim.train import TrainConfig, Trainer

    d = x.shape[1]
    train = TensorDataset(x, y)
    tc = TrainConfig(
        epochs=epochs, batch_size=32, lr=0.005, optimizer="adamw", schedule="cosine", weight_decay=1e-4
    )

    def mlp(w: int) -> nn.Sequential:
        return nn.Sequential(nn.Linear(d, w), nn.ReLU(), nn.Linear(w, w), nn.ReLU())

    def nll_step(m: nn.Module, b: Any) -> torch.Tensor:
        mu, var = gaussian_params(m(b[0]), 1e-6)
        return gaussian_nll(b[1], mu, var).mean()

    members = train_members(lambda: nn.Sequential(mlp(hidden), nn.Linear(hidden, 2)), tc, train, 5, nll_step)
    with torch.no_grad():
        e_mu, e_var = ensemble_gaussians(members, xt)
        o_mu, o_var = ensemble_gaussians(members, x_ood)
    out: dict[str, Any] = {}

    def record(name: str, mu: torch.Tensor, var: torch.Tensor, omu: torch.Tensor, ovar: torch.Tensor) -> None:
        mean, epi, ale = regression_uncertainty(mu, var)
        _, oepi, oale = regression_uncertainty(omu, ovar)
        score_in, score_out = (epi, oepi) if mu.shape[0] > 1 else (epi + ale, oepi + oale)
        out[name] = {
            "test_mse": float(F.mse_loss(mean, yt)),
            "test_nll": _mixture_nll(yt, mu, var),
            "ood_auroc": _auroc(score_in.sum(-1), score_out.sum(-1)),
            "mean_epistemic_test": float(epi.mean()),
            "mean_epistemic_ood": float(oepi.mean()),
        }

    record("ensemble", e_mu, e_var, o_mu, o_var)
    members_mean_nll = [float(gaussian_nll(yt, e_mu[i], e_var[i]).mean()) for i in range(5)]
    out["ensemble"]["member_nll_mean"] = sum(members_mean_nll) / 5
    out["ensemble"]["member_mse_mean"] = sum(float(F.mse_loss(e_mu[i], yt)) for i in range(5)) / 5

    # Hydra: phase 1 = half of the epochs, phase 2 = the other half
    torch.manual_seed(0)
    hydra = HydraRegressionStudent(mlp(student_hidden), nn.Linear(student_hidden, 2), num_heads=5)
    half = tc.model_copy(update={"epochs": max(1, epochs // 2)})
    hydra_regression_distill(hydra, members, TensorDataset(x), HydraKD(phase1=half, phase2=half), progress=False)
    with torch.no_grad():
        h = hydra.head_gaussians(xt)
        ho = hydra.head_gaussians(x_ood)
    record("hydra", *h, *ho)
    out["hydra"]["epistemic_ratio_ood"] = out["hydra"]["mean_epistemic_ood"] / out["ensemble"]["mean_epistemic_ood"]

    # single-head KD: one Gaussian head on the members' moment-matched mixture, all the epochs
    torch.manual_seed(0)
    single = nn.Sequential(mlp(student_hidden), nn.Linear(student_hidden, 2))

    def kd_step(m: nn.Module, b: Any) -> torch.Tensor:
        mu, var = gaussian_params(m(b[0]), 1e-6)
        return mixture_kl_loss(mu, var, *ensemble_gaussians(members, b[0]))

    Trainer(single, tc, step_fn=kd_step, progress=False).fit(TensorDataset(x))
    with torch.no_grad():
        s_mu, s_var = gaussian_params(single(xt))
        so_mu, so_var = gaussian_params(single(x_ood))
    record("single_head_kd", s_mu[None], s_var[None], so_mu[None], so_var[None])
    out["params"] = {
        "member": sum(p.numel() for p in members[0].parameters()),
        "hydra": sum(p.numel() for p in hydra.parameters()),
        "single_head_kd": sum(p.numel() for p in single.parameters()),
    }
    return out


def regression(quick: bool) -> dict[str, Any]:
    from sklearn.datasets import load_diabetes

    epochs = 60 if quick else 150
    epochs_diabetes = 20 if quick else 40  # 332 patients: longer training makes the members overconfident
    d = load_diabetes()
    xd = torch.tensor(d.data, dtype=torch.float32)
    yd = torch.tensor(d.target, dtype=torch.float32).unsqueeze(1)
    xd = (xd - xd.mean(0)) / xd.std(0)
    yd = (yd - yd.mean()) / yd.std()
    g = torch.Generator().manual_seed(0)
    perm = torch.randperm(len(xd), generator=g)
    tr, te = perm[:332], perm[332:]
    direction = torch.randn(xd.shape[1], generator=g)
    shift = direction / direction.norm() * 3 * math.sqrt(xd.shape[1])
    res: dict[str, Any] = {
        "diabetes": _regression_case(
            xd[tr], yd[tr], xd[te], yd[te], xd[te] + shift, hidden=64, student_hidden=32, epochs=epochs_diabetes
        )
    }
    n = 600
    x = torch.rand(n, 1, generator=g) * 4 - 2
    y = torch.sin(3 * x) + (0.05 + 0.2 * x.abs()) * torch.randn(n, 1, generator=g)
    xt = torch.linspace(-2, 2, 400).unsqueeze(1)
    yt = torch.sin(3 * xt) + (0.05 + 0.2 * xt.abs()) * torch.randn(400, 1, generator=g)
    xo = torch.cat([torch.linspace(-3.5, -2.5, 200), torch.linspace(2.5, 3.5, 200)]).unsqueeze(1)
    res["heteroscedastic"] = _regression_case(x, y, xt, yt, xo, hidden=64, student_hidden=32, epochs=epochs)
    res["setup"] = (
        "5 Gaussian MLP members (2x64 ReLU, NLL, seeds 100-104); students 2x32 ReLU; Hydra phase 1 and phase 2 "
        f"{max(1, epochs // 2)} epochs each, single-head KD {epochs} epochs (diabetes: {epochs_diabetes}, half each); "
        "AdamW lr 5e-3, batch 32, cosine"
    )
    return res


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="3,000 Fashion-MNIST images x 2 epochs; 60 regression epochs")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=None, help="result JSON (default hydra.json / hydra_quick.json)")
    ap.add_argument("--part", choices=("all", "classification", "regression"), default="all")
    args = ap.parse_args(argv)

    from torchslim.bench import latency
    from torchslim.core.io import atomic_write_json

    torch.set_num_threads(args.threads)
    t0 = time.time()
    cls = classification(args.quick) if args.part in ("all", "classification") else None
    reg = regression(args.quick) if args.part in ("all", "regression") else None
    out = {
        "benchmark": "hydra",
        "quick": args.quick,
        "threads": args.threads,
        "classification": cls,
        "regression": reg,
        "wall_seconds": time.time() - t0,
        "environment": latency.environment(),
    }
    if args.out is None:
        args.out = RESULTS.with_name("hydra_quick.json") if args.quick else RESULTS
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.out, out)

    if cls is not None:
        print(
            f"A. Fashion-MNIST ({cls['n_train']} images x {cls['epochs']} epochs, {cls['members']} members), "
            f"OOD = {cls['n_ood']} MNIST digits"
        )
        print(f"{'model':<20}{'top-1':>8}{'AUROC MI':>10}{'MI FMNIST':>11}{'MI MNIST':>10}{'MI ratio':>10}")
        for k in ("ensemble", *cls["variants"]):
            r = cls[k]
            ratio = r.get("disagreement_ratio_mnist", 1.0)
            print(
                f"{k:<20}{r['top1']:>8.4f}{r['auroc_disagreement']:>10.3f}{r['mean_disagreement_fmnist']:>11.4f}"
                f"{r['mean_disagreement_mnist']:>10.4f}{ratio:>10.3f}"
            )
        print(f"ensemble mean max-softmax AUROC (single-model baseline): {cls['ensemble']['auroc_max_softmax']:.3f}")
    if reg is not None:
        for case in ("diabetes", "heteroscedastic"):
            r = reg[case]
            print(f"B. {case}: {'model':<16}{'test MSE':>10}{'test NLL':>10}{'OOD AUROC':>11}{'epi OOD':>10}")
            for k in ("ensemble", "hydra", "single_head_kd"):
                v = r[k]
                print(
                    f"   {'':<{len(case)}}  {k:<16}{v['test_mse']:>10.4f}{v['test_nll']:>10.4f}"
                    f"{v['ood_auroc']:>11.3f}{v['mean_epistemic_ood']:>10.4f}"
                )
    print(f"wall {out['wall_seconds']:.0f} s -> {args.out}")
    return out


if __name__ == "__main__":
    main()
