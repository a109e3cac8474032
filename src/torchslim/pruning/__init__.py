"""Pruning: dependency-aware structured channel pruning with physical removal.

>>> from torchslim.pruning import ChannelPrune, prune_   # doctest: +SKIP
"""

from __future__ import annotations

from torchslim.pruning.adp import ADPConfig, adp_train
from torchslim.pruning.api import ChannelPrune, GroupInfo, PruneError, PruneResult, count_params, prune_
from torchslim.pruning.dcp import DCPConfig, DKPConfig, dcp_prune_, dkp_prune_
from torchslim.pruning.dsc import DSCConfig, dsc_train
from torchslim.pruning.knapsack import KnapsackPrune, knapsack_prune_
from torchslim.pruning.npn import NPNConfig, npn_prune_
from torchslim.pruning.structured.transformer import FFNPrune, HeadPrune, prune_ffn_, prune_heads_

__all__ = [
    "ADPConfig",
    "ChannelPrune",
    "DCPConfig",
    "DKPConfig",
    "DSCConfig",
    "KnapsackPrune",
    "NPNConfig",
    "adp_train",
    "dcp_prune_",
    "dkp_prune_",
    "dsc_train",
    "knapsack_prune_",
    "npn_prune_",
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
