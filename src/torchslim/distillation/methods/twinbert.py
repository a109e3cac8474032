"""TwinBERT (Lu, Jiao & Zhang, 2020, arXiv 2002.06275): twin encoders distilled from a cross-encoder.

A cross-encoder reads a (query, document) pair *jointly* and is accurate but must run the whole
transformer for every pair at serving time. TwinBERT splits it into two towers:

- a **query tower** and a **document tower** (BERT-like encoders; shared or separate weights), each pooled
  into one embedding by a learned **weighted average** of its token states
  (``alpha_t = softmax_t(w . h_t + b)`` over the unpadded tokens, ``e = sum_t alpha_t h_t``;
  :class:`WeightedPooling`; ``"mean"`` and ``"cls"`` pooling are also offered);
- a **crossing layer** that turns the two embeddings into a relevance logit:

  * ``"cosine"`` (:class:`CosineCrossing`): logistic regression on the cosine similarity,
    ``logit = w * cos(e_q, e_d) + b``;
  * ``"residual"`` (:class:`ResidualCrossing`): the element-wise maximum ``x = max(e_q, e_d)`` goes through a
    residual block ``y = x + F(x)`` (``F``: Linear-ReLU-Linear) and a logistic regression
    ``logit = v . y + c``.

  The relevance probability is ``sigmoid(logit)``.

Because a document's embedding does not depend on the query, it is computed once
(:meth:`TwinBERT.encode_documents` -> :class:`DocumentCache`) and every query is then scored against the
cached embeddings by the query tower and the crossing layer only (:meth:`TwinBERT.score`).

The student is trained on the teacher's scores, not on labels: :func:`twinbert_loss` is the binary
cross-entropy with the teacher's probability ``sigmoid(t / T)`` as the soft label (``loss="bce"``, the
paper's choice) or the MSE of logits (``loss="mse"``). :func:`twinbert_distill` scores every training pair
with the frozen teacher once (cached teacher outputs) and trains the twin through the shared
:class:`~torchslim.train.Trainer` (checkpoints, exact resume).

The teacher here is :class:`CrossEncoderTeacher`: a BERT encoder (e.g. MiniLM-L6) over the concatenated pair
``[CLS] q [SEP] d [SEP]``; the token states of each segment (which attended to the other segment) are
mean-pooled into ``a`` and ``b`` and a small MLP head scores ``[a, b, a*b, |a-b|]``.
:func:`train_teacher_head` fits that head on labelled pairs (the encoder stays frozen);
:func:`finetune_teacher` then fine-tunes the encoder (all layers, or the top ``train_layers``) and the head end
to end, as the paper's fine-tuned BERT teacher. :func:`mine_hard_negatives` picks, for each query, the
documents most similar to it under a bi-encoder: negatives that a cross-encoder must learn to reject.

Tiny models without downloads, for tests and the synthetic benchmark: :class:`WordTokenizer` (word-level,
called like a ``transformers`` tokenizer), :func:`tiny_bert` (a random-init ``BertModel``),
:func:`twin_from_tiny_bert`, and :func:`order_task`, a retrieval task where a query ``"a b"`` is relevant
only when ``a`` is followed by ``b`` within a window, with hard negatives that hold the same words in the
wrong arrangement. The teacher for that task uses ``pooling="cls"`` and ``match_features=True`` (document
tokens equal to query word ``j`` get segment id ``2 + j``).

Differences from the paper: WordPiece tokens instead of tri-letter hashing; the students are initialised
from the teacher's layers (``build_student``); the crossing's output layer is initialised by a ridge fit to
the teacher's logits (``calibrate=True``), because short CPU runs cannot afford to learn its scale.

Example:
    >>> from torchslim.zoo.minilm import minilm
    >>> from torchslim.distillation.methods.twinbert import (
    ...     CrossEncoderTeacher, TwinDistill, build_twinbert, finetune_teacher, train_teacher_head,
    ...     twinbert_distill)
    >>> enc = minilm()                                                               # doctest: +SKIP
    >>> teacher = CrossEncoderTeacher(enc)                                           # doctest: +SKIP
    >>> train_teacher_head(teacher, queries, docs, labels)                           # doctest: +SKIP
    >>> finetune_teacher(teacher, queries, docs, labels)   # encoder + head           # doctest: +SKIP
    >>> twin = build_twinbert(enc, num_layers=2, crossing="cosine")                  # doctest: +SKIP
    >>> twinbert_distill(twin, teacher, queries, docs, TwinDistill())                # doctest: +SKIP
    >>> cache = twin.encode_documents(corpus)              # once, offline           # doctest: +SKIP
    >>> twin.score(["flu vaccine shortage"], cache).shape  # [1, len(corpus)] logits # doctest: +SKIP
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn
from torch.utils.data import Dataset, TensorDataset

from torchslim.core.config import Config
from torchslim.core.errors import ConfigError, UnsupportedModelError
from torchslim.distillation.engine import fit_student
from torchslim.train.trainer import TrainConfig, Trainer, TrainResult

__all__ = [
    "CosineCrossing",
    "CrossEncoderTeacher",
    "DocumentCache",
    "ResidualCrossing",
    "Tower",
    "TwinBERT",
    "TriLetterTokenizer",
    "TwinDistill",
    "OrderTask",
    "QuantizedDocumentCache",
    "WeightedPooling",
    "WordTokenizer",
    "build_twinbert",
    "calibrate_crossing",
    "finetune_teacher",
    "mine_hard_negatives",
    "order_relevant",
    "order_task",
    "order_task_vocab",
    "tiny_bert",
    "train_teacher_head",
    "twin_from_tiny_bert",
    "twinbert_distill",
    "twinbert_loss",
]

PoolingName = Literal["weighted", "mean", "cls"]
CrossingName = Literal["cosine", "residual"]
_INPUT_KEYS = ("input_ids", "attention_mask", "token_type_ids")


def _texts(texts: Sequence[str] | str, who: str) -> list[str]:
    if isinstance(texts, str):
        texts = [texts]
    out = list(texts)
    if not all(isinstance(t, str) for t in out):
        raise ConfigError(f"{who}: expected a list of strings, got items of type {type(out[0]).__name__}")
    return out


def _bert_of(model: nn.Module, who: str) -> Any:
    inner = getattr(model, "model", None)
    bert: Any = inner if isinstance(inner, nn.Module) and hasattr(inner, "encoder") else model
    if not hasattr(bert, "config") or not hasattr(bert, "encoder"):
        raise UnsupportedModelError(
            f"{who}: needs a transformers BERT encoder (or a MiniLMEncoder wrapping one), got {type(model).__name__}"
        )
    return bert


def _last_hidden(bert: Any, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    out = bert(**inputs)
    return out[0] if isinstance(out, tuple) else out.last_hidden_state


# --------------------------------------------------------------------------- pooling and towers
class WeightedPooling(nn.Module):
    """TwinBERT's weighted-average pooling: ``alpha_t = softmax_t(w . h_t + b)``, ``e = sum_t alpha_t h_t``.

    Padded tokens (mask 0) get weight 0. ``w`` and ``b`` start at zero, so the initial pooling is the plain
    mean over the unpadded tokens (the pooling MiniLM was trained with).

    Example:
        >>> pool = WeightedPooling(4)
        >>> h = torch.arange(12.0).view(1, 3, 4); mask = torch.tensor([[1, 1, 0]])
        >>> pool(h, mask).tolist()   # mean of the first two tokens at initialisation
        [[2.0, 3.0, 4.0, 5.0]]
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.score = nn.Linear(dim, 1)
        nn.init.zeros_(self.score.weight)
        nn.init.zeros_(self.score.bias)

    def weights(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """The pooling weights ``alpha`` ``[B, T]`` (rows sum to 1 over the unpadded tokens)."""
        s = self.score(hidden).squeeze(-1)
        s = s.masked_fill(attention_mask == 0, torch.finfo(s.dtype).min)
        return torch.softmax(s, dim=-1)

    def forward(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        alpha = self.weights(hidden, attention_mask)
        return (alpha.unsqueeze(-1) * hidden).sum(dim=1)


class Tower(nn.Module):
    """One TwinBERT encoder: a BERT model, a tokenizer and a pooling -> one embedding per text.

    Args:
        encoder: a ``MiniLMEncoder`` (e.g. from :func:`~torchslim.distillation.student.build_student`) or a
            ``transformers`` ``BertModel``.
        tokenizer: the tokenizer (default: ``encoder.tokenizer``).
        pooling: ``"weighted"`` (the paper), ``"mean"`` or ``"cls"``.
        max_length: tokens per text when tokenizing raw text.

    ``forward(input_ids, attention_mask, token_type_ids=None) -> [B, dim]`` (not normalised). ``input_ids`` of
    shape ``[B, T, K]`` (:class:`TriLetterTokenizer` with ``sum_words=True``) hold ``K`` gram ids per word: the
    tower sums their input embeddings into one vector per word (padding id 0 has BERT's zero padding
    embedding) and feeds those to the encoder.
    """

    def __init__(
        self,
        encoder: nn.Module,
        tokenizer: Any = None,
        pooling: PoolingName = "weighted",
        max_length: int = 64,
    ) -> None:
        super().__init__()
        self.bert = _bert_of(encoder, "Tower")
        self.tokenizer = tokenizer if tokenizer is not None else getattr(encoder, "tokenizer", None)
        if pooling not in ("weighted", "mean", "cls"):
            raise ConfigError(f"Tower: pooling must be 'weighted', 'mean' or 'cls', got {pooling!r}")
        self.pooling = pooling
        self.max_length = int(max_length)
        self.pool = WeightedPooling(self.dim) if pooling == "weighted" else None

    @property
    def dim(self) -> int:
        """Embedding width (the encoder's hidden size)."""
        return int(self.bert.config.hidden_size)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        token_type_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if input_ids.dim() == 3:  # [B, words, grams] (TriLetterTokenizer(sum_words=True)): sum each word's grams
            word_vectors = self.bert.get_input_embeddings()(input_ids).sum(dim=2)
            inputs = {"inputs_embeds": word_vectors, "attention_mask": attention_mask}
        else:
            inputs = {"input_ids": input_ids, "attention_mask": attention_mask}
        if token_type_ids is not None:
            inputs["token_type_ids"] = token_type_ids
        hidden = _last_hidden(self.bert, inputs)
        if self.pool is not None:
            return self.pool(hidden, attention_mask)
        if self.pooling == "cls":
            return hidden[:, 0]
        m = attention_mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)

    def tokenize(self, texts: Sequence[str], max_length: int | None = None) -> dict[str, torch.Tensor]:
        """Tokenize a batch of texts (padding to the longest, truncating to ``max_length``)."""
        if self.tokenizer is None:
            raise ConfigError("Tower: no tokenizer; pass tokenizer= or build the tower from a MiniLMEncoder")
        enc = self.tokenizer(
            _texts(texts, "Tower.tokenize"),
            padding=True,
            truncation=True,
            max_length=max_length or self.max_length,
            return_tensors="pt",
        )
        device = next(self.parameters()).device
        return {k: v.to(device) for k, v in dict(enc).items() if k in _INPUT_KEYS}

    def embed(self, texts: Sequence[str], max_length: int | None = None) -> torch.Tensor:
        """Embed raw texts (one batch, gradients kept) -> ``[len(texts), dim]``."""
        return self(**self.tokenize(texts, max_length))


# --------------------------------------------------------------------------- crossing layers
def _check_pair(q: torch.Tensor, d: torch.Tensor, who: str) -> None:
    if q.shape[-1] != d.shape[-1]:
        raise ConfigError(
            f"{who}: the query embedding has {q.shape[-1]} dims but the document embedding has {d.shape[-1]}; "
            "build both towers with the same hidden_size (or use a shared tower)"
        )


class CosineCrossing(nn.Module):
    """``logit = w * cos(e_q, e_d) + b`` (logistic regression on the cosine similarity).

    Example:
        >>> c = CosineCrossing()
        >>> c(torch.tensor([[1.0, 0.0]]), torch.tensor([[1.0, 1.0]])).tolist()   # w=1, b=0: cos = 0.7071
        [0.7071067690849304]
    """

    def __init__(self) -> None:
        super().__init__()
        self.out = nn.Linear(1, 1)
        nn.init.ones_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def features(self, q: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
        """Input of the output layer for paired rows ``q, d: [B, D]`` -> ``[B, 1]`` (the cosine)."""
        _check_pair(q, d, "CosineCrossing")
        return F.cosine_similarity(q, d, dim=-1, eps=1e-8).unsqueeze(-1)

    def forward(self, q: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
        """Paired logits ``[B]`` for ``q[i]`` with ``d[i]``."""
        return self.out(self.features(q, d)).squeeze(-1)

    def all_pairs(self, q: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
        """Logits ``[Q, N]`` of every query ``q: [Q, D]`` with every document ``d: [N, D]``."""
        _check_pair(q, d, "CosineCrossing")
        qn = q / q.norm(dim=-1, keepdim=True).clamp(min=1e-8)
        dn = d / d.norm(dim=-1, keepdim=True).clamp(min=1e-8)
        cos = qn @ dn.T
        return cos * self.out.weight[0, 0] + self.out.bias[0]


class ResidualCrossing(nn.Module):
    """``x = max(e_q, e_d)``, ``y = x + W2 relu(W1 x + b1) + b2``, ``logit = v . y + c``.

    ``W2, b2`` start at zero, so at initialisation ``y = x``.

    Args:
        dim: embedding width ``D``.
        hidden: width of the residual block's inner layer (default ``D``).
    """

    def __init__(self, dim: int, hidden: int | None = None) -> None:
        super().__init__()
        self.dim = int(dim)
        self.fc1 = nn.Linear(self.dim, int(hidden or dim))
        self.fc2 = nn.Linear(int(hidden or dim), self.dim)
        nn.init.zeros_(self.fc2.weight)
        nn.init.zeros_(self.fc2.bias)
        self.out = nn.Linear(self.dim, 1)

    def _block(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.dim:
            raise ConfigError(
                f"ResidualCrossing: built for {self.dim}-dim embeddings, got {x.shape[-1]}-dim ones; "
                "build it with the towers' hidden_size"
            )
        return x + self.fc2(torch.relu(self.fc1(x)))

    def features(self, q: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
        """Input of the output layer for paired rows ``q, d: [B, D]`` -> ``[B, D]`` (``y``)."""
        _check_pair(q, d, "ResidualCrossing")
        return self._block(torch.maximum(q, d))

    def forward(self, q: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
        """Paired logits ``[B]`` for ``q[i]`` with ``d[i]``."""
        return self.out(self.features(q, d)).squeeze(-1)

    def all_pairs(self, q: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
        """Logits ``[Q, N]`` of every query ``q: [Q, D]`` with every document ``d: [N, D]``."""
        _check_pair(q, d, "ResidualCrossing")
        x = torch.maximum(q[:, None, :], d[None, :, :])
        return self.out(self._block(x)).squeeze(-1)


# --------------------------------------------------------------------------- the twin model and its cache
@dataclass
class DocumentCache:
    """Document embeddings computed once by a :class:`TwinBERT`'s document tower (no grad, float32).

    Attributes:
        embeddings: ``[N, D]``.
        ids: one identifier per document (default ``0..N-1``).
        max_length: tokens per document used when encoding.

    Rebuild the cache after the document tower changes (e.g. after more training). ``cache[i]`` is row i;
    :meth:`subset` selects rows; :meth:`save`/:meth:`load` round-trip it.
    """

    embeddings: torch.Tensor
    ids: list[Any] = field(default_factory=list)
    max_length: int | None = None

    def __post_init__(self) -> None:
        if self.embeddings.dim() != 2:
            raise ConfigError(f"DocumentCache: embeddings must be [N, D], got {tuple(self.embeddings.shape)}")
        if not self.ids:
            self.ids = list(range(self.embeddings.shape[0]))
        if len(self.ids) != self.embeddings.shape[0]:
            raise ConfigError(
                f"DocumentCache: {len(self.ids)} ids for {self.embeddings.shape[0]} embeddings; pass one id per document"
            )

    def __len__(self) -> int:
        return int(self.embeddings.shape[0])

    @property
    def dim(self) -> int:
        """Embedding width ``D``."""
        return int(self.embeddings.shape[1])

    def subset(self, index: Sequence[int]) -> DocumentCache:
        """The cache restricted to rows ``index``."""
        idx = list(index)
        return DocumentCache(self.embeddings[idx], [self.ids[i] for i in idx], self.max_length)

    def save(self, path: str | Path) -> None:
        """Write the cache atomically (``torch.save`` format)."""
        from torchslim.core.io import atomic_torch_save

        atomic_torch_save(
            path, {"embeddings": self.embeddings, "ids": self.ids, "max_length": self.max_length}
        )

    @classmethod
    def load(cls, path: str | Path) -> DocumentCache:
        """Read a cache written by :meth:`save`."""
        state = torch.load(path, map_location="cpu", weights_only=False)
        return cls(state["embeddings"], list(state["ids"]), state["max_length"])

    @property
    def nbytes(self) -> int:
        """Memory held by the embeddings (``N * D * 4`` bytes for float32; ids not counted)."""
        return int(self.embeddings.numel() * self.embeddings.element_size())

    def quantize(self, bits: int = 8, granularity: Literal["vector", "dim"] = "vector") -> QuantizedDocumentCache:
        """A compressed copy: symmetric ``bits``-bit integer codes and float32 scales (see
        :class:`QuantizedDocumentCache`).

        Example:
            >>> cache = DocumentCache(torch.randn(100, 64))
            >>> q8 = cache.quantize(8)
            >>> round(cache.nbytes / q8.nbytes, 2)   # 25600 / (6400 codes + 400 scale bytes)
            3.76
        """
        return QuantizedDocumentCache.from_embeddings(
            self.embeddings, bits=bits, granularity=granularity, ids=self.ids, max_length=self.max_length
        )


_QUANT_BITS = range(2, 9)


def _pack_nibbles(codes: torch.Tensor) -> torch.Tensor:
    """Signed codes in ``[-7, 7]`` ``[N, D]`` -> ``uint8 [N, ceil(D / 2)]``, two 4-bit fields per byte."""
    n, d = codes.shape
    u = (codes.to(torch.int16) + 8).to(torch.uint8)  # 1..15
    if d % 2:
        u = torch.cat([u, torch.full((n, 1), 8, dtype=torch.uint8)], dim=1)  # pad with the code of 0
    return u[:, 0::2] | (u[:, 1::2] << 4)


def _unpack_nibbles(packed: torch.Tensor, dim: int) -> torch.Tensor:
    """Inverse of :func:`_pack_nibbles` -> ``int8 [N, dim]``."""
    low = (packed & 15).to(torch.int8) - 8
    high = (packed >> 4).to(torch.int8) - 8
    return torch.stack([low, high], dim=2).reshape(packed.shape[0], -1)[:, :dim]


@dataclass
class QuantizedDocumentCache:
    """Cached document embeddings stored as symmetric ``bits``-bit integers with float32 scales.

    TwinBERT's document embeddings are computed offline and held in memory for serving; storing them as
    integers cuts that memory ~4x (int8) or ~8x (4-bit) against float32. Each embedding ``x`` is stored as
    ``codes = round(x / s)`` with ``s = max|x| / (2**(bits-1) - 1)`` (the narrow signed range, e.g.
    ``[-127, 127]`` for int8, so ``+max|x|`` and ``-max|x|`` are both exact and nothing is clipped) and
    reconstructed as ``codes * s``: every element is off by at most ``s / 2``. ``granularity="vector"``
    gives each document its own ``s`` (``N`` scales; the cosine of a query with ``codes * s`` equals the
    cosine with ``codes``, since ``s`` cancels); ``"dim"`` one ``s`` per embedding dimension (``D`` scales).
    With ``bits <= 4`` two codes are packed per byte.

    Scoring (:meth:`TwinBERT.score`) dequantises ``chunk`` documents at a time, so the float copy of the
    whole cache is never held.

    Attributes:
        codes: ``int8 [N, D]`` (``bits > 4``) or ``uint8 [N, ceil(D/2)]`` (``bits <= 4``, packed).
        scales: ``float32 [N]`` (``"vector"``) or ``[D]`` (``"dim"``).
        dim / bits / granularity: the embedding width, the code width and the scale layout.
        ids / max_length: as in :class:`DocumentCache`.

    Example:
        >>> emb = torch.randn(100, 64)
        >>> q = QuantizedDocumentCache.from_embeddings(emb, bits=8)
        >>> err = (q.dequantize().embeddings - emb).abs()
        >>> bool((err <= q.scales[:, None] / 2 + 1e-7).all()), q.nbytes
        (True, 6800)
    """

    codes: torch.Tensor
    scales: torch.Tensor
    dim: int
    bits: int = 8
    granularity: Literal["vector", "dim"] = "vector"
    ids: list[Any] = field(default_factory=list)
    max_length: int | None = None
    chunk: int = 4096

    def __post_init__(self) -> None:
        if self.bits not in _QUANT_BITS:
            raise ConfigError(f"QuantizedDocumentCache: bits must be in 2..8, got {self.bits}")
        if self.granularity not in ("vector", "dim"):
            raise ConfigError(
                f"QuantizedDocumentCache: granularity must be 'vector' (one scale per document) or 'dim' (one "
                f"scale per embedding dimension), got {self.granularity!r}"
            )
        width = (self.dim + 1) // 2 if self.bits <= 4 else self.dim
        if self.codes.dim() != 2 or self.codes.shape[1] != width:
            raise ConfigError(
                f"QuantizedDocumentCache: codes must be [N, {width}] for dim={self.dim}, bits={self.bits}; got "
                f"{tuple(self.codes.shape)}"
            )
        n_scales = self.codes.shape[0] if self.granularity == "vector" else self.dim
        if self.scales.shape != (n_scales,):
            raise ConfigError(
                f"QuantizedDocumentCache: {self.granularity!r} scales must have shape ({n_scales},), got "
                f"{tuple(self.scales.shape)}"
            )
        if not self.ids:
            self.ids = list(range(self.codes.shape[0]))
        if len(self.ids) != self.codes.shape[0]:
            raise ConfigError(
                f"QuantizedDocumentCache: {len(self.ids)} ids for {self.codes.shape[0]} embeddings; pass one id "
                "per document"
            )
        if self.chunk < 1:
            raise ConfigError(f"QuantizedDocumentCache: chunk must be >= 1, got {self.chunk}")

    @classmethod
    def from_embeddings(
        cls,
        embeddings: torch.Tensor,
        bits: int = 8,
        granularity: Literal["vector", "dim"] = "vector",
        ids: Sequence[Any] | None = None,
        max_length: int | None = None,
    ) -> QuantizedDocumentCache:
        """Quantise float embeddings ``[N, D]`` (see the class docstring for the formula)."""
        from torchslim.quantization.primitives import choose_qparams, qrange, quantize

        if embeddings.dim() != 2:
            raise ConfigError(f"QuantizedDocumentCache: embeddings must be [N, D], got {tuple(embeddings.shape)}")
        if bits not in _QUANT_BITS:
            raise ConfigError(f"QuantizedDocumentCache: bits must be in 2..8, got {bits}")
        if granularity not in ("vector", "dim"):
            raise ConfigError(f"QuantizedDocumentCache: granularity must be 'vector' or 'dim', got {granularity!r}")
        x = embeddings.detach().float().cpu()
        if not bool(torch.isfinite(x).all()):
            raise ConfigError("QuantizedDocumentCache: the embeddings contain NaN or Inf; check the document tower")
        axis = 0 if granularity == "vector" else 1
        absmax = x.abs().amax(dim=1 - axis) if x.numel() else torch.zeros(x.shape[axis])
        scale, zp = choose_qparams(-absmax, absmax, bits=bits, symmetric=True, signed=True, narrow_range=True)
        qmin, qmax = qrange(bits, signed=True, narrow_range=True)
        codes = quantize(x, scale, zp, qmin, qmax, axis=axis).to(torch.int8)
        stored = _pack_nibbles(codes) if bits <= 4 else codes
        return cls(stored, scale, int(x.shape[1]), bits, granularity, list(ids or []), max_length)

    def __len__(self) -> int:
        return int(self.codes.shape[0])

    @property
    def nbytes(self) -> int:
        """Memory held by the codes and the scales (ids not counted)."""
        return int(self.codes.numel() * self.codes.element_size() + self.scales.numel() * 4)

    def int_codes(self, rows: slice | None = None) -> torch.Tensor:
        """The signed integer codes ``int8 [N, D]`` (unpacked), optionally of a row slice."""
        c = self.codes if rows is None else self.codes[rows]
        return _unpack_nibbles(c, self.dim) if self.bits <= 4 else c

    def dequantize_rows(self, rows: slice | None = None) -> torch.Tensor:
        """Float32 reconstruction ``codes * scale`` of all rows (or a row slice)."""
        c = self.int_codes(rows).float()
        if self.granularity == "dim":
            return c * self.scales[None, :]
        s = self.scales if rows is None else self.scales[rows]
        return c * s[:, None]

    def dequantize(self) -> DocumentCache:
        """A float :class:`DocumentCache` of the reconstructed embeddings."""
        return DocumentCache(self.dequantize_rows(), list(self.ids), self.max_length)

    def subset(self, index: Sequence[int]) -> QuantizedDocumentCache:
        """The cache restricted to rows ``index``."""
        idx = list(index)
        scales = self.scales[idx] if self.granularity == "vector" else self.scales
        return QuantizedDocumentCache(
            self.codes[idx], scales, self.dim, self.bits, self.granularity, [self.ids[i] for i in idx],
            self.max_length, self.chunk,
        )

    def save(self, path: str | Path) -> None:
        """Write the cache atomically (``torch.save`` format)."""
        from torchslim.core.io import atomic_torch_save

        atomic_torch_save(
            path,
            {
                "codes": self.codes,
                "scales": self.scales,
                "dim": self.dim,
                "bits": self.bits,
                "granularity": self.granularity,
                "ids": self.ids,
                "max_length": self.max_length,
            },
        )

    @classmethod
    def load(cls, path: str | Path) -> QuantizedDocumentCache:
        """Read a cache written by :meth:`save`."""
        s = torch.load(path, map_location="cpu", weights_only=False)
        return cls(s["codes"], s["scales"], int(s["dim"]), int(s["bits"]), s["granularity"], list(s["ids"]),
                   s["max_length"])


class TwinBERT(nn.Module):
    """Query tower + document tower + crossing layer.

    Args:
        query_tower: a :class:`Tower`.
        doc_tower: a :class:`Tower`, or ``None`` to share the query tower's weights (the paper's shared option).
        crossing: ``"cosine"``, ``"residual"`` or a crossing module (with ``forward(q, d) -> [B]``,
            ``all_pairs(q, d) -> [Q, N]``, ``features(q, d)`` and an ``out`` linear layer).
        query_max_length / doc_max_length: tokens per query / document when encoding raw text.

    Raises:
        ConfigError: the towers produce embeddings of different widths (the message names both).

    Example:
        >>> twin = TwinBERT(Tower(encoder_q), Tower(encoder_d), "residual")              # doctest: +SKIP
        >>> logits = twin(twin.query_tower.tokenize(qs), twin.doc_tower.tokenize(ds))    # doctest: +SKIP
    """

    def __init__(
        self,
        query_tower: Tower,
        doc_tower: Tower | None = None,
        crossing: CrossingName | nn.Module = "cosine",
        query_max_length: int = 32,
        doc_max_length: int = 128,
    ) -> None:
        super().__init__()
        self.query_tower = query_tower
        self.shared = doc_tower is None or doc_tower is query_tower
        self._doc_tower = None if self.shared else doc_tower
        q_dim, d_dim = query_tower.dim, self.doc_tower.dim
        if q_dim != d_dim:
            raise ConfigError(
                f"TwinBERT: the query tower embeds to {q_dim} dims but the document tower to {d_dim}; the crossing "
                "layer compares the two embeddings, so build both towers with the same hidden_size"
            )
        if isinstance(crossing, str):
            if crossing == "cosine":
                crossing = CosineCrossing()
            elif crossing == "residual":
                crossing = ResidualCrossing(q_dim)
            else:
                raise ConfigError(f"TwinBERT: crossing must be 'cosine' or 'residual', got {crossing!r}")
        self.crossing: Any = crossing
        self.query_max_length = int(query_max_length)
        self.doc_max_length = int(doc_max_length)

    @property
    def doc_tower(self) -> Tower:
        """The document tower (the query tower itself when weights are shared)."""
        return self.query_tower if self._doc_tower is None else self._doc_tower

    @property
    def dim(self) -> int:
        """Embedding width shared by both towers."""
        return self.query_tower.dim

    def forward(
        self, query_inputs: dict[str, torch.Tensor], doc_inputs: dict[str, torch.Tensor]
    ) -> torch.Tensor:
        """Paired relevance logits ``[B]``: query ``i`` with document ``i`` (tokenized inputs)."""
        q = self.query_tower(**query_inputs)
        d = self.doc_tower(**doc_inputs)
        return self.crossing(q, d)

    def pair_logits(self, queries: Sequence[str], docs: Sequence[str]) -> torch.Tensor:
        """Paired logits ``[B]`` from raw texts (one batch, gradients kept)."""
        qs, ds = _texts(queries, "TwinBERT.pair_logits"), _texts(docs, "TwinBERT.pair_logits")
        if len(qs) != len(ds):
            raise ConfigError(
                f"TwinBERT.pair_logits: {len(qs)} queries but {len(ds)} documents; pass equal lists"
            )
        return self(
            self.query_tower.tokenize(qs, self.query_max_length),
            self.doc_tower.tokenize(ds, self.doc_max_length),
        )

    @torch.no_grad()
    def _encode(self, tower: Tower, texts: Sequence[str], max_length: int, batch_size: int) -> torch.Tensor:
        if batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
        was_training = self.training
        self.eval()
        try:
            chunks = [
                tower.embed(texts[i : i + batch_size], max_length).float()
                for i in range(0, len(texts), batch_size)
            ]
        finally:
            self.train(was_training)
        return torch.cat(chunks) if chunks else torch.empty(0, self.dim)

    def encode_queries(self, queries: Sequence[str], batch_size: int = 64) -> torch.Tensor:
        """Query embeddings ``[Q, D]`` (eval mode, no grad)."""
        return self._encode(
            self.query_tower, _texts(queries, "encode_queries"), self.query_max_length, batch_size
        )

    def encode_documents(
        self, docs: Sequence[str], ids: Sequence[Any] | None = None, batch_size: int = 64
    ) -> DocumentCache:
        """Run the document tower once over ``docs`` -> a :class:`DocumentCache` to score queries against."""
        texts = _texts(docs, "encode_documents")
        emb = self._encode(self.doc_tower, texts, self.doc_max_length, batch_size)
        return DocumentCache(emb, list(ids) if ids is not None else [], self.doc_max_length)

    @torch.no_grad()
    def score_embeddings(
        self, query_emb: torch.Tensor, cache: DocumentCache | QuantizedDocumentCache | torch.Tensor
    ) -> torch.Tensor:
        """Logits ``[Q, N]`` of query embeddings against cached document embeddings (crossing layer only).

        A :class:`QuantizedDocumentCache` is dequantised ``cache.chunk`` documents at a time.
        """
        d_dim = cache.dim if isinstance(cache, QuantizedDocumentCache | DocumentCache) else cache.shape[-1]
        if query_emb.shape[-1] != d_dim:
            raise ConfigError(
                f"TwinBERT.score: the query tower embeds to {query_emb.shape[-1]} dims but the cached documents have "
                f"{d_dim}; rebuild the cache with this model's encode_documents"
            )
        was_training = self.training
        self.eval()
        try:
            if isinstance(cache, QuantizedDocumentCache):
                parts = [
                    self.crossing.all_pairs(
                        query_emb, cache.dequantize_rows(slice(i, i + cache.chunk)).to(query_emb)
                    )
                    for i in range(0, len(cache), cache.chunk)
                ]
                return torch.cat(parts, dim=1) if parts else query_emb.new_zeros(query_emb.shape[0], 0)
            docs = cache.embeddings if isinstance(cache, DocumentCache) else cache
            return self.crossing.all_pairs(query_emb, docs.to(query_emb.dtype))
        finally:
            self.train(was_training)

    def score(
        self, queries: Sequence[str], cache: DocumentCache | QuantizedDocumentCache, batch_size: int = 64
    ) -> torch.Tensor:
        """Logits ``[Q, N]`` of every query against every cached document; documents are never re-encoded.

        Only the query tower and the crossing layer run. ``sigmoid`` of a logit is the relevance probability.
        ``cache`` may be quantised (``encode_documents(...).quantize(8)``).
        """
        if not isinstance(cache, DocumentCache | QuantizedDocumentCache):
            raise ConfigError(
                "TwinBERT.score: cache must be a DocumentCache (from encode_documents) or a QuantizedDocumentCache "
                f"(from DocumentCache.quantize), got {type(cache).__name__}"
            )
        return self.score_embeddings(self.encode_queries(queries, batch_size), cache)

    def score_texts(self, queries: Sequence[str], docs: Sequence[str], batch_size: int = 64) -> torch.Tensor:
        """Logits ``[Q, N]`` recomputing the document embeddings (what the cache saves)."""
        return self.score(queries, self.encode_documents(docs, batch_size=batch_size), batch_size)


def build_twinbert(
    encoder: Any,
    num_layers: int = 2,
    shared: bool = True,
    pooling: PoolingName = "weighted",
    crossing: CrossingName = "cosine",
    query_max_length: int = 32,
    doc_max_length: int = 128,
    **student_kwargs: Any,
) -> TwinBERT:
    """A TwinBERT whose tower(s) are shallower students of ``encoder`` (``build_student``, teacher init).

    Args:
        encoder: a ``MiniLMEncoder`` (e.g. ``torchslim.zoo.minilm.minilm()``); left unchanged.
        num_layers: layers per tower.
        shared: one tower for queries and documents (``True``) or two separately trained copies.
        pooling / crossing: see :class:`Tower` and :class:`TwinBERT`.
        student_kwargs: passed on to :func:`~torchslim.distillation.student.build_student` (``init``,
            ``layers``, ``hidden_size`` ...).
    """
    from torchslim.distillation.student import build_student

    def tower(seed: int) -> Tower:
        kwargs = {"seed": seed, **student_kwargs}
        student = build_student(encoder, num_layers=num_layers, **kwargs)
        return Tower(student, pooling=pooling)

    q = tower(0)
    d = None if shared else tower(1)
    return TwinBERT(q, d, crossing, query_max_length=query_max_length, doc_max_length=doc_max_length).train()


# --------------------------------------------------------------------------- the cross-encoder teacher
class _TeacherHead(nn.Module):
    """MLP on the joint features ``[a, b, a*b, |a-b|]`` (+ a linear term on the separate-pass cosine)."""

    def __init__(self, dim: int, hidden: int, skip: bool, parts: int = 4) -> None:
        super().__init__()
        self.dim = parts * dim
        self.mlp = nn.Sequential(nn.Linear(self.dim, hidden), nn.ReLU(), nn.Linear(hidden, 1))
        self.skip = nn.Linear(1, 1) if skip else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.mlp(x[..., : self.dim])
        if self.skip is not None:
            out = out + self.skip(x[..., self.dim :])
        return out


class CrossEncoderTeacher(nn.Module):
    """A cross-encoder: one BERT pass over ``[CLS] q [SEP] d [SEP]`` and an MLP head -> relevance logit.

    The last hidden states are mean-pooled separately over the query segment (``token_type_ids == 0``) and
    the document segment (``== 1``) into ``a`` and ``b`` (L2-normalised); because the encoding is joint,
    each token state has attended to both texts. The head scores ``[a, b, a*b, |a-b|]``.

    With ``bi_encoder_skip=True`` the same encoder also reads the query and the document *separately*
    (mean pooling, as a sentence encoder) and the logit gets a learned linear term ``w * cos(e_q, e_d)``:
    ``logit = MLP([a, b, a*b, |a-b|]) + w * cos + c``. The joint pass then only has to learn a correction to
    the bi-encoder's score, which a short fine-tuning on few pairs can do, whereas a pretrained sentence
    encoder read jointly starts far below its own bi-encoder score. It costs the two separate passes.

    Args:
        encoder: a ``MiniLMEncoder`` or ``BertModel``; its tokenizer must accept text pairs.
        hidden: width of the head's hidden layer.
        max_length: tokens per (query, document) pair; the document is truncated first.
        tokenizer: default ``encoder.tokenizer``.
        bi_encoder_skip: add the separate-pass cosine term (see above).
        pooling: ``"segments"`` (the two segments' pooled states, above) or ``"cls"`` (the head reads the
            ``[CLS]`` token's last state, the usual BERT cross-encoder; what a randomly initialised tiny BERT
            learns from scratch, where the segment means are dominated by a component common to all pairs).
        match_features: mark every document token equal to the ``j``-th query token with the segment id
            ``2 + j`` (capped at the encoder's ``type_vocab_size - 1``), an exact-match feature (as in DrQA)
            that only a model reading both texts can compute. Needs ``type_vocab_size >= 3``.

    Example:
        >>> from torchslim.zoo.minilm import minilm                                     # doctest: +SKIP
        >>> teacher = CrossEncoderTeacher(minilm(), max_length=96, bi_encoder_skip=True)  # doctest: +SKIP
        >>> teacher.score_pairs(["flu shots"], ["Clinics lack flu vaccine."]).shape      # doctest: +SKIP
        torch.Size([1])
    """

    def __init__(
        self,
        encoder: nn.Module,
        hidden: int = 256,
        max_length: int = 160,
        tokenizer: Any = None,
        bi_encoder_skip: bool = False,
        pooling: Literal["segments", "cls"] = "segments",
        match_features: bool = False,
    ) -> None:
        super().__init__()
        self.bert = _bert_of(encoder, "CrossEncoderTeacher")
        self.tokenizer = tokenizer if tokenizer is not None else getattr(encoder, "tokenizer", None)
        dim = int(self.bert.config.hidden_size)
        if pooling not in ("segments", "cls"):
            raise ConfigError(f"CrossEncoderTeacher: pooling must be 'segments' or 'cls', got {pooling!r}")
        self.pooling = pooling
        self.match_features = bool(match_features)
        n_types = int(getattr(self.bert.config, "type_vocab_size", 2))
        if self.match_features and n_types < 3:
            raise ConfigError(
                f"CrossEncoderTeacher: match_features needs an encoder with type_vocab_size >= 3, this one has "
                f"{n_types}; build it with tiny_bert(..., type_vocab_size=4)"
            )
        self.bi_encoder_skip = bool(bi_encoder_skip)
        self.head = _TeacherHead(dim, hidden, self.bi_encoder_skip, parts=4 if pooling == "segments" else 1)
        self.max_length = int(max_length)

    def tokenize_pairs(self, queries: Sequence[str], docs: Sequence[str]) -> dict[str, torch.Tensor]:
        """Tokenize (query, document) pairs jointly, with segment ids (and separately, with the skip term)."""
        if self.tokenizer is None:
            raise ConfigError("CrossEncoderTeacher: no tokenizer; pass tokenizer= or a MiniLMEncoder")
        qs, ds = _texts(queries, "CrossEncoderTeacher"), _texts(docs, "CrossEncoderTeacher")
        if len(qs) != len(ds):
            raise ConfigError(
                f"CrossEncoderTeacher: {len(qs)} queries but {len(ds)} documents; pass equal lists"
            )
        enc = dict(
            self.tokenizer(
                qs,
                ds,
                padding=True,
                truncation="only_second",
                max_length=self.max_length,
                return_tensors="pt",
            )
        )
        if "token_type_ids" not in enc:
            raise ConfigError("CrossEncoderTeacher: the tokenizer returned no token_type_ids for text pairs")
        if self.match_features:
            enc["token_type_ids"] = self._mark_matches(enc["input_ids"], enc["token_type_ids"])
        device = next(self.parameters()).device
        out = {k: v.to(device) for k, v in enc.items() if k in _INPUT_KEYS}
        if self.bi_encoder_skip:
            for prefix, texts in (("q_", qs), ("d_", ds)):
                single = dict(
                    self.tokenizer(
                        texts, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
                    )
                )
                out[prefix + "input_ids"] = single["input_ids"].to(device)
                out[prefix + "attention_mask"] = single["attention_mask"].to(device)
        return out

    def _mark_matches(self, ids: torch.Tensor, types: torch.Tensor) -> torch.Tensor:
        """Segment ids with document tokens equal to query token ``j`` set to ``2 + j`` (capped)."""
        top = int(self.bert.config.type_vocab_size) - 1
        out = types.clone()
        for r in range(ids.shape[0]):
            first = torch.nonzero(types[r] == 0).flatten()
            # the first segment is [CLS] q1 .. qn [SEP]: skip its first and last token
            q_ids = ids[r, first[1:-1]].tolist()
            doc = types[r] == 1
            for j, q in enumerate(q_ids):
                hit = doc & (ids[r] == q) & (out[r] == 1)
                out[r, hit] = min(2 + j, top)
        return out

    def _separate_cosine(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        def embed(prefix: str) -> torch.Tensor:
            ids, mask = inputs.get(prefix + "input_ids"), inputs.get(prefix + "attention_mask")
            if ids is None or mask is None:
                raise ConfigError(
                    "CrossEncoderTeacher: bi_encoder_skip needs q_/d_input_ids and q_/d_attention_mask; "
                    "tokenize with tokenize_pairs"
                )
            h = _last_hidden(self.bert, {"input_ids": ids, "attention_mask": mask})
            m = mask.unsqueeze(-1).to(h.dtype)
            return (h * m).sum(1) / m.sum(1).clamp(min=1e-9)

        return F.cosine_similarity(embed("q_"), embed("d_"), dim=-1, eps=1e-8).unsqueeze(-1)

    def features(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        token_type_ids: torch.Tensor,
        **separate: torch.Tensor,
    ) -> torch.Tensor:
        """Head input ``[B, 4D]`` from one joint pass (``[B, D]`` with ``pooling="cls"``; one more column
        with the separate-pass cosine)."""
        hidden = _last_hidden(
            self.bert,
            {"input_ids": input_ids, "attention_mask": attention_mask, "token_type_ids": token_type_ids},
        )
        if self.pooling == "cls":
            feats = [hidden[:, 0]]
            if self.bi_encoder_skip:
                feats.append(self._separate_cosine(separate))
            return torch.cat(feats, dim=-1)
        valid = attention_mask.to(hidden.dtype)
        seg_b = (token_type_ids > 0).to(hidden.dtype) * valid
        seg_a = (token_type_ids == 0).to(hidden.dtype) * valid

        def pool(m: torch.Tensor) -> torch.Tensor:
            e = (hidden * m.unsqueeze(-1)).sum(1) / m.sum(1, keepdim=True).clamp(min=1e-9)
            return F.normalize(e, dim=-1)

        a, b = pool(seg_a), pool(seg_b)
        feats = [a, b, a * b, (a - b).abs()]
        if self.bi_encoder_skip:
            feats.append(self._separate_cosine(separate))
        return torch.cat(feats, dim=-1)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        token_type_ids: torch.Tensor,
        **separate: torch.Tensor,
    ) -> torch.Tensor:
        """Relevance logits ``[B]`` of tokenized pairs (from :meth:`tokenize_pairs`)."""
        return self.head(self.features(input_ids, attention_mask, token_type_ids, **separate)).squeeze(-1)

    @torch.no_grad()
    def pair_features(
        self, queries: Sequence[str], docs: Sequence[str], batch_size: int = 32
    ) -> torch.Tensor:
        """Head inputs ``[N, 4D]`` of raw pairs (eval mode, no grad)."""
        qs, ds = _texts(queries, "CrossEncoderTeacher"), _texts(docs, "CrossEncoderTeacher")
        was_training = self.training
        self.eval()
        try:
            out = [
                self.features(**self.tokenize_pairs(qs[i : i + batch_size], ds[i : i + batch_size]))
                for i in range(0, len(qs), batch_size)
            ]
        finally:
            self.train(was_training)
        width = self.head.dim + int(self.bi_encoder_skip)
        return torch.cat(out) if out else torch.empty(0, width)

    @torch.no_grad()
    def score_pairs(self, queries: Sequence[str], docs: Sequence[str], batch_size: int = 32) -> torch.Tensor:
        """Relevance logits ``[N]`` of raw pairs, ``batch_size`` pairs per encoder pass."""
        was_training = self.training
        self.eval()
        try:
            return self.head(self.pair_features(queries, docs, batch_size)).squeeze(-1)
        finally:
            self.train(was_training)


def _fit_logistic(layer: nn.Linear, x: torch.Tensor, y: torch.Tensor, steps: int = 50) -> None:
    """Fit ``layer`` (``[1 -> 1]``) as the logistic regression of labels ``y`` on ``x`` (L-BFGS)."""
    w = torch.zeros(1, 1, requires_grad=True)
    b = torch.zeros(1, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=steps, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = F.binary_cross_entropy_with_logits((x @ w + b).squeeze(-1), y) + 1e-4 * (w**2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        layer.weight.copy_(w.detach())
        layer.bias.copy_(b.detach())


def train_teacher_head(
    teacher: CrossEncoderTeacher,
    queries: Sequence[str] | None,
    docs: Sequence[str] | None,
    labels: Sequence[float] | torch.Tensor,
    train: TrainConfig | None = None,
    features: torch.Tensor | None = None,
    batch_size: int = 32,
    progress: bool = False,
) -> TrainResult:
    """Fit the teacher's head on labelled pairs (binary cross-entropy); the encoder stays frozen.

    The pair features are computed once (or passed as ``features``, e.g. from
    :meth:`CrossEncoderTeacher.pair_features`) and the head is trained on them by the shared Trainer. With
    ``bi_encoder_skip`` the cosine term is first set to its own logistic-regression fit (L-BFGS).

    Args:
        labels: 1 = relevant, 0 = not (floats in [0, 1] allowed).
        train: default: AdamW, lr 1e-3, 30 epochs of batch 64.
    """
    y = torch.as_tensor(labels, dtype=torch.float32).flatten()
    if features is None:
        if queries is None or docs is None:
            raise ConfigError("train_teacher_head: pass queries and docs, or precomputed features=")
        features = teacher.pair_features(queries, docs, batch_size)
    if features.shape[0] != y.shape[0]:
        raise ConfigError(f"train_teacher_head: {features.shape[0]} pairs but {y.shape[0]} labels")
    if bool(((y < 0) | (y > 1)).any()):
        raise ConfigError("train_teacher_head: labels must lie in [0, 1] (1 = relevant)")
    cfg = train or TrainConfig(epochs=30, batch_size=64, lr=1e-3, optimizer="adamw", weight_decay=0.01)

    skip = getattr(teacher.head, "skip", None)
    if isinstance(skip, nn.Linear):  # start the cosine term at its own logistic-regression fit
        _fit_logistic(skip, features[:, -1:].float(), y)

    def step_fn(head: nn.Module, batch: Any) -> torch.Tensor:
        x, t = batch
        return F.binary_cross_entropy_with_logits(head(x).squeeze(-1), t)

    return Trainer(teacher.head, cfg, step_fn=step_fn, progress=progress).fit(TensorDataset(features, y))


def finetune_teacher(
    teacher: CrossEncoderTeacher,
    queries: Sequence[str],
    docs: Sequence[str],
    labels: Sequence[float] | torch.Tensor,
    train: TrainConfig | None = None,
    train_layers: int | None = None,
    progress: bool = False,
) -> TrainResult:
    """Fine-tune the cross-encoder end to end on labelled pairs (binary cross-entropy): encoder layers + head.

    The paper's teacher is a *fine-tuned* BERT cross-encoder; this trains the joint encoder itself, not only
    the head (:func:`train_teacher_head`). A good recipe with few pairs is to fit the head first on frozen
    features (:func:`train_teacher_head`), then call this with a small learning rate.

    Args:
        teacher: the :class:`CrossEncoderTeacher` (trained in place; left in eval mode). Its encoder is the
            module it was built from, so build it from ``copy.deepcopy(encoder)`` when that encoder is also used
            elsewhere (e.g. by :func:`build_twinbert`, which copies layers from it).
        queries, docs, labels: the pairs (query ``i`` with document ``i``), labels in [0, 1] (1 = relevant).
            Hard negatives (irrelevant documents that look relevant) are what makes the teacher useful.
        train: default AdamW, lr 5e-5, one-cycle, 2 epochs of batch 16, gradient clipping at 1.
        train_layers: fine-tune only the top ``train_layers`` transformer layers (the embeddings and the lower
            layers stay frozen and run without building a graph); ``None``: the whole encoder, embeddings
            included. The head is always trained.
        progress: show a progress bar.

    Raises:
        ConfigError: lists of different lengths, labels outside [0, 1], or ``train_layers`` out of range.

    Example:
        >>> from torchslim.zoo.minilm import minilm                                     # doctest: +SKIP
        >>> teacher = CrossEncoderTeacher(minilm(), max_length=96)   # its own encoder  # doctest: +SKIP
        >>> train_teacher_head(teacher, queries, docs, labels)           # head first  # doctest: +SKIP
        >>> finetune_teacher(teacher, queries, docs, labels, train_layers=3)            # doctest: +SKIP
    """
    qs, ds = _texts(queries, "finetune_teacher"), _texts(docs, "finetune_teacher")
    y = torch.as_tensor(labels, dtype=torch.float32).flatten()
    if not (len(qs) == len(ds) == y.shape[0]) or not qs:
        raise ConfigError(
            f"finetune_teacher: got {len(qs)} queries, {len(ds)} documents and {y.shape[0]} labels; "
            "pass one label per (query, document) pair, at least one pair"
        )
    if bool(((y < 0) | (y > 1)).any()):
        raise ConfigError("finetune_teacher: labels must lie in [0, 1] (1 = relevant)")
    layers = list(teacher.bert.encoder.layer)
    if train_layers is not None and not 1 <= train_layers <= len(layers):
        raise ConfigError(
            f"finetune_teacher: train_layers must be in 1..{len(layers)} (the encoder's depth) or None "
            f"(everything), got {train_layers}"
        )
    cfg = train or TrainConfig(
        epochs=2,
        batch_size=16,
        lr=5e-5,
        optimizer="adamw",
        weight_decay=0.01,
        schedule="onecycle",
        grad_clip=1.0,
    )
    saved = {id(p): p.requires_grad for p in teacher.parameters()}
    trainable = [teacher.head, *(layers if train_layers is None else layers[-train_layers:])]
    if train_layers is None:
        trainable.append(teacher.bert)
    for p in teacher.parameters():
        p.requires_grad_(False)
    for module in trainable:
        for p in module.parameters():
            p.requires_grad_(True)

    def step_fn(model: nn.Module, batch: Any) -> torch.Tensor:
        bq, bd, bt = batch
        m: Any = getattr(model, "module", model)
        logits = model(**m.tokenize_pairs(list(bq), list(bd)))
        return F.binary_cross_entropy_with_logits(logits, bt.to(logits.device))

    try:
        return Trainer(teacher, cfg, step_fn=step_fn, progress=progress).fit(_Pairs(qs, ds, y))
    finally:
        for p in teacher.parameters():
            p.requires_grad_(saved[id(p)])
        teacher.eval()


@torch.no_grad()
def mine_hard_negatives(
    query_emb: torch.Tensor, doc_emb: torch.Tensor, k: int = 1, exclude_self: bool = True
) -> torch.Tensor:
    """For each query, the ``k`` documents most cosine-similar to it (``[Q, k]`` indices, most similar first).

    With ``exclude_self`` document ``i`` (query ``i``'s own, relevant document) is never returned for query
    ``i``, so the result are hard *negatives* for training a cross-encoder.

    Example:
        >>> q = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
        >>> d = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.2]])
        >>> mine_hard_negatives(q, d, k=1).tolist()
        [[2], [2]]
    """
    if query_emb.dim() != 2 or doc_emb.dim() != 2 or query_emb.shape[1] != doc_emb.shape[1]:
        raise ConfigError(
            f"mine_hard_negatives: expected [Q, D] and [N, D] embeddings, got {tuple(query_emb.shape)} "
            f"and {tuple(doc_emb.shape)}"
        )
    n_avail = doc_emb.shape[0] - (1 if exclude_self else 0)
    if not 1 <= k <= n_avail:
        raise ConfigError(f"mine_hard_negatives: k must be in 1..{n_avail} for {doc_emb.shape[0]} documents, got {k}")
    if exclude_self and query_emb.shape[0] > doc_emb.shape[0]:
        raise ConfigError("mine_hard_negatives: exclude_self needs document i for every query i (N >= Q)")
    sim = F.normalize(query_emb.float(), dim=-1) @ F.normalize(doc_emb.float(), dim=-1).T
    if exclude_self:
        idx = torch.arange(query_emb.shape[0])
        sim[idx, idx] = float("-inf")
    return sim.topk(k, dim=1).indices


# --------------------------------------------------------------------------- distillation
def twinbert_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    loss: Literal["bce", "mse"] = "bce",
    temperature: float = 1.0,
) -> torch.Tensor:
    """Distillation loss of the twin's logits against the teacher's (teacher side detached).

    - ``"bce"``: ``mean_i -[p_i log sigmoid(s_i/T) + (1 - p_i) log(1 - sigmoid(s_i/T))]`` with the soft label
      ``p_i = sigmoid(t_i / T)`` (cross-entropy on the teacher's scores, as in the paper);
    - ``"mse"``: ``mean_i (s_i - t_i)^2`` on logits.

    Example:
        >>> round(float(twinbert_loss(torch.tensor([0.0]), torch.tensor([0.0]))), 4)   # log 2
        0.6931
    """
    if student_logits.shape != teacher_logits.shape:
        raise ConfigError(
            f"twinbert_loss: student logits {tuple(student_logits.shape)} and teacher logits "
            f"{tuple(teacher_logits.shape)} differ; both must hold one score per (query, document) pair"
        )
    if temperature <= 0:
        raise ConfigError(f"twinbert_loss: temperature must be > 0, got {temperature}")
    t = teacher_logits.detach().to(student_logits.dtype)
    if loss == "bce":
        return F.binary_cross_entropy_with_logits(
            student_logits / temperature, torch.sigmoid(t / temperature)
        )
    if loss == "mse":
        return F.mse_loss(student_logits, t)
    raise ConfigError(f"twinbert_loss: loss must be 'bce' or 'mse', got {loss!r}")


@torch.no_grad()
def calibrate_crossing(
    model: TwinBERT,
    queries: Sequence[str],
    docs: Sequence[str],
    teacher_logits: torch.Tensor,
    ridge: float = 0.1,
    batch_size: int = 64,
) -> None:
    """Set the crossing's output layer to the ridge regression of ``teacher_logits`` on its input features.

    For the cosine crossing this fits ``w, b`` of ``w * cos + b``; for the residual crossing the final
    ``v, c``. The penalty is ``ridge * trace(X^T X) / D`` on the weights (not the bias).
    """
    out = getattr(model.crossing, "out", None)
    if not isinstance(out, nn.Linear) or not hasattr(model.crossing, "features"):
        raise ConfigError("calibrate_crossing: the crossing has no 'features' method and 'out' linear layer")
    was_training = model.training
    model.eval()
    try:
        feats = []
        for i in range(0, len(queries), batch_size):
            q = model.query_tower.embed(queries[i : i + batch_size], model.query_max_length)
            d = model.doc_tower.embed(docs[i : i + batch_size], model.doc_max_length)
            feats.append(model.crossing.features(q, d).double())
    finally:
        model.train(was_training)
    x = torch.cat(feats)
    t = teacher_logits.detach().double().flatten()
    if x.shape[0] != t.shape[0]:
        raise ConfigError(f"calibrate_crossing: {x.shape[0]} pairs but {t.shape[0]} teacher logits")
    mean_x, mean_t = x.mean(0), t.mean()
    xc, tc = x - mean_x, t - mean_t
    gram = xc.T @ xc
    lam = ridge * float(torch.diagonal(gram).sum()) / x.shape[1] + 1e-12
    w = torch.linalg.solve(gram + lam * torch.eye(x.shape[1], dtype=x.dtype), xc.T @ tc)
    out.weight.copy_(w.to(out.weight.dtype).view(1, -1))
    out.bias.fill_(float(mean_t - mean_x @ w))


class TwinDistill(Config):
    """TwinBERT distillation settings.

    Attributes:
        loss: ``"bce"`` (cross-entropy on the teacher's soft scores, the paper) or ``"mse"`` (logit MSE).
        temperature: divides both logits in the ``"bce"`` loss.
        calibrate: initialise the crossing's output layer by :func:`calibrate_crossing` on up to
            ``calibrate_pairs`` training pairs before training.
        calibrate_pairs: pairs used for that fit.
        teacher_batch_size: pairs per teacher pass when scoring the training pairs.
        train: the twin's training configuration.
    """

    type_name: ClassVar[str] = "twinbert_distill"

    loss: Literal["bce", "mse"] = "bce"
    temperature: Annotated[float, Field(gt=0)] = 1.0
    calibrate: bool = True
    calibrate_pairs: Annotated[int, Field(ge=2)] = 256
    teacher_batch_size: Annotated[int, Field(ge=1)] = 32
    train: TrainConfig = TrainConfig(
        epochs=1,
        batch_size=32,
        lr=2e-4,
        optimizer="adamw",
        weight_decay=0.01,
        schedule="onecycle",
        grad_clip=1.0,
    )


class _Pairs(Dataset[tuple[str, str, torch.Tensor]]):
    def __init__(self, queries: list[str], docs: list[str], logits: torch.Tensor) -> None:
        self.queries, self.docs, self.logits = queries, docs, logits

    def __len__(self) -> int:
        return len(self.queries)

    def __getitem__(self, i: int) -> tuple[str, str, torch.Tensor]:
        return self.queries[i], self.docs[i], self.logits[i]


def twinbert_distill(
    student: TwinBERT,
    teacher: nn.Module | None,
    queries: Sequence[str],
    docs: Sequence[str],
    config: TwinDistill | None = None,
    teacher_logits: torch.Tensor | None = None,
    checkpoint_dir: str | Path | None = None,
    resume: bool = False,
    progress: bool = True,
    callbacks: Iterable[object] = (),
) -> TrainResult:
    """Train the twin ``student`` (in place) to reproduce the teacher's relevance logits on (query, doc) pairs.

    Args:
        student: a :class:`TwinBERT`.
        teacher: a :class:`CrossEncoderTeacher` (anything with ``score_pairs(queries, docs, batch_size)``);
            frozen. May be ``None`` when ``teacher_logits`` are given.
        queries, docs: the training pairs (query ``i`` with document ``i``); no labels needed.
        config: a :class:`TwinDistill`.
        teacher_logits: precomputed teacher logits ``[N]`` (otherwise the teacher scores every pair once).
        checkpoint_dir / resume / progress / callbacks: as for :class:`~torchslim.train.Trainer`.

    Raises:
        ConfigError: lists of different lengths, no pairs, no teacher and no logits, or a wrong config type.
    """
    config = TwinDistill() if config is None else config
    if not isinstance(config, TwinDistill):
        raise ConfigError(f"twinbert_distill: config must be a TwinDistill, got {type(config).__name__}")
    if not isinstance(student, TwinBERT):
        raise ConfigError(f"twinbert_distill: student must be a TwinBERT, got {type(student).__name__}")
    qs, ds = _texts(queries, "twinbert_distill"), _texts(docs, "twinbert_distill")
    if len(qs) != len(ds) or not qs:
        raise ConfigError(
            f"twinbert_distill: needs as many queries as documents, and at least one pair; got {len(qs)} and {len(ds)}"
        )
    if teacher_logits is None:
        score = getattr(teacher, "score_pairs", None)
        if score is None:
            raise ConfigError("twinbert_distill: pass a teacher with score_pairs(...) or teacher_logits=")
        teacher_logits = score(qs, ds, config.teacher_batch_size)
    t = torch.as_tensor(teacher_logits, dtype=torch.float32).detach().flatten().cpu()
    if t.shape[0] != len(qs):
        raise ConfigError(f"twinbert_distill: {t.shape[0]} teacher logits for {len(qs)} pairs")
    if config.calibrate:  # a resumed run then loads the trained weights over it
        n = min(config.calibrate_pairs, len(qs))
        calibrate_crossing(student, qs[:n], ds[:n], t[:n])
    loss_name, temp = config.loss, config.temperature
    q_len, d_len = student.query_max_length, student.doc_max_length

    def step_fn(model: nn.Module, batch: Any) -> torch.Tensor:
        bq, bd, bt = batch
        twin: Any = getattr(model, "module", model)  # DistributedDataParallel wraps it
        q_in = twin.query_tower.tokenize(list(bq), q_len)
        d_in = twin.doc_tower.tokenize(list(bd), d_len)
        s = model(q_in, d_in)
        return twinbert_loss(s, bt.to(s.device), loss_name, temp)

    return fit_student(
        student,
        teacher if isinstance(teacher, nn.Module) else nn.Identity(),
        _Pairs(qs, ds, t),
        config.train,
        step_fn,
        callbacks=callbacks,
        checkpoint_dir=checkpoint_dir,
        resume=resume,
        progress=progress,
    )


# --------------------------------------------------------------------------- tiny models, no download
def _encode_units(
    who: str,
    units: Callable[[str], list[list[int]]],
    texts: Sequence[str] | str,
    text_pair: Sequence[str] | str | None,
    padding: bool | str,
    truncation: bool | str,
    max_length: int | None,
    return_tensors: str,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The batching shared by the word-level tokenizers: ``[CLS] a [SEP] (b [SEP])`` rows of *units* (each a
    list of ids: one id per word, or a word's trigram ids), truncated and padded as a ``transformers``
    tokenizer does. Returns ``(ids [B, T, K], attention_mask [B, T], token_type_ids [B, T])``.

    ``padding``: ``True``/``"longest"`` pads to the longest row, ``"max_length"`` to ``max_length``. With
    ``truncation`` and ``max_length``, a pair loses units from its second text first (then from the first), a
    single text from its end; special tokens are always kept.
    """
    if return_tensors != "pt":
        raise ConfigError(f"{who}: only return_tensors='pt' is supported, got {return_tensors!r}")
    first = _texts(texts, who)
    second = None if text_pair is None else _texts(text_pair, who)
    if second is not None and len(second) != len(first):
        raise ConfigError(f"{who}: {len(first)} texts but {len(second)} text pairs; pass equal lists")
    n_special = 2 if second is None else 3
    if max_length is not None and max_length < n_special:
        raise ConfigError(f"{who}: max_length must be >= {n_special} (the special tokens), got {max_length}")
    if padding not in (True, "longest", "max_length"):
        raise ConfigError(f"{who}: padding must be True, 'longest' or 'max_length', got {padding!r}")
    cls_, sep = [WordTokenizer.CLS_ID], [WordTokenizer.SEP_ID]
    rows: list[list[list[int]]] = []
    types: list[list[int]] = []
    for i, text in enumerate(first):
        a = units(text)
        b = units(second[i]) if second is not None else []
        if truncation and max_length is not None:
            room = max_length - n_special
            b = b[: max(0, room - len(a))]
            a = a[: room - len(b)]
        seg_a = [cls_, *a, sep]
        seg_b = [*b, sep] if second is not None else []
        rows.append(seg_a + seg_b)
        types.append([0] * len(seg_a) + [1] * len(seg_b))
    width = max((len(r) for r in rows), default=0)
    if padding == "max_length" and max_length is not None:
        width = max(width, max_length)
    k = max((len(u) for r in rows for u in r), default=1)
    ids = torch.full((len(rows), width, k), WordTokenizer.PAD_ID, dtype=torch.long)
    mask = torch.zeros(len(rows), width, dtype=torch.long)
    tt = torch.zeros(len(rows), width, dtype=torch.long)
    for i, (r, t) in enumerate(zip(rows, types, strict=True)):
        for j, unit in enumerate(r):
            ids[i, j, : len(unit)] = torch.tensor(unit, dtype=torch.long)
        mask[i, : len(r)] = 1
        tt[i, : len(t)] = torch.tensor(t, dtype=torch.long)
    return ids, mask, tt


class WordTokenizer:
    """A whitespace word-level tokenizer over a fixed vocabulary, callable like a ``transformers`` tokenizer.

    Ids: ``[PAD]=0, [UNK]=1, [CLS]=2, [SEP]=3``, then the vocabulary's words in order. A single text becomes
    ``[CLS] w1 .. wn [SEP]``; a pair ``[CLS] q [SEP] d [SEP]`` with ``token_type_ids`` 0 for the first
    segment (its ``[SEP]`` included) and 1 for the second. Unknown words map to ``[UNK]``.

    Args:
        vocab: the words (unique, no whitespace, none of the special tokens).

    Raises:
        ConfigError: an empty vocabulary, a duplicate word, a word with whitespace or a special token.

    Example:
        >>> tok = WordTokenizer(["a", "b", "c"])
        >>> enc = tok(["a b"], ["c x"])
        >>> enc["input_ids"].tolist(), enc["token_type_ids"].tolist()
        ([[2, 4, 5, 3, 6, 1, 3]], [[0, 0, 0, 0, 1, 1, 1]])
    """

    SPECIALS: ClassVar[tuple[str, ...]] = ("[PAD]", "[UNK]", "[CLS]", "[SEP]")
    PAD_ID: ClassVar[int] = 0
    UNK_ID: ClassVar[int] = 1
    CLS_ID: ClassVar[int] = 2
    SEP_ID: ClassVar[int] = 3

    def __init__(self, vocab: Sequence[str]) -> None:
        words = list(vocab)
        if not words:
            raise ConfigError("WordTokenizer: the vocabulary is empty; pass at least one word")
        bad = [w for w in words if not isinstance(w, str) or not w or w.split() != [w] or w in self.SPECIALS]
        if bad:
            raise ConfigError(
                f"WordTokenizer: vocabulary entries must be non-empty words without whitespace and not a special "
                f"token {self.SPECIALS}; got {bad[:3]!r}"
            )
        if len(set(words)) != len(words):
            raise ConfigError("WordTokenizer: the vocabulary has duplicate words; pass each word once")
        self.vocab = [*self.SPECIALS, *words]
        self._ids = {w: i for i, w in enumerate(self.vocab)}

    @property
    def vocab_size(self) -> int:
        """Number of ids, special tokens included (the ``vocab_size`` a BERT config needs)."""
        return len(self.vocab)

    def encode(self, text: str) -> list[int]:
        """Word ids of ``text`` (no special tokens)."""
        return [self._ids.get(w, self.UNK_ID) for w in text.split()]

    def __call__(
        self,
        texts: Sequence[str] | str,
        text_pair: Sequence[str] | str | None = None,
        padding: bool | str = True,
        truncation: bool | str = True,
        max_length: int | None = None,
        return_tensors: str = "pt",
    ) -> dict[str, torch.Tensor]:
        """Encode texts (or text pairs) into ``input_ids``, ``attention_mask`` and ``token_type_ids``.

        ``padding``: ``True``/``"longest"`` pads to the longest row, ``"max_length"`` to ``max_length``.
        With ``truncation`` and ``max_length``, a pair loses words from its second text first (then from the
        first), a single text from its end; special tokens are always kept.
        """
        ids, mask, tt = _encode_units(
            "WordTokenizer", lambda t: [[i] for i in self.encode(t)], texts, text_pair, padding, truncation,
            max_length, return_tensors,
        )
        return {"input_ids": ids[:, :, 0], "attention_mask": mask, "token_type_ids": tt}


class TriLetterTokenizer:
    """TwinBERT's input: each word split into letter trigrams with ``#`` boundaries, hashed into a fixed vocabulary.

    A word ``w`` becomes the 3-letter windows of ``"#" + w + "#"``: ``"cat"`` -> ``"#ca", "cat", "at#"``;
    a one-letter word ``"a"`` -> ``"#a#"``. Each trigram ``g`` gets the id
    ``4 + zlib.crc32(g.encode("utf-8")) % num_buckets`` (a stable hash: the same id in every process, unlike
    Python's salted ``hash()``), after the special ids ``[PAD]=0, [UNK]=1, [CLS]=2, [SEP]=3`` (as
    :class:`WordTokenizer`). The vocabulary is therefore ``num_buckets + 4`` ids whatever the text, and a
    misspelt or unseen word still shares most of its trigrams with the correct one. Distinct trigrams may
    share a bucket (a hash collision); more buckets make that rarer.

    Two layouts, both called like a ``transformers`` tokenizer (single texts or pairs, ``token_type_ids`` 0 for
    the first segment and its ``[SEP]``, 1 for the second):

    - ``sum_words=True`` (the paper's: a word's trigram vectors are summed into one word vector):
      ``input_ids`` is ``[B, T, K]``, one row of ``K`` gram ids per word (padded with 0), and ``T`` counts
      words and special tokens; :class:`Tower` sums the ``K`` embeddings of each word. ``max_length`` counts
      words.
    - ``sum_words=False``: ``input_ids`` is ``[B, T]``, every trigram one token (a sequence ~4x longer than
      the words); ``max_length`` counts trigrams (a truncated word may lose its last trigrams).

    Args:
        num_buckets: size of the hashed trigram vocabulary.
        sum_words: the layout above.
        lowercase: lower-case the text first.

    Raises:
        ConfigError: ``num_buckets < 1``; bad call arguments (as :class:`WordTokenizer`).

    Example:
        >>> tok = TriLetterTokenizer(num_buckets=1000, sum_words=False)
        >>> tok.trigrams("Cat"), tok.trigrams("a")
        (['#ca', 'cat', 'at#'], ['#a#'])
        >>> tok.encode("a")                     # 4 + crc32(b"#a#") % 1000 = 4 + 466291263 % 1000
        [267]
        >>> tok(["a"])["input_ids"].tolist()    # [CLS] #a# [SEP]
        [[2, 267, 3]]
        >>> TriLetterTokenizer(num_buckets=1000)(["a cat"])["input_ids"].shape   # [B, words + 2, max grams]
        torch.Size([1, 4, 3])
    """

    SPECIALS: ClassVar[tuple[str, ...]] = WordTokenizer.SPECIALS
    PAD_ID: ClassVar[int] = WordTokenizer.PAD_ID
    UNK_ID: ClassVar[int] = WordTokenizer.UNK_ID
    CLS_ID: ClassVar[int] = WordTokenizer.CLS_ID
    SEP_ID: ClassVar[int] = WordTokenizer.SEP_ID

    def __init__(self, num_buckets: int = 30_000, sum_words: bool = True, lowercase: bool = True) -> None:
        if int(num_buckets) < 1:
            raise ConfigError(f"TriLetterTokenizer: num_buckets must be >= 1, got {num_buckets}")
        self.num_buckets = int(num_buckets)
        self.sum_words = bool(sum_words)
        self.lowercase = bool(lowercase)

    @property
    def vocab_size(self) -> int:
        """Number of ids, special tokens included (the ``vocab_size`` a BERT config needs)."""
        return self.num_buckets + len(self.SPECIALS)

    def trigrams(self, word: str) -> list[str]:
        """The letter trigrams of ``"#" + word + "#"`` (lower-cased if ``lowercase``), in order."""
        w = f"#{word.lower() if self.lowercase else word}#"
        return [w[i : i + 3] for i in range(len(w) - 2)]

    def gram_id(self, gram: str) -> int:
        """Id of one trigram: ``4 + crc32(utf-8 bytes) % num_buckets``."""
        return len(self.SPECIALS) + zlib.crc32(gram.encode("utf-8")) % self.num_buckets

    def word_ids(self, word: str) -> list[int]:
        """Trigram ids of one word."""
        return [self.gram_id(g) for g in self.trigrams(word)]

    def encode(self, text: str) -> list[int]:
        """Trigram ids of ``text``, word after word (no special tokens, the ``sum_words=False`` sequence)."""
        return [i for w in self._words(text) for i in self.word_ids(w)]

    def _words(self, text: str) -> list[str]:
        return text.split()

    def _units(self, text: str) -> list[list[int]]:
        """One unit per position: a word's gram ids (summed layout) or one gram id (sequence layout)."""
        if self.sum_words:
            return [self.word_ids(w) for w in self._words(text)]
        return [[i] for i in self.encode(text)]

    def __call__(
        self,
        texts: Sequence[str] | str,
        text_pair: Sequence[str] | str | None = None,
        padding: bool | str = True,
        truncation: bool | str = True,
        max_length: int | None = None,
        return_tensors: str = "pt",
    ) -> dict[str, torch.Tensor]:
        """Encode texts (or pairs) into ``input_ids`` (``[B, T, K]`` or ``[B, T]``), ``attention_mask`` and
        ``token_type_ids`` (``[B, T]``). Padding and truncation as :class:`WordTokenizer`."""
        ids, mask, tt = _encode_units(
            "TriLetterTokenizer", self._units, texts, text_pair, padding, truncation, max_length, return_tensors
        )
        return {
            "input_ids": ids if self.sum_words else ids[:, :, 0],
            "attention_mask": mask,
            "token_type_ids": tt,
        }


def tiny_bert(
    vocab_size: int,
    hidden: int = 64,
    layers: int = 2,
    heads: int = 2,
    intermediate: int | None = None,
    max_positions: int = 128,
    dropout: float = 0.0,
    init_range: float = 0.02,
    type_vocab_size: int = 2,
    seed: int = 0,
) -> Any:
    """A randomly initialised ``transformers`` ``BertModel`` (no pooler, no download), eval mode.

    Args:
        vocab_size: e.g. ``WordTokenizer.vocab_size``.
        hidden / layers / heads: width, depth and attention heads (``hidden`` divisible by ``heads``).
        intermediate: feed-forward width (default ``4 * hidden``).
        max_positions: longest sequence (pairs included).
        dropout: hidden and attention dropout.
        init_range: standard deviation of the initial weights (BERT's default 0.02; a larger one lets a tiny
            model trained from scratch leave the initial plateau of uniform attention sooner).
        type_vocab_size: segment ids (4 for :class:`CrossEncoderTeacher`'s ``match_features``).
        seed: ``torch.manual_seed`` before initialisation (same seed -> same weights).

    Example:
        >>> bert = tiny_bert(vocab_size=20, hidden=16, layers=1, heads=2)
        >>> bert(input_ids=torch.tensor([[2, 5, 3]])).last_hidden_state.shape
        torch.Size([1, 3, 16])
    """
    from transformers import BertConfig, BertModel

    if vocab_size < 1 or hidden < 1 or layers < 1 or heads < 1 or hidden % heads:
        raise ConfigError(
            f"tiny_bert: needs vocab_size, hidden, layers, heads >= 1 and hidden divisible by heads; got "
            f"vocab_size={vocab_size}, hidden={hidden}, layers={layers}, heads={heads}"
        )
    cfg = BertConfig(
        vocab_size=int(vocab_size),
        hidden_size=int(hidden),
        num_hidden_layers=int(layers),
        num_attention_heads=int(heads),
        intermediate_size=int(intermediate or 4 * hidden),
        max_position_embeddings=int(max_positions),
        type_vocab_size=int(type_vocab_size),
        hidden_dropout_prob=float(dropout),
        attention_probs_dropout_prob=float(dropout),
        initializer_range=float(init_range),
    )
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = BertModel(cfg, add_pooling_layer=False)
    return model.eval()


def twin_from_tiny_bert(
    tokenizer: WordTokenizer | TriLetterTokenizer,
    hidden: int = 64,
    layers: int = 2,
    heads: int = 2,
    shared: bool = True,
    pooling: PoolingName = "weighted",
    crossing: CrossingName = "cosine",
    query_max_length: int = 8,
    doc_max_length: int = 32,
    seed: int = 0,
) -> TwinBERT:
    """A TwinBERT with randomly initialised tiny BERT tower(s) over a :class:`WordTokenizer` (training mode).

    Example:
        >>> tok = WordTokenizer(["a", "b", "c"])
        >>> twin = twin_from_tiny_bert(tok, hidden=16, layers=1)
        >>> twin.pair_logits(["a b"], ["c a b"]).shape
        torch.Size([1])
    """
    max_pos = max(query_max_length, doc_max_length) + 2

    def tower(s: int) -> Tower:
        bert = tiny_bert(tokenizer.vocab_size, hidden, layers, heads, max_positions=max_pos, seed=s)
        return Tower(bert, tokenizer, pooling=pooling, max_length=doc_max_length)

    q = tower(seed)
    d = None if shared else tower(seed + 1)
    twin = TwinBERT(q, d, crossing, query_max_length=query_max_length, doc_max_length=doc_max_length)
    return twin.train()


# --------------------------------------------------------------------------- a synthetic order-sensitive task
def order_task_vocab(vocab_size: int = 500) -> list[str]:
    """The words ``t0 .. t{vocab_size-1}`` of :func:`order_task`."""
    if vocab_size < 4:
        raise ConfigError(f"order_task_vocab: vocab_size must be >= 4, got {vocab_size}")
    return [f"t{i}" for i in range(vocab_size)]


def order_relevant(query: str, doc: str, window: int = 3) -> bool:
    """``True`` when the query ``"a b"`` has ``a`` followed by ``b`` within ``window`` positions in ``doc``.

    That is, some positions ``i < j <= i + window`` hold ``doc[i] == a`` and ``doc[j] == b``.

    Example:
        >>> order_relevant("t1 t2", "t5 t1 t7 t2 t9", window=3), order_relevant("t1 t2", "t2 t1", window=3)
        (True, False)
    """
    q = query.split()
    if len(q) != 2:
        raise ConfigError(f"order_relevant: a query is two words 'a b', got {query!r}")
    a, b = q
    words = doc.split()
    return any(
        w == a and b in words[i + 1 : i + 1 + window] for i, w in enumerate(words)
    )


@dataclass
class OrderTask:
    """Pairs of :func:`order_task`: ``queries[i]`` with ``docs[i]``, ``labels[i]`` (1 = relevant), ``kinds[i]``."""

    queries: list[str]
    docs: list[str]
    labels: list[float]
    kinds: list[str]

    def __len__(self) -> int:
        return len(self.queries)


ORDER_KINDS = ("positive", "reversed", "far", "one_token", "random")


def order_task(
    n_pairs: int,
    vocab_size: int = 500,
    doc_len: int = 20,
    window: int = 3,
    mix: Sequence[float] = (0.5, 0.15, 0.15, 0.1, 0.1),
    seed: int = 0,
) -> OrderTask:
    """A retrieval task where word overlap is not enough: the *order* of the query's words in the document matters.

    A query is two distinct words ``"a b"`` of the vocabulary ``t0 .. t{vocab_size-1}``; a document is
    ``doc_len`` words. The pair is relevant iff ``a`` is followed by ``b`` within ``window`` positions
    (:func:`order_relevant`). Each pair is drawn as one of these kinds (probabilities ``mix``):

    - ``"positive"``: ``a`` at a random position, ``b`` 1..``window`` positions after it;
    - ``"reversed"`` (hard negative): ``b`` first, ``a`` 1..``window`` positions after it;
    - ``"far"`` (hard negative): ``a`` first, ``b`` more than ``window + 2`` positions after it;
    - ``"one_token"`` (hard negative): only ``a`` or only ``b`` occurs;
    - ``"random"``: neither occurs.

    The other positions hold distinct filler words other than ``a`` and ``b``, so every label follows from
    the rule (a test checks ``labels[i] == order_relevant(...)``). Same arguments -> same pairs.

    Example:
        >>> task = order_task(4, vocab_size=50, doc_len=8, seed=0)
        >>> [order_relevant(q, d) for q, d in zip(task.queries, task.docs)] == [x == 1 for x in task.labels]
        True
    """
    if n_pairs < 1:
        raise ConfigError(f"order_task: n_pairs must be >= 1, got {n_pairs}")
    if window < 1 or doc_len < window + 4:
        raise ConfigError(
            f"order_task: needs window >= 1 and doc_len >= window + 4 (room for a 'far' pair), got "
            f"window={window}, doc_len={doc_len}"
        )
    if vocab_size < doc_len + 2:
        raise ConfigError(f"order_task: vocab_size must be >= doc_len + 2, got {vocab_size} for doc_len {doc_len}")
    p = torch.as_tensor(list(mix), dtype=torch.float64)
    if p.numel() != len(ORDER_KINDS) or bool((p < 0).any()) or float(p.sum()) <= 0:
        raise ConfigError(f"order_task: mix must be {len(ORDER_KINDS)} non-negative weights for {ORDER_KINDS}")
    g = torch.Generator().manual_seed(int(seed))
    kinds_idx = torch.multinomial(p / p.sum(), n_pairs, replacement=True, generator=g).tolist()

    def randint(lo: int, hi: int) -> int:  # inclusive
        return int(torch.randint(lo, hi + 1, (1,), generator=g))

    out = OrderTask([], [], [], [])
    for k in kinds_idx:
        kind = ORDER_KINDS[k]
        perm = torch.randperm(vocab_size, generator=g).tolist()
        a, b, filler = perm[0], perm[1], perm[2 : 2 + doc_len]
        doc: list[int] = list(filler)
        if kind in ("positive", "reversed"):
            first, second = (a, b) if kind == "positive" else (b, a)
            gap = randint(1, window)
            i = randint(0, doc_len - 1 - gap)
            doc[i], doc[i + gap] = first, second
        elif kind == "far":
            gap = randint(window + 3, doc_len - 1)
            i = randint(0, doc_len - 1 - gap)
            doc[i], doc[i + gap] = a, b
        elif kind == "one_token":
            doc[randint(0, doc_len - 1)] = a if randint(0, 1) == 0 else b
        query, text = f"t{a} t{b}", " ".join(f"t{w}" for w in doc)
        out.queries.append(query)
        out.docs.append(text)
        out.labels.append(float(order_relevant(query, text, window)))
        out.kinds.append(kind)
    return out
