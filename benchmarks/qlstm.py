"""Int8 LSTM (paper #17, KWS-QLSTM) on MNIST read row by row, in PyTorch and in ONNX Runtime.

Run: ``python -m benchmarks.qlstm [--quick] [--threads N]``

An LSTM classifier (28 steps of 28 features, 1 or 2 layers of 128 units, then a linear layer on the last
hidden state) is trained with :class:`torchslim.train.Trainer` (AdamW, one-cycle), then its LSTM is
quantised post-training with :func:`torchslim.quantization.lstm.quantize_lstm_` (int8, per-gate-row
scales). Variants:

- ``float32`` (PyTorch) and ``ort_float32`` (the same model exported to ONNX);
- ``ours_int8`` / ``ours_int4``: weight-only simulation (float recurrence on dequantised weights);
- ``ours_int8_dyn`` / ``ours_int7_dyn``: the simulation of ORT's int8 LSTM (dynamic uint8 activations);
- ``ort_ours_int8`` (u8u8 kernel, exact), ``ort_ours_int7`` (u8s8 kernel, 7-bit weights cannot saturate),
  ``ort_ours_int8_s8`` (u8s8 kernel with 8-bit weights: saturating int16 pairs on CPUs without VNNI):
  :func:`export_qlstm_onnx` exports with our integers in ``com.microsoft.DynamicQuantizeLSTM``; each
  comes with the parity check sim vs ORT (max abs diff, top-1 agreement, cosine);
- peers: ``ort_quantize_dynamic`` (ORT's ``quantize_dynamic`` on the float export, QInt8 per-channel,
  default op types: the LSTM and the final MatMul) and ``torch_quantize_dynamic``
  (``torch.ao.quantization.quantize_dynamic({nn.LSTM})``).

Reported: test accuracy, top-1 agreement with float, size (safetensors state dict / ONNX file, and the LSTM
alone with the int8 / scales / bias split), latency at batch 64 measured interleaved in one run
(``torchslim.bench.latency.compare``) as a ratio to PyTorch float. Writes ``benchmarks/results/qlstm.json``
(``qlstm_quick.json`` with ``--quick``).
"""

from __future__ import annotations

import argparse
import copy
import io
import logging
import shutil
import tempfile
import time
import warnings
from collections.abc import Callable
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
    from torchslim.bench.accuracy import agreement, ort_predict, top1
    from torchslim.bench.size import file_bytes, state_dict_bytes
    from torchslim.core.io import atomic_write_json
    from torchslim.export import export_onnx
    from torchslim.export.parity import check_parity
    from torchslim.quantization.lstm import QLSTMConfig, QuantizedLSTM, export_qlstm_onnx, quantize_lstm_
    from torchslim.train import TrainConfig, Trainer

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    console = Console(width=180)
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
    for name, qcfg in (
        ("ours_int8", QLSTMConfig(bits=8)),
        ("ours_int4", QLSTMConfig(bits=4)),
        ("ours_int8_dyn", QLSTMConfig(bits=8, activations="dynamic_uint8", ort_threads=args.threads)),
        ("ours_int7_dyn", QLSTMConfig(bits=7, activations="dynamic_uint8", ort_threads=args.threads)),
    ):
        qm: nn.Module = copy.deepcopy(model)
        quantize_lstm_(qm, qcfg)
        variants[name] = qm.eval()
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

    # ---- ONNX exports: float, ours (int8 in ORT), ORT's own quantize_dynamic
    onnx_dir = Path(tempfile.mkdtemp(prefix="qlstm-onnx-"))
    x2 = test.images[:2]
    onnx_paths: dict[str, Path] = {"ort_float32": export_onnx(model, x2, onnx_dir / "float.onnx")}
    ort_ours = {  # ORT variant -> (simulation it must match, weight dtype)
        "ort_ours_int8": ("ours_int8_dyn", "uint8"),
        "ort_ours_int7": ("ours_int7_dyn", "int8"),
        "ort_ours_int8_s8": ("ours_int8_dyn", "int8"),
    }
    for k, (sim, wd) in ort_ours.items():
        onnx_paths[k] = export_qlstm_onnx(variants[sim], x2, onnx_dir / f"{k}.onnx", weight_dtype=wd)  # type: ignore[arg-type]
    ort_peer_error = None
    try:
        from onnxruntime.quantization import QuantType
        from onnxruntime.quantization import quantize_dynamic as ort_quantize_dynamic

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            logging.getLogger().setLevel(logging.ERROR)
            ort_quantize_dynamic(str(onnx_paths["ort_float32"]), str(onnx_dir / "ort_qd.onnx"),
                                 weight_type=QuantType.QInt8, per_channel=True)
        onnx_paths["ort_quantize_dynamic"] = onnx_dir / "ort_qd.onnx"
    except Exception as e:
        ort_peer_error = f"{type(e).__name__}: {e}"

    results: dict[str, Any] = {}
    x_test = test.images
    n_parity = 2000 if args.quick else len(x_test)
    for k, m in variants.items():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            r: dict[str, Any] = {"runtime": "pytorch", "accuracy": top1(m, test_set)}
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
            if isinstance(rnn, QuantizedLSTM):
                r["lstm_bytes_split"] = {
                    part: sum(v.numel() * v.element_size() for n, v in rnn.state_dict().items() if pick(n))
                    for part, pick in (
                        ("int8_weights", lambda n: n.endswith("_int8")),
                        ("float32_row_scales", lambda n: n.endswith("_scale")),
                        ("float32_fused_bias", lambda n: n.startswith("bias")),
                    )
                }
        results[k] = r
    for k, p in onnx_paths.items():
        fn = ort_predict(p, threads=args.threads)
        r = {"runtime": "onnxruntime", "accuracy": top1(fn, test_set), "onnx_bytes": file_bytes(p),
             "top1_agreement_float": agreement(model, fn, x_test)[0]}
        if k in ort_ours:
            sim_model = variants[ort_ours[k][0]]
            r["simulation"] = ort_ours[k][0]
            r["parity_vs_simulation"] = check_parity(sim_model, p, x_test[:n_parity], threads=args.threads).to_dict()
        results[k] = r
    f_bytes = results["float32"]
    for r in results.values():
        if "safetensors_bytes" in r:
            r["size_ratio_vs_float"] = f_bytes["safetensors_bytes"] / r["safetensors_bytes"]
            r["lstm_size_ratio_vs_float"] = f_bytes["lstm_safetensors_bytes"] / r["lstm_safetensors_bytes"]
        if "torch_save_bytes" in r:
            r["torch_save_ratio_vs_float"] = f_bytes["torch_save_bytes"] / r["torch_save_bytes"]
        if "onnx_bytes" in r:
            r["onnx_size_ratio_vs_float"] = results["ort_float32"]["onnx_bytes"] / r["onnx_bytes"]

    x64 = test.images[:64].contiguous()
    calls: dict[str, Callable[[], Any]] = {k: latency.torch_callable(variants[k], x64) for k in ("float32", "torch_quantize_dynamic")
             if k in variants}
    calls.update({k: latency.ort_callable(p, x64, threads=args.threads) for k, p in onnx_paths.items()})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        stats = latency.compare(calls, repeats=10 if args.quick else 20, warmup=2, pause_s=0.1,
                                threads=args.threads)
    base = stats["float32"].median_ms
    base_ort = stats["ort_float32"].median_ms
    for k, st in stats.items():
        results[k]["latency_ms_b64"] = st.median_ms
        results[k]["latency_ratio_vs_float"] = st.median_ms / base
        results[k]["latency_ratio_vs_ort_float"] = st.median_ms / base_ort
        results[k]["latency_p10_p90_ms"] = [st.p10_ms, st.p90_ms]
        results[k]["latency_contaminated"] = st.contaminated
    shutil.rmtree(onnx_dir, ignore_errors=True)

    acc_drop_pts = 100 * (results["float32"]["accuracy"] - results["ours_int8"]["accuracy"])
    ort_drop_pts = 100 * (results["float32"]["accuracy"] - results["ort_ours_int8"]["accuracy"])
    par = results["ort_ours_int8"]["parity_vs_simulation"]
    out = {
        "benchmark": "qlstm",
        "paper": "2002.10851 (KWS-QLSTM): weight-quantised LSTM; here PTQ int8 on MNIST rows, deployed in ORT",
        "quick": args.quick,
        "dataset": "mnist",
        "n_train": n_train,
        "n_test": len(test.images),
        "n_parity": n_parity,
        "model": {"hidden": 128, "layers": layers, "params": sum(p.numel() for p in model.parameters())},
        "train": {**cfg.to_dict(), "seconds": train_s},
        "variants": results,
        "acceptance": {
            "int8_accuracy_drop_points": acc_drop_pts,
            "ort_int8_accuracy_drop_points": ort_drop_pts,
            "within_1_point": abs(acc_drop_pts) <= 1.0 and abs(ort_drop_pts) <= 1.0,
            "lstm_size_ratio": results["ours_int8"]["lstm_size_ratio_vs_float"],
            "ort_parity_int8": par,
            "ort_int8_faster_than_ort_float": results["ort_ours_int8"]["latency_ratio_vs_ort_float"] < 1.0,
        },
        "peer_error": peer_error,
        "ort_peer_error": ort_peer_error,
        "latency_note": "shared 2-core machine: latency only as ratios, interleaved in one run; re-measure on a "
        "quiet machine",
        "threads": args.threads,
        "wall_seconds": time.time() - t0,
        "environment": latency.environment(),
    }
    path = args.out or RESULTS_DIR / ("qlstm_quick.json" if args.quick else "qlstm.json")
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, out)

    table = Table(title=f"int8 LSTM PTQ, MNIST rows, {layers}-layer LSTM(128), batch 64, {args.threads} thread(s)")
    cols = ("variant", "runtime", "accuracy", "agree float", "size KB", "LSTM x smaller", "parity max|d| / agree",
            "latency vs float", "vs ORT float")
    for col in cols:
        table.add_column(col, justify="left" if col in ("variant", "runtime") else "right", no_wrap=True)
    for k, r in results.items():
        if "onnx_bytes" in r:
            size = f"{r['onnx_bytes'] / 1024:.0f} (onnx)"
        elif "safetensors_bytes" in r:
            size = f"{r['safetensors_bytes'] / 1024:.0f}"
        else:
            size = f"{r['torch_save_bytes'] / 1024:.0f} (torch.save)"
        pr = r.get("parity_vs_simulation")
        table.add_row(
            k,
            r["runtime"],
            f"{100 * r['accuracy']:.2f}%",
            f"{100 * r['top1_agreement_float']:.2f}%" if "top1_agreement_float" in r else "-",
            size,
            f"{r['lstm_size_ratio_vs_float']:.2f}x" if "lstm_size_ratio_vs_float" in r else "-",
            f"{pr['max_abs_diff']:.1e} / {100 * pr['top1_agreement']:.2f}%" if pr else "-",
            f"{r['latency_ratio_vs_float']:.2f}x" if "latency_ratio_vs_float" in r else "-",
            f"{r['latency_ratio_vs_ort_float']:.2f}x" if "latency_ratio_vs_ort_float" in r else "-",
        )
    console.print(table)
    console.print(
        f"int8 accuracy drop {acc_drop_pts:+.2f} points (PyTorch sim), {ort_drop_pts:+.2f} (ORT); parity ORT vs "
        f"sim: max|d| {par['max_abs_diff']:.2e}, agreement {par['top1_agreement']:.4f}, cosine "
        f"{par['cosine']:.6f}; peer errors: {peer_error}, {ort_peer_error}; wrote {path}"
    )
    return out


if __name__ == "__main__":
    main()
