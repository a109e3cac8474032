"""Multi-process data-parallel training on ``torch.distributed`` (DDP; gloo on CPU).

:class:`~torchslim.train.Trainer` (and so :func:`~torchslim.distillation.distill`) trains data-parallel as
soon as a default process group with more than one rank is initialised: it wraps the model in
``DistributedDataParallel``, gives each rank a disjoint contiguous slice of every global batch of the same
seeded permutation a single process would use, averages the gradients through DDP, and lets only rank 0
write checkpoints and show progress. This module starts the processes:

* ``torchrun``-style: every process calls :func:`init_distributed`, which reads ``RANK``, ``WORLD_SIZE``,
  ``MASTER_ADDR`` and ``MASTER_PORT`` from the environment (``torchrun --nproc-per-node 2 train.py``);
* on this machine: :func:`launch` spawns ``world_size`` processes connected over a free loopback port and
  returns what ``fn`` returned in each of them.

With BatchNorm, each rank normalises with the statistics of its own slice (``B / world_size`` examples),
so results differ from single-process training with batch ``B``; :func:`convert_sync_batchnorm` swaps the
BatchNorm layers for :class:`DistributedBatchNorm`, which normalises with the statistics of the whole global
batch (``torch.nn.SyncBatchNorm`` only runs on GPUs; this one runs on CPU over gloo).

Example:
    >>> from torchslim.train.distributed import launch
    >>> def work(seed):  # must be a module-level function (it is pickled into the child processes)
    ...     model = make_model(seed)
    ...     Trainer(model, TrainConfig(batch_size=64)).fit(train_set)  # 32 examples per rank
    ...     return model.state_dict()
    >>> states = launch(work, 2, 0)  # doctest: +SKIP
"""

from __future__ import annotations

import io
import os
import queue
import socket
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from torchslim.core.errors import ConfigError

__all__ = [
    "DistributedBatchNorm",
    "convert_sync_batchnorm",
    "free_port",
    "init_distributed",
    "is_distributed",
    "is_main_process",
    "launch",
    "rank",
    "shard_sizes",
    "world_size",
]

_ENV_VARS = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def is_distributed() -> bool:
    """True when a default process group with more than one rank is initialised."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    """This process's rank (0 without a process group)."""
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def world_size() -> int:
    """Number of processes in the default group (1 without a process group)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def is_main_process() -> bool:
    """True on rank 0 (and in a single process): the process that writes files and shows progress."""
    return rank() == 0


def check_backend(backend: str) -> None:
    """Raise :class:`ConfigError` unless ``backend`` can be used on this machine."""
    if not dist.is_available():
        raise ConfigError(
            "torch.distributed is not available in this PyTorch build; install a build with distributed "
            "support or train in a single process"
        )
    known = {"gloo": dist.is_gloo_available, "nccl": dist.is_nccl_available, "mpi": dist.is_mpi_available}
    if backend not in known:
        raise ConfigError(
            f"distributed backend {backend!r} is unknown; use 'gloo' (CPU), 'nccl' (GPU) or 'mpi'"
        )
    if not known[backend]():
        raise ConfigError(
            f"distributed backend {backend!r} is not available in this PyTorch build; use 'gloo' on CPU"
        )
    if backend == "nccl" and not torch.cuda.is_available():
        raise ConfigError("distributed backend 'nccl' needs CUDA GPUs; use backend='gloo' on CPU")


def init_distributed(backend: str = "gloo", timeout_s: float = 300.0) -> bool:
    """Initialise the default process group from ``torchrun``-style environment variables.

    Reads ``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR`` and ``MASTER_PORT``. Without ``WORLD_SIZE`` (a plain
    ``python train.py``) it does nothing and returns False, so one script runs both ways.

    Args:
        backend: ``"gloo"`` (CPU) or another backend torch provides.
        timeout_s: how long collective operations wait for the other ranks.

    Returns:
        True when a process group is (now or already) initialised.

    Raises:
        ConfigError: the backend is not available, or the environment is incomplete or inconsistent.
    """
    if dist.is_available() and dist.is_initialized():
        return True
    if "WORLD_SIZE" not in os.environ:
        return False
    check_backend(backend)
    missing = [v for v in _ENV_VARS if not os.environ.get(v)]
    if missing:
        raise ConfigError(
            f"init_distributed: environment variable(s) {', '.join(missing)} not set; launch with "
            "torchrun (which sets RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT) or use torchslim.train.distributed.launch"
        )
    try:
        r, w = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    except ValueError:
        raise ConfigError(
            f"init_distributed: RANK={os.environ['RANK']!r} and WORLD_SIZE={os.environ['WORLD_SIZE']!r} "
            "must be integers"
        ) from None
    if w < 1 or not 0 <= r < w:
        raise ConfigError(f"init_distributed: need 0 <= RANK < WORLD_SIZE, got RANK={r}, WORLD_SIZE={w}")
    dist.init_process_group(
        backend=backend, init_method="env://", rank=r, world_size=w, timeout=timedelta(seconds=timeout_s)
    )
    return True


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port on ``host`` that is free right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _resolve(fn: Callable[..., Any] | str) -> Callable[..., Any]:
    """``fn`` itself, or the function named by ``"package.module:name"`` / ``"path/to/file.py:name"``."""
    if callable(fn):
        return fn
    if not isinstance(fn, str) or ":" not in fn:
        raise ConfigError(
            f"launch: fn must be a function or a 'module:function' / 'file.py:function' string, got {fn!r}"
        )
    import importlib
    import importlib.util

    where, _, name = fn.rpartition(":")
    if where.endswith(".py"):
        spec = importlib.util.spec_from_file_location(f"_torchslim_launch_{abs(hash(where))}", where)
        if spec is None or spec.loader is None:
            raise ConfigError(f"launch: cannot load {where!r}; pass an existing Python file")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    else:
        module = importlib.import_module(where)
    target = getattr(module, name, None)
    if not callable(target):
        raise ConfigError(f"launch: {where!r} has no function {name!r}")
    return target


def _worker(
    local_rank: int,
    fn: Callable[..., Any] | str,
    world: int,
    port: int,
    backend: str,
    timeout_s: float,
    args: tuple[Any, ...],
    results: Any,
) -> None:
    os.environ.update(
        RANK=str(local_rank),
        LOCAL_RANK=str(local_rank),
        WORLD_SIZE=str(world),
        LOCAL_WORLD_SIZE=str(world),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
    )
    torch.set_num_threads(1)  # one core per rank; several ranks share this machine
    init_distributed(backend, timeout_s)
    try:
        out = _resolve(fn)(*args)
        buf = io.BytesIO()
        torch.save(out, buf)  # bytes, not shared-memory tensors: the child may exit before they are read
        results.put((local_rank, buf.getvalue()))
    finally:
        dist.destroy_process_group()


def launch(
    fn: Callable[..., Any] | str,
    world_size: int,
    *args: Any,
    backend: str = "gloo",
    timeout_s: float = 300.0,
) -> list[Any]:
    """Run ``fn(*args)`` in ``world_size`` new processes on this machine, joined in one process group.

    Each process gets ``RANK``/``LOCAL_RANK``/``WORLD_SIZE``/``MASTER_ADDR=127.0.0.1``/``MASTER_PORT`` (a free
    loopback port) in its environment, one torch thread, and an initialised default process group before
    ``fn`` runs; the group is destroyed after. Processes are started with ``spawn``, so ``fn`` and ``args``
    must be picklable (``fn`` a module-level function) and the calling script needs an
    ``if __name__ == "__main__":`` guard.

    Args:
        fn: the work of one rank; it may call :func:`rank` / :func:`world_size`. Either a picklable function
            or a ``"package.module:function"`` / ``"path/to/file.py:function"`` string resolved in each
            process (for functions defined in a notebook, a test file or ``__main__``).
        world_size: number of processes (>= 1).
        *args: passed to ``fn`` in every process.
        backend: process-group backend (``"gloo"`` on CPU).
        timeout_s: how long collectives wait for the other ranks.

    Returns:
        what ``fn`` returned, one entry per rank in rank order. Return values travel through
        ``torch.save`` / ``torch.load(weights_only=True)``: tensors, state dicts, numbers, strings, lists,
        dicts.

    Raises:
        ConfigError: ``world_size < 1`` or the backend is not available.
        torch.multiprocessing.ProcessRaisedException: a rank raised (its traceback is in the message); the
            other ranks are terminated.
    """
    import torch.multiprocessing as mp

    if isinstance(fn, str):  # fail here with a clear message rather than in every child
        where = fn.rpartition(":")[0]
        if ":" not in fn or (where.endswith(".py") and not os.path.isfile(where)):
            raise ConfigError(
                f"launch: {fn!r} is not a 'module:function' or an existing 'file.py:function'; check the path"
            )
    elif not callable(fn):
        raise ConfigError(f"launch: fn must be a function or a 'module:function' string, got {fn!r}")
    if not isinstance(world_size, int) or world_size < 1:
        raise ConfigError(f"launch: world_size must be an integer >= 1, got {world_size!r}")
    check_backend(backend)
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    port = free_port()
    pc = mp.spawn(
        _worker,
        args=(fn, world_size, port, backend, timeout_s, tuple(args), results),
        nprocs=world_size,
        join=False,
        start_method="spawn",
    )
    assert pc is not None
    got: dict[int, bytes] = {}

    def drain() -> None:
        while True:
            try:
                r, payload = results.get(timeout=0.05)
            except queue.Empty:
                return
            got[int(r)] = payload

    done = False
    while not done:
        drain()  # read while the children run: a full pipe would block them
        done = pc.join(timeout=0.05)
    drain()
    missing = [r for r in range(world_size) if r not in got]
    if missing:
        raise RuntimeError(f"launch: rank(s) {missing} finished without returning a result")
    return [torch.load(io.BytesIO(got[r]), weights_only=True) for r in range(world_size)]


def shard_sizes(batch: int, world: int) -> list[int]:
    """Sizes of the contiguous per-rank slices of a global batch of ``batch`` examples.

    The first ``batch % world`` ranks get one example more; rank 0 always gets at least one.

    Example:
        >>> shard_sizes(10, 4)
        [3, 3, 2, 2]
    """
    q, rem = divmod(batch, world)
    return [q + (1 if r < rem else 0) for r in range(world)]


# ---------------------------------------------------------------------------------------------------------
# BatchNorm over the whole global batch, on CPU


class _AllReduceSum(torch.autograd.Function):
    """Sum over ranks, differentiable: the gradient of a sum over ranks is the sum over ranks of the gradients."""

    @staticmethod
    def forward(ctx: Any, tensor: torch.Tensor) -> torch.Tensor:
        out = tensor.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(out)
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        out = grad.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(out)
        return out


class DistributedBatchNorm(nn.modules.batchnorm._BatchNorm):
    """BatchNorm whose training statistics are those of the global batch across all ranks.

    In training mode with an initialised process group, the per-channel sum, sum of squares and count are
    all-reduced (differentiably: the backward pass all-reduces their gradients), so each rank
    normalises its slice with the mean and biased variance of the whole global batch and the gradients
    flow through the shared statistics exactly as in one process; the running statistics are updated with
    the global mean and unbiased variance. Without a process group, or in eval mode, it is plain BatchNorm.
    Works for 1d/2d/3d inputs (``(N, C, ...)``). Build it with :func:`convert_sync_batchnorm`.
    """

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(
                f"DistributedBatchNorm expects (N, C, ...) input, got shape {tuple(input.shape)}"
            )

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        self._check_input_dim(input)
        if not (self.training and is_distributed()):
            return super().forward(input)
        c = input.shape[1]
        dims = [0, *range(2, input.dim())]
        local_n = input.numel() // c
        stats = torch.cat(
            [
                input.sum(dim=dims),
                (input * input).sum(dim=dims),
                torch.full((1,), float(local_n), dtype=input.dtype, device=input.device),
            ]
        )
        stats = _AllReduceSum.apply(stats)
        total = stats[2 * c]
        mean = stats[:c] / total
        var = (stats[c : 2 * c] / total - mean * mean).clamp_min(0.0)
        shape = [1, c] + [1] * (input.dim() - 2)
        out = (input - mean.reshape(shape)) * torch.rsqrt(var.reshape(shape) + self.eps)
        if self.affine:
            out = out * self.weight.reshape(shape) + self.bias.reshape(shape)
        if self.track_running_stats and self.running_mean is not None and self.running_var is not None:
            with torch.no_grad():
                n = float(total.detach())
                assert self.num_batches_tracked is not None
                self.num_batches_tracked.add_(1)
                m = (1.0 / float(self.num_batches_tracked)) if self.momentum is None else self.momentum
                unbiased = var.detach() * (n / max(n - 1.0, 1.0))
                self.running_mean.mul_(1 - m).add_(mean.detach(), alpha=m)
                self.running_var.mul_(1 - m).add_(unbiased, alpha=m)
        return out


def convert_sync_batchnorm(model: nn.Module) -> nn.Module:
    """Replace every ``BatchNorm1d/2d/3d`` in ``model`` by a :class:`DistributedBatchNorm` (same weights and
    running statistics); returns the model (changed in place, except a bare BatchNorm, which is replaced).

    Example:
        >>> m = convert_sync_batchnorm(nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8)))
        >>> type(m[1]).__name__
        'DistributedBatchNorm'
    """
    bn_types = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
    if isinstance(model, bn_types):
        new = DistributedBatchNorm(
            model.num_features, model.eps, model.momentum, model.affine, model.track_running_stats
        )
        new.load_state_dict(model.state_dict())
        new.train(model.training)
        return new
    for name, child in model.named_children():
        replaced = convert_sync_batchnorm(child)
        if replaced is not child:
            setattr(model, name, replaced)
    return model
