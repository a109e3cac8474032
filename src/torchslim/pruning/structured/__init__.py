"""Structured pruning internals: channel dependency groups and per-op channel handlers."""

from __future__ import annotations

from torchslim.pruning.structured.dependency import ChannelGroup, Member, build_groups
from torchslim.pruning.structured.handlers import ChannelHandler, handler_for

__all__ = ["ChannelGroup", "ChannelHandler", "Member", "build_groups", "handler_for"]
