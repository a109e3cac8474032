"""Gradual channel pruning with feature relevance scores, hyper/hypo neuron pruning, and AutoLR on digits.

Run: ``python -m benchmarks.pruning_in_training [--quick] [--threads N]``

Data: scikit-learn's 8x8 digits, the fixed 1,397 / 400 split of ``benchmarks.pruning_methods``. The
shifted *target domain* is the same images rotated by ``ROT`` degrees (bilinear, border padding). Every
accuracy is test top-1 (mean over ``seeds``).

Part 1, gradual pruning (PAPERS #46). A digits CNN (32-64-64, conv/BN/ReLU) trained from scratch for
``epochs`` (baseline) vs the same epochs with gradual pruning to 50% of its MACs: a pruning step every
epoch from epoch 2 to 2/3 of the run (linear MACs schedule), channels ranked globally by feature
relevance score (the paper) or by L1 filter norm (same schedule, same surgery).

Part 2, hyper/hypo neurons (PAPERS #30). A digits CNN with two hidden FC layers (128, 64) trained on
upright digits. Activation frequencies of the FC neurons on the unlabelled rotated training images; the
top-k hyper and top-k hypo neurons of each FC layer are removed (with and without replacing them by their
mean activation), then target (rotated test) accuracy. Adaptation: entropy minimisation on the unlabelled
rotated training images updating only the hyper/hypo neurons vs the whole FC layers (same steps, LR).

Part 3, AutoLR (PAPERS #41). A digits ResNet (16/32/64, blocks 1/1/2) trained on upright digits, then
fine-tuned on rotated digits (labelled) with one LR vs AutoLR (per-layer LRs tuned for ascending weight
variation), same epochs. Then the last stage-3 block is dropped (replaced by identity) before AutoLR
fine-tuning, and separately from the fine-tuned model without retraining.

MACs only (no latency). Writes ``benchmarks/results/pruning_in_training.json``.
"""

from __future__ import annotations

import argparse
import copy
import math
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import TensorDataset

from benchmarks.pruning_methods import _mean, cnn, digits_split

RESULTS = Path(__file__).resolve().parent / "results" / "pruning_in_training.json"
ROT = 30.0


def rotate(x: torch.Tensor, degrees: float) -> torch.Tensor:
    """Rotate a batch ``[N, C, H, W]`` by ``degrees`` about the centre (bilinear, border padding)."""
    a = math.radians(degrees)
    theta = torch.tensor([[math.cos(a), -math.sin(a), 0.0], [math.sin(a), math.cos(a), 0.0]], dtype=x.dtype)
    grid = F.affine_grid(theta.expand(x.shape[0], 2, 3), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, padding_mode="border", align_corners=False)


def rotated(d: TensorDataset, degrees: float = ROT) -> TensorDataset:
    return TensorDataset(rotate(d.tensors[0], degrees), d.tensors[1])


def fc_net() -> nn.Sequential:
    """conv 16 / conv 32 stride 2 (BN, ReLU) -> flatten 512 -> FC 128 -> FC 64 -> 10."""
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
        nn.Conv2d(16, 32, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(32), nn.ReLU(),
        nn.Flatten(), nn.Linear(512, 128), nn.ReLU(), nn.Linear(128, 64), nn.ReLU(), nn.Linear(64, 10),
    )


def part_gradual(train: TensorDataset, test: TensorDataset, seeds: list[int], epochs: int) -> dict[str, Any]:
    from torchslim.bench.accuracy import top1
    from torchslim.pruning.gradual import GradualConfig, gradual_train
    from torchslim.train import TrainConfig, Trainer

    x1 = train.tensors[0][:1]
    tc = TrainConfig(epochs=epochs, batch_size=64, lr=0.05)
    acc: dict[str, list[float]] = {"baseline": [], "frs": [], "l1": []}
    runs: list[dict[str, Any]] = []
    for s in seeds:
        torch.manual_seed(s)
        init = cnn((32, 64, 64))
        base = copy.deepcopy(init)
        Trainer(base, tc.model_copy(update={"seed": s}), progress=False).fit(train)
        acc["baseline"].append(top1(base.eval(), test))
        for name, crit in (("frs", "feature_relevance"), ("l1", "l1")):
            m = copy.deepcopy(init)
            cfg = GradualConfig(train=tc.model_copy(update={"seed": s}), macs_ratio=0.5, start_epoch=2,
                                criterion=crit)
            res = gradual_train(m, train, cfg, (x1,))
            acc[name].append(top1(m.eval(), test))
            runs.append({"seed": s, "method": name, "macs_before": res.macs_before, "macs_after": res.macs_after,
                         "target": res.target_macs, "widths": [m[0].out_channels, m[3].out_channels,
                                                               m[6].out_channels],
                         "steps": [(h["epoch"], h["removed"], h["macs"]) for h in res.history],
                         "train_macs_ratio": res.train_macs / (3 * res.macs_before * len(train) * epochs)})
    return {"epochs": epochs, "acc": {k: _mean(v) for k, v in acc.items()}, "acc_seeds": acc, "runs": runs}


def part_hyperhypo(train: TensorDataset, test: TensorDataset, seeds: list[int], epochs: int, ks: list[int],
                   adapt_epochs: int) -> dict[str, Any]:
    from torchslim.bench.accuracy import top1
    from torchslim.pruning.hyperhypo import (
        AdaptConfig,
        activation_frequency,
        adapt_neurons,
        classify_neurons,
        mean_activations,
        remove_neurons_,
        top_hyper_hypo,
    )
    from torchslim.train import TrainConfig, Trainer

    tgt_train, tgt_test = rotated(train), rotated(test)
    unlabelled = [tgt_train.tensors[0][i:i + 256] for i in range(0, len(tgt_train), 256)]
    x1 = train.tensors[0][:1]
    layers = ["7", "9"]
    rows: dict[str, list[float]] = {"source_acc": [], "target_acc": []}
    classes: list[Any] = []
    for s in seeds:
        torch.manual_seed(s)
        m = fc_net()
        Trainer(m, TrainConfig(epochs=epochs, batch_size=64, lr=0.05, seed=s), progress=False).fit(train)
        m.eval()
        rows["source_acc"].append(top1(m, test))
        rows["target_acc"].append(top1(m, tgt_test))
        freq = activation_frequency(m, unlabelled, layers)
        classes.append({p: {k: len(v) for k, v in c.items()} for p, c in classify_neurons(freq).items()})
        means = mean_activations(m, unlabelled, layers)
        for k in ks:
            pick = top_hyper_hypo(freq, k, k)
            for comp in (False, True):
                mm = copy.deepcopy(m)
                remove_neurons_(mm, pick, (x1,), mean_activation=means if comp else None)
                rows.setdefault(f"remove_k{k}{'_meancomp' if comp else ''}", []).append(top1(mm.eval(), tgt_test))
            # random neurons of the same count, for reference
            g = torch.Generator().manual_seed(s)
            rnd = {p: torch.randperm(freq[p].numel(), generator=g)[:2 * k].tolist() for p in layers}
            mm = copy.deepcopy(m)
            remove_neurons_(mm, rnd, (x1,))
            rows.setdefault(f"remove_random{2 * k}", []).append(top1(mm.eval(), tgt_test))
        k = ks[-1]
        pick = top_hyper_hypo(freq, k, k)
        ac = AdaptConfig(train=TrainConfig(epochs=adapt_epochs, batch_size=64, lr=0.01, schedule="constant",
                                           seed=s))
        for name, kw in (("adapt_hyperhypo", {"neurons": pick}), ("adapt_whole_layers", {"layers": layers})):
            mm = copy.deepcopy(m)
            adapt_neurons(mm, TensorDataset(tgt_train.tensors[0]), ac, **kw)  # type: ignore[arg-type]
            rows.setdefault(name, []).append(top1(mm.eval(), tgt_test))
    return {"rotation_deg": ROT, "ks": ks, "acc": {k: _mean(v) for k, v in rows.items()}, "acc_seeds": rows,
            "classes_at_0.95_0.05": classes, "adapt_k": ks[-1]}


def part_autolr(train: TensorDataset, test: TensorDataset, seeds: list[int], epochs: int, ft_epochs: int,
                ) -> dict[str, Any]:
    from torchslim.bench.accuracy import top1
    from torchslim.pruning.autolr import AutoLRConfig, autolr_finetune, drop_layers_, is_ascending
    from torchslim.train import TrainConfig, Trainer
    from torchslim.zoo.resnet import ResNet

    tgt_train, tgt_test = rotated(train, 45.0), rotated(test, 45.0)
    x1 = train.tensors[0][:1]
    layers = ["stem", "layer1.0", "layer2.0", "layer3.0", "layer3.1", "fc"]
    ft = TrainConfig(epochs=ft_epochs, batch_size=64, lr=0.01, schedule="constant", weight_decay=0.0)
    rows: dict[str, list[float]] = {}
    var: dict[str, list[Any]] = {"single": [], "autolr": []}
    mults: list[dict[str, float]] = []
    for s in seeds:
        torch.manual_seed(s)
        pre = ResNet(widths=(16, 32, 64), blocks=(1, 1, 2), strides=(1, 2, 2), stem_stride=1)
        Trainer(pre, TrainConfig(epochs=epochs, batch_size=64, lr=0.05, seed=s), progress=False).fit(train)
        rows.setdefault("pretrained_source", []).append(top1(pre.eval(), test))
        rows.setdefault("pretrained_target", []).append(top1(pre.eval(), tgt_test))
        fts = ft.model_copy(update={"seed": s})
        for name, tune in (("single", False), ("autolr", True)):
            m = copy.deepcopy(pre)
            r = autolr_finetune(m, tgt_train, AutoLRConfig(train=fts, layers=layers, tune=tune))
            rows.setdefault(name, []).append(top1(m.eval(), tgt_test))
            var[name].append({"last_epoch": [round(v, 5) for v in r.last_variation],
                              "total": [round(r.total_variation[p], 5) for p in layers],
                              "last_ascending": is_ascending(r.last_variation),
                              "total_ascending": is_ascending([r.total_variation[p] for p in layers])})
            if tune:
                mults.append({p: round(v, 4) for p, v in r.multipliers.items()})
                dropped = copy.deepcopy(m)
                drop_layers_(dropped, ["layer3.1"], (x1,))
                rows.setdefault("autolr_then_drop_last_block_no_retrain", []).append(top1(dropped.eval(), tgt_test))
        m = copy.deepcopy(pre)
        drop_layers_(m, ["layer3.1"], (x1,))
        autolr_finetune(m, tgt_train, AutoLRConfig(train=fts, layers=[p for p in layers if p != "layer3.1"]))
        rows.setdefault("drop_last_block_then_autolr", []).append(top1(m.eval(), tgt_test))
    return {"rotation_deg": 45.0, "layers": layers, "acc": {k: _mean(v) for k, v in rows.items()},
            "acc_seeds": rows, "variation": var, "multipliers": mults}


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
    out["gradual"] = part_gradual(train, test, seeds, epochs=12 if args.quick else 20)
    out["gradual"]["wall_s"] = time.time() - t
    print(f"gradual done ({out['gradual']['wall_s']:.0f} s)", flush=True)
    t = time.time()
    out["hyperhypo"] = part_hyperhypo(train, test, seeds, epochs=10 if args.quick else 15, ks=[2, 4, 8],
                                      adapt_epochs=2)
    out["hyperhypo"]["wall_s"] = time.time() - t
    print(f"hyper/hypo done ({out['hyperhypo']['wall_s']:.0f} s)", flush=True)
    t = time.time()
    out["autolr"] = part_autolr(train, test, seeds, epochs=10 if args.quick else 15,
                                ft_epochs=6 if args.quick else 10)
    out["autolr"]["wall_s"] = time.time() - t
    out["wall_seconds"] = time.time() - t0
    if args.out == RESULTS and args.quick:
        args.out = RESULTS.with_name("pruning_in_training_quick.json")
    atomic_write_json(args.out, out)

    g = out["gradual"]
    print(f"\nGradual pruning to 50% MACs in {g['epochs']} epochs (digits CNN 32-64-64):")
    for k, v in g["acc"].items():
        print(f"  {k:<10}{v:.4f}")
    print("  MACs after / target: " + ", ".join(f"{r['method']}:{r['macs_after']:,}/{r['target']:,}"
                                                for r in g["runs"]))
    h = out["hyperhypo"]
    print(f"\nHyper/hypo on digits rotated {h['rotation_deg']:.0f} deg (target test top-1):")
    for k, v in h["acc"].items():
        print(f"  {k:<34}{v:.4f}")
    a = out["autolr"]
    print(f"\nAutoLR, fine-tuning to digits rotated {a['rotation_deg']:.0f} deg (target test top-1):")
    for k, v in a["acc"].items():
        print(f"  {k:<40}{v:.4f}")
    for name, vs in a["variation"].items():
        print(f"  {name} variation last epoch: " + " | ".join(str(v["last_epoch"]) for v in vs)
              + f"; ascending {[v['last_ascending'] for v in vs]}")
    print(f"wall {out['wall_seconds']:.0f} s -> {args.out}")
    return out


if __name__ == "__main__":
    main()
