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
``instance_rescaled_ce``          no        no      yes       CE only, each example's loss multiplied by the
                                                              current KD rescaling factor
                                                              (:func:`rescaled_ce_loss`): the ground-truth
                                                              logit gets exactly KD's gradient
``kd_uniform_nontarget``          yes       no      yes       ``r_y = p_y``, other classes ``(1 - p_y)/(C-1)``
``kd_permuted``                   yes       no*     yes       ``p`` with its non-target entries permuted
                                                              (random per example; "KD-pt" of the paper)
``kd_class_mean``                 yes       yes     no        class-conditional mean of ``p`` over the
                                                              training examples of class ``y``
``kd_sim``                        yes       yes     no        "KD-sim": ``r_y`` = the teacher's mean ``p_y``
                                                              (as ``label_smoothing``); the rest spread by
                                                              ``softmax(S[y, j] / beta)`` over ``j != y``,
                                                              ``S`` the cosine similarity of the teacher's
                                                              logit-layer weight rows (class geometry)
``kd``                            yes       yes     yes       ``p`` (Hinton KD)
================================  ========  ======  ========  =============================================

(*) permuting keeps the entropy of the non-target part but not which classes it favours.

Diagnosis tools (the abstract's three mechanisms measured directly, not through accuracy; only the paper's
abstract could be checked here, so the exact formulas below are derived, not copied from its equations):

* :func:`gradient_rescaling`: the per-example factor by which the KD loss rescales the cross-entropy gradient
  on the ground-truth logit (instance-specific knowledge: the "teacher rescales student model's per-instance
  gradients");
  :func:`rank_correlation` of it with the teacher's confidence ``p_y``.
* :func:`class_similarity` / :func:`geometry_agreement`: the cosine geometry of a logit layer's class
  weight vectors and how well a student's geometry matches the teacher's (domain knowledge: the "teacher
  injects class relationships prior to student's logit layer geometry").
* :func:`teacher_report`: the teacher-side quantities behind the paper's diagnosis of KD failure cases:
  how much mass leaves the ground truth (universe knowledge; an over-confident, e.g. larger or over-trained,
  teacher gives little), how spread the non-target part is (a label-smoothed teacher's is nearly uniform, so
  it carries no class relations), and how much ``p_y`` varies over examples (instance knowledge).

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

import math
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
    "calibrate_sim_temperature",
    "class_similarity",
    "decomposition",
    "geometry_agreement",
    "gradient_rescaling",
    "logit_layer",
    "rank_correlation",
    "rescaled_ce_loss",
    "run_ablations",
    "teacher_logits_for",
    "teacher_report",
]

Ablation = Literal[
    "ce",
    "label_smoothing",
    "instance_weighted_ce",
    "instance_rescaled_ce",
    "kd_uniform_nontarget",
    "kd_permuted",
    "kd_class_mean",
    "kd_sim",
    "kd",
]

#: The ablations, in table order.
ABLATIONS: tuple[str, ...] = (
    "ce",
    "label_smoothing",
    "instance_weighted_ce",
    "instance_rescaled_ce",
    "kd_uniform_nontarget",
    "kd_permuted",
    "kd_class_mean",
    "kd_sim",
    "kd",
)

#: Which of the three knowledge parts each ablation keeps (universe, domain, instance).
PARTS: dict[str, tuple[bool, bool, bool]] = {
    "ce": (False, False, False),
    "label_smoothing": (True, False, False),
    "instance_weighted_ce": (False, False, True),
    "instance_rescaled_ce": (False, False, True),
    "kd_uniform_nontarget": (True, False, True),
    "kd_permuted": (True, False, True),
    "kd_class_mean": (True, True, False),
    "kd_sim": (True, True, False),
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
    similarity: torch.Tensor | None = None,
    sim_temperature: float = 0.1,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The synthetic target distribution ``r`` [N, C] and per-example weight ``w`` [N] of one ablation.

    Computed once over a whole training set (``kd_class_mean`` and the ``label_smoothing`` / weight
    normalisations use statistics over all ``N`` rows). For ``instance_rescaled_ce`` the returned ``r`` is
    the teacher's ``p`` itself: that ablation's loss is :func:`rescaled_ce_loss`, which uses only ``p_y``.

    Args:
        teacher_logits: the teacher's logits [N, C].
        labels: integer labels [N].
        kind: one of :data:`ABLATIONS`.
        temperature: ``T`` of the teacher's softmax.
        seed: seeds the per-example permutations of ``kd_permuted``.
        similarity: ``kd_sim`` only: a [C, C] class-similarity matrix ``S`` (e.g. :func:`class_similarity`
            of the teacher's logit layer).
        sim_temperature: ``kd_sim`` only: ``beta`` of ``softmax(S[y, j] / beta)``.

    Raises:
        ConfigError: unknown ``kind``, bad shapes or labels out of range, ``kd_sim`` without a [C, C]
            ``similarity``.

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
    if kind == "instance_rescaled_ce":
        r = p  # the teacher's distribution, from which rescaled_ce_loss reads p_y during training
    elif kind in ("ce", "instance_weighted_ce"):
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
    elif kind == "kd_sim":
        if similarity is None or tuple(similarity.shape) != (c, c):
            got = None if similarity is None else tuple(similarity.shape)
            raise ConfigError(
                f"ablation_targets: kd_sim needs similarity=[C, C] = [{c}, {c}], got {got}; pass "
                "class_similarity(logit_layer(teacher, C).weight)"
            )
        if not sim_temperature > 0:
            raise ConfigError(f"ablation_targets: sim_temperature must be > 0, got {sim_temperature}")
        logits = similarity.detach().double() / sim_temperature
        logits = logits.masked_fill(torch.eye(c, dtype=torch.bool), float("-inf"))
        spread = F.softmax(logits, dim=-1)  # row y: how class y's non-target mass is spread (0 on y)
        conf = p_y.mean()
        r = conf * onehot + (1 - conf) * spread[labels]
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


def calibrate_sim_temperature(
    similarity: torch.Tensor, labels: torch.Tensor, target_entropy: float, iters: int = 60
) -> float:
    """The ``beta`` at which ``kd_sim``'s non-target part has mean normalised entropy ``target_entropy``.

    The entropy of ``softmax(S[y, j] / beta)`` over ``j != y`` grows with ``beta`` (from that of the argmax
    to uniform); bisection on ``log beta`` in ``[1e-4, 1e4]``. ``target_entropy`` is usually the teacher's
    ``teacher_report(...)["nontarget_entropy"]`` (in ``(0, 1)``).

    Example:
        >>> s = torch.tensor([[1.0, 0.5, 0.0], [0.5, 1.0, 0.0], [0.0, 0.0, 1.0]])
        >>> beta = calibrate_sim_temperature(s, torch.tensor([0, 1, 2]), 0.9)
        >>> r, _ = ablation_targets(torch.zeros(3, 3), torch.tensor([0, 1, 2]), "kd_sim", similarity=s,
        ...                         sim_temperature=beta)
        >>> round(teacher_report(r.log(), torch.tensor([0, 1, 2]))["nontarget_entropy"], 4)
        0.9
    """
    if not 0 < target_entropy < 1:
        raise ConfigError(
            f"calibrate_sim_temperature: target_entropy must lie in (0, 1) (a normalised entropy), got "
            f"{target_entropy}"
        )
    c = similarity.shape[0]
    zeros = torch.zeros(len(labels), c)

    def entropy(beta: float) -> float:
        r, _ = ablation_targets(zeros, labels, "kd_sim", similarity=similarity, sim_temperature=beta)
        return teacher_report(r.clamp_min(1e-30).log(), labels)["nontarget_entropy"]

    lo, hi = math.log(1e-4), math.log(1e4)
    for _ in range(iters):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if entropy(math.exp(mid)) < target_entropy else (lo, mid)
    return math.exp((lo + hi) / 2)


def class_similarity(weight: torch.Tensor) -> torch.Tensor:
    """Cosine similarity [C, C] of the rows (one weight vector per class) of a logit layer's weight [C, D].

    Example:
        >>> s = class_similarity(torch.tensor([[1.0, 0.0], [1.0, 1.0]]))
        >>> [[round(v, 4) for v in row] for row in s.tolist()]
        [[1.0, 0.7071], [0.7071, 1.0]]
    """
    if weight.dim() != 2 or weight.shape[0] < 2:
        raise ConfigError(
            f"class_similarity: weight must be [classes >= 2, features], got shape {tuple(weight.shape)}"
        )
    w = weight.detach().double()
    w = w / w.norm(dim=1, keepdim=True).clamp_min(1e-12)
    return (w @ w.T).float()


def logit_layer(model: nn.Module, num_classes: int) -> nn.Linear:
    """The last :class:`torch.nn.Linear` of ``model`` (module order) with ``out_features == num_classes``.

    Raises:
        ConfigError: no such layer (the class-geometry diagnostics need a linear classifier head).

    Example:
        >>> logit_layer(nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3)), 3).in_features
        8
    """
    found = [m for m in model.modules() if isinstance(m, nn.Linear) and m.out_features == num_classes]
    if not found:
        raise ConfigError(
            f"logit_layer: {type(model).__name__} has no nn.Linear with out_features={num_classes}; the "
            "class geometry is read from a linear classifier head (pass similarity= explicitly otherwise)"
        )
    return found[-1]


def geometry_agreement(weight: torch.Tensor, reference: torch.Tensor) -> float:
    """Pearson correlation between the off-diagonal entries of ``class_similarity(weight)`` and of
    ``reference`` [C, C] (e.g. the teacher's class similarity): 1 = the same class geometry.

    Example:
        >>> w = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0]])
        >>> round(geometry_agreement(w, class_similarity(w)), 4)
        1.0
    """
    s = class_similarity(weight).double()
    c = s.shape[0]
    if tuple(reference.shape) != (c, c):
        raise ConfigError(
            f"geometry_agreement: weight has {c} classes, reference is {tuple(reference.shape)}; both must "
            "describe the same classes"
        )
    off = ~torch.eye(c, dtype=torch.bool)
    return _pearson(s[off], reference.detach().double()[off])


def _pearson(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double() - a.double().mean(), b.double() - b.double().mean()
    den = float(a.norm() * b.norm())
    return float((a * b).sum()) / den if den > 0 else float("nan")


def _average_ranks(v: torch.Tensor) -> torch.Tensor:
    values, inverse, counts = torch.unique(v.double(), sorted=True, return_inverse=True, return_counts=True)
    ends = counts.cumsum(0).double()  # 1-based rank of the last element of each group of equal values
    return (ends - (counts.double() - 1) / 2)[inverse]


def rank_correlation(a: torch.Tensor, b: torch.Tensor) -> float:
    """Spearman rank correlation of two 1-D tensors (ties get their average rank); ``nan`` if one is constant.

    Example:
        >>> a = torch.tensor([1.0, 2.0, 3.0, 4.0])
        >>> round(rank_correlation(a, a**2), 6)
        1.0
    """
    if a.dim() != 1 or a.shape != b.shape or a.numel() < 2:
        raise ConfigError(
            f"rank_correlation: need two 1-D tensors of the same length >= 2, got {tuple(a.shape)} and "
            f"{tuple(b.shape)}"
        )
    return _pearson(_average_ranks(a), _average_ranks(b))


def gradient_rescaling(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor,
    temperature: float = 1.0,
    alpha: float = 1.0,
) -> torch.Tensor:
    """Per-example factor ``w_i`` by which the KD loss rescales the CE gradient on the ground-truth logit.

    For ``l = (1 - alpha) CE(z, y) + alpha T^2 H(p^T, softmax(z / T))`` the gradient on the ground-truth
    logit is ``(1 - alpha)(q_y - 1) + alpha T (q^T_y - p^T_y)``; plain CE gives ``q_y - 1``. The ratio

        ``w_i = [(1 - alpha)(q_y - 1) + alpha T (q^T_y - p^T_y)] / (q_y - 1)``

    is the paper's instance-specific knowledge: at ``T = 1``, ``alpha = 1`` it is
    ``(p_y - q_y) / (1 - q_y)``, which grows with the teacher's confidence ``p_y``, so KD down-weights the
    examples the teacher finds hard relative to those it finds easy. (``q`` = student, ``p`` = teacher.)

    Example:
        >>> z_s = torch.zeros(1, 2); z_t = torch.tensor([[2.0, 0.0]]); y = torch.tensor([0])
        >>> round(float(gradient_rescaling(z_s, z_t, y)[0]), 4)  # (0.8808 - 0.5) / (1 - 0.5)
        0.7616
    """
    _check(teacher_logits, labels)
    if student_logits.shape != teacher_logits.shape:
        raise ConfigError(
            f"gradient_rescaling: student logits {tuple(student_logits.shape)} and teacher logits "
            f"{tuple(teacher_logits.shape)} differ in shape"
        )
    if not temperature > 0 or not 0 <= alpha <= 1:
        raise ConfigError(
            f"gradient_rescaling: need temperature > 0 and 0 <= alpha <= 1, got {temperature}, {alpha}"
        )
    idx = labels[:, None]
    pt_y = F.softmax(teacher_logits.detach().double() / temperature, -1).gather(1, idx).squeeze(1)
    return _rescaling(student_logits, pt_y, labels, temperature, alpha).float()


def _rescaling(
    student_logits: torch.Tensor, pt_y: torch.Tensor, labels: torch.Tensor, temperature: float, alpha: float
) -> torch.Tensor:
    idx = labels[:, None]
    zs = student_logits.detach().double()
    q_y = F.softmax(zs, -1).gather(1, idx).squeeze(1)
    qt_y = F.softmax(zs / temperature, -1).gather(1, idx).squeeze(1)
    grad_kd = (1 - alpha) * (q_y - 1) + alpha * temperature * (qt_y - pt_y)
    return grad_kd / (q_y - 1).clamp_max(-1e-12)


def rescaled_ce_loss(
    student_logits: torch.Tensor,
    labels: torch.Tensor,
    teacher_probs: torch.Tensor,
    temperature: float,
    alpha: float,
) -> torch.Tensor:
    """``mean_i sg(w_i) CE(z_i, y_i)``, ``w_i`` = :func:`gradient_rescaling` at the current student logits.

    Instance-specific knowledge alone: the gradient on each ground-truth logit is exactly that of the KD loss
    ``(1 - alpha) CE + alpha T^2 H(p^T, q^T)`` (``w_i (q_y - 1)``), while the other logits get CE's gradient
    direction ``w_i q_j`` (no class relations, no label smoothing). ``teacher_probs`` is the teacher's
    ``softmax(z_t / T)`` (only its ground-truth entry is used); ``sg`` = stop-gradient.

    Example:
        >>> z = torch.zeros(1, 2); y = torch.tensor([0]); p = torch.tensor([[0.8, 0.2]])
        >>> round(float(rescaled_ce_loss(z, y, p, 1.0, 1.0)), 4)  # w = 0.6 times ln 2
        0.4159
    """
    if teacher_probs.shape != student_logits.shape:
        raise ConfigError(
            f"rescaled_ce_loss: student logits {tuple(student_logits.shape)} and teacher probabilities "
            f"{tuple(teacher_probs.shape)} differ in shape"
        )
    pt_y = teacher_probs.detach().double().gather(1, labels[:, None]).squeeze(1)
    w = _rescaling(student_logits, pt_y, labels, temperature, alpha).to(student_logits.dtype)
    return (w * F.cross_entropy(student_logits, labels, reduction="none")).mean()


def teacher_report(
    teacher_logits: torch.Tensor, labels: torch.Tensor, temperature: float = 1.0
) -> dict[str, float]:
    """The teacher-side quantities behind the three kinds of knowledge, for diagnosing a teacher.

    Returns ``accuracy``; ``mean_p_y`` and ``universe_mass = 1 - mean_p_y`` (how much mass KD moves off the
    ground truth: a near-1 ``mean_p_y`` means KD is close to plain CE, as for an over-confident teacher);
    ``std_p_y`` (how much the instance weights vary); ``nontarget_entropy`` (mean entropy of the
    renormalised non-target part divided by ``log(C - 1)``: 1 = uniform, i.e. no class relations, as for a
    teacher trained with label smoothing).

    Example:
        >>> r = teacher_report(torch.tensor([[2.0, 0.0, 0.0]]), torch.tensor([0]))
        >>> round(r["mean_p_y"], 4), r["nontarget_entropy"]
        (0.787, 1.0)
    """
    _check(teacher_logits, labels)
    if not temperature > 0:
        raise ConfigError(f"teacher_report: temperature must be > 0, got {temperature}")
    c = teacher_logits.shape[1]
    p = F.softmax(teacher_logits.detach().double() / temperature, -1)
    p_y = p.gather(1, labels[:, None]).squeeze(1)
    if c > 2:
        rest = p.scatter(1, labels[:, None], 0.0)
        rest = rest / rest.sum(1, keepdim=True).clamp_min(1e-300)
        ent = -(rest * rest.clamp_min(1e-300).log()).sum(1) / math.log(c - 1)
        nontarget = float(ent.mean())
    else:
        nontarget = 1.0
    return {
        "accuracy": float((teacher_logits.argmax(1) == labels).double().mean()),
        "mean_p_y": float(p_y.mean()),
        "universe_mass": float(1 - p_y.mean()),
        "std_p_y": float(p_y.std()) if len(p_y) > 1 else 0.0,
        "nontarget_entropy": nontarget,
    }


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
        sim_temperature: ``beta`` of the ``kd_sim`` class-similarity softmax; ``None`` (default): chosen by
            :func:`calibrate_sim_temperature` so that the ``kd_sim`` targets' non-target part is as spread
            (normalised entropy) as the teacher's at ``temperature``, so that ``kd_sim`` differs from the
            teacher's own distribution in *which* classes get the mass, not in how peaked it is.
        train: the student's training configuration (``seed`` is replaced by each of ``seeds``).
    """

    type_name: ClassVar[str] = "kd_diagnostics"

    ablations: tuple[str, ...] = ABLATIONS
    temperature: Annotated[float, Field(gt=0)] = 4.0
    alpha: Annotated[float, Field(ge=0, le=1)] = 0.9
    seeds: tuple[int, ...] = (0,)
    sim_temperature: Annotated[float, Field(gt=0)] | None = None
    train: TrainConfig = TrainConfig(epochs=2, lr=0.05, schedule="onecycle")


def run_ablations(
    teacher: nn.Module,
    make_student: Callable[[], nn.Module],
    train_data: Dataset[Any],
    test_data: Dataset[Any],
    config: KDDiagnostics | None = None,
    progress: bool = False,
    similarity: torch.Tensor | None = None,
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
        similarity: the teacher's [C, C] class similarity for ``kd_sim`` and the geometry diagnostic; by
            default :func:`class_similarity` of :func:`logit_layer` ``(teacher, C)`` when the teacher has one.

    Returns:
        ``{"accuracy": {ablation: {"mean", "std", "runs"}}, "geometry": {ablation: {"mean", "std", "runs"}}``
        (:func:`geometry_agreement` of each trained student's logit layer with ``similarity``; only when
        both exist), ``"rescaling"`` (only when ``ce`` runs: :func:`gradient_rescaling` of the first CE
        student's training-set logits under this config's KD loss, its rank correlation with the teacher's
        ``p_y`` and its mean per quartile of ``p_y``), ``"teacher"`` (:func:`teacher_report` at ``T`` and
        at 1), ``"teacher_accuracy"``, ``"teacher_mean_confidence"``, ``"seconds": {ablation: s}``,
        ``"parts": PARTS``}.

    Raises:
        ConfigError: an unknown ablation name, the teacher/student outputs do not match, or ``kd_sim``
            without a similarity (no ``similarity`` given and no linear head on the teacher).

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
    n_classes = t_logits.shape[1]
    if similarity is None:
        try:
            similarity = class_similarity(logit_layer(teacher, n_classes).weight)
        except ConfigError:
            if "kd_sim" in config.ablations:
                raise
    results: dict[str, Any] = {
        "teacher_accuracy": top1_accuracy(teacher, test_data),
        "teacher_train_accuracy": float((t_logits.argmax(1) == labels).float().mean()),
        "teacher_mean_confidence": float(F.softmax(t_logits / T, -1).gather(1, labels[:, None]).mean()),
        "teacher": {f"T={T:g}": teacher_report(t_logits, labels, T), "T=1": teacher_report(t_logits, labels)},
        "accuracy": {},
        "geometry": {},
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
            if kind == "instance_rescaled_ce":
                return rescaled_ce_loss(z, y, r, T, alpha)
            return ablation_loss(z, y, r, w, 0.0 if kind == "instance_weighted_ce" else alpha, T)

        return step_fn

    for kind in config.ablations:
        beta = config.sim_temperature
        if kind == "kd_sim" and beta is None:
            assert similarity is not None  # checked above: kd_sim without a similarity raised
            spread = results["teacher"][f"T={T:g}"]["nontarget_entropy"]
            beta = calibrate_sim_temperature(similarity, labels, spread)
            results["sim_temperature"] = beta
        r, w = ablation_targets(t_logits, labels, kind, T, similarity=similarity, sim_temperature=beta or 0.1)
        data: Dataset[Any]
        if type(train_data) is TensorDataset and len(train_data.tensors) >= 2:
            data = TensorDataset(*train_data.tensors[:2], r, w)  # the trainer's fast tensor-slicing path
        else:
            data = _WithTargets(train_data, r, w)
        runs: list[float] = []
        geometry: list[float] = []
        t0 = time.time()
        for seed in config.seeds:
            torch.manual_seed(seed)
            student = make_student()
            tc = config.train.model_copy(update={"seed": seed})
            Trainer(student, tc, step_fn=step_fn_for(kind), progress=progress).fit(data)
            runs.append(top1_accuracy(student, test_data))
            if similarity is not None:
                try:
                    geometry.append(geometry_agreement(logit_layer(student, n_classes).weight, similarity))
                except ConfigError:
                    pass  # a student without a linear head: no geometry diagnostic
            if kind == "ce" and "rescaling" not in results:
                results["rescaling"] = _rescaling_summary(
                    teacher_logits_for(student, train_data), t_logits, labels, T, alpha
                )
        results["seconds"][kind] = time.time() - t0
        results["accuracy"][kind] = _summary(runs)
        if geometry:
            results["geometry"][kind] = _summary(geometry)
    return results


def _summary(runs: list[float]) -> dict[str, Any]:
    mean = sum(runs) / len(runs)
    std = (sum((v - mean) ** 2 for v in runs) / max(len(runs) - 1, 1)) ** 0.5
    return {"mean": mean, "std": std, "runs": runs}


def _rescaling_summary(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor, T: float, alpha: float
) -> dict[str, Any]:
    w = gradient_rescaling(student_logits, teacher_logits, labels, T, alpha).double()
    p_y = F.softmax(teacher_logits.double() / T, -1).gather(1, labels[:, None]).squeeze(1)
    order = p_y.argsort()
    quartiles = [float(w[part].mean()) for part in order.tensor_split(4)]
    return {
        "spearman_w_vs_teacher_p_y": rank_correlation(w, p_y),
        "mean_w_by_p_y_quartile": quartiles,
        "mean_w": float(w.mean()),
        "note": "w = KD / CE gradient on the ground-truth logit, for the first trained CE student",
    }


def decomposition(
    table: dict[str, Any], keys: Sequence[tuple[str, str, str]] | None = None
) -> dict[str, float]:
    """Accuracy differences that isolate each knowledge part, from a :func:`run_ablations` result.

    Default contrasts: universe = ``label_smoothing - ce``; domain = ``kd - kd_permuted``,
    ``kd_class_mean - label_smoothing`` and ``kd_sim - label_smoothing``; instance =
    ``instance_weighted_ce - ce``, ``instance_rescaled_ce - ce`` and
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
        ("domain (kd_sim - label_smoothing)", "kd_sim", "label_smoothing"),
        ("instance (instance_weighted_ce - ce)", "instance_weighted_ce", "ce"),
        ("instance (instance_rescaled_ce - ce)", "instance_rescaled_ce", "ce"),
        ("instance (kd_uniform_nontarget - label_smoothing)", "kd_uniform_nontarget", "label_smoothing"),
        ("total (kd - ce)", "kd", "ce"),
    )
    acc = table["accuracy"]
    return {name: acc[a]["mean"] - acc[b]["mean"] for name, a, b in keys if a in acc and b in acc}
