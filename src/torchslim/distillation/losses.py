"""Distillation losses (pure tensor functions; they double as reference implementations in tests).

A registry maps names to losses: ``kl`` (:func:`kd_loss`), ``mse``, ``cosine`` (hidden states),
``attention_kl``, ``value_relation_kl`` (MiniLM), ``fsp`` (FSP matrices) and ``hint`` (:class:`HintLoss`, a
module with a learned projection). ``get_loss(name)`` looks one up; ``register_loss`` adds one.

Example:
    >>> from torchslim.distillation.losses import get_loss
    >>> float(get_loss("mse")(torch.zeros(2, 3), torch.zeros(2, 3)))
    0.0
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from torchslim.core.errors import ConfigError


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Hinton et al. (2015) soft-target loss: ``T^2 * KL(softmax(t/T) || softmax(s/T))``, batch mean.

    The ``T^2`` factor keeps the gradient magnitude independent of the temperature:
    ``d loss / d s = T * (softmax(s/T) - softmax(t/T)) / batch``. Logits with more than two dimensions
    (e.g. ``[batch, seq, classes]``) are treated as ``prod(leading dims)`` rows of the last dimension.

    Args:
        student_logits: ``[batch, classes]`` (or ``[..., classes]``) student logits.
        teacher_logits: the teacher's logits, same shape (no gradient flows into them).
        temperature: softening temperature ``T > 0``.

    Raises:
        ConfigError: the shapes differ or ``temperature <= 0``.

    Example:
        >>> s, t = torch.randn(8, 10), torch.randn(8, 10)
        >>> float(kd_loss(t, t, 4.0)) == 0.0
        True
    """
    if student_logits.shape != teacher_logits.shape:
        raise ConfigError(
            f"kd_loss: student logits {tuple(student_logits.shape)} and teacher logits "
            f"{tuple(teacher_logits.shape)} differ in shape; the student and teacher must predict the same classes "
            "(add a projection head to the student, or distil from a teacher with the same output size)"
        )
    if not temperature > 0:
        raise ConfigError(f"kd_loss: temperature must be > 0, got {temperature}")
    if student_logits.dim() == 0:
        raise ConfigError("kd_loss: logits must have a class dimension, got a scalar")
    n_cls = student_logits.shape[-1]
    s = student_logits.reshape(-1, n_cls) / temperature
    t = teacher_logits.detach().reshape(-1, n_cls).to(s.dtype) / temperature
    kl = F.kl_div(F.log_softmax(s, dim=-1), F.log_softmax(t, dim=-1), reduction="batchmean", log_target=True)
    return kl * (temperature * temperature)


# ---------------------------------------------------------------------------------------------------------
# Loss registry: name -> pure tensor function (or, for ``hint``, an nn.Module class with a learned projection)

LossFn = Callable[..., Any]
_LOSSES: dict[str, LossFn] = {}


def register_loss(name: str) -> Callable[[LossFn], LossFn]:
    """Decorator registering a distillation loss under ``name`` (raises on a duplicate name).

    Example:
        >>> @register_loss("my_l1")  # doctest: +SKIP
        ... def my_l1(s, t): return (s - t.detach()).abs().mean()
    """

    def deco(fn: LossFn) -> LossFn:
        if name in _LOSSES:
            raise ConfigError(
                f"register_loss: a loss named {name!r} is already registered; pick another name"
            )
        _LOSSES[name] = fn
        return fn

    return deco


def available_losses() -> list[str]:
    """Names of the registered distillation losses, sorted."""
    return sorted(_LOSSES)


def get_loss(name: str) -> LossFn:
    """The loss registered under ``name``.

    Raises:
        ConfigError: unknown name (lists the registered names and the closest matches).

    Example:
        >>> get_loss("mse") is hidden_mse
        True
    """
    if name not in _LOSSES:
        close = difflib.get_close_matches(name, list(_LOSSES), n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise ConfigError(
            f"unknown distillation loss {name!r}{hint} (registered: {', '.join(available_losses())})"
        )
    return _LOSSES[name]


def _same_shape(fn: str, s: torch.Tensor, t: torch.Tensor, fix: str) -> None:
    if s.shape != t.shape:
        raise ConfigError(
            f"{fn}: student tensor {tuple(s.shape)} and teacher tensor {tuple(t.shape)} differ in shape; {fix}"
        )


_PROJECT_FIX = (
    "use the 'hint' loss (HintLoss), which learns a projection from the student's width to the teacher's"
)


register_loss("kl")(kd_loss)


@register_loss("mse")
def hidden_mse(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Mean squared error between student and teacher hidden states (teacher detached), mean over elements.

    Example:
        >>> float(hidden_mse(torch.ones(2, 3), torch.zeros(2, 3)))
        1.0
    """
    _same_shape("hidden_mse", student, teacher, _PROJECT_FIX)
    return F.mse_loss(student, teacher.detach().to(student.dtype))


@register_loss("cosine")
def hidden_cosine(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """``1 - cos(student, teacher)`` along the last dimension, mean over the leading dimensions.

    Example:
        >>> float(hidden_cosine(torch.ones(2, 3), 2 * torch.ones(2, 3))) < 1e-6
        True
    """
    _same_shape("hidden_cosine", student, teacher, _PROJECT_FIX)
    cos = F.cosine_similarity(student, teacher.detach().to(student.dtype), dim=-1, eps=1e-8)
    return (1.0 - cos).mean()


def _row_kl(p_teacher: torch.Tensor, log_q_student: torch.Tensor) -> torch.Tensor:
    """KL(p || q) per row of the last dimension, summed over it, mean over all other dimensions."""
    p = p_teacher.clamp_min(0)
    kl = torch.where(p > 0, p * (torch.log(p.clamp_min(1e-30)) - log_q_student), torch.zeros_like(p))
    return kl.sum(dim=-1).mean()


@register_loss("attention_kl")
def attention_kl(student_attn: torch.Tensor, teacher_attn: torch.Tensor) -> torch.Tensor:
    """KL(teacher attention || student attention) per query row, mean over batch, heads and queries.

    Both inputs are attention *probabilities* ``[batch, heads, queries, keys]`` (rows sum to 1), as captured
    after the softmax. Rows of the student are clamped at 1e-12 before the log.

    Example:
        >>> a = torch.softmax(torch.randn(2, 4, 5, 5), dim=-1)
        >>> float(attention_kl(a, a)) < 1e-6
        True
    """
    _same_shape(
        "attention_kl",
        student_attn,
        teacher_attn,
        "the student needs the teacher's number of heads and sequence length at the mapped layers",
    )
    return _row_kl(teacher_attn.detach().to(student_attn.dtype), torch.log(student_attn.clamp_min(1e-12)))


def value_relation(values: torch.Tensor) -> torch.Tensor:
    """MiniLM value relation ``softmax(V V^T / sqrt(d_head))`` of values ``[batch, heads, seq, d_head]``."""
    if values.dim() != 4:
        raise ConfigError(
            f"value_relation: values must be [batch, heads, seq, d_head], got shape {tuple(values.shape)}"
        )
    d = values.shape[-1]
    return torch.softmax(values @ values.transpose(-1, -2) / math.sqrt(d), dim=-1)


@register_loss("value_relation_kl")
def value_relation_kl(student_values: torch.Tensor, teacher_values: torch.Tensor) -> torch.Tensor:
    """KL between the teacher's and the student's value relations (MiniLM, Wang et al. 2020).

    Inputs are per-head values ``[batch, heads, seq, d_head]``; ``d_head`` may differ between student and
    teacher (the relation is ``seq x seq``), batch, heads and sequence length must agree.

    Example:
        >>> v = torch.randn(2, 4, 6, 8)
        >>> float(value_relation_kl(v, v)) < 1e-6
        True
    """
    if student_values.shape[:3] != teacher_values.shape[:3]:
        raise ConfigError(
            f"value_relation_kl: student values {tuple(student_values.shape)} and teacher values "
            f"{tuple(teacher_values.shape)} must agree in batch, heads and sequence length "
            "(only d_head may differ); map layers with the same number of heads"
        )
    vs = value_relation(student_values)
    vt = value_relation(teacher_values.detach().to(student_values.dtype))
    return _row_kl(vt, torch.log(vs.clamp_min(1e-12)))


def fsp_matrix(first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
    """FSP ("flow of solution procedure", Yim et al. 2017) Gram matrix of two feature maps.

    ``G[b, i, j] = sum_{h,w} first[b, i, h, w] * second[b, j, h, w] / (H * W)``; the maps must share batch
    and spatial size.

    Example:
        >>> fsp_matrix(torch.ones(1, 2, 3, 3), torch.ones(1, 4, 3, 3)).shape
        torch.Size([1, 2, 4])
    """
    if (
        first.dim() != 4
        or second.dim() != 4
        or first.shape[0] != second.shape[0]
        or first.shape[2:] != second.shape[2:]
    ):
        raise ConfigError(
            f"fsp_matrix: feature maps {tuple(first.shape)} and {tuple(second.shape)} must be [B, C, H, W] with "
            "the same batch and spatial size; pick two layers at the same resolution (or pool the larger one)"
        )
    b, c1 = first.shape[:2]
    c2 = second.shape[1]
    hw = first.shape[2] * first.shape[3]
    return first.reshape(b, c1, hw) @ second.reshape(b, c2, hw).transpose(1, 2) / hw


@register_loss("fsp")
def fsp_loss(
    student_pair: tuple[torch.Tensor, torch.Tensor], teacher_pair: tuple[torch.Tensor, torch.Tensor]
) -> torch.Tensor:
    """Mean squared difference of the student's and the teacher's FSP matrices of two layers each.

    Example:
        >>> f1, f2 = torch.randn(2, 3, 4, 4), torch.randn(2, 5, 4, 4)
        >>> float(fsp_loss((f1, f2), (f1, f2)))
        0.0
    """
    gs = fsp_matrix(*student_pair)
    gt = fsp_matrix(*(t.detach() for t in teacher_pair)).to(gs.dtype)
    _same_shape("fsp_loss", gs, gt, "the two student layers need the teacher layers' channel counts")
    return F.mse_loss(gs, gt)


class HintLoss(nn.Module):
    """FitNets hint loss with a learned projection: ``MSE(proj(student), teacher)``.

    The projection is a 1x1 convolution for feature maps ``[B, C, H, W]`` and a linear layer for
    ``[..., C]`` features, from ``student_dim`` to ``teacher_dim`` channels. Its parameters must be trained with
    the student (wrap both in one module, or add ``hint.parameters()`` to the optimizer).

    Args:
        student_dim: student channels (dim 1 of a 4-D map, the last dim otherwise).
        teacher_dim: teacher channels.
        conv: project feature maps with a 1x1 conv (True) or vectors with a linear layer (False).

    Example:
        >>> hint = HintLoss(16, 64, conv=True)
        >>> hint(torch.randn(2, 16, 7, 7), torch.randn(2, 64, 7, 7)).shape
        torch.Size([])
    """

    def __init__(self, student_dim: int, teacher_dim: int, conv: bool = True) -> None:
        super().__init__()
        if student_dim <= 0 or teacher_dim <= 0:
            raise ConfigError(f"HintLoss: dims must be positive, got {student_dim} -> {teacher_dim}")
        self.conv = conv
        self.proj: nn.Module = (
            nn.Conv2d(student_dim, teacher_dim, 1, bias=False)
            if conv
            else nn.Linear(student_dim, teacher_dim)
        )

    def forward(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        """The hint loss of one student/teacher feature pair."""
        if self.conv and student.dim() != 4:
            raise ConfigError(
                f"HintLoss(conv=True) needs [B, C, H, W] student maps, got {tuple(student.shape)}; use conv=False"
            )
        projected = self.proj(student)
        _same_shape(
            "HintLoss", projected, teacher, "pick layers of the same spatial size (or pool the teacher's)"
        )
        return F.mse_loss(projected, teacher.detach().to(projected.dtype))


_LOSSES["hint"] = HintLoss
