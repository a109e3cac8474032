"""Direct sparsity control (DSC; arXiv 2002.04301, "Training Efficient Network Architecture and Weights
via Direct Sparsity Control"): fix the number of non-zero weights directly and anneal it.

During training the number of kept weights ``k`` goes from dense (``n``) down to the target ``k*`` along
an annealing schedule; after every optimizer step the weights are projected onto the set of tensors with
at most ``k_t`` non-zeros by keeping the ``k_t`` largest magnitudes (iterative hard thresholding). The
schedule is the feature-selection-with-annealing one,
``k_t = k* + (n - k*) * max(0, (T - 2t) / (2 t mu + T))`` for step ``t`` of ``T`` annealing steps (``mu``
controls how fast it drops), or ``"linear"`` / ``"cubic"`` (Zhu & Gupta's ``(1 - t/T)^3``) for comparison.
After the annealing ``k = k*`` and the run ends with EXACTLY ``k*`` non-zeros (ties at the threshold broken
by index). ``scope="layer"`` applies the schedule to each weight tensor (``k*_l = round(density * n_l)``),
``scope="global"`` to all of them at once.

This is unstructured sparsity: the weights stay dense tensors with zeros, so the model is smaller only
when stored sparse, and no speed-up is claimed.

Also here: :func:`magnitude_prune_` (one-shot magnitude pruning to the same ``k``) and
:class:`MaskKeeper` (keep a fixed mask during fine-tuning), the baseline the paper's kind of method is
compared against.

Example::

    >>> import torch
    >>> from torch import nn
    >>> from torchslim.pruning.dsc import magnitude_prune_, nonzeros, prunable_weights
    >>> m = nn.Sequential(nn.Linear(20, 10), nn.ReLU(), nn.Linear(10, 2))
    >>> _ = magnitude_prune_(m, density=0.1)
    >>> nonzeros(prunable_weights(m)) == round(0.1 * 200) + round(0.1 * 20)
    True
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import torch
from pydantic import Field
from torch import nn
from torch.utils.data import Dataset

from torchslim.core.config import Config
from torchslim.core.errors import ConfigError
from torchslim.train import TrainConfig, Trainer

__all__ = [
    "DSCConfig",
    "DSCResult",
    "MaskKeeper",
    "dsc_schedule",
    "dsc_train",
    "hard_threshold_",
    "magnitude_prune_",
    "nonzeros",
    "prunable_weights",
]

Schedule = Literal["fsa", "linear", "cubic"]


def dsc_schedule(step: int, total: int, dense: int, target: int, kind: Schedule = "fsa", mu: float = 10.0) -> int:
    """Number of kept weights after ``step`` of ``total`` annealing steps (``dense`` at step 0, ``target``
    from ``total`` on).

    * ``"fsa"``: ``target + (dense - target) * max(0, (total - 2 step) / (2 step mu + total))`` (reaches the
      target at half of ``total``, fast at first for large ``mu``);
    * ``"linear"``: ``dense - (dense - target) * step / total``;
    * ``"cubic"``: ``target + (dense - target) * (1 - step / total)^3``.

    Values are rounded to the nearest integer and clipped to ``[target, dense]``.

    Example:
        >>> [dsc_schedule(t, 10, 100, 10, "linear") for t in (0, 5, 10, 20)]
        [100, 55, 10, 10]
        >>> dsc_schedule(0, 10, 100, 10), dsc_schedule(1, 10, 100, 10, mu=1.0), dsc_schedule(5, 10, 100, 10)
        (100, 70, 10)
    """
    if total < 1:
        raise ConfigError(f"dsc_schedule: total annealing steps must be >= 1, got {total}")
    if not 0 <= target <= dense:
        raise ConfigError(f"dsc_schedule: need 0 <= target <= dense, got target={target}, dense={dense}")
    if step >= total:
        return target
    t = max(step, 0)
    if kind == "fsa":
        frac = max(0.0, (total - 2 * t) / (2 * t * mu + total))
    elif kind == "linear":
        frac = 1 - t / total
    elif kind == "cubic":
        frac = (1 - t / total) ** 3
    else:
        raise ConfigError(f"dsc_schedule: unknown kind {kind!r} (allowed: fsa, linear, cubic)")
    return int(min(dense, max(target, round(target + (dense - target) * frac))))


def prunable_weights(model: nn.Module) -> dict[str, torch.Tensor]:
    """``{module path.weight: weight}`` of every Conv and Linear layer (biases and norms stay dense)."""
    out: dict[str, torch.Tensor] = {}
    for path, mod in model.named_modules():
        if isinstance(mod, (nn.modules.conv._ConvNd, nn.Linear)) and isinstance(mod.weight, torch.Tensor):
            out[f"{path}.weight" if path else "weight"] = mod.weight
    if not out:
        raise ConfigError("DSC: the model has no Conv/Linear weight to sparsify")
    return out


def nonzeros(weights: dict[str, torch.Tensor] | Sequence[torch.Tensor]) -> int:
    """Total number of non-zero entries."""
    ws = weights.values() if isinstance(weights, dict) else weights
    return int(sum(int(torch.count_nonzero(w)) for w in ws))


def _topk_mask(values: torch.Tensor, k: int) -> torch.Tensor:
    """Boolean mask with exactly ``k`` True entries at the largest ``values`` (ties: lower index first)."""
    flat = values.reshape(-1)
    mask = torch.zeros_like(flat, dtype=torch.bool)
    if k > 0:
        # stable sort by descending magnitude: equal magnitudes keep their index order
        order = torch.sort(flat, descending=True, stable=True).indices[:k]
        mask[order] = True
    return mask.reshape(values.shape)


@torch.no_grad()
def hard_threshold_(weights: dict[str, torch.Tensor], k: int | dict[str, int]) -> dict[str, torch.Tensor]:
    """Keep the largest-magnitude entries, zero the rest (in place); returns the boolean masks.

    ``k`` an int: the ``k`` largest over all tensors together (global); a dict: ``k[name]`` per tensor.

    Example:
        >>> import torch
        >>> w = {"a": torch.tensor([0.1, -3.0, 2.0]), "b": torch.tensor([[1.0, -0.5]])}
        >>> _ = hard_threshold_(w, 2)
        >>> w["a"].tolist(), w["b"].tolist()
        ([0.0, -3.0, 2.0], [[0.0, -0.0]])
    """
    masks: dict[str, torch.Tensor] = {}
    if isinstance(k, dict):
        for name, w in weights.items():
            kk = int(k[name])
            if not 0 <= kk <= w.numel():
                raise ConfigError(f"hard_threshold_: k[{name!r}] = {kk} outside [0, {w.numel()}]")
            masks[name] = _topk_mask(w.abs(), kk)
    else:
        total = sum(w.numel() for w in weights.values())
        if not 0 <= k <= total:
            raise ConfigError(f"hard_threshold_: k = {k} outside [0, {total}]")
        flat = torch.cat([w.detach().abs().reshape(-1) for w in weights.values()])
        m = _topk_mask(flat, int(k))
        i = 0
        for name, w in weights.items():
            masks[name] = m[i:i + w.numel()].reshape(w.shape)
            i += w.numel()
    for name, w in weights.items():
        w.mul_(masks[name])
    return masks


def _targets(weights: dict[str, torch.Tensor], density: float, scope: str) -> int | dict[str, int]:
    if scope == "global":
        return round(density * sum(w.numel() for w in weights.values()))
    return {n: round(density * w.numel()) for n, w in weights.items()}


def magnitude_prune_(model: nn.Module, density: float, scope: Literal["layer", "global"] = "layer",
                     ) -> dict[str, torch.Tensor]:
    """One-shot magnitude pruning of every Conv/Linear weight to ``density`` (kept fraction); returns masks.

    Raises:
        ConfigError: ``density`` outside (0, 1].
    """
    if not 0 < density <= 1:
        raise ConfigError(f"magnitude_prune_: density must be in (0, 1], got {density}")
    w = prunable_weights(model)
    return hard_threshold_(w, _targets(w, density, scope))


class MaskKeeper:
    """Trainer callback re-applying fixed masks after every optimizer step (fine-tuning a pruned model)."""

    def __init__(self, model: nn.Module, masks: dict[str, torch.Tensor]) -> None:
        self.weights = prunable_weights(model)
        missing = set(masks) - set(self.weights)
        if missing:
            raise ConfigError(f"MaskKeeper: masks for unknown weights {sorted(missing)}")
        self.masks = masks

    @torch.no_grad()
    def on_step_end(self, trainer: Trainer, step: int, loss: float) -> None:
        for n, m in self.masks.items():
            self.weights[n].mul_(m)


class DSCConfig(Config):
    """Direct sparsity control during training.

    Attributes:
        density: final fraction of Conv/Linear weights kept, in (0, 1].
        scope: ``"layer"`` (each tensor keeps ``round(density * size)``) or ``"global"``.
        schedule: ``"fsa"``, ``"linear"`` or ``"cubic"`` (see :func:`dsc_schedule`).
        mu: annealing speed of ``"fsa"``.
        anneal_fraction: fraction of the training steps over which ``k`` is annealed (then held at target).
        train: the training run.
    """

    type_name: ClassVar[str] = "dsc"

    density: float = Field(gt=0.0, le=1.0)
    scope: Literal["layer", "global"] = "layer"
    schedule: Schedule = "fsa"
    mu: float = Field(default=10.0, gt=0)
    anneal_fraction: float = Field(default=0.5, gt=0.0, le=1.0)
    train: TrainConfig = Field(default_factory=TrainConfig)


@dataclass
class DSCResult:
    """What :func:`dsc_train` did: ``k_target`` (total kept weights), ``k_history`` (``(step, k)`` after
    each projection, total over tensors), ``nonzeros`` (counted at the end), ``dense`` (total weights),
    ``masks`` (final boolean masks)."""

    k_target: int
    dense: int
    nonzeros: int = 0
    k_history: list[tuple[int, int]] = field(default_factory=list)
    masks: dict[str, torch.Tensor] = field(default_factory=dict)


class _DSCCallback:
    def __init__(self, model: nn.Module, cfg: DSCConfig, total_steps: int, result: DSCResult) -> None:
        self.weights = prunable_weights(model)
        self.cfg = cfg
        self.anneal = max(1, round(cfg.anneal_fraction * total_steps))
        self.target = _targets(self.weights, cfg.density, cfg.scope)
        self.result = result

    def k_at(self, step: int) -> int | dict[str, int]:
        c = self.cfg
        if isinstance(self.target, dict):
            return {n: dsc_schedule(step, self.anneal, w.numel(), self.target[n], c.schedule, c.mu)
                    for n, w in self.weights.items()}
        dense = sum(w.numel() for w in self.weights.values())
        return dsc_schedule(step, self.anneal, dense, self.target, c.schedule, c.mu)

    def on_step_end(self, trainer: Trainer, step: int, loss: float) -> None:
        k = self.k_at(step)
        self.result.masks = hard_threshold_(self.weights, k)
        self.result.k_history.append((step, sum(k.values()) if isinstance(k, dict) else k))

    def on_train_end(self, trainer: Trainer) -> None:
        self.result.masks = hard_threshold_(self.weights, self.target)
        self.result.nonzeros = nonzeros(self.weights)


def dsc_train(model: nn.Module, data: Dataset[Any], config: DSCConfig, *, progress: bool = False) -> DSCResult:
    """Train ``model`` with the number of non-zero weights annealed to ``config.density`` (in place).

    Ends with exactly ``round(density * n)`` non-zeros (per tensor for ``scope="layer"``; in total for
    ``"global"``), provided no kept weight is exactly zero.

    Example::

        res = dsc_train(model, train_set, DSCConfig(density=0.1, train=TrainConfig(epochs=10)))
        res.nonzeros == res.k_target
    """
    if not isinstance(config, DSCConfig):
        raise ConfigError(f"dsc_train expects a DSCConfig, got {type(config).__name__}")
    n = len(data)  # type: ignore[arg-type]
    total = config.train.epochs * math.ceil(n / config.train.batch_size)
    if config.train.max_steps is not None:
        total = min(total, config.train.max_steps)
    weights = prunable_weights(model)
    tgt = _targets(weights, config.density, config.scope)
    res = DSCResult(k_target=sum(tgt.values()) if isinstance(tgt, dict) else tgt,
                    dense=sum(w.numel() for w in weights.values()))
    cb = _DSCCallback(model, config, total, res)
    Trainer(model, config.train, callbacks=[cb], progress=progress).fit(data)
    return res
