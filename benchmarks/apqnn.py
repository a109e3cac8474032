"""APQNN (PAPERS #6 / #35): per-layer pruning ratios of a binary digits CNN by Bayesian optimisation.

Run: ``python -m benchmarks.apqnn [--quick] [--threads N] [--precision binary|dorefa]``

Data: scikit-learn's 8x8 digits, the fixed 1,397 / 400 split of ``benchmarks.pruning_methods``; the last 297
training images are held out as the search's validation set (the search never sees the test set), the
other 1,100 train the parent and fine-tune every pruned model.

Parent: :func:`torchslim.pruning.apqnn.quant_cnn` (32-64-64 channels; full-precision stem conv and
classifier; binary weights and activations in the two inner convs with the STE), trained with AdamW.

Methods, all at the same size budget (``size_ratio`` of the parent's size in bits, counted by
:func:`~torchslim.pruning.apqnn.size_bits`) and all pruning filters by the APQNN redundancy criterion:

* ``bo_gp``: optuna GPSampler (Gaussian-process BO, the paper's surrogate) over the per-group direction;
* ``random``: optuna RandomSampler, the same number of trials and the same objective;
* ``uniform``: the same ratio in every group (the smallest that fits the budget);
* ``uniform_random_filters``: uniform widths, but random filters removed (criterion ablation).

Each search seed runs both searches with that sampler seed; every pruned model then gets the SAME
fine-tuning (epochs, LR, cosine schedule, data, seed). Reported per method: widths, size in bits, test
top-1 before and after fine-tuning, mean over seeds. Writes ``benchmarks/results/apqnn.json``
(``apqnn_quick.json`` with --quick). No latency is measured.
"""

from __future__ import annotations

import argparse
import copy
import time
from pathlib import Path
from typing import Any, Literal

import torch
from torch.utils.data import TensorDataset

from benchmarks.pruning_methods import _mean, digits_split

RESULTS = Path(__file__).resolve().parent / "results" / "apqnn.json"


def _batches(ds: TensorDataset, bs: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    x, y = ds.tensors
    return [(x[i:i + bs], y[i:i + bs]) for i in range(0, len(y), bs)]


def run(quick: bool, precision: str = "binary", size_ratio: float = 0.5) -> dict[str, Any]:
    from torchslim.bench.accuracy import top1
    from torchslim.pruning.apqnn import (
        APQNNSearch,
        prune_quantized_,
        quant_cnn,
        search_ratios,
        size_bits,
        uniform_widths,
    )
    from torchslim.train import TrainConfig, Trainer

    full_train, test = digits_split()
    x, y = full_train.tensors
    train, val = TensorDataset(x[:-297], y[:-297]), TensorDataset(x[-297:], y[-297:])
    seeds = [0, 1, 2]
    epochs, ft_epochs = (12, 4) if quick else (30, 10)
    n_trials = 20 if quick else 40
    bits = 1 if precision == "binary" else 2

    torch.manual_seed(0)
    parent = quant_cnn((32, 64, 64), precision=precision, bits=bits)  # type: ignore[arg-type]
    t0 = time.time()
    Trainer(parent, TrainConfig(epochs=epochs, batch_size=64, lr=0.01, optimizer="adamw", weight_decay=0.0,
                                schedule="cosine", seed=0), progress=False).fit(train)
    parent.eval()
    x1 = x[:1]
    out: dict[str, Any] = {
        "precision": precision, "bits": bits, "quick": quick, "seeds": seeds, "epochs": epochs,
        "ft_epochs": ft_epochs, "n_trials": n_trials, "size_ratio": size_ratio,
        "parent_acc": top1(parent, test), "parent_size_bits": size_bits(parent), "parent_train_s": time.time() - t0,
    }
    print(f"parent ({precision}): test top-1 {out['parent_acc']:.4f}, {out['parent_size_bits']} bits, "
          f"{out['parent_train_s']:.0f} s")
    ft = TrainConfig(epochs=ft_epochs, batch_size=64, lr=0.003, optimizer="adamw", weight_decay=0.0,
                     schedule="cosine")
    tr_b, val_b = _batches(train, 128), _batches(val, 297)

    def finetune(widths: dict[str, int] | None, keep: dict[str, Any] | None, seed: int) -> dict[str, Any]:
        m = copy.deepcopy(parent)
        prune_quantized_(m, (x1,), widths=widths, keep=keep)
        row = {"size_bits": size_bits(m), "acc_before_ft": top1(m.eval(), test)}
        Trainer(m, ft.model_copy(update={"seed": seed}), progress=False).fit(train)
        row["acc"] = top1(m.eval(), test)
        return row

    per_seed: list[dict[str, Any]] = []
    u_widths = uniform_widths(parent, (x1,), size_ratio)
    for s in seeds:
        res: dict[str, Any] = {"seed": s}
        samplers: tuple[tuple[str, Literal["gp", "random"]], ...] = (("bo_gp", "gp"), ("random", "random"))
        for name, sampler in samplers:
            t = time.time()
            sr = search_ratios(parent, APQNNSearch(size_ratio=size_ratio, n_trials=n_trials, sampler=sampler,
                                                   seed=s), (x1,), tr_b, val_b)
            row = finetune(sr.widths, None, s)
            row.update(widths=sr.widths, search_val=sr.value, search_s=time.time() - t,
                       feasible_trials=sum(r["feasible"] for r in sr.trials),
                       best_val_curve=_curve(sr.trials))
            res[name] = row
        row = finetune(u_widths, None, s)
        row["widths"] = u_widths
        res["uniform"] = row
        g = torch.Generator().manual_seed(1000 + s)
        chans = {n: int(getattr(parent.get_submodule(n), "out_channels")) for n in u_widths}  # noqa: B009
        rnd_keep = {n: torch.randperm(chans[n], generator=g)[:w] for n, w in u_widths.items() if w < chans[n]}
        row = finetune(None, rnd_keep, s)
        row["widths"] = u_widths
        res["uniform_random_filters"] = row
        per_seed.append(res)
        print(f"seed {s}: " + ", ".join(f"{k} {res[k]['acc']:.4f}" for k in res if k != "seed"))
    methods = ["bo_gp", "random", "uniform", "uniform_random_filters"]
    out["per_seed"] = per_seed
    out["summary"] = {
        k: {"acc": _mean([r[k]["acc"] for r in per_seed]), "acc_before_ft": _mean([r[k]["acc_before_ft"]
                                                                                  for r in per_seed]),
            "size_bits": _mean([r[k]["size_bits"] for r in per_seed])} for k in methods}
    out["budget_bits"] = int(size_ratio * out["parent_size_bits"])
    return out


def _curve(trials: list[dict[str, Any]]) -> list[float]:
    best, out = -1.0, []
    for r in trials:
        best = max(best, float(r["value"]))
        out.append(best)
    return out


def main(argv: list[str] | None = None) -> None:
    from torchslim.core.io import atomic_write_text

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--precision", choices=("binary", "dorefa"), default="binary")
    ap.add_argument("--size-ratio", type=float, default=0.5, help="size budget as a fraction of the parent's bits")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    t = time.time()
    out = run(a.quick, a.precision, a.size_ratio)
    out["wall_s"] = time.time() - t
    print(f"\nparent {out['parent_acc']:.4f} at {out['parent_size_bits']} bits; budget {out['budget_bits']} bits")
    print(f"{'method':<24}{'size bits':>10}{'before ft':>11}{'after ft':>10}")
    for k, v in out["summary"].items():
        print(f"{k:<24}{v['size_bits']:>10.0f}{v['acc_before_ft']:>11.4f}{v['acc']:>10.4f}")
    print(f"wall {out['wall_s']:.0f} s")
    import json

    suffix = "" if not a.quick else "_quick"
    suffix += "" if a.precision == "binary" else f"_{a.precision}"
    suffix += "" if a.size_ratio == 0.5 else f"_s{round(100 * a.size_ratio)}"
    path = RESULTS.with_name(f"apqnn{suffix}.json")
    atomic_write_text(path, json.dumps(out, indent=2))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()

