"""Build a shallower and/or narrower BERT student from a teacher's config.

:func:`build_student` returns a :class:`~torchslim.zoo.minilm.MiniLMEncoder` (mean pooling + L2 norm, the
teacher's tokenizer), so ``.encode(texts)`` works exactly as for the teacher. Two initialisations:

- ``init="teacher"``: same width as the teacher; the embeddings and a subset of the teacher's layers are
  copied (default: every other layer, ending at the top, e.g. layers 1, 3, 5 of 6 for a 3-layer student);
- ``init="scratch"``: random weights (``transformers``' BERT initialisation) of any depth/width.

:func:`build_assistant` builds MiniLM's teacher assistant (paper section 3.3): the teacher's depth with the
student's width, heads and feed-forward size; :func:`needs_assistant` is the paper's rule for when to use
one (student depth <= half the teacher's and width <= half the teacher's).

Example:
    >>> from torchslim.zoo.minilm import minilm
    >>> from torchslim.distillation.student import build_student
    >>> teacher = minilm()                                              # doctest: +SKIP
    >>> student = build_student(teacher, num_layers=3)                  # doctest: +SKIP
    >>> narrow = build_student(teacher, num_layers=3, hidden_size=192, init="scratch")  # doctest: +SKIP
    >>> student.encode(["Flu season is here"]).shape                    # doctest: +SKIP
    torch.Size([1, 384])
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any, Literal

import torch

from torchslim.core.errors import ConfigError
from torchslim.zoo.minilm import MiniLMEncoder

__all__ = ["build_assistant", "build_student", "every_other_layer", "needs_assistant"]


def every_other_layer(teacher_layers: int, student_layers: int) -> list[int]:
    """Evenly spaced teacher layer indices ending at the last one: ``round((i+1) * L / n) - 1``.

    ``every_other_layer(6, 3) == [1, 3, 5]``; ``every_other_layer(6, 2) == [2, 5]``.
    """
    if not 1 <= student_layers <= teacher_layers:
        raise ConfigError(
            f"every_other_layer: the student needs 1..{teacher_layers} layers to copy from a {teacher_layers}-layer "
            f"teacher, got {student_layers} (use init='scratch' for a deeper student)"
        )
    return [round((i + 1) * teacher_layers / student_layers) - 1 for i in range(student_layers)]


def build_student(
    teacher: MiniLMEncoder,
    num_layers: int = 3,
    hidden_size: int | None = None,
    num_heads: int | None = None,
    intermediate_size: int | None = None,
    init: Literal["teacher", "scratch"] = "teacher",
    layers: Sequence[int] | None = None,
    seed: int = 0,
) -> MiniLMEncoder:
    """A BERT student built from ``teacher``'s config, wrapped as a ``MiniLMEncoder`` (train mode).

    Args:
        teacher: a ``MiniLMEncoder`` (e.g. ``torchslim.zoo.minilm.minilm()``); left unchanged.
        num_layers: student depth (>= 1).
        hidden_size: student width (default: the teacher's); must be a multiple of ``num_heads``.
        num_heads: attention heads (default: the teacher's; MiniLM distillation needs them equal).
        intermediate_size: feed-forward width (default: ``4 * hidden_size`` when the width changes, else the
            teacher's).
        init: ``"teacher"`` copies the embeddings and ``layers`` of the teacher (needs the teacher's width,
            heads and feed-forward size); ``"scratch"`` initialises randomly.
        layers: teacher layer indices to copy (``init="teacher"``); default :func:`every_other_layer`.
        seed: seeds the random initialisation (``init="scratch"`` and any layer not copied).

    Raises:
        ConfigError: bad sizes, a width that the heads do not divide, copying from a teacher of another
            width, or layer indices out of range (each message names the values and the fix).
    """
    if not isinstance(teacher, MiniLMEncoder):
        raise ConfigError(
            f"build_student: teacher must be a MiniLMEncoder (torchslim.zoo.minilm.minilm()), got {type(teacher).__name__}"
        )
    from transformers import BertModel

    src: Any = teacher.model
    t_cfg: Any = src.config
    t_layers = int(t_cfg.num_hidden_layers)
    width = int(hidden_size or t_cfg.hidden_size)
    heads = int(num_heads or t_cfg.num_attention_heads)
    if num_layers < 1 or width < 1 or heads < 1:
        raise ConfigError(
            f"build_student: num_layers, hidden_size and num_heads must be >= 1, got {num_layers}, {width}, {heads}"
        )
    if width % heads:
        raise ConfigError(
            f"build_student: hidden_size {width} is not a multiple of num_heads {heads}; pick e.g. "
            f"hidden_size={heads * max(1, width // heads)}"
        )
    if intermediate_size is None:
        intermediate_size = int(t_cfg.intermediate_size) if width == int(t_cfg.hidden_size) else 4 * width
    if init not in ("teacher", "scratch"):
        raise ConfigError(f"build_student: init must be 'teacher' or 'scratch', got {init!r}")

    cfg = copy.deepcopy(t_cfg)
    cfg.num_hidden_layers = int(num_layers)
    cfg.hidden_size = width
    cfg.num_attention_heads = heads
    cfg.intermediate_size = int(intermediate_size)
    torch.manual_seed(seed)
    model: Any = BertModel(cfg, add_pooling_layer=getattr(src, "pooler", None) is not None)

    if init == "teacher":
        same = (
            width == int(t_cfg.hidden_size)
            and heads == int(t_cfg.num_attention_heads)
            and int(intermediate_size) == int(t_cfg.intermediate_size)
        )
        if not same:
            raise ConfigError(
                f"build_student: init='teacher' copies the teacher's weights, so it needs the teacher's sizes "
                f"(hidden_size {t_cfg.hidden_size}, num_heads {t_cfg.num_attention_heads}, intermediate_size "
                f"{t_cfg.intermediate_size}), got ({width}, {heads}, {intermediate_size}); use init='scratch' "
                "for a narrower student"
            )
        picks = list(layers) if layers is not None else every_other_layer(t_layers, num_layers)
        if len(picks) != num_layers or any(not 0 <= i < t_layers for i in picks):
            raise ConfigError(
                f"build_student: layers={picks} must hold {num_layers} indices in 0..{t_layers - 1}"
            )
        model.embeddings.load_state_dict(src.embeddings.state_dict())
        for dst_i, src_i in enumerate(picks):
            model.encoder.layer[dst_i].load_state_dict(src.encoder.layer[src_i].state_dict())
        if model.pooler is not None and getattr(src, "pooler", None) is not None:
            model.pooler.load_state_dict(src.pooler.state_dict())
    elif layers is not None:
        raise ConfigError("build_student: layers= only applies to init='teacher'")

    student = MiniLMEncoder(
        model, teacher.tokenizer, max_length=teacher.max_length, normalize=teacher.normalize
    )
    return student.train()


def _sizes(model: MiniLMEncoder, who: str) -> tuple[int, int, int, int]:
    """``(layers, hidden, heads, intermediate)`` of a ``MiniLMEncoder``'s BERT config."""
    if not isinstance(model, MiniLMEncoder):
        raise ConfigError(f"{who} must be a MiniLMEncoder, got {type(model).__name__}")
    cfg: Any = model.model.config
    return (
        int(cfg.num_hidden_layers),
        int(cfg.hidden_size),
        int(cfg.num_attention_heads),
        int(cfg.intermediate_size),
    )


def needs_assistant(teacher: MiniLMEncoder, student: MiniLMEncoder) -> bool:
    """MiniLM's rule (section 3.3): use a teacher assistant when ``M <= L/2`` **and** ``d'_h <= d_h/2``.

    ``L``, ``d_h``: the teacher's depth and width; ``M``, ``d'_h``: the student's.

    Example:
        >>> from torchslim.zoo.minilm import minilm
        >>> t = minilm()                                                               # doctest: +SKIP
        >>> needs_assistant(t, build_student(t, 3, hidden_size=192, init="scratch"))   # doctest: +SKIP
        True
    """
    t_layers, t_width, _, _ = _sizes(teacher, "needs_assistant: teacher")
    s_layers, s_width, _, _ = _sizes(student, "needs_assistant: student")
    return 2 * s_layers <= t_layers and 2 * s_width <= t_width


def build_assistant(teacher: MiniLMEncoder, student: MiniLMEncoder, seed: int = 0) -> MiniLMEncoder:
    """MiniLM's teacher assistant for ``student``: the teacher's depth ``L`` with the student's width ``d'_h``.

    The assistant has the student's hidden size, head count and feed-forward width and the teacher's number
    of layers (paper section 3.3: "distill the teacher into a teacher assistant with L-layer Transformer and
    d'_h hidden size"); it is randomly initialised (its width differs from the teacher's, so no layer can be
    copied). Distil teacher -> assistant, then assistant -> student, e.g. with
    :func:`torchslim.distillation.methods.minilm.distill_with_assistant`.

    Args:
        teacher: a ``MiniLMEncoder``; left unchanged.
        student: the final student (a ``MiniLMEncoder``); only its sizes are read.
        seed: seeds the assistant's random initialisation.

    Raises:
        ConfigError: a model is not a ``MiniLMEncoder``, or the student is as deep as the teacher (the
            assistant would have the student's shape: distil directly).

    Example:
        >>> from torchslim.zoo.minilm import minilm
        >>> t = minilm()                                                          # doctest: +SKIP
        >>> s = build_student(t, num_layers=3, hidden_size=192, init="scratch")   # doctest: +SKIP
        >>> ta = build_assistant(t, s)                                            # doctest: +SKIP
        >>> ta.model.config.num_hidden_layers, ta.dim                             # doctest: +SKIP
        (6, 192)
    """
    t_layers, _, _, _ = _sizes(teacher, "build_assistant: teacher")
    s_layers, s_width, s_heads, s_inter = _sizes(student, "build_assistant: student")
    if s_layers >= t_layers:
        raise ConfigError(
            f"build_assistant: the student already has {s_layers} layers and the teacher {t_layers}; an assistant "
            "(teacher depth, student width) would have the student's own shape: distil the student directly"
        )
    return build_student(
        teacher,
        num_layers=t_layers,
        hidden_size=s_width,
        num_heads=s_heads,
        intermediate_size=s_inter,
        init="scratch",
        seed=seed,
    )
