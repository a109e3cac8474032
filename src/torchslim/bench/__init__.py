"""Honest measurement: interleaved latency (``latency``), accuracy / agreement (``accuracy``), size on disk
(``size``). Light to import: submodules load on first use (``from torchslim.bench import latency``)."""

from __future__ import annotations

import importlib
from typing import Any

_SUBMODULES = ("latency", "accuracy", "size")
__all__ = list(_SUBMODULES)


def __getattr__(name: str) -> Any:
    if name in _SUBMODULES:
        mod = importlib.import_module(f"torchslim.bench.{name}")
        globals()[name] = mod
        return mod
    raise AttributeError(f"module 'torchslim.bench' has no attribute {name!r}")


def __dir__() -> list[str]:
    return __all__
