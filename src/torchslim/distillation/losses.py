"""Distillation losses (pure tensor functions; they double as reference implementations in tests)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

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
