"""Channel importance criteria and kept-count arithmetic for structured pruning.

Pure tensor functions, so they double as the reference implementation in tests. The criteria that
``ChannelPrune(importance=...)`` accepts (these norms plus ``bn_scale``, ``taylor``, ``hrank`` and any
user-registered one) live in the registry :mod:`torchslim.pruning.structured.importance`.

Example::

    >>> import torch
    >>> from torchslim.pruning.importance import n_keep, top_channels
    >>> n_keep(64, ratio=0.5, round_to=16)
    32
    >>> top_channels(torch.tensor([0.1, 3.0, 2.0, 0.5]), 2).tolist()
    [1, 2]
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import torch

#: the data-free criteria :func:`score_channels` computes (see the registry for all criteria)
Importance = Literal["l1", "l2", "random"]


def n_keep(channels: int, ratio: float, round_to: int = 1, round_mode: str = "up") -> int:
    """Channels kept when removing ``ratio`` of ``channels``: ``ceil((1-ratio)*C)`` rounded to a multiple of
    ``round_to`` (``round_mode``: ``"up"``, ``"nearest"`` or ``"down"``; never below ``round_to``), and never
    more than ``channels``.

    Rounding up never removes more than asked; on narrow layers it can remove much less (48 -> 32 at 16 when
    half was asked keeps 32, but 32 -> 16 keeps 16). ``"nearest"`` lands closest to the asked count, which is
    what matches another tool's MACs (e.g. Torch-Pruning rounds down).

    >>> n_keep(10, 0.3), n_keep(48, 0.5, round_to=16), n_keep(8, 0.5, round_to=16)
    (7, 32, 8)
    >>> n_keep(32, 0.3, 16), n_keep(32, 0.3, 16, "nearest"), n_keep(64, 0.3, 16, "down")
    (32, 16, 32)
    """
    if not 0 <= ratio < 1:
        raise ValueError(f"ratio must be in [0, 1), got {ratio}")
    if round_to < 1:
        raise ValueError(f"round_to must be >= 1, got {round_to}")
    n = math.ceil((1.0 - ratio) * channels - 1e-9)
    n = max(n, 1)
    if round_mode == "up":
        n = math.ceil(n / round_to) * round_to
    elif round_mode == "nearest":
        n = max(round_to, math.floor(n / round_to + 0.5) * round_to)
    elif round_mode == "down":
        n = max(round_to, math.floor(n / round_to) * round_to)
    else:
        raise ValueError(f"round_mode must be 'up', 'nearest' or 'down', got {round_mode!r}")
    return min(n, channels)


def group_scores(filter_norms: Sequence[torch.Tensor]) -> torch.Tensor:
    """Sum of per-producer filter norms, each normalised by its producer's largest norm.

    Normalising per producer stops one large-scale layer from deciding for the whole group.
    """
    if not filter_norms:
        raise ValueError("a group needs at least one producer to score")
    total = torch.zeros_like(filter_norms[0], dtype=torch.float64)
    for s in filter_norms:
        s = s.detach().to(torch.float64)
        peak = s.abs().max()
        total += s / peak if peak > 0 else s
    return total


def score_channels(filter_norms: Sequence[torch.Tensor], kind: Importance,
                   generator: torch.Generator | None = None) -> torch.Tensor:
    """Per-channel score of a group: ``group_scores`` for l1/l2 (norms computed with that p), or
    uniform random numbers for ``"random"``."""
    if kind == "random":
        n = filter_norms[0].numel()
        return torch.rand(n, generator=generator, dtype=torch.float64)
    return group_scores(filter_norms)


def top_channels(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the ``k`` highest scores, in ascending index order (ties keep the lower index)."""
    if k >= scores.numel():
        return torch.arange(scores.numel())
    order = sorted(range(scores.numel()), key=lambda i: (-float(scores[i]), i))
    return torch.tensor(sorted(order[:k]), dtype=torch.long)
