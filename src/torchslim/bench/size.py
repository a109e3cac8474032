"""Size on disk: bytes of the saved artifact, not parameter counts alone.

Example::

    >>> file_bytes("model.onnx")             # doctest: +SKIP
    >>> state_dict_bytes(model), params(model)  # doctest: +SKIP
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from torch import nn

__all__ = ["file_bytes", "state_dict_bytes", "params"]


def file_bytes(path: str | os.PathLike[str]) -> int:
    """Size in bytes of a file, or the total of all files under a directory (e.g. a checkpoint folder)."""
    p = Path(path)
    if p.is_file():
        return p.stat().st_size
    if p.is_dir():
        return sum(f.stat().st_size for f in p.rglob("*") if f.is_file())
    raise FileNotFoundError(f"{p} does not exist: nothing to measure. Save or export the model first.")


def state_dict_bytes(model: nn.Module) -> int:
    """Bytes of the model's state dict serialised as safetensors (written to a temporary file and measured).

    Tied tensors are stored once, as :func:`torchslim.export.save_checkpoint` stores them.
    """
    from safetensors.torch import save_file

    from torchslim.export.checkpoint import _tensors_and_aliases

    tensors, _ = _tensors_and_aliases(model)
    with tempfile.TemporaryDirectory(prefix="torchslim-size-") as d:
        f = Path(d) / "model.safetensors"
        save_file(tensors, str(f))
        return f.stat().st_size


def params(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters (each shared parameter counted once)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
