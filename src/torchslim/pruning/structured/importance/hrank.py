"""HRank (Lin et al., CVPR 2020): a filter's importance is the **average matrix rank of its output
feature maps** over a few input batches; keep the highest-rank filters.

For every image and channel the ``H x W`` map is one matrix; ``torch.linalg.matrix_rank`` gives its
rank, averaged over all images seen. The paper measures the map after the layer's activation (its code
hooks the ReLU after BN); here the map is ``relu`` of the group's BatchNorm output when the group has
one (of the producer's output otherwise), and a group fed by several producers (a residual sum) adds
up the average ranks of each branch's map. Ranks are in ``[0, min(H, W)]`` for every layer, so no
per-layer normalisation is needed.

Example::

    >>> import torch
    >>> from torchslim.pruning.structured.importance.hrank import feature_map_ranks
    >>> x = torch.zeros(2, 3, 8, 8)
    >>> x[:, 1] = torch.randn(8, 1) @ torch.randn(1, 8)     # rank 1
    >>> x[:, 2] = torch.randn(2, 8, 8)                      # full rank (8)
    >>> feature_map_ranks(x).tolist()
    [0.0, 1.0, 8.0]
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from torchslim.pruning.structured.importance import batch_input

if TYPE_CHECKING:
    from torchslim.pruning.structured.dependency import ChannelGroup
    from torchslim.pruning.structured.importance import ScoreContext

_BN = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def feature_map_ranks(maps: torch.Tensor, relu: bool = False) -> torch.Tensor:
    """Average over the batch of the matrix rank of each channel's ``H x W`` map.

    Args:
        maps: ``[N, C, H, W]`` feature maps.
        relu: apply ``relu`` first (HRank ranks post-activation maps).

    Returns:
        float64 tensor ``[C]``.
    """
    if maps.dim() != 4:
        raise ValueError(f"HRank needs [N, C, H, W] feature maps, got shape {tuple(maps.shape)}")
    m = maps.detach().to(torch.float32)
    if relu:
        m = torch.relu(m)
    ranks = torch.linalg.matrix_rank(m)  # [N, C]
    return ranks.to(torch.float64).mean(0)


def _hook_points(model: nn.Module, g: ChannelGroup) -> list[str]:
    bns = [m.path for m in g.passthrough if isinstance(model.get_submodule(m.path), _BN)]
    return bns or [m.path for m in g.producers]


def hrank_scores(model: nn.Module, groups: Sequence[ChannelGroup], ctx: ScoreContext) -> list[torch.Tensor]:
    """Average feature-map rank per channel (summed over the group's BN / producer outputs)."""
    assert ctx.data is not None
    max_batches = int(ctx.options.get("max_batches", len(ctx.data)))
    sums: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = {}
    handles = []
    points = [_hook_points(model, g) for g in groups]
    for g, paths in zip(groups, points, strict=True):
        for path in paths:
            mod = model.get_submodule(path)

            def hook(_m: nn.Module, _inp: Any, out: Any, path: str = path, gname: str = g.name) -> None:
                if not isinstance(out, torch.Tensor) or out.dim() != 4:
                    raise ValueError(
                        f"importance='hrank': the output of {path!r} (group {gname}) has shape "
                        f"{tuple(getattr(out, 'shape', ()))}, not [N, C, H, W]; exclude this group "
                        f"(ChannelPrune(exclude=[...])) or use another criterion for it"
                    )
                r = feature_map_ranks(out, relu=True) * out.shape[0]
                sums[path] = sums.get(path, 0) + r
                counts[path] = counts.get(path, 0) + out.shape[0]

            handles.append(mod.register_forward_hook(hook))
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            for batch in ctx.data[:max_batches]:
                model(batch_input(batch))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    out = []
    for g, paths in zip(groups, points, strict=True):
        total = torch.zeros(g.channels, dtype=torch.float64)
        for path in paths:
            if path not in sums:
                raise RuntimeError(f"importance='hrank': {path!r} was never called on the calibration data")
            total += sums[path] / counts[path]
        out.append(total)
    return out
