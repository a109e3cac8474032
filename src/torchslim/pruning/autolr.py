"""AutoLR: layer-wise learning-rate auto-tuning and layer pruning for fine-tuning (Ro & Choi, AAAI 2021,
arXiv 2002.06048).

Fine-tuning a pretrained network with one learning rate moves the low-level layers about as much as (or
more than) the high-level ones, against the notion that low layers hold general features and high layers
task-specific ones. AutoLR tracks the **weight variation** of every layer during fine-tuning and tunes a
learning rate per layer so that the variation **rises with depth**, using the approximately linear
relation between a layer's learning rate and its weight variation; high-level layers that do not help the
target task are pruned (dropped).

Here:

* weight variation of a layer over an interval = ``||W_end - W_start||_2 / ||W_start||_2`` over the
  weights of its Conv/Linear modules (:func:`weight_variation`);
* after every epoch, the target variations rise geometrically with depth by a factor ``spread`` (first
  to last layer) at the level (geometric mean) of that epoch's measured variations, and each layer's LR
  multiplier is updated as ``m_l <- m_l * clip((target_l / v_l) ** gamma, 1/max_step, max_step)``
  (``gamma = 1``: the linear LR-variation relation; below 1 damps the noise of small runs);
* per-layer LRs are applied as gradient multipliers on a normal :class:`~torchslim.train.Trainer` run:
  exact per-layer LRs for SGD (with or without momentum) when ``weight_decay = 0`` (the default here);
* :func:`drop_layers_` replaces shape-preserving high-level blocks with ``nn.Identity`` and
  :func:`choose_drops` drops them from the top while the validation accuracy stays within a tolerance.

Example::

    >>> import torch
    >>> from torch import nn
    >>> from torchslim.pruning.autolr import weight_variation
    >>> m = nn.Sequential(nn.Linear(2, 2, bias=False))
    >>> before = {"0": torch.tensor([[3.0, 0.0], [0.0, 4.0]])}
    >>> after = {"0": torch.tensor([[3.0, 0.0], [0.0, 3.0]])}
    >>> weight_variation(before, after)  # ||diff|| / ||before|| = 1 / 5
    {'0': 0.2}
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from pydantic import Field
from torch import nn
from torch.utils.data import Dataset

from torchslim.core.config import Config
from torchslim.core.errors import ConfigError
from torchslim.core.graph import run_with_hooks
from torchslim.train import TrainConfig, Trainer

__all__ = [
    "AutoLRConfig",
    "AutoLRResult",
    "autolr_finetune",
    "choose_drops",
    "drop_layers_",
    "is_ascending",
    "layer_weights",
    "weight_variation",
    "weighted_layers",
]


def weighted_layers(model: nn.Module) -> list[str]:
    """Paths of the Conv/Linear modules in definition order (the default AutoLR "layers").

    Example:
        >>> weighted_layers(nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Flatten(), nn.Linear(2, 2)))
        ['0', '3']
    """
    return [n for n, m in model.named_modules() if isinstance(m, (nn.modules.conv._ConvNd, nn.Linear))]


def layer_weights(model: nn.Module, layers: Sequence[str]) -> dict[str, torch.Tensor]:
    """Flattened copy of the Conv/Linear weights under each layer path (a block gathers all of its own)."""
    out: dict[str, torch.Tensor] = {}
    for p in layers:
        mod = model.get_submodule(p)
        ws = [m.weight.detach().reshape(-1) for m in mod.modules()
              if isinstance(m, (nn.modules.conv._ConvNd, nn.Linear))]
        if not ws:
            raise ConfigError(f"AutoLR layer {p!r} has no Conv/Linear weight; pick layers such as "
                              f"{weighted_layers(model)[:4]}")
        out[p] = torch.cat(ws).to(torch.float64).clone()
    return out


def weight_variation(before: dict[str, torch.Tensor], after: dict[str, torch.Tensor]) -> dict[str, float]:
    """``||after - before||_2 / ||before||_2`` per layer (see the module example)."""
    out: dict[str, float] = {}
    for p, b in before.items():
        b64, a64 = b.to(torch.float64), after[p].to(torch.float64)
        out[p] = float((a64 - b64).norm() / b64.norm().clamp_min(1e-12))
    return out


def is_ascending(values: Sequence[float], strict: bool = False) -> bool:
    """True when ``values`` never decrease (``strict``: always increase).

    Example:
        >>> is_ascending([0.1, 0.2, 0.2]), is_ascending([0.1, 0.2, 0.2], strict=True)
        (True, False)
    """
    pairs = list(zip(values, values[1:], strict=False))
    return all(b > a for a, b in pairs) if strict else all(b >= a for a, b in pairs)


def ascending_targets(variation: Sequence[float], spread: float) -> list[float]:
    """Targets rising geometrically with depth by a factor ``spread`` from the first to the last layer, at
    the level (geometric mean) of the measured ``variation``.

    Example:
        >>> [round(t, 3) for t in ascending_targets([0.4, 0.1, 0.2], spread=4.0)]
        [0.1, 0.2, 0.4]
    """
    n = len(variation)
    logs = [math.log(max(v, 1e-12)) for v in variation]
    level = math.exp(sum(logs) / n)
    if n == 1:
        return [level]
    shape = [spread ** (i / (n - 1) - 0.5) for i in range(n)]
    return [level * s for s in shape]


class AutoLRConfig(Config):
    """AutoLR fine-tuning.

    Attributes:
        train: the fine-tuning run (``lr`` is the base LR every multiplier scales; default SGD, constant
            LR, no weight decay so that multipliers are exact per-layer LRs).
        layers: layer paths in depth order (default: every Conv/Linear module); a block path gathers the
            Conv/Linear weights below it (its other parameters, e.g. BatchNorm, share its multiplier).
        tune: auto-tune the multipliers (``False``: single LR, for comparison).
        spread: target ratio of the last layer's variation to the first's.
        gamma: exponent of the update (1: variation proportional to LR; < 1 damps noisy measurements).
        max_step: bound on one multiplicative update.
        min_mult: lower bound on a multiplier.
        max_mult: upper bound on a multiplier.
    """

    type_name: ClassVar[str] = "autolr"

    train: TrainConfig = Field(default_factory=lambda: TrainConfig(
        epochs=6, lr=0.01, schedule="constant", weight_decay=0.0))
    layers: list[str] = Field(default_factory=list)
    tune: bool = True
    spread: float = Field(default=4.0, gt=1.0)
    gamma: float = Field(default=0.7, gt=0.0)
    max_step: float = Field(default=4.0, gt=1.0)
    min_mult: float = Field(default=1e-3, gt=0.0)
    max_mult: float = Field(default=100.0, gt=0.0)


@dataclass
class AutoLRResult:
    """Per epoch (``history``): the per-layer variation of that epoch and the multipliers it ran with;
    ``multipliers`` at the end; ``total_variation`` from the pretrained weights to the end."""

    layers: list[str]
    history: list[dict[str, Any]] = field(default_factory=list)
    multipliers: dict[str, float] = field(default_factory=dict)
    total_variation: dict[str, float] = field(default_factory=dict)

    @property
    def last_variation(self) -> list[float]:
        """Per-layer variation of the last epoch, in layer order."""
        return [self.history[-1]["variation"][p] for p in self.layers] if self.history else []


class _AutoLRCallback:
    def __init__(self, model: nn.Module, cfg: AutoLRConfig, layers: list[str], result: AutoLRResult) -> None:
        self.cfg = cfg
        self.layers = layers
        self.result = result
        self.mult = {p: 1.0 for p in layers}
        self.snapshot = layer_weights(model, layers)
        self.hooks = []
        for p in layers:
            for prm in model.get_submodule(p).parameters():
                self.hooks.append(prm.register_hook(lambda g, p_=p: g * self.mult[p_]))

    def on_epoch_end(self, trainer: Trainer, epoch: int, logs: dict[str, Any]) -> None:
        now = layer_weights(trainer.model, self.layers)
        var = weight_variation(self.snapshot, now)
        self.snapshot = now
        self.result.history.append({"epoch": epoch, "variation": var, "multipliers": dict(self.mult)})
        if not self.cfg.tune:
            return
        v = [var[p] for p in self.layers]
        for p, t, vi in zip(self.layers, ascending_targets(v, self.cfg.spread), v, strict=True):
            step = (t / max(vi, 1e-12)) ** self.cfg.gamma
            step = min(max(step, 1.0 / self.cfg.max_step), self.cfg.max_step)
            self.mult[p] = min(max(self.mult[p] * step, self.cfg.min_mult), self.cfg.max_mult)

    def on_train_end(self, trainer: Trainer) -> None:
        for h in self.hooks:
            h.remove()
        self.result.multipliers = dict(self.mult)


def autolr_finetune(model: nn.Module, data: Dataset[Any], config: AutoLRConfig, *, progress: bool = False,
                    ) -> AutoLRResult:
    """Fine-tune ``model`` on ``data`` (in place) with per-layer LRs auto-tuned for ascending variation.

    Raises:
        ConfigError: wrong config type, a layer path that does not exist or has no weights.

    Example::

        res = autolr_finetune(pretrained, rotated_train, AutoLRConfig())
        is_ascending(res.last_variation)
    """
    if not isinstance(config, AutoLRConfig):
        raise ConfigError(f"autolr_finetune expects an AutoLRConfig, got {type(config).__name__}")
    layers = list(config.layers) or weighted_layers(model)
    known = {n for n, _ in model.named_modules()}
    missing = [p for p in layers if p not in known]
    if missing:
        raise ConfigError(f"AutoLR layers {missing} do not exist; module paths look like {sorted(known)[1:7]}")
    start = layer_weights(model, layers)
    res = AutoLRResult(layers=layers)
    cb = _AutoLRCallback(model, config, layers, res)
    Trainer(model, config.train, callbacks=[cb], progress=progress).fit(data)
    res.total_variation = weight_variation(start, layer_weights(model, layers))
    return res


def drop_layers_(model: nn.Module, paths: Sequence[str], example_inputs: tuple[Any, ...]) -> None:
    """Replace each module in ``paths`` by ``nn.Identity`` (in place); every one must keep its input shape.

    Raises:
        ConfigError: a path does not exist or its output shape differs from its input shape (it cannot be
            dropped without changing its neighbours).
    """
    shapes: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = {}
    hooks = []
    for p in paths:
        try:
            mod = model.get_submodule(p)
        except AttributeError as e:
            raise ConfigError(f"drop_layers_: no module {p!r}") from e

        def hook(m: nn.Module, args: Any, y: Any, p_: str = p) -> None:
            shapes[p_] = (tuple(args[0].shape), tuple(y.shape))

        hooks.append((mod, hook))
    run_with_hooks(model, example_inputs, hooks)
    for p in paths:
        if p not in shapes or shapes[p][0] != shapes[p][1]:
            raise ConfigError(f"drop_layers_: {p!r} maps {shapes.get(p, ('?', '?'))[0]} -> "
                              f"{shapes.get(p, ('?', '?'))[1]}; only shape-preserving layers/blocks can be dropped")
    for p in paths:
        model.set_submodule(p, nn.Identity())


def choose_drops(
    model: nn.Module, candidates: Sequence[str], evaluate: Callable[[nn.Module], float],
    example_inputs: tuple[Any, ...], tolerance: float = 0.005,
) -> tuple[list[str], list[float]]:
    """Drop ``candidates`` one by one, in the given order (highest level first), while
    ``evaluate(model)`` (e.g. validation accuracy) stays within ``tolerance`` of the full model's.

    Returns ``(dropped paths, score after each trial)``; ``model`` is not modified (apply with
    :func:`drop_layers_`).
    """
    base = evaluate(model)
    kept: list[str] = []
    scores: list[float] = []
    for p in candidates:
        trial = copy.deepcopy(model)
        drop_layers_(trial, [*kept, p], example_inputs)
        s = evaluate(trial)
        scores.append(s)
        if base - s > tolerance:
            break
        kept.append(p)
    return kept, scores
