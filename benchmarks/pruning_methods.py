"""Knapsack pruning + inner KD, activation-density pruning (ADP) and direct sparsity control (DSC) on digits.

Run: ``python -m benchmarks.pruning_methods [--quick] [--threads N]``

Data: scikit-learn's 8x8 digits (``torchslim.data.digits``), a fixed split of 1,397 training and 400 test
images. Every accuracy is test top-1, mean over ``seeds`` fine-tuning / training seeds (the pruned
architecture of a method is fixed; only the training order changes).

Part 1, Knapsack (PAPERS #43). A tiny digits ResNet (widths 16/32/64, one basic block per stage, stride-1
stem) trained with cross-entropy, then pruned to 50% of its MACs three ways: the exact DP knapsack
(Taylor value / MACs cost), the greedy knapsack, and uniform L1 pruning (the same ratio in every group,
bisected so that its MACs are at or below the same budget). Each pruned model gets the SAME fine-tuning
(epochs, LR, schedule, data): cross-entropy, and for the DP model also inner KD (logits + kept-channel
features of every pruned group's BatchNorm, from the unpruned parent) and logit-only KD (beta = 0).

Part 2, ADP (PAPERS #37). An over-wide digits CNN (64-128-128 channels) trained for the normal epoch
budget at full width vs the same budget with ADP resizing every ``prune_every`` epochs. Reported: accuracy,
inference MACs and parameters before/after, training MACs (3 x forward MACs x samples per epoch) vs
full-width training.

Part 3, DSC (PAPERS #42). A digits CNN (32-64-64) sparsified to 10% of its Conv/Linear weights: DSC
(train from scratch, k annealed with the FSA schedule over the first half, hard thresholding after every
step) vs one-shot magnitude pruning of a dense model trained for half the epochs, then fine-tuned with a
fixed mask for the other half (same total epochs), and the dense model at the full budget. Unstructured:
the weights stay dense tensors with zeros, no speed-up is measured or claimed.

No latency is measured (MAC counts only). Writes ``benchmarks/results/pruning_methods.json``.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import TensorDataset

RESULTS = Path(__file__).resolve().parent / "results" / "pruning_methods.json"


def digits_split() -> tuple[TensorDataset, TensorDataset]:
    """Fixed 1,397 / 400 split of sklearn digits (seed 0)."""
    from torchslim.data import digits

    d = digits()
    perm = torch.randperm(len(d), generator=torch.Generator().manual_seed(0))
    tr, te = perm[:-400], perm[-400:]
    return TensorDataset(d.images[tr], d.labels[tr]), TensorDataset(d.images[te], d.labels[te])


def cnn(widths: tuple[int, int, int]) -> nn.Sequential:
    """conv3x3(1->w0) / conv3x3 stride 2 (->w1) / conv3x3 stride 2 (->w2), each + BN + ReLU; pool; Linear."""
    a, b, c = widths
    return nn.Sequential(
        nn.Conv2d(1, a, 3, padding=1, bias=False), nn.BatchNorm2d(a), nn.ReLU(),
        nn.Conv2d(a, b, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(b), nn.ReLU(),
        nn.Conv2d(b, c, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, 10),
    )


def _mean(xs: list[float]) -> float:
    return float(statistics.mean(xs))


def uniform_l1_at(
    parent: nn.Module, budget: int, x1: torch.Tensor, max_ratio: float = 0.97, steps: int = 14
) -> tuple[nn.Module, float, Any]:
    """Uniform L1 pruning (the same ratio in every group) at the smallest ratio whose MACs are <= ``budget``,
    found by bisection on measured MACs. Returns ``(pruned copy, ratio, PruneResult)``."""
    from torchslim.core.cost import profile
    from torchslim.pruning import ChannelPrune, prune_

    lo, hi = 0.0, max_ratio
    for _ in range(steps):
        mid = (lo + hi) / 2
        m = copy.deepcopy(parent)
        prune_(m, ChannelPrune(ratio=mid, importance="l1"), (x1,))
        if profile(m, (x1,)).macs <= budget:
            hi = mid
        else:
            lo = mid
    m = copy.deepcopy(parent)
    result = prune_(m, ChannelPrune(ratio=hi, importance="l1"), (x1,))
    return m, hi, result


def part_knapsack(train: TensorDataset, test: TensorDataset, seeds: list[int], epochs: int, ft_epochs: int,
                  ) -> dict[str, Any]:
    from torchslim.bench.accuracy import top1
    from torchslim.core.cost import profile
    from torchslim.pruning.knapsack import (
        InnerKD,
        KnapsackPrune,
        default_taps,
        inner_distill,
        knapsack_prune_,
    )
    from torchslim.train import TrainConfig, Trainer
    from torchslim.zoo.resnet import ResNet

    torch.manual_seed(0)
    parent = ResNet(widths=(16, 32, 64), blocks=(1, 1, 1), strides=(1, 2, 2), stem_stride=1)
    Trainer(parent, TrainConfig(epochs=epochs, batch_size=64, lr=0.05, seed=0), progress=False).fit(train)
    parent.eval()
    x1 = train.tensors[0][:1]
    macs0 = profile(parent, (x1,)).macs
    budget = int(0.5 * macs0)
    calib = [(train.tensors[0][i:i + 128], train.tensors[1][i:i + 128]) for i in range(0, 512, 128)]
    out: dict[str, Any] = {"parent_acc": top1(parent, test), "parent_macs": macs0, "budget_macs": budget}

    pruned: dict[str, tuple[nn.Module, Any]] = {}
    m: nn.Module
    t = time.time()
    for solver in ("dp", "greedy"):
        m = copy.deepcopy(parent)
        r = knapsack_prune_(m, KnapsackPrune(macs_ratio=0.5, solver=solver), (x1,), calib)
        pruned[f"knapsack_{solver}"] = (m, r)
        out[f"knapsack_{solver}_solve_s"] = time.time() - t
        t = time.time()
    m, hi, pr = uniform_l1_at(parent, budget, x1, max_ratio=0.95, steps=12)
    pruned["uniform_l1"] = (m, pr)
    out["uniform_ratio"] = hi

    ft = TrainConfig(epochs=ft_epochs, batch_size=64, lr=0.01, schedule="cosine")
    rows: dict[str, dict[str, Any]] = {}
    for name, (m, r) in pruned.items():
        widths = r.widths if hasattr(r, "widths") else {g.name: g.channels_after for g in r.groups}
        row: dict[str, Any] = {"macs": profile(m, (x1,)).macs, "widths": widths, "acc_before_ft": top1(m, test)}
        if hasattr(r, "value_kept"):
            row["taylor_value_kept"] = r.value_kept
        accs = []
        for s in seeds:
            mm = copy.deepcopy(m)
            Trainer(mm, ft.model_copy(update={"seed": s}), progress=False).fit(train)
            accs.append(top1(mm.eval(), test))
        row["acc_ce_ft"] = _mean(accs)
        row["acc_ce_ft_seeds"] = accs
        rows[name] = row
    m_dp, r_dp = pruned["knapsack_dp"]
    taps = default_taps(parent, (x1,), r_dp.keep)
    for label, beta in (("inner_kd", 1.0), ("logit_kd", 0.0)):
        accs = []
        for s in seeds:
            mm = copy.deepcopy(m_dp)
            cfg = InnerKD(temperature=4.0, alpha=0.5, beta=beta, train=ft.model_copy(update={"seed": s}))
            inner_distill(mm, parent, train, cfg, dict(taps))
            accs.append(top1(mm.eval(), test))
        rows["knapsack_dp"][f"acc_{label}_ft"] = _mean(accs)
        rows["knapsack_dp"][f"acc_{label}_ft_seeds"] = accs
    out["rows"] = rows
    return out


def part_adp(train: TensorDataset, test: TensorDataset, seeds: list[int], epochs: int, prune_every: int,
             ) -> dict[str, Any]:
    from torchslim.bench.accuracy import top1
    from torchslim.core.cost import profile
    from torchslim.pruning.adp import ADPConfig, adp_train
    from torchslim.pruning.api import count_params
    from torchslim.train import TrainConfig, Trainer

    x1 = train.tensors[0][:1]
    tc = TrainConfig(epochs=epochs, batch_size=64, lr=0.05)
    full_acc: list[float] = []
    adp_acc: list[float] = []
    runs: list[dict[str, Any]] = []
    for s in seeds:
        torch.manual_seed(s)
        base = cnn((64, 128, 128))
        m = copy.deepcopy(base)
        Trainer(base, tc.model_copy(update={"seed": s}), progress=False).fit(train)
        full_acc.append(top1(base.eval(), test))
        res = adp_train(m, train, ADPConfig(train=tc.model_copy(update={"seed": s}), prune_every=prune_every),
                        (x1,))
        adp_acc.append(top1(m.eval(), test))
        runs.append({
            "seed": s, "widths": [m[0].out_channels, m[3].out_channels, m[6].out_channels],
            "macs_before": res.macs_before, "macs_after": res.macs_after,
            "params_before": res.params_before, "params_after": count_params(m),
            "train_macs": res.train_macs, "full_width_train_macs": res.full_width_train_macs,
            "stopped_at_epoch": res.stopped_at, "history": res.history,
        })
    assert profile(m, (x1,)).macs == runs[-1]["macs_after"]
    return {
        "acc_full_width": _mean(full_acc), "acc_adp": _mean(adp_acc), "acc_full_width_seeds": full_acc,
        "acc_adp_seeds": adp_acc,
        "macs_reduction": _mean([r["macs_before"] / r["macs_after"] for r in runs]),
        "params_reduction": _mean([r["params_before"] / r["params_after"] for r in runs]),
        "train_macs_ratio": _mean([r["train_macs"] / r["full_width_train_macs"] for r in runs]),
        "runs": runs,
    }


def part_dsc(train: TensorDataset, test: TensorDataset, seeds: list[int], epochs: int, density: float,
             ) -> dict[str, Any]:
    from torchslim.bench.accuracy import top1
    from torchslim.pruning.dsc import (
        DSCConfig,
        MaskKeeper,
        dsc_train,
        magnitude_prune_,
        nonzeros,
        prunable_weights,
    )
    from torchslim.train import TrainConfig, Trainer

    tc = TrainConfig(epochs=epochs, batch_size=64, lr=0.05)
    half = tc.model_copy(update={"epochs": max(1, epochs // 2)})
    rows: dict[str, list[float]] = {"dense": [], "dsc": [], "oneshot_ft": [], "oneshot_no_ft": []}
    nz: dict[str, int] = {}
    for s in seeds:
        torch.manual_seed(s)
        init = cnn((32, 64, 64))
        dense = copy.deepcopy(init)
        Trainer(dense, tc.model_copy(update={"seed": s}), progress=False).fit(train)
        rows["dense"].append(top1(dense.eval(), test))
        m = copy.deepcopy(init)
        res = dsc_train(m, train, DSCConfig(density=density, train=tc.model_copy(update={"seed": s})))
        rows["dsc"].append(top1(m.eval(), test))
        nz["dsc"], nz["k_target"], nz["dense_weights"] = res.nonzeros, res.k_target, res.dense
        m2 = copy.deepcopy(init)
        Trainer(m2, half.model_copy(update={"seed": s}), progress=False).fit(train)
        masks = magnitude_prune_(m2, density)
        rows["oneshot_no_ft"].append(top1(m2.eval(), test))
        Trainer(m2, half.model_copy(update={"seed": s + 100}), callbacks=[MaskKeeper(m2, masks)],
                progress=False).fit(train)
        rows["oneshot_ft"].append(top1(m2.eval(), test))
        nz["oneshot"] = nonzeros(prunable_weights(m2))
    return {"density": density, "acc": {k: _mean(v) for k, v in rows.items()}, "acc_seeds": rows, "nonzeros": nz}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer seeds and epochs (< 4 min at 1 thread)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    from torchslim.core.io import atomic_write_json

    t0 = time.time()
    train, test = digits_split()
    seeds = [0, 1] if args.quick else [0, 1, 2]
    out: dict[str, Any] = {"quick": args.quick, "threads": args.threads, "seeds": seeds}
    t = time.time()
    out["knapsack"] = part_knapsack(train, test, seeds, epochs=10 if args.quick else 20,
                                    ft_epochs=3 if args.quick else 5)
    out["knapsack"]["wall_s"] = time.time() - t
    print(f"knapsack done ({out['knapsack']['wall_s']:.0f} s)", flush=True)
    t = time.time()
    out["adp"] = part_adp(train, test, seeds, epochs=12 if args.quick else 20, prune_every=2)
    out["adp"]["wall_s"] = time.time() - t
    print(f"adp done ({out['adp']['wall_s']:.0f} s)", flush=True)
    t = time.time()
    out["dsc"] = part_dsc(train, test, seeds, epochs=12 if args.quick else 20, density=0.1)
    out["dsc"]["wall_s"] = time.time() - t
    out["wall_seconds"] = time.time() - t0
    if args.out == RESULTS and args.quick:
        args.out = RESULTS.with_name("pruning_methods_quick.json")
    atomic_write_json(args.out, out)

    k = out["knapsack"]
    print(f"\nKnapsack: tiny digits ResNet {k['parent_acc']:.4f} top-1, {k['parent_macs']:,} MACs; "
          f"budget {k['budget_macs']:,} (50%)")
    print(f"{'variant':<18}{'MACs':>10}{'no FT':>8}{'CE FT':>8}{'innerKD':>9}{'logitKD':>9}")
    for name, r in k["rows"].items():
        ikd = f"{r['acc_inner_kd_ft']:>9.4f}" if "acc_inner_kd_ft" in r else f"{'':>9}"
        lkd = f"{r['acc_logit_kd_ft']:>9.4f}" if "acc_logit_kd_ft" in r else f"{'':>9}"
        print(f"{name:<18}{r['macs']:>10,}{r['acc_before_ft']:>8.4f}{r['acc_ce_ft']:>8.4f}{ikd}{lkd}")
    a = out["adp"]
    print(f"\nADP: full width {a['acc_full_width']:.4f} vs ADP {a['acc_adp']:.4f}; inference MACs "
          f"/{a['macs_reduction']:.1f}, params /{a['params_reduction']:.1f}; training MACs x{a['train_macs_ratio']:.2f} "
          f"of full-width; widths {[r['widths'] for r in a['runs']]}")
    d = out["dsc"]
    print(f"\nDSC at {d['density']:.0%} weights: " + ", ".join(f"{n} {v:.4f}" for n, v in d["acc"].items())
          + f"; non-zeros {d['nonzeros']}")
    print(f"wall {out['wall_seconds']:.0f} s -> {args.out}")
    return out


if __name__ == "__main__":
    main()
