"""Hydra: distilling an ensemble into one multi-headed model (Tran et al., 2020, arXiv:2001.04694).

The student is a shared ``body`` plus ``M`` light heads. Training has two phases (the paper's Sec. 3):

1. one head distils the ensemble's mean prediction (the "Hinton head");
2. that head is cloned ``M`` times and head ``m`` distils ensemble member ``m``, the body trained by all heads.

The heads keep the members' diversity, so their disagreement estimates (epistemic) uncertainty as the
ensemble's does.

**Classification.** Head ``m`` minimises ``T^2 KL(softmax(t_m/T) || softmax(z_m/T))``; :func:`disagreement` is
the mutual information ``H(mean_m p_m) - mean_m H(p_m)`` of the heads' (or the members') predictions. The
paper names a "temperature re-scaling" for classification; its exact equation could not be read offline (only
abstracts and third-party summaries were reachable), so ``HydraKD(temperature_rescaling=True)`` implements our
reading, stated in :func:`hinton_head_loss`: the temperature is applied to each member before the members are
averaged (``mean_m softmax(t_m/T)``, as Hinton et al. distil an ensemble), instead of tempering the averaged
prediction (``softmax(log mean_m softmax(t_m) / T)``, the default, kept for backward compatibility).

**Regression** (the paper's heteroscedastic variant): members and heads output a Gaussian ``N(mu, var)`` per
target; head ``m`` minimises ``KL(N(mu_m, var_m) || N(mu_hat_m, var_hat_m))`` (:func:`hydra_gaussian_loss`),
the phase-1 head matches the moment-matched Gaussian of the members' mixture (:func:`mixture_kl_loss`), and the
prediction is the heads' equal-weight Gaussian mixture, whose variance splits into epistemic (variance of the
head means) and aleatoric (mean of the head variances) parts (:func:`regression_uncertainty`). Use
:class:`HydraRegressionStudent` and :func:`hydra_regression_distill`.

Example:
    >>> model = HydraStudent(body, nn.Linear(64, 10), num_heads=4)  # doctest: +SKIP
    >>> hydra_distill(model, members, train_set, HydraKD())  # doctest: +SKIP
    >>> score = disagreement(model.head_logits(x))  # higher = more uncertain  # doctest: +SKIP
    >>> reg = HydraRegressionStudent(body, nn.Linear(32, 2), num_heads=5)  # doctest: +SKIP
    >>> hydra_regression_distill(reg, gaussian_members, train_set, HydraKD())  # doctest: +SKIP
    >>> mean, epistemic, aleatoric = reg.predict(x)  # doctest: +SKIP
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterable, Sequence
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

_LOG_2PI = math.log(2 * math.pi)


class HydraKD(Config):
    """Hydra settings (classification and regression).

    Attributes:
        temperature: KD temperature of both classification phases (unused for regression).
        alpha: weight of the distillation terms; ``1 - alpha`` weighs a label term per head (cross-entropy
            for classification, Gaussian NLL for regression). The paper distils only (``alpha = 1``, the
            default); labels pull all heads to the same targets.
        temperature_rescaling: classification phase 1 targets ``mean_m softmax(t_m/T)`` (each member tempered,
            then averaged) instead of ``softmax(log mean_m softmax(t_m) / T)``; see :func:`hinton_head_loss`.
        min_variance: floor added to the softplus variance of Gaussian outputs (regression).
        phase1: training of body + the single "Hinton head" on the ensemble mean.
        phase2: training of body + the ``M`` cloned heads, head ``m`` on member ``m``.
    """

    type_name: ClassVar[str] = "hydra_kd"

    temperature: Annotated[float, Field(gt=0)] = 2.0
    alpha: Annotated[float, Field(ge=0, le=1)] = 1.0
    temperature_rescaling: bool = False
    min_variance: Annotated[float, Field(gt=0)] = 1e-6
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

    Example:
        >>> m = HydraStudent(nn.Linear(4, 8), nn.Linear(8, 3), num_heads=2)
        >>> m.expand_heads()
        >>> tuple(m.head_logits(torch.randn(5, 4)).shape)
        (2, 5, 3)
    """

    def __init__(self, body: nn.Module, head: nn.Module, num_heads: int) -> None:
        super().__init__()
        if num_heads < 1:
            raise ConfigError(f"{type(self).__name__}: num_heads must be >= 1, got {num_heads}")
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
        """Raw outputs of every head, ``[heads, batch, ...]`` (logits for classification)."""
        feat = self.body(x)
        return torch.stack([h(feat) for h in self.heads])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.head_logits(x)
        return torch.logsumexp(F.log_softmax(logits, dim=-1), dim=0) - math.log(logits.shape[0])


def ensemble_logits(members: Sequence[nn.Module], x: torch.Tensor) -> torch.Tensor:
    """Logits of each member on ``x``, ``[members, batch, classes]`` (no grad, members in their current mode).

    Example:
        >>> tuple(ensemble_logits([nn.Linear(4, 3), nn.Linear(4, 3)], torch.randn(5, 4)).shape)
        (2, 5, 3)
    """
    with torch.no_grad():
        return torch.stack([_logits(m(x), f"ensemble member {i}") for i, m in enumerate(members)])


def mean_log_probs(logits: torch.Tensor) -> torch.Tensor:
    """``log mean_m softmax(logits[m])`` of ``[M, batch, classes]`` logits: the ensemble's prediction.

    Example:
        >>> z = torch.randn(3, 2, 4)
        >>> bool(torch.allclose(mean_log_probs(z).exp(), z.softmax(-1).mean(0), atol=1e-6))
        True
    """
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


def hinton_head_loss(
    logits: torch.Tensor, member_logits: torch.Tensor, temperature: float, rescale: bool = False
) -> torch.Tensor:
    """Phase-1 loss of the single "Hinton head" ``z`` against the ensemble ``t_1..t_M``, batch mean.

    * ``rescale=False`` (default, the earlier behaviour): ``T^2 KL(softmax(log pbar / T) || softmax(z/T))``
      with ``pbar = mean_m softmax(t_m)``: the ensemble's prediction, then tempered.
    * ``rescale=True`` (our reading of the paper's temperature re-scaling, not checked against its text):
      ``T^2 KL(pbar_T || softmax(z/T))`` with ``pbar_T = mean_m softmax(t_m / T)``: each member tempered, then
      averaged, so the head sees each member's softened distribution rather than a sharpened average.

    Both are 0 for ``T = 1`` when ``z = log pbar`` and coincide at ``T = 1``.

    Args:
        logits: ``[batch, classes]`` of the head.
        member_logits: ``[M, batch, classes]`` of the members.
        temperature: ``T > 0``.
        rescale: see above.

    Example:
        >>> t = torch.randn(3, 4, 5)
        >>> float(hinton_head_loss(mean_log_probs(t), t, 1.0)) < 1e-6
        True
    """
    if member_logits.dim() != 3 or member_logits.shape[1:] != logits.shape:
        raise ConfigError(
            f"hinton_head_loss: head logits {tuple(logits.shape)} and member logits "
            f"{tuple(member_logits.shape)} do not match; expected [batch, classes] and [M, batch, classes]"
        )
    if not temperature > 0:
        raise ConfigError(f"hinton_head_loss: temperature must be > 0, got {temperature}")
    if not rescale:
        return kd_loss(logits, mean_log_probs(member_logits), temperature)
    target = mean_log_probs(member_logits.detach().to(logits.dtype) / temperature)
    kl = F.kl_div(F.log_softmax(logits / temperature, -1), target, reduction="batchmean", log_target=True)
    return kl * temperature**2


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


StepFn = Callable[[nn.Module, Any], torch.Tensor]


def _check_members(fn: str, model: nn.Module, cls: type, members: Sequence[nn.Module]) -> list[nn.Module]:
    if not isinstance(model, cls):
        raise ConfigError(f"{fn}: model must be a {cls.__name__}, got {type(model).__name__}")
    members = list(members)
    num_heads = int(model.num_heads)  # type: ignore[arg-type]
    if len(members) != num_heads:
        raise ConfigError(
            f"{fn}: the student has num_heads={num_heads} but the ensemble has {len(members)} "
            f"members; Hydra trains one head per member, so build {cls.__name__}(..., num_heads=len(members))"
        )
    return members


def _two_phases(
    fn: str,
    model: HydraStudent,
    members: Sequence[nn.Module],
    data: Dataset[Any],
    config: HydraKD,
    phase1_step: StepFn,
    phase2_step: StepFn,
    checkpoint_dir: str | Path | None,
    progress: bool,
    callbacks: Iterable[object],
) -> tuple[TrainResult, TrainResult]:
    """Phase 1 (one head), clone the head, phase 2 (all heads); members in eval mode, restored after."""
    callbacks = list(callbacks)
    was = [mm.training for mm in members]
    for mm in members:
        mm.eval()
    ckpt = Path(checkpoint_dir) if checkpoint_dir is not None else None
    try:
        if len(model.heads) != 1:
            raise ConfigError(
                f"{fn}: the student already has several heads; start from a fresh {type(model).__name__} "
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


def hydra_distill(
    model: HydraStudent,
    members: Sequence[nn.Module],
    data: Dataset[Any],
    config: HydraKD | None = None,
    checkpoint_dir: str | Path | None = None,
    progress: bool = True,
    callbacks: Iterable[object] = (),
) -> tuple[TrainResult, TrainResult]:
    """Run both Hydra phases (classification) on ``model`` in place. Members are frozen (eval, no_grad).

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

    Example:
        >>> hydra_distill(HydraStudent(body, nn.Linear(64, 10), 4), members, train_set)  # doctest: +SKIP
    """
    config = HydraKD() if config is None else config
    members = _check_members("hydra_distill", model, HydraStudent, members)
    if isinstance(model, HydraRegressionStudent):
        raise ConfigError("hydra_distill: got a HydraRegressionStudent; use hydra_regression_distill for it")
    temp, alpha = config.temperature, config.alpha

    def ce(z: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        if y is None:
            raise ConfigError("hydra_distill: alpha < 1 needs labels; pass (x, y) items or set alpha=1")
        return F.cross_entropy(z, y)

    def phase1_step(m: nn.Module, batch: Any) -> torch.Tensor:
        x, y = _split(batch)
        assert isinstance(m, HydraStudent)
        z = m.heads[0](m.body(x))
        loss = alpha * hinton_head_loss(z, ensemble_logits(members, x), temp, config.temperature_rescaling)
        return loss + (1 - alpha) * ce(z, y) if alpha < 1 else loss

    def phase2_step(m: nn.Module, batch: Any) -> torch.Tensor:
        x, y = _split(batch)
        t = ensemble_logits(members, x)
        assert isinstance(m, HydraStudent)
        if alpha < 1 and y is None:
            ce(t[0], y)  # raises the explicit error
        return hydra_loss(m.head_logits(x), t, temp, alpha, y)

    return _two_phases(
        "hydra_distill", model, members, data, config, phase1_step, phase2_step, checkpoint_dir, progress, callbacks
    )


# ---------------------------------------------------------------------------------------------------------
# Regression: Gaussian heads


def gaussian_params(out: Any, min_variance: float = 1e-6, who: str = "model") -> tuple[torch.Tensor, torch.Tensor]:
    """``(mean, variance)`` of a Gaussian output.

    ``out`` is either a ``(mean, variance)`` tuple (used as is) or a tensor ``[..., 2 * D]`` whose first ``D``
    values are the mean and last ``D`` an unconstrained variance: ``variance = softplus(raw) + min_variance``.

    Example:
        >>> mu, var = gaussian_params(torch.tensor([[1.0, 0.0]]))
        >>> round(float(mu), 3), round(float(var), 3)
        (1.0, 0.693)
    """
    if isinstance(out, (tuple, list)) and len(out) == 2 and all(isinstance(o, torch.Tensor) for o in out):
        mu, var = out
        if mu.shape != var.shape:
            raise ConfigError(f"{who}: mean {tuple(mu.shape)} and variance {tuple(var.shape)} differ in shape")
        return mu, var
    if not isinstance(out, torch.Tensor):
        raise ConfigError(
            f"{who} returned {type(out).__name__}; a Gaussian output is a (mean, variance) tuple or a tensor "
            "[batch, 2 * targets] (mean, raw variance)"
        )
    if out.dim() == 0 or out.shape[-1] % 2:
        raise ConfigError(
            f"{who} returned shape {tuple(out.shape)}; a Gaussian output needs an even last dimension "
            "2 * targets (means, then raw variances); give the head 2 * targets outputs"
        )
    d = out.shape[-1] // 2
    return out[..., :d], F.softplus(out[..., d:]) + min_variance


def gaussian_kl(mu_p: torch.Tensor, var_p: torch.Tensor, mu_q: torch.Tensor, var_q: torch.Tensor) -> torch.Tensor:
    """Elementwise ``KL(N(mu_p, var_p) || N(mu_q, var_q)) = 0.5 (log(var_q/var_p) + (var_p + (mu_p-mu_q)^2)/var_q - 1)``.

    Example:
        >>> float(gaussian_kl(torch.tensor(0.0), torch.tensor(1.0), torch.tensor(1.0), torch.tensor(1.0)))
        0.5
    """
    return 0.5 * (torch.log(var_q) - torch.log(var_p) + (var_p + (mu_p - mu_q) ** 2) / var_q - 1)


def gaussian_nll(y: torch.Tensor, mu: torch.Tensor, var: torch.Tensor) -> torch.Tensor:
    """Elementwise ``-log N(y; mu, var) = 0.5 (log(2 pi var) + (y - mu)^2 / var)``.

    Example:
        >>> round(float(gaussian_nll(torch.tensor(0.0), torch.tensor(0.0), torch.tensor(1.0))), 4)
        0.9189
    """
    return 0.5 * (_LOG_2PI + torch.log(var) + (y - mu) ** 2 / var)


def mixture_moments(mu: torch.Tensor, var: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and variance of the equal-weight mixture ``1/M sum_m N(mu[m], var[m])`` (over dim 0).

    Example:
        >>> m, v = mixture_moments(torch.tensor([[0.0], [2.0]]), torch.tensor([[1.0], [1.0]]))
        >>> float(m), float(v)
        (1.0, 2.0)
    """
    mean = mu.mean(0)
    return mean, var.mean(0) + ((mu - mean) ** 2).mean(0)


def regression_uncertainty(
    mu: torch.Tensor, var: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(mean, epistemic, aleatoric)`` of ``M`` Gaussians ``[M, batch, D]`` (heads or members).

    ``epistemic = mean_m (mu_m - mean)^2`` (the spread of the means), ``aleatoric = mean_m var_m``; their sum is
    the mixture's variance.

    Example:
        >>> _, epi, ale = regression_uncertainty(torch.tensor([[0.0], [2.0]]), torch.tensor([[1.0], [3.0]]))
        >>> float(epi), float(ale)
        (1.0, 2.0)
    """
    mean, total = mixture_moments(mu, var)
    aleatoric = var.mean(0)
    return mean, total - aleatoric, aleatoric


def mixture_kl_loss(
    mu: torch.Tensor, var: torch.Tensor, member_mu: torch.Tensor, member_var: torch.Tensor
) -> torch.Tensor:
    """Phase-1 regression loss: ``KL(N(m, v) || N(mu, var))``, mean over batch and targets, where ``(m, v)``
    are the mixture moments of the members (:func:`mixture_moments`).

    Among Gaussians ``q``, ``KL(mixture || q)`` is minimised by the moment-matched Gaussian, so this loss has
    the same minimiser as matching the members' mixture itself and a closed form.

    Example:
        >>> m, v = torch.randn(3, 4, 1), torch.rand(3, 4, 1) + 0.1
        >>> mm, vv = mixture_moments(m, v)
        >>> float(mixture_kl_loss(mm, vv, m, v)) < 1e-6
        True
    """
    m, v = mixture_moments(member_mu.detach(), member_var.detach())
    if mu.shape != m.shape:
        raise ConfigError(
            f"mixture_kl_loss: head mean {tuple(mu.shape)} and member mean {tuple(m.shape)} differ; the head "
            "must predict as many targets as the members"
        )
    return gaussian_kl(m, v, mu, var).mean()


def hydra_gaussian_loss(
    head_mu: torch.Tensor,
    head_var: torch.Tensor,
    member_mu: torch.Tensor,
    member_var: torch.Tensor,
    alpha: float = 1.0,
    labels: torch.Tensor | None = None,
) -> torch.Tensor:
    """Phase-2 regression loss: ``alpha * mean_m KL(N(mu_m, var_m) || N(mu_hat_m, var_hat_m)) + (1 - alpha) *
    mean_m NLL(y; mu_hat_m, var_hat_m)``, means over heads, batch and targets.

    Head ``m`` matches member ``m``'s Gaussian (the paper's regression variant; KL in the same direction as the
    classification loss, member first). All inputs are ``[M, batch, D]``; ``labels`` ``[batch, D]``.

    Example:
        >>> mu, var = torch.randn(3, 4, 1), torch.rand(3, 4, 1) + 0.1
        >>> float(hydra_gaussian_loss(mu, var, mu, var))
        0.0
    """
    if head_mu.shape != member_mu.shape or head_var.shape != member_var.shape or head_mu.shape != head_var.shape:
        raise ConfigError(
            f"hydra_gaussian_loss: head Gaussians {tuple(head_mu.shape)} and member Gaussians "
            f"{tuple(member_mu.shape)} differ; build HydraRegressionStudent(..., num_heads=len(members)) with "
            "heads that predict the members' targets"
        )
    out = alpha * gaussian_kl(member_mu.detach(), member_var.detach(), head_mu, head_var).mean()
    if alpha < 1:
        if labels is None:
            raise ConfigError("hydra_gaussian_loss: alpha < 1 needs labels; pass (x, y) items or set alpha=1")
        y = labels.to(head_mu.dtype).reshape(head_mu.shape[1:])
        out = out + (1 - alpha) * gaussian_nll(y, head_mu, head_var).mean()
    return out


def ensemble_gaussians(
    members: Sequence[nn.Module], x: torch.Tensor, min_variance: float = 1e-6
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(mean, variance)`` of each member on ``x``, each ``[members, batch, D]`` (no grad).

    Members return a ``(mean, variance)`` tuple or ``[batch, 2 * D]`` (see :func:`gaussian_params`).

    Example:
        >>> mu, var = ensemble_gaussians([nn.Linear(3, 2), nn.Linear(3, 2)], torch.randn(5, 3))
        >>> tuple(mu.shape), bool((var > 0).all())
        ((2, 5, 1), True)
    """
    with torch.no_grad():
        outs = [gaussian_params(m(x), min_variance, f"ensemble member {i}") for i, m in enumerate(members)]
    return torch.stack([o[0] for o in outs]), torch.stack([o[1] for o in outs])


class HydraRegressionStudent(HydraStudent):
    """A shared body with ``num_heads`` Gaussian heads (the paper's regression variant).

    Each head outputs ``[batch, 2 * D]``: ``D`` means and ``D`` raw variances (``softplus(raw) + min_variance``).
    ``head_gaussians(x)`` gives ``(mu, var)``, each ``[M, batch, D]``; ``forward(x)`` is the mixture mean
    ``[batch, D]``; ``predict(x)`` is ``(mean, epistemic, aleatoric)`` (:func:`regression_uncertainty`).

    Args:
        body: maps inputs to a shared feature.
        head: the first head (feature -> ``2 * D``); phase 2 clones it.
        num_heads: ``M`` (= ensemble size).
        min_variance: variance floor.

    Example:
        >>> m = HydraRegressionStudent(nn.Linear(3, 8), nn.Linear(8, 2), num_heads=2)
        >>> m.expand_heads()
        >>> [tuple(t.shape) for t in m.predict(torch.randn(5, 3))]
        [(5, 1), (5, 1), (5, 1)]
    """

    def __init__(self, body: nn.Module, head: nn.Module, num_heads: int, min_variance: float = 1e-6) -> None:
        super().__init__(body, head, num_heads)
        if not min_variance > 0:
            raise ConfigError(f"HydraRegressionStudent: min_variance must be > 0, got {min_variance}")
        self.min_variance = min_variance

    def head_gaussians(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(mu, var)`` of every head, each ``[heads, batch, D]``."""
        return gaussian_params(self.head_logits(x), self.min_variance, "HydraRegressionStudent head")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head_gaussians(x)[0].mean(0)

    def predict(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(mean, epistemic variance, aleatoric variance)``, each ``[batch, D]``."""
        return regression_uncertainty(*self.head_gaussians(x))


def hydra_regression_distill(
    model: HydraRegressionStudent,
    members: Sequence[nn.Module],
    data: Dataset[Any],
    config: HydraKD | None = None,
    checkpoint_dir: str | Path | None = None,
    progress: bool = True,
    callbacks: Iterable[object] = (),
) -> tuple[TrainResult, TrainResult]:
    """Run both Hydra phases for regression on ``model`` in place (members frozen: eval, no_grad).

    Phase 1: the single head minimises :func:`mixture_kl_loss` (the members' moment-matched mixture). Phase 2:
    head ``m`` minimises ``KL(member m || head m)`` between Gaussians (:func:`hydra_gaussian_loss`). With
    ``alpha < 1`` a Gaussian NLL of the labels is added per head. ``config.temperature`` is not used.

    Args:
        model: a :class:`HydraRegressionStudent` with ``num_heads == len(members)``.
        members: the ensemble; each returns ``(mean, variance)`` or ``[batch, 2 * D]``.
        data: ``(x, y)`` items (``x`` alone when ``alpha == 1``); ``y`` is ``[D]`` per item.
        config, checkpoint_dir, progress, callbacks: as for :func:`hydra_distill`.

    Example:
        >>> reg = HydraRegressionStudent(body, nn.Linear(32, 2), num_heads=5)  # doctest: +SKIP
        >>> hydra_regression_distill(reg, members, TensorDataset(x, y))  # doctest: +SKIP
    """
    config = HydraKD() if config is None else config
    members = _check_members("hydra_regression_distill", model, HydraRegressionStudent, members)
    alpha, floor = config.alpha, config.min_variance

    def labels(y: torch.Tensor | None) -> torch.Tensor:
        if y is None:
            raise ConfigError("hydra_regression_distill: alpha < 1 needs labels; pass (x, y) items or set alpha=1")
        return y

    def phase1_step(m: nn.Module, batch: Any) -> torch.Tensor:
        x, y = _split(batch)
        assert isinstance(m, HydraRegressionStudent)
        mu, var = gaussian_params(m.heads[0](m.body(x)), m.min_variance, "HydraRegressionStudent head")
        loss = alpha * mixture_kl_loss(mu, var, *ensemble_gaussians(members, x, floor))
        if alpha < 1:
            loss = loss + (1 - alpha) * gaussian_nll(labels(y).to(mu.dtype).reshape(mu.shape), mu, var).mean()
        return loss

    def phase2_step(m: nn.Module, batch: Any) -> torch.Tensor:
        x, y = _split(batch)
        assert isinstance(m, HydraRegressionStudent)
        if alpha < 1:
            labels(y)
        mu, var = m.head_gaussians(x)
        return hydra_gaussian_loss(mu, var, *ensemble_gaussians(members, x, floor), alpha=alpha, labels=y)

    return _two_phases(
        "hydra_regression_distill",
        model,
        members,
        data,
        config,
        phase1_step,
        phase2_step,
        checkpoint_dir,
        progress,
        callbacks,
    )
