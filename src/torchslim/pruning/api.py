"""``ChannelPrune`` config and ``prune_``: dependency-aware channel pruning with physical removal.

Example::

    >>> import torch
    >>> from torch import nn
    >>> from torchslim.pruning import ChannelPrune, prune_
    >>> m = nn.Sequential(nn.Conv2d(3, 32, 3), nn.BatchNorm2d(32), nn.ReLU(), nn.Conv2d(32, 8, 3))
    >>> r = prune_(m, ChannelPrune(ratio=0.5), (torch.randn(1, 3, 16, 16),))
    >>> m[0].out_channels, m[1].num_features, m[3].in_channels
    (16, 16, 16)
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from pydantic import Field, field_validator
from torch import nn

from torchslim.core.config import Config
from torchslim.core.errors import ConfigError, TorchSlimError
from torchslim.pruning.importance import n_keep, top_channels


class ChannelPrune(Config):
    """Remove a fraction of the channels of every prunable dependency group.

    Attributes:
        ratio: fraction of channels removed per group, in [0, 1).
        importance: name of a registered criterion (``torchslim.pruning.structured.importance``):
            ``"l1"`` / ``"l2"`` filter norm (summed over the group's producers, normalised per producer),
            ``"random"``, ``"bn_scale"`` (BatchNorm |gamma|), ``"taylor"`` (first-order Taylor, needs
            labelled ``data``) or ``"hrank"`` (average feature-map rank, needs ``data``).
        round_to: kept counts are rounded to a multiple of this (16 suits ORT's fast conv kernels).
        round_mode: ``"up"`` (default: never remove more than ``ratio``), ``"nearest"`` or ``"down"``.
        min_channels: fail if a group would keep fewer channels than this.
        include: glob patterns on module paths; if given, only groups with a producer matching one are pruned.
        exclude: glob patterns on module paths; groups with any member matching one are left intact.
            The model's outputs (e.g. the classifier) and inputs are never pruned.
        seed: seed for ``importance="random"``.
    """

    type_name = "channel_prune"

    ratio: float = Field(ge=0.0, lt=1.0)
    importance: str = "l1"
    round_to: int = Field(default=1, ge=1)
    round_mode: Literal["up", "nearest", "down"] = "up"
    min_channels: int = Field(default=1, ge=1)
    include: list[str] = Field(default_factory=list)
    exclude: list[str] = Field(default_factory=list)
    seed: int = 0

    @field_validator("importance")
    @classmethod
    def _known_criterion(cls, v: str) -> str:
        from torchslim.pruning.structured.importance import available

        if v not in available():
            raise ValueError(f"unknown importance {v!r}; known: {', '.join(sorted(available()))}")
        return v

    @field_validator("include", "exclude")
    @classmethod
    def _non_empty_patterns(cls, v: list[str]) -> list[str]:
        for p in v:
            if not p.strip():
                raise ValueError("empty glob pattern")
        return v


@dataclass(frozen=True)
class GroupInfo:
    """One pruned (or kept-intact-by-ratio) dependency group."""

    name: str
    channels_before: int
    channels_after: int
    members: tuple[str, ...]
    kept: tuple[int, ...] = ()  # the kept channel indices, in the group's numbering before pruning


@dataclass
class PruneResult:
    """What :func:`prune_` did. ``skipped`` lists ``(module path, op, reason)`` for groups left intact
    because an op was not understood; ``untouched`` lists ``(group, reason)`` for groups left intact on
    purpose (model input/output, include/exclude)."""

    model: nn.Module
    groups: list[GroupInfo] = field(default_factory=list)
    skipped: list[tuple[str, str, str]] = field(default_factory=list)
    untouched: list[tuple[str, str]] = field(default_factory=list)
    params_before: int = 0
    params_after: int = 0

    def summary(self) -> str:
        lines = [f"params {self.params_before:,} -> {self.params_after:,} "
                 f"({1 - self.params_after / max(self.params_before, 1):.1%} removed)"]
        for g in self.groups:
            lines.append(f"  {g.name}: {g.channels_before} -> {g.channels_after} channels ({len(g.members)} layers)")
        for path, op, why in self.skipped:
            lines.append(f"  skipped {path or '<root>'} ({op}): {why}")
        return "\n".join(lines)


class PruneError(TorchSlimError, ValueError):
    """The requested pruning cannot be done (bad pattern, too few channels left)."""


def count_params(model: nn.Module) -> int:
    """Number of parameter elements (shared parameters counted once)."""
    seen: set[int] = set()
    total = 0
    for p in model.parameters():
        if id(p) not in seen:
            seen.add(id(p))
            total += p.numel()
    return total


def _matches(path: str, patterns: list[str]) -> bool:
    return any(fnmatch.fnmatchcase(path, p) for p in patterns)


def prune_(
    model: nn.Module,
    config: ChannelPrune,
    example_inputs: tuple[Any, ...],
    data: Iterable[Any] | torch.Tensor | None = None,
    widths: dict[str, int] | None = None,
    loss_fn: Callable[[nn.Module, Any], torch.Tensor] | None = None,
    keep: dict[str, Any] | None = None,
) -> PruneResult:
    """Physically remove channels from ``model`` in place, keeping coupled layers aligned.

    Steps: capture the model with FX, build channel dependency groups (conv -> BN -> consumers, residual
    adds unioning all producers of the sum, depthwise convs as pass-throughs, flatten -> Linear), score
    each group's channels by the summed filter norms of its producers, keep the top
    ``n_keep(C, ratio, round_to)`` and replace every member with a smaller module.

    Args:
        model: the model to prune (modified in place; also returned as ``result.model``).
        config: a :class:`ChannelPrune`.
        example_inputs: tuple of example inputs for capture, e.g. ``(torch.randn(1, 1, 28, 28),)``.
        data: calibration batches (a list / DataLoader of ``x`` or ``(x, y)``) for criteria that need
            data (``"hrank"``, ``"taylor"``); ignored by the others.
        widths: channels to keep per group name (``GroupInfo.name``, e.g. from
            :func:`torchslim.pruning.latency.choose_widths`); overrides ``ratio`` for those groups.
        loss_fn: ``loss_fn(model, batch) -> loss`` for ``"taylor"`` (default: cross-entropy on ``(x, y)``).
        keep: explicit channel indices to keep per group name (e.g. chosen by DCP or NPN); those groups keep
            exactly these channels, whatever ``ratio``, ``widths`` and the criterion say.

    Raises:
        ConfigError: ``config`` is not a ChannelPrune.
        PruneError: an include/exclude pattern matches no module, a group would keep fewer than
            ``min_channels``, ``widths`` / ``keep`` name an unknown group or an invalid count / index, or the criterion
            needs ``data`` that was not given (nothing is modified in any of these cases).
        CaptureError: the model cannot be traced with FX.
    """
    from torchslim.pruning.structured.dependency import build_groups

    if not isinstance(config, ChannelPrune):
        raise ConfigError(f"prune_ expects a ChannelPrune config, got {type(config).__name__}")
    if not isinstance(example_inputs, tuple):
        raise PruneError(f"example_inputs must be a tuple, got {type(example_inputs).__name__}; wrap as (x,)")
    paths = [n for n, _ in model.named_modules() if n]
    for kind, pats in (("include", config.include), ("exclude", config.exclude)):
        for p in pats:
            if not any(fnmatch.fnmatchcase(x, p) for x in paths):
                raise PruneError(
                    f"channel_prune.{kind}: pattern {p!r} matches no module; module paths look like "
                    f"{paths[:6]} (use glob patterns such as 'layer1.*')"
                )

    from torchslim.pruning.structured.importance import ScoreContext, as_batches, get_criterion

    criterion = get_criterion(config.importance)
    if criterion.needs_data and data is None:
        raise PruneError(
            f"channel_prune: importance={config.importance!r} needs calibration data; call "
            f"prune_(model, config, example_inputs, data=[batch, ...]) with a few (x, y) batches, "
            f"or choose 'l1' / 'bn_scale'"
        )
    groups = build_groups(model, example_inputs)
    if widths is not None:
        known = {g.name: g for g in groups if g.prunable}
        for name, w in widths.items():
            if name not in known:
                raise PruneError(f"widths: {name!r} is not a prunable group; prunable groups: {sorted(known)}")
            if not 1 <= int(w) <= known[name].channels:
                raise PruneError(f"widths[{name!r}] = {w} must be in [1, {known[name].channels}]")
    kept = _check_keep(keep, {g.name: g.channels for g in groups if g.prunable}) if keep else {}
    result = PruneResult(model=model, params_before=count_params(model))

    plan = []
    too_small = []
    for g in groups:
        if g.blocked:
            for entry in g.blocked:
                if entry not in result.skipped:
                    result.skipped.append(entry)
            continue
        if g.fixed:
            result.untouched.append((g.name, g.fixed))
            continue
        if not g.prunable:
            result.untouched.append((g.name, "no channel count"))
            continue
        producer_paths = [m.path for m in g.producers]
        member_paths = [m.path for m in g.members]
        if config.include and not any(_matches(p, config.include) for p in producer_paths):
            result.untouched.append((g.name, "not matched by include"))
            continue
        if config.exclude and any(_matches(p, config.exclude) for p in member_paths):
            result.untouched.append((g.name, "matched by exclude"))
            continue
        if g.name in kept:
            k = len(kept[g.name])
        elif widths and g.name in widths:
            k = int(widths[g.name])
        else:
            k = n_keep(g.channels, config.ratio, config.round_to, config.round_mode)
        if k < config.min_channels and k < g.channels:
            too_small.append(f"{g.name} ({g.channels} -> {k})")
        plan.append((g, k))
    if too_small:
        raise PruneError(
            f"channel_prune: ratio {config.ratio} would leave fewer than min_channels={config.min_channels} "
            f"channels in: {', '.join(too_small)}. Lower the ratio or min_channels, or exclude these layers."
        )

    # Decide every group's kept indices from the original weights, then slice.
    gen = torch.Generator().manual_seed(config.seed)
    to_score = [g for g, k in plan if k < g.channels and g.name not in kept]
    ctx = ScoreContext(data=as_batches(data), generator=gen, loss_fn=loss_fn)
    scores = dict(zip([g.name for g in to_score], criterion(model, to_score, ctx), strict=True)) if to_score else {}
    decisions = []
    for g, k in plan:
        if g.name in kept:
            idx = kept[g.name]
        else:
            idx = torch.arange(g.channels) if k >= g.channels else top_channels(scores[g.name], k)
        decisions.append((g, idx))

    with torch.no_grad():
        for g, chosen in decisions:
            if len(chosen) < g.channels:
                for m in g.members:
                    idx = chosen
                    if m.expand != 1:
                        idx = (chosen[:, None] * m.expand + torch.arange(m.expand)[None, :]).reshape(-1)
                    mod = model.get_submodule(m.path)
                    new = m.handler.prune_in(mod, idx) if m.role == "in" else m.handler.prune_out(mod, idx)
                    model.set_submodule(m.path, new)
            result.groups.append(
                GroupInfo(g.name, g.channels, len(chosen), tuple(str(m) for m in g.members), tuple(chosen.tolist()))
            )
    result.params_after = count_params(model)
    return result



def _check_keep(keep: dict[str, Any], sizes: dict[str, int]) -> dict[str, torch.Tensor]:
    """Validate explicit kept indices per group: known prunable group, non-empty, unique, in range (sorted)."""
    out: dict[str, torch.Tensor] = {}
    for name, idx in keep.items():
        if name not in sizes:
            raise PruneError(f"keep: {name!r} is not a prunable group; prunable groups: {sorted(sizes)}")
        t = torch.as_tensor(idx, dtype=torch.long).reshape(-1)
        if t.numel() == 0:
            raise PruneError(f"keep[{name!r}] is empty: a group must keep at least one channel")
        if len(set(t.tolist())) != t.numel():
            raise PruneError(f"keep[{name!r}] lists a channel twice: {t.tolist()}")
        if int(t.min()) < 0 or int(t.max()) >= sizes[name]:
            raise PruneError(f"keep[{name!r}]: indices {t.tolist()} out of range for a group of {sizes[name]} channels")
        out[name] = torch.sort(t).values
    return out
