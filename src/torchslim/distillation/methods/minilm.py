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
against; select it with ``MiniLMDistill(objective="hidden_mse")``. ``objective="embedding"`` (1 - cosine of
the pooled sentence embeddings, the encoder's output: the "logit-only" baseline of an encoder without logits)
is the other baseline.

Teacher assistant (paper section 3.3): :func:`distill_with_assistant` distils the teacher into an assistant
with the teacher's depth and the student's width (:func:`torchslim.distillation.student.build_assistant`), then
the assistant into the student, both with the MiniLM losses.

Downstream fine-tuning (how the paper evaluates students): :func:`fine_tune_classifier` puts a linear head on
the mean-pooled last hidden states (:class:`SentenceClassifier`) and trains the whole model with cross-entropy;
:func:`classifier_accuracy` scores it.

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
from dataclasses import dataclass
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
from torchslim.train.trainer import TrainConfig, Trainer, TrainResult
from torchslim.zoo.minilm import MiniLMEncoder, mean_pool

__all__ = [
    "AssistantDistillResult",
    "MiniLMDistill",
    "SentenceClassifier",
    "attention_relation",
    "bert_of",
    "capture_last_attention",
    "check_heads",
    "classifier_accuracy",
    "distill_with_assistant",
    "embedding_cosine_loss",
    "fine_tune_classifier",
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


def embedding_cosine_loss(
    teacher_hidden: torch.Tensor, student_hidden: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    """``mean_batch (1 - cos(mean_pool(student), mean_pool(teacher)))`` of last hidden states ``[B, T, D]``.

    The sentence embedding is the encoder's output, so this is the "logit-only" baseline for an encoder.

    Raises:
        ConfigError: the widths differ (names both shapes).
    """
    if teacher_hidden.shape != student_hidden.shape:
        raise ConfigError(
            f"embedding_cosine_loss: teacher hidden states {tuple(teacher_hidden.shape)} and student "
            f"{tuple(student_hidden.shape)} differ; the embedding objective needs equal widths (use the MiniLM "
            "objective, which allows any student width)"
        )
    t = mean_pool(teacher_hidden.detach(), mask)
    s_ = mean_pool(student_hidden, mask)
    return (1.0 - F.cosine_similarity(s_, t, dim=-1)).mean()


# --------------------------------------------------------------------------- training
class MiniLMDistill(Config):
    """MiniLM distillation settings.

    Attributes:
        objective: ``"minilm"`` (``L_AT + value_weight * L_VR``, the paper), ``"hidden_mse"`` (baseline:
            MSE of last hidden states) or ``"embedding"`` (baseline: 1 - cosine of the pooled sentence
            embeddings, the encoder's output; "logit-only").
        value_weight: weight of the value-relation term (the paper uses 1).
        max_length: tokens per text (longer texts are truncated).
        train: the student's training configuration (AdamW, as in the paper).
    """

    type_name: ClassVar[str] = "minilm_distill"

    objective: Literal["minilm", "hidden_mse", "embedding"] = "minilm"
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
            widths differ (``"hidden_mse"``, ``"embedding"``), vocabularies differ, or no non-empty text.
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
            f"minilm_distill: objective={config.objective!r} needs equal widths, but the teacher's hidden_size is "
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
        if objective == "embedding":
            return embedding_cosine_loss(t_hidden, s_hidden, mask)
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


# --------------------------------------------------------------------------- teacher assistant
@dataclass
class AssistantDistillResult:
    """What :func:`distill_with_assistant` returns.

    Attributes:
        assistant: the distilled teacher assistant (teacher depth, student width), eval mode.
        assistant_result: training result of teacher -> assistant.
        student_result: training result of assistant -> student.
    """

    assistant: MiniLMEncoder
    assistant_result: TrainResult
    student_result: TrainResult


def distill_with_assistant(
    student: MiniLMEncoder,
    teacher: MiniLMEncoder,
    texts: Sequence[str],
    config: MiniLMDistill | None = None,
    assistant: MiniLMEncoder | None = None,
    assistant_config: MiniLMDistill | None = None,
    checkpoint_dir: str | Path | None = None,
    resume: bool = False,
    progress: bool = True,
) -> AssistantDistillResult:
    """MiniLM with a teacher assistant (paper section 3.3): teacher -> assistant, then assistant -> student.

    Both stages use the MiniLM losses on the same unlabelled ``texts``. The assistant (default
    :func:`torchslim.distillation.student.build_assistant`: the teacher's depth, the student's width, heads and
    feed-forward size, random initialisation) is trained first, then frozen and used as the student's teacher.
    The paper uses an assistant for small students (depth <= L/2 and width <= d_h/2;
    :func:`torchslim.distillation.student.needs_assistant`); this function does not enforce the rule.

    Args:
        student: the final student (``MiniLMEncoder``), trained in place.
        teacher: the teacher (``MiniLMEncoder``), frozen.
        texts: unlabelled sentences (both stages).
        config: the student stage's :class:`MiniLMDistill` (``objective`` must be ``"minilm"``).
        assistant: a ready assistant to distil into (default: built by ``build_assistant``).
        assistant_config: the assistant stage's settings (default: ``config``).
        checkpoint_dir: checkpoints go to ``checkpoint_dir/assistant`` and ``checkpoint_dir/student``.
        resume: resume each stage from its checkpoint (a finished assistant stage is not retrained).
        progress: show progress bars.

    Raises:
        ConfigError: a non-MiniLM objective, or head counts that differ between teacher, assistant and student
            (checked before any training, naming both sides).

    Example:
        >>> from torchslim.zoo.minilm import minilm
        >>> from torchslim.distillation.student import build_student
        >>> teacher = minilm()                                                             # doctest: +SKIP
        >>> student = build_student(teacher, num_layers=3, hidden_size=192, init="scratch")  # doctest: +SKIP
        >>> res = distill_with_assistant(student, teacher, sentences, MiniLMDistill())     # doctest: +SKIP
        >>> res.assistant.model.config.num_hidden_layers, res.assistant.dim               # doctest: +SKIP
        (6, 192)
    """
    from torchslim.distillation.student import build_assistant

    config = MiniLMDistill() if config is None else config
    a_config = config if assistant_config is None else assistant_config
    for name, c in (("config", config), ("assistant_config", a_config)):
        if not isinstance(c, MiniLMDistill):
            raise ConfigError(f"distill_with_assistant: {name} must be a MiniLMDistill, got {type(c).__name__}")
        if c.objective != "minilm":
            raise ConfigError(
                f"distill_with_assistant: {name}.objective is {c.objective!r}; the teacher assistant is part of "
                "MiniLM, use objective='minilm'"
            )
    ta = build_assistant(teacher, student) if assistant is None else assistant
    check_heads(teacher, ta)
    check_heads(ta, student)
    root = None if checkpoint_dir is None else Path(checkpoint_dir)
    a_res = minilm_distill(
        ta,
        teacher,
        texts,
        a_config,
        checkpoint_dir=None if root is None else root / "assistant",
        resume=resume,
        progress=progress,
    )
    ta.eval()
    s_res = minilm_distill(
        student,
        ta,
        texts,
        config,
        checkpoint_dir=None if root is None else root / "student",
        resume=resume,
        progress=progress,
    )
    return AssistantDistillResult(assistant=ta, assistant_result=a_res, student_result=s_res)


# --------------------------------------------------------------------------- downstream fine-tuning
class SentenceClassifier(nn.Module):
    """A BERT encoder + a linear head on the mean-pooled last hidden states (not normalised): class logits.

    ``forward(input_ids, attention_mask) -> [B, num_classes]``; :meth:`tokenize` uses the encoder's tokenizer.
    ``head_lr_mult``: the new head learns this many times faster than the encoder under Adam/AdamW (the head's
    output is multiplied by it and its initial weights divided by it: same initial logits, and since Adam's
    steps do not depend on the gradient's scale, each step moves the logits ``head_lr_mult`` times further).
    Useful for short fine-tuning runs, where a randomly initialised head at the encoder's small learning rate
    barely moves.

    Example:
        >>> from torchslim.zoo.minilm import minilm
        >>> clf = SentenceClassifier(minilm(), num_classes=4)                              # doctest: +SKIP
        >>> clf(**clf.tokenize(["Flu season is here"])).shape                               # doctest: +SKIP
        torch.Size([1, 4])
    """

    def __init__(
        self, encoder: MiniLMEncoder, num_classes: int, dropout: float = 0.1, head_lr_mult: float = 1.0
    ) -> None:
        super().__init__()
        if not head_lr_mult > 0:
            raise ConfigError(f"SentenceClassifier: head_lr_mult must be > 0, got {head_lr_mult}")
        if not isinstance(encoder, MiniLMEncoder):
            raise ConfigError(
                f"SentenceClassifier: encoder must be a MiniLMEncoder, got {type(encoder).__name__}"
            )
        if num_classes < 2:
            raise ConfigError(f"SentenceClassifier: num_classes must be >= 2, got {num_classes}")
        self.encoder = encoder
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(encoder.dim, int(num_classes))
        self.head_scale = float(head_lr_mult)
        with torch.no_grad():  # same initial logits as a plain linear head
            self.head.weight.div_(self.head_scale)
            self.head.bias.div_(self.head_scale)

    def tokenize(self, texts: Sequence[str], max_length: int | None = None) -> dict[str, torch.Tensor]:
        """Tokenize with the encoder's tokenizer (padding to the longest text)."""
        return self.encoder.tokenize(texts, max_length=max_length)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, **kw: torch.Tensor) -> torch.Tensor:
        out = bert_of(self.encoder)(input_ids=input_ids, attention_mask=attention_mask, **kw)
        return self.head(self.dropout(mean_pool(out.last_hidden_state, attention_mask))) * self.head_scale


class _Labelled(Dataset[tuple[str, int]]):
    def __init__(self, texts: Sequence[str], labels: Sequence[int]) -> None:
        self.items = [(str(t), int(y)) for t, y in zip(texts, labels, strict=True)]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> tuple[str, int]:
        return self.items[i]


def _check_labelled(who: str, texts: Sequence[str], labels: Sequence[int], num_classes: int | None) -> None:
    if len(texts) != len(labels):
        raise ConfigError(f"{who}: {len(texts)} texts but {len(labels)} labels; pass one label per text")
    if len(texts) == 0:
        raise ConfigError(f"{who}: no labelled text; pass at least one (text, label) pair")
    if num_classes is not None:
        bad = [int(y) for y in labels if not 0 <= int(y) < num_classes]
        if bad:
            raise ConfigError(f"{who}: labels must lie in 0..{num_classes - 1}, got e.g. {bad[0]}")


def fine_tune_classifier(
    encoder: MiniLMEncoder,
    texts: Sequence[str],
    labels: Sequence[int],
    num_classes: int,
    train: TrainConfig | None = None,
    max_length: int = 64,
    seed: int = 0,
    head_lr_mult: float = 1.0,
    checkpoint_dir: str | Path | None = None,
    resume: bool = False,
    progress: bool = True,
) -> tuple[SentenceClassifier, TrainResult]:
    """Fine-tune ``encoder`` (in place) with a new linear head on a labelled text task (cross-entropy).

    This is how the paper evaluates distilled students (and their teacher): task-agnostic distillation, then
    ordinary fine-tuning of the whole model on each downstream task.

    Args:
        encoder: a ``MiniLMEncoder`` (teacher or student); its weights are updated.
        texts: training texts.
        labels: integer class labels in ``0..num_classes-1``.
        num_classes: number of classes (>= 2).
        train: training settings (default: AdamW, lr 1e-4, batch 32, one-cycle, 3 epochs, grad clip 1).
        max_length: tokens per text.
        seed: seeds the head's initialisation (the data order is ``train.seed``).
        head_lr_mult: the head learns this many times faster than the encoder (see :class:`SentenceClassifier`).
        checkpoint_dir: where ``last.pt`` goes; ``resume``: continue from it.
        progress: show a progress bar.

    Returns:
        ``(classifier, train_result)``; the classifier is left in eval mode.

    Raises:
        ConfigError: texts and labels differ in number, none given, or a label out of range.

    Example:
        >>> from torchslim.zoo.minilm import minilm
        >>> clf, _ = fine_tune_classifier(minilm(), ["flu shot", "heart attack"], [0, 1], 2)  # doctest: +SKIP
        >>> classifier_accuracy(clf, ["flu vaccine"], [0])                                  # doctest: +SKIP
    """
    _check_labelled("fine_tune_classifier", texts, labels, num_classes)
    train = (
        TrainConfig(
            epochs=3, batch_size=32, lr=1e-4, optimizer="adamw", weight_decay=0.01, grad_clip=1.0
        )
        if train is None
        else train
    )
    torch.manual_seed(seed)
    clf = SentenceClassifier(encoder, num_classes, head_lr_mult=head_lr_mult).train()

    def step_fn(model: nn.Module, batch: Any) -> torch.Tensor:
        batch_texts, y = batch
        enc = model.tokenize(list(batch_texts), max_length=max_length)  # type: ignore[operator]
        kw = {k: v for k, v in enc.items() if k in ("input_ids", "attention_mask", "token_type_ids")}
        return F.cross_entropy(model(**kw), torch.as_tensor(y))

    trainer = Trainer(clf, train, step_fn=step_fn, checkpoint_dir=checkpoint_dir, progress=progress)
    result = trainer.fit(_Labelled(texts, labels), resume=resume)
    return clf.eval(), result


@torch.no_grad()
def classifier_accuracy(
    classifier: SentenceClassifier,
    texts: Sequence[str],
    labels: Sequence[int],
    batch_size: int = 64,
    max_length: int = 64,
) -> float:
    """Top-1 accuracy of ``classifier`` on ``(texts, labels)`` (eval mode, no grad).

    Raises:
        ConfigError: texts and labels differ in number, or none given.
    """
    _check_labelled("classifier_accuracy", texts, labels, None)
    was = classifier.training
    classifier.eval()
    correct = 0
    try:
        for i in range(0, len(texts), batch_size):
            enc = classifier.tokenize(list(texts[i : i + batch_size]), max_length=max_length)
            kw = {k: v for k, v in enc.items() if k in ("input_ids", "attention_mask", "token_type_ids")}
            pred = classifier(**kw).argmax(-1)
            correct += int((pred == torch.as_tensor(list(labels[i : i + batch_size]))).sum())
    finally:
        classifier.train(was)
    return correct / len(texts)
