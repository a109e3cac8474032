"""First-order Taylor importance (Molchanov et al., CVPR 2019, "Importance Estimation for Neural
Network Pruning"): the loss change from removing channel ``c`` is approximated by
``(sum_{w in channel c} g_w * w)^2`` summed over every parameter of the group that belongs to ``c``
(the producers' filters and biases and the BatchNorms' gamma/beta), accumulated over calibration batches.

Needs labelled batches (``(x, y)``) or a ``loss_fn``. Gradients are computed on the model as is (no
optimizer step; existing ``.grad`` values are restored afterwards). BatchNorm layers are run in eval mode
so the calibration pass does not change their running statistics.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

if TYPE_CHECKING:
    from torchslim.pruning.structured.dependency import ChannelGroup
    from torchslim.pruning.structured.importance import ScoreContext


def default_loss(model: nn.Module, batch: Any) -> torch.Tensor:
    """Cross-entropy of ``model(batch[0])`` against ``batch[1]``."""
    if not (isinstance(batch, (tuple, list)) and len(batch) >= 2):
        raise ValueError("importance='taylor' needs labelled batches (x, y), or a loss_fn(model, batch)")
    return F.cross_entropy(model(batch[0]), batch[1])


def _channel_params(model: nn.Module, g: ChannelGroup) -> list[tuple[torch.Tensor, int]]:
    """(parameter, channel dim) pairs whose slices along that dim belong to the group's channels."""
    out: list[tuple[torch.Tensor, int]] = []
    for m in [*g.producers, *g.passthrough]:
        mod = model.get_submodule(m.path)
        for name in ("weight", "bias"):
            p = getattr(mod, name, None)
            if isinstance(p, torch.Tensor) and p.dim() >= 1:
                if p.shape[0] == g.channels:
                    out.append((p, 0))
    return out


def taylor_scores(model: nn.Module, groups: Sequence[ChannelGroup], ctx: ScoreContext) -> list[torch.Tensor]:
    """Sum over batches of ``(sum_w g*w)^2`` per channel over the group's producer and BN parameters."""
    assert ctx.data is not None
    loss_fn = ctx.loss_fn or default_loss
    params = [_channel_params(model, g) for g in groups]
    saved: dict[int, tuple[torch.Tensor, torch.Tensor | None, bool]] = {
        id(p): (p, p.grad, p.requires_grad) for p in model.parameters()}
    was_training = model.training
    scores = [torch.zeros(g.channels, dtype=torch.float64) for g in groups]
    try:
        model.eval()
        for p, _, _ in saved.values():
            p.requires_grad_(True)
        for batch in ctx.data:
            model.zero_grad(set_to_none=True)
            loss = loss_fn(model, batch)
            loss.backward()
            for gi, plist in enumerate(params):
                contrib = torch.zeros(groups[gi].channels, dtype=torch.float64)
                for p, dim in plist:
                    if p.grad is None:
                        continue
                    gw = (p.grad.detach() * p.detach()).to(torch.float64)
                    contrib += gw.movedim(dim, 0).reshape(gw.shape[dim], -1).sum(1)
                scores[gi] += contrib.pow(2)
    finally:
        for p, grad, req in saved.values():
            p.grad = grad
            p.requires_grad_(req)
        model.train(was_training)
    return scores
