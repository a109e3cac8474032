"""torchslim: make PyTorch models smaller and faster, and prove it.

Importing ``torchslim`` is light: submodules (ONNX Runtime, transformers, ...) load on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_LAZY = {
    # name -> "module:attribute" (or "module" for a submodule)
    "Config": "torchslim.core.config:Config",
    "compress": "torchslim.pipeline:compress",
    "Recipe": "torchslim.pipeline:Recipe",
    "load_checkpoint": "torchslim.export.checkpoint:load_checkpoint",
    "save_checkpoint": "torchslim.export.checkpoint:save_checkpoint",
    "export_onnx": "torchslim.export.onnx:export_onnx",
    "core": "torchslim.core",
    "data": "torchslim.data",
    "zoo": "torchslim.zoo",
    "train": "torchslim.train",
    "export": "torchslim.export",
    "bench": "torchslim.bench",
    "reports": "torchslim.reports",
    "pruning": "torchslim.pruning",
    "distillation": "torchslim.distillation",
    "quantization": "torchslim.quantization",
}

__all__ = sorted(_LAZY) + ["__version__"]


def __getattr__(name: str) -> Any:
    target = _LAZY.get(name)
    if target is None:
        raise AttributeError(f"module 'torchslim' has no attribute {name!r}")
    mod_name, _, attr = target.partition(":")
    mod = importlib.import_module(mod_name)
    value = getattr(mod, attr) if attr else mod
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
