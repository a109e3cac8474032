"""Knapsack channel pruning with inner distillation (Aflalo et al. 2020, arXiv 2002.08258).

Every channel of every prunable dependency group is a knapsack item:

* **value** = its first-order Taylor importance (the registered ``"taylor"`` criterion: the squared sum of
  ``grad * weight`` over the channel's producer and BatchNorm parameters, accumulated over calibration
  batches);
* **cost** = the MACs its removal saves: for each member layer of its group, the layer's MACs divided by
  the size of the channel dimension the group indexes (a producer's output channels, a consumer's input
  channels, a depthwise pass-through's channels; times ``H*W`` for a flattened map read by a Linear).

A 0/1 knapsack under the MACs budget (``macs_ratio`` of the original model, minus the MACs no prunable
channel accounts for) picks the channels to keep, solved exactly by dynamic programming
(:func:`torchslim.search.solvers.knapsack_01`, on costs quantised to ``resolution`` units, rounded up) or
greedily (:func:`~torchslim.search.solvers.knapsack_greedy`). Residual adds, depthwise convolutions and
concatenations are handled by the dependency groups (the paper's *block grouping*): a group is one item
set and all its members are pruned with the same indices. Each group keeps at least one channel.

The per-channel cost is a linearisation at full width: removing input channel ``i`` and output channel ``j``
of the same conv saves that ``(i, j)`` MAC block once, not twice, so the summed cost of the kept channels
is not the pruned model's MACs. The capacity is therefore bisected (``max_rounds`` solves): each solution
is applied to a copy and profiled, and the largest capacity whose MEASURED MACs are within the budget wins.
The result is always within the budget, or an error says why not.

Inner knowledge distillation (:func:`inner_distill`) then fine-tunes the pruned model against the unpruned
parent: cross-entropy and Hinton KD on the logits plus the mean squared error between the student's inner
features and the parent's features restricted to the kept channels (:func:`inner_kd_loss`), at the
group outputs (by default the BatchNorm of each pruned group, i.e. each conv block's output).

Example::

    >>> import torch
    >>> from torch import nn
    >>> from torchslim.pruning.knapsack import KnapsackPrune, knapsack_prune_
    >>> torch.manual_seed(0) and None
    >>> m = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
    ...                   nn.Conv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
    ...                   nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10))
    >>> batches = [(torch.randn(8, 1, 8, 8), torch.randint(0, 10, (8,)))]
    >>> r = knapsack_prune_(m, KnapsackPrune(macs_ratio=0.5), (torch.randn(1, 1, 8, 8),), batches)
    >>> r.macs_after <= r.budget
    True
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn
from torch.utils.data import Dataset

from torchslim.core.config import Config
from torchslim.core.cost import profile
from torchslim.core.errors import ConfigError
from torchslim.pruning.api import ChannelPrune, PruneError, PruneResult, prune_
from torchslim.train import TrainConfig, TrainResult

__all__ = [
    "InnerKD",
    "KnapsackPrune",
    "KnapsackResult",
    "channel_costs",
    "default_taps",
    "inner_distill",
    "inner_kd_loss",
    "knapsack_prune_",
    "knapsack_select",
]


class KnapsackPrune(Config):
    """Knapsack channel pruning under a MACs budget.

    Attributes:
        macs_ratio: MACs budget as a fraction of the unpruned model's MACs, in (0, 1].
        solver: ``"dp"`` (exact 0/1 knapsack by dynamic programming) or ``"greedy"`` (value/cost order).
        resolution: number of integer cost units the prunable MACs are quantised to for the DP
            (costs are rounded up, so the quantised solution never exceeds the linear budget).
        max_rounds: knapsack solves of the capacity bisection (each one prunes a copy and profiles it).
        round_to: knapsack items are blocks of this many channels (in value order), so kept widths are
            multiples of it whenever the group's width is (odd widths run slower in ONNX Runtime here).
        include: glob patterns on module paths (as :class:`~torchslim.pruning.ChannelPrune`).
        exclude: glob patterns on module paths left intact.
    """

    type_name: ClassVar[str] = "knapsack_prune"

    macs_ratio: float = Field(gt=0.0, le=1.0)
    solver: Literal["dp", "greedy"] = "dp"
    resolution: int = Field(default=4000, ge=10, le=200_000)
    max_rounds: int = Field(default=14, ge=2)
    round_to: int = Field(default=1, ge=1)
    include: list[str] = Field(default_factory=list)
    exclude: list[str] = Field(default_factory=list)


@dataclass
class KnapsackResult:
    """What :func:`knapsack_prune_` did.

    Attributes:
        widths: kept channels per pruned group name.
        keep: kept channel indices (ascending) per pruned group name, in the parent's numbering.
        macs_before: MACs of the unpruned model on ``example_inputs``.
        macs_after: measured MACs of the pruned model.
        budget: ``macs_ratio * macs_before`` (rounded down).
        value_kept: total Taylor value of the kept channels.
        rounds: knapsack solves done in the capacity bisection.
        prune: the :class:`~torchslim.pruning.PruneResult` of the physical removal.
    """

    widths: dict[str, int]
    keep: dict[str, torch.Tensor]
    macs_before: int
    macs_after: int
    budget: int
    value_kept: float
    rounds: int
    prune: PruneResult | None = None
    scores: dict[str, torch.Tensor] = field(default_factory=dict)


def _channel_dim(mod: nn.Module, role: str) -> int | None:
    if isinstance(mod, nn.modules.conv._ConvNd):
        return int(mod.in_channels if role == "in" else mod.out_channels)
    if isinstance(mod, nn.Linear):
        return int(mod.in_features if role == "in" else mod.out_features)
    return None


def channel_costs(model: nn.Module, groups: Sequence[Any], example_inputs: tuple[Any, ...]) -> dict[str, float]:
    """MACs saved by removing ONE channel of each group, from the profiled per-layer MACs.

    For every member layer with MACs (convolutions, Linear): ``layer MACs / size of the channel dim the
    group indexes * expand`` (``expand`` = ``H*W`` for a Linear reading a flattened map). BatchNorm and
    other members without MACs cost nothing.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> from torchslim.pruning.structured.dependency import build_groups
        >>> m = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Conv2d(4, 2, 3))
        >>> x = (torch.randn(1, 1, 6, 6),)
        >>> channel_costs(m, [g for g in build_groups(m, x) if g.prunable], x)  # 16*9*1 + 4*9*2 per channel
        {'0': 216.0}
    """
    rep = profile(model, example_inputs)
    macs = {lc.name: lc.macs for lc in rep.layers}
    out: dict[str, float] = {}
    for g in groups:
        total = 0.0
        for m in g.members:
            mod = model.get_submodule(m.path)
            dim = _channel_dim(mod, m.role)
            lm = macs.get(m.path, 0)
            if dim is None or lm == 0 or dim == 0:
                continue
            total += lm / dim * m.expand
        out[g.name] = total
    return out


def knapsack_select(
    values: dict[str, torch.Tensor],
    costs: dict[str, float],
    capacity: float,
    solver: Literal["dp", "greedy"] = "dp",
    resolution: int = 4000,
    round_to: int = 1,
) -> dict[str, torch.Tensor]:
    """Kept channel indices per group maximising the summed value with summed cost ``<= capacity``.

    ``values[g]`` is a per-channel value tensor of group ``g`` and ``costs[g]`` the cost of each of its
    channels. The most valuable channel of every group is always kept (a group cannot be emptied) and its
    cost is taken from the capacity first (keeping the argmax loses nothing: costs are equal within a
    group). With ``round_to > 1`` the items are blocks of ``round_to`` channels in value order (the first
    block is the one always kept), so kept counts are multiples of ``round_to``. The rest is a 0/1 knapsack on integer costs (exact when the costs are integers totalling at most
    ``resolution`` gcd units, else units of ``sum(all costs) / resolution``, rounded up) for
    :func:`~torchslim.search.solvers.knapsack_01`
    (``"dp"``) or :func:`~torchslim.search.solvers.knapsack_greedy` (``"greedy"``).

    Raises:
        PruneError: the capacity cannot hold one channel per group.

    Example:
        >>> import torch
        >>> keep = knapsack_select({"a": torch.tensor([3.0, 1.0, 2.0])}, {"a": 1.0}, capacity=2.0)
        >>> keep["a"].tolist()
        [0, 2]
    """
    from torchslim.search.solvers import knapsack_01, knapsack_greedy

    if solver not in ("dp", "greedy"):
        raise ConfigError(f"knapsack_select: solver must be 'dp' or 'greedy', got {solver!r}")
    if round_to < 1:
        raise ConfigError(f"knapsack_select: round_to must be >= 1, got {round_to}")
    names = list(values)
    order: dict[str, list[int]] = {}
    cap = float(capacity)
    for n in names:
        if values[n].numel() == 0:
            raise PruneError(f"knapsack_select: group {n!r} has no channels")
        # value order, ties by index (the first block of round_to=1 is the argmax)
        order[n] = torch.argsort(values[n].to(torch.float64), descending=True, stable=True).tolist()
        cap -= costs[n] * min(round_to, len(order[n]))
    if cap < -1e-9:
        raise PruneError(
            f"knapsack_select: capacity {capacity:.4g} cannot hold one block of {round_to} channel(s) per group "
            f"({capacity - cap:.4g} needed); raise the budget (macs_ratio)"
        )
    items: list[tuple[str, list[int]]] = []
    vals: list[float] = []
    raw_costs: list[float] = []
    for n in names:
        rest = order[n][round_to:]
        for start in range(0, len(rest), round_to):
            block = rest[start : start + round_to]
            items.append((n, block))
            # strictly positive values: a zero-importance channel is still worth more than nothing, so ties
            # between free capacity and an empty slot go to keeping it
            vals.append(float(values[n][block].sum()) + 1e-12)
            raw_costs.append(float(costs[n]) * len(block))
    total = sum(raw_costs)
    chosen: list[int]
    if not items:
        chosen = []
    elif total <= 0:
        chosen = list(range(len(items)))
    else:
        weights, int_cap = _integer_costs(raw_costs, max(cap, 0.0), resolution)
        fn = knapsack_01 if solver == "dp" else knapsack_greedy
        chosen = fn(vals, weights, int_cap)
    keep: dict[str, list[int]] = {n: list(order[n][:round_to]) for n in names}
    for i in chosen:
        n, block = items[i]
        keep[n].extend(block)
    return {n: torch.tensor(sorted(v), dtype=torch.long) for n, v in keep.items()}


def _integer_costs(costs: list[float], capacity: float, resolution: int) -> tuple[list[int], int]:
    """Integer weights and capacity for the DP: exact (divided by their gcd) when the costs are integers
    summing to at most ``resolution`` gcd units, else units of ``sum / resolution`` with costs rounded UP
    (a quantised solution then never exceeds the real capacity)."""
    total = sum(costs)
    if all(float(c).is_integer() for c in costs):
        g = 0
        for c in costs:
            g = math.gcd(g, int(c))
        if g > 0 and total / g <= resolution:
            return [int(c) // g for c in costs], int(math.floor(capacity / g + 1e-9))
    unit = total / resolution
    return [math.ceil(c / unit - 1e-9) for c in costs], int(math.floor(capacity / unit + 1e-9))


def _prunable(model: nn.Module, example_inputs: tuple[Any, ...], cfg: KnapsackPrune) -> list[Any]:
    import fnmatch

    from torchslim.pruning.structured.dependency import build_groups

    out = []
    for g in build_groups(model, example_inputs):
        if not g.prunable:
            continue
        if cfg.include and not any(fnmatch.fnmatchcase(m.path, p) for m in g.producers for p in cfg.include):
            continue
        if cfg.exclude and any(fnmatch.fnmatchcase(m.path, p) for m in g.members for p in cfg.exclude):
            continue
        out.append(g)
    return out


def knapsack_prune_(
    model: nn.Module,
    config: KnapsackPrune,
    example_inputs: tuple[Any, ...],
    data: Iterable[Any] | torch.Tensor,
    loss_fn: Callable[[nn.Module, Any], torch.Tensor] | None = None,
) -> KnapsackResult:
    """Prune ``model`` in place to ``config.macs_ratio`` of its MACs by a Taylor-value / MACs-cost knapsack.

    Args:
        model: the model (modified in place: channels are physically removed).
        config: a :class:`KnapsackPrune`.
        example_inputs: tuple of example inputs (MACs are counted on these; use batch 1).
        data: labelled calibration batches ``(x, y)`` for the Taylor importance.
        loss_fn: ``loss_fn(model, batch) -> loss`` for the Taylor importance (default: cross-entropy).

    Returns:
        a :class:`KnapsackResult` (``keep`` gives the parent's indices of the kept channels, used by
        :func:`inner_distill` to match inner features).

    Raises:
        ConfigError: ``config`` is not a KnapsackPrune.
        PruneError: the budget is below the MACs of the model with one channel left per group.

    Example::

        r = knapsack_prune_(model, KnapsackPrune(macs_ratio=0.5), (x[:1],), data=[(x, y)])
        r.macs_after / r.macs_before   # <= 0.5
    """
    from torchslim.pruning.importance import top_channels
    from torchslim.pruning.structured.importance import ScoreContext, as_batches, get_criterion

    if not isinstance(config, KnapsackPrune):
        raise ConfigError(f"knapsack_prune_ expects a KnapsackPrune config, got {type(config).__name__}")
    if not isinstance(example_inputs, tuple):
        raise PruneError(f"example_inputs must be a tuple, got {type(example_inputs).__name__}; wrap as (x,)")
    batches = as_batches(data)
    groups = _prunable(model, example_inputs, config)
    if not groups:
        raise PruneError("knapsack_prune_: the model has no prunable channel group (see build_groups)")
    macs_before = profile(model, example_inputs).macs
    budget = int(config.macs_ratio * macs_before)
    scores = dict(zip([g.name for g in groups],
                      get_criterion("taylor")(model, groups, ScoreContext(data=batches, loss_fn=loss_fn)),
                      strict=True))
    costs = channel_costs(model, groups, example_inputs)
    pr_cfg = ChannelPrune(ratio=0.0, importance="taylor", include=list(config.include),
                          exclude=list(config.exclude))

    # MACs depend on the widths only, so the trial copies are cut with the (data-free) L1 criterion
    width_only = pr_cfg.model_copy(update={"importance": "l1"})

    def measure(keep_: dict[str, torch.Tensor]) -> int:
        trial = copy.deepcopy(model)
        prune_(trial, width_only, example_inputs, widths={n: len(k) for n, k in keep_.items()})
        return profile(trial, example_inputs).macs

    # The linear cost model over-counts (a conv losing input and output channels saves their MAC block
    # once): bisect the knapsack capacity so that the MEASURED MACs of the pruned model meet the budget.
    lo = sum(costs[g.name] * min(config.round_to, g.channels) for g in groups)  # one block per group
    hi = sum(costs[g.name] * g.channels for g in groups)
    best: tuple[dict[str, torch.Tensor], int] | None = None
    smallest = knapsack_select(scores, costs, lo, config.solver, config.resolution, config.round_to)
    if measure(smallest) > budget:
        raise PruneError(
            f"knapsack_prune_: the MACs budget {budget:,} ({config.macs_ratio:.0%}) is below what one channel per "
            f"group already costs ({measure(smallest):,}); raise macs_ratio or exclude fewer layers"
        )
    rounds = 0
    for rounds in range(1, config.max_rounds + 1):  # noqa: B007
        cap = hi if rounds == 1 else (lo + hi) / 2
        keep_try = knapsack_select(scores, costs, cap, config.solver, config.resolution, config.round_to)
        m = measure(keep_try)
        if m <= budget:
            best = (keep_try, m)  # feasible capacities only grow during the bisection
            lo = cap
            if rounds == 1:
                break  # the whole model fits (macs_ratio = 1)
        else:
            hi = cap
    if best is None:
        best = (smallest, measure(smallest))
    keep, macs_after = best
    # prune_ keeps the top-k Taylor channels per group; the knapsack picked exactly those (equal cost
    # within a group), so the kept indices coincide. Check it rather than assume it.
    for n, k in keep.items():
        expect = top_channels(scores[n], len(k))
        if not torch.equal(expect, k):
            # equal-value ties may be broken differently: follow prune_'s choice for the feature map
            keep[n] = expect
    result = prune_(model, pr_cfg, example_inputs, data=batches,
                    widths={n: len(k) for n, k in keep.items()}, loss_fn=loss_fn)
    value = float(sum(scores[n][k].sum() for n, k in keep.items()))
    return KnapsackResult(
        widths={n: len(k) for n, k in keep.items()}, keep=keep, macs_before=macs_before, macs_after=macs_after,
        budget=budget, value_kept=value, rounds=rounds, prune=result, scores=scores,
    )


# ------------------------------------------------------------------------------------------------------
# inner knowledge distillation
# ------------------------------------------------------------------------------------------------------


class InnerKD(Config):
    """Fine-tuning with inner knowledge distillation from the unpruned parent.

    loss = ``(1 - alpha) * CE(student, y) + alpha * T^2 KL(teacher/T || student/T) + beta * inner``, with
    ``inner`` the mean over tapped layers of ``MSE(student feature, parent feature[:, kept channels])``.

    Attributes:
        temperature: Hinton KD temperature ``T``.
        alpha: weight of the logit KD term in [0, 1].
        beta: weight of the inner-feature term (>= 0; 0 gives plain logit KD).
        train: the fine-tuning schedule.
    """

    type_name: ClassVar[str] = "inner_kd"

    temperature: float = Field(default=4.0, gt=0)
    alpha: float = Field(default=0.5, ge=0.0, le=1.0)
    beta: float = Field(default=1.0, ge=0.0)
    train: TrainConfig = Field(default_factory=TrainConfig)


def inner_kd_loss(
    student_feats: dict[str, torch.Tensor],
    teacher_feats: dict[str, torch.Tensor],
    keep: dict[str, torch.Tensor | None],
) -> torch.Tensor:
    """Mean over taps of ``MSE(student[path], teacher[path][:, keep[path]])`` (channel dim 1).

    ``keep[path]`` is the parent's indices of the student's channels at that tap (``None``: same
    channels). Each MSE is the mean over all elements.

    Raises:
        ConfigError: a tap is missing or the shapes do not match after the channel selection.

    Example:
        >>> import torch
        >>> t = torch.arange(6.0).reshape(1, 3, 2)
        >>> s = torch.zeros(1, 2, 2)
        >>> float(inner_kd_loss({"a": s}, {"a": t}, {"a": torch.tensor([0, 2])}))  # (0+1+16+25)/4
        10.5
    """
    if not keep:
        raise ConfigError("inner_kd_loss: no taps given")
    terms = []
    for path, idx in keep.items():
        if path not in student_feats or path not in teacher_feats:
            raise ConfigError(f"inner_kd_loss: tap {path!r} missing from the student or teacher features")
        s, t = student_feats[path], teacher_feats[path]
        if idx is not None:
            t = t.index_select(1, idx.to(t.device))
        if s.shape != t.shape:
            raise ConfigError(
                f"inner_kd_loss: tap {path!r}: student {tuple(s.shape)} vs parent {tuple(t.shape)} after channel "
                "selection; tap a layer whose channels belong to one pruned group"
            )
        terms.append(F.mse_loss(s, t.detach()))
    return torch.stack(terms).mean()


def default_taps(model: nn.Module, example_inputs: tuple[Any, ...], keep: dict[str, torch.Tensor],
                 ) -> dict[str, torch.Tensor]:
    """Tap paths -> kept indices: the BatchNorm pass-through (or, without one, the producers) of every
    group in ``keep``, i.e. the output of each conv block, pre-residual-add. Call on the UNPRUNED parent."""
    from torchslim.pruning.structured.dependency import build_groups

    out: dict[str, torch.Tensor] = {}
    for g in build_groups(model, example_inputs):
        if g.name not in keep:
            continue
        bns = [m.path for m in g.passthrough
               if isinstance(model.get_submodule(m.path), nn.modules.batchnorm._BatchNorm)]
        for p in bns or [m.path for m in g.producers]:
            out[p] = keep[g.name]
    return out


def inner_distill(
    student: nn.Module,
    teacher: nn.Module,
    data: Dataset[Any],
    config: InnerKD,
    taps: dict[str, torch.Tensor | None],
    *,
    progress: bool = False,
) -> TrainResult:
    """Fine-tune the pruned ``student`` against its parent ``teacher`` with :class:`InnerKD`.

    Args:
        student: the pruned model (trained in place).
        teacher: the unpruned parent (frozen, eval mode).
        data: ``(x, y)`` training data set.
        config: an :class:`InnerKD`.
        taps: module path (present in both models) -> parent channel indices kept at that path's output
            (``None``: unchanged channels), e.g. from :func:`default_taps`.
        progress: show a progress bar.

    Example::

        r = knapsack_prune_(student, KnapsackPrune(macs_ratio=0.5), (x1,), calib)
        inner_distill(student, parent, train_set, InnerKD(), default_taps(parent, (x1,), r.keep))
    """
    from torchslim.distillation.engine import fit_student
    from torchslim.distillation.losses import kd_loss
    from torchslim.distillation.taps import Taps

    if not isinstance(config, InnerKD):
        raise ConfigError(f"inner_distill expects an InnerKD config, got {type(config).__name__}")
    paths = list(taps)
    s_taps = Taps(student, paths, role="student", other="the unpruned parent")
    t_taps = Taps(teacher, paths, role="teacher", other="the pruned student")

    def step_fn(model: nn.Module, batch: Any) -> torch.Tensor:
        x, y = batch[0], batch[1]
        with torch.no_grad():
            t_taps.clear()
            t_logits = teacher(x)
        s_taps.clear()
        s_logits = model(x)
        loss = (1 - config.alpha) * F.cross_entropy(s_logits, y)
        if config.alpha > 0:
            loss = loss + config.alpha * kd_loss(s_logits, t_logits, config.temperature)
        if config.beta > 0 and paths:
            loss = loss + config.beta * inner_kd_loss(
                {p: s_taps[p] for p in paths}, {p: t_taps[p] for p in paths}, taps)
        return loss

    try:
        return fit_student(student, teacher, data, config.train, step_fn, progress=progress)
    finally:
        s_taps.remove()
        t_taps.remove()
