"""Low-bit weight-only PTQ on the Fashion-MNIST ResNet: uniform vs PWLQ vs multi-point (and LSQ-binary at W2).

Run: ``python -m benchmarks.low_bit_weights [--quick]``

Weight-only fake quantisation of every Conv2d/Linear weight (BatchNorm not folded, biases and activations
stay float32: this measures weight quantisation alone). Per output channel throughout.

Bit accounting (bits stored per weight; per-channel float scales / breakpoints are excluded, they add
32-96 bits per output channel, i.e. < 1% for fan-in >= 288 and ~11-33% for the 1x1 / 9-weight stem layers):

* ``uniform_sym``: b-bit symmetric on [-m, m] (2^b - 1 levels) -- b bits; PWLQ's baseline in its paper;
* ``uniform_asym``: b-bit asymmetric min-max (2^b levels) -- b bits;
* ``pwlq``: 1 region bit + sign + (b - 2) magnitude bits -- b bits;
* ``multipoint_1.25``: b-bit points, mean 1.25 points per channel (the paper's setting) -- 1.25 b bits;
* ``multipoint_eqbits``: (b - 1)-bit points, mean b / (b - 1) points per channel -- b bits (equal storage);
* W2 only: ``lsbq_2bit`` (least-squares optimal 2-bit binary), ``greedy_2bit`` -- 2 bits.

Multi-point allocation uses the output-error criterion on 256 calibration images from the train split;
accuracy is measured on the test split (never used for calibration).

Second part, **W4A8 and W4A4 at equal weight size** (4 bits stored per weight): BatchNorm folded first,
the weights quantised by each method (per output channel), then 8-bit or 4-bit per-tensor activation
fake-quant at every quantised layer's input/output (``quantize_static`` graph, MSE-optimal ranges calibrated
on the same 256 images *after* weight quantisation; its own int8 weight quantiser is disabled so the method's
weights are used as they are). Methods: ``uniform_sym``, ``uniform_asym``, ``pwlq``, ``multipoint_eqbits``
and ``zeroq_mixed`` (ZeroQ: per-layer KL sensitivity on distilled data, Pareto-DP choice of 2/4/8-bit
per-channel symmetric weights under the size of uniform 4-bit). Writes
``benchmarks/results/low_bit_weights.json``.
"""

from __future__ import annotations

import argparse
import copy
import platform
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

RESULTS = Path(__file__).resolve().parent / "results" / "low_bit_weights.json"


def _layers(model: nn.Module) -> dict[str, nn.Module]:
    return {n: m for n, m in model.named_modules() if isinstance(m, nn.Conv2d | nn.Linear)}


def _weight_sqnr(ref: nn.Module, q: nn.Module) -> float:
    """SQNR over all Conv2d/Linear weights of the model together."""
    from torchslim.quantization.primitives import sqnr_db

    ql = _layers(q)
    pairs = [
        (m.weight.detach().flatten(), ql[n].weight.detach().flatten())  # type: ignore[operator]
        for n, m in _layers(ref).items()
    ]
    return sqnr_db(torch.cat([a for a, _ in pairs]), torch.cat([b for _, b in pairs]))  # type: ignore[arg-type]


@torch.no_grad()
def _logits(model: nn.Module, x: Tensor, batch: int = 500) -> Tensor:
    model.eval()
    return torch.cat([model(x[i : i + batch]) for i in range(0, len(x), batch)])


def _act_ordering(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Per activation width: methods ranked by accuracy, and the papers' claims checked."""
    out: dict[str, Any] = {}
    for a in sorted({r["act_bits"] for r in rows}):
        acc = {r["method"]: r["accuracy"] for r in rows if r["act_bits"] == a}
        best_uniform = max(acc["uniform_sym"], acc["uniform_asym"])
        out[f"W4A{a}"] = {
            "ranking": sorted(acc, key=lambda k: -acc[k]),
            "pwlq_beats_best_uniform": acc["pwlq"] > best_uniform,
            "multipoint_eqbits_beats_best_uniform": acc["multipoint_eqbits"] > best_uniform,
            "zeroq_mixed_beats_best_uniform": acc["zeroq_mixed"] > best_uniform,
        }
    return out


def _weight_act_rows(
    base: nn.Module, calib: Tensor, x_test: Tensor, y_test: Tensor, ref_pred: Tensor, quick: bool
) -> list[dict[str, Any]]:
    """W4A8 / W4A4 at equal weight size: each weight method, then per-tensor activation fake-quant."""
    from torchslim.bench.peers import fold_batchnorm_eager
    from torchslim.quantization import StaticPTQ, quantize_static
    from torchslim.quantization.formats import IntFormat, int_quantize
    from torchslim.quantization.ptq import PWLQ, MultiPoint, apply_multipoint, apply_pwlq
    from torchslim.quantization.ptq.zeroq import distill_data, layer_sensitivity, mixed_precision, set_bits
    from torchslim.quantization.static import WeightQuantWrapper

    folded = fold_batchnorm_eager(base)
    t = time.time()
    n_distill, iters = (64, 50) if quick else (128, 200)
    distilled = distill_data(base, num_samples=n_distill, input_shape=(1, 28, 28), iterations=iters, lr=0.2)
    sens = layer_sensitivity(base, distilled, bits=(2, 4, 8))
    zq_bits = mixed_precision(sens, base, 4.0)
    zq_s = time.time() - t

    def per_channel(bits_of: Callable[[str], int], symmetric: bool = True) -> Callable[[nn.Module], None]:
        def fn(m: nn.Module) -> None:
            with torch.no_grad():
                for name, mod in _layers(m).items():
                    w = mod.weight
                    assert isinstance(w, Tensor)
                    w.copy_(int_quantize(w.detach(), IntFormat(bits_of(name)), symmetric=symmetric, axis=0))

        return fn

    methods: dict[str, Callable[[nn.Module], Any]] = {
        "uniform_sym": per_channel(lambda _n: 4),
        "uniform_asym": per_channel(lambda _n: 4, symmetric=False),
        "pwlq": lambda m: apply_pwlq(m, PWLQ(bits=4)),
        "multipoint_eqbits": lambda m: apply_multipoint(
            m, MultiPoint(bits=3, mean_points=4 / 3), calibration=list(calib.split(64))
        ),
        "zeroq_mixed": per_channel(lambda n: zq_bits[n]),
    }
    rows: list[dict[str, Any]] = []
    for name, fn in methods.items():
        m = copy.deepcopy(folded)
        fn(m)
        q8 = quantize_static(m, StaticPTQ(num_calibration=len(calib), calibrator="mse", reduce_range=False), calib,
                             progress=False)
        for a in (8, 4):
            q = set_bits(q8, 8, a)
            for mod in q.sim.modules():
                if isinstance(mod, WeightQuantWrapper):
                    mod.enabled = False  # keep the method's weights exactly
            pred = _logits(q.sim, x_test).argmax(1)
            rows.append(
                {
                    "method": name,
                    "weight_bits": 4,
                    "act_bits": a,
                    "accuracy": float((pred == y_test).float().mean()),
                    "top1_agreement_fp32": float((pred == ref_pred).float().mean()),
                }
            )
    for r in rows:
        if r["method"] == "zeroq_mixed":
            r["zeroq_bits"] = zq_bits
            r["zeroq_distill"] = {"samples": n_distill, "iterations": iters, "seconds_contaminated": zq_s}
    return rows


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="2,000 test images instead of 10,000")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args(argv)

    from rich.console import Console
    from rich.table import Table

    from torchslim import data, zoo
    from torchslim.core.io import atomic_write_json
    from torchslim.quantization.binary import LSBQ, apply_lsbq
    from torchslim.quantization.formats import IntFormat, int_quantize
    from torchslim.quantization.ptq import PWLQ, MultiPoint, apply_multipoint, apply_pwlq

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    t0 = time.time()
    base = zoo.load("resnet-fmnist").eval()
    train, test = data.fashion_mnist("train"), data.fashion_mnist("test")
    g = torch.Generator().manual_seed(0)
    calib = train.images[torch.randperm(len(train.images), generator=g)[:256]].contiguous()
    n_test = 2000 if args.quick else len(test.images)
    x_test, y_test = test.images[:n_test].contiguous(), test.labels[:n_test]
    ref_logits = _logits(base, x_test)
    ref_pred = ref_logits.argmax(1)

    def uniform(symmetric: bool, bits: int) -> Callable[[nn.Module], None]:
        def fn(m: nn.Module) -> None:
            with torch.no_grad():
                for mod in _layers(m).values():
                    w = mod.weight
                    assert isinstance(w, Tensor)
                    w.copy_(int_quantize(w.detach(), IntFormat(bits), symmetric=symmetric, axis=0))

        return fn

    def calib_batches() -> list[Tensor]:
        return list(calib.split(64))

    def pwlq_fn(bits: int) -> Callable[[nn.Module], Any]:
        return lambda m: apply_pwlq(m, PWLQ(bits=bits))

    def multipoint_fn(bits: int, mean_points: float) -> Callable[[nn.Module], Any]:
        return lambda m: apply_multipoint(
            m, MultiPoint(bits=bits, mean_points=mean_points), calibration=calib_batches()
        )

    variants: list[tuple[int, str, float, Callable[[nn.Module], Any]]] = []
    for b in (4, 3):
        variants += [
            (b, "uniform_sym", b, uniform(True, b)),
            (b, "uniform_asym", b, uniform(False, b)),
            (b, "pwlq", b, pwlq_fn(b)),
            (b, "multipoint_1.25", 1.25 * b, multipoint_fn(b, 1.25)),
            (b, "multipoint_eqbits", float(b), multipoint_fn(b - 1, b / (b - 1))),
        ]
    variants += [
        (2, "uniform_sym", 2, uniform(True, 2)),
        (2, "uniform_asym", 2, uniform(False, 2)),
        (2, "lsbq_2bit", 2, lambda m: apply_lsbq(m, LSBQ(scheme="2bit"))),
        (2, "greedy_2bit", 2, lambda m: apply_lsbq(m, LSBQ(scheme="greedy", bits=2))),
    ]

    fp_acc = float((ref_pred == y_test).float().mean())
    rows: list[dict[str, Any]] = []
    for wbits, name, stored_bits, fn in variants:
        m = copy.deepcopy(base)
        tq = time.time()
        rep = fn(m)
        q_s = time.time() - tq
        logits = _logits(m, x_test)
        pred = logits.argmax(1)
        row: dict[str, Any] = {
            "weight_bits": wbits,
            "method": name,
            "stored_bits_per_weight": stored_bits,
            "accuracy": float((pred == y_test).float().mean()),
            "top1_agreement_fp32": float((pred == ref_pred).float().mean()),
            "weight_sqnr_db": _weight_sqnr(base, m),
            "quantize_seconds": q_s,
        }
        if isinstance(rep, dict) and name.startswith("multipoint"):
            row["measured_bits_per_weight"] = sum(
                r["bits_per_weight"] * r["numel"] for r in rep.values()
            ) / sum(r["numel"] for r in rep.values())
        rows.append(row)

    act_rows = _weight_act_rows(base, calib, x_test, y_test, ref_pred, quick=args.quick)

    def get(b: int, meth: str) -> dict[str, Any]:
        return next(r for r in rows if r["weight_bits"] == b and r["method"] == meth)

    ordering = {}
    for b in (4, 3):
        ordering[f"W{b}"] = {
            "pwlq_beats_uniform_sym_sqnr": get(b, "pwlq")["weight_sqnr_db"]
            > get(b, "uniform_sym")["weight_sqnr_db"],
            "pwlq_beats_uniform_asym_sqnr": get(b, "pwlq")["weight_sqnr_db"]
            > get(b, "uniform_asym")["weight_sqnr_db"],
            "pwlq_acc_minus_uniform_sym": get(b, "pwlq")["accuracy"] - get(b, "uniform_sym")["accuracy"],
            "pwlq_acc_minus_uniform_asym": get(b, "pwlq")["accuracy"] - get(b, "uniform_asym")["accuracy"],
            "multipoint_1.25_acc_minus_best_uniform": get(b, "multipoint_1.25")["accuracy"]
            - max(get(b, "uniform_sym")["accuracy"], get(b, "uniform_asym")["accuracy"]),
            "multipoint_eqbits_acc_minus_best_uniform": get(b, "multipoint_eqbits")["accuracy"]
            - max(get(b, "uniform_sym")["accuracy"], get(b, "uniform_asym")["accuracy"]),
        }
    ordering["W2"] = {
        "lsbq_2bit_sqnr_minus_greedy": get(2, "lsbq_2bit")["weight_sqnr_db"]
        - get(2, "greedy_2bit")["weight_sqnr_db"],
        "lsbq_2bit_acc_minus_greedy": get(2, "lsbq_2bit")["accuracy"] - get(2, "greedy_2bit")["accuracy"],
    }
    out = {
        "benchmark": "low_bit_weights",
        "quick": args.quick,
        "model": "resnet-fmnist",
        "dataset": getattr(test, "name", "fashion_mnist"),
        "n_test": n_test,
        "n_calibration": len(calib),
        "scope": "weight-only fake quantisation of all Conv2d/Linear weights, per output channel; "
        "activations, biases and BatchNorm float32 (BN not folded)",
        "bit_accounting": "bits stored per weight, per-channel float scales/breakpoints excluded",
        "fp32_accuracy": fp_acc,
        "variants": rows,
        "ordering": ordering,
        "weight_and_activation": act_rows,
        "weight_and_activation_ordering": _act_ordering(act_rows),
        "threads": args.threads,
        "wall_seconds": time.time() - t0,
        "versions": {"torch": torch.__version__, "python": platform.python_version()},
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor(),
            "cpus": torch.get_num_threads(),
        },
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.out, out)

    table = Table(
        title=f"weight-only PTQ, resnet-fmnist, {n_test} test images, FP32 {fp_acc:.4f} (activations float)"
    )
    for col in ("W", "method", "bits/weight", "accuracy", "agree FP32", "weight SQNR dB"):
        table.add_column(col, justify="left" if col == "method" else "right")
    for r in rows:
        table.add_row(
            str(r["weight_bits"]),
            r["method"],
            f"{r.get('measured_bits_per_weight', r['stored_bits_per_weight']):.2f}",
            f"{r['accuracy']:.4f}",
            f"{r['top1_agreement_fp32']:.4f}",
            f"{r['weight_sqnr_db']:.2f}",
        )
    Console(width=120).print(table)
    t2 = Table(title="W4A8 / W4A4 at equal weight size (4 bits/weight), per-tensor activations, BN folded")
    for col in ("method", "A", "accuracy", "agree FP32"):
        t2.add_column(col, justify="left" if col == "method" else "right")
    for r in act_rows:
        t2.add_row(r["method"], str(r["act_bits"]), f"{r['accuracy']:.4f}", f"{r['top1_agreement_fp32']:.4f}")
    Console(width=120).print(t2)
    return out


if __name__ == "__main__":
    main()
