"""A small text classifier for the health tweets: a Linear head on pooled sentence embeddings.

Two ways to use it:

* head only (``encoder=None``): ``forward(embeddings [B, D]) -> logits``; train it fast on embeddings
  precomputed once with :func:`embed_texts` (the encoder stays frozen);
* end to end (``encoder=MiniLMEncoder``): ``forward(input_ids, attention_mask, token_type_ids=None)``;
  :meth:`TweetClassifier.predict` takes raw texts.

Example::

    from torch.utils.data import TensorDataset
    from torchslim import data
    from torchslim.zoo.minilm import minilm
    from torchslim.zoo.text_classifier import TweetClassifier, embed_texts
    tweets = data.health_tweets()
    enc = minilm()
    x = embed_texts(enc, tweets.texts[:2000])
    head = TweetClassifier(num_classes=len(tweets.label_names))
    train_set = TensorDataset(x, tweets.labels[:2000])        # train with torchslim.train.Trainer
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from torchslim.core.errors import ConfigError

__all__ = ["TweetClassifier", "embed_texts"]


class TweetClassifier(nn.Module):
    """Linear classifier on a pooled sentence embedding (16 health-news outlets by default).

    Args:
        num_classes: number of labels (16 for :func:`torchslim.data.health_tweets`).
        embed_dim: embedding width (384 for MiniLM-L6); taken from ``encoder`` when given.
        encoder: optional :class:`~torchslim.zoo.minilm.MiniLMEncoder` run before the head.
        dropout: dropout on the embedding during training.
    """

    def __init__(
        self,
        num_classes: int = 16,
        embed_dim: int = 384,
        encoder: nn.Module | None = None,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if num_classes < 2:
            raise ConfigError(f"TweetClassifier: num_classes must be >= 2, got {num_classes}")
        if encoder is not None:
            embed_dim = int(getattr(encoder, "dim", embed_dim))
        self.encoder = encoder
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(embed_dim, num_classes)

    def forward(self, *inputs: torch.Tensor, **kw: torch.Tensor) -> torch.Tensor:
        if self.encoder is None:
            if len(inputs) != 1 or kw:
                raise TypeError("TweetClassifier without encoder takes one tensor of embeddings [B, D]")
            emb = inputs[0]
        else:
            emb = self.encoder(*inputs, **kw)
        return self.head(self.dropout(emb))

    @torch.no_grad()
    def predict(self, texts: Sequence[str], batch_size: int = 32) -> torch.Tensor:
        """Predicted label indices for raw ``texts`` (needs an ``encoder``)."""
        if self.encoder is None:
            raise ConfigError("TweetClassifier.predict needs an encoder: TweetClassifier(encoder=minilm())")
        emb = self.encoder.encode(texts, batch_size=batch_size)  # type: ignore[operator]
        was = self.training
        self.eval()
        out = self.head(emb).argmax(1)
        self.train(was)
        return out


def embed_texts(
    encoder: Any, texts: Sequence[str], batch_size: int = 32, progress: bool = False
) -> torch.Tensor:
    """``encoder.encode(texts)`` -> ``[N, D]`` float32: features to train a head-only classifier on."""
    return encoder.encode(list(texts), batch_size=batch_size, progress=progress)
