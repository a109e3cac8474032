"""Filter attenuation (Mousa-Pasandi et al., ICIP 2020, arXiv 2002.03299) as a Trainer callback.

Instead of removing the weak filters at once, fine-tune the full network and, after every optimizer
step, multiply the currently weakest filters by ``beta < 1``: they fade gradually, but a filter whose
importance grows again (the gradient pushes it back up) stops being attenuated and can "come back".
At the end the weak set is near zero and removed physically (:meth:`FilterAttenuation.prune`), so the
final removal barely changes the network's function.

Here a "filter" is a channel of a dependency group (:func:`torchslim.pruning.structured.build_groups`):
attenuating channel ``c`` scales the producers' filter ``c`` (weights and bias) and the group's BatchNorm
``gamma_c`` and ``beta_c``. Scaling the BN affine parameters is needed: BatchNorm renormalises a scaled
conv output, so attenuating the conv alone would change nothing. The weak set is chosen by any
registered data-free criterion (``"l1"`` by default), re-ranked every ``every`` steps.

Example::

    >>> att = FilterAttenuation(model, (x,), ratio=0.5, beta=0.9)                  # doctest: +SKIP
    >>> Trainer(model, TrainConfig(epochs=2), callbacks=[att]).fit(train_set)    # doctest: +SKIP
    >>> result = att.prune()          # removes the attenuated channels         # doctest: +SKIP
    >>> att.returned                  # channels that were attenuated once but are kept  # doctest: +SKIP
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from torchslim.pruning.importance import n_keep, top_channels
from torchslim.train.callbacks import Callback

if TYPE_CHECKING:
    from torchslim.pruning.api import PruneResult
    from torchslim.train.trainer import Trainer

_BN = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


class FilterAttenuation(Callback):
    """Attenuate the weakest ``ratio`` of each group's channels by ``beta`` after every training step.

    Args:
        model: the model being trained (the same object the Trainer trains).
        example_inputs: inputs for graph capture, e.g. ``(torch.randn(1, 1, 28, 28),)``.
        ratio: fraction of channels per group to attenuate (and finally remove), in (0, 1).
        beta: attenuation factor per step, in (0, 1).
        importance: a data-free registered criterion (``"l1"``, ``"l2"``, ``"bn_scale"``).
        round_to: kept counts rounded up to a multiple of this (as :class:`ChannelPrune`).
        every: re-rank the channels every this many steps (the attenuation itself runs every step).
        include, exclude: as :class:`ChannelPrune`.

    Attributes:
        attenuated_ever: per group, the set of channels attenuated at least once.
        weak: per group, the channels attenuated at the latest step.
        returned: per group, channels attenuated at some step but not in the final weak set.
    """

    def __init__(self, model: nn.Module, example_inputs: tuple[Any, ...], ratio: float, beta: float = 0.9,
                 importance: str = "l1", round_to: int = 1, every: int = 1,
                 include: list[str] | None = None, exclude: list[str] | None = None) -> None:
        from torchslim.pruning.api import ChannelPrune, PruneError, _matches
        from torchslim.pruning.structured.dependency import build_groups
        from torchslim.pruning.structured.importance import get_criterion

        if not 0 < ratio < 1:
            raise ValueError(f"FilterAttenuation: ratio must be in (0, 1), got {ratio}")
        if not 0 < beta < 1:
            raise ValueError(f"FilterAttenuation: beta must be in (0, 1), got {beta}; 0.9-0.99 fades over tens of steps")
        if every < 1:
            raise ValueError(f"FilterAttenuation: every must be >= 1, got {every}")
        crit = get_criterion(importance)
        if crit.needs_data:
            raise PruneError(f"FilterAttenuation: importance={importance!r} needs data; use 'l1', 'l2' or 'bn_scale'")
        self.model, self.example_inputs = model, example_inputs
        self.config = ChannelPrune(ratio=ratio, importance=importance, round_to=round_to,
                                   include=include or [], exclude=exclude or [])
        self.beta, self.every, self.criterion = beta, every, crit
        groups = [g for g in build_groups(model, example_inputs) if g.prunable]
        if include:
            groups = [g for g in groups if any(_matches(m.path, include) for m in g.producers)]
        if exclude:
            groups = [g for g in groups if not any(_matches(m.path, exclude) for m in g.members)]
        self.groups = [g for g in groups if n_keep(g.channels, ratio, round_to) < g.channels]
        if not self.groups:
            raise PruneError("FilterAttenuation: no prunable group would lose a channel at this ratio/round_to")
        self.weak: dict[str, torch.Tensor] = {}
        self.attenuated_ever: dict[str, set[int]] = {g.name: set() for g in self.groups}
        self._step = 0

    # ---- mechanics ---------------------------------------------------------------------------------
    def rank(self) -> None:
        """Recompute each group's weak set from the current weights."""
        from torchslim.pruning.structured.importance import ScoreContext

        scores = self.criterion(self.model, self.groups, ScoreContext())
        for g, s in zip(self.groups, scores, strict=True):
            keep = top_channels(s, n_keep(g.channels, self.config.ratio, self.config.round_to))
            mask = torch.ones(g.channels, dtype=torch.bool)
            mask[keep] = False
            self.weak[g.name] = mask.nonzero().flatten()
            self.attenuated_ever[g.name].update(int(i) for i in self.weak[g.name])

    @torch.no_grad()
    def attenuate(self) -> None:
        """Multiply the weak channels' producer filters and BN affine parameters by ``beta``."""
        for g in self.groups:
            idx = self.weak[g.name]
            if idx.numel() == 0:
                continue
            for m in [*g.producers, *g.passthrough]:
                mod = self.model.get_submodule(m.path)
                if m.role == "through" and not isinstance(mod, _BN):
                    continue  # depthwise pass-through: its input is already attenuated
                for name in ("weight", "bias"):
                    p = getattr(mod, name, None)
                    if isinstance(p, torch.Tensor) and p.dim() >= 1 and p.shape[0] == g.channels:
                        p[idx] *= self.beta

    # ---- Trainer hooks -----------------------------------------------------------------------------
    def on_train_start(self, trainer: Trainer) -> None:
        self.rank()

    def on_step_end(self, trainer: Trainer, step: int, loss: float) -> None:
        if self._step % self.every == 0:
            self.rank()
        self.attenuate()
        self._step += 1

    # ---- results -----------------------------------------------------------------------------------
    @property
    def returned(self) -> dict[str, set[int]]:
        """Channels attenuated at some point but not in the current weak set (they came back)."""
        return {name: ever - {int(i) for i in self.weak.get(name, torch.empty(0))}
                for name, ever in self.attenuated_ever.items()}

    def prune(self) -> PruneResult:
        """Physically remove the current weak set (the same ``ratio``/criterion) with :func:`prune_`."""
        from torchslim.pruning.api import prune_

        return prune_(self.model, self.config, self.example_inputs)
