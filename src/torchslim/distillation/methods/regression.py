"""Knowledge distillation for regression (Takamoto, Morishita & Imaoka, 2020, arXiv:2002.12597).

Two ideas, for labels contaminated by outliers:

* **teacher outlier rejection**: a training label that disagrees strongly with the teacher's prediction is
  treated as an outlier and left out of the label loss. Here an example is rejected when
  ``|y - y_teacher| > threshold``; with ``threshold=None`` the threshold is ``k * 1.4826 * median|y - y_teacher|``
  over the batch (``k = rejection_k``; 1.4826 * median absolute deviation estimates a Gaussian sigma robustly).
  This is our reading of the paper's rule (the exact form of the published loss was not available offline).
* **two-head student** (:class:`TwoHeadRegressor`): shared features, one head fits the (outlier-rejected)
  labels, the other fits the teacher's predictions; the shared body learns from both.

Modes of :class:`RegressionKD`: ``"label"`` (MSE to labels only), ``"mse_kd"`` (``(1-alpha) MSE(s, y) +
alpha MSE(s, y_t)``, single output) and ``"outlier_rejection"`` (rejected-label loss + ``alpha`` x teacher
loss; on a :class:`TwoHeadRegressor` each on its own head).

Example:
    >>> student = TwoHeadRegressor(body, nn.Linear(32, 1), nn.Linear(32, 1))  # doctest: +SKIP
    >>> regression_distill(student, teacher, train_set, RegressionKD(mode="outlier_rejection"))  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn
from torch.utils.data import Dataset

from torchslim.core.config import Config
from torchslim.core.errors import ConfigError
from torchslim.distillation.engine import fit_student
from torchslim.distillation.hinton import _split
from torchslim.train.trainer import TrainConfig, TrainResult


class RegressionKD(Config):
    """Regression KD settings.

    Attributes:
        mode: ``"label"``, ``"mse_kd"`` or ``"outlier_rejection"`` (see the module docstring).
        alpha: weight of the teacher term (``mse_kd``: the label term gets ``1 - alpha``).
        threshold: absolute rejection threshold on ``|y - y_teacher|``; ``None``: robust per-batch threshold.
        rejection_k: multiplier of the robust sigma when ``threshold`` is None.
        train: the student's training configuration.
    """

    type_name: ClassVar[str] = "regression_kd"

    mode: Literal["label", "mse_kd", "outlier_rejection"] = "outlier_rejection"
    alpha: Annotated[float, Field(ge=0, le=1)] = 0.5
    threshold: Annotated[float | None, Field(gt=0)] = None
    rejection_k: Annotated[float, Field(gt=0)] = 3.0
    train: TrainConfig = TrainConfig(
        epochs=20, lr=0.01, optimizer="adamw", schedule="cosine", weight_decay=0.0
    )


class TwoHeadRegressor(nn.Module):
    """Shared ``body`` with a label head and a teacher head.

    ``forward(x)`` returns the head named by ``output`` (``"label"``, ``"teacher"`` or ``"mean"`` of both);
    ``both(x)`` returns ``(label_pred, teacher_pred)``.
    """

    def __init__(
        self,
        body: nn.Module,
        label_head: nn.Module,
        teacher_head: nn.Module,
        output: Literal["label", "teacher", "mean"] = "label",
    ) -> None:
        super().__init__()
        if output not in ("label", "teacher", "mean"):
            raise ConfigError(
                f"TwoHeadRegressor: output must be 'label', 'teacher' or 'mean', got {output!r}"
            )
        self.body = body
        self.label_head = label_head
        self.teacher_head = teacher_head
        self.output = output

    def both(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feat = self.body(x)
        return self.label_head(feat), self.teacher_head(feat)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = self.both(x)
        return a if self.output == "label" else b if self.output == "teacher" else (a + b) / 2


def rejection_mask(
    y: torch.Tensor, y_teacher: torch.Tensor, threshold: float | None = None, k: float = 3.0
) -> torch.Tensor:
    """Boolean mask of the labels kept (``|y - y_teacher| <= threshold``), per example.

    With ``threshold=None``: ``k * 1.4826 * median(|y - y_teacher|)`` over the batch. Multi-output targets
    use the Euclidean norm of the residual per example.
    """
    r = (y - y_teacher.detach()).reshape(y.shape[0], -1).norm(dim=1)
    thr = threshold if threshold is not None else float(k * 1.4826 * r.median())
    if thr <= 0:  # all residuals 0 (a teacher that reproduces the labels): keep everything
        return torch.ones_like(r, dtype=torch.bool)
    return r <= thr


def teacher_outlier_rejection_loss(
    pred: torch.Tensor,
    y: torch.Tensor,
    y_teacher: torch.Tensor,
    threshold: float | None = None,
    k: float = 3.0,
) -> torch.Tensor:
    """MSE of ``pred`` to the labels ``y`` over the examples the teacher does not reject (see
    :func:`rejection_mask`); mean over kept examples (0 if all are rejected).

    Example:
        >>> y = torch.tensor([0.0, 0.0, 10.0]); t = torch.zeros(3)
        >>> float(teacher_outlier_rejection_loss(torch.zeros(3), y, t, threshold=1.0))
        0.0
    """
    if pred.shape != y.shape or y.shape != y_teacher.shape:
        raise ConfigError(
            f"teacher_outlier_rejection_loss: prediction {tuple(pred.shape)}, labels {tuple(y.shape)} and teacher "
            f"{tuple(y_teacher.shape)} must have the same shape"
        )
    keep = rejection_mask(y, y_teacher, threshold, k)
    se = (pred - y).reshape(y.shape[0], -1).pow(2).mean(dim=1)
    return (se * keep).sum() / keep.sum().clamp_min(1)


def regression_distill(
    student: nn.Module,
    teacher: nn.Module,
    data: Dataset[Any],
    config: RegressionKD | None = None,
    checkpoint_dir: str | Path | None = None,
    resume: bool = False,
    progress: bool = True,
    callbacks: Iterable[object] = (),
) -> TrainResult:
    """Train a regression ``student`` (in place) with labels and a frozen ``teacher``.

    Args:
        student: a regressor; a :class:`TwoHeadRegressor` trains each term on its own head.
        teacher: frozen (eval, no_grad); mode restored afterwards. Unused in mode ``"label"``.
        data: ``(x, y)`` items with float targets shaped like the model outputs.
        config: a :class:`RegressionKD`.
        checkpoint_dir, resume, progress, callbacks: as for :class:`~torchslim.train.Trainer`.

    Raises:
        ConfigError: the items have no labels, or target and prediction shapes differ (names both).
    """
    config = RegressionKD() if config is None else config
    mode, alpha, thr, k = config.mode, config.alpha, config.threshold, config.rejection_k
    two = isinstance(student, TwoHeadRegressor)

    def step_fn(m: nn.Module, batch: Any) -> torch.Tensor:
        x, y = _split(batch)
        if y is None:
            raise ConfigError("regression_distill: the data has no labels; pass (x, y) items")
        if two:
            assert isinstance(m, TwoHeadRegressor)
            p_label, p_teacher = m.both(x)
        else:
            p_label = p_teacher = m(x)
        y = y.to(p_label.dtype).reshape(p_label.shape) if y.numel() == p_label.numel() else y
        if y.shape != p_label.shape:
            raise ConfigError(
                f"regression_distill: labels {tuple(y.shape)} and student outputs {tuple(p_label.shape)} differ"
            )
        if mode == "label":
            return F.mse_loss(p_label, y)
        with torch.no_grad():
            y_t = teacher(x).reshape(p_label.shape).to(p_label.dtype)
        if mode == "mse_kd":
            return (1 - alpha) * F.mse_loss(p_label, y) + alpha * F.mse_loss(p_teacher, y_t)
        return teacher_outlier_rejection_loss(p_label, y, y_t, thr, k) + alpha * F.mse_loss(p_teacher, y_t)

    return fit_student(
        student,
        teacher,
        data,
        config.train,
        step_fn,
        callbacks=callbacks,
        checkpoint_dir=checkpoint_dir,
        resume=resume,
        progress=progress,
    )
