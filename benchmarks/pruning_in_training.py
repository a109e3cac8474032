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
mean activation), then target (rotated test) accuracy. Adaptation on the unlabelled rotated training images
(entropy minimisation, or cross-entropy against the unadapted model's predictions = pseudo-labels; BatchNorm
statistics frozen): only the hyper/hypo neurons vs the whole FC layers (same epochs, LR), each followed by
full-network unsupervised fine-tuning (the paper's order), vs blind full-network adaptation for the same
total epochs.

Part 3, AutoLR (PAPERS #41). A digits ResNet (16/32/64, blocks 1/1/2) trained on upright digits, then
fine-tuned on rotated digits (labelled) with one LR vs AutoLR (per-layer LRs re-tuned, with epoch roll-back,
until the per-weight variation is ascending; at most 3 trainings of an epoch), same accepted epochs; the
full mode also gives single LR the epochs AutoLR spent. Then the last stage-3 block is dropped (replaced by
identity) before AutoLR fine-tuning, and separately from the fine-tuned model without retraining; the
low-variation drop candidates (single-LR variation below the mean of the layers under them) are reported.

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
        finetune_network,
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
        unl = TensorDataset(tgt_train.tensors[0])
        for loss in ("entropy", "pseudo_label"):
            sfx = "" if loss == "entropy" else "_pseudo"
            ac = AdaptConfig(train=TrainConfig(epochs=adapt_epochs, batch_size=64, lr=0.01, schedule="constant",
                                               seed=s), loss=loss)
            ac2 = ac.model_copy(update={"train": ac.train.model_copy(update={"epochs": 2 * adapt_epochs})})
            for name, kw in (("adapt_hyperhypo", {"neurons": pick}), ("adapt_whole_layers", {"layers": layers})):
                mm = copy.deepcopy(m)
                adapt_neurons(mm, unl, ac, **kw)  # type: ignore[arg-type]
                rows.setdefault(name + sfx, []).append(top1(mm.eval(), tgt_test))
                # the paper's second stage: full-network unsupervised fine-tuning (same epochs again)
                finetune_network(mm, unl, ac)
                rows.setdefault(name + "_then_full" + sfx, []).append(top1(mm.eval(), tgt_test))
            mm = copy.deepcopy(m)  # blind adaptation of the whole network, same total epochs
            finetune_network(mm, unl, ac2)
            rows.setdefault("blind_full_network" + sfx, []).append(top1(mm.eval(), tgt_test))
    return {"rotation_deg": ROT, "ks": ks, "acc": {k: _mean(v) for k, v in rows.items()}, "acc_seeds": rows,
            "classes_at_0.95_0.05": classes, "adapt_k": ks[-1]}


def part_autolr(train: TensorDataset, test: TensorDataset, seeds: list[int], epochs: int, ft_epochs: int,
                max_trials: int, same_compute: bool) -> dict[str, Any]:
    from torchslim.bench.accuracy import top1
    from torchslim.pruning.autolr import (
        AutoLRConfig,
        autolr_finetune,
        choose_drops,
        drop_layers_,
        is_ascending,
        low_variation_layers,
        sorting_score,
    )
    from torchslim.train import TrainConfig, Trainer
    from torchslim.zoo.resnet import ResNet

    tgt_train, tgt_test = rotated(train, 45.0), rotated(test, 45.0)
    x1 = train.tensors[0][:1]
    # tuned layers; the stem is tied to 0.5 x layer1.0's LR and not scored, the classifier keeps the base LR
    # (both as in the reference code)
    layers = ["stem", "layer1.0", "layer2.0", "layer3.0", "layer3.1"]
    ft = TrainConfig(epochs=ft_epochs, batch_size=64, lr=0.01, schedule="constant", weight_decay=0.0)
    rows: dict[str, list[float]] = {}
    var: dict[str, list[Any]] = {"single": [], "autolr": []}
    extra: dict[str, list[Any]] = {"multipliers": [], "epochs_trained": [], "trials_per_epoch": [],
                                   "drop_candidates": [], "drops_kept": []}
    for s in seeds:
        torch.manual_seed(s)
        pre = ResNet(widths=(16, 32, 64), blocks=(1, 1, 2), strides=(1, 2, 2), stem_stride=1)
        Trainer(pre, TrainConfig(epochs=epochs, batch_size=64, lr=0.05, seed=s), progress=False).fit(train)
        rows.setdefault("pretrained_source", []).append(top1(pre.eval(), test))
        rows.setdefault("pretrained_target", []).append(top1(pre.eval(), tgt_test))
        fts = ft.model_copy(update={"seed": s})
        single_var: dict[str, float] = {}
        for name, tune in (("single", False), ("autolr", True)):
            m = copy.deepcopy(pre)
            r = autolr_finetune(m, tgt_train, AutoLRConfig(train=fts, layers=layers, tune=tune,
                                                           max_trials=max_trials, first_layer_factor=0.5))
            rows.setdefault(name, []).append(top1(m.eval(), tgt_test))
            scored = r.last_variation[1:]  # without the stem
            var[name].append({"last_epoch": [float(f"{v:.4g}") for v in r.last_variation],
                              "total": [float(f"{r.total_variation[p]:.4g}") for p in layers],
                              "last_score": sorting_score(scored),
                              "last_ascending": is_ascending(scored),
                              "total_ascending": is_ascending([r.total_variation[p] for p in layers[1:]])})
            if not tune:
                single_var = r.total_variation
                continue
            extra["multipliers"].append({p: round(v, 4) for p, v in r.multipliers.items()})
            extra["epochs_trained"].append(r.epochs_trained)
            extra["trials_per_epoch"].append([h["trials"] for h in r.history])
            # layer pruning: top blocks that barely moved under single-LR fine-tuning, kept only while the
            # (target-train) accuracy stays within 0.5 pt
            cands = low_variation_layers(single_var, layers, droppable=["layer3.1", "layer1.0"])
            kept, _ = choose_drops(m, cands, lambda mm: top1(mm.eval(), tgt_train), (x1,), tolerance=0.005)
            extra["drop_candidates"].append(cands)
            extra["drops_kept"].append(kept)
            dropped = copy.deepcopy(m)
            drop_layers_(dropped, ["layer3.1"], (x1,))
            rows.setdefault("autolr_then_drop_last_block_no_retrain", []).append(top1(dropped.eval(), tgt_test))
            if same_compute:  # single LR given the epochs AutoLR spent (re-trials included)
                m2 = copy.deepcopy(pre)
                autolr_finetune(m2, tgt_train, AutoLRConfig(
                    train=fts.model_copy(update={"epochs": r.epochs_trained}), layers=layers, tune=False))
                rows.setdefault("single_same_epochs_as_autolr", []).append(top1(m2.eval(), tgt_test))
        m = copy.deepcopy(pre)
        drop_layers_(m, ["layer3.1"], (x1,))
        autolr_finetune(m, tgt_train, AutoLRConfig(train=fts, layers=[p for p in layers if p != "layer3.1"],
                                                   max_trials=max_trials, first_layer_factor=0.5))
        rows.setdefault("drop_last_block_then_autolr", []).append(top1(m.eval(), tgt_test))
    return {"rotation_deg": 45.0, "layers": layers, "max_trials": max_trials,
            "acc": {k: _mean(v) for k, v in rows.items()}, "acc_seeds": rows, "variation": var, **extra}


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
                                ft_epochs=6 if args.quick else 10, max_trials=3, same_compute=not args.quick)
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
    print(f"  AutoLR epochs trained {a['epochs_trained']}, trials per epoch {a['trials_per_epoch']}, "
          f"drop candidates {a['drop_candidates']}, kept {a['drops_kept']}")
    print(f"wall {out['wall_seconds']:.0f} s -> {args.out}")
    return out


if __name__ == "__main__":
    main()
