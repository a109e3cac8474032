"""Accuracy on held-out data, and agreement between two models when there are no labels.

Example::

    >>> top1(model, torchslim.data.fashion_mnist("test"))        # PyTorch   # doctest: +SKIP
    >>> top1(ort_predict("model.onnx"), test_set)                 # ONNX Runtime  # doctest: +SKIP
    >>> agreement(model, ort_predict("int8.onnx"), images)        # (top-1 agreement, mean KL)  # doctest: +SKIP
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.nn.functional as F

__all__ = ["top1", "agreement", "ort_predict"]

Predictor = torch.nn.Module | Callable[[torch.Tensor], Any]


def ort_predict(
    onnx_path: str | os.PathLike[str], threads: int | None = None
) -> Callable[[torch.Tensor], torch.Tensor]:
    """A callable mapping a float tensor batch to the ONNX model's first output (as a tensor)."""
    import numpy as np

    from torchslim.export.parity import ort_session

    sess = ort_session(onnx_path, threads)
    name = sess.get_inputs()[0].name

    def predict(x: torch.Tensor) -> torch.Tensor:
        out = sess.run(None, {name: x.detach().cpu().numpy()})[0]
        return torch.from_numpy(np.asarray(out))

    return predict


def _logits(fn: Predictor, x: torch.Tensor) -> torch.Tensor:
    out = fn(x)
    if isinstance(out, (tuple, list)):
        out = out[0]
    if not isinstance(out, torch.Tensor):
        out = torch.as_tensor(out)
    return out.float()


def _iter_labelled(dataset: Any, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    if (
        isinstance(dataset, (tuple, list))
        and len(dataset) == 2
        and all(isinstance(t, torch.Tensor) for t in dataset)
    ):
        xs, ys = dataset
    elif hasattr(dataset, "tensors") and len(dataset.tensors) >= 2:  # TensorDataset (and ImageDataset)
        xs, ys = dataset.tensors[0], dataset.tensors[1]
    else:
        loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=0)
        for batch in loader:
            if not isinstance(batch, (tuple, list)) or len(batch) < 2:
                raise ValueError("top1 needs a labelled data set whose items are (input, label) pairs.")
            yield batch[0], batch[1]
        return
    if xs.shape[0] != ys.shape[0]:
        raise ValueError(f"inputs ({xs.shape[0]}) and labels ({ys.shape[0]}) differ in length.")
    for i in range(0, xs.shape[0], batch_size):
        yield xs[i : i + batch_size], ys[i : i + batch_size]


def top1(model_or_fn: Predictor, dataset: Any, batch_size: int = 512, progress: bool = False) -> float:
    """Top-1 accuracy in [0, 1] of a module or callable (batch -> logits) on a labelled data set.

    ``dataset``: a ``Dataset`` of ``(x, y)`` items, a ``TensorDataset``, or a tuple ``(inputs, labels)``.
    """
    if isinstance(model_or_fn, torch.nn.Module):
        model_or_fn.eval()
    correct = 0
    total = 0
    it: Any = _iter_labelled(dataset, batch_size)
    if progress:
        from torchslim.core.progress import progress_bar

        it = progress_bar(it, desc="top-1", unit="batch", leave=False)
    with torch.inference_mode():
        for xb, yb in it:
            logits = _logits(model_or_fn, xb)
            correct += int((logits.argmax(dim=-1).cpu() == yb.cpu().long()).sum())
            total += int(yb.shape[0])
    if total == 0:
        raise ValueError("top1 got an empty data set: pass held-out data with at least one sample.")
    return correct / total


def agreement(
    fn_a: Predictor, fn_b: Predictor, inputs: torch.Tensor, batch_size: int = 512
) -> tuple[float, float]:
    """``(top-1 agreement, mean KL(p_a || p_b))`` of two predictors on unlabelled ``inputs``.

    ``fn_a`` is the reference (e.g. the FP32 model); KL is in nats, averaged over samples.
    """
    for f in (fn_a, fn_b):
        if isinstance(f, torch.nn.Module):
            f.eval()
    if inputs.shape[0] == 0:
        raise ValueError("agreement got no inputs: pass a non-empty batch of samples.")
    agree = 0
    kl_sum = 0.0
    with torch.inference_mode():
        for i in range(0, inputs.shape[0], batch_size):
            xb = inputs[i : i + batch_size]
            la, lb = _logits(fn_a, xb), _logits(fn_b, xb)
            if la.shape != lb.shape:
                raise ValueError(
                    f"the two predictors return different shapes: {tuple(la.shape)} vs {tuple(lb.shape)}."
                )
            agree += int((la.argmax(-1) == lb.argmax(-1)).sum())
            lpa, lpb = F.log_softmax(la.double(), -1), F.log_softmax(lb.double(), -1)
            kl_sum += float((lpa.exp() * (lpa - lpb)).sum(-1).sum())
    n = inputs.shape[0]
    return agree / n, kl_sum / n
