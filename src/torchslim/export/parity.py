"""Run a PyTorch model and its ONNX export on the same inputs and compare the outputs.

Example::

    >>> report = check_parity(model, "model.onnx", torch.randn(64, 1, 28, 28))   # doctest: +SKIP
    >>> report.max_abs_diff < 1e-4 and report.top1_agreement == 1.0              # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = ["ParityReport", "check_parity", "ort_session"]


@dataclass
class ParityReport:
    """How closely ONNX Runtime reproduces PyTorch.

    ``cosine`` is the mean per-sample cosine similarity of the flattened outputs; ``top1_agreement`` the
    fraction of samples whose argmax over the last dimension matches (``None`` when the output is not a
    ``[batch, classes]`` matrix); ``n`` the number of samples compared.
    """

    max_abs_diff: float
    mean_abs_diff: float
    cosine: float
    top1_agreement: float | None
    n: int

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def ort_session(onnx_path: str | os.PathLike[str], threads: int | None = None) -> Any:
    """An ``onnxruntime.InferenceSession`` on CPU with all graph optimisations and ``threads`` intra-op threads
    (default: ``torch.get_num_threads()``)."""
    import onnxruntime as ort

    p = Path(onnx_path)
    if not p.is_file():
        raise FileNotFoundError(f"ONNX file {p} does not exist: export the model first (export_onnx).")
    so = ort.SessionOptions()
    so.intra_op_num_threads = int(threads or torch.get_num_threads())
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3
    return ort.InferenceSession(str(p), sess_options=so, providers=["CPUExecutionProvider"])


def _batches(inputs: torch.Tensor | Iterable[torch.Tensor], batch_size: int) -> Iterable[torch.Tensor]:
    if isinstance(inputs, torch.Tensor):
        for i in range(0, inputs.shape[0], batch_size):
            yield inputs[i : i + batch_size]
    else:
        for b in inputs:
            if isinstance(b, (tuple, list)):  # (x, y) batches from a DataLoader
                b = b[0]
            yield b


def check_parity(
    model_or_fn: torch.nn.Module | Callable[[torch.Tensor], torch.Tensor],
    onnx_path: str | os.PathLike[str],
    inputs: torch.Tensor | Iterable[torch.Tensor],
    threads: int | None = None,
    batch_size: int = 256,
) -> ParityReport:
    """Compare ``model_or_fn`` (PyTorch) with the ONNX model at ``onnx_path`` on ``inputs``.

    Args:
        model_or_fn: a module (put in eval mode) or any callable mapping a batch to an output tensor.
        onnx_path: the exported model (single input).
        inputs: a tensor ``[N, ...]`` (split into batches of ``batch_size``) or an iterable of batches
            (tensors, or ``(x, y)`` tuples).
        threads: ONNX Runtime intra-op threads (default: ``torch.get_num_threads()``).
    """
    if isinstance(model_or_fn, torch.nn.Module):
        model_or_fn.eval()
    sess = ort_session(onnx_path, threads)
    in_name = sess.get_inputs()[0].name
    max_abs = 0.0
    sum_abs = 0.0
    n_elems = 0
    cos_sum = 0.0
    agree = 0
    n = 0
    top1_ok = True
    with torch.inference_mode():
        for xb in _batches(inputs, batch_size):
            ref = model_or_fn(xb)
            if isinstance(ref, (tuple, list)):
                ref = ref[0]
            ref_np = ref.detach().float().cpu().numpy()
            got = np.asarray(sess.run(None, {in_name: xb.detach().cpu().numpy()})[0], dtype=np.float32)
            if got.shape != ref_np.shape:
                raise ValueError(
                    f"ONNX output shape {got.shape} != PyTorch output shape {ref_np.shape}: the ONNX file "
                    f"{onnx_path} was not exported from this model (or with a fixed batch size)."
                )
            diff = np.abs(got.astype(np.float64) - ref_np.astype(np.float64))
            max_abs = max(max_abs, float(diff.max()) if diff.size else 0.0)
            sum_abs += float(diff.sum())
            n_elems += diff.size
            b = ref_np.shape[0]
            a2 = ref_np.reshape(b, -1).astype(np.float64)
            g2 = got.reshape(b, -1).astype(np.float64)
            denom = np.linalg.norm(a2, axis=1) * np.linalg.norm(g2, axis=1)
            cos = np.where(denom > 0, (a2 * g2).sum(axis=1) / np.maximum(denom, 1e-300), 1.0)
            cos_sum += float(cos.sum())
            if ref_np.ndim == 2:
                agree += int((ref_np.argmax(axis=1) == got.argmax(axis=1)).sum())
            else:
                top1_ok = False
            n += b
    if n == 0:
        raise ValueError("check_parity got no inputs: pass a non-empty tensor or iterable of batches.")
    return ParityReport(
        max_abs_diff=max_abs,
        mean_abs_diff=sum_abs / max(n_elems, 1),
        cosine=cos_sum / n,
        top1_agreement=(agree / n) if top1_ok else None,
        n=n,
    )
