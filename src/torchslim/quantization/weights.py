"""Shared plumbing of the weight-only quantizers (LS-binary, PWLQ, multi-point): which layers they touch and
the error figures they report per layer."""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor, nn

from torchslim.quantization.primitives import sqnr_db

FilterFn = Callable[[str, nn.Module], bool]


def select_weight_layers(
    model: nn.Module, filter_fn: FilterFn | None, caller: str
) -> dict[str, nn.Conv2d | nn.Linear]:
    """Every Conv2d/Linear of ``model`` that ``filter_fn(name, module)`` accepts (all when ``None``).

    Raises ``ValueError`` naming ``caller`` when nothing is selected.
    """
    layers = {
        n: m
        for n, m in model.named_modules()
        if isinstance(m, nn.Conv2d | nn.Linear) and (filter_fn is None or filter_fn(n, m))
    }
    if not layers:
        raise ValueError(f"{caller}: no Conv2d/Linear layer selected; check the model and filter_fn")
    return layers


def weight_error(w: Tensor, q: Tensor) -> dict[str, float]:
    """``{"mse", "sqnr_db", "numel"}`` of the quantized weights ``q`` against the float ``w``."""
    w = w.float()
    return {"mse": float(((w - q.float()) ** 2).mean()), "sqnr_db": sqnr_db(w, q), "numel": float(w.numel())}
