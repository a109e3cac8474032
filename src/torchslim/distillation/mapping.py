"""Layer mapping between a teacher and a student of different depth and width.

Strategies (``m`` student layers, ``n`` teacher layers, 1-based):

* ``"uniform"``: student layer ``i`` -> teacher layer ``round(i * n / m)`` (TinyBERT / PKD-skip: spread over
  the teacher's depth; the last student layer maps to the last teacher layer);
* ``"last"``: student layer ``i`` -> teacher layer ``n - m + i`` (PKD-last: the teacher's top ``m`` layers);
* ``"explicit"``: a user-given ``{student_path: teacher_path}``.

:func:`validate_mapping` runs one example batch through both models with :class:`~torchslim.distillation.taps.Taps`
and checks the mapped tensors before any training, naming both sides of a bad pair.

Example:
    >>> map_layers(["t1", "t2", "t3", "t4"], ["s1", "s2"], "uniform")
    [('s1', 't2'), ('s2', 't4')]
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

from torchslim.core.errors import ConfigError
from torchslim.distillation.taps import Taps, resolve_paths

Strategy = Literal["uniform", "last", "explicit"]


def map_layers(
    teacher_layers: Sequence[str],
    student_layers: Sequence[str],
    strategy: Strategy = "uniform",
    explicit: Mapping[str, str] | None = None,
) -> list[tuple[str, str]]:
    """Pair student layers with teacher layers.

    Args:
        teacher_layers: teacher layer paths, input to output.
        student_layers: student layer paths, input to output.
        strategy: ``"uniform"``, ``"last"`` or ``"explicit"`` (see the module docstring).
        explicit: ``{student_path: teacher_path}`` for ``"explicit"``; each key must be in ``student_layers``
            (when that is non-empty) and each value in ``teacher_layers`` (when non-empty).

    Returns:
        ``[(student_path, teacher_path), ...]`` in student order.

    Raises:
        ConfigError: unknown strategy, empty layer lists, a student deeper than the teacher (uniform/last), or
            explicit names outside the given lists (naming the side and the bad name).
    """
    if strategy == "explicit":
        if not explicit:
            raise ConfigError("map_layers: strategy 'explicit' needs explicit={student_path: teacher_path}")
        for s, t in explicit.items():
            if student_layers and s not in student_layers:
                raise ConfigError(
                    f"map_layers: student layer {s!r} is not among the student layers {list(student_layers)}"
                )
            if teacher_layers and t not in teacher_layers:
                raise ConfigError(
                    f"map_layers: teacher layer {t!r} (mapped from student layer {s!r}) is not among the teacher "
                    f"layers {list(teacher_layers)}"
                )
        return list(explicit.items())
    if strategy not in ("uniform", "last"):
        raise ConfigError(f"map_layers: unknown strategy {strategy!r} (allowed: uniform, last, explicit)")
    n, m = len(teacher_layers), len(student_layers)
    if n == 0 or m == 0:
        raise ConfigError(f"map_layers: need at least one layer on each side (teacher: {n}, student: {m})")
    if m > n:
        raise ConfigError(
            f"map_layers: the student has {m} layers and the teacher only {n}; strategy {strategy!r} maps each "
            "student layer to a distinct teacher layer: pass fewer student layers or strategy='explicit'"
        )
    if strategy == "uniform":
        idx = [int(round((i + 1) * n / m)) - 1 for i in range(m)]
    else:
        idx = [n - m + i for i in range(m)]
    return [(student_layers[i], teacher_layers[j]) for i, j in enumerate(idx)]


@dataclass(frozen=True)
class PairShape:
    """Shapes of one mapped pair measured on an example batch."""

    student: str
    teacher: str
    student_shape: tuple[int, ...]
    teacher_shape: tuple[int, ...]

    @property
    def same_shape(self) -> bool:
        return self.student_shape == self.teacher_shape


def validate_mapping(
    teacher: nn.Module,
    student: nn.Module,
    pairs: Sequence[tuple[str, str]],
    example_input: Any,
    allow_projection: bool = False,
) -> list[PairShape]:
    """Check a layer mapping before training: both paths exist and the captured tensors are comparable.

    Args:
        teacher: the teacher model.
        student: the student model.
        pairs: ``[(student_path, teacher_path), ...]`` (from :func:`map_layers`).
        example_input: one batch for both models (a tensor, or a tuple of positional inputs).
        allow_projection: accept pairs that differ only in the channel dimension (dim 1 for 4-D maps, the
            last dim otherwise), to be bridged by a learned projection (``HintLoss``).

    Returns:
        the measured :class:`PairShape` of every pair.

    Raises:
        ConfigError: a path is missing (names both models and the close matches) or a pair's shapes cannot
            be compared (names both layers and both shapes, and the fix).
    """
    t_desc, s_desc = f"teacher ({type(teacher).__name__})", f"student ({type(student).__name__})"
    for s, t in pairs:  # name both sides of a pair whose module is missing
        try:
            resolve_paths(student, [s], "student", t_desc)
            resolve_paths(teacher, [t], "teacher", s_desc)
        except ConfigError as err:
            raise ConfigError(f"layer mapping: pair student {s!r} -> teacher {t!r}: {err}") from err
    args = example_input if isinstance(example_input, tuple) else (example_input,)
    t_was, s_was = teacher.training, student.training
    teacher.eval()
    student.eval()
    try:
        with (
            torch.no_grad(),
            Taps(teacher, [t for _, t in pairs], role="teacher") as tt,
            Taps(student, [s for s, _ in pairs], role="student") as st,
        ):
            teacher(*args)
            student(*args)
            shapes = [PairShape(s, t, tuple(st[s].shape), tuple(tt[t].shape)) for s, t in pairs]
    finally:
        teacher.train(t_was)
        student.train(s_was)
    for p in shapes:
        if p.same_shape:
            continue
        ss, ts = p.student_shape, p.teacher_shape
        ch = 1 if len(ss) == 4 else len(ss) - 1
        only_channels = len(ss) == len(ts) and all(
            a == b for i, (a, b) in enumerate(zip(ss, ts, strict=True)) if i != ch
        )
        if allow_projection and only_channels:
            continue
        fix = (
            "use HintLoss (a learned projection) or allow_projection=True"
            if only_channels
            else "map layers at the same resolution / sequence length, or pool one side"
        )
        raise ConfigError(
            f"layer mapping: student layer {p.student!r} of the {s_desc} gives {ss} but teacher layer "
            f"{p.teacher!r} of the {t_desc} gives {ts}; {fix}"
        )
    return shapes
