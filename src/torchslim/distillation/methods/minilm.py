"""MiniLM deep self-attention distillation (Wang et al., 2020, "MiniLM", arXiv 2002.10957).

The student mimics only the teacher's **last** Transformer layer's self-attention module, through two
relations computed per head ``a`` and query position ``t``:

- attention distributions ``A = softmax(Q K^T / sqrt(d_k))`` -> ``L_AT = mean_{a,t} KL(A^T_{a,t} || A^S_{a,t})``;
- value relations ``VR = softmax(V V^T / sqrt(d_k))`` -> ``L_VR = mean_{a,t} KL(VR^T_{a,t} || VR^S_{a,t})``;

and is trained on ``L_AT + L_VR`` (unlabelled text only). ``d_k`` is each model's own head width, so the
student may have any depth and hidden size; only the number of heads must match (checked before training).

Q, K and V are captured by forward hooks on the ``query``/``key``/``value`` projections of the last
``transformers`` BERT layer, so the losses work whatever attention kernel the model runs (eager or SDPA)
and see the attention probabilities before attention dropout. Padded positions are excluded: they get
no probability mass as keys and are not averaged over as queries. :func:`attention_relation` equals
``output_attentions=True`` of eager attention (tested).

:func:`hidden_mse_loss` (MSE of last hidden states; same width needed) is the baseline the paper compares
against; select it with ``MiniLMDistill(objective="hidden_mse")``.

Example:
    >>> from torchslim.zoo.minilm import minilm
    >>> from torchslim.distillation.student import build_student
    >>> from torchslim.distillation.methods.minilm import MiniLMDistill, minilm_distill
    >>> teacher = minilm()                                            # doctest: +SKIP
    >>> student = build_student(teacher, num_layers=3)                # doctest: +SKIP
    >>> minilm_distill(student, teacher, sentences, MiniLMDistill())  # doctest: +SKIP
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn
from torch.utils.data import Dataset

from torchslim.core.config import Config
from torchslim.core.errors import ConfigError, UnsupportedModelError
from torchslim.distillation.engine import fit_student
from torchslim.train.trainer import TrainConfig, TrainResult

__all__ = [
    "MiniLMDistill",
    "attention_relation",
    "bert_of",
    "capture_last_attention",
    "check_heads",
    "hidden_mse_loss",
    "minilm_distill",
    "minilm_losses",
    "relation_kl",
    "value_relation",
]


# --------------------------------------------------------------------------- model access
def bert_of(model: nn.Module) -> Any:
    """The ``transformers`` BERT encoder inside ``model`` (a ``MiniLMEncoder`` or the BertModel itself).

    Raises:
        UnsupportedModelError: ``model`` has no BERT-style ``encoder.layer`` list of self-attention layers.
    """
    inner = getattr(model, "model", None)
    bert: Any = inner if isinstance(inner, nn.Module) and hasattr(inner, "encoder") else model
    layers = getattr(getattr(bert, "encoder", None), "layer", None)
    if not isinstance(layers, nn.ModuleList) or len(layers) == 0:
        raise UnsupportedModelError(
            f"MiniLM distillation needs a transformers BertModel (or a MiniLMEncoder wrapping one) with "
            f"encoder.layer; got {type(model).__name__}"
        )
    self_attn = getattr(getattr(layers[-1], "attention", None), "self", None)
    if self_attn is None or not all(hasattr(self_attn, n) for n in ("query", "key", "value")):
        raise UnsupportedModelError(
            f"MiniLM distillation: the last layer of {type(bert).__name__} has no attention.self.query/key/value "
            "projections (only BERT-style self-attention is supported)"
        )
    pos = getattr(getattr(bert, "config", None), "position_embedding_type", "absolute")
    if pos not in (None, "absolute"):
        raise UnsupportedModelError(
            f"MiniLM distillation: position_embedding_type={pos!r} adds relative-position scores the hooks do not "
            "see; only 'absolute' is supported"
        )
    return bert


def _heads(model: nn.Module) -> int:
    return int(bert_of(model).config.num_attention_heads)


def check_heads(teacher: nn.Module, student: nn.Module) -> None:
    """Fail unless teacher and student have the same number of attention heads (MiniLM needs it).

    Raises:
        ConfigError: naming both head counts.
    """
    t, s = _heads(teacher), _heads(student)
    if t != s:
        t_path, s_path = _last_attention_path(teacher), _last_attention_path(student)
        raise ConfigError(
            f"MiniLM distillation needs the same number of attention heads: the teacher has {t} heads, the "
            f"student has {s} (teacher {type(teacher).__name__} module {t_path!r}: {t} heads; student "
            f"{type(student).__name__} module {s_path!r}: {s} heads); build the student with "
            f"num_attention_heads={t} (its hidden size must be a multiple of {t}), e.g. "
            f"build_student(teacher, num_heads={t})"
        )


def _last_attention_path(model: nn.Module) -> str:
    """Dotted path (in ``model.named_modules()``) of the last layer's self-attention module."""
    target = bert_of(model).encoder.layer[-1].attention.self
    for name, mod in model.named_modules():
        if mod is target:
            return name
    return "encoder.layer.-1.attention.self"


@contextmanager
def capture_last_attention(model: nn.Module) -> Iterator[dict[str, torch.Tensor]]:
    """Hook the last layer's ``query``/``key``/``value`` projections; yields a dict they fill.

    After a forward pass, the dict holds ``"q"``, ``"k"``, ``"v"`` as ``[batch, heads, seq, head_dim]``.
    The hooks are removed on exit.
    """
    bert = bert_of(model)
    heads = int(bert.config.num_attention_heads)
    attn = bert.encoder.layer[-1].attention.self
    store: dict[str, torch.Tensor] = {}

    def hook(name: str) -> Any:
        def fn(_mod: nn.Module, _inp: Any, out: torch.Tensor) -> None:
            b, t, d = out.shape
            store[name] = out.view(b, t, heads, d // heads).transpose(1, 2)

        return fn

    handles = [getattr(attn, n).register_forward_hook(hook(n[0])) for n in ("query", "key", "value")]
    try:
        yield store
    finally:
        for h in handles:
            h.remove()


# --------------------------------------------------------------------------- losses (pure tensor functions)
def _masked_log_softmax(scores: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    if mask is not None:
        keep = mask[:, None, None, :].to(torch.bool)
        scores = scores.masked_fill(~keep, torch.finfo(scores.dtype).min)
    return F.log_softmax(scores, dim=-1)


def attention_relation(q: torch.Tensor, k: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Log of the attention distributions ``softmax(Q K^T / sqrt(d_k))``, ``[B, H, T, T]``.

    Args:
        q: queries ``[B, H, T, d_k]``.
        k: keys ``[B, H, T, d_k]``.
        mask: ``[B, T]`` attention mask (1 = token, 0 = padding); padded keys get probability 0.
    """
    return _masked_log_softmax(q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]), mask)


def value_relation(v: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Log of the value relation ``softmax(V V^T / sqrt(d_k))``, ``[B, H, T, T]`` (``v``: ``[B, H, T, d_k]``)."""
    return attention_relation(v, v, mask)


def relation_kl(
    teacher_log: torch.Tensor, student_log: torch.Tensor, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """``mean_{batch, head, query} KL(teacher row || student row)`` of two ``[B, H, T, T]`` log-distributions.

    Rows of padded queries (``mask`` 0) are left out of the mean; padded keys contribute nothing.
    """
    if teacher_log.shape != student_log.shape:
        raise ConfigError(
            f"relation_kl: teacher relation {tuple(teacher_log.shape)} and student relation "
            f"{tuple(student_log.shape)} differ; they need the same batch, heads and sequence length"
        )
    t_log = teacher_log.detach()
    kl = t_log.exp() * (t_log - student_log)  # [B, H, T, T]
    if mask is None:
        return kl.sum(-1).mean()
    m = mask.to(kl.dtype)
    kl = kl * m[:, None, None, :]
    rows = kl.sum(-1) * m[:, None, :]  # [B, H, T]
    return rows.sum() / (m.sum() * kl.shape[1]).clamp(min=1.0)


def minilm_losses(
    teacher_qkv: dict[str, torch.Tensor],
    student_qkv: dict[str, torch.Tensor],
    mask: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(L_AT, L_VR)`` from captured last-layer ``{"q", "k", "v"}`` tensors ``[B, H, T, d_k]`` of both models.

    Raises:
        ConfigError: the head counts differ (names both).
    """
    th, sh = teacher_qkv["q"].shape[1], student_qkv["q"].shape[1]
    if th != sh:
        raise ConfigError(
            f"minilm_losses: the teacher has {th} attention heads, the student {sh}; MiniLM needs equal head counts"
        )
    at = relation_kl(
        attention_relation(teacher_qkv["q"], teacher_qkv["k"], mask),
        attention_relation(student_qkv["q"], student_qkv["k"], mask),
        mask,
    )
    vr = relation_kl(value_relation(teacher_qkv["v"], mask), value_relation(student_qkv["v"], mask), mask)
    return at, vr


def hidden_mse_loss(
    teacher_hidden: torch.Tensor, student_hidden: torch.Tensor, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Mean squared error of last hidden states ``[B, T, D]`` over the unpadded positions (baseline).

    Raises:
        ConfigError: the widths differ (hidden-state MSE needs ``student hidden_size == teacher hidden_size``).
    """
    if teacher_hidden.shape != student_hidden.shape:
        raise ConfigError(
            f"hidden_mse_loss: teacher hidden states {tuple(teacher_hidden.shape)} and student "
            f"{tuple(student_hidden.shape)} differ; hidden-state MSE needs equal widths (use the MiniLM objective, "
            "which allows any student width)"
        )
    sq = (student_hidden - teacher_hidden.detach()).pow(2).mean(-1)  # [B, T]
    if mask is None:
        return sq.mean()
    m = mask.to(sq.dtype)
    return (sq * m).sum() / m.sum().clamp(min=1.0)


# --------------------------------------------------------------------------- training
class MiniLMDistill(Config):
    """MiniLM distillation settings.

    Attributes:
        objective: ``"minilm"`` (``L_AT + value_weight * L_VR``, the paper) or ``"hidden_mse"`` (baseline:
            MSE of last hidden states).
        value_weight: weight of the value-relation term (the paper uses 1).
        max_length: tokens per text (longer texts are truncated).
        train: the student's training configuration (AdamW, as in the paper).
    """

    type_name: ClassVar[str] = "minilm_distill"

    objective: Literal["minilm", "hidden_mse"] = "minilm"
    value_weight: Annotated[float, Field(ge=0)] = 1.0
    max_length: Annotated[int, Field(ge=2)] = 128
    train: TrainConfig = TrainConfig(
        epochs=1,
        batch_size=32,
        lr=5e-4,
        optimizer="adamw",
        weight_decay=0.01,
        schedule="onecycle",
        grad_clip=1.0,
    )


class _Texts(Dataset[str]):
    def __init__(self, texts: Sequence[str]) -> None:
        self.texts = [t for t in texts if isinstance(t, str) and t.strip()]

    def __len__(self) -> int:
        return len(self.texts)

    def __getitem__(self, i: int) -> str:
        return self.texts[i]


def _tokenizer(model: nn.Module, who: str) -> Any:
    tok = getattr(model, "tokenizer", None)
    if tok is None:
        raise ConfigError(
            f"minilm_distill: the {who} has no .tokenizer; pass MiniLMEncoder models "
            "(torchslim.zoo.minilm.minilm() and torchslim.distillation.student.build_student)"
        )
    return tok


def minilm_distill(
    student: nn.Module,
    teacher: nn.Module,
    texts: Sequence[str],
    config: MiniLMDistill | None = None,
    checkpoint_dir: str | Path | None = None,
    resume: bool = False,
    progress: bool = True,
    callbacks: Iterable[object] = (),
) -> TrainResult:
    """Train ``student`` (in place) on unlabelled ``texts`` to mimic ``teacher``'s last self-attention layer.

    Args:
        student: a ``MiniLMEncoder`` (e.g. from :func:`torchslim.distillation.student.build_student`); its
            tokenizer is used for both models, so teacher and student must share the vocabulary.
        teacher: a ``MiniLMEncoder`` (e.g. ``torchslim.zoo.minilm.minilm()``); frozen, eval mode, no grad.
        texts: unlabelled sentences.
        config: a :class:`MiniLMDistill` (default ``MiniLMDistill()``).
        checkpoint_dir: where the training checkpoint ``last.pt`` goes.
        resume: continue from ``checkpoint_dir/last.pt`` if present.
        progress: show a progress bar.
        callbacks: extra :class:`~torchslim.train.Trainer` callbacks.

    Raises:
        ConfigError: head counts differ (``objective="minilm"``, checked before training, names both),
            widths differ (``"hidden_mse"``), vocabularies differ, or no non-empty text.
        UnsupportedModelError: a model is not a BERT-style encoder.
    """
    config = MiniLMDistill() if config is None else config
    if not isinstance(config, MiniLMDistill):
        raise ConfigError(f"minilm_distill: config must be a MiniLMDistill, got {type(config).__name__}")
    s_bert, t_bert = bert_of(student), bert_of(teacher)
    if config.objective == "minilm":
        check_heads(teacher, student)
    elif int(s_bert.config.hidden_size) != int(t_bert.config.hidden_size):
        raise ConfigError(
            f"minilm_distill: objective='hidden_mse' needs equal widths, but the teacher's hidden_size is "
            f"{t_bert.config.hidden_size} and the student's {s_bert.config.hidden_size}; use objective='minilm'"
        )
    if int(s_bert.config.vocab_size) != int(t_bert.config.vocab_size):
        raise ConfigError(
            f"minilm_distill: teacher vocab_size {t_bert.config.vocab_size} != student {s_bert.config.vocab_size}; "
            "both read the same token ids, so build the student from the teacher's config"
        )
    tokenizer = _tokenizer(student, "student")
    data = _Texts(texts)
    if len(data) == 0:
        raise ConfigError("minilm_distill: no non-empty text to distil on; pass a list of sentences")
    objective, vw, max_len = config.objective, config.value_weight, config.max_length

    def step_fn(model: nn.Module, batch: Any) -> torch.Tensor:
        enc = tokenizer(list(batch), padding=True, truncation=True, max_length=max_len, return_tensors="pt")
        device = next(model.parameters()).device
        inputs = {
            k: v.to(device) for k, v in enc.items() if k in ("input_ids", "attention_mask", "token_type_ids")
        }
        mask = inputs["attention_mask"]
        s_model = bert_of(model)
        if objective == "minilm":
            with torch.no_grad(), capture_last_attention(t_bert) as t_qkv:
                t_bert(**inputs)
            with capture_last_attention(s_model) as s_qkv:
                s_model(**inputs)
            at, vr = minilm_losses(t_qkv, s_qkv, mask)
            return at + vw * vr
        with torch.no_grad():
            t_hidden = t_bert(**inputs).last_hidden_state
        s_hidden = s_model(**inputs).last_hidden_state
        return hidden_mse_loss(t_hidden, s_hidden, mask)

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
