"""Registry of channel-importance criteria used by :func:`torchslim.pruning.prune_`.

A criterion scores every channel of every dependency group at once (data-driven criteria make one pass
over the calibration batches for all groups). Built-in names: ``"l1"``, ``"l2"``, ``"random"`` (filter
norms / random, no data), ``"bn_scale"`` (|gamma| of the group's BatchNorms, network slimming),
``"taylor"`` (first-order Taylor, needs labelled batches) and ``"hrank"`` (average feature-map rank,
needs batches). Modules are imported only when a criterion is used.

Example::

    >>> from torchslim.pruning.structured.importance import available, get_criterion
    >>> sorted(available())
    ['bn_scale', 'hrank', 'l1', 'l2', 'random', 'taylor']
    >>> get_criterion("hrank").needs_data
    True
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from torch import nn

    from torchslim.pruning.structured.dependency import ChannelGroup

__all__ = ["Criterion", "ScoreContext", "available", "get_criterion", "register_criterion", "as_batches"]


@dataclass
class ScoreContext:
    """What a criterion may use besides the model and the groups.

    Attributes:
        data: calibration batches (``x`` tensors or ``(x, y, ...)`` tuples), or ``None``.
        generator: RNG for random criteria.
        loss_fn: ``loss_fn(model, batch) -> scalar`` for gradient-based criteria (default: cross-entropy of
            ``model(batch[0])`` against ``batch[1]``).
        options: free-form per-criterion options (e.g. ``{"max_batches": 4}``).
    """

    data: Sequence[Any] | None = None
    generator: torch.Generator | None = None
    loss_fn: Callable[[nn.Module, Any], torch.Tensor] | None = None
    options: dict[str, Any] = field(default_factory=dict)


#: ``fn(model, groups, ctx) -> one float64 score tensor of shape [group.channels] per group``
ScoreFn = Callable[["nn.Module", "Sequence[ChannelGroup]", ScoreContext], list[torch.Tensor]]


@dataclass(frozen=True)
class Criterion:
    """A registered criterion: ``name``, whether it ``needs_data`` and its scoring function."""

    name: str
    needs_data: bool
    fn: ScoreFn
    doc: str = ""

    def __call__(self, model: nn.Module, groups: Sequence[ChannelGroup], ctx: ScoreContext) -> list[torch.Tensor]:
        if self.needs_data and not ctx.data:
            raise ValueError(
                f"importance={self.name!r} needs calibration data: pass prune_(..., data=batches) with a few "
                f"batches of inputs{' and labels' if self.name == 'taylor' else ''}, or use 'l1'/'bn_scale'"
            )
        scores = self.fn(model, groups, ctx)
        for g, s in zip(groups, scores, strict=True):
            if s.shape != (g.channels,):
                raise RuntimeError(f"criterion {self.name!r} returned shape {tuple(s.shape)} for group {g.name} "
                                   f"with {g.channels} channels")
        return scores


_LAZY: dict[str, tuple[str, str, bool]] = {
    "bn_scale": ("torchslim.pruning.structured.importance.bn_scale", "bn_scale_scores", False),
    "taylor": ("torchslim.pruning.structured.importance.taylor", "taylor_scores", True),
    "hrank": ("torchslim.pruning.structured.importance.hrank", "hrank_scores", True),
    "activation_density": ("torchslim.pruning.adp", "density_scores", True),
    "feature_relevance": ("torchslim.pruning.gradual", "frs_scores", True),
    "apqnn_redundancy": ("torchslim.pruning.apqnn", "apqnn_scores", False),
}
_REGISTERED: dict[str, Criterion] = {}


def _norm_scores(model: nn.Module, groups: Sequence[ChannelGroup], p: float) -> list[torch.Tensor]:
    from torchslim.pruning.importance import group_scores

    return [group_scores([m.handler.importance(model.get_submodule(m.path), p) for m in g.producers])
            for g in groups]


def l1_scores(model: nn.Module, groups: Sequence[ChannelGroup], ctx: ScoreContext) -> list[torch.Tensor]:
    """Sum over the group's producers of each filter's L1 norm, divided by that producer's largest."""
    return _norm_scores(model, groups, 1.0)


def l2_scores(model: nn.Module, groups: Sequence[ChannelGroup], ctx: ScoreContext) -> list[torch.Tensor]:
    """As ``l1`` with L2 filter norms."""
    return _norm_scores(model, groups, 2.0)


def random_scores(model: nn.Module, groups: Sequence[ChannelGroup], ctx: ScoreContext) -> list[torch.Tensor]:
    """Uniform random scores from ``ctx.generator`` (the ``random`` baseline)."""
    return [torch.rand(g.channels, generator=ctx.generator, dtype=torch.float64) for g in groups]


def register_criterion(name: str, fn: ScoreFn, needs_data: bool = False, doc: str = "") -> Criterion:
    """Register a criterion under ``name`` (usable as ``ChannelPrune(importance=name)``).

    Raises:
        ValueError: ``name`` is empty or already registered.
    """
    if not name or not name.strip():
        raise ValueError("criterion name must be a non-empty string")
    if name in _REGISTERED or name in _LAZY:
        raise ValueError(f"importance criterion {name!r} is already registered; pick another name")
    crit = Criterion(name, needs_data, fn, doc)
    _REGISTERED[name] = crit
    return crit


def available() -> list[str]:
    """Names of all criteria."""
    return [*_REGISTERED, *_LAZY]


def get_criterion(name: str) -> Criterion:
    """The criterion registered as ``name``.

    Raises:
        KeyError: unknown name (the message lists the known ones).
    """
    if name in _REGISTERED:
        return _REGISTERED[name]
    if name in _LAZY:
        mod, attr, needs = _LAZY[name]
        fn = getattr(importlib.import_module(mod), attr)
        crit = Criterion(name, needs, fn, (fn.__doc__ or "").strip().split("\n")[0])
        _REGISTERED[name] = crit
        del _LAZY[name]
        return crit
    raise KeyError(f"unknown importance criterion {name!r}; known: {', '.join(sorted(available()))}")


def as_batches(data: Iterable[Any] | torch.Tensor | None, max_batches: int | None = None) -> list[Any] | None:
    """Normalise calibration data to a list of batches: a tensor is one batch; a DataLoader / list is
    taken as is (at most ``max_batches``)."""
    if data is None:
        return None
    if isinstance(data, torch.Tensor):
        return [data]
    out = []
    for i, b in enumerate(data):
        if max_batches is not None and i >= max_batches:
            break
        out.append(b)
    if not out:
        raise ValueError("calibration data is empty: pass at least one batch")
    return out


def batch_input(batch: Any) -> torch.Tensor:
    """The model input of a batch: the tensor itself or the first element of a tuple/list."""
    if isinstance(batch, torch.Tensor):
        return batch
    if isinstance(batch, (tuple, list)) and batch and isinstance(batch[0], torch.Tensor):
        return batch[0]
    raise TypeError(f"a calibration batch must be a tensor or an (x, y) tuple, got {type(batch).__name__}")


for _name, _fn in (("l1", l1_scores), ("l2", l2_scores), ("random", random_scores)):
    _REGISTERED[_name] = Criterion(_name, False, _fn, (_fn.__doc__ or "").strip())
