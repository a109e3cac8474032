"""The one place where a student is trained against a frozen teacher.

Every distillation method builds a ``step_fn(student, batch) -> loss`` and hands it here: the teacher is
put in eval mode for the whole run (and restored afterwards), and the student is trained by the shared
:class:`~torchslim.train.Trainer` (checkpoints, exact resume, NaN guard, DDP).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from torchslim.train import TrainConfig, Trainer, TrainResult


@contextlib.contextmanager
def frozen(teacher: nn.Module) -> Iterator[nn.Module]:
    """Eval mode for the duration of the block; the teacher's previous mode is restored afterwards."""
    was_training = teacher.training
    teacher.eval()
    try:
        yield teacher
    finally:
        teacher.train(was_training)


def fit_student(
    student: nn.Module,
    teacher: nn.Module,
    data: Dataset[Any],
    train: TrainConfig,
    step_fn: Callable[[nn.Module, Any], torch.Tensor],
    *,
    callbacks: Iterable[object] = (),
    checkpoint_dir: str | Path | None = None,
    resume: bool = False,
    progress: bool = True,
) -> TrainResult:
    """Train ``student`` with ``step_fn`` while ``teacher`` stays frozen in eval mode."""
    with frozen(teacher):
        trainer = Trainer(
            student, train, step_fn=step_fn, callbacks=callbacks, checkpoint_dir=checkpoint_dir, progress=progress
        )
        return trainer.fit(data, resume=resume)
