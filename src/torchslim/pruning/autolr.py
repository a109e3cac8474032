"""AutoLR: layer-wise learning-rate auto-tuning and layer pruning for fine-tuning (Ro & Choi, AAAI 2021,
arXiv 2002.06048; reference code github.com/youngminPIL/AutoLR).

Fine-tuning a pretrained network with one learning rate moves the low-level layers about as much as (or
more than) the high-level ones, against the notion that low layers hold general features and high layers
task-specific ones. AutoLR tracks the **weight variation** of every layer during fine-tuning and tunes a
learning rate per layer so that the variation **rises with depth**, using an approximately linear
relation between a layer's learning rate and its weight variation; high-level layers that barely move
(they do not help the target task) are pruned (dropped).

What was checked, and against what (see docs/pruning-in-training.md): the paper's full text could not be
read here (only its abstract, introduction and a summary); the algorithm below follows the authors'
reference code (``train_CUB.py``, ``util/weight_variation_AutoLR.py``), read to understand it, not copied:

* **weight variation** of a layer over one epoch = ``||W_end - W_start||_2 / n_weights`` over the weights
  of its Conv/Linear modules (:func:`weight_variation`, ``mode="per_weight"``, the reference code's
  measure; ``mode="relative"`` divides by ``||W_start||_2`` instead);
* **sorting quality** of the per-layer variations: ``1 - 2 * sum_j |j - sigma(j)| / n**2`` where
  ``sigma(j)`` is the layer at rank ``j`` of the ascending sort (1: ascending, 0: reversed;
  :func:`sorting_score`);
* **epoch with roll-back**: every epoch is trained from the weights accepted after the previous epoch,
  with a fresh SGD optimizer (as the reference code); when the sorting quality is below a threshold
  (0.94, multiplied by 0.99 per epoch down to 0.8) the epoch is discarded, the learning rates are
  re-tuned and the epoch is trained again (at most ``max_trials`` times);
* **desired variations** (:func:`desired_variation`): on the first failed epoch, linearly spaced from
  ``min_factor * min(v)`` to ``max_factor * max(v)`` (3 and 0.4); on later epochs, the measured
  variations made ascending from the middle layer outwards in steps of ``(max - min) / (n - 1)``; re-trials
  of one epoch keep the desired variations of its first failure;
* **LR update** (the linear relation ``v_l = G_l * lr_l``, ``G_l = v_l / lr_l`` measured on the failed
  trial): ``lr_l <- lr_l + (v*_l - v_l) / G_l = lr_l * v*_l / v_l`` (:func:`update_lrs`);
* the first layer (conv1) optionally tied to half the LR of the next one (``first_layer_factor``) and left
  out of the score, as in the reference code;
* an optional LR drop (``lr_drop`` at ``lr_drop_epoch``, 0.2 at epoch 30 of 40 in the reference code);
* **layer pruning**: the reference model simply has the top blocks removed; here
  :func:`low_variation_layers` proposes the top shape-preserving layers whose single-LR variation is below
  the mean of the layers under them (they barely adapt), and :func:`choose_drops` keeps a drop only while a
  validation score stays within a tolerance. :func:`drop_layers_` replaces them with ``nn.Identity``.

Per-layer LRs are applied as gradient multipliers on a normal :class:`~torchslim.train.Trainer` epoch:
exactly per-layer LRs for SGD (with or without momentum) when ``weight_decay = 0`` (the default here).

Example::

    >>> import torch
    >>> from torch import nn
    >>> from torchslim.pruning.autolr import weight_variation
    >>> before = {"0": torch.tensor([[3.0, 0.0], [0.0, 4.0]])}
    >>> after = {"0": torch.tensor([[3.0, 0.0], [0.0, 3.0]])}
    >>> weight_variation(before, after, mode="relative")  # ||diff|| / ||before|| = 1 / 5
    {'0': 0.2}
    >>> weight_variation(before, after)  # ||diff|| / number of weights = 1 / 4
    {'0': 0.25}
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

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
    "desired_variation",
    "drop_layers_",
    "is_ascending",
    "layer_weights",
    "low_variation_layers",
    "sorting_score",
    "update_lrs",
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
    """Flattened float64 copy of the Conv/Linear weights under each layer path (a block gathers all of its
    own).

    Example:
        >>> {k: v.numel() for k, v in layer_weights(nn.Sequential(nn.Linear(2, 3)), ["0"]).items()}
        {'0': 6}
    """
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


def weight_variation(before: dict[str, torch.Tensor], after: dict[str, torch.Tensor],
                     mode: Literal["per_weight", "relative"] = "per_weight") -> dict[str, float]:
    """Per layer ``||after - before||_2`` divided by the number of weights (``"per_weight"``, the AutoLR
    reference code) or by ``||before||_2`` (``"relative"``); see the module example."""
    if mode not in ("per_weight", "relative"):
        raise ConfigError(f"weight_variation: mode must be 'per_weight' or 'relative', got {mode!r}")
    out: dict[str, float] = {}
    for p, b in before.items():
        b64, a64 = b.to(torch.float64), after[p].to(torch.float64)
        den = float(b64.numel()) if mode == "per_weight" else float(b64.norm().clamp_min(1e-12))
        out[p] = float((a64 - b64).norm()) / den
    return out


def is_ascending(values: Sequence[float], strict: bool = False) -> bool:
    """True when ``values`` never decrease (``strict``: always increase).

    Example:
        >>> is_ascending([0.1, 0.2, 0.2]), is_ascending([0.1, 0.2, 0.2], strict=True)
        (True, False)
    """
    pairs = list(zip(values, values[1:], strict=False))
    return all(b > a for a, b in pairs) if strict else all(b >= a for a, b in pairs)


def sorting_score(values: Sequence[float]) -> float:
    """Sorting quality of ``values`` in depth order: ``1 - 2 * sum_j |j - sigma(j)| / n**2``, ``sigma(j)``
    the index of the ``j``-th smallest value (stable). 1 when ascending, 0 when reversed (even ``n``).

    Example:
        >>> sorting_score([1, 2, 3, 4]), sorting_score([4, 3, 2, 1]), sorting_score([2, 1, 3, 4])
        (1.0, 0.0, 0.75)
    """
    n = len(values)
    if n == 0:
        return 1.0
    order = sorted(range(n), key=lambda i: values[i])
    return 1.0 - 2.0 * sum(abs(j - i) for j, i in enumerate(order)) / n**2


def desired_variation(variation: Sequence[float], first: bool, min_factor: float = 3.0,
                      max_factor: float = 0.4) -> list[float]:
    """Ascending target variations built from the measured ``variation`` (depth order).

    ``first`` (the first epoch): linearly spaced from ``min_factor * min`` to ``max_factor * max`` (when
    that range is empty, from ``min`` to ``max``). Otherwise: the measured values, made ascending from the
    middle layer outwards: going down, a layer above its upper neighbour is set one step below it; going
    up, a layer below its lower neighbour is set one step above it; step ``(max - min) / (n - 1)``; values
    are floored at ``min / 10`` to stay positive.

    Example:
        >>> desired_variation([4.0, 1.0, 2.0], first=True, min_factor=1.0, max_factor=1.0)
        [1.0, 2.5, 4.0]
        >>> desired_variation([4.0, 1.0, 2.0, 3.0, 2.5], first=False)
        [0.25, 1.0, 2.0, 3.0, 3.75]
    """
    v = [float(x) for x in variation]
    n = len(v)
    if n == 0:
        return []
    lo, hi = min(v), max(v)
    if n == 1:
        return v
    if first:
        a, b = min_factor * lo, max_factor * hi
        if a >= b:
            a, b = lo, hi
        step = (b - a) / (n - 1)
        return [a + i * step for i in range(n)]
    step = (hi - lo) / (n - 1)
    d = list(v)
    c = n // 2
    for i in range(c, 0, -1):
        if d[i] < d[i - 1]:
            d[i - 1] = d[i] - step
    for i in range(c, n - 1):
        if d[i] > d[i + 1]:
            d[i + 1] = d[i] + step
    floor = max(lo, 1e-30) / 10.0
    return [max(x, floor) for x in d]


def update_lrs(lrs: Sequence[float], variation: Sequence[float], desired: Sequence[float]) -> list[float]:
    """One AutoLR step of the linear LR-to-variation relation ``v = G * lr``: with ``G = v / lr`` from the
    last trial, ``lr_new = lr + (v* - v) / G = lr * v* / v``.

    Example:
        >>> update_lrs([0.1, 0.1], [0.2, 0.05], [0.1, 0.1])
        [0.05, 0.2]
    """
    out = []
    for lr, v, t in zip(lrs, variation, desired, strict=True):
        g = max(v, 1e-30) / lr
        out.append(lr + (t - v) / g)
    return out


class AutoLRConfig(Config):
    """AutoLR fine-tuning.

    Attributes:
        train: the fine-tuning run: ``epochs``, ``batch_size``, ``lr`` (the initial LR of every layer and
            the LR of parameters outside ``layers``), SGD momentum, ``seed``; ``schedule`` must be
            ``"constant"`` (each epoch is its own run; use ``lr_drop`` for a step decay) and
            ``weight_decay`` 0 keeps the multipliers exact per-layer LRs.
        layers: tuned layer paths in depth order (default: every Conv/Linear module); a block path gathers
            the Conv/Linear weights below it (its other parameters, e.g. BatchNorm, share its LR).
        score_layers: the layers whose variations must be ascending (default: ``layers``, without the first
            one when ``first_layer_factor`` is set).
        first_layer_factor: when set, the first of ``layers`` (e.g. the stem) is not tuned on its own: after
            every update its LR is this factor times the second layer's (the reference code's conv1 rule,
            0.5); ``None``: tuned like the others.
        tune: auto-tune the LRs (``False``: single LR, for comparison; every epoch accepted).
        variation: ``"per_weight"`` (reference code) or ``"relative"``, see :func:`weight_variation`.
        score_threshold: sorting quality needed to accept an epoch (0.94 in the reference code).
        threshold_decay: multiplies the threshold after every epoch while it is above ``threshold_floor``.
        threshold_floor: lowest threshold (0.8).
        max_trials: most trainings of one epoch; the last one is accepted whatever its score.
        min_factor: first-epoch lowest desired variation = ``min_factor * min`` (3).
        max_factor: first-epoch highest desired variation = ``max_factor * max`` (0.4).
        lr_drop_epoch: epoch from which every LR is multiplied by ``lr_drop`` (``None``: never).
        lr_drop: the LR drop factor (0.2).
        min_mult: lower bound on a layer's LR as a multiple of ``train.lr``.
        max_mult: upper bound on a layer's LR as a multiple of ``train.lr``.
    """

    type_name: ClassVar[str] = "autolr"

    train: TrainConfig = Field(default_factory=lambda: TrainConfig(
        epochs=6, lr=0.01, schedule="constant", weight_decay=0.0))
    layers: list[str] = Field(default_factory=list)
    score_layers: list[str] = Field(default_factory=list)
    first_layer_factor: float | None = Field(default=None, gt=0.0)
    tune: bool = True
    variation: Literal["per_weight", "relative"] = "per_weight"
    score_threshold: float = Field(default=0.94, ge=0.0, le=1.0)
    threshold_decay: float = Field(default=0.99, gt=0.0, le=1.0)
    threshold_floor: float = Field(default=0.8, ge=0.0, le=1.0)
    max_trials: int = Field(default=4, ge=1)
    min_factor: float = Field(default=3.0, gt=0.0)
    max_factor: float = Field(default=0.4, gt=0.0)
    lr_drop_epoch: int | None = Field(default=None, ge=1)
    lr_drop: float = Field(default=0.2, gt=0.0)
    min_mult: float = Field(default=1e-3, gt=0.0)
    max_mult: float = Field(default=100.0, gt=0.0)


@dataclass
class AutoLRResult:
    """Per accepted epoch (``history``): its per-layer variation, LR multipliers, sorting score, number of
    trials and the threshold; ``trials`` lists every trial; ``multipliers`` at the end (LR / ``train.lr``);
    ``total_variation`` from the pretrained weights to the end."""

    layers: list[str]
    history: list[dict[str, Any]] = field(default_factory=list)
    trials: list[dict[str, Any]] = field(default_factory=list)
    multipliers: dict[str, float] = field(default_factory=dict)
    total_variation: dict[str, float] = field(default_factory=dict)

    @property
    def last_variation(self) -> list[float]:
        """Per-layer variation of the last accepted epoch, in layer order."""
        return [self.history[-1]["variation"][p] for p in self.layers] if self.history else []

    @property
    def epochs_trained(self) -> int:
        """Epochs of training spent, re-trials included."""
        return len(self.trials)


def _check(model: nn.Module, config: AutoLRConfig) -> tuple[list[str], list[str]]:
    if not isinstance(config, AutoLRConfig):
        raise ConfigError(f"autolr_finetune expects an AutoLRConfig, got {type(config).__name__}")
    if config.train.schedule != "constant":
        raise ConfigError(f"AutoLR runs every epoch as its own constant-LR run; set train.schedule='constant' "
                          f"(got {config.train.schedule!r}) and use lr_drop_epoch / lr_drop for a step decay")
    layers = list(config.layers) or weighted_layers(model)
    known = {n for n, _ in model.named_modules()}
    missing = [p for p in layers if p not in known]
    if missing:
        raise ConfigError(f"AutoLR layers {missing} do not exist; module paths look like {sorted(known)[1:7]}")
    if config.first_layer_factor is not None and len(layers) < 2:
        raise ConfigError("AutoLR first_layer_factor needs at least two layers (it ties the first to the second)")
    default = layers[1:] if config.first_layer_factor is not None else layers
    score = list(config.score_layers) or default
    bad = [p for p in score if p not in layers]
    if bad:
        raise ConfigError(f"AutoLR score_layers {bad} are not in layers {layers}")
    return layers, score


def autolr_finetune(model: nn.Module, data: Dataset[Any], config: AutoLRConfig, *, progress: bool = False,
                    ) -> AutoLRResult:
    """Fine-tune ``model`` on ``data`` (in place) with per-layer LRs auto-tuned for ascending variation
    (epoch roll-back when the sorting quality is below the threshold; see the module docstring).

    Raises:
        ConfigError: wrong config type, a non-constant schedule, a layer path that does not exist or has no
            weights.

    Example::

        res = autolr_finetune(pretrained, rotated_train, AutoLRConfig())
        is_ascending(res.last_variation), res.multipliers
    """
    layers, score_layers = _check(model, config)
    base = config.train.lr
    lo_lr, hi_lr = config.min_mult * base, config.max_mult * base
    lrs = {p: base for p in layers}
    start = layer_weights(model, layers)
    res = AutoLRResult(layers=layers)
    mult = {p: 1.0 for p in layers}
    hooks = [prm.register_hook(lambda g, p_=p: g * mult[p_])
             for p in layers for prm in model.get_submodule(p).parameters()]
    thr = config.score_threshold
    desired: list[float] | None = None
    try:
        for epoch in range(config.train.epochs):
            if epoch >= 1 and thr > config.threshold_floor:
                thr = max(thr * config.threshold_decay, config.threshold_floor)
            drop = config.lr_drop if config.lr_drop_epoch is not None and epoch >= config.lr_drop_epoch else 1.0
            saved = copy.deepcopy(model.state_dict())
            epoch_desired: list[float] | None = None
            for trial in range(1, config.max_trials + 1):
                if trial > 1:
                    model.load_state_dict(saved)
                before = layer_weights(model, layers)
                for p in layers:
                    mult[p] = lrs[p] / base
                tc = config.train.model_copy(update={"epochs": 1, "lr": base * drop,
                                                     "seed": config.train.seed + epoch})
                Trainer(model, tc, progress=progress).fit(data)
                var = weight_variation(before, layer_weights(model, layers), config.variation)
                v_score = [var[p] for p in score_layers]
                score = sorting_score(v_score)
                rec = {"epoch": epoch, "trial": trial, "variation": var, "multipliers": dict(mult),
                       "score": score, "threshold": thr}
                res.trials.append(rec)
                if not config.tune or score >= thr or trial == config.max_trials:
                    res.history.append({**rec, "trials": trial})
                    break
                if epoch_desired is None:
                    epoch_desired = desired_variation(v_score, first=desired is None,
                                                      min_factor=config.min_factor, max_factor=config.max_factor)
                    desired = epoch_desired
                new = update_lrs([lrs[p] for p in score_layers], v_score, epoch_desired)
                for p, lr in zip(score_layers, new, strict=True):
                    lrs[p] = min(max(lr, lo_lr), hi_lr)
                if config.first_layer_factor is not None:
                    lrs[layers[0]] = min(max(config.first_layer_factor * lrs[layers[1]], lo_lr), hi_lr)
    finally:
        for h in hooks:
            h.remove()
    res.multipliers = {p: lrs[p] / base for p in layers}
    res.total_variation = weight_variation(start, layer_weights(model, layers), config.variation)
    return res


def low_variation_layers(variation: dict[str, float], layers: Sequence[str], droppable: Sequence[str],
                         ) -> list[str]:
    """Top layers proposed for dropping, highest first: scanning ``layers`` (depth order) from the top, a
    layer in ``droppable`` whose variation (e.g. of single-LR fine-tuning) is below the mean variation of
    the layers under it barely adapts to the target task; the scan stops at the first layer that is not.

    Example:
        >>> low_variation_layers({"a": 3.0, "b": 2.0, "c": 0.5, "d": 0.1}, "abcd", droppable="cd")
        ['d', 'c']
    """
    out: list[str] = []
    order = list(layers)
    for i in range(len(order) - 1, 0, -1):
        p = order[i]
        below = [variation[q] for q in order[:i]]
        if p not in droppable or variation[p] >= sum(below) / len(below):
            break
        out.append(p)
    return out


def drop_layers_(model: nn.Module, paths: Sequence[str], example_inputs: tuple[Any, ...]) -> None:
    """Replace each module in ``paths`` by ``nn.Identity`` (in place); every one must keep its input shape.

    Raises:
        ConfigError: a path does not exist or its output shape differs from its input shape (it cannot be
            dropped without changing its neighbours).

    Example:
        >>> m = nn.Sequential(nn.Linear(2, 2), nn.ReLU(), nn.Linear(2, 3))
        >>> drop_layers_(m, ["0"], (torch.zeros(1, 2),)); type(m[0]).__name__
        'Identity'
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

    Example::

        cands = low_variation_layers(single_lr_result.total_variation, layers, droppable=blocks)
        kept, scores = choose_drops(model, cands, lambda m: top1(m.eval(), val), (x1,))
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


