"""Residual knowledge distillation (Gao, Shen, Li & Loy, 2020, arXiv:2002.09168).

A student ``S`` mimics a teacher feature ``F_T`` (captured by a forward hook on ``teacher_layer``, the teacher
is not edited) and an assistant ``A`` learns the residual ``F_T - F_S``; at inference the head reads
``F_S + F_A``. The paper derives ``S`` and ``A`` from one given model "without increasing the total
computational cost" (abstract); the 70% / 30% FLOPs split and the uniform-width rule of :func:`carve` are
this library's reading (the paper's method section could not be retrieved to check them; docs/residual-kd.md).

Per step (``F_S = S(x)``, ``F_A = A(x)``, ``z = head(F_S + F_A)``, teacher logits ``t``)::

    loss = alpha * kd_loss(z, t, T) + (1 - alpha) * CE(z, y)
         + beta * ( MSE(F_S, F_T) + MSE(F_A, F_T - stopgrad(F_S)) )

With ``assistant=None`` this is a single student with feature + logit KD (the paper's baseline).

Carving (:func:`carve`): given ONE student body (the budget), ``carve(body, ratio, example_inputs)`` returns
``(S, A)``: two physically narrower copies of it (every prunable channel group scaled by one width factor per
copy, through :func:`torchslim.pruning.prune_`), the widths chosen as the widest for which
``MACs(S) <= ratio * MACs(body)`` and ``MACs(A) <= (1 - ratio) * MACs(body)`` (measured with
:func:`torchslim.core.cost.profile`), so ``MACs(S) + MACs(A) <= MACs(body)``. The feature shape (the body's
output channels) is kept, so ``S`` and ``A`` both produce the teacher-shaped feature.

Example:
    >>> import torch
    >>> from torch import nn
    >>> body = nn.Sequential(nn.Linear(64, 10), nn.ReLU(), nn.Linear(10, 64))   # 1,280 MACs per example
    >>> s, a = carve(body, 0.7, (torch.randn(1, 64),))
    >>> s[0].out_features, a[0].out_features                                   # 896 + 384 = 1,280 MACs
    (7, 3)
    >>> model = ResidualStudent(s, a, nn.Linear(64, 10))
    >>> model(torch.randn(2, 64)).shape
    torch.Size([2, 10])
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterable
from dataclasses import dataclass
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


# ---------------------------------------------------------------------------------------------------------
# Carving S and A out of one given student body
# ---------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CarvePlan:
    """Widths and MACs chosen by :func:`carve_plan` (MACs per call on ``example_inputs``).

    Attributes:
        ratio: the student's share of the budget (the assistant gets ``1 - ratio``).
        macs_given, macs_student, macs_assistant: MACs of the given body, of ``S`` and of ``A``.
        scale_student, scale_assistant: the width factor applied to every prunable channel group
            (``floor(scale * C)`` channels kept, at least 1).
        widths_given, widths_student, widths_assistant: channels per prunable group (group name -> count).
    """

    ratio: float
    macs_given: int
    macs_student: int
    macs_assistant: int
    scale_student: float
    scale_assistant: float
    widths_given: dict[str, int]
    widths_student: dict[str, int]
    widths_assistant: dict[str, int]

    @property
    def macs_total(self) -> int:
        """``MACs(S) + MACs(A)`` (never above ``macs_given``)."""
        return self.macs_student + self.macs_assistant

    @property
    def budget_used(self) -> float:
        """``(MACs(S) + MACs(A)) / MACs(given)``, at most 1."""
        return self.macs_total / max(self.macs_given, 1)


def _widths_at(channels: dict[str, int], scale: float) -> dict[str, int]:
    return {name: max(1, min(c, math.floor(scale * c + 1e-9))) for name, c in channels.items()}


class _Slicer:
    """Channel groups and their ranking, computed once on the given model; ``narrow`` slices a copy."""

    def __init__(self, model: nn.Module, example_inputs: tuple[Any, ...], importance: str) -> None:
        from torchslim.pruning.structured.dependency import build_groups
        from torchslim.pruning.structured.importance import ScoreContext, get_criterion

        try:
            criterion = get_criterion(importance)
        except KeyError as e:
            raise ConfigError(f"carve: {e.args[0] if e.args else e}") from None
        if criterion.needs_data:
            raise ConfigError(
                f"carve: importance={importance!r} needs calibration data; use a data-free criterion "
                "('l1', 'l2', 'bn_scale', 'random')"
            )
        self.model = model
        groups = build_groups(model, example_inputs)
        self.groups = [g for g in groups if g.prunable]
        #: why the non-prunable groups are left intact (for the error message)
        self.reasons = sorted({g.fixed or ("blocked" if g.blocked else "no producer") for g in groups})
        ctx = ScoreContext(generator=torch.Generator().manual_seed(0))
        self.scores = criterion(model, self.groups, ctx) if self.groups else []
        self.channels = {g.name: g.channels for g in self.groups}

    def narrow(self, widths: dict[str, int]) -> nn.Module:
        from torchslim.pruning.importance import top_channels

        m = copy.deepcopy(self.model)
        with torch.no_grad():
            for g, score in zip(self.groups, self.scores, strict=True):
                k = widths[g.name]
                if k >= g.channels:
                    continue
                keep = top_channels(score, k)
                for mem in g.members:
                    idx = keep
                    if mem.expand != 1:
                        idx = (keep[:, None] * mem.expand + torch.arange(mem.expand)[None, :]).reshape(-1)
                    old = m.get_submodule(mem.path)
                    new = mem.handler.prune_in(old, idx) if mem.role == "in" else mem.handler.prune_out(old, idx)
                    parent_path, _, leaf = mem.path.rpartition(".")
                    setattr(m.get_submodule(parent_path) if parent_path else m, leaf, new)
        return m


def _macs(model: nn.Module, example_inputs: tuple[Any, ...]) -> int:
    from torchslim.core.cost import profile

    was = model.training
    model.eval()
    try:
        return int(profile(model, example_inputs).macs)
    finally:
        model.train(was)


def _widest_within(
    slicer: _Slicer, target: float, example_inputs: tuple[Any, ...], role: str
) -> tuple[float, nn.Module, int]:
    """Largest width factor ``q`` whose narrowed copy costs ``<= target`` MACs.

    The widths only change at ``q = k / C`` (group of ``C`` channels), so a binary search over those
    breakpoints (MACs grow with ``q``) finds the exact optimum of this one-factor family in
    ``log2(sum C)`` evaluations."""
    channels = slicer.channels
    qs = sorted({k / c for c in channels.values() for k in range(1, c + 1)})
    lo_q = qs[0]
    lo = slicer.narrow(_widths_at(channels, lo_q))
    lo_macs = _macs(lo, example_inputs)
    if lo_macs > target:
        raise ConfigError(
            f"carve: even one channel per group gives the {role} {lo_macs:,} MACs, above its budget "
            f"{target:,.0f} MACs; the layers whose channels are fixed (model input / output) cost too much "
            "for this split. Move the ratio towards 0.5 or give a wider model"
        )
    i, j = 0, len(qs)  # qs[i] fits, qs[j] (if any) does not
    while j - i > 1:
        mid = (i + j) // 2
        cand = slicer.narrow(_widths_at(channels, qs[mid]))
        cand_macs = _macs(cand, example_inputs)
        if cand_macs <= target:
            i, lo, lo_macs = mid, cand, cand_macs
        else:
            j = mid
    return qs[i], lo, lo_macs


def _reset(model: nn.Module) -> None:
    for mod in model.modules():
        reset = getattr(mod, "reset_parameters", None)
        if callable(reset):
            reset()
        if isinstance(mod, nn.modules.batchnorm._BatchNorm):
            mod.reset_running_stats()


def _carve(
    model: nn.Module,
    ratio: float,
    example_inputs: tuple[Any, ...],
    importance: str,
) -> tuple[CarvePlan, nn.Module, nn.Module]:
    if not isinstance(model, nn.Module):
        raise ConfigError(f"carve: model must be an nn.Module (the student body), got {type(model).__name__}")
    if not isinstance(ratio, (int, float)) or not 0.0 < float(ratio) < 1.0:
        raise ConfigError(
            f"carve: ratio is the student's share of the MACs budget and must be in (0, 1), got {ratio!r} "
            "(the default reading is 0.7: S gets 70%, A 30%)"
        )
    if not isinstance(example_inputs, tuple):
        raise ConfigError(
            f"carve: example_inputs must be a tuple, got {type(example_inputs).__name__}; wrap as (x,)"
        )
    slicer = _Slicer(model, example_inputs, importance)
    channels = slicer.channels
    if not channels:
        reasons = slicer.reasons or ["no layer with channels"]
        raise ConfigError(
            f"carve: {type(model).__name__} has no channel group that can be narrowed ({', '.join(reasons)}); "
            "carving needs hidden layers between the input and the output feature"
        )
    budget = _macs(model, example_inputs)
    q_s, s, macs_s = _widest_within(slicer, ratio * budget, example_inputs, "student")
    q_a, a, macs_a = _widest_within(slicer, (1 - ratio) * budget, example_inputs, "assistant")
    plan = CarvePlan(
        ratio=float(ratio),
        macs_given=budget,
        macs_student=macs_s,
        macs_assistant=macs_a,
        scale_student=q_s,
        scale_assistant=q_a,
        widths_given=dict(channels),
        widths_student=_widths_at(channels, q_s),
        widths_assistant=_widths_at(channels, q_a),
    )
    return plan, s, a


def carve_plan(
    model: nn.Module,
    ratio: float,
    example_inputs: tuple[Any, ...],
    importance: str = "l1",
) -> CarvePlan:
    """Widths and MACs :func:`carve` would give, without returning the modules.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> body = nn.Sequential(nn.Linear(64, 10), nn.ReLU(), nn.Linear(10, 64))
        >>> p = carve_plan(body, 0.7, (torch.randn(1, 64),))
        >>> p.macs_given, p.macs_student, p.macs_assistant
        (1280, 896, 384)
    """
    return _carve(model, ratio, example_inputs, importance)[0]


def carve(
    model: nn.Module,
    ratio: float,
    example_inputs: tuple[Any, ...],
    *,
    reset: bool = True,
    importance: str = "l1",
) -> tuple[nn.Module, nn.Module]:
    """Carve a student ``S`` and an assistant ``A`` out of one given student body at equal total MACs.

    Every prunable channel group of ``model`` (found by the pruning dependency analysis: conv -> BN ->
    consumer, residual adds, flatten -> Linear) is narrowed by one width factor for ``S`` and another for
    ``A``; each factor is the largest (binary search over the factors ``k / C`` where a width changes) whose
    copy costs at most ``ratio * MACs(model)`` (``S``) or ``(1 - ratio) * MACs(model)`` (``A``), measured by
    :func:`torchslim.core.cost.profile` on ``example_inputs``. Hence ``MACs(S) + MACs(A) <= MACs(model)``;
    rounding channels down leaves a few per cent of the budget unused (see :func:`carve_plan`). Inputs and
    the output feature keep their size, so ``S`` and ``A`` map the same input to a feature of the model's
    output shape, as :class:`ResidualStudent` needs. Because a layer between two narrowed groups costs
    ``width_in * width_out``, the width factors are about ``sqrt(ratio)`` and ``sqrt(1 - ratio)`` (they sum
    to more than 1); splitting each layer's channels disjointly between ``S`` and ``A`` would leave
    ``1 - ratio**2 - (1 - ratio)**2`` of the budget (42% at 0.7) unused.

    Args:
        model: the given student body (input -> teacher-shaped feature); FX-traceable. Not modified.
        ratio: the student's share of the budget, in (0, 1) (0.7 in the project digest; not verified against the paper's body).
        example_inputs: tuple of example inputs, e.g. ``(torch.randn(1, 1, 8, 8),)``; MACs are per this call.
        reset: re-initialise all parameters (and BatchNorm statistics) of ``S`` and ``A`` (train from scratch).
            ``False`` keeps the weights of the channels ranked highest by ``importance`` in ``model`` (the
            same top channels for both copies).
        importance: channel ranking criterion used when slicing (see :class:`torchslim.pruning.ChannelPrune`).

    Returns:
        ``(S, A)``: two new modules.

    Raises:
        ConfigError: ``ratio`` not in (0, 1), ``example_inputs`` not a tuple, ``model`` has no channel group
            that can be narrowed, or a share is too small even at one channel per group.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> body = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
        ...                      nn.Conv2d(16, 32, 3, padding=1), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        >>> s, a = carve(body, 0.7, (torch.randn(1, 1, 8, 8),))
        >>> s(torch.randn(2, 1, 8, 8)).shape == a(torch.randn(2, 1, 8, 8)).shape == torch.Size([2, 32])
        True
    """
    _, s, a = _carve(model, ratio, example_inputs, importance)
    if reset:
        _reset(s)
        _reset(a)
    return s, a
