"""Logit knowledge distillation (Hinton, Vinyals & Dean, 2015, "Distilling the Knowledge in a Neural Network"),
and logit + hidden-state distillation through a layer mapping (:class:`FeatureKD`, TextBrewer's
"logits + hidden MSE with a learned projection" configuration).

The student is trained on ``alpha * T^2 * KL(softmax(teacher/T) || softmax(student/T)) + (1 - alpha) * CE``
with the hard labels, the teacher frozen in eval mode. Training runs through :class:`torchslim.train.Trainer`,
so distillation checkpoints and resumes exactly like any other training.

Example:
    >>> from torchslim.distillation import HintonKD, distill
    >>> cfg = HintonKD(temperature=4.0, alpha=0.9)
    >>> result = distill(student, teacher, train_set, cfg, checkpoint_dir="kd")  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
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
from torchslim.distillation.engine import fit_student
from torchslim.distillation.losses import HintLoss, hidden_mse, kd_loss
from torchslim.distillation.mapping import PairShape, validate_mapping
from torchslim.distillation.taps import Taps
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
            f"cannot be compared (student {type(student).__name__} output vs teacher {type(teacher).__name__} "
            "output on the same batch); the student must output the same number of classes as the teacher "
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


# ---------------------------------------------------------------------------------------------------------
# Logit + hidden-state distillation through a layer mapping


class FeatureKD(Config):
    """Logit KD plus hidden-state MSE between mapped layers (FitNets / TextBrewer "intermediate matches").

    Loss per batch (``T`` = temperature, pairs ``(s_i, t_i)`` from ``layers``)::

        alpha * T^2 * KL(softmax(t/T) || softmax(s/T)) + (1 - alpha) * CE(s, y)
            + hidden_weight * sum_i MSE(proj_i(h_s_i), h_t_i)

    ``proj_i`` is a learned 1x1 convolution (4-D feature maps) or linear layer (other tensors) from the
    student's channels to the teacher's, trained with the student and saved in its training checkpoint.

    Attributes:
        temperature: softening temperature ``T > 0``.
        alpha: weight of the KD term in [0, 1]; ``1 - alpha`` weighs the hard-label cross-entropy.
        hidden_weight: weight of the summed hidden-state terms (>= 0).
        layers: ``{student_module_path: teacher_module_path}`` (``named_modules()`` names; >= 1 pair).
        projection: ``"auto"``: a projection only where the channel counts differ; ``"always"``: on every
            pair; ``"none"``: never (every pair must then have equal shapes).
        train: the student's training configuration.

    Example:
        >>> cfg = FeatureKD(layers={"layer3": "layer3"}, hidden_weight=1.0)
        >>> cfg.projection
        'auto'
    """

    type_name: ClassVar[str] = "feature_kd"

    temperature: Annotated[float, Field(gt=0)] = 4.0
    alpha: Annotated[float, Field(ge=0, le=1)] = 0.9
    hidden_weight: Annotated[float, Field(ge=0)] = 1.0
    layers: dict[str, str] = {}
    projection: Literal["auto", "always", "none"] = "auto"
    train: TrainConfig = TrainConfig(epochs=2, lr=0.01, schedule="cosine")


def _channels(shape: Sequence[int]) -> int:
    return int(shape[1] if len(shape) == 4 else shape[-1])


class FeatureKDLoss(nn.Module):
    """The :class:`FeatureKD` loss of one batch, with the learned projections as parameters.

    Args:
        config: the settings (temperature, alpha, hidden_weight, projection).
        pairs: the measured pairs (from :func:`~torchslim.distillation.mapping.validate_mapping`); a
            projection is created for a pair per ``config.projection``.
        seed: seeds the projections' initialisation (independent of the global RNG, so that a run and its
            re-run start from the same projections).

    Example:
        >>> pair = PairShape("fc1", "fc1", (4, 8), (4, 16))
        >>> loss = FeatureKDLoss(FeatureKD(layers={"fc1": "fc1"}), [pair])
        >>> parts = loss(torch.randn(4, 10), torch.randn(4, 10), {"fc1": torch.randn(4, 8)},
        ...              {"fc1": torch.randn(4, 16)}, torch.randint(0, 10, (4,)))
        >>> sorted(parts)
        ['ce', 'hidden', 'kd', 'loss']
    """

    def __init__(self, config: FeatureKD, pairs: Sequence[PairShape], seed: int = 0) -> None:
        super().__init__()
        self.temperature, self.alpha, self.hidden_weight = config.temperature, config.alpha, config.hidden_weight
        self.pairs = list(pairs)
        self.proj = nn.ModuleDict()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            for i, p in enumerate(self.pairs):
                differ = _channels(p.student_shape) != _channels(p.teacher_shape)
                if config.projection == "always" or (config.projection == "auto" and differ):
                    conv = len(p.student_shape) == 4
                    self.proj[str(i)] = HintLoss(_channels(p.student_shape), _channels(p.teacher_shape), conv=conv)
                elif differ:
                    raise ConfigError(
                        f"FeatureKD: student layer {p.student!r} {p.student_shape} and teacher layer {p.teacher!r} "
                        f"{p.teacher_shape} differ in channels and projection='none'; use projection='auto'"
                    )

    def forward(
        self,
        student_logits: torch.Tensor,
        teacher_logits: torch.Tensor,
        student_feats: Mapping[str, torch.Tensor],
        teacher_feats: Mapping[str, torch.Tensor],
        labels: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """``{"loss", "kd", "ce", "hidden"}`` (``loss`` is the weighted total; ``ce`` is 0 when alpha = 1)."""
        kd = kd_loss(student_logits, teacher_logits, self.temperature)
        ce = torch.zeros((), dtype=kd.dtype, device=kd.device)
        if self.alpha < 1:
            if labels is None:
                raise ConfigError(
                    f"FeatureKD: alpha = {self.alpha} < 1 needs labels, but the batches have none; "
                    "pass (x, y) items or set alpha = 1"
                )
            ce = F.cross_entropy(student_logits.reshape(-1, student_logits.shape[-1]), labels.reshape(-1))
        hidden = torch.zeros((), dtype=kd.dtype, device=kd.device)
        for i, p in enumerate(self.pairs):
            s, t = student_feats[p.student], teacher_feats[p.teacher]
            key = str(i)
            hidden = hidden + (self.proj[key](s, t) if key in self.proj else hidden_mse(s, t))
        loss = self.alpha * kd + (1 - self.alpha) * ce + self.hidden_weight * hidden
        return {"loss": loss, "kd": kd, "ce": ce, "hidden": hidden}


class FeatureKDModel(nn.Module):
    """The student and the loss's projections as one trainable module (``forward`` is the student's).

    Training this wrapper trains ``student`` in place; the projections live in ``criterion`` and are saved
    in the same training checkpoint, so an interrupted run resumes exactly.
    """

    def __init__(self, student: nn.Module, criterion: FeatureKDLoss) -> None:
        super().__init__()
        self.student = student
        self.criterion = criterion

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.student(*args, **kwargs)


def _first_batch(data: Dataset[Any], batch_size: int) -> Any:
    n = min(batch_size, len(data))  # type: ignore[arg-type]
    if n == 0:
        raise ConfigError("distill: the data set is empty; pass at least one example")
    return default_collate([data[i] for i in range(n)])


def feature_distill(
    student: torch.nn.Module,
    teacher: torch.nn.Module,
    data: Dataset[Any],
    config: FeatureKD,
    checkpoint_dir: str | Path | None = None,
    resume: bool = False,
    progress: bool = True,
    callbacks: Iterable[object] = (),
) -> tuple[TrainResult, FeatureKDLoss]:
    """Train ``student`` (in place) on the teacher's logits and mapped hidden states (:class:`FeatureKD`).

    Everything is checked on one batch before training: both models run, their logits have the same
    shape, every mapped path exists on its model and every pair's tensors are comparable (up to the
    channel dimension when a projection bridges it); each error names both sides.

    Args:
        student, teacher, data, checkpoint_dir, resume, progress, callbacks: as for :func:`distill`.
        config: a :class:`FeatureKD` with a non-empty ``layers`` mapping.

    Returns:
        the :class:`~torchslim.train.TrainResult` and the trained :class:`FeatureKDLoss` (its projections).

    Raises:
        ConfigError: empty mapping, a missing module, incomparable logits or features (names both sides).

    Example:
        >>> cfg = FeatureKD(layers={"layer3": "layer3"}, temperature=4, alpha=0.9)
        >>> result, criterion = feature_distill(student, teacher, train_set, cfg)  # doctest: +SKIP
    """
    if not isinstance(config, FeatureKD):
        raise ConfigError(f"feature_distill: config must be a FeatureKD, got {type(config).__name__}")
    if not config.layers:
        raise ConfigError(
            "feature_distill: FeatureKD.layers is empty; map at least one student layer to a teacher layer, "
            "e.g. layers={'layer3': 'layer3'} (or use HintonKD for logits only)"
        )
    pairs = list(config.layers.items())
    batch = _first_batch(data, config.train.batch_size)
    device = next(iter(student.parameters()), torch.empty(0)).device
    x0, _ = _split(to_device(batch, device))
    shapes = validate_mapping(teacher, student, pairs, x0, allow_projection=config.projection != "none")
    _check_outputs(student, teacher, data, config.train.batch_size)
    criterion = FeatureKDLoss(config, shapes, seed=config.train.seed).to(device)
    model = FeatureKDModel(student, criterion)
    s_paths, t_paths = [s for s, _ in pairs], [t for _, t in pairs]
    t_taps = Taps(teacher, t_paths, role="teacher", other=f"student ({type(student).__name__})")
    s_taps = Taps(student, s_paths, role="student", other=f"teacher ({type(teacher).__name__})")

    def step_fn(m: torch.nn.Module, batch: Any) -> torch.Tensor:
        assert isinstance(m, FeatureKDModel)
        x, y = _split(batch)
        t_taps.clear()
        s_taps.clear()
        with torch.no_grad():
            t_logits = _logits(teacher(x), "teacher")
            t_feats = {p: t_taps[p].detach() for p in t_paths}
        s_logits = _logits(m.student(x), "student")
        s_feats = {p: s_taps[p] for p in s_paths}
        return m.criterion(s_logits, t_logits, s_feats, t_feats, y)["loss"]

    try:
        result = fit_student(
            model,
            teacher,
            data,
            config.train,
            step_fn,
            callbacks=callbacks,
            checkpoint_dir=checkpoint_dir,
            resume=resume,
            progress=progress,
        )
    finally:
        t_taps.remove()
        s_taps.remove()
    return result, criterion
