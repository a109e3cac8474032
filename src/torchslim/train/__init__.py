"""Training loop with callbacks, LR schedules and exact checkpoint/resume.

Example:
    >>> from torchslim.train import Trainer, TrainConfig, EvalCallback
    >>> result = Trainer(model, TrainConfig(epochs=2)).fit(train_set)  # doctest: +SKIP
"""

from __future__ import annotations

from torchslim.train.callbacks import Callback, EvalCallback, MetricsLogger, top1_accuracy
from torchslim.train.trainer import (
    LRSchedule,
    TrainConfig,
    Trainer,
    TrainResult,
    default_step_fn,
    rng_state,
    seed_everything,
    set_rng_state,
)

__all__ = [
    "Callback",
    "EvalCallback",
    "LRSchedule",
    "MetricsLogger",
    "TrainConfig",
    "TrainResult",
    "Trainer",
    "default_step_fn",
    "rng_state",
    "seed_everything",
    "set_rng_state",
    "top1_accuracy",
]
