"""ZeroQ data-free quantisation on the Fashion-MNIST ResNet: real vs distilled vs Gaussian calibration.

Run: ``python -m benchmarks.zeroq [--quick]``

Calibration sets: (a) 512 real training images, (b) ZeroQ distilled data (BN-statistics matching, from
the model alone), (c) Gaussian noise N(0, 1) (as many samples as (b)). For each: W8A8 and W4A4 static PTQ
simulations (min-max ranges; W4A4 also with the MSE-optimal histogram calibrator), accuracy on the test
split. Also: ZeroQ per-layer KL sensitivity from (b) vs from real images (Spearman rank correlation), and
Pareto-DP mixed-precision weights (2/4/8 bits, total weight bits <= uniform 4-bit) vs uniform 4-bit
weights, both with 8-bit activations calibrated on (b); plus DFQ data-free bias correction on uniform W4A8.
Writes ``benchmarks/results/zeroq.json`` (``zeroq_quick.json`` with ``--quick``). Accuracy figures are
deterministic; the seconds reported are wall time on a shared machine (contaminated by other load).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import torch

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def _acc(model: Any, x: torch.Tensor, y: torch.Tensor, batch: int = 500) -> float:
    correct = 0
    with torch.no_grad():
        for i in range(0, x.shape[0], batch):
            correct += int((model(x[i : i + batch]).argmax(-1) == y[i : i + batch]).sum())
    return 100.0 * correct / x.shape[0]


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="2,000 test images, 64 distilled samples x 100 steps")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)

    from scipy.stats import spearmanr

    from torchslim import data, zoo
    from torchslim.bench import latency
    from torchslim.core.io import atomic_write_json
    from torchslim.quantization.ptq.bias_correction import correct_bias, input_means_from_bn
    from torchslim.quantization.ptq.zeroq import (
        distill_data,
        layer_sensitivity,
        mixed_precision,
        quantizable_layers,
        quantize_lowbit,
        set_bits,
    )

    t0 = time.time()
    model = zoo.load("resnet-fmnist", progress=False).eval()
    train, test = data.fashion_mnist("train"), data.fashion_mnist("test")
    n_test = 2000 if args.quick else len(test.images)
    xt, yt = test.images[:n_test], test.labels[:n_test]
    n_distill, iters = (64, 100) if args.quick else (256, 300)
    g = torch.Generator().manual_seed(0)
    real = train.images[torch.randperm(len(train.images), generator=g)[:512]]

    t = time.time()
    distilled = distill_data(model, num_samples=n_distill, input_shape=(1, 28, 28), iterations=iters, lr=0.2,
                             batch_size=64, seed=0)
    distill_s = time.time() - t
    noise = torch.randn(n_distill, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    calib = {"real": real, "zeroq": distilled, "gaussian": noise}

    fp32 = _acc(model, xt, yt)
    acc: dict[str, dict[str, float]] = {}
    base_q: dict[str, Any] = {}
    for name, c in calib.items():
        q8 = quantize_lowbit(model, c, 8, 8)
        base_q[name] = q8
        acc[name] = {"W8A8": _acc(q8, xt, yt), "W4A4": _acc(set_bits(q8, 4, 4), xt, yt)}
        acc[name]["W4A4_mse"] = _acc(quantize_lowbit(model, c, 4, 4, calibrator="mse"), xt, yt)

    # ZeroQ sensitivity: distilled vs real (same number of samples)
    n_s = 64
    sens_d = layer_sensitivity(model, distilled[:n_s], bits=(2, 4, 8))
    sens_r = layer_sensitivity(model, real[:n_s], bits=(2, 4, 8))
    layers = list(sens_d)
    rho = {}
    for k in (2, 4, 8):
        rho[f"{k}bit"] = float(spearmanr([sens_d[n][k] for n in layers], [sens_r[n][k] for n in layers])[0])
    rho["all"] = float(
        spearmanr([sens_d[n][k] for n in layers for k in (2, 4, 8)], [sens_r[n][k] for n in layers for k in (2, 4, 8)])[0]
    )

    # Pareto mixed precision at the size of uniform 4-bit weights (activations 8-bit, calibrated on distilled)
    mp_bits = mixed_precision(sens_d, model, budget_bits=4.0)
    mp_bits_real = mixed_precision(sens_r, model, budget_bits=4.0)
    qd = base_q["zeroq"]
    numel = {n: int(torch.as_tensor(m.weight).numel()) for n, m in quantizable_layers(model).items()}
    mp = {
        "uniform_W4A8": _acc(set_bits(qd, 4, 8), xt, yt),
        "pareto_W4mixA8_zeroq_sens": _acc(set_bits(qd, mp_bits, 8), xt, yt),
        "pareto_W4mixA8_real_sens": _acc(set_bits(qd, mp_bits_real, 8), xt, yt),
        "uniform_W4A8_bias_corrected_bn": _acc(correct_bias(set_bits(qd, 4, 8), input_means_from_bn(model)), xt, yt),
        "avg_bits_mixed": sum(numel[n] * b for n, b in mp_bits.items()) / sum(numel.values()),
        "bits_zeroq_sens": mp_bits,
        "bits_real_sens": mp_bits_real,
    }

    out = {
        "benchmark": "zeroq",
        "quick": args.quick,
        "model": "resnet-fmnist",
        "dataset": getattr(test, "name", "fashion_mnist"),
        "n_test": n_test,
        "n_real_calibration": int(real.shape[0]),
        "n_distilled": n_distill,
        "distill_iterations": iters,
        "distill_seconds_contaminated": distill_s,
        "fp32_accuracy": fp32,
        "accuracy": acc,
        "sensitivity_spearman_distilled_vs_real": rho,
        "sensitivity_distilled": sens_d,
        "sensitivity_real": sens_r,
        "mixed_precision": mp,
        "threads": 1,
        "wall_seconds": time.time() - t0,
        "environment": latency.environment(),
    }
    path = args.out or RESULTS_DIR / ("zeroq_quick.json" if args.quick else "zeroq.json")
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, out)

    print(f"ZeroQ on resnet-fmnist, {n_test} test images; FP32 {fp32:.2f}%")
    print(f"{'calibration':<12}{'W8A8':>8}{'W4A4':>8}{'W4A4 mse':>10}")
    for name, r in acc.items():
        print(f"{name:<12}{r['W8A8']:>8.2f}{r['W4A4']:>8.2f}{r['W4A4_mse']:>10.2f}")
    print("sensitivity Spearman (distilled vs real):", {k: round(v, 3) for k, v in rho.items()})
    print(
        f"W4A8 uniform {mp['uniform_W4A8']:.2f}% | Pareto mixed (ZeroQ sens, avg {mp['avg_bits_mixed']:.2f} bits) "
        f"{mp['pareto_W4mixA8_zeroq_sens']:.2f}% | Pareto mixed (real sens) {mp['pareto_W4mixA8_real_sens']:.2f}% | "
        f"uniform + BN bias correction {mp['uniform_W4A8_bias_corrected_bn']:.2f}%"
    )
    print(f"distillation {distill_s:.1f}s (shared machine), total {out['wall_seconds']:.1f}s -> {path}")
    return out


if __name__ == "__main__":
    main()
