"""Weight-only int8 LSTM (paper #17, KWS-QLSTM) on MNIST read row by row.

Run: ``python -m benchmarks.qlstm [--quick] [--threads N]``

An LSTM classifier (28 steps of 28 features, 1 or 2 layers of 128 units, then a linear layer on the last
hidden state) is trained with :class:`torchslim.train.Trainer` (AdamW, one-cycle), then its LSTM is
quantised post-training with :func:`torchslim.quantization.lstm.quantize_lstm_` (int8, per-gate-row
scales). Reported: test accuracy float vs int8 (and 4-bit as a stress point), top-1 agreement, size on disk
of the state dict as safetensors (whole model and LSTM only), and PyTorch latency at batch 64, measured
interleaved in one run and reported as a ratio to float. The peer is PyTorch's
``torch.ao.quantization.quantize_dynamic({nn.LSTM})`` (int8 weights, dynamic int8 activations); its state
dict holds packed params that safetensors cannot store, so its size is the ``torch.save`` file size.
Writes ``benchmarks/results/qlstm.json`` (``qlstm_quick.json`` with ``--quick``).
"""

from __future__ import annotations

import argparse
import copy
import io
import time
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

RESULTS_DIR = Path(__file__).resolve().parent / "results"


class RowLSTM(nn.Module):
    """MNIST classifier reading the 28 image rows as a sequence."""

    def __init__(self, hidden: int = 128, layers: int = 1) -> None:
        super().__init__()
        self.rnn = nn.LSTM(28, hidden, num_layers=layers, batch_first=True)
        self.fc = nn.Linear(hidden, 10)

    def forward(self, x: Tensor) -> Tensor:
        seq = x.reshape(x.shape[0], 28, 28)
        return self.fc(self.rnn(seq)[0][:, -1])


def _torch_save_bytes(model: nn.Module) -> int:
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    return buf.getbuffer().nbytes


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="10k training images, 1 epoch, 1 layer, fewer timings")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--layers", type=int, default=None, help="LSTM layers (default: 1 quick, 2 full)")
    ap.add_argument("--epochs", type=int, default=None)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)

    from rich.console import Console
    from rich.table import Table

    from torchslim import data
    from torchslim.bench import latency
    from torchslim.bench.accuracy import agreement, top1
    from torchslim.bench.size import state_dict_bytes
    from torchslim.core.io import atomic_write_json
    from torchslim.quantization.lstm import QLSTMConfig, quantize_lstm_
    from torchslim.train import TrainConfig, Trainer

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    console = Console(width=130)
    t0 = time.time()
    layers = args.layers or (1 if args.quick else 2)
    epochs = args.epochs or (1 if args.quick else 2)
    n_train = 10_000 if args.quick else 60_000
    train, test = data.mnist("train"), data.mnist("test")
    g = torch.Generator().manual_seed(0)
    idx = torch.randperm(len(train.images), generator=g)[:n_train]
    train_set = torch.utils.data.TensorDataset(train.images[idx].contiguous(), train.labels[idx])
    test_set = (test.images, test.labels)

    model = RowLSTM(128, layers)
    cfg = TrainConfig(epochs=epochs, batch_size=64, lr=3e-3, optimizer="adamw", weight_decay=0.0,
                      grad_clip=1.0, seed=0, num_threads=args.threads)
    t_train = time.time()
    Trainer(model, cfg, progress=False).fit(train_set)
    train_s = time.time() - t_train
    model.eval()

    variants: dict[str, nn.Module] = {"float32": model}
    for bits in (8, 4):
        m = copy.deepcopy(model)
        quantize_lstm_(m, QLSTMConfig(bits=bits))
        variants[f"ours_int{bits}"] = m.eval()
    peer_error = None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from torch.ao.quantization import quantize_dynamic

            variants["torch_quantize_dynamic"] = quantize_dynamic(
                copy.deepcopy(model), {nn.LSTM}, dtype=torch.qint8
            ).eval()
    except Exception as e:  # the peer is optional: report why it is missing
        peer_error = f"{type(e).__name__}: {e}"

    results: dict[str, Any] = {}
    x_test = test.images
    for k, m in variants.items():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            r: dict[str, Any] = {"accuracy": top1(m, test_set)}
            if k != "float32":
                r["top1_agreement_float"] = agreement(model, m, x_test)[0]
        rnn = m.get_submodule("rnn")
        if k == "torch_quantize_dynamic":
            r["torch_save_bytes"] = _torch_save_bytes(m)
            r["lstm_torch_save_bytes"] = _torch_save_bytes(rnn)
        else:
            r["safetensors_bytes"] = state_dict_bytes(m)
            holder = nn.Module()
            holder.rnn = rnn
            r["lstm_safetensors_bytes"] = state_dict_bytes(holder)
            r["torch_save_bytes"] = _torch_save_bytes(m)
        results[k] = r
    f_bytes = results["float32"]
    for r in results.values():
        if "safetensors_bytes" in r:
            r["size_ratio_vs_float"] = f_bytes["safetensors_bytes"] / r["safetensors_bytes"]
            r["lstm_size_ratio_vs_float"] = f_bytes["lstm_safetensors_bytes"] / r["lstm_safetensors_bytes"]
        r["torch_save_ratio_vs_float"] = f_bytes["torch_save_bytes"] / r["torch_save_bytes"]

    x64 = test.images[:64].contiguous()
    timed = {k: v for k, v in variants.items() if k != "ours_int4"}
    calls = {k: latency.torch_callable(m, x64) for k, m in timed.items()}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        stats = latency.compare(calls, repeats=10 if args.quick else 20, warmup=2, pause_s=0.1,
                                threads=args.threads)
    base = stats["float32"].median_ms
    for k, st in stats.items():
        results[k]["latency_ms_b64"] = st.median_ms
        results[k]["latency_ratio_vs_float"] = st.median_ms / base
        results[k]["latency_p10_p90_ms"] = [st.p10_ms, st.p90_ms]
        results[k]["latency_contaminated"] = st.contaminated

    acc_drop_pts = 100 * (results["float32"]["accuracy"] - results["ours_int8"]["accuracy"])
    out = {
        "benchmark": "qlstm",
        "paper": "2002.10851 (KWS-QLSTM): weight-quantised LSTM; here PTQ int8 on MNIST rows",
        "quick": args.quick,
        "dataset": "mnist",
        "n_train": n_train,
        "n_test": len(test.images),
        "model": {"hidden": 128, "layers": layers, "params": sum(p.numel() for p in model.parameters())},
        "train": {**cfg.to_dict(), "seconds": train_s},
        "variants": results,
        "acceptance": {
            "int8_accuracy_drop_points": acc_drop_pts,
            "within_1_point": abs(acc_drop_pts) <= 1.0,
            "lstm_size_ratio": results["ours_int8"]["lstm_size_ratio_vs_float"],
        },
        "peer_error": peer_error,
        "latency_note": "shared 2-core machine: latency only as a ratio to float, interleaved in one run",
        "threads": args.threads,
        "wall_seconds": time.time() - t0,
        "environment": latency.environment(),
    }
    path = args.out or RESULTS_DIR / ("qlstm_quick.json" if args.quick else "qlstm.json")
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, out)

    table = Table(title=f"int8 LSTM PTQ, MNIST rows, {layers}-layer LSTM(128), batch 64, {args.threads} thread(s)")
    for col in ("variant", "accuracy", "agree float", "size KB", "LSTM x smaller", "latency vs float"):
        table.add_column(col, justify="left" if col == "variant" else "right", no_wrap=True)
    for k, r in results.items():
        size = r.get("safetensors_bytes", r["torch_save_bytes"])
        table.add_row(
            k,
            f"{100 * r['accuracy']:.2f}%",
            f"{100 * r['top1_agreement_float']:.2f}%" if "top1_agreement_float" in r else "-",
            f"{size / 1024:.0f}" + ("" if "safetensors_bytes" in r else " (torch.save)"),
            f"{r['lstm_size_ratio_vs_float']:.2f}x" if "lstm_size_ratio_vs_float" in r else "-",
            f"{r['latency_ratio_vs_float']:.2f}x" if "latency_ratio_vs_float" in r else "-",
        )
    console.print(table)
    console.print(f"int8 accuracy drop {acc_drop_pts:+.2f} points; peer error: {peer_error}; wrote {path}")
    return out


if __name__ == "__main__":
    main()
