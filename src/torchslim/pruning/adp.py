"""Activation-density pruning in training (ADP; Foldy-Porto, Venkatesha, Panda 2020, arXiv 2002.02949).

During training, the activation density of a layer, ``AD_l`` = the fraction of its ReLU outputs that are
non-zero (over the samples of a density pass, every position and channel), says how much of its width
the layer uses. ADP periodically resizes every layer to ``ceil(AD_l * width_l)`` channels and keeps
training the smaller network, until the densities stabilise (no layer would shrink by more than ``tol``),
so a compact network comes out of one training run, without a pretrained model. Stop rule: no group
would shrink by more than ``tol``, or no group's density moved by more than ``stable_tol`` since the
previous measurement (densities stabilised), or ``max_resizes`` reached.

Here a "layer" is a prunable dependency group (:mod:`torchslim.pruning.structured.dependency`): the ReLU
modules that run right after a member of a group (conv -> BN -> ReLU, or the ReLU after a residual add)
measure it; a group with several such ReLUs (a residual stream) uses their pooled density. Groups without
a ReLU are left at full width. Channel surgery is :func:`torchslim.pruning.prune_` with ``widths``: the
removed channels are those of lowest per-channel density (``select="density"``, registered as the
``"activation_density"`` criterion) or of lowest L1 filter norm (``select="l1"``). The trained weights of
the kept channels are kept (the paper's resizing is applied to the network being trained; a fresh
optimizer state is created after each surgery).

A training-compute counter adds ``3 * forward MACs per sample * samples`` for every epoch at the width
the epoch ran at (forward + backward ~ 3x forward), next to the same count for full-width training.

Example::

    >>> import torch
    >>> from torch import nn
    >>> from torchslim.pruning.adp import activation_density
    >>> m = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Conv2d(4, 2, 1))
    >>> dens = activation_density(m, [torch.randn(2, 1, 5, 5)], (torch.randn(1, 1, 5, 5),))
    >>> 0.0 <= dens["0"].layer <= 1.0
    True
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import torch
from pydantic import Field
from torch import nn
from torch.utils.data import Dataset

from torchslim.core.config import Config
from torchslim.core.cost import profile
from torchslim.core.errors import ConfigError
from torchslim.core.graph import run_with_hooks
from torchslim.pruning.api import ChannelPrune, prune_
from torchslim.train import TrainConfig, Trainer

__all__ = [
    "ADPConfig",
    "ADPResult",
    "GroupDensity",
    "activation_density",
    "adp_train",
    "adp_widths",
    "relu_groups",
]

_RELUS: tuple[type[nn.Module], ...] = (nn.ReLU, nn.ReLU6)


@dataclass
class GroupDensity:
    """Activation density of one dependency group: ``layer`` (fraction of non-zero ReLU outputs) and
    ``channel`` (per-channel fraction, float64 ``[channels]``), from the ReLUs in ``relus``."""

    layer: float
    channel: torch.Tensor
    relus: list[str]


def relu_groups(model: nn.Module, example_inputs: tuple[Any, ...]) -> dict[str, list[str]]:
    """Group name -> ReLU module paths that measure it.

    A ReLU module is assigned to the group of the last group member that ran before it in the forward
    (conv/BN output -> ReLU; in a residual block the shortcut/second BN before the add), when its output has
    that group's channel count. Only prunable groups are returned.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> m = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 2, 3))
        >>> relu_groups(m, (torch.randn(1, 1, 8, 8),))
        {'0': ['2']}
    """
    from torchslim.pruning.structured.dependency import build_groups

    groups = [g for g in build_groups(model, example_inputs) if g.prunable]
    member_of: dict[str, Any] = {}
    for g in groups:
        for m in [*g.producers, *g.passthrough]:
            member_of[m.path] = g
    order: list[tuple[str, nn.Module, torch.Tensor | None]] = []
    hooks = []
    for path, mod in model.named_modules():
        if path and not list(mod.children()):
            def hook(mod_: nn.Module, args: Any, out: Any, path_: str = path) -> None:
                order.append((path_, mod_, out if isinstance(out, torch.Tensor) else None))

            hooks.append((mod, hook))
    run_with_hooks(model, example_inputs, hooks)
    out: dict[str, list[str]] = {}
    last: Any = None
    for path, mod, y in order:
        if path in member_of:
            last = member_of[path]
        elif isinstance(mod, _RELUS) and last is not None and y is not None and y.dim() >= 2 \
                and y.shape[1] == last.channels:
            if path not in out.setdefault(last.name, []):
                out[last.name].append(path)
    return out


def activation_density(
    model: nn.Module,
    data: Iterable[Any] | torch.Tensor,
    example_inputs: tuple[Any, ...],
    groups: dict[str, list[str]] | None = None,
) -> dict[str, GroupDensity]:
    """Per-group activation density over ``data`` (batches of ``x`` or ``(x, y)``), model in eval mode.

    ``layer`` = (non-zero ReLU outputs) / (all ReLU outputs) pooled over the group's ReLUs; ``channel`` the
    same per channel (dim 1). ``groups`` maps group names to ReLU paths (default: :func:`relu_groups`).

    Example:
        >>> import torch
        >>> from torch import nn
        >>> m = nn.Sequential(nn.Conv2d(1, 2, 1, bias=False), nn.ReLU(), nn.Conv2d(2, 1, 1))
        >>> with torch.no_grad():
        ...     _ = m[0].weight.copy_(torch.tensor([[[[1.0]]], [[[-1.0]]]]))
        >>> d = activation_density(m, [torch.tensor([[[[1.0, -2.0, 3.0]]]])], (torch.zeros(1, 1, 1, 3),))
        >>> d["0"].channel.tolist(), d["0"].layer
        ([0.6666666666666666, 0.3333333333333333], 0.5)
    """
    from torchslim.pruning.structured.importance import as_batches, batch_input

    groups = relu_groups(model, example_inputs) if groups is None else groups
    batches = as_batches(data)
    assert batches is not None
    nz: dict[str, torch.Tensor] = {}
    tot: dict[str, int] = {}
    handles = []
    for gname, relus in groups.items():
        for rp in relus:
            def hook(mod: nn.Module, args: Any, y: torch.Tensor, g: str = gname) -> None:
                pos = (y.detach() != 0).to(torch.float64)
                per = pos.transpose(0, 1).reshape(y.shape[1], -1).sum(1)
                nz[g] = nz[g] + per if g in nz else per
                tot[g] = tot.get(g, 0) + y.numel() // y.shape[1]

            handles.append(model.get_submodule(rp).register_forward_hook(hook))
    was = model.training
    try:
        model.eval()
        with torch.no_grad():
            for b in batches:
                model(batch_input(b))
    finally:
        model.train(was)
        for h in handles:
            h.remove()
    out: dict[str, GroupDensity] = {}
    for gname, relus in groups.items():
        if gname not in nz:
            continue
        ch = nz[gname] / tot[gname]
        out[gname] = GroupDensity(layer=float(ch.mean()), channel=ch, relus=list(relus))
    return out


def adp_widths(densities: dict[str, GroupDensity], min_channels: int = 1) -> dict[str, int]:
    """New width per group: ``max(min_channels, ceil(AD * width))`` (never more than the width).

    Example:
        >>> import torch
        >>> adp_widths({"g": GroupDensity(0.3, torch.zeros(10), [])})
        {'g': 3}
    """
    out = {}
    for name, d in densities.items():
        w = d.channel.numel()
        out[name] = min(w, max(min_channels, math.ceil(d.layer * w - 1e-9)))
    return out


# the "activation_density" criterion: per-channel density on the calibration batches ----------------------
def density_scores(model: nn.Module, groups: Sequence[Any], ctx: Any) -> list[torch.Tensor]:
    """Per-channel activation density of each group (its ReLUs, see :func:`relu_groups`); 0 without one."""
    assert ctx.data is not None
    x0 = ctx.data[0]
    from torchslim.pruning.structured.importance import batch_input

    ex = (batch_input(x0)[:1],)
    dens = activation_density(model, ctx.data, ex)
    return [dens[g.name].channel if g.name in dens else torch.zeros(g.channels, dtype=torch.float64)
            for g in groups]


class ADPConfig(Config):
    """Activation-density pruning during training.

    Attributes:
        train: the training run (``epochs`` is the whole budget; the LR schedule spans it).
        prune_every: epochs between density measurements / resizes.
        tol: stop resizing when no group would lose more than this fraction of its width.
        stable_tol: stop resizing when no group's density moved by more than this since the previous
            measurement (the densities have stabilised; with BatchNorm before ReLU they sit near 0.5 at
            any width, so without this rule every resize would halve the layer again).
        warmup_epochs: epochs trained before the first density measurement.
        max_resizes: upper bound on the number of resizes (``None``: no bound).
        min_channels: never resize a group below this.
        select: which channels go: ``"density"`` (lowest per-channel density) or ``"l1"``.
        density_samples: training samples used for each density pass.
    """

    type_name: ClassVar[str] = "adp"

    train: TrainConfig = Field(default_factory=TrainConfig)
    prune_every: int = Field(default=1, ge=1)
    tol: float = Field(default=0.05, ge=0.0, lt=1.0)
    stable_tol: float = Field(default=0.1, ge=0.0, le=1.0)
    warmup_epochs: int = Field(default=2, ge=0)
    max_resizes: int | None = Field(default=None, ge=0)
    min_channels: int = Field(default=2, ge=1)
    select: Literal["density", "l1"] = "density"
    density_samples: int = Field(default=512, ge=1)


@dataclass
class ADPResult:
    """What :func:`adp_train` did: ``history`` (per resize: epoch, densities, widths before/after),
    ``stopped_at`` (epoch where densities stabilised, or ``None``), ``train_macs`` (counted training MACs),
    ``full_width_train_macs`` (same count at the initial width), ``macs_before``/``macs_after`` (inference
    MACs per sample), ``params_before``/``params_after``."""

    history: list[dict[str, Any]] = field(default_factory=list)
    stopped_at: int | None = None
    train_macs: int = 0
    full_width_train_macs: int = 0
    macs_before: int = 0
    macs_after: int = 0
    params_before: int = 0
    params_after: int = 0


class _ADPCallback:
    def __init__(self, cfg: ADPConfig, data: Dataset[Any], example_inputs: tuple[Any, ...], n: int,
                 result: ADPResult) -> None:
        self.cfg = cfg
        self.example_inputs = example_inputs
        self.result = result
        self.n = n
        self.active = True
        self.prev: dict[str, float] = {}
        self.resizes = 0
        idx = torch.arange(min(cfg.density_samples, n))
        items = [data[int(i)] for i in idx]
        xs = torch.stack([it[0] for it in items])
        self.calib = [xs[i:i + 256] for i in range(0, len(xs), 256)]

    def on_epoch_end(self, trainer: Trainer, epoch: int, logs: dict[str, Any]) -> None:
        model = trainer.model
        macs = profile(model, self.example_inputs).macs
        self.result.train_macs += 3 * macs * self.n
        if not self.active or trainer.is_last_epoch or epoch + 1 < self.cfg.warmup_epochs \
                or (epoch + 1 - self.cfg.warmup_epochs) % self.cfg.prune_every:
            return
        dens = activation_density(model, self.calib, self.example_inputs)
        new = adp_widths(dens, self.cfg.min_channels)
        old = {g: d.channel.numel() for g, d in dens.items()}
        shrink = max((1 - new[g] / old[g] for g in new), default=0.0)
        layer = {g: d.layer for g, d in dens.items()}
        moved = max((abs(layer[g] - self.prev[g]) for g in layer if g in self.prev), default=None)
        entry = {"epoch": epoch, "density": {g: round(v, 4) for g, v in layer.items()},
                 "widths_before": old, "widths_after": new, "max_shrink": shrink, "density_moved": moved}
        self.result.history.append(entry)
        self.prev = layer
        logs["adp_max_shrink"] = shrink
        done = self.cfg.max_resizes is not None and self.resizes >= self.cfg.max_resizes
        if shrink <= self.cfg.tol or (moved is not None and moved <= self.cfg.stable_tol) or done:
            self.active = False
            self.result.stopped_at = epoch
            entry["widths_after"] = old
            return
        self.resizes += 1
        crit = "activation_density" if self.cfg.select == "density" else "l1"
        prune_(model, ChannelPrune(ratio=0.0, importance=crit), self.example_inputs, data=self.calib,
               widths={g: w for g, w in new.items() if w < old[g]})
        trainer.reset_optimizer()  # parameters were replaced by thinner ones


def adp_train(
    model: nn.Module,
    data: Dataset[Any],
    config: ADPConfig,
    example_inputs: tuple[Any, ...],
    *,
    progress: bool = False,
) -> ADPResult:
    """Train ``model`` on ``data`` with ADP resizing every ``config.prune_every`` epochs after
    ``config.warmup_epochs`` (in place), until the stop rule holds.

    Args:
        model: the (over-wide, untrained or trained) model; channels are physically removed in place.
        data: map-style ``(x, y)`` training set (the first ``density_samples`` items feed the density passes).
        config: an :class:`ADPConfig`.
        example_inputs: tuple with one example input batch (batch 1) for graph capture and MAC counts.
        progress: show the trainer's progress bar.

    Returns:
        an :class:`ADPResult` (resize history, training-MACs counter, MACs/params before and after).

    Example::

        res = adp_train(model, train_set, ADPConfig(train=TrainConfig(epochs=12)), (x[:1],))
        res.macs_before / res.macs_after, res.train_macs / res.full_width_train_macs
    """
    from torchslim.pruning.api import count_params

    if not isinstance(config, ADPConfig):
        raise ConfigError(f"adp_train expects an ADPConfig, got {type(config).__name__}")
    if not isinstance(example_inputs, tuple):
        raise ConfigError(f"example_inputs must be a tuple, got {type(example_inputs).__name__}; wrap as (x,)")
    n = len(data)  # type: ignore[arg-type]
    res = ADPResult(macs_before=profile(model, example_inputs).macs, params_before=count_params(model))
    res.full_width_train_macs = 3 * res.macs_before * n * config.train.epochs
    cb = _ADPCallback(config, data, example_inputs, n, res)
    Trainer(model, config.train, callbacks=[cb], progress=progress).fit(data)
    res.macs_after = profile(model, example_inputs).macs
    res.params_after = count_params(model)
    return res
