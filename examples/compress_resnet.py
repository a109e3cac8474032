"""Compress the zoo ResNet from Python: prune -> distil -> quantize, then export and report.

Run: .venv/bin/python examples/compress_resnet.py [--out out/example]
"""

from __future__ import annotations

import argparse

import torchslim as ts
from torchslim.distillation import HintonKD
from torchslim.pipeline import Recipe
from torchslim.pruning import ChannelPrune
from torchslim.quantization import StaticPTQ
from torchslim.train import TrainConfig


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", default="out/example")
    args = ap.parse_args()

    model = ts.zoo.load("resnet-fmnist")  # trained and cached on first use
    recipe = Recipe(
        name="python-api-example",
        stages=[
            ChannelPrune(ratio=0.5, round_to=16),
            HintonKD(temperature=2.0, alpha=0.5, train=TrainConfig(epochs=1, lr=0.05)),
            StaticPTQ(num_calibration=512),
        ],
    )
    result = ts.compress(
        model,
        recipe,
        data=ts.data.fashion_mnist("train"),
        eval_data=ts.data.fashion_mnist("test"),
        report_dir=args.out,
    )
    result.table()
    paths = result.export(args.out)
    print("wrote:", ", ".join(str(p) for p in paths.values()))


if __name__ == "__main__":
    main()
