"""Fold BatchNorm into the preceding Conv / Linear (an FX pass).

``y = gamma * (W x + b - mean) / sqrt(var + eps) + beta`` equals a conv/linear with
``W' = W * gamma / sqrt(var + eps)`` (per output channel) and ``b' = (b - mean) * gamma / sqrt(var + eps) + beta``.
This uses the BatchNorm's running (eval-mode) statistics. Only a BatchNorm whose input is a Conv/Linear
used nowhere else is folded; other BatchNorms are left in place.

Example::

    import torch
    from torchslim.quantization.fold import fold_batchnorm
    m = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.BatchNorm2d(8)).eval()
    f = fold_batchnorm(m)            # GraphModule without BatchNorm, same outputs
"""

from __future__ import annotations

import copy
from typing import Any

import torch
import torch.fx as fx
from torch import nn

from torchslim.core.errors import CaptureError

_FOLDABLE_BN = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
_FOLD_INTO = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


def trace(model: nn.Module, example_inputs: tuple[Any, ...] | None = None) -> fx.GraphModule:
    """Module-level FX graph of ``model``; a failure raises :class:`CaptureError` naming the cause.

    With ``example_inputs`` this uses :func:`torchslim.core.graph.capture` (FX strategy: errors name the
    op and module path, shapes are propagated); without, ``torch.fx.symbolic_trace``.
    """
    if isinstance(model, fx.GraphModule):
        return model
    if example_inputs is not None:
        try:
            from torchslim.core.graph import capture
        except ImportError:  # pragma: no cover - core.graph is part of the package
            pass
        else:
            return capture(model, example_inputs, strategy="fx").graph_module
    try:
        return fx.symbolic_trace(model)
    except Exception as err:  # noqa: BLE001 - re-raised with context
        raise CaptureError(
            f"could not trace {type(model).__name__} with torch.fx ({type(err).__name__}: {err}); data-dependent "
            "control flow in forward() cannot be quantised statically: move it out of forward or mark the module "
            "as a leaf"
        ) from err


@torch.no_grad()
def fold_bn_into(layer: nn.Module, bn: nn.modules.batchnorm._BatchNorm) -> None:
    """Fold ``bn`` (eval statistics) into ``layer`` (Conv/Linear) in place."""
    if bn.running_mean is None or bn.running_var is None:
        raise ValueError("cannot fold a BatchNorm without running statistics (track_running_stats=False)")
    w: torch.Tensor = layer.weight  # type: ignore[assignment]
    bias: torch.Tensor | None = layer.bias  # type: ignore[assignment]
    inv_std = torch.rsqrt(bn.running_var.to(torch.float64) + bn.eps)
    gamma = bn.weight.to(torch.float64) if bn.weight is not None else torch.ones_like(inv_std)
    beta = bn.bias.to(torch.float64) if bn.bias is not None else torch.zeros_like(inv_std)
    factor = gamma * inv_std
    if isinstance(layer, nn.ConvTranspose2d):  # pragma: no cover - not in _FOLD_INTO
        raise ValueError("ConvTranspose folding is not supported")
    shape = [-1] + [1] * (w.dim() - 1)
    new_w = (w.to(torch.float64) * factor.reshape(shape)).to(w.dtype)
    b = bias.to(torch.float64) if bias is not None else torch.zeros_like(inv_std)
    new_b = ((b - bn.running_mean.to(torch.float64)) * factor + beta).to(w.dtype)
    w.copy_(new_w)
    if bias is None:
        layer.bias = nn.Parameter(new_b)
    else:
        bias.copy_(new_b)


def fold_batchnorm(
    model: nn.Module, inplace: bool = False, example_inputs: tuple[Any, ...] | None = None
) -> fx.GraphModule:
    """Return a GraphModule computing the same outputs as ``model`` (eval mode) with BatchNorms folded.

    The model is captured with :func:`trace` (``torchslim.core.graph.capture`` when ``example_inputs`` are
    given, else ``torch.fx.symbolic_trace``); ``model`` itself is untouched unless ``inplace``.
    """
    m = model if inplace else copy.deepcopy(model)
    m.eval()
    gm = trace(m, example_inputs)
    modules = dict(gm.named_modules())
    for node in list(gm.graph.nodes):
        if node.op != "call_module" or not isinstance(modules.get(node.target), _FOLDABLE_BN):
            continue
        prev = node.args[0]
        if not isinstance(prev, fx.Node) or prev.op != "call_module" or len(prev.users) != 1:
            continue
        layer = modules.get(prev.target)
        if not isinstance(layer, _FOLD_INTO):
            continue
        bn = modules[node.target]
        if layer.weight.shape[0] != bn.num_features:
            continue
        fold_bn_into(layer, bn)  # type: ignore[arg-type]
        node.replace_all_uses_with(prev)
        gm.graph.erase_node(node)
    gm.graph.eliminate_dead_code()
    gm.delete_all_unused_submodules()
    gm.recompile()
    return gm
