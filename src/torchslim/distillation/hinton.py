"""Logit knowledge distillation (Hinton, Vinyals & Dean, 2015, "Distilling the Knowledge in a Neural Network").

The student is trained on ``alpha * T^2 * KL(softmax(teacher/T) || softmax(student/T)) + (1 - alpha) * CE``
with the hard labels, the teacher frozen in eval mode. Training runs through :class:`torchslim.train.Trainer`,
so distillation checkpoints and resumes exactly like any other training.

Example:
    >>> from torchslim.distillation import HintonKD, distill
    >>> cfg = HintonKD(temperature=4.0, alpha=0.9)
    >>> result = distill(student, teacher, train_set, cfg, checkpoint_dir="kd")  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Annotated, Any, ClassVar

import torch
import torch.nn.functional as F
from pydantic import Field
from torch.utils.data import Dataset
from torch.utils.data.dataloader import default_collate

from torchslim.core.config import Config
from torchslim.core.errors import ConfigError
from torchslim.distillation.engine import fit_student
from torchslim.distillation.losses import kd_loss
from torchslim.train.trainer import TrainConfig, TrainResult, to_device


class HintonKD(Config):
    """Hinton logit distillation.

    Attributes:
        temperature: softening temperature ``T > 0`` of both softmaxes.
        alpha: weight of the KD term in [0, 1]; ``1 - alpha`` weighs the hard-label cross-entropy
            (``alpha = 1``: the data need no labels).
        train: the student's training configuration.
    """

    type_name: ClassVar[str] = "hinton_kd"

    temperature: Annotated[float, Field(gt=0)] = 4.0
    alpha: Annotated[float, Field(ge=0, le=1)] = 0.9
    train: TrainConfig = TrainConfig(epochs=2, lr=0.01, schedule="cosine")


def _logits(out: Any, who: str) -> torch.Tensor:
    """The logits of a model output: a tensor, ``.logits`` of an output object, or the first of a tuple."""
    if isinstance(out, torch.Tensor):
        return out
    logits = getattr(out, "logits", None)
    if isinstance(logits, torch.Tensor):
        return logits
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
        return out[0]
    raise ConfigError(
        f"distill: the {who} returned {type(out).__name__}, not logits; wrap it so that it returns a logits tensor"
    )


def _split(batch: Any) -> tuple[Any, torch.Tensor | None]:
    if isinstance(batch, (tuple, list)):
        if len(batch) >= 2:
            return batch[0], batch[1]
        return batch[0], None
    return batch, None


def _check_outputs(
    student: torch.nn.Module, teacher: torch.nn.Module, data: Dataset[Any], batch_size: int
) -> None:
    """Run one batch through both models and fail clearly if their outputs cannot be compared."""
    n = min(batch_size, len(data))  # type: ignore[arg-type]
    if n == 0:
        raise ConfigError("distill: the data set is empty; pass at least one example")
    batch = default_collate([data[i] for i in range(n)])
    device = next(iter(student.parameters()), torch.empty(0)).device
    x, _ = _split(to_device(batch, device))
    was_training = student.training
    student.eval()  # no BatchNorm statistics update, no dropout draw from the RNG
    try:
        with torch.no_grad():
            try:
                t_out = _logits(teacher(x), "teacher")
            except ConfigError:
                raise
            except Exception as err:
                raise ConfigError(
                    f"distill: the teacher failed on a training batch: {type(err).__name__}: {err}"
                ) from err
            try:
                s_out = _logits(student(x), "student")
            except ConfigError:
                raise
            except Exception as err:
                raise ConfigError(
                    f"distill: the student failed on a training batch: {type(err).__name__}: {err}"
                ) from err
    finally:
        student.train(was_training)
    if s_out.shape != t_out.shape:
        raise ConfigError(
            f"distill: student output shape {tuple(s_out.shape)} and teacher output shape {tuple(t_out.shape)} "
            "cannot be compared; the student must output the same number of classes as the teacher "
            "(give it the teacher's head size, or add a projection layer)"
        )


def distill(
    student: torch.nn.Module,
    teacher: torch.nn.Module,
    data: Dataset[Any],
    config: HintonKD | None = None,
    checkpoint_dir: str | Path | None = None,
    resume: bool = False,
    progress: bool = True,
    callbacks: Iterable[object] = (),
) -> TrainResult:
    """Train ``student`` (in place) to match ``teacher``'s softened logits on ``data``.

    Args:
        student: the model to train.
        teacher: the reference model; frozen in eval mode and run under ``torch.no_grad()``. Its train/eval
            mode is restored at the end.
        data: map-style data set of ``(x, y)`` items (``(x,)`` or ``x`` alone when ``alpha == 1``).
        config: a :class:`HintonKD` (default: ``HintonKD()``).
        checkpoint_dir: where the student's training checkpoint ``last.pt`` goes.
        resume: continue from ``checkpoint_dir/last.pt`` if present.
        progress: show a progress bar.
        callbacks: extra :class:`~torchslim.train.Trainer` callbacks (e.g. ``EvalCallback``).

    Returns:
        the :class:`~torchslim.train.TrainResult` of the student's training.

    Raises:
        ConfigError: the outputs of student and teacher cannot be compared (names both shapes), or the data
            has no labels while ``alpha < 1``.

    Example:
        >>> result = distill(student, teacher, train_set, HintonKD(temperature=4, alpha=0.9))  # doctest: +SKIP
    """
    config = HintonKD() if config is None else config
    if not isinstance(config, HintonKD):
        raise ConfigError(f"distill: config must be a HintonKD, got {type(config).__name__}")
    temperature, alpha = config.temperature, config.alpha
    smoothing = config.train.label_smoothing
    _check_outputs(student, teacher, data, config.train.batch_size)

    def step_fn(model: torch.nn.Module, batch: Any) -> torch.Tensor:
        x, y = _split(batch)
        with torch.no_grad():
            t_logits = _logits(teacher(x), "teacher")
        s_logits = _logits(model(x), "student")
        loss = alpha * kd_loss(s_logits, t_logits, temperature)
        if alpha < 1:
            if y is None:
                raise ConfigError(
                    f"distill: alpha = {alpha} < 1 needs labels, but the batches have none; "
                    "pass (x, y) items or set alpha = 1"
                )
            loss = loss + (1 - alpha) * F.cross_entropy(
                s_logits.reshape(-1, s_logits.shape[-1]), y.reshape(-1), label_smoothing=smoothing
            )
        return loss

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
