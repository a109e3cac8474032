"""Gradual channel pruning while training with feature relevance scores (Aketi, Roy, Raghunathan, K. Roy
2020, arXiv 2002.09958).

During ordinary training, every ``prune_every`` epochs the *feature relevance score* (FRS) of every channel
is computed on a few training batches, the channels are ranked **globally** across layers and the lowest
ones are physically removed (channel surgery with :func:`torchslim.pruning.prune_`, fresh optimizer
state after each surgery, as in :mod:`torchslim.pruning.adp`), until the model's MACs reach the target.
Training simply continues on the thinner network: there is no separate fine-tuning stage.

Feature relevance score (as in the paper and its reference code): relevance is propagated from the
**true-class** output (one-hot target) back to every feature map by layer-wise relevance propagation;
the relevance of a channel for one sample is its relevance map averaged over the spatial positions; the
per-sample values are averaged per class, then over classes, and the absolute value is taken. Each layer's
score vector is divided by its L2 norm so that layers of different size and depth can be ranked together.

Relevance rule used here: epsilon-LRP with epsilon -> 0. For networks of ReLU, convolution, Linear,
(eval-mode) BatchNorm, pooling and residual adds it equals ``activation * d(target logit)/d(activation)``
at every layer (Ancona et al., ICLR 2018), so one autograd backward pass gives the relevance of every
feature map, for any graph the dependency groups understand. The feature map of a group is the output of
the ReLU(s) that follow its members (:func:`torchslim.pruning.adp.relu_groups`); groups without a ReLU
get score 0 and are never ranked (they are left at full width).

The criterion is registered as ``"feature_relevance"`` (``ChannelPrune(importance="feature_relevance")``).

Example::

    >>> import torch
    >>> from torch import nn
    >>> from torchslim.pruning.gradual import feature_relevance
    >>> m = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 9, 3))
    >>> batch = (torch.randn(6, 1, 5, 5), torch.tensor([0, 1, 2, 0, 1, 2]))
    >>> s = feature_relevance(m, [batch], (batch[0][:1],))
    >>> s["0"].shape, round(float(s["0"].norm()), 6)
    (torch.Size([4]), 1.0)
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from pydantic import Field, field_validator
from torch import nn
from torch.utils.data import Dataset

from torchslim.core.config import Config
from torchslim.core.cost import profile
from torchslim.core.errors import ConfigError
from torchslim.pruning.adp import relu_groups
from torchslim.pruning.api import ChannelPrune, PruneError, count_params, prune_
from torchslim.train import TrainConfig, Trainer

__all__ = [
    "GradualConfig",
    "GradualResult",
    "feature_relevance",
    "frs_scores",
    "global_removal",
    "gradual_train",
    "widths_for_macs",
]


def feature_relevance(
    model: nn.Module,
    data: Iterable[Any],
    example_inputs: tuple[Any, ...],
    groups: dict[str, list[str]] | None = None,
    normalize: bool = True,
) -> dict[str, torch.Tensor]:
    """Feature relevance score of every channel of every ReLU-measured group (float64 ``[channels]``).

    For each labelled batch ``(x, y)`` (model in eval mode): relevance at a ReLU output ``a`` is
    ``a * d(sum_i logit[i, y_i]) / d a``; per sample and channel it is averaged over the remaining
    (spatial) dims; samples are averaged within their class, classes averaged, absolute value taken, and
    (``normalize``) each group's vector divided by its L2 norm. Several ReLUs of one group (a residual
    stream) add their relevance.

    Args:
        model: a classifier returning logits ``[N, classes]``.
        data: batches ``(x, y)`` with integer labels.
        example_inputs: ``(x[:1],)`` for graph capture.
        groups: group name -> ReLU module paths (default :func:`torchslim.pruning.adp.relu_groups`).
        normalize: divide each group's scores by their L2 norm (needed for global ranking).

    Raises:
        ValueError: a batch has no labels, or the data is empty.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> m = nn.Sequential(nn.Linear(2, 2, bias=False), nn.ReLU(), nn.Linear(2, 2, bias=False))
        >>> with torch.no_grad():
        ...     _ = m[0].weight.copy_(torch.eye(2)); _ = m[2].weight.copy_(torch.tensor([[1., 0.], [0., 3.]]))
        >>> x, y = torch.tensor([[1., 1.], [2., 1.]]), torch.tensor([0, 1])
        >>> s = feature_relevance(m, [(x, y)], (x[:1],), normalize=False)
        >>> s["0"].tolist()  # class 0 -> relevance (1, 0); class 1 -> (0, 3); mean over classes
        [0.5, 1.5]
    """
    groups = relu_groups(model, example_inputs) if groups is None else groups
    sums: dict[str, dict[int, torch.Tensor]] = {g: {} for g in groups}
    counts: dict[int, int] = {}
    outs: dict[str, list[torch.Tensor]] = {}
    handles = []
    for gname, relus in groups.items():
        for rp in relus:
            def hook(mod: nn.Module, args: Any, y: torch.Tensor, g: str = gname) -> None:
                outs.setdefault(g, []).append(y)

            handles.append(model.get_submodule(rp).register_forward_hook(hook))
    was = model.training
    n_batches = 0
    try:
        model.eval()
        for b in data:
            if not isinstance(b, (tuple, list)) or len(b) < 2:
                raise ValueError("feature_relevance needs labelled batches (x, y): the relevance starts at the "
                                 "true-class output")
            x, y = b[0], b[1].long()
            outs.clear()
            with torch.enable_grad():
                logits = model(x)
                target = logits.gather(1, y[:, None]).sum()
                names = [g for g in groups if g in outs]
                flat = [t for g in names for t in outs[g]]
                grads = torch.autograd.grad(target, flat, allow_unused=True) if flat else ()
            gi = iter(grads)
            for g in names:
                rel: torch.Tensor | None = None
                for a in outs[g]:
                    gr = next(gi)
                    if gr is None:
                        continue
                    r = (a.detach() * gr).to(torch.float64)
                    r = r.reshape(r.shape[0], r.shape[1], -1).mean(2)
                    rel = r if rel is None else rel + r
                if rel is None:
                    continue
                for c in y.unique().tolist():
                    s = rel[y == c].sum(0)
                    sums[g][c] = sums[g][c] + s if c in sums[g] else s
            for c, k in zip(*y.unique(return_counts=True), strict=True):
                counts[int(c)] = counts.get(int(c), 0) + int(k)
            n_batches += 1
    finally:
        model.train(was)
        for h in handles:
            h.remove()
    if n_batches == 0:
        raise ValueError("feature_relevance: the data is empty; pass at least one (x, y) batch")
    out: dict[str, torch.Tensor] = {}
    for g, per_class in sums.items():
        if not per_class:
            continue
        score = torch.stack([v / counts[c] for c, v in per_class.items()]).mean(0).abs()
        if normalize:
            score = score / (score.norm() + 1e-12)
        out[g] = score
    return out


def frs_scores(model: nn.Module, groups: Sequence[Any], ctx: Any) -> list[torch.Tensor]:
    """Feature relevance score (true-class LRP relevance per channel, class-averaged, L2-normalised per group);
    needs labelled batches; 0 for a group without a ReLU."""
    from torchslim.pruning.structured.importance import batch_input

    assert ctx.data is not None
    ex = (batch_input(ctx.data[0])[:1],)
    s = feature_relevance(model, ctx.data, ex)
    return [s[g.name] if g.name in s else torch.zeros(g.channels, dtype=torch.float64) for g in groups]




def global_removal(scores: dict[str, torch.Tensor], n: int, min_channels: int = 1) -> dict[str, int]:
    """Widths after removing the ``n`` globally lowest-scored channels, never below ``min_channels`` per group.

    Channels are taken in ascending score order across all groups (ties: group order, then channel index);
    a group at ``min_channels`` gives no more. Returns the new width of every group in ``scores``.

    Raises:
        PruneError: fewer than ``n`` channels can be removed.

    Example:
        >>> import torch
        >>> global_removal({"a": torch.tensor([0.1, 0.9]), "b": torch.tensor([0.2, 0.3, 0.05])}, 3)
        {'a': 1, 'b': 1}
    """
    if n < 0:
        raise PruneError(f"global_removal: n must be >= 0, got {n}")
    widths = {g: int(s.numel()) for g, s in scores.items()}
    entries = sorted((float(v), gi, ci, g) for gi, (g, s) in enumerate(scores.items())
                     for ci, v in enumerate(s.tolist()))
    left = n
    for _, _, _, g in entries:
        if left == 0:
            break
        if widths[g] > min_channels:
            widths[g] -= 1
            left -= 1
    if left:
        raise PruneError(f"global_removal: only {n - left} channels can go with min_channels={min_channels}, "
                         f"asked for {n}; lower min_channels or the target")
    return widths


def _macs_at(model: nn.Module, example_inputs: tuple[Any, ...], widths: dict[str, int]) -> int:
    """MACs of ``model`` cut to ``widths`` (on a copy; L1 picks the channels, MACs depend on widths only)."""
    trial = copy.deepcopy(model)
    cur = {g: w for g, w in widths.items()}
    prune_(trial, ChannelPrune(ratio=0.0, importance="l1"), example_inputs, widths=cur)
    return profile(trial, example_inputs).macs


def widths_for_macs(
    model: nn.Module, scores: dict[str, torch.Tensor], example_inputs: tuple[Any, ...], target_macs: int,
    min_channels: int = 1, max_remove: int | None = None,
) -> tuple[int, dict[str, int]]:
    """Smallest number ``n`` of globally lowest channels whose removal brings the MACs to ``<= target_macs``
    (bisection on measured MACs; ``max_remove`` caps ``n``). Returns ``(n, widths)``.

    Example::

        n, widths = widths_for_macs(model, feature_relevance(model, batches, (x[:1],)), (x[:1],), 10_000)
    """
    total = sum(max(0, int(s.numel()) - min_channels) for s in scores.values())
    hi = total if max_remove is None else min(total, max_remove)
    if _macs_at(model, example_inputs, global_removal(scores, hi, min_channels)) > target_macs:
        return hi, global_removal(scores, hi, min_channels)
    lo = -1  # lo: known too few (MACs > target); hi: known enough
    if profile(model, example_inputs).macs <= target_macs:
        return 0, global_removal(scores, 0, min_channels)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if _macs_at(model, example_inputs, global_removal(scores, mid, min_channels)) <= target_macs:
            hi = mid
        else:
            lo = mid
    return hi, global_removal(scores, hi, min_channels)


class GradualConfig(Config):
    """Gradual channel pruning while training.

    Attributes:
        train: the training run (``epochs`` is the whole budget, pruning included).
        macs_ratio: target MACs as a fraction of the starting model's, in (0, 1].
        prune_every: epochs between pruning steps.
        start_epoch: epochs trained before the first pruning step.
        end_epoch: last epoch (1-based count of finished epochs) after which a pruning step may run; the
            target is reached by then. Default: 2/3 of ``train.epochs`` (the rest trains the final width).
        channels_per_step: channels removed at each step (the last step removes what is still needed to
            reach the target, and any step stops early at the target). ``None``: each step removes what is
            needed to follow a linear MACs schedule from the full model to the target.
        criterion: ``"feature_relevance"`` (the paper) or any registered criterion (``"l1"``, ...) for
            comparison under the same schedule; scores are L2-normalised per group before global ranking.
        min_channels: never cut a group below this.
        calib_samples: training samples (the first ones) used for each relevance pass.
    """

    type_name: ClassVar[str] = "gradual_prune"

    train: TrainConfig = Field(default_factory=TrainConfig)
    macs_ratio: float = Field(default=0.5, gt=0.0, le=1.0)
    prune_every: int = Field(default=1, ge=1)
    start_epoch: int = Field(default=1, ge=0)
    end_epoch: int | None = Field(default=None, ge=1)
    channels_per_step: int | None = Field(default=None, ge=1)
    criterion: str = "feature_relevance"
    min_channels: int = Field(default=2, ge=1)
    calib_samples: int = Field(default=512, ge=1)

    @field_validator("criterion")
    @classmethod
    def _known(cls, v: str) -> str:
        from torchslim.pruning.structured.importance import available

        if v not in available():
            raise ValueError(f"unknown criterion {v!r}; known: {', '.join(sorted(available()))}")
        return v

    def last_prune_epoch(self) -> int:
        """The ``end_epoch`` in effect (default 2/3 of the epochs, at least ``start_epoch``)."""
        e = self.end_epoch if self.end_epoch is not None else max(1, (2 * self.train.epochs) // 3)
        return max(min(e, self.train.epochs), self.start_epoch)

    def prune_epochs(self) -> list[int]:
        """Finished-epoch counts after which a pruning step runs."""
        end = self.last_prune_epoch()
        first = max(self.start_epoch, 1)
        out = list(range(first, end + 1, self.prune_every))
        return out or [end]


@dataclass
class GradualResult:
    """What :func:`gradual_train` did: ``history`` (per step: epoch, removed, widths, MACs), MACs and params
    before/after, ``target_macs`` and ``train_macs`` (3 x forward MACs x samples, summed per epoch)."""

    history: list[dict[str, Any]] = field(default_factory=list)
    macs_before: int = 0
    macs_after: int = 0
    target_macs: int = 0
    params_before: int = 0
    params_after: int = 0
    train_macs: int = 0


class _GradualCallback:
    def __init__(self, cfg: GradualConfig, data: Dataset[Any], example_inputs: tuple[Any, ...], n: int,
                 result: GradualResult) -> None:
        self.cfg = cfg
        self.example_inputs = example_inputs
        self.result = result
        self.n = n
        self.steps = cfg.prune_epochs()
        items = [data[i] for i in range(min(cfg.calib_samples, n))]
        xs = torch.stack([it[0] for it in items])
        ys = torch.as_tensor([int(it[1]) for it in items])
        self.calib = [(xs[i:i + 128], ys[i:i + 128]) for i in range(0, len(xs), 128)]

    def scores(self, model: nn.Module) -> dict[str, torch.Tensor]:
        from torchslim.pruning.structured.dependency import build_groups
        from torchslim.pruning.structured.importance import ScoreContext, get_criterion

        if self.cfg.criterion == "feature_relevance":
            return feature_relevance(model, self.calib, self.example_inputs)
        groups = [g for g in build_groups(model, self.example_inputs) if g.prunable and not g.fixed
                  and not g.blocked]
        raw = get_criterion(self.cfg.criterion)(model, groups, ScoreContext(data=self.calib))
        return {g.name: s.to(torch.float64) / (s.to(torch.float64).norm() + 1e-12) for g, s in zip(groups, raw,
                                                                                                    strict=True)}

    def on_epoch_end(self, trainer: Trainer, epoch: int, logs: dict[str, Any]) -> None:
        model = trainer.model
        macs = profile(model, self.example_inputs).macs
        self.result.train_macs += 3 * macs * self.n
        done = epoch + 1
        if done not in self.steps or macs <= self.result.target_macs:
            return
        i = self.steps.index(done) + 1
        last = i == len(self.steps)
        scores = self.scores(model)
        cfg = self.cfg
        if cfg.channels_per_step is not None and not last:
            n, widths = widths_for_macs(model, scores, self.example_inputs, self.result.target_macs,
                                        cfg.min_channels, max_remove=cfg.channels_per_step)
        else:
            step_target = self.result.target_macs if last or cfg.channels_per_step is not None else int(
                self.result.macs_before - (self.result.macs_before - self.result.target_macs) * i / len(self.steps))
            n, widths = widths_for_macs(model, scores, self.example_inputs, step_target, cfg.min_channels)
        old = {g: int(s.numel()) for g, s in scores.items()}
        cut = {g: w for g, w in widths.items() if w < old[g]}
        if cut:
            prune_(model, ChannelPrune(ratio=0.0, importance=cfg.criterion), self.example_inputs,
                   data=self.calib, widths=cut)
            trainer.reset_optimizer()  # parameters were replaced by thinner ones
        after = profile(model, self.example_inputs).macs
        self.result.history.append({"epoch": epoch, "removed": n, "widths_before": old, "widths_after": widths,
                                    "macs": after})
        logs["gradual_macs"] = after


def gradual_train(
    model: nn.Module,
    data: Dataset[Any],
    config: GradualConfig,
    example_inputs: tuple[Any, ...],
    *,
    progress: bool = False,
) -> GradualResult:
    """Train ``model`` on ``data`` and prune it gradually (in place) to ``config.macs_ratio`` of its MACs.

    Args:
        model: the model to train (from scratch or pretrained); channels are physically removed in place.
        data: map-style ``(x, y)`` training set (its first ``calib_samples`` items feed the relevance passes).
        config: a :class:`GradualConfig`.
        example_inputs: ``(x[:1],)``: graph capture and MAC counts.
        progress: show the trainer's progress bar.

    Returns:
        a :class:`GradualResult`.

    Raises:
        ConfigError: wrong config type or ``example_inputs`` not a tuple.

    Example::

        res = gradual_train(model, train_set, GradualConfig(train=TrainConfig(epochs=12), macs_ratio=0.5),
                            (x[:1],))
        res.macs_after <= res.target_macs
    """
    if not isinstance(config, GradualConfig):
        raise ConfigError(f"gradual_train expects a GradualConfig, got {type(config).__name__}")
    if not isinstance(example_inputs, tuple):
        raise ConfigError(f"example_inputs must be a tuple, got {type(example_inputs).__name__}; wrap as (x,)")
    n = len(data)  # type: ignore[arg-type]
    macs0 = profile(model, example_inputs).macs
    res = GradualResult(macs_before=macs0, params_before=count_params(model),
                        target_macs=int(math.floor(config.macs_ratio * macs0)))
    cb = _GradualCallback(config, data, example_inputs, n, res)
    Trainer(model, config.train, callbacks=[cb], progress=progress).fit(data)
    res.macs_after = profile(model, example_inputs).macs
    res.params_after = count_params(model)
    return res
