"""Per-group pruning sensitivity: how much accuracy each dependency group costs when pruned alone.

For every prunable channel group, a copy of the model has only that group pruned (at the config's ratio
and rounding; every other group intact), and ``evaluate(model) -> float`` scores it. The sensitivity of a
group is the baseline score minus that score: large values mark groups to prune less. Evaluate on
training or calibration samples, never on the held-out set the final accuracy is reported on.

Example::

    from torchslim.pruning import ChannelPrune
    from torchslim.pruning.sensitivity import channel_sensitivity
    from torchslim.bench.accuracy import top1
    sens = channel_sensitivity(model, ChannelPrune(ratio=0.5, round_to=16), (x[:1],),
                               lambda m: top1(m, calib_set))
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import nn

from torchslim.pruning.api import ChannelPrune, prune_
from torchslim.pruning.importance import n_keep
from torchslim.pruning.structured import build_groups


@dataclass(frozen=True)
class GroupSensitivity:
    group: str
    channels: int
    kept: int
    score: float  # evaluate() with only this group pruned
    drop: float  # baseline score - score


def channel_sensitivity(
    model: nn.Module,
    config: ChannelPrune,
    example_inputs: tuple[Any, ...],
    evaluate: Callable[[nn.Module], float],
    data: Any = None,
) -> tuple[float, list[GroupSensitivity]]:
    """Return ``(baseline score, per-group sensitivities sorted by drop, largest first)``.

    ``model`` is not modified. ``data`` is passed to :func:`prune_` for data-driven criteria.
    """
    baseline = float(evaluate(model))
    single = config.model_copy(update={"ratio": 0.0})
    out: list[GroupSensitivity] = []
    for g in build_groups(model, example_inputs):
        if not g.prunable:
            continue
        k = n_keep(g.channels, config.ratio, config.round_to)
        if k >= g.channels:
            continue
        m = copy.deepcopy(model)
        prune_(m, single, example_inputs, data=data, widths={g.name: k})
        score = float(evaluate(m))
        out.append(GroupSensitivity(g.name, g.channels, k, score, baseline - score))
    out.sort(key=lambda s: s.drop, reverse=True)
    return baseline, out
