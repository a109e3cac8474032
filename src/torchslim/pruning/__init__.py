"""Pruning: dependency-aware structured channel pruning with physical removal.

>>> from torchslim.pruning import ChannelPrune, prune_   # doctest: +SKIP
"""

from __future__ import annotations

from torchslim.pruning.api import ChannelPrune, GroupInfo, PruneError, PruneResult, count_params, prune_
from torchslim.pruning.structured.transformer import FFNPrune, HeadPrune, prune_ffn_, prune_heads_

__all__ = [
    "ChannelPrune",
    "FFNPrune",
    "GroupInfo",
    "HeadPrune",
    "PruneError",
    "PruneResult",
    "count_params",
    "prune_",
    "prune_ffn_",
    "prune_heads_",
]
