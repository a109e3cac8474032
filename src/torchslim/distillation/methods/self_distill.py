"""Self-ensemble and self-distillation for fine-tuning (Xu, Qiu, Zhou & Huang, 2020, arXiv:2002.10345).

The model is its own teacher. At time step ``t`` the teacher is built from the student's parameters at the
previous ``K`` time steps ``theta_{t-1} .. theta_{t-K}``:

* **SDA** (self-distillation, averaged): one model whose parameters are the average of the ``K`` snapshots,
  ``theta_bar = 1/K sum_k theta_{t-k}``; teacher logits ``f(x; theta_bar)``;
* **SDV** (self-distillation, voted): the average of the outputs of the ``K`` snapshots,
  ``1/K sum_k f(x; theta_{t-k})``.

The training loss is ``CE(f(x; theta_t), y) + lambda * MSE(f(x; theta_t), teacher(x))`` (the MSE is the mean
over batch and classes of the squared logit difference; no gradient flows into the teacher). A "time step" is
``snapshot_every`` optimizer steps (default 1: every step, as in the paper). Before the first snapshot exists
(the very first step) the loss is the cross-entropy alone.

Buffers (BatchNorm running statistics) of an SDA teacher are averaged like the parameters when they are
floating point; integer buffers (``num_batches_tracked``) come from the newest snapshot. Teachers run under
``torch.no_grad()`` in eval mode (no dropout), except that by default (``teacher_batch_norm="batch"``) their
BatchNorm layers normalise with the current batch's statistics, as the student's training forward does: the
running statistics of early snapshots lag the weights, and an eval-mode teacher built from them gave logits
large enough to make the MSE term diverge in our Fashion-MNIST CNN runs. (BERT has no BatchNorm; there the
option changes nothing.)

Example:
    >>> from torch import nn
    >>> from torch.utils.data import TensorDataset
    >>> model = nn.Linear(4, 3)
    >>> data = TensorDataset(torch.randn(32, 4), torch.randint(0, 3, (32,)))
    >>> cfg = SelfDistill(mode="sda", k=2, lam=1.0, train=TrainConfig(epochs=1, batch_size=8, lr=0.1))
    >>> self_distill(model, data, cfg, progress=False).steps
    4
"""

from __future__ import annotations

import copy
from collections import deque
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
from torchslim.distillation.hinton import _logits, _split
from torchslim.train.trainer import TrainConfig, Trainer, TrainResult

__all__ = ["SelfDistill", "SnapshotTeacher", "self_distill", "self_distill_loss"]


class SelfDistill(Config):
    """Self-distillation settings.

    Attributes:
        mode: ``"sda"`` (parameter-averaged teacher), ``"sdv"`` (output-averaged teacher) or ``"none"``
            (plain fine-tuning with cross-entropy: the baseline, trained through the same code path).
        k: number of previous time steps ``K`` the teacher averages (>= 1).
        lam: weight ``lambda`` of the MSE term (>= 0).
        snapshot_every: optimizer steps per time step (a snapshot is taken every this many steps).
        teacher_batch_norm: ``"batch"``: the teacher's BatchNorm layers use the batch statistics;
            ``"running"``: their (snapshot / averaged) running statistics.
        train: the training configuration (the loss is built here; ``train.label_smoothing`` applies to the
            cross-entropy term).
    """

    type_name: ClassVar[str] = "self_distill"

    mode: Literal["sda", "sdv", "none"] = "sda"
    k: Annotated[int, Field(ge=1)] = 1
    lam: Annotated[float, Field(ge=0)] = 1.0
    snapshot_every: Annotated[int, Field(ge=1)] = 1
    teacher_batch_norm: Literal["batch", "running"] = "batch"
    train: TrainConfig = TrainConfig(
        epochs=3, lr=2e-5, optimizer="adamw", schedule="cosine", weight_decay=0.0
    )


def _unwrap(model: nn.Module) -> nn.Module:
    """The module under a ``DistributedDataParallel`` wrapper (or the model itself)."""
    inner = getattr(model, "module", None)
    return inner if isinstance(inner, nn.Module) else model


class SnapshotTeacher:
    """The teacher of SDA / SDV: a queue of the last ``k`` snapshots of a model's state.

    ``push(model)`` records the model's current parameters and buffers (detached copies); the oldest snapshot
    is dropped once there are more than ``k``. ``logits(x)`` returns the teacher's logits: those of the
    parameter-averaged model (``mode="sda"``) or the mean of the snapshots' logits (``mode="sdv"``).

    Args:
        model: the student; copied once to build the teacher module(s) (the student is not modified).
        k: number of snapshots averaged.
        mode: ``"sda"`` or ``"sdv"``.
        batch_norm: ``"batch"`` (BatchNorm layers of the teacher use batch statistics) or ``"running"``.

    Example:
        >>> m = nn.Linear(2, 2)
        >>> t = SnapshotTeacher(m, k=2, mode="sda")
        >>> t.push(m); len(t)
        1
        >>> torch.allclose(t.logits(torch.ones(1, 2)), m(torch.ones(1, 2)))
        True
    """

    def __init__(
        self,
        model: nn.Module,
        k: int,
        mode: Literal["sda", "sdv"] = "sda",
        batch_norm: Literal["batch", "running"] = "running",
    ) -> None:
        if k < 1:
            raise ConfigError(f"SnapshotTeacher: k must be >= 1, got {k}")
        if mode not in ("sda", "sdv"):
            raise ConfigError(f"SnapshotTeacher: mode must be 'sda' or 'sdv', got {mode!r}")
        self.k = k
        self.mode = mode
        self.snapshots: deque[dict[str, torch.Tensor]] = deque(maxlen=k)
        base = copy.deepcopy(_unwrap(model)).eval()
        if batch_norm == "batch":
            for mod in base.modules():
                if isinstance(mod, nn.modules.batchnorm._BatchNorm):
                    mod.train()  # batch statistics; the copy's running stats are overwritten at each rebuild
        elif batch_norm != "running":
            raise ConfigError(f"SnapshotTeacher: batch_norm must be 'batch' or 'running', got {batch_norm!r}")
        for p in base.parameters():
            p.requires_grad_(False)
        self._base = base
        self._sdv_models: list[nn.Module] = []
        self._dirty = True

    def __len__(self) -> int:
        return len(self.snapshots)

    @property
    def ready(self) -> bool:
        """True once at least one snapshot has been recorded."""
        return len(self.snapshots) > 0

    @torch.no_grad()
    def push(self, model: nn.Module) -> None:
        """Record the current state (parameters and buffers) of ``model`` as the newest snapshot."""
        state = {k: v.detach().clone() for k, v in _unwrap(model).state_dict().items()}
        self.snapshots.append(state)
        self._dirty = True

    def state_dict(self) -> dict[str, Any]:
        """The snapshot queue (oldest first), for checkpoints."""
        return {"k": self.k, "mode": self.mode, "snapshots": [dict(s) for s in self.snapshots]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a queue saved by :meth:`state_dict` (same ``k`` and ``mode``)."""
        if int(state["k"]) != self.k or state["mode"] != self.mode:
            raise ConfigError(
                f"SnapshotTeacher: the checkpoint holds a k={state['k']} {state['mode']!r} queue, this teacher is "
                f"k={self.k} {self.mode!r}; resume with the same SelfDistill config"
            )
        self.snapshots.clear()
        self.snapshots.extend({n: v.clone() for n, v in s.items()} for s in state["snapshots"])
        self._dirty = True

    @torch.no_grad()
    def averaged_state(self) -> dict[str, torch.Tensor]:
        """The SDA teacher's state: floating-point entries averaged over the snapshots, the others taken
        from the newest snapshot.

        Raises:
            ConfigError: no snapshot was recorded yet.
        """
        if not self.snapshots:
            raise ConfigError("SnapshotTeacher: no snapshot recorded yet; call push(model) first")
        newest = self.snapshots[-1]
        out: dict[str, torch.Tensor] = {}
        for name, value in newest.items():
            if value.is_floating_point():
                out[name] = torch.stack([s[name] for s in self.snapshots]).mean(dim=0)
            else:
                out[name] = value.clone()
        return out

    def _rebuild(self) -> None:
        if self.mode == "sda":
            self._base.load_state_dict(self.averaged_state())
        else:
            while len(self._sdv_models) < len(self.snapshots):
                self._sdv_models.append(copy.deepcopy(self._base))
            for m, s in zip(self._sdv_models, self.snapshots, strict=False):
                m.load_state_dict(s)
        self._dirty = False

    @torch.no_grad()
    def logits(self, x: Any) -> torch.Tensor:
        """The teacher's logits for the input ``x`` (no gradient).

        Raises:
            ConfigError: no snapshot was recorded yet.
        """
        if not self.snapshots:
            raise ConfigError("SnapshotTeacher: no snapshot recorded yet; call push(model) first")
        if self._dirty:
            self._rebuild()
        if self.mode == "sda":
            return _logits(self._base(x), "teacher").detach()
        outs = [_logits(m(x), "teacher") for m in self._sdv_models[: len(self.snapshots)]]
        return torch.stack(outs).mean(dim=0).detach()


def self_distill_loss(
    student_logits: torch.Tensor,
    labels: torch.Tensor,
    teacher_logits: torch.Tensor | None,
    lam: float,
    label_smoothing: float = 0.0,
) -> torch.Tensor:
    """``CE(student, labels) + lam * MSE(student, teacher)`` (MSE: mean over batch and classes).

    ``teacher_logits=None`` (no snapshot yet) or ``lam == 0`` gives the cross-entropy alone.

    Raises:
        ConfigError: the student and teacher logits differ in shape (names both).

    Example:
        >>> s, t = torch.zeros(2, 3), torch.ones(2, 3)
        >>> round(float(self_distill_loss(s, torch.tensor([0, 1]), t, lam=0.5)), 4)  # ln 3 + 0.5 * 1
        1.5986
    """
    flat = student_logits.reshape(-1, student_logits.shape[-1])
    loss = F.cross_entropy(flat, labels.reshape(-1), label_smoothing=label_smoothing)
    if teacher_logits is None or lam == 0:
        return loss
    if teacher_logits.shape != student_logits.shape:
        raise ConfigError(
            f"self_distill_loss: student logits {tuple(student_logits.shape)} and teacher logits "
            f"{tuple(teacher_logits.shape)} differ in shape"
        )
    return loss + lam * F.mse_loss(student_logits, teacher_logits.detach().to(student_logits.dtype))


def self_distill(
    model: nn.Module,
    data: Dataset[Any],
    config: SelfDistill | None = None,
    checkpoint_dir: str | Path | None = None,
    resume: bool = False,
    progress: bool = True,
    callbacks: Iterable[object] = (),
) -> TrainResult:
    """Fine-tune ``model`` (in place) on ``(x, y)`` items with SDA / SDV self-distillation.

    At every step the teacher (built from the last ``k`` snapshots, see :class:`SnapshotTeacher`) gives the
    logits the MSE term pulls the student towards; then the current parameters are recorded as a snapshot
    every ``snapshot_every`` steps (so the teacher of step ``t`` never contains ``theta_t`` itself).

    Args:
        model: any classifier returning logits (a tensor, an output with ``.logits``, or a tuple whose first
            element is the logits).
        data: map-style data set of ``(x, y)`` items with integer labels.
        config: a :class:`SelfDistill`.
        checkpoint_dir, resume, progress, callbacks: as for :class:`~torchslim.train.Trainer`. The snapshot
            queue is saved in the checkpoints, so an interrupted run resumes exactly.

    Returns:
        the :class:`~torchslim.train.TrainResult`.

    Raises:
        ConfigError: ``config`` is not a :class:`SelfDistill` or the batches have no labels.

    Example:
        >>> result = self_distill(model, train_set, SelfDistill(mode="sdv", k=3))  # doctest: +SKIP
    """
    config = SelfDistill() if config is None else config
    if not isinstance(config, SelfDistill):
        raise ConfigError(f"self_distill: config must be a SelfDistill, got {type(config).__name__}")
    mode, lam, every = config.mode, config.lam, config.snapshot_every
    smoothing = config.train.label_smoothing
    teacher = None if mode == "none" else SnapshotTeacher(model, config.k, mode, config.teacher_batch_norm)
    counter = {"calls": 0}

    class _QueueState:
        """Saves the snapshot queue and the step counter in the Trainer's checkpoints (exact resume)."""

        def state_dict(self) -> dict[str, Any]:
            return {"calls": counter["calls"], "teacher": teacher.state_dict() if teacher is not None else {}}

        def load_state_dict(self, state: dict[str, Any]) -> None:
            counter["calls"] = int(state["calls"])
            if teacher is not None:
                teacher.load_state_dict(state["teacher"])

    def step_fn(m: nn.Module, batch: Any) -> torch.Tensor:
        x, y = _split(batch)
        if y is None:
            raise ConfigError("self_distill: the batches have no labels; pass (x, y) items")
        t_logits = teacher.logits(x) if teacher is not None and teacher.ready and lam > 0 else None
        if teacher is not None and counter["calls"] % every == 0:
            teacher.push(m)  # theta_t: a teacher member from the next step on
        counter["calls"] += 1
        s_logits = _logits(m(x), "student")
        return self_distill_loss(s_logits, y, t_logits, lam, smoothing)

    trainer = Trainer(
        model,
        config.train,
        step_fn=step_fn,
        callbacks=[*callbacks, _QueueState()],
        checkpoint_dir=checkpoint_dir,
        progress=progress,
    )
    return trainer.fit(data, resume=resume)
