"""Pruning: dependency-aware structured channel pruning with physical removal.

>>> from torchslim.pruning import ChannelPrune, prune_   # doctest: +SKIP
"""

from __future__ import annotations

from torchslim.pruning.api import ChannelPrune, GroupInfo, PruneError, PruneResult, count_params, prune_

__all__ = ["ChannelPrune", "GroupInfo", "PruneError", "PruneResult", "count_params", "prune_"]
