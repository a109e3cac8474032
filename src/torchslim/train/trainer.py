"""A small, deterministic, resumable training loop.

:class:`Trainer` runs mini-batch training of any ``nn.Module`` with a per-step learning-rate schedule,
callbacks, a NaN/Inf guard and atomic checkpoints that resume *exactly*: an interrupted run resumed with
``fit(..., resume=True)`` ends with the same weights, bit for bit, as a run that was never interrupted
(same seed, same machine, same thread count).

Data-parallel training: when a ``torch.distributed`` process group with more than one rank is initialised
(``torchrun`` + :func:`torchslim.train.distributed.init_distributed`, or
:func:`torchslim.train.distributed.launch`), ``fit`` wraps the model in ``DistributedDataParallel``; each rank
takes a contiguous slice of every global batch of ``batch_size`` examples of the same seeded permutation,
the per-rank losses are weighted by their share of the global batch so that the averaged gradient is that of
the global-batch loss, only rank 0 writes checkpoints and shows progress, and the logged loss is the global
one. See ``docs/distributed-training.md``.

How exact resumption works:

* the data order of epoch ``e`` is a permutation drawn from a dedicated ``torch.Generator`` seeded with
  ``seed + e``, so a resumed run recomputes it and skips the batches the interrupted run already consumed;
* the checkpoint (``checkpoint_dir/last.pt``, written atomically) holds the model, optimizer and schedule
  state, the step and epoch counters, the position in the epoch, and the torch / numpy / python RNG states
  (dropout and augmentations draw from those), all as plain tensors, dicts, lists and numbers so that
  ``torch.load(..., weights_only=True)`` reads it.

Example:
    >>> from torchslim.train import Trainer, TrainConfig
    >>> cfg = TrainConfig(epochs=3, batch_size=64, lr=0.05)
    >>> result = Trainer(model, cfg, checkpoint_dir="runs/a").fit(train_set, resume=True)  # doctest: +SKIP
    >>> result.history[-1]["loss"]  # doctest: +SKIP
"""

from __future__ import annotations

import logging
import math
import random
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field
from torch.utils.data import DataLoader, Dataset, TensorDataset

from torchslim.core.config import Config
from torchslim.core.errors import CheckpointError, ConfigError, NumericalError
from torchslim.core.io import atomic_torch_save
from torchslim.train import distributed as _dist
from torchslim.train.callbacks import MetricsLogger

log = logging.getLogger("torchslim.train")

#: Format tag stored in every checkpoint; a file without it is not a torchslim training checkpoint.
CHECKPOINT_FORMAT = "torchslim.train/1"

#: Config fields that may change between an interrupted run and its resumption.
_RESUME_MUTABLE = {"num_workers", "num_threads", "checkpoint_every_steps"}

StepFn = Callable[[torch.nn.Module, Any], torch.Tensor]


class TrainConfig(Config):
    """Training hyper-parameters.

    Attributes:
        epochs: passes over the training data (>= 1).
        batch_size: examples per step (>= 1). The last, smaller batch of an epoch is kept.
        lr: peak learning rate (> 0).
        optimizer: ``"sgd"`` (with momentum) or ``"adamw"``.
        momentum: SGD momentum in [0, 1) (ignored by AdamW).
        weight_decay: L2 (SGD) / decoupled (AdamW) weight decay, >= 0.
        schedule: ``"constant"``, ``"cosine"`` (from ``lr`` to 0) or ``"onecycle"`` (linear warm-up from
            ``lr/25`` over the first 30% of steps, then cosine down to ``lr/1e4``).
        seed: seeds the torch/numpy/python RNGs at the start of a fresh run and the data order.
        max_steps: stop after this many optimizer steps (the schedule spans them); ``None``: all epochs.
        grad_clip: clip the global gradient norm to this value; ``None``: no clipping.
        label_smoothing: label smoothing of the default cross-entropy loss, in [0, 1).
        checkpoint_every_steps: write ``last.pt`` every this many steps; ``None``: at each epoch end.
        num_workers: ``DataLoader`` worker processes (0: load in the main process).
        num_threads: call ``torch.set_num_threads`` with this value; ``None``: leave it alone.
    """

    type_name: ClassVar[str] = "train"

    epochs: Annotated[int, Field(ge=1)] = 1
    batch_size: Annotated[int, Field(ge=1)] = 128
    lr: Annotated[float, Field(gt=0)] = 0.05
    optimizer: Literal["sgd", "adamw"] = "sgd"
    momentum: Annotated[float, Field(ge=0, lt=1)] = 0.9
    weight_decay: Annotated[float, Field(ge=0)] = 5e-4
    schedule: Literal["constant", "cosine", "onecycle"] = "onecycle"
    seed: Annotated[int, Field(ge=0)] = 0
    max_steps: Annotated[int | None, Field(ge=1)] = None
    grad_clip: Annotated[float | None, Field(gt=0)] = None
    label_smoothing: Annotated[float, Field(ge=0, lt=1)] = 0.0
    checkpoint_every_steps: Annotated[int | None, Field(ge=1)] = None
    num_workers: Annotated[int, Field(ge=0)] = 0
    num_threads: Annotated[int | None, Field(ge=1)] = None


@dataclass
class TrainResult:
    """What :meth:`Trainer.fit` returns.

    Attributes:
        steps: optimizer steps done in total (including those before a resume).
        epochs: epochs run (a last epoch cut short by ``max_steps`` counts).
        history: one dict per epoch: ``epoch``, ``step``, ``loss`` (mean over the epoch), ``lr`` and what
            callbacks added (e.g. ``val_acc``).
    """

    steps: int
    epochs: int
    history: list[dict[str, Any]] = field(default_factory=list)


class LRSchedule:
    """Per-step learning-rate schedule: ``lr_at(step)`` for steps ``0 .. total_steps - 1``.

    Example:
        >>> s = LRSchedule("cosine", base_lr=0.1, total_steps=100)
        >>> round(s.lr_at(0), 4), round(s.lr_at(50), 4)
        (0.1, 0.05)
    """

    pct_start: ClassVar[float] = 0.3
    div_factor: ClassVar[float] = 25.0
    final_div_factor: ClassVar[float] = 1e4

    def __init__(self, kind: str, base_lr: float, total_steps: int) -> None:
        if kind not in ("constant", "cosine", "onecycle"):
            raise ConfigError(f"schedule: unknown kind {kind!r} (allowed: constant, cosine, onecycle)")
        self.kind = kind
        self.base_lr = float(base_lr)
        self.total_steps = max(int(total_steps), 1)
        self.last_step = -1

    def lr_at(self, step: int) -> float:
        """Learning rate for the optimizer step with 0-based index ``step``."""
        n = self.total_steps
        if self.kind == "constant":
            return self.base_lr
        if self.kind == "cosine":
            t = min(step, n) / n
            return self.base_lr * 0.5 * (1.0 + math.cos(math.pi * t))
        # onecycle
        warm = max(int(round(self.pct_start * n)), 1)
        lo = self.base_lr / self.div_factor
        end = self.base_lr / self.final_div_factor
        if step < warm:
            return lo + (self.base_lr - lo) * step / warm
        rest = max(n - warm, 1)
        t = min(step - warm, rest) / rest
        return end + (self.base_lr - end) * 0.5 * (1.0 + math.cos(math.pi * t))

    def apply(self, optimizer: torch.optim.Optimizer, step: int) -> float:
        """Set the learning rate of every parameter group for ``step``; returns it."""
        lr = self.lr_at(step)
        for group in optimizer.param_groups:
            group["lr"] = lr
        self.last_step = step
        return lr

    def state_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "base_lr": self.base_lr,
            "total_steps": self.total_steps,
            "last_step": self.last_step,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.kind = str(state["kind"])
        self.base_lr = float(state["base_lr"])
        self.total_steps = int(state["total_steps"])
        self.last_step = int(state["last_step"])


def default_step_fn(label_smoothing: float = 0.0) -> StepFn:
    """Cross-entropy of ``model(batch[0])`` against the integer labels ``batch[1]``."""

    def step_fn(model: torch.nn.Module, batch: Any) -> torch.Tensor:
        x, y = batch[0], batch[1]
        return F.cross_entropy(model(x), y, label_smoothing=label_smoothing)

    return step_fn


# ---------------------------------------------------------------------------------------------------------
# RNG state <-> plain containers (so that torch.load(weights_only=True) reads the checkpoint)


def rng_state() -> dict[str, Any]:
    """The torch / numpy / python global RNG states as plain tensors, dicts and numbers."""
    np_state = np.random.get_state()
    assert isinstance(np_state, tuple)
    py_version, py_internal, py_gauss = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "kind": str(np_state[0]),
            "keys": torch.from_numpy(np.asarray(np_state[1], dtype=np.int64).copy()),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "python": {
            "version": int(py_version),
            "internal": torch.tensor(list(py_internal), dtype=torch.int64),
            "gauss_next": None if py_gauss is None else float(py_gauss),
        },
    }
    if torch.cuda.is_available():
        state["cuda"] = list(torch.cuda.get_rng_state_all())
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore the states saved by :func:`rng_state`."""
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(
        (
            n["kind"],
            n["keys"].numpy().astype(np.uint32),
            int(n["pos"]),
            int(n["has_gauss"]),
            float(n["cached_gaussian"]),
        )
    )
    p = state["python"]
    random.setstate((int(p["version"]), tuple(int(v) for v in p["internal"].tolist()), p["gauss_next"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def seed_everything(seed: int) -> None:
    """Seed the torch, numpy and python global RNGs."""
    torch.manual_seed(seed)
    np.random.seed(seed % (2**32))
    random.seed(seed)


# ---------------------------------------------------------------------------------------------------------


def _has(obj: object, name: str) -> bool:
    return callable(getattr(obj, name, None))


def to_device(batch: Any, device: torch.device) -> Any:
    """Move the tensors of a batch (tensor, tuple/list or dict of them) to ``device``."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device)
    if isinstance(batch, (list, tuple)):
        return type(batch)(to_device(b, device) for b in batch)
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    return batch


class Trainer:
    """Mini-batch trainer with callbacks, an LR schedule, a NaN/Inf guard and exact checkpoint/resume.

    Args:
        model: the module to train (trained in place).
        config: a :class:`TrainConfig`.
        step_fn: ``step_fn(model, batch) -> scalar loss``; default: cross-entropy (with the config's label
            smoothing) of ``model(batch[0])`` against ``batch[1]``.
        callbacks: objects with optional hooks (see :mod:`torchslim.train.callbacks`). A callback that also has
            ``state_dict()`` / ``load_state_dict(state)`` has its state saved in checkpoints and restored on
            resume (plain tensors, numbers, lists and dicts only: checkpoints load with ``weights_only=True``).
        checkpoint_dir: where ``last.pt`` is written; ``None``: no checkpoints (and no resume).
        progress: show a progress bar over steps with the loss and learning rate.

    Attributes available to callbacks: ``model``, ``config``, ``optimizer``, ``schedule``, ``step``
    (optimizer steps done), ``epoch`` (current epoch, from 0), ``current_lr``, ``metrics``
    (:class:`MetricsLogger`) and ``history``.

    Example:
        >>> trainer = Trainer(model, TrainConfig(epochs=2, lr=0.05), checkpoint_dir="ckpt")  # doctest: +SKIP
        >>> result = trainer.fit(train_set, resume=True)  # doctest: +SKIP
    """

    def __init__(
        self,
        model: torch.nn.Module,
        config: TrainConfig | None = None,
        step_fn: StepFn | None = None,
        callbacks: Iterable[object] = (),
        checkpoint_dir: str | Path | None = None,
        progress: bool = True,
    ) -> None:
        if not isinstance(model, torch.nn.Module):
            raise TypeError(f"Trainer: model must be a torch.nn.Module, got {type(model).__name__}")
        config = TrainConfig() if config is None else config
        if not isinstance(config, TrainConfig):
            raise ConfigError(
                f"Trainer: config must be a TrainConfig, got {type(config).__name__}; build one with TrainConfig(...)"
            )
        self.model = model
        self.config = config
        self.step_fn: StepFn = step_fn if step_fn is not None else default_step_fn(config.label_smoothing)
        self.metrics = MetricsLogger()
        self.callbacks: list[object] = [*callbacks, self.metrics]
        self.checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir is not None else None
        self.progress = progress
        self.optimizer = self._make_optimizer()
        self.schedule = LRSchedule(config.schedule, config.lr, 1)
        self.step = 0
        self.epoch = 0
        self.batch_in_epoch = 0
        self.current_lr = config.lr
        self._epoch_loss_sum = 0.0
        self._epoch_loss_count = 0
        self._dataset_len = -1
        #: True while ``on_epoch_end`` runs for the final epoch of this fit.
        self.is_last_epoch = False
        #: This process's rank and the number of ranks (0 and 1 outside ``torch.distributed``).
        self.rank = 0
        self.world_size = 1
        # The module step_fn is called with: self.model, or its DistributedDataParallel wrapper during fit.
        self._train_model: torch.nn.Module = model

    @property
    def is_main(self) -> bool:
        """True on rank 0 (and in a single process): the process that writes checkpoints and shows progress."""
        return self.rank == 0

    # ---- public ------------------------------------------------------------------------------------
    @property
    def history(self) -> list[dict[str, Any]]:
        """One dict per finished epoch (restored on resume)."""
        return self.metrics.history

    @property
    def checkpoint_path(self) -> Path | None:
        """``checkpoint_dir/last.pt`` or ``None``."""
        return None if self.checkpoint_dir is None else self.checkpoint_dir / "last.pt"

    def fit(self, train_data: Dataset[Any], resume: bool = False) -> TrainResult:
        """Train on ``train_data`` (a map-style dataset with ``__len__``).

        Args:
            train_data: items are batches' elements, e.g. ``(x, y)`` tuples; collated by the default
                ``DataLoader`` collate function.
            resume: continue from ``checkpoint_dir/last.pt`` if it exists (a message says so); otherwise
                start fresh.

        Returns:
            a :class:`TrainResult`.

        Raises:
            NumericalError: the loss or a gradient became NaN/Inf (names step, epoch and loss).
            CheckpointError: ``resume=True`` and ``last.pt`` is corrupted or from a different configuration.
        """
        cfg = self.config
        if cfg.num_threads is not None:
            torch.set_num_threads(cfg.num_threads)
        try:
            n = len(train_data)  # type: ignore[arg-type]
        except TypeError:
            raise ConfigError("Trainer.fit: train_data must be a map-style Dataset with __len__") from None
        if n == 0:
            raise ConfigError("Trainer.fit: train_data is empty; pass a data set with at least one example")
        self._dataset_len = n
        self.rank, self.world_size = (_dist.rank(), _dist.world_size()) if _dist.is_distributed() else (0, 1)
        if self.world_size > 1:
            if n < self.world_size:
                raise ConfigError(
                    f"Trainer.fit: the data set has {n} examples but there are {self.world_size} processes; "
                    "every rank needs at least one example: use more data or fewer processes"
                )
            if cfg.batch_size < self.world_size:
                raise ConfigError(
                    f"Trainer.fit: batch_size {cfg.batch_size} is smaller than the world size {self.world_size}; "
                    "batch_size is the global batch (split across ranks): make it >= the number of processes"
                )
        steps_per_epoch = math.ceil(n / cfg.batch_size)
        total = cfg.epochs * steps_per_epoch
        if cfg.max_steps is not None:
            total = min(total, cfg.max_steps)
        self.schedule = LRSchedule(cfg.schedule, cfg.lr, total)

        resumed = False
        if resume:
            if self.checkpoint_dir is None:
                raise ConfigError(
                    "Trainer.fit(resume=True) needs a checkpoint_dir; pass Trainer(..., checkpoint_dir=...)"
                )
            path = self.checkpoint_path
            assert path is not None
            if path.exists():
                self.load_checkpoint(path)
                resumed = True
                msg = f"torchslim: resuming from {path} at step {self.step}/{total} (epoch {self.epoch})"
            else:
                msg = f"torchslim: no checkpoint at {path}; starting fresh"
            log.info(msg)
            if self.progress and self.is_main:
                print(msg, file=sys.stderr)
        if not resumed:
            seed_everything(cfg.seed)
            self.optimizer = self._make_optimizer()  # a fresh run starts with fresh optimizer state
            self.step = 0
            self.epoch = 0
            self.batch_in_epoch = 0
            self._epoch_loss_sum = 0.0
            self._epoch_loss_count = 0
            self.metrics.history.clear()

        device = _device_of(self.model)
        self.model.train()
        self._train_model = self.model
        if self.world_size > 1:
            from torch.nn.parallel import DistributedDataParallel

            # DDP broadcasts rank 0's parameters and buffers, so every rank starts from the same weights.
            self._train_model = DistributedDataParallel(self.model)
        for cb in self.callbacks:
            if _has(cb, "on_train_start"):
                cb.on_train_start(self)  # type: ignore[attr-defined]

        bar = self._progress_bar(total) if self.is_main else None
        try:
            while self.step < total and self.epoch < cfg.epochs:
                if self.world_size > 1:
                    loader: Iterable[Any] = self._shard_loader(train_data, self.epoch, self.batch_in_epoch)
                else:
                    loader = ((b, None) for b in self._loader(train_data, self.epoch, self.batch_in_epoch))
                for batch, scale in loader:
                    loss_value = self._train_step(to_device(batch, device), scale)
                    self.step += 1
                    self.batch_in_epoch += 1
                    self._epoch_loss_sum += loss_value
                    self._epoch_loss_count += 1
                    if bar is not None:
                        bar.update(1)
                        bar.set_postfix(loss=f"{loss_value:.4f}", lr=f"{self.current_lr:.3g}", refresh=False)
                    every = cfg.checkpoint_every_steps
                    if every is not None and self.step % every == 0 and self.step < total:
                        self.save_checkpoint()
                    for cb in self.callbacks:
                        if _has(cb, "on_step_end"):
                            cb.on_step_end(self, self.step, loss_value)  # type: ignore[attr-defined]
                    if self.step >= total:
                        break
                self._end_epoch(last=self.step >= total or self.epoch + 1 >= cfg.epochs)
        finally:
            if bar is not None:
                bar.close()
            self._train_model = self.model
        if self.world_size > 1:
            import torch.distributed as dist

            for buf in self.model.buffers():  # BatchNorm running stats: every rank ends with rank 0's
                dist.broadcast(buf, 0)
        for cb in self.callbacks:
            if _has(cb, "on_train_end"):
                cb.on_train_end(self)  # type: ignore[attr-defined]
        return TrainResult(steps=self.step, epochs=len(self.history), history=[dict(h) for h in self.history])

    # ---- checkpoints -------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume exactly, as plain tensors/dicts/lists/numbers."""
        return {
            "format": CHECKPOINT_FORMAT,
            "config": self.config.to_dict(),
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "schedule": self.schedule.state_dict(),
            "step": self.step,
            "epoch": self.epoch,
            "data": {
                "seed": self.config.seed,
                "epoch": self.epoch,
                "batch_in_epoch": self.batch_in_epoch,
                "batch_size": self.config.batch_size,
                "dataset_len": self._dataset_len,
            },
            "epoch_loss": {"sum": self._epoch_loss_sum, "count": self._epoch_loss_count},
            "history": [dict(h) for h in self.history],
            "rng": rng_state(),
            "callbacks": {key: cb.state_dict() for key, cb in self._stateful_callbacks()},
        }

    def _stateful_callbacks(self) -> list[tuple[str, Any]]:
        """Callbacks with ``state_dict()`` / ``load_state_dict()``: their state is saved in checkpoints (keyed by
        class name and occurrence, so stateless callbacks may differ between runs) and restored on resume."""
        out: list[tuple[str, Any]] = []
        seen: dict[str, int] = {}
        for cb in self.callbacks:
            if cb is self.metrics or not (
                callable(getattr(cb, "state_dict", None)) and callable(getattr(cb, "load_state_dict", None))
            ):
                continue
            name = type(cb).__name__
            seen[name] = seen.get(name, 0) + 1
            out.append((f"{name}#{seen[name]}", cb))
        return out

    def save_checkpoint(self) -> Path | None:
        """Write ``checkpoint_dir/last.pt`` atomically (no-op without a ``checkpoint_dir``)."""
        path = self.checkpoint_path
        if path is None:
            return None
        if self.world_size == 1:
            atomic_torch_save(path, self.state_dict())
            return path
        import torch.distributed as dist

        rngs: list[Any] = [None] * self.world_size
        dist.all_gather_object(rngs, rng_state())  # every rank's RNG streams (dropout differs per rank)
        if self.is_main:
            state = self.state_dict()
            state["rng_per_rank"] = rngs
            state["data"]["world_size"] = self.world_size
            atomic_torch_save(path, state)
        dist.barrier()  # no rank goes on (or reads last.pt) before rank 0 has written it
        return path

    def load_checkpoint(self, path: str | Path) -> None:
        """Restore the state written by :meth:`save_checkpoint` (with ``torch.load(weights_only=True)``)."""
        path = Path(path)
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # noqa: BLE001 - re-raised with a clear message
            raise CheckpointError(
                f"cannot read training checkpoint {path}: {err}. The file is truncated, corrupted or not a "
                "torchslim checkpoint; delete it (or use another checkpoint_dir) to start fresh"
            ) from err
        if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
            raise CheckpointError(
                f"{path} is not a torchslim training checkpoint (expected format {CHECKPOINT_FORMAT!r}); "
                "delete it or use another checkpoint_dir"
            )
        saved = dict(state["config"])
        now = self.config.to_dict()
        diff = sorted(
            k for k in set(saved) | set(now) if k not in _RESUME_MUTABLE and saved.get(k) != now.get(k)
        )
        if diff:
            details = ", ".join(f"{k}: checkpoint {saved.get(k)!r} vs now {now.get(k)!r}" for k in diff)
            raise CheckpointError(
                f"{path} was written with a different training config ({details}); resume with the same config "
                "or use another checkpoint_dir to start fresh"
            )
        data = state["data"]
        if int(data["dataset_len"]) != self._dataset_len:
            raise CheckpointError(
                f"{path} was written for a data set of {data['dataset_len']} examples, but this one has "
                f"{self._dataset_len}; resume with the same data or use another checkpoint_dir"
            )
        try:
            self.model.load_state_dict(state["model"])
        except RuntimeError as err:
            raise CheckpointError(
                f"{path}: the model weights do not fit this model ({err}); resume with the same architecture"
            ) from err
        self.optimizer.load_state_dict(state["optimizer"])
        self.schedule.load_state_dict(state["schedule"])
        self.step = int(state["step"])
        self.epoch = int(state["epoch"])
        self.batch_in_epoch = int(data["batch_in_epoch"])
        self._epoch_loss_sum = float(state["epoch_loss"]["sum"])
        self._epoch_loss_count = int(state["epoch_loss"]["count"])
        self.metrics.history[:] = [dict(h) for h in state["history"]]
        saved_cbs = state.get("callbacks") or {}
        for key, cb in self._stateful_callbacks():
            if key not in saved_cbs:
                raise CheckpointError(
                    f"{path} has no saved state for callback {key!r} (saved: {sorted(saved_cbs)}); resume with the "
                    "same callbacks or use another checkpoint_dir to start fresh"
                )
            cb.load_state_dict(saved_cbs[key])
        per_rank = state.get("rng_per_rank")
        if isinstance(per_rank, list) and len(per_rank) == self.world_size and self.world_size > 1:
            set_rng_state(per_rank[self.rank])
        else:
            set_rng_state(state["rng"])

    # ---- internals ---------------------------------------------------------------------------------
    def reset_optimizer(self) -> None:
        """Build a fresh optimizer over the model's current trainable parameters (for callbacks that replace
        modules mid-training, e.g. channel surgery); the LR schedule keeps its position (it sets each step's LR)."""
        self.optimizer = self._make_optimizer()

    def _make_optimizer(self) -> torch.optim.Optimizer:
        cfg = self.config
        params = [p for p in self.model.parameters() if p.requires_grad]
        if not params:
            raise ConfigError("Trainer: the model has no trainable parameters (all have requires_grad=False)")
        if cfg.optimizer == "sgd":
            return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)

    def _loader(self, data: Dataset[Any], epoch: int, skip: int) -> Iterable[Any]:
        """Batches of epoch ``epoch`` in a seeded order, skipping the first ``skip`` batches."""
        cfg = self.config
        gen = torch.Generator().manual_seed(cfg.seed + epoch)
        perm = torch.randperm(self._dataset_len, generator=gen)
        bs = cfg.batch_size
        if cfg.num_workers == 0 and _plain_tensor_dataset(data):
            # Fast path: slice the tensors (same values as collating the items one by one, far fewer calls).
            tensors = data.tensors  # type: ignore[attr-defined]
            return (tuple(t[perm[i : i + bs]] for t in tensors) for i in range(skip * bs, len(perm), bs))
        order = perm.tolist()
        batches: Sequence[list[int]] = [order[i : i + bs] for i in range(skip * bs, len(order), bs)]
        # A dedicated generator keeps the DataLoader from drawing its worker base seed from the global RNG.
        loader_gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + epoch)
        return DataLoader(data, batch_sampler=batches, num_workers=cfg.num_workers, generator=loader_gen)

    def _shard_loader(self, data: Dataset[Any], epoch: int, skip: int) -> Iterable[tuple[Any, float]]:
        """This rank's slices of the batches of :meth:`_loader`, each with its loss weight.

        Global batch ``i`` is ``perm[i*B : (i+1)*B]`` exactly as in one process; rank ``r`` takes the ``r``-th
        contiguous slice (:func:`~torchslim.train.distributed.shard_sizes`). Its mean loss is multiplied by
        ``world * b_r / b`` so that DDP's average over ranks is the mean loss over the global batch even when
        the slices differ in size. A rank with an empty slice (a last batch smaller than the world size)
        runs the whole batch with weight 0, so it still takes part in the gradient all-reduce.
        """
        cfg = self.config
        gen = torch.Generator().manual_seed(cfg.seed + epoch)
        perm = torch.randperm(self._dataset_len, generator=gen)
        bs, world, r = cfg.batch_size, self.world_size, self.rank
        indices: list[torch.Tensor] = []
        scales: list[float] = []
        for i in range(skip * bs, len(perm), bs):
            idx = perm[i : i + bs]
            sizes = _dist.shard_sizes(len(idx), world)
            start = sum(sizes[:r])
            if sizes[r] == 0:
                indices.append(idx)
                scales.append(0.0)
            else:
                indices.append(idx[start : start + sizes[r]])
                scales.append(world * sizes[r] / len(idx))
        if cfg.num_workers == 0 and _plain_tensor_dataset(data):
            tensors = data.tensors  # type: ignore[attr-defined]
            return ((tuple(t[ix] for t in tensors), s) for ix, s in zip(indices, scales, strict=True))
        loader_gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + epoch)
        loader = DataLoader(
            data,
            batch_sampler=[ix.tolist() for ix in indices],
            num_workers=cfg.num_workers,
            generator=loader_gen,
        )
        return zip(loader, scales, strict=True)

    def _train_step(self, batch: Any, scale: float | None = None) -> float:
        cfg = self.config
        self.current_lr = self.schedule.apply(self.optimizer, self.step)
        self.optimizer.zero_grad(set_to_none=True)
        loss = self.step_fn(self._train_model, batch)
        for cb in self.callbacks:
            if _has(cb, "extra_loss"):
                extra = cb.extra_loss(self, self.model)  # type: ignore[attr-defined]
                if extra is not None:
                    loss = loss + extra
        if not isinstance(loss, torch.Tensor) or loss.dim() != 0:
            raise TypeError(
                f"step_fn must return a scalar loss tensor, got "
                f"{type(loss).__name__}{'' if not isinstance(loss, torch.Tensor) else tuple(loss.shape)}"
            )
        if scale is None:
            loss_value = float(loss.detach())
        else:
            import torch.distributed as dist

            # The global-batch loss (the same on every rank, so all ranks stop together on NaN/Inf).
            shared = (loss.detach() * (scale / self.world_size)).reshape(1).clone()
            dist.all_reduce(shared)
            loss_value = float(shared[0])
            if scale != 1.0:
                loss = loss * scale
        if not math.isfinite(loss_value):
            self._numerical_error("loss", loss_value)
        loss.backward()
        params = [p for g in self.optimizer.param_groups for p in g["params"] if p.grad is not None]
        if params:
            if cfg.grad_clip is not None:
                norm = torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
            else:
                norm = torch.nn.utils.get_total_norm([p.grad for p in params if p.grad is not None])
            if not bool(torch.isfinite(norm)):
                self._numerical_error("gradient", loss_value)
        self.optimizer.step()
        return loss_value

    def _numerical_error(self, what: str, loss_value: float) -> None:
        raise NumericalError(
            f"non-finite {what} at step {self.step + 1} (epoch {self.epoch}): loss = {loss_value}, "
            f"lr = {self.current_lr:.3g}. Training stopped. Try a lower lr (now {self.config.lr}), set grad_clip "
            f"(now {self.config.grad_clip}), or check the inputs for NaN/Inf"
        )

    def _end_epoch(self, last: bool) -> None:
        logs: dict[str, Any] = {
            "epoch": self.epoch,
            "step": self.step,
            "loss": self._epoch_loss_sum / max(self._epoch_loss_count, 1),
            "lr": self.current_lr,
        }
        self.is_last_epoch = last
        for cb in self.callbacks:
            if _has(cb, "on_epoch_end"):
                cb.on_epoch_end(self, self.epoch, logs)  # type: ignore[attr-defined]
        self.epoch += 1
        self.batch_in_epoch = 0
        self._epoch_loss_sum = 0.0
        self._epoch_loss_count = 0
        if self.checkpoint_dir is not None:
            self.save_checkpoint()

    def _progress_bar(self, total: int) -> Any:
        if not self.progress:
            return None
        from torchslim.core.progress import progress_bar

        return progress_bar(
            total=total, initial=self.step, desc="train", unit="step", dynamic_ncols=True, leave=False
        )


def _plain_tensor_dataset(data: object) -> bool:
    """A ``TensorDataset`` (or subclass) whose items are the plain rows of its tensors."""
    return isinstance(data, TensorDataset) and type(data).__getitem__ is TensorDataset.__getitem__


def _device_of(model: torch.nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    return torch.device("cpu")
