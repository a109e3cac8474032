"""Hydra: distilling an ensemble into one multi-headed model (Tran et al., 2020, arXiv:2001.04694).

The student is a shared ``body`` plus ``M`` light heads. Training has two phases:

1. one head distils the ensemble's mean prediction (Hinton KD against ``log mean_m softmax(t_m)``);
2. that head is cloned ``M`` times and head ``m`` distils ensemble member ``m`` (KD at temperature ``T``),
   the body trained by all heads.

The heads keep the members' diversity, so their disagreement estimates (epistemic) uncertainty as the
ensemble's does: :func:`disagreement` is the mutual information
``H(mean_m p_m) - mean_m H(p_m)`` of the heads' (or the members') predictive distributions.
The paper's classification variant is implemented; its regression variant (Gaussian heads) is not.

Example:
    >>> model = HydraStudent(body, nn.Linear(64, 10), num_heads=4)  # doctest: +SKIP
    >>> hydra_distill(model, members, train_set, HydraKD())  # doctest: +SKIP
    >>> score = disagreement(model.head_logits(x))  # higher = more uncertain  # doctest: +SKIP
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Annotated, Any, ClassVar

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn
from torch.utils.data import Dataset

from torchslim.core.config import Config
from torchslim.core.errors import ConfigError
from torchslim.distillation.hinton import _logits, _split
from torchslim.distillation.losses import kd_loss
from torchslim.train.trainer import TrainConfig, Trainer, TrainResult


class HydraKD(Config):
    """Hydra settings.

    Attributes:
        temperature: KD temperature of both phases.
        alpha: weight of the KD terms; ``1 - alpha`` weighs the cross-entropy of each head with the labels.
            The paper distils only (``alpha = 1``, the default); labels pull all heads to the same targets.
        phase1: training of body + the single "Hinton head" on the ensemble mean.
        phase2: training of body + the ``M`` cloned heads, head ``m`` on member ``m``.
    """

    type_name: ClassVar[str] = "hydra_kd"

    temperature: Annotated[float, Field(gt=0)] = 2.0
    alpha: Annotated[float, Field(ge=0, le=1)] = 1.0
    phase1: TrainConfig = TrainConfig(epochs=2, lr=0.01, schedule="cosine")
    phase2: TrainConfig = TrainConfig(epochs=1, lr=0.005, schedule="cosine")


class HydraStudent(nn.Module):
    """A shared body with ``num_heads`` heads.

    ``head_logits(x)`` is ``[M, batch, classes]``; ``forward(x)`` returns the log of the heads' mean softmax
    (usable as logits: argmax and cross-entropy behave as for an ensemble). Before phase 2 there is one head.

    Args:
        body: maps inputs to a shared feature.
        head: the first head (feature -> logits); phase 2 clones it.
        num_heads: ``M``, the number of heads after phase 2 (= ensemble size).
    """

    def __init__(self, body: nn.Module, head: nn.Module, num_heads: int) -> None:
        super().__init__()
        if num_heads < 1:
            raise ConfigError(f"HydraStudent: num_heads must be >= 1, got {num_heads}")
        self.body = body
        self.heads = nn.ModuleList([head])
        self.num_heads = num_heads

    def expand_heads(self) -> None:
        """Clone the first head into ``num_heads`` heads (phase 2); a no-op when already expanded."""
        if len(self.heads) == self.num_heads:
            return
        first = self.heads[0]
        self.heads = nn.ModuleList([first] + [copy.deepcopy(first) for _ in range(self.num_heads - 1)])

    def head_logits(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of every head, ``[heads, batch, classes]``."""
        feat = self.body(x)
        return torch.stack([h(feat) for h in self.heads])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.head_logits(x)
        return torch.logsumexp(F.log_softmax(logits, dim=-1), dim=0) - math.log(logits.shape[0])


def ensemble_logits(members: Sequence[nn.Module], x: torch.Tensor) -> torch.Tensor:
    """Logits of each member on ``x``, ``[members, batch, classes]`` (no grad, members in their current mode)."""
    with torch.no_grad():
        return torch.stack([_logits(m(x), f"ensemble member {i}") for i, m in enumerate(members)])


def mean_log_probs(logits: torch.Tensor) -> torch.Tensor:
    """``log mean_m softmax(logits[m])`` of ``[M, batch, classes]`` logits: the ensemble's prediction."""
    return torch.logsumexp(F.log_softmax(logits, dim=-1), dim=0) - math.log(logits.shape[0])


def disagreement(logits: torch.Tensor) -> torch.Tensor:
    """Mutual information ``H(mean_m p_m) - mean_m H(p_m)`` per example (nats), from ``[M, batch, classes]``.

    0 when all heads/members agree; at most ``log(classes)``. Use it as an out-of-distribution score.

    Example:
        >>> z = torch.randn(1, 3, 10).expand(4, 3, 10)
        >>> bool(disagreement(z).abs().max() < 1e-6)
        True
    """
    if logits.dim() != 3:
        raise ConfigError(
            f"disagreement: expected [models, batch, classes] logits, got {tuple(logits.shape)}"
        )
    logp = F.log_softmax(logits.float(), dim=-1)
    mean_logp = torch.logsumexp(logp, dim=0) - math.log(logits.shape[0])
    h_mean = -(mean_logp.exp() * mean_logp).sum(-1)
    mean_h = -(logp.exp() * logp).sum(-1).mean(0)
    return (h_mean - mean_h).clamp_min(0)


def hydra_loss(
    head_logits: torch.Tensor,
    member_logits: torch.Tensor,
    temperature: float,
    alpha: float = 1.0,
    labels: torch.Tensor | None = None,
) -> torch.Tensor:
    """Phase-2 loss: ``alpha * mean_m T^2 KL(softmax(t_m/T) || softmax(z_m/T)) + (1 - alpha) * mean_m CE(z_m, y)``.

    Head ``m`` matches ensemble member ``m`` (the paper's loss is the ``alpha = 1`` case: pure distillation;
    a label term pulls every head to the same targets and so works against the heads' diversity).

    Args:
        head_logits: ``[M, batch, classes]`` from :meth:`HydraStudent.head_logits`.
        member_logits: ``[M, batch, classes]`` from :func:`ensemble_logits` (same member order).
        temperature: ``T``.
        alpha: weight of the KD term; ``labels`` are needed when ``alpha < 1``.
        labels: ``[batch]`` class indices.

    Example:
        >>> z = torch.randn(3, 4, 5)
        >>> float(hydra_loss(z, z, 2.0)) < 1e-6
        True
    """
    if head_logits.shape != member_logits.shape:
        raise ConfigError(
            f"hydra_loss: head logits {tuple(head_logits.shape)} and member logits "
            f"{tuple(member_logits.shape)} differ; build HydraStudent(..., num_heads=len(members)) with heads "
            "that output the members' classes"
        )
    loss = torch.stack([kd_loss(head_logits[i], member_logits[i], temperature) for i in range(len(head_logits))])
    out = alpha * loss.mean()
    if alpha < 1:
        if labels is None:
            raise ConfigError("hydra_loss: alpha < 1 needs labels; pass (x, y) items or set alpha=1")
        ce = torch.stack([F.cross_entropy(z, labels) for z in head_logits])
        out = out + (1 - alpha) * ce.mean()
    return out


def hydra_distill(
    model: HydraStudent,
    members: Sequence[nn.Module],
    data: Dataset[Any],
    config: HydraKD | None = None,
    checkpoint_dir: str | Path | None = None,
    progress: bool = True,
    callbacks: Iterable[object] = (),
) -> tuple[TrainResult, TrainResult]:
    """Run both Hydra phases on ``model`` (in place). Members are frozen (eval, no_grad) and restored after.

    Args:
        model: a :class:`HydraStudent` with ``num_heads == len(members)``.
        members: the ensemble (each returns logits of the same classes as the heads).
        data: ``(x, y)`` items (``x`` alone is fine when ``alpha == 1``).
        config: a :class:`HydraKD`.
        checkpoint_dir: phase checkpoints go to ``checkpoint_dir/phase1`` and ``/phase2``.
        progress, callbacks: as for :class:`~torchslim.train.Trainer` (callbacks run in both phases).

    Returns:
        the two phases' :class:`~torchslim.train.TrainResult`.

    Raises:
        ConfigError: not a HydraStudent, or the head count differs from the ensemble size.
    """
    config = HydraKD() if config is None else config
    if not isinstance(model, HydraStudent):
        raise ConfigError(f"hydra_distill: model must be a HydraStudent, got {type(model).__name__}")
    members = list(members)
    if len(members) != model.num_heads:
        raise ConfigError(
            f"hydra_distill: the student has num_heads={model.num_heads} but the ensemble has {len(members)} "
            "members; Hydra trains one head per member, so build HydraStudent(..., num_heads=len(members))"
        )
    temp, alpha = config.temperature, config.alpha

    def ce(z: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        if y is None:
            raise ConfigError("hydra_distill: alpha < 1 needs labels; pass (x, y) items or set alpha=1")
        return F.cross_entropy(z, y)

    def phase1_step(m: nn.Module, batch: Any) -> torch.Tensor:
        x, y = _split(batch)
        target = mean_log_probs(ensemble_logits(members, x))
        assert isinstance(m, HydraStudent)
        z = m.heads[0](m.body(x))
        loss = alpha * kd_loss(z, target, temp)
        return loss + (1 - alpha) * ce(z, y) if alpha < 1 else loss

    def phase2_step(m: nn.Module, batch: Any) -> torch.Tensor:
        x, y = _split(batch)
        t = ensemble_logits(members, x)
        assert isinstance(m, HydraStudent)
        if alpha < 1 and y is None:
            ce(t[0], y)  # raises the explicit error
        return hydra_loss(m.head_logits(x), t, temp, alpha, y)

    was = [mm.training for mm in members]
    for mm in members:
        mm.eval()
    ckpt = Path(checkpoint_dir) if checkpoint_dir is not None else None
    try:
        if len(model.heads) != 1:
            raise ConfigError(
                "hydra_distill: the student already has several heads; start from a fresh HydraStudent "
                "(phase 1 trains a single head)"
            )
        r1 = Trainer(
            model,
            config.phase1,
            step_fn=phase1_step,
            callbacks=callbacks,
            checkpoint_dir=None if ckpt is None else ckpt / "phase1",
            progress=progress,
        ).fit(data)
        model.expand_heads()
        r2 = Trainer(
            model,
            config.phase2,
            step_fn=phase2_step,
            callbacks=callbacks,
            checkpoint_dir=None if ckpt is None else ckpt / "phase2",
            progress=progress,
        ).fit(data)
        return r1, r2
    finally:
        for mm, w in zip(members, was, strict=True):
            mm.train(w)
