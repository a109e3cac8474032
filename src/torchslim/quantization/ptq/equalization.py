"""Cross-layer equalization (DFQ, Nagel et al. 2019) for Conv -> ReLU -> Conv pairs, depthwise included.

ReLU is positively homogeneous: ``relu(x / s) = relu(x) / s`` for ``s > 0``. So dividing output channel
``c`` of the first layer (weight row and bias) by ``s_c`` and multiplying input channel ``c`` of the second
layer by ``s_c`` leaves the network function unchanged. DFQ picks ``s_c = sqrt(r1_c / r2_c)`` where
``r1_c = max|W1[c]|`` (output channel range of layer 1) and ``r2_c = max|W2[:, c]|`` (input channel range of
layer 2), which makes both ranges equal to ``sqrt(r1_c r2_c)`` and helps *per-tensor* weight quantisation
when channel ranges differ a lot (typical after depthwise convolutions). For a depthwise second layer
(``groups == channels``) input channel ``c`` is its output channel ``c``. Chains (conv -> conv -> conv) are
equalised pairwise, repeated ``iterations`` times.

Equalize after BatchNorm folding (:func:`equalize` folds first) and only through plain ``ReLU``:
ReLU6 clips and is not homogeneous (replace it by ReLU first, as DFQ does).

Example::

    from torchslim.quantization.ptq.equalization import equalize
    gm = equalize(model)          # BN-folded GraphModule computing the same function, equalized ranges
"""

from __future__ import annotations

import torch
import torch.fx as fx
from torch import nn

from torchslim.core.errors import ConfigError
from torchslim.quantization.fold import fold_batchnorm

__all__ = ["equalize", "equalize_pair", "find_equalization_pairs"]

_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


def _is_relu(node: fx.Node, modules: dict[str, nn.Module]) -> bool:
    if node.op == "call_module":
        return type(modules.get(str(node.target))) is nn.ReLU
    if node.op == "call_function":
        return node.target in (torch.relu, torch.nn.functional.relu)
    return node.op == "call_method" and node.target == "relu"


def find_equalization_pairs(gm: fx.GraphModule) -> list[tuple[str, str]]:
    """``(conv1, conv2)`` module paths where ``conv1``'s output goes only through one ReLU into only
    ``conv2`` (so rescaling its channels is invisible elsewhere), in graph order."""
    modules = dict(gm.named_modules())
    pairs = []
    for node in gm.graph.nodes:
        if node.op != "call_module" or not isinstance(modules.get(str(node.target)), _CONV):
            continue
        users = list(node.users)
        if len(users) != 1 or not _is_relu(users[0], modules):
            continue
        nxt = list(users[0].users)
        if len(nxt) != 1 or nxt[0].op != "call_module":
            continue
        second = modules.get(str(nxt[0].target))
        if isinstance(second, _CONV) and nxt[0].args[0] is users[0]:
            first = modules[str(node.target)]
            assert isinstance(first, _CONV)
            if first.groups == 1 or first.groups == first.out_channels:
                if second.groups == 1 or (second.groups == second.in_channels == second.out_channels):
                    pairs.append((str(node.target), str(nxt[0].target)))
    return pairs


@torch.no_grad()
def equalize_pair(conv1: nn.Module, conv2: nn.Module, eps: float = 1e-12) -> torch.Tensor:
    """Equalize one pair in place; returns the scales ``s`` (``W1[c] /= s_c``, ``W2[:, c] *= s_c``).

    ``conv2`` may be dense (``groups == 1``) or depthwise (``groups == in == out channels``).
    """
    if not isinstance(conv1, _CONV) or not isinstance(conv2, _CONV):
        raise ConfigError(f"equalize_pair needs two convolutions, got {type(conv1).__name__}, {type(conv2).__name__}")
    w1, w2 = conv1.weight, conv2.weight
    channels = w1.shape[0]
    depthwise2 = conv2.groups > 1
    if depthwise2 and not (conv2.groups == conv2.in_channels == conv2.out_channels == channels):
        raise ConfigError(f"equalize_pair: grouped conv with groups={conv2.groups} is not supported (only depthwise)")
    if not depthwise2 and w2.shape[1] != channels:
        raise ConfigError(f"equalize_pair: conv1 has {channels} outputs but conv2 takes {w2.shape[1]} inputs")
    r1 = w1.detach().reshape(channels, -1).abs().amax(dim=1)
    if depthwise2:
        r2 = w2.detach().reshape(channels, -1).abs().amax(dim=1)
    else:
        r2 = w2.detach().transpose(0, 1).reshape(channels, -1).abs().amax(dim=1)
    s = torch.sqrt(r1.clamp(min=eps) / r2.clamp(min=eps))
    s = torch.where((r1 > eps) & (r2 > eps), s, torch.ones_like(s))  # leave dead channels alone
    shape1 = [-1] + [1] * (w1.dim() - 1)
    w1.div_(s.reshape(shape1))
    if conv1.bias is not None:
        conv1.bias.div_(s)
    if depthwise2:
        w2.mul_(s.reshape(shape1))
    else:
        shape2 = [1, -1] + [1] * (w2.dim() - 2)
        w2.mul_(s.reshape(shape2))
    return s


def equalize(
    model: nn.Module, pairs: list[tuple[str, str]] | None = None, iterations: int = 10, inplace: bool = False
) -> fx.GraphModule:
    """BN-folded copy of ``model`` (a GraphModule; ``model`` itself is untouched unless ``inplace`` and it is
    already a GraphModule) with every Conv -> ReLU -> Conv pair equalized ``iterations`` times.

    ``pairs`` overrides the automatic search (:func:`find_equalization_pairs`); paths refer to the folded
    model, whose module names are the original ones.
    """
    if iterations < 1:
        raise ConfigError(f"iterations must be >= 1, got {iterations}")
    gm = fold_batchnorm(model, inplace=inplace)
    found = find_equalization_pairs(gm) if pairs is None else pairs
    modules = dict(gm.named_modules())
    for a, b in found:
        if a not in modules or b not in modules:
            raise ConfigError(f"equalize: unknown module path in pair ({a!r}, {b!r})")
    for _ in range(iterations):
        for a, b in found:
            equalize_pair(modules[a], modules[b])
    return gm
