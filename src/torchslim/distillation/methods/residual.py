"""Residual knowledge distillation (Gao, Shen, Li & Loy, 2020, arXiv:2002.09168).

A student ``S`` mimics a teacher feature ``F_T`` (captured by a forward hook on ``teacher_layer``, the teacher
is not edited) and an assistant ``A`` learns the residual ``F_T - F_S``; at inference the head reads
``F_S + F_A``. The paper carves ``S`` and ``A`` out of one compute budget (e.g. 70% / 30% of the FLOPs), so the
pair costs what a single student would.

Per step (``F_S = S(x)``, ``F_A = A(x)``, ``z = head(F_S + F_A)``, teacher logits ``t``)::

    loss = alpha * kd_loss(z, t, T) + (1 - alpha) * CE(z, y)
         + beta * ( MSE(F_S, F_T) + MSE(F_A, F_T - stopgrad(F_S)) )

With ``assistant=None`` this is a single student with feature + logit KD (the paper's baseline).

Example:
    >>> model = ResidualStudent(student_body, assistant_body, nn.Linear(128, 10))  # doctest: +SKIP
    >>> residual_distill(model, teacher, train_set, ResidualKD(teacher_layer="fc", teacher_mode="input"))  # doctest: +SKIP
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
from torch.utils.data.dataloader import default_collate

from torchslim.core.config import Config
from torchslim.core.errors import ConfigError
from torchslim.distillation.engine import frozen
from torchslim.distillation.hinton import _logits, _split
from torchslim.distillation.losses import hidden_mse, kd_loss
from torchslim.distillation.taps import Taps
from torchslim.train.trainer import TrainConfig, Trainer, TrainResult


class ResidualKD(Config):
    """Residual KD settings.

    Attributes:
        teacher_layer: dotted path of the teacher module whose feature ``F_T`` is mimicked.
        teacher_mode: capture that module's ``"output"`` or its ``"input"`` (e.g. the pooled feature entering
            the classifier: ``teacher_layer="fc", teacher_mode="input"``).
        temperature: KD temperature on the logits.
        alpha: weight of the logit KD term; ``1 - alpha`` weighs the cross-entropy with the labels.
        beta: weight of the two feature terms (student mimic and assistant residual).
        train: training configuration of student + assistant + head (trained jointly).
    """

    type_name: ClassVar[str] = "residual_kd"

    teacher_layer: str = "fc"
    teacher_mode: Literal["output", "input"] = "input"
    temperature: Annotated[float, Field(gt=0)] = 4.0
    alpha: Annotated[float, Field(ge=0, le=1)] = 0.9
    beta: Annotated[float, Field(ge=0)] = 1.0
    train: TrainConfig = TrainConfig(epochs=2, lr=0.01, schedule="cosine")


class ResidualStudent(nn.Module):
    """Student ``S`` + assistant ``A`` + head: ``forward(x) = head(S(x) + A(x))``.

    Args:
        student: maps inputs to a feature shaped like the teacher's ``F_T``.
        assistant: same output shape as ``student``; ``None``: no assistant (feature-KD baseline).
        head: maps the feature to logits.
    """

    def __init__(self, student: nn.Module, assistant: nn.Module | None, head: nn.Module) -> None:
        super().__init__()
        self.student = student
        self.assistant = assistant
        self.head = head

    def features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(F_S, F_A)`` (``F_A`` is None without an assistant)."""
        f_s = self.student(x)
        f_a = self.assistant(x) if self.assistant is not None else None
        if f_a is not None and f_a.shape != f_s.shape:
            raise ConfigError(
                f"ResidualStudent: the assistant's feature {tuple(f_a.shape)} and the student's "
                f"{tuple(f_s.shape)} differ; both must produce the teacher feature's shape"
            )
        return f_s, f_a

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f_s, f_a = self.features(x)
        return self.head(f_s if f_a is None else f_s + f_a)


def residual_losses(
    f_s: torch.Tensor, f_a: torch.Tensor | None, f_t: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The two feature terms: ``MSE(F_S, F_T)`` and ``MSE(F_A, F_T - stopgrad(F_S))`` (0 without ``A``)."""
    mimic = hidden_mse(f_s, f_t)
    if f_a is None:
        return mimic, torch.zeros((), dtype=f_s.dtype, device=f_s.device)
    return mimic, hidden_mse(f_a, f_t.detach() - f_s.detach())


def residual_distill(
    model: ResidualStudent,
    teacher: nn.Module,
    data: Dataset[Any],
    config: ResidualKD | None = None,
    checkpoint_dir: str | Path | None = None,
    resume: bool = False,
    progress: bool = True,
    callbacks: Iterable[object] = (),
) -> TrainResult:
    """Train ``model`` (student, assistant and head, in place) by residual KD from ``teacher``.

    Args:
        model: a :class:`ResidualStudent`.
        teacher: frozen (eval, no_grad) during training; its mode is restored afterwards.
        data: map-style data set of ``(x, y)`` items (labels needed when ``alpha < 1``).
        config: a :class:`ResidualKD` (default ``ResidualKD()``).
        checkpoint_dir, resume, progress, callbacks: as for :class:`~torchslim.train.Trainer`.

    Raises:
        ConfigError: ``model`` is not a ResidualStudent, the teacher layer does not exist (lists close
            matches), or the student's feature shape differs from the teacher's (names both).
    """
    config = ResidualKD() if config is None else config
    if not isinstance(model, ResidualStudent):
        raise ConfigError(
            f"residual_distill: model must be a ResidualStudent(student, assistant, head), got {type(model).__name__}"
        )
    taps = Taps(
        teacher,
        [config.teacher_layer],
        mode=config.teacher_mode,
        role="teacher",
        other=f"student ({type(model).__name__})",
    )
    layer, alpha, beta, temp = config.teacher_layer, config.alpha, config.beta, config.temperature
    try:
        with frozen(teacher):
            # validate shapes on one batch before training
            n = min(config.train.batch_size, len(data))  # type: ignore[arg-type]
            if n == 0:
                raise ConfigError("residual_distill: the data set is empty")
            x0, _ = _split(default_collate([data[i] for i in range(n)]))
            was = model.training
            model.eval()
            with torch.no_grad():
                teacher(x0)
                f_s0, _ = model.features(x0)
            model.train(was)
            if f_s0.shape != taps[layer].shape:
                raise ConfigError(
                    f"residual_distill: the student feature {tuple(f_s0.shape)} and the teacher's "
                    f"{config.teacher_mode} of {layer!r} {tuple(taps[layer].shape)} differ; make the student "
                    "(and assistant) output the teacher feature's shape, or tap another teacher layer"
                )

            def step_fn(m: nn.Module, batch: Any) -> torch.Tensor:
                x, y = _split(batch)
                with torch.no_grad():
                    t_logits = _logits(teacher(x), "teacher")
                    f_t = taps[layer].detach()
                assert isinstance(m, ResidualStudent)
                f_s, f_a = m.features(x)
                z = m.head(f_s if f_a is None else f_s + f_a)
                loss = alpha * kd_loss(z, t_logits, temp)
                if alpha < 1:
                    if y is None:
                        raise ConfigError(
                            "residual_distill: alpha < 1 needs labels; pass (x, y) items or set alpha=1"
                        )
                    loss = loss + (1 - alpha) * F.cross_entropy(z, y)
                mimic, resid = residual_losses(f_s, f_a, f_t)
                return loss + beta * (mimic + resid)

            trainer = Trainer(
                model,
                config.train,
                step_fn=step_fn,
                callbacks=callbacks,
                checkpoint_dir=checkpoint_dir,
                progress=progress,
            )
            return trainer.fit(data, resume=resume)
    finally:
        taps.remove()
