"""KD diagnostics after Tang et al. (2020), "Understanding and Improving Knowledge Distillation".

Paper: arXiv:2002.03532.

The paper splits what a teacher's soft distribution ``p = softmax(z_t / T)`` gives a student into three parts:

1. **universe** knowledge: mass moved off the ground truth, which regularises like label smoothing;
2. **domain** knowledge: *how* that mass is spread over the non-target classes (class relationships);
3. **instance-specific** knowledge: the teacher's confidence ``p_y`` on each example, which rescales the
   example's gradient on the ground-truth logit (KD: ``q_y - p_y``; CE: ``q_y - 1``).

Each ablation below is a synthetic target distribution ``r`` (and an optional per-example weight ``w``) that
keeps some of the parts and removes the others; every one is trained with the same loss
``(1 - alpha) * CE(z_s, y) + alpha * T^2 * H(r, softmax(z_s / T))`` (``w`` multiplies each example's loss):

================================  ========  ======  ========  =============================================
ablation                          universe  domain  instance  target ``r``
================================  ========  ======  ========  =============================================
``ce``                            no        no      no        one-hot ``e_y`` (``alpha`` is ignored: CE only)
``label_smoothing``               yes       no      no        ``(1 - eps) e_y + eps / C``, ``eps`` chosen so
                                                              that ``r_y`` = the teacher's mean ``p_y``
``instance_weighted_ce``          no        no      yes       one-hot, CE only, weighted by
                                                              ``w_i = p_{y_i} / mean(p_y)``
``kd_uniform_nontarget``          yes       no      yes       ``r_y = p_y``, other classes ``(1 - p_y)/(C-1)``
``kd_permuted``                   yes       no*     yes       ``p`` with its non-target entries permuted
                                                              (random per example; "KD-pt" of the paper)
``kd_class_mean``                 yes       yes     no        class-conditional mean of ``p`` over the
                                                              training examples of class ``y``
``kd``                            yes       yes     yes       ``p`` (Hinton KD)
================================  ========  ======  ========  =============================================

(*) permuting keeps the entropy of the non-target part but not which classes it favours.

With a teacher whose non-target probabilities are already uniform, ``kd`` and ``kd_uniform_nontarget`` are the
same target, and at ``T = 1``, ``alpha = 1`` the KD loss equals torch's label-smoothed cross-entropy with
``eps = (1 - p_y) C / (C - 1)``; the tests check this.

Example:
    >>> t = torch.tensor([[2.0, 1.0, 0.0]]); y = torch.tensor([0])
    >>> r, w = ablation_targets(t, y, "kd_uniform_nontarget", temperature=1.0)
    >>> [round(v, 4) for v in r[0].tolist()]
    [0.6652, 0.1674, 0.1674]
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Annotated, Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

from torchslim.core.config import Config
from torchslim.core.errors import ConfigError
from torchslim.train.callbacks import top1_accuracy
from torchslim.train.trainer import TrainConfig, Trainer

__all__ = [
    "ABLATIONS",
    "KDDiagnostics",
    "ablation_loss",
    "ablation_targets",
    "decomposition",
    "run_ablations",
    "teacher_logits_for",
]

Ablation = Literal[
    "ce",
    "label_smoothing",
    "instance_weighted_ce",
    "kd_uniform_nontarget",
    "kd_permuted",
    "kd_class_mean",
    "kd",
]

#: The ablations, in table order.
ABLATIONS: tuple[str, ...] = (
    "ce",
    "label_smoothing",
    "instance_weighted_ce",
    "kd_uniform_nontarget",
    "kd_permuted",
    "kd_class_mean",
    "kd",
)

#: Which of the three knowledge parts each ablation keeps (universe, domain, instance).
PARTS: dict[str, tuple[bool, bool, bool]] = {
    "ce": (False, False, False),
    "label_smoothing": (True, False, False),
    "instance_weighted_ce": (False, False, True),
    "kd_uniform_nontarget": (True, False, True),
    "kd_permuted": (True, False, True),
    "kd_class_mean": (True, True, False),
    "kd": (True, True, True),
}


def _check(teacher_logits: torch.Tensor, labels: torch.Tensor) -> None:
    if teacher_logits.dim() != 2:
        raise ConfigError(
            f"ablation_targets: teacher logits must be [N, classes], got shape {tuple(teacher_logits.shape)}"
        )
    if teacher_logits.shape[1] < 2:
        raise ConfigError("ablation_targets: need at least 2 classes")
    if labels.shape != (teacher_logits.shape[0],):
        raise ConfigError(
            f"ablation_targets: labels {tuple(labels.shape)} must be [N] with N = {teacher_logits.shape[0]} "
            "(one integer label per row of the teacher logits)"
        )
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= teacher_logits.shape[1]):
        raise ConfigError(
            f"ablation_targets: labels must lie in [0, {teacher_logits.shape[1] - 1}], got "
            f"[{int(labels.min())}, {int(labels.max())}]"
        )


def ablation_targets(
    teacher_logits: torch.Tensor,
    labels: torch.Tensor,
    kind: str,
    temperature: float = 1.0,
    seed: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The synthetic target distribution ``r`` [N, C] and per-example weight ``w`` [N] of one ablation.

    Computed once over a whole training set (``kd_class_mean`` and the ``label_smoothing`` / weight
    normalisations use statistics over all ``N`` rows).

    Args:
        teacher_logits: the teacher's logits [N, C].
        labels: integer labels [N].
        kind: one of :data:`ABLATIONS`.
        temperature: ``T`` of the teacher's softmax.
        seed: seeds the per-example permutations of ``kd_permuted``.

    Raises:
        ConfigError: unknown ``kind``, bad shapes or labels out of range.

    Example:
        >>> r, w = ablation_targets(torch.zeros(2, 4), torch.tensor([1, 2]), "label_smoothing")
        >>> r[0].tolist(), w.tolist()
        ([0.25, 0.25, 0.25, 0.25], [1.0, 1.0])
    """
    if kind not in ABLATIONS:
        raise ConfigError(
            f"ablation_targets: unknown ablation {kind!r}; choose one of {', '.join(ABLATIONS)}"
        )
    if not temperature > 0:
        raise ConfigError(f"ablation_targets: temperature must be > 0, got {temperature}")
    _check(teacher_logits, labels)
    n, c = teacher_logits.shape
    p = F.softmax(teacher_logits.detach().double() / temperature, dim=-1)
    onehot = F.one_hot(labels, c).double()
    p_y = p.gather(1, labels[:, None]).squeeze(1)
    w = torch.ones(n, dtype=torch.float64)
    if kind in ("ce", "instance_weighted_ce"):
        r = onehot
        if kind == "instance_weighted_ce":
            w = p_y / p_y.mean()
    elif kind == "label_smoothing":
        conf = p_y.mean()  # r_y = (1 - eps) + eps / C = mean teacher confidence
        eps = (1 - conf) * c / (c - 1)
        r = (1 - eps) * onehot + eps / c
    elif kind == "kd_uniform_nontarget":
        r = onehot * p_y[:, None] + (1 - onehot) * ((1 - p_y) / (c - 1))[:, None]
    elif kind == "kd_permuted":
        g = torch.Generator().manual_seed(seed)
        r = p.clone()
        keys = torch.rand(n, c, generator=g)
        keys.scatter_(1, labels[:, None], -1.0)  # the target sorts first and stays in place below
        order = keys.argsort(dim=1)  # order[:, 0] is the target; the rest a random order of the others
        others = torch.arange(c).expand(n, c)
        others = others[others != labels[:, None]].reshape(n, c - 1)  # non-target classes, ascending
        r.scatter_(1, others, p.gather(1, order[:, 1:]))
    elif kind == "kd_class_mean":
        sums = torch.zeros(c, c, dtype=torch.float64).index_add_(0, labels, p)
        counts = torch.bincount(labels, minlength=c).double().clamp_min(1)[:, None]
        r = (sums / counts)[labels]
    else:  # kd
        r = p
    return r.float(), w.float()


def ablation_loss(
    student_logits: torch.Tensor,
    labels: torch.Tensor,
    targets: torch.Tensor,
    weights: torch.Tensor,
    alpha: float,
    temperature: float,
) -> torch.Tensor:
    """``mean_i w_i [(1 - alpha) CE(z_i, y_i) + alpha T^2 H(r_i, softmax(z_i / T))]``.

    ``H(r, q) = -sum_c r_c log q_c`` (cross-entropy with a soft target; it differs from ``KL(r || q)`` by the
    entropy of ``r``, a constant, so the gradients are those of Hinton's KD loss).

    Example:
        >>> z = torch.zeros(1, 2); y = torch.tensor([0]); r = torch.tensor([[1.0, 0.0]])
        >>> round(float(ablation_loss(z, y, r, torch.ones(1), alpha=0.5, temperature=1.0)), 4)  # ln 2
        0.6931
    """
    if targets.shape != student_logits.shape:
        raise ConfigError(
            f"ablation_loss: student logits {tuple(student_logits.shape)} and targets {tuple(targets.shape)} "
            "differ in shape"
        )
    ce = F.cross_entropy(student_logits, labels, reduction="none")
    soft = -(targets * F.log_softmax(student_logits / temperature, dim=-1)).sum(-1) * temperature**2
    return (weights * ((1 - alpha) * ce + alpha * soft)).mean()


@torch.no_grad()
def teacher_logits_for(teacher: nn.Module, data: Dataset[Any], batch_size: int = 500) -> torch.Tensor:
    """The teacher's logits (eval mode, no gradient) for every item of ``data`` [N, C], in data order.

    Example:
        >>> from torch.utils.data import TensorDataset
        >>> teacher_logits_for(nn.Linear(3, 2), TensorDataset(torch.zeros(4, 3), torch.zeros(4))).shape
        torch.Size([4, 2])
    """
    was = teacher.training
    teacher.eval()
    try:
        out = []
        for batch in DataLoader(data, batch_size=batch_size, shuffle=False):
            x = batch[0] if isinstance(batch, (tuple, list)) else batch
            out.append(teacher(x).float())
        return torch.cat(out)
    finally:
        teacher.train(was)


class _WithTargets(Dataset):  # type: ignore[type-arg]
    """``(x, y, r, w)`` items: the base ``(x, y)`` item plus its precomputed target and weight."""

    def __init__(self, base: Dataset[Any], targets: torch.Tensor, weights: torch.Tensor) -> None:
        self.base, self.targets, self.weights = base, targets, weights

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i: int) -> tuple[Any, Any, torch.Tensor, torch.Tensor]:
        x, y = self.base[i][:2]
        return x, y, self.targets[i], self.weights[i]


class KDDiagnostics(Config):
    """Settings of :func:`run_ablations`.

    Attributes:
        ablations: which of :data:`ABLATIONS` to run (default: all).
        temperature: ``T`` of the teacher and student soft distributions.
        alpha: weight of the soft-target term (``ce`` ignores it).
        seeds: student initialisation / data-order seeds; each ablation runs once per seed.
        train: the student's training configuration (``seed`` is replaced by each of ``seeds``).
    """

    type_name: ClassVar[str] = "kd_diagnostics"

    ablations: tuple[str, ...] = ABLATIONS
    temperature: Annotated[float, Field(gt=0)] = 4.0
    alpha: Annotated[float, Field(ge=0, le=1)] = 0.9
    seeds: tuple[int, ...] = (0,)
    train: TrainConfig = TrainConfig(epochs=2, lr=0.05, schedule="onecycle")


def run_ablations(
    teacher: nn.Module,
    make_student: Callable[[], nn.Module],
    train_data: Dataset[Any],
    test_data: Dataset[Any],
    config: KDDiagnostics | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Train one student per ablation (and seed) and return the test top-1 table.

    The teacher's logits on ``train_data`` are computed once (eval mode); every ablation's targets come from
    them (:func:`ablation_targets`). Each student is built by ``make_student()`` right after
    ``torch.manual_seed(seed)`` and trained with :class:`~torchslim.train.Trainer` for the same steps.

    Args:
        teacher: the frozen teacher (its train/eval mode is restored).
        make_student: builds a fresh student.
        train_data, test_data: ``(x, y)`` items with integer labels.
        config: a :class:`KDDiagnostics`.
        progress: show progress bars.

    Returns:
        ``{"accuracy": {ablation: {"mean", "std", "runs"}}, "teacher_accuracy", "teacher_mean_confidence",
        "seconds": {ablation: s}, "parts": PARTS}``.

    Raises:
        ConfigError: an unknown ablation name, or the teacher/student outputs do not match.

    Example:
        >>> table = run_ablations(teacher, lambda: SmallCNN(), train_set, test_set)  # doctest: +SKIP
        >>> table["accuracy"]["kd"]["mean"]  # doctest: +SKIP
    """
    config = KDDiagnostics() if config is None else config
    bad = [a for a in config.ablations if a not in ABLATIONS]
    if bad:
        raise ConfigError(f"run_ablations: unknown ablations {bad}; choose from {', '.join(ABLATIONS)}")
    if not config.seeds:
        raise ConfigError("run_ablations: seeds is empty; give at least one seed")
    t_logits = teacher_logits_for(teacher, train_data)
    labels = torch.as_tensor([int(train_data[i][1]) for i in range(len(t_logits))])  # type: ignore[arg-type]
    T, alpha = config.temperature, config.alpha
    results: dict[str, Any] = {
        "teacher_accuracy": top1_accuracy(teacher, test_data),
        "teacher_train_accuracy": float((t_logits.argmax(1) == labels).float().mean()),
        "teacher_mean_confidence": float(F.softmax(t_logits / T, -1).gather(1, labels[:, None]).mean()),
        "accuracy": {},
        "seconds": {},
        "parts": {a: PARTS[a] for a in config.ablations},
        "temperature": T,
        "alpha": alpha,
    }

    def step_fn_for(kind: str) -> Callable[[nn.Module, Any], torch.Tensor]:
        def step_fn(m: nn.Module, batch: Any) -> torch.Tensor:
            x, y, r, w = batch
            z = m(x)
            if z.shape[-1] != r.shape[-1]:
                raise ConfigError(
                    f"run_ablations: student outputs {z.shape[-1]} classes, teacher {r.shape[-1]}; give the "
                    "student the teacher's number of classes"
                )
            if kind == "ce":
                return F.cross_entropy(z, y)
            return ablation_loss(z, y, r, w, 0.0 if kind == "instance_weighted_ce" else alpha, T)

        return step_fn

    for kind in config.ablations:
        r, w = ablation_targets(t_logits, labels, kind, T)
        data: Dataset[Any]
        if type(train_data) is TensorDataset and len(train_data.tensors) >= 2:
            data = TensorDataset(*train_data.tensors[:2], r, w)  # the trainer's fast tensor-slicing path
        else:
            data = _WithTargets(train_data, r, w)
        runs: list[float] = []
        t0 = time.time()
        for seed in config.seeds:
            torch.manual_seed(seed)
            student = make_student()
            tc = config.train.model_copy(update={"seed": seed})
            Trainer(student, tc, step_fn=step_fn_for(kind), progress=progress).fit(data)
            runs.append(top1_accuracy(student, test_data))
        results["seconds"][kind] = time.time() - t0
        mean = sum(runs) / len(runs)
        std = (sum((v - mean) ** 2 for v in runs) / max(len(runs) - 1, 1)) ** 0.5
        results["accuracy"][kind] = {"mean": mean, "std": std, "runs": runs}
    return results


def decomposition(
    table: dict[str, Any], keys: Sequence[tuple[str, str, str]] | None = None
) -> dict[str, float]:
    """Accuracy differences that isolate each knowledge part, from a :func:`run_ablations` result.

    Default contrasts: universe = ``label_smoothing - ce``; domain = ``kd - kd_permuted`` and
    ``kd_class_mean - label_smoothing``; instance = ``instance_weighted_ce - ce`` and
    ``kd_uniform_nontarget - label_smoothing``; total = ``kd - ce``. Pairs with a missing ablation are
    skipped.

    Example:
        >>> t = {"accuracy": {"ce": {"mean": 0.8}, "kd": {"mean": 0.83}}}
        >>> round(decomposition(t)["total (kd - ce)"], 4)
        0.03
    """
    keys = keys or (
        ("universe (label_smoothing - ce)", "label_smoothing", "ce"),
        ("domain (kd - kd_permuted)", "kd", "kd_permuted"),
        ("domain (kd_class_mean - label_smoothing)", "kd_class_mean", "label_smoothing"),
        ("instance (instance_weighted_ce - ce)", "instance_weighted_ce", "ce"),
        ("instance (kd_uniform_nontarget - label_smoothing)", "kd_uniform_nontarget", "label_smoothing"),
        ("total (kd - ce)", "kd", "ce"),
    )
    acc = table["accuracy"]
    return {name: acc[a]["mean"] - acc[b]["mean"] for name, a, b in keys if a in acc and b in acc}
