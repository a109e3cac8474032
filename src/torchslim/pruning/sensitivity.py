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
        k = n_keep(g.channels, config.ratio, config.round_to, config.round_mode)
        if k >= g.channels:
            continue
        m = copy.deepcopy(model)
        prune_(m, single, example_inputs, data=data, widths={g.name: k})
        score = float(evaluate(m))
        out.append(GroupSensitivity(g.name, g.channels, k, score, baseline - score))
    out.sort(key=lambda s: s.drop, reverse=True)
    return baseline, out


@dataclass(frozen=True)
class WidthPlan:
    """Per-group widths chosen by :func:`sensitivity_widths`.

    Attributes:
        widths: channels kept per pruned group (groups kept whole are omitted).
        macs_before: MACs of the unpruned model on the example inputs.
        macs_after: MACs MEASURED on the model pruned to ``widths``.
        budget: ``int(macs_ratio * macs_before)``.
        baseline: ``evaluate(model)`` of the unpruned model.
        options: group -> list of ``(width, drop, MACs with only this group at that width)``, full width first.
    """

    widths: dict[str, int]
    macs_before: int
    macs_after: int
    budget: int
    baseline: float
    options: dict[str, list[tuple[int, float, int]]]


def sensitivity_widths(
    model: nn.Module,
    config: ChannelPrune,
    example_inputs: tuple[Any, ...],
    evaluate: Callable[[nn.Module], float],
    macs_ratio: float,
    ratios: tuple[float, ...] = (0.25, 0.5, 0.75),
    data: Any = None,
    max_rounds: int = 8,
) -> WidthPlan:
    """Non-uniform widths that meet a MACs budget while pruning insensitive groups more.

    Rule (a multiple-choice knapsack over groups): every group the config may prune (its include / exclude /
    min_channels apply) gets the options "full width" and ``n_keep(C, r, round_to)`` for each ``r`` in
    ``ratios``. Each option is measured ALONE on a copy: its sensitivity (``baseline - evaluate``, clipped at
    0) and the MACs it saves. :func:`~torchslim.search.solvers.pareto_dp` then picks one option per group
    minimising the summed sensitivity subject to the summed savings reaching the budget. Savings of two
    groups meeting at one layer overlap (the sum over-counts), so the target is tightened by the measured
    excess and re-solved (``max_rounds``); the returned plan's MEASURED MACs are within the budget.

    ``model`` is not modified; ``config.ratio`` is ignored. Evaluate on training / calibration samples.

    Raises:
        PruneError: even the smallest option of every group exceeds the budget.

    Example::

        plan = sensitivity_widths(model, ChannelPrune(ratio=0.0, round_to=8), (x[:1],),
                                  lambda m: top1(m, calib_set), macs_ratio=0.5)
        prune_(model, ChannelPrune(ratio=0.0, round_to=8), (x[:1],), widths=plan.widths)
    """
    from torchslim.core.cost import profile
    from torchslim.pruning.api import PruneError
    from torchslim.search.solvers import pareto_dp

    if not 0.0 < macs_ratio <= 1.0:
        raise PruneError(f"sensitivity_widths: macs_ratio must be in (0, 1], got {macs_ratio}")
    if not ratios or any(not 0.0 < r < 1.0 for r in ratios):
        raise PruneError(f"sensitivity_widths: ratios must be a non-empty list in (0, 1), got {list(ratios)}")
    base_cfg = config.model_copy(update={"ratio": 0.0})
    width_only = base_cfg.model_copy(update={"importance": "l1"})  # MACs depend on the widths alone

    def macs_of(widths: dict[str, int]) -> int:
        trial = copy.deepcopy(model)
        prune_(trial, width_only, example_inputs, widths=widths)
        return int(profile(trial, example_inputs).macs)

    full = int(profile(model, example_inputs).macs)
    budget = int(macs_ratio * full)
    baseline = float(evaluate(model))
    candidates = prune_(copy.deepcopy(model), width_only, example_inputs).groups  # include/exclude applied
    options: dict[str, list[tuple[int, float, int]]] = {}
    for g in candidates:
        opts = [(g.channels_before, 0.0, full)]
        for k in sorted({n_keep(g.channels_before, r, config.round_to, config.round_mode) for r in ratios}, reverse=True):
            if k >= g.channels_before or k < config.min_channels:
                continue
            m = copy.deepcopy(model)
            prune_(m, base_cfg, example_inputs, data=data, widths={g.name: k})
            opts.append((k, max(baseline - float(evaluate(m)), 0.0), int(profile(m, example_inputs).macs)))
        if len(opts) > 1:
            options[g.name] = opts
    names = list(options)
    costs = [[o[1] for o in options[n]] for n in names]
    # size of an option = the MACs it does NOT save relative to the group's most saving option
    max_saved = [full - min(o[2] for o in options[n]) for n in names]
    sizes = [[ms - (full - o[2]) for o in options[n]] for n, ms in zip(names, max_saved, strict=True)]
    smallest = {n: options[n][-1][0] for n in names}
    target = budget
    best: tuple[dict[str, int], int] | None = None
    for _ in range(max_rounds):
        cap = target - full + sum(max_saved)
        if cap < 0:
            break
        choice = pareto_dp(costs, sizes, int(cap))
        widths = {n: options[n][c][0] for n, c in zip(names, choice, strict=True) if c > 0}
        measured = macs_of(widths)
        if measured <= budget:
            best = (widths, measured)
            break
        target -= measured - budget
    if best is None:
        measured = macs_of(smallest)
        if measured > budget:
            raise PruneError(
                f"sensitivity_widths: a MACs budget of {macs_ratio:.0%} ({budget:,}) is below what the smallest "
                f"allowed widths give ({measured:,} = {measured / full:.0%}); raise the budget, add larger ratios "
                "or lower round_to / min_channels"
            )
        best = (smallest, measured)
    return WidthPlan(widths=best[0], macs_before=full, macs_after=best[1], budget=budget, baseline=baseline,
                     options=options)
