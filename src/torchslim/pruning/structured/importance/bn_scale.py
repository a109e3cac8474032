"""BN-scale importance (network slimming, Liu et al. 2017): a channel's score is ``|gamma|`` of the
BatchNorm that normalises it.

A group with several BatchNorms (a residual sum: both branches' BNs) sums ``|gamma|`` over them, each
divided by its own largest ``|gamma|``, as the filter-norm criteria do with producers. A group with no
BatchNorm (e.g. a plain Linear -> Linear) falls back to the L1 filter norm of its producers.

Example::

    >>> import torch
    >>> from torch import nn
    >>> from torchslim.pruning import ChannelPrune, prune_
    >>> m = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 2, 3))
    >>> with torch.no_grad():
    ...     _ = m[1].weight.copy_(torch.tensor([0.1, 2.0, -3.0, 0.5]))
    >>> r = prune_(m, ChannelPrune(ratio=0.5, importance="bn_scale"), (torch.randn(1, 1, 8, 8),))
    >>> m[1].weight.tolist()
    [2.0, -3.0]
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
from torch import nn

from torchslim.pruning.importance import group_scores

if TYPE_CHECKING:
    from torchslim.pruning.structured.dependency import ChannelGroup
    from torchslim.pruning.structured.importance import ScoreContext

_BN = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def bn_gammas(model: nn.Module, group: ChannelGroup) -> list[torch.Tensor]:
    """``|gamma|`` of every affine BatchNorm among the group's pass-through members."""
    out = []
    for m in group.passthrough:
        mod = model.get_submodule(m.path)
        if isinstance(mod, _BN) and mod.affine and mod.weight is not None:
            out.append(mod.weight.detach().abs().to(torch.float64))
    return out


def bn_scale_scores(model: nn.Module, groups: Sequence[ChannelGroup], ctx: ScoreContext) -> list[torch.Tensor]:
    """Sum of the group's BatchNorm |gamma| (each BN normalised by its max); L1 filter norm without BN."""
    scores = []
    for g in groups:
        gammas = bn_gammas(model, g)
        if not gammas:
            gammas = [m.handler.importance(model.get_submodule(m.path), 1.0) for m in g.producers]
        scores.append(group_scores(gammas))
    return scores
