"""LEO lossless compression (Serra et al. 2020) on MNIST MLPs trained with and without L1 regularisation.

Run: ``python -m benchmarks.leo [--quick]``

For each L1 weight, a 784-W-W-10 ReLU MLP is trained on MNIST with the torchslim ``Trainer`` (the L1 term
is a callback's ``extra_loss``: ``l1 * sum |W|`` over the Linear weights; weight decay off for both runs).
The input domain is the pixel box [0, 1] (in the normalised units ``mnist()`` serves). Stable units are
counted per layer by interval arithmetic and by MILP (``scipy.optimize.milp``, per-solve time limit; units
seen with both signs on 2,000 training images skip their MILP), the network is compressed, and the
compressed model is checked against the original on the test set (float64 and float32 max |diff|) and on
random points of the box. Paper (Table 1): width 100, L1 5e-4: 30.8% of units removed; width 50, L1 2e-4:
15.1%; qualitatively, L1-trained nets have many more stable units. Writes ``benchmarks/results/leo.json``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

RESULTS = Path(__file__).resolve().parent / "results" / "leo.json"


class L1Penalty:
    """Trainer callback: adds ``weight * sum |W|`` over the model's Linear weights to every step's loss."""

    def __init__(self, weight: float) -> None:
        self.weight = weight

    def extra_loss(self, trainer: object, model: nn.Module) -> torch.Tensor | None:
        if self.weight == 0:
            return None
        norms = [m.weight.abs().sum() for m in model.modules() if isinstance(m, nn.Linear)]
        return self.weight * torch.stack(norms).sum() if norms else None


def _mlp(width: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(784, width),
        nn.ReLU(),
        nn.Linear(width, width),
        nn.ReLU(),
        nn.Linear(width, 10),
    )


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="2 epochs, 5 s per MILP, 40 s MILP budget per net")
    ap.add_argument("--width", type=int, default=100)
    ap.add_argument("--l1", type=float, nargs="+", default=[0.0, 5e-4])
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args(argv)

    from rich.console import Console
    from rich.table import Table

    from torchslim import data
    from torchslim.bench import latency
    from torchslim.core.io import atomic_write_json
    from torchslim.data.datasets import MNIST_MEAN, MNIST_STD
    from torchslim.pruning.leo import LosslessCompress, compress_lossless
    from torchslim.train import TrainConfig, Trainer

    torch.set_num_threads(1)
    console = Console(width=130)
    t0 = time.time()
    train, test = data.mnist("train"), data.mnist("test")
    mean, std = float(torch.tensor(MNIST_MEAN).flatten()[0]), float(torch.tensor(MNIST_STD).flatten()[0])
    lo, hi = (0.0 - mean) / std, (1.0 - mean) / std  # raw pixels in [0, 1], normalised
    epochs = 2 if args.quick else 8
    per_solve, budget = (5.0, 40.0) if args.quick else (5.0, 600.0)
    g = torch.Generator().manual_seed(0)
    samples = train.images[torch.randperm(len(train.images), generator=g)[:2000]]
    x_test, y_test = test.images, test.labels
    box = torch.rand(5000, 1, 28, 28, generator=g) * (hi - lo) + lo

    results: dict[str, Any] = {}
    for l1 in args.l1:
        torch.manual_seed(0)
        net = _mlp(args.width)
        cfg = TrainConfig(epochs=epochs, batch_size=128, lr=0.05, weight_decay=0.0, seed=0)
        t_train = time.time()
        Trainer(net, cfg, callbacks=[L1Penalty(l1)], progress=False).fit(train)
        train_s = time.time() - t_train
        net.eval()
        with torch.no_grad():
            acc = float((net(x_test).argmax(1) == y_test).float().mean())
        entry: dict[str, Any] = {"l1": l1, "test_accuracy": acc, "train_seconds": train_s}
        for method in ("interval", "milp"):
            c = LosslessCompress(
                lower=lo, upper=hi, method=method, time_limit_s=per_solve, total_time_limit_s=budget
            )
            new, rep = compress_lossless(net, c, samples=samples)
            with torch.no_grad():
                d64 = float((new.double()(x_test.double()) - net.double()(x_test.double())).abs().max())
                d64_box = float((new.double()(box.double()) - net.double()(box.double())).abs().max())
                d32 = float((new.float()(x_test) - net.float()(x_test)).abs().max())
                acc_new = float((new.float()(x_test).argmax(1) == y_test).float().mean())
                # reference: the original's own float32 rounding error (vs float64)
                d32_ref = float((net.float()(x_test).double() - net.double()(x_test.double())).abs().max())
            net.float()
            entry[method] = {
                "layers": [
                    {
                        "width": x.width,
                        "stably_inactive": x.stably_inactive,
                        "stably_active": x.stably_active,
                        "kept": x.kept_units,
                        "folded": x.folded,
                    }
                    for x in rep.layers
                ],
                "units_removed": rep.units_removed,
                "units_removed_frac": rep.units_removed / rep.units_before,
                "params_before": rep.params_before,
                "params_after": rep.params_after,
                "seconds": rep.seconds,
                "milp_solves": rep.milp_solves,
                "milp_timeouts": rep.milp_timeouts,
                "milp_skipped_by_samples": rep.milp_skipped_by_samples,
                "lp_solves": rep.lp_solves,
                "max_abs_diff_test_float64": d64,
                "max_abs_diff_box_float64": d64_box,
                "max_abs_diff_test_float32": d32,
                "original_float32_vs_float64_max_abs_diff": d32_ref,
                "compressed_test_accuracy": acc_new,
            }
        results[f"l1={l1:g}"] = entry

    out = {
        "benchmark": "leo",
        "quick": args.quick,
        "model": f"mlp 784-{args.width}-{args.width}-10",
        "dataset": "mnist",
        "epochs": epochs,
        "input_box_normalised": [lo, hi],
        "milp_time_limit_per_solve_s": per_solve,
        "milp_total_budget_s": budget,
        "threads": 1,
        "paper_claim": "Table 1: width 100, L1 5e-4 -> 30.8% units removed (97.14% acc); L1 creates more stable units",
        "results": results,
        "wall_seconds": time.time() - t0,
        "environment": latency.environment(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.out, out)

    table = Table(
        title=f"LEO on MNIST 784-{args.width}-{args.width}-10, {epochs} epochs, box = pixels in [0,1]"
    )
    for col in (
        "L1",
        "acc",
        "method",
        "inactive (l1/l2)",
        "active (l1/l2)",
        "removed",
        "params",
        "max|d| f64",
        "max|d| f32",
        "s",
    ):
        table.add_column(col, justify="right", no_wrap=True)
    for entry in results.values():
        for method in ("interval", "milp"):
            r = entry[method]
            ls = r["layers"]
            table.add_row(
                f"{entry['l1']:g}",
                f"{100 * entry['test_accuracy']:.2f}%",
                method,
                "/".join(str(x["stably_inactive"]) for x in ls),
                "/".join(str(x["stably_active"]) for x in ls),
                f"{r['units_removed']} ({100 * r['units_removed_frac']:.1f}%)",
                f"{r['params_before']}->{r['params_after']}",
                f"{r['max_abs_diff_test_float64']:.1e}",
                f"{r['max_abs_diff_test_float32']:.1e}",
                f"{r['seconds']:.1f}",
            )
    console.print(table)
    console.print(f"wrote {args.out} in {out['wall_seconds']:.0f}s")
    return out


if __name__ == "__main__":
    main()
