"""Export (ONNX), parity checks against ONNX Runtime, and pickle-free checkpoints.

Light to import: ``onnx``/``onnxruntime``/``safetensors`` load on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "export_onnx": "torchslim.export.onnx",
    "ExportError": "torchslim.export.onnx",
    "check_parity": "torchslim.export.parity",
    "ParityReport": "torchslim.export.parity",
    "ort_session": "torchslim.export.parity",
    "save_checkpoint": "torchslim.export.checkpoint",
    "load_checkpoint": "torchslim.export.checkpoint",
    "read_structure": "torchslim.export.checkpoint",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    mod = _LAZY.get(name)
    if mod is None:
        raise AttributeError(f"module 'torchslim.export' has no attribute {name!r}")
    value = getattr(importlib.import_module(mod), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
