"""LFME: Learning From Multiple Experts for long-tailed classification (Xiang, Ding & Han, ECCV 2020,
arXiv:2001.01536).

A long-tailed training set is split into *cardinality-adjacent* class groups (many / medium / few-shot); one
"expert" is trained per group on that group's examples only (each subset is far less imbalanced than the
whole). A unified student is then trained with

    L = CE(z, y) + kd_weight * sum_k w_k * KD_k

where ``KD_k`` is the temperature-``T`` Hinton KD between the student and expert ``k`` computed on the
examples of group ``k`` (over all classes by default: the expert's low logits for the classes it never saw
push the student's head-class logits down on tail examples; ``kd_classes="group"`` restricts it to the
group's classes), and two adaptive schedules:

* **self-paced expert selection** (model level): after every epoch the student's validation accuracy on
  group ``k`` (``acc_s``) is compared with the expert's (``acc_e``) and

      w_k = 1                                        if acc_s <= alpha * acc_e
      w_k = (acc_e - acc_s) / ((1 - alpha) * acc_e)  otherwise, clipped to [0, 1]

  so the expert's weight decays linearly to 0 as the student catches up with it, and stays 0 once the
  student is better (:func:`self_paced_weight`);
* **curriculum instance selection** (instance level): the examples of every group are ranked from easy to
  hard by the expert's confidence in the true class; at epoch ``e`` only the easiest fraction
  ``min(1, start + (1 - start) * e / curriculum_epochs)`` of each group is trained on, so the student sees
  easy examples first and the whole set from epoch ``curriculum_epochs`` on (:func:`curriculum_mask`).

Accuracies (student and expert) on group ``k`` are measured among the classes of group ``k`` (the task the
expert was trained for), so ``w_k`` reaches 0 when the student matches the expert on that task.

The experts' logits on the training set are computed once (they are frozen and the data is not augmented)
and cached. Training runs through :class:`~torchslim.train.Trainer` (checkpoints, exact resume: the weights
``w_k`` of each epoch are stored in the epoch logs, so a resumed run restores them).

Helpers for the data side: :func:`long_tail_counts` / :func:`long_tailed_indices` (exponential profile,
imbalance ratio ``n_max / n_min``), :func:`split_groups` (cardinality-adjacent groups) and
:func:`train_experts`.

Example:
    >>> counts = long_tail_counts(num_classes=10, n_max=1000, imbalance=100)
    >>> counts[0], counts[-1]
    (1000, 10)
    >>> split_groups(counts, num_groups=3)
    [[0, 1, 2, 3], [4, 5, 6], [7, 8, 9]]
    >>> round(self_paced_weight(student_acc=0.7, expert_acc=0.8, alpha=0.6), 4)
    0.3125
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn
from torch.utils.data import Dataset, Subset
from torch.utils.data.dataloader import default_collate

from torchslim.core.config import Config
from torchslim.core.errors import ConfigError
from torchslim.distillation.engine import frozen
from torchslim.distillation.hinton import _logits, _split
from torchslim.train.trainer import TrainConfig, Trainer, TrainResult, to_device

__all__ = [
    "LFME",
    "LFMECallback",
    "curriculum_fraction",
    "curriculum_mask",
    "difficulty_ranks",
    "group_accuracy",
    "lfme_distill",
    "lfme_loss",
    "long_tail_counts",
    "long_tailed_indices",
    "self_paced_weight",
    "split_groups",
    "train_experts",
]


class LFME(Config):
    """LFME settings.

    Attributes:
        temperature: KD temperature ``T`` of every expert term (``T^2``-scaled KL, as Hinton KD).
        kd_weight: weight of the sum of the expert KD terms next to the cross-entropy.
        alpha: self-paced threshold in [0, 1): expert ``k`` keeps full weight while the student's group-``k``
            accuracy is at most ``alpha`` times the expert's, then its weight decays linearly to 0.
        curriculum_start: fraction of each group (its easiest examples) trained on at epoch 0, in (0, 1].
        curriculum_epochs: epochs after which every example is used; ``None``: half of ``train.epochs``
            (at least 1). Set ``curriculum_start=1`` to switch the curriculum off.
        self_paced: ``False`` keeps every ``w_k = 1`` (ablation: plain multi-expert KD).
        kd_classes: ``"all"`` (default): each expert's KD is over all classes (the expert's low logits for the
            classes it never saw also push the student's logits for those classes down on the expert's
            examples); ``"group"``: over its group's classes only (its own task).
        train: the student's training configuration.
    """

    type_name: ClassVar[str] = "lfme"

    temperature: Annotated[float, Field(gt=0)] = 2.0
    kd_weight: Annotated[float, Field(ge=0)] = 1.0
    alpha: Annotated[float, Field(ge=0, lt=1)] = 0.6
    curriculum_start: Annotated[float, Field(gt=0, le=1)] = 0.5
    curriculum_epochs: Annotated[int | None, Field(ge=1)] = None
    self_paced: bool = True
    kd_classes: Literal["group", "all"] = "all"
    train: TrainConfig = TrainConfig(epochs=4, lr=0.05, schedule="onecycle")


# ---------------------------------------------------------------------------------------------------------
# long-tailed data and groups


def long_tail_counts(num_classes: int, n_max: int, imbalance: float = 100.0) -> list[int]:
    """Per-class counts of an exponential long-tailed profile: ``n_c = round(n_max * imbalance^(-c/(C-1)))``.

    Class 0 is the head (``n_max`` examples), class ``C - 1`` the tail (``n_max / imbalance``).

    Example:
        >>> long_tail_counts(5, 1000, 100)
        [1000, 316, 100, 32, 10]
    """
    if num_classes < 2:
        raise ConfigError(f"long_tail_counts: need at least 2 classes, got {num_classes}")
    if imbalance < 1:
        raise ConfigError(f"long_tail_counts: imbalance is n_max / n_min and must be >= 1, got {imbalance}")
    if n_max / imbalance < 1:
        raise ConfigError(
            f"long_tail_counts: n_max={n_max} with imbalance={imbalance} leaves the tail class fewer than one "
            "example; raise n_max or lower the imbalance"
        )
    return [max(1, int(round(n_max * imbalance ** (-c / (num_classes - 1))))) for c in range(num_classes)]


def long_tailed_indices(
    labels: torch.Tensor,
    imbalance: float = 100.0,
    n_max: int | None = None,
    class_order: Sequence[int] | None = None,
    seed: int = 0,
) -> torch.Tensor:
    """Indices of a long-tailed subset of a (roughly balanced) labelled set, exponential profile.

    The ``i``-th class of ``class_order`` (default: ``0, 1, ...``) keeps ``long_tail_counts(...)[i]``
    examples, drawn at random (``seed``) among its examples.

    Args:
        labels: ``[N]`` integer labels.
        imbalance: ratio of the head class's count to the tail class's.
        n_max: examples of the head class; default: the smallest class size (so every class can supply it).
        class_order: classes from head to tail.
        seed: seeds the draw.

    Returns:
        sorted ``int64`` indices into ``labels``.

    Example:
        >>> y = torch.arange(10).repeat_interleave(100)
        >>> idx = long_tailed_indices(y, imbalance=10, n_max=100)
        >>> torch.bincount(y[idx]).tolist()
        [100, 77, 60, 46, 36, 28, 22, 17, 13, 10]
    """
    labels = torch.as_tensor(labels).long().flatten()
    num_classes = int(labels.max()) + 1
    order = list(range(num_classes)) if class_order is None else [int(c) for c in class_order]
    if sorted(order) != list(range(num_classes)):
        raise ConfigError(
            f"long_tailed_indices: class_order must be a permutation of 0..{num_classes - 1}, got {order}"
        )
    sizes = torch.bincount(labels, minlength=num_classes)
    n_max = int(sizes.min()) if n_max is None else int(n_max)
    counts = long_tail_counts(num_classes, n_max, imbalance)
    g = torch.Generator().manual_seed(seed)
    out = []
    for rank, c in enumerate(order):
        pool = torch.nonzero(labels == c).flatten()
        if len(pool) < counts[rank]:
            raise ConfigError(
                f"long_tailed_indices: class {c} has {len(pool)} examples but the profile asks for "
                f"{counts[rank]}; lower n_max (at most {int(sizes.min())} works for every order)"
            )
        out.append(pool[torch.randperm(len(pool), generator=g)[: counts[rank]]])
    return torch.cat(out).sort().values


def split_groups(
    counts: Sequence[int], num_groups: int = 3, thresholds: Sequence[int] | None = None
) -> list[list[int]]:
    """Cardinality-adjacent class groups, from the most to the least frequent (many / medium / few-shot).

    Args:
        counts: training examples per class (index = class).
        num_groups: with ``thresholds=None``, classes sorted by count are cut into this many contiguous
            groups of (nearly) equal class numbers, larger groups first.
        thresholds: decreasing count thresholds instead, e.g. ``(100, 20)``: many ``> 100``,
            medium ``20..100``, few ``< 20`` (the ImageNet-LT convention). Empty groups are an error.

    Returns:
        one list of class indices per group, each sorted by decreasing count.

    Example:
        >>> split_groups([500, 200, 90, 40, 15, 6], thresholds=(100, 20))
        [[0, 1], [2, 3], [4, 5]]
    """
    counts = [int(c) for c in counts]
    order = sorted(range(len(counts)), key=lambda c: (-counts[c], c))
    if thresholds is not None:
        th = [int(t) for t in thresholds]
        if any(a <= b for a, b in zip(th, th[1:], strict=False)):
            raise ConfigError(f"split_groups: thresholds must be strictly decreasing, got {th}")
        groups: list[list[int]] = [[] for _ in range(len(th) + 1)]
        for c in order:
            k = sum(counts[c] <= t for t in th[:-1]) + int(counts[c] < th[-1])
            groups[k].append(c)
        empty = [i for i, gr in enumerate(groups) if not gr]
        if empty:
            raise ConfigError(
                f"split_groups: thresholds {th} leave group(s) {empty} empty for counts {counts}; "
                "choose thresholds between the class counts"
            )
        return groups
    if not 1 <= num_groups <= len(counts):
        raise ConfigError(f"split_groups: num_groups must be in 1..{len(counts)} (classes), got {num_groups}")
    base, extra = divmod(len(counts), num_groups)
    out, start = [], 0
    for k in range(num_groups):
        n = base + (1 if k < extra else 0)
        out.append(order[start : start + n])
        start += n
    return out


def _check_groups(groups: Sequence[Sequence[int]], num_classes: int | None = None) -> list[list[int]]:
    gs = [[int(c) for c in g] for g in groups]
    if not gs or any(not g for g in gs):
        raise ConfigError("LFME: groups must be a non-empty list of non-empty class lists")
    flat = [c for g in gs for c in g]
    if len(set(flat)) != len(flat):
        dup = sorted({c for c in flat if flat.count(c) > 1})
        raise ConfigError(f"LFME: classes {dup} are in more than one group; groups must be disjoint")
    if num_classes is not None:
        bad = [c for c in flat if not 0 <= c < num_classes]
        if bad:
            raise ConfigError(f"LFME: groups name classes {bad} outside 0..{num_classes - 1}")
        missing = sorted(set(range(num_classes)) - set(flat))
        if missing:
            raise ConfigError(f"LFME: classes {missing} are in no group; every class needs an expert")
    return gs


def train_experts(
    make_model: Callable[[], nn.Module],
    data: Dataset[Any],
    labels: torch.Tensor,
    groups: Sequence[Sequence[int]],
    config: TrainConfig | Sequence[TrainConfig],
    progress: bool = False,
) -> list[nn.Module]:
    """Train one expert per group, each on the examples of its group's classes only (cross-entropy).

    Args:
        make_model: builds a fresh model (full class count; the expert's other logits are never targets).
        data: the long-tailed training set, ``(x, y)`` items.
        labels: ``[len(data)]`` labels of ``data`` (to select each group's examples without a data pass).
        groups: class lists, e.g. from :func:`split_groups`.
        config: one training configuration for all experts, or one per group (small groups need more epochs
            to get as many steps).
        progress: show progress bars.

    Returns:
        the experts, in eval mode, in the order of ``groups``.

    Example:
        >>> experts = train_experts(lambda: nn.Linear(8, 3), ds, ds.tensors[1], [[0, 1], [2]],
        ...                         TrainConfig(epochs=2))  # doctest: +SKIP
    """
    gs = _check_groups(groups)
    cfgs = [config] * len(gs) if isinstance(config, TrainConfig) else list(config)
    if len(cfgs) != len(gs):
        raise ConfigError(f"train_experts: {len(cfgs)} configs for {len(gs)} groups; give one or one per group")
    labels = torch.as_tensor(labels).flatten()
    if len(labels) != len(data):  # type: ignore[arg-type]
        raise ConfigError(f"train_experts: {len(labels)} labels for a data set of {len(data)} examples")  # type: ignore[arg-type]
    experts = []
    for k, (g, cfg) in enumerate(zip(gs, cfgs, strict=True)):
        idx = torch.nonzero(torch.isin(labels, torch.tensor(g))).flatten()
        if len(idx) == 0:
            raise ConfigError(f"train_experts: group {k} (classes {g}) has no training example")
        model = make_model()
        Trainer(model, cfg, progress=progress).fit(Subset(data, idx.tolist()))
        experts.append(model.eval())
    return experts


# ---------------------------------------------------------------------------------------------------------
# the two schedules and the loss


def self_paced_weight(student_acc: float, expert_acc: float, alpha: float = 0.6) -> float:
    """LFME's self-paced expert weight: 1 while ``student_acc <= alpha * expert_acc``, then
    ``(expert_acc - student_acc) / ((1 - alpha) * expert_acc)`` clipped to [0, 1] (0 once the student matches
    or beats the expert).

    Example:
        >>> self_paced_weight(0.4, 0.8), self_paced_weight(0.64, 0.8), self_paced_weight(0.8, 0.8)
        (1.0, 0.5, 0.0)
    """
    if not 0 <= alpha < 1:
        raise ConfigError(f"self_paced_weight: alpha must be in [0, 1), got {alpha}")
    if expert_acc <= 0:
        return 0.0  # an expert that is never right has nothing to teach
    if student_acc <= alpha * expert_acc:
        return 1.0
    return float(min(1.0, max(0.0, (expert_acc - student_acc) / ((1 - alpha) * expert_acc))))


def curriculum_fraction(epoch: int, start: float, curriculum_epochs: int) -> float:
    """Fraction of each group used at ``epoch`` (from 0): ``min(1, start + (1 - start) * epoch / E_c)``.

    Example:
        >>> [curriculum_fraction(e, 0.5, 2) for e in range(4)]
        [0.5, 0.75, 1.0, 1.0]
    """
    if curriculum_epochs < 1:
        raise ConfigError(f"curriculum_fraction: curriculum_epochs must be >= 1, got {curriculum_epochs}")
    return float(min(1.0, start + (1.0 - start) * epoch / curriculum_epochs))


def difficulty_ranks(confidence: torch.Tensor, group_of: torch.Tensor) -> torch.Tensor:
    """Within-group difficulty ranks in [0, 1): 0 for the most confident (easiest) example of its group.

    ``rank_i = (position of i in its group sorted by decreasing confidence) / (group size)``; ties keep the
    data order. An example is selected at curriculum fraction ``f`` when ``rank_i < f``.

    Example:
        >>> difficulty_ranks(torch.tensor([0.9, 0.2, 0.5, 0.7]), torch.tensor([0, 0, 1, 1])).tolist()
        [0.0, 0.5, 0.5, 0.0]
    """
    confidence = confidence.flatten().double()
    group_of = group_of.flatten().long()
    ranks = torch.zeros(len(confidence), dtype=torch.float64)
    for k in group_of.unique().tolist():
        idx = torch.nonzero(group_of == k).flatten()
        order = torch.sort(-confidence[idx], stable=True).indices
        ranks[idx[order]] = torch.arange(len(idx), dtype=torch.float64) / len(idx)
    return ranks


def curriculum_mask(ranks: torch.Tensor, fraction: float) -> torch.Tensor:
    """Boolean mask of the examples in the easiest ``fraction`` of their group (see :func:`difficulty_ranks`).

    Every group keeps at least its easiest example.

    Example:
        >>> curriculum_mask(torch.tensor([0.0, 0.5, 0.5, 0.0]), 0.5).tolist()
        [True, False, False, True]
    """
    return (ranks < fraction) | (ranks == 0)


def lfme_loss(
    student_logits: torch.Tensor,
    labels: torch.Tensor,
    expert_logits: torch.Tensor,
    group_of: torch.Tensor,
    groups: Sequence[Sequence[int]],
    weights: Sequence[float],
    temperature: float,
    kd_weight: float = 1.0,
    instance_mask: torch.Tensor | None = None,
    kd_classes: str = "all",
) -> torch.Tensor:
    """One batch of the LFME loss.

    ``mean_i m_i * [CE(z_i, y_i) + kd_weight * w_{g(i)} * T^2 KL(softmax(t_i[C]/T) || softmax(z_i[C]/T))]``
    over the selected examples (``m_i`` = ``instance_mask``, mean over the ``sum m_i`` selected ones), where
    ``g(i)`` is the group of example ``i``, ``t_i`` the logits of expert ``g(i)`` and ``C`` all classes
    (``kd_classes="all"``) or the classes of group ``g(i)`` (``"group"``).

    Args:
        student_logits: ``[B, C]``.
        labels: ``[B]``.
        expert_logits: ``[B, C]``, row ``i`` from the expert of example ``i``'s group.
        group_of: ``[B]`` group index of each example.
        groups: class lists of the groups.
        weights: ``w_k`` per group.
        temperature: ``T``.
        kd_weight: multiplier of the KD terms.
        instance_mask: ``[B]`` bool, the curriculum's selection; ``None``: all.
        kd_classes: ``"all"`` (KD over every class) or ``"group"`` (over the group's classes).

    Example:
        >>> z, t = torch.randn(4, 3), torch.randn(4, 3)
        >>> loss = lfme_loss(z, torch.tensor([0, 1, 2, 2]), t, torch.tensor([0, 0, 1, 1]),
        ...                  [[0, 1], [2]], [1.0, 0.5], temperature=2.0)
        >>> bool(loss > 0)
        True
    """
    if student_logits.shape != expert_logits.shape:
        raise ConfigError(
            f"lfme_loss: student logits {tuple(student_logits.shape)} and expert logits "
            f"{tuple(expert_logits.shape)} differ; experts must output the student's classes"
        )
    if len(weights) != len(groups):
        raise ConfigError(f"lfme_loss: {len(weights)} weights for {len(groups)} groups")
    per = F.cross_entropy(student_logits, labels, reduction="none")
    kd = torch.zeros_like(per)
    for k, cls in enumerate(groups):
        sel = group_of == k
        if weights[k] == 0 or not bool(sel.any()):
            continue
        c = torch.as_tensor(
            list(cls) if kd_classes == "group" else list(range(student_logits.shape[-1])),
            device=student_logits.device,
        )
        s = F.log_softmax(student_logits[sel][:, c] / temperature, dim=-1)
        t = F.log_softmax(expert_logits[sel][:, c].detach() / temperature, dim=-1)
        kl = (t.exp() * (t - s)).sum(-1) * temperature**2
        kd = kd.masked_scatter(sel, kl * float(weights[k]))
    per = per + kd_weight * kd
    if instance_mask is None:
        return per.mean()
    m = instance_mask.to(per.dtype)
    return (per * m).sum() / m.sum().clamp_min(1.0)


@torch.no_grad()
def group_accuracy(
    logits: torch.Tensor, labels: torch.Tensor, groups: Sequence[Sequence[int]]
) -> list[float]:
    """Accuracy on each group's examples, the prediction taken among that group's classes only.

    (``nan`` for a group without examples.)

    Example:
        >>> z = torch.tensor([[3.0, 1.0, 2.0], [0.0, 1.0, 5.0], [0.0, 1.0, 5.0]])
        >>> group_accuracy(z, torch.tensor([0, 1, 2]), [[0, 1], [2]])
        [1.0, 1.0]
    """
    out = []
    for cls in groups:
        c = torch.as_tensor(list(cls))
        sel = torch.isin(labels, c)
        if not bool(sel.any()):
            out.append(float("nan"))
            continue
        pred = c[logits[sel][:, c].argmax(-1)]
        out.append(float((pred == labels[sel]).float().mean()))
    return out


# ---------------------------------------------------------------------------------------------------------
# training


@torch.no_grad()
def _predict(model: nn.Module, data: Dataset[Any], batch_size: int = 512) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits and labels of ``model`` (eval mode, restored) over a ``(x, y)`` data set, in data order."""
    was = model.training
    model.eval()
    device = next(iter(model.parameters()), torch.empty(0)).device
    zs, ys = [], []
    try:
        n = len(data)  # type: ignore[arg-type]
        for i in range(0, n, batch_size):
            batch = default_collate([data[j] for j in range(i, min(n, i + batch_size))])
            x, y = _split(to_device(batch, device))
            if y is None:
                raise ConfigError("lfme_distill: the data needs (x, y) items (labels pick each expert's examples)")
            zs.append(_logits(model(x), "model").float().cpu())
            ys.append(y.cpu())
    finally:
        model.train(was)
    return torch.cat(zs), torch.cat(ys).long()


class _Indexed(Dataset):  # type: ignore[type-arg]
    """``(x, y, i)`` items: the example's index travels with it (to look up cached expert outputs)."""

    def __init__(self, data: Dataset[Any]) -> None:
        self.data = data

    def __len__(self) -> int:
        return len(self.data)  # type: ignore[arg-type]

    def __getitem__(self, i: int) -> tuple[Any, Any, int]:
        x, y = _split(self.data[i])
        return x, y, i


class LFMECallback:
    """Self-paced expert weights: restores them at the start of a (resumed) fit, updates them at epoch end.

    After epoch ``e`` the student's group accuracies on the validation set give ``w_k`` for epoch ``e + 1``;
    they are logged as ``lfme_w{k}`` (and the accuracies as ``lfme_acc{k}``) in the epoch logs.
    """

    def __init__(
        self,
        val: Dataset[Any],
        groups: list[list[int]],
        expert_acc: list[float],
        alpha: float,
        enabled: bool,
    ) -> None:
        self.val = val
        self.groups = groups
        self.expert_acc = expert_acc
        self.alpha = alpha
        self.enabled = enabled
        self.weights = [1.0] * len(groups)

    def on_train_start(self, trainer: Trainer) -> None:
        last = trainer.history[-1] if trainer.history else {}
        self.weights = [float(last.get(f"lfme_w{k}", 1.0)) for k in range(len(self.groups))]

    def on_epoch_end(self, trainer: Trainer, epoch: int, logs: dict[str, Any]) -> None:
        z, y = _predict(trainer.model, self.val)
        accs = group_accuracy(z, y, self.groups)
        if self.enabled:
            self.weights = [
                self_paced_weight(a, e, self.alpha) if not math.isnan(a) else 1.0
                for a, e in zip(accs, self.expert_acc, strict=True)
            ]
        for k, (a, w) in enumerate(zip(accs, self.weights, strict=True)):
            logs[f"lfme_acc{k}"] = a
            logs[f"lfme_w{k}"] = w


def lfme_distill(
    student: nn.Module,
    experts: Sequence[nn.Module],
    groups: Sequence[Sequence[int]],
    data: Dataset[Any],
    config: LFME | None = None,
    val_data: Dataset[Any] | None = None,
    checkpoint_dir: str | Path | None = None,
    resume: bool = False,
    progress: bool = True,
    callbacks: Iterable[object] = (),
) -> TrainResult:
    """Train ``student`` (in place) from one expert per class group with LFME.

    Args:
        student: the unified model (logits over all classes).
        experts: one per group, same output shape as the student (e.g. from :func:`train_experts`); frozen
            (eval mode, restored afterwards). Their logits on ``data`` are computed once and cached.
        groups: disjoint class lists covering every class, e.g. :func:`split_groups` of the class counts.
        data: the long-tailed training set, ``(x, y)`` items, no random augmentation (outputs are cached).
        config: an :class:`LFME`.
        val_data: ``(x, y)`` items for the self-paced weights (the paper uses a validation set); ``None``:
            the training data (the accuracies are then optimistic).
        checkpoint_dir, resume, progress, callbacks: as for :class:`~torchslim.train.Trainer`.

    Returns:
        the :class:`~torchslim.train.TrainResult`; its history has ``lfme_w{k}`` / ``lfme_acc{k}`` per epoch.

    Raises:
        ConfigError: groups overlap or miss a class, the expert count differs from the group count, or an
            expert's output shape differs from the student's (the message names both shapes).

    Example:
        >>> groups = split_groups(torch.bincount(train.labels).tolist(), 3)  # doctest: +SKIP
        >>> experts = train_experts(make_cnn, train, train.labels, groups, TrainConfig(epochs=4))  # doctest: +SKIP
        >>> lfme_distill(make_cnn(), experts, groups, train, LFME(), val_data=val)  # doctest: +SKIP
    """
    config = LFME() if config is None else config
    if not isinstance(config, LFME):
        raise ConfigError(f"lfme_distill: config must be an LFME, got {type(config).__name__}")
    experts = list(experts)
    if len(experts) != len(groups):
        raise ConfigError(
            f"lfme_distill: {len(experts)} experts for {len(groups)} groups; LFME trains one expert per group"
        )
    cached, labels = [], None
    for e in experts:
        with frozen(e):
            z, y = _predict(e, data)
        cached.append(z)
        labels = y
    assert labels is not None
    s_shape = tuple(_predict(student, Subset(data, [0]))[0].shape[1:])
    for k, z in enumerate(cached):
        if tuple(z.shape[1:]) != s_shape:
            raise ConfigError(
                f"lfme_distill: expert {k} outputs {tuple(z.shape[1:])} logits per example but the student "
                f"outputs {s_shape}; experts must have the student's class count"
            )
    num_classes = s_shape[0]
    gs = _check_groups(groups, num_classes)
    group_of = torch.full((num_classes,), -1, dtype=torch.long)
    for k, g in enumerate(gs):
        group_of[g] = k
    ex_group = group_of[labels]
    ex_logits = torch.stack(cached)[ex_group, torch.arange(len(labels))]  # [N, C]: own group's expert
    # curriculum: rank examples within their group by the expert's confidence in the true class
    conf = torch.zeros(len(labels))
    for k, g in enumerate(gs):
        sel = ex_group == k
        c = torch.tensor(g)
        p = ex_logits[sel][:, c].softmax(-1)
        pos = (labels[sel].unsqueeze(1) == c.unsqueeze(0)).float().argmax(1)
        conf[sel] = p.gather(1, pos.unsqueeze(1)).squeeze(1)
    ranks = difficulty_ranks(conf, ex_group)
    # experts' own group accuracies on the validation data
    val = data if val_data is None else val_data
    expert_acc = []
    for k, e in enumerate(experts):
        with frozen(e):
            zv, yv = _predict(e, val)
        expert_acc.append(group_accuracy(zv, yv, [gs[k]])[0])
    cb = LFMECallback(val, gs, expert_acc, config.alpha, config.self_paced)
    e_c = config.curriculum_epochs or max(1, config.train.epochs // 2)

    trainer: Trainer | None = None

    def step_fn(model: nn.Module, batch: Any) -> torch.Tensor:
        x, y, i = batch
        assert trainer is not None
        i = i.cpu()
        z = _logits(model(x), "student")
        frac = curriculum_fraction(trainer.epoch, config.curriculum_start, e_c)
        mask = curriculum_mask(ranks[i], frac).to(z.device) if frac < 1 else None
        return lfme_loss(
            z,
            y,
            ex_logits[i].to(z.device),
            ex_group[i].to(z.device),
            gs,
            cb.weights,
            config.temperature,
            config.kd_weight,
            mask,
            config.kd_classes,
        )

    trainer = Trainer(
        student,
        config.train,
        step_fn=step_fn,
        callbacks=[cb, *callbacks],
        checkpoint_dir=checkpoint_dir,
        progress=progress,
    )
    result = trainer.fit(_Indexed(data), resume=resume)
    result.history = [dict(h, lfme_expert_acc=list(expert_acc)) for h in result.history]
    return result

