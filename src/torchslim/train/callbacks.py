"""Training callbacks.

A callback is any object with some of these optional methods (none is required)::

    on_train_start(trainer)                  # once, before the first step (also after a resume)
    on_step_end(trainer, step, loss)         # after each optimizer step; ``step`` counts from 1
    on_epoch_end(trainer, epoch, logs)       # after each epoch; ``logs`` is a dict callbacks may add to
    on_train_end(trainer)                    # once, after the last step
    extra_loss(trainer, model) -> Tensor | None   # a regulariser added to the loss of every step
    state_dict() -> dict / load_state_dict(state) # both or neither: saved in checkpoints, restored on resume

:class:`Callback` is a convenience base class with no-op methods; duck-typed objects work as well.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch.utils.data import DataLoader, Dataset

if TYPE_CHECKING:
    from torchslim.train.trainer import Trainer


class Callback:
    """Base class with no-op hooks. Subclass and override what you need."""

    def on_train_start(self, trainer: Trainer) -> None:
        """Called once before the first step (also when a run resumes)."""

    def on_step_end(self, trainer: Trainer, step: int, loss: float) -> None:
        """Called after each optimizer step (``step`` counts from 1, across epochs)."""

    def on_epoch_end(self, trainer: Trainer, epoch: int, logs: dict[str, Any]) -> None:
        """Called after each epoch (``epoch`` counts from 0); add entries to ``logs`` to record them."""

    def on_train_end(self, trainer: Trainer) -> None:
        """Called once after the last step."""

    def extra_loss(self, trainer: Trainer, model: torch.nn.Module) -> torch.Tensor | None:
        """Return a scalar tensor added to the step's loss, or ``None``."""
        return None


class MetricsLogger(Callback):
    """Records the per-step loss and learning rate and the per-epoch logs.

    The trainer always installs one (``trainer.metrics``), after the user's callbacks, so the epoch logs it
    stores include what those callbacks added (e.g. ``val_acc`` from :class:`EvalCallback`).

    Attributes:
        history: one dict per epoch (``epoch``, ``step``, ``loss``, ``lr`` and whatever callbacks added).
        steps: one ``(step, loss, lr)`` tuple per optimizer step of this process (not restored on resume).
    """

    def __init__(self) -> None:
        self.history: list[dict[str, Any]] = []
        self.steps: list[tuple[int, float, float]] = []

    def on_step_end(self, trainer: Trainer, step: int, loss: float) -> None:
        self.steps.append((step, loss, trainer.current_lr))

    def on_epoch_end(self, trainer: Trainer, epoch: int, logs: dict[str, Any]) -> None:
        self.history.append(dict(logs))


@torch.no_grad()
def top1_accuracy(model: torch.nn.Module, dataset: Dataset[Any], batch_size: int = 512) -> float:
    """Top-1 accuracy of ``model`` on ``dataset`` (items ``(x, y)``), in [0, 1]. Restores the train/eval mode.

    Example:
        >>> acc = top1_accuracy(model, test_set)  # doctest: +SKIP
    """
    was_training = model.training
    model.eval()
    try:
        device = _device_of(model)
        correct = 0
        total = 0
        # A private generator: a DataLoader without one draws its base seed from the global torch RNG, which
        # would change the dropout masks of the training that follows an evaluation.
        loader = DataLoader(
            dataset, batch_size=batch_size, shuffle=False, generator=torch.Generator().manual_seed(0)
        )
        for x, y in loader:
            pred = model(x.to(device)).argmax(dim=-1)
            correct += int((pred.cpu() == y).sum())
            total += int(y.numel())
        return correct / max(total, 1)
    finally:
        model.train(was_training)


class EvalCallback(Callback):
    """Measure top-1 accuracy on ``dataset`` every ``every_epochs`` epochs and record it in the epoch logs.

    Args:
        dataset: held-out data, items ``(x, y)``.
        every_epochs: evaluate after epochs ``every_epochs - 1, 2 * every_epochs - 1, ...`` and after the last.
        key: name of the entry in the logs (default ``"val_acc"``).
        batch_size: evaluation batch size.

    Example:
        >>> ev = EvalCallback(test_set)  # doctest: +SKIP
        >>> Trainer(model, TrainConfig(epochs=2), callbacks=[ev]).fit(train_set)  # doctest: +SKIP
        >>> ev.results  # [(epoch, accuracy), ...]  # doctest: +SKIP
    """

    def __init__(
        self, dataset: Dataset[Any], every_epochs: int = 1, key: str = "val_acc", batch_size: int = 512
    ):
        if every_epochs < 1:
            raise ValueError(f"EvalCallback: every_epochs must be >= 1, got {every_epochs}")
        self.dataset = dataset
        self.every_epochs = every_epochs
        self.key = key
        self.batch_size = batch_size
        self.results: list[tuple[int, float]] = []

    def on_epoch_end(self, trainer: Trainer, epoch: int, logs: dict[str, Any]) -> None:
        last = bool(getattr(trainer, "is_last_epoch", False))
        if (epoch + 1) % self.every_epochs != 0 and not last:
            return
        from torchslim.train.trainer import rng_state, set_rng_state

        saved = rng_state()  # evaluation must not perturb the training's random stream
        try:
            acc = top1_accuracy(trainer.model, self.dataset, self.batch_size)
        finally:
            set_rng_state(saved)
        logs[self.key] = acc
        self.results.append((epoch, acc))


def _device_of(model: torch.nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    for b in model.buffers():
        return b.device
    return torch.device("cpu")
