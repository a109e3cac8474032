"""Checkpoints that survive pruning and never unpickle: a folder with ``model.safetensors`` + ``structure.json``.

``structure.json`` holds the format name and version, the zoo spec (``{"name", "kwargs"}``) that rebuilds the
architecture, and the type and constructor arguments of every leaf module whose shape differs from what that
spec builds (a pruned conv, a thinner BatchNorm, ...), plus optional ``recipe`` and ``meta``.
:func:`load_checkpoint` rebuilds the model from the spec (or takes a skeleton), swaps in modules of the
recorded shapes and loads the weights with ``strict=True``.

Example::

    >>> save_checkpoint(model, "ckpt/")                       # doctest: +SKIP
    >>> model2 = load_checkpoint("ckpt/")                     # zoo models: no skeleton needed  # doctest: +SKIP
    >>> model3 = load_checkpoint("ckpt/", model=MyNet())      # other models: pass a skeleton   # doctest: +SKIP
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from torchslim.core.errors import CheckpointError
from torchslim.core.io import atomic_write_bytes, atomic_write_json

__all__ = ["save_checkpoint", "load_checkpoint", "FORMAT_NAME", "FORMAT_VERSION", "module_args"]

FORMAT_NAME = "torchslim.checkpoint"
FORMAT_VERSION = 1
WEIGHTS_FILE = "model.safetensors"
STRUCTURE_FILE = "structure.json"


# --------------------------------------------------------------------------- leaf module <-> constructor args
def _conv_args(m: nn.Module) -> dict[str, Any]:
    assert isinstance(m, nn.modules.conv._ConvNd)
    return {
        "in_channels": m.in_channels,
        "out_channels": m.out_channels,
        "kernel_size": list(m.kernel_size),
        "stride": list(m.stride),
        "padding": m.padding if isinstance(m.padding, str) else list(m.padding),
        "dilation": list(m.dilation),
        "groups": m.groups,
        "bias": m.bias is not None,
        "padding_mode": m.padding_mode,
    }


def _bn_args(m: nn.Module) -> dict[str, Any]:
    assert isinstance(m, nn.modules.batchnorm._BatchNorm)
    return {
        "num_features": m.num_features,
        "eps": m.eps,
        "momentum": m.momentum,
        "affine": m.affine,
        "track_running_stats": m.track_running_stats,
    }


def _linear_args(m: nn.Module) -> dict[str, Any]:
    assert isinstance(m, nn.Linear)
    return {"in_features": m.in_features, "out_features": m.out_features, "bias": m.bias is not None}


def _ln_args(m: nn.Module) -> dict[str, Any]:
    assert isinstance(m, nn.LayerNorm)
    return {
        "normalized_shape": list(m.normalized_shape),
        "eps": m.eps,
        "elementwise_affine": m.elementwise_affine,
        "bias": m.bias is not None,
    }


def _gn_args(m: nn.Module) -> dict[str, Any]:
    assert isinstance(m, nn.GroupNorm)
    return {"num_groups": m.num_groups, "num_channels": m.num_channels, "eps": m.eps, "affine": m.affine}


def _emb_args(m: nn.Module) -> dict[str, Any]:
    assert isinstance(m, nn.Embedding)
    return {
        "num_embeddings": m.num_embeddings,
        "embedding_dim": m.embedding_dim,
        "padding_idx": m.padding_idx,
        "max_norm": m.max_norm,
        "norm_type": m.norm_type,
        "scale_grad_by_freq": m.scale_grad_by_freq,
        "sparse": m.sparse,
    }


# Only these types can be (re)built from a checkpoint: the file never names an arbitrary import path.
_KINDS: dict[str, tuple[type[nn.Module], Callable[[nn.Module], dict[str, Any]]]] = {
    "Conv1d": (nn.Conv1d, _conv_args),
    "Conv2d": (nn.Conv2d, _conv_args),
    "Conv3d": (nn.Conv3d, _conv_args),
    "BatchNorm1d": (nn.BatchNorm1d, _bn_args),
    "BatchNorm2d": (nn.BatchNorm2d, _bn_args),
    "BatchNorm3d": (nn.BatchNorm3d, _bn_args),
    "Linear": (nn.Linear, _linear_args),
    "LayerNorm": (nn.LayerNorm, _ln_args),
    "GroupNorm": (nn.GroupNorm, _gn_args),
    "Embedding": (nn.Embedding, _emb_args),
}


def module_args(m: nn.Module) -> tuple[str, dict[str, Any]] | None:
    """``(type name, constructor args)`` of a supported leaf module (exact type match), else ``None``."""
    for kind, (cls, fn) in _KINDS.items():
        if type(m) is cls:
            return kind, fn(m)
    return None


def _build_module(kind: str, args: dict[str, Any], like: nn.Module | None) -> nn.Module:
    if kind not in _KINDS:
        raise CheckpointError(
            f"structure.json names a module type {kind!r} that torchslim cannot rebuild (supported: "
            f"{', '.join(_KINDS)}). Was the checkpoint written by a newer torchslim?"
        )
    cls = _KINDS[kind][0]
    kw = dict(args)
    for k in ("kernel_size", "stride", "dilation", "normalized_shape"):
        if isinstance(kw.get(k), list):
            kw[k] = tuple(kw[k])
    if isinstance(kw.get("padding"), list):
        kw["padding"] = tuple(kw["padding"])
    factory: dict[str, Any] = {}
    if like is not None:
        t: torch.Tensor | None = next(iter(like.parameters()), None)
        if t is None:
            t = next(iter(like.buffers()), None)
        if t is not None:
            factory = {"device": t.device, "dtype": t.dtype if t.is_floating_point() else None}
    try:
        return cls(**kw, **factory)
    except TypeError as e:
        raise CheckpointError(f"cannot rebuild a {kind} from structure.json args {args}: {e}") from e



# --------------------------------------------------------------------------- spec
def _spec_of(model: nn.Module) -> dict[str, Any] | None:
    try:
        from torchslim.zoo import spec_of  # type: ignore[attr-defined]

        spec = spec_of(model)
    except (ImportError, AttributeError):
        spec = getattr(model, "_torchslim_spec", None)
    if spec is None:
        return None
    return {"name": str(spec["name"]), "kwargs": dict(spec.get("kwargs", {}))}


def _build_from_spec(spec: dict[str, Any]) -> nn.Module:
    try:
        from torchslim.zoo import build  # type: ignore[attr-defined]
    except (ImportError, AttributeError) as e:
        raise CheckpointError(
            "this checkpoint records a zoo spec but torchslim.zoo.build is unavailable; pass model=<skeleton>."
        ) from e
    try:
        return build(spec["name"], **spec.get("kwargs", {}))
    except Exception as e:  # an unknown zoo name, bad kwargs ...
        raise CheckpointError(
            f"cannot rebuild zoo model {spec.get('name')!r} with kwargs {spec.get('kwargs')}: {e}. "
            "Pass the architecture yourself: load_checkpoint(dir, model=<skeleton>)."
        ) from e


def _shape_changes(model: nn.Module, reference: nn.Module | None) -> dict[str, dict[str, Any]]:
    """Leaf modules of ``model`` whose constructor args differ from ``reference`` (all of them if none)."""
    ref_mods = dict(reference.named_modules()) if reference is not None else {}
    out: dict[str, dict[str, Any]] = {}
    for name, m in model.named_modules():
        if not name:
            continue
        got = module_args(m)
        if got is None:
            continue
        ref = ref_mods.get(name)
        if reference is not None and ref is not None and module_args(ref) == got:
            continue
        out[name] = {"type": got[0], "args": got[1]}
    return out


# --------------------------------------------------------------------------- tensors
def _tensors_and_aliases(model: nn.Module) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """State dict with tied tensors stored once (``aliases``: name -> stored name)."""
    tensors: dict[str, torch.Tensor] = {}
    aliases: dict[str, str] = {}
    seen: dict[tuple[Any, ...], str] = {}
    for k, v in model.state_dict().items():
        if not isinstance(v, torch.Tensor):
            raise CheckpointError(
                f"state_dict entry {k!r} is a {type(v).__name__}, not a tensor: it cannot go in safetensors."
            )
        key = (
            v.device,
            v.untyped_storage().data_ptr(),
            v.storage_offset(),
            tuple(v.shape),
            tuple(v.stride()),
            v.dtype,
        )
        if v.numel() > 0 and key in seen:
            aliases[k] = seen[key]
            continue
        seen[key] = k
        tensors[k] = v.detach().to("cpu").contiguous().clone()
    return tensors, aliases


def save_checkpoint(
    model: nn.Module,
    directory: str | os.PathLike[str],
    recipe: dict[str, Any] | None = None,
    meta: dict[str, Any] | None = None,
) -> Path:
    """Save ``model`` to ``directory`` (created) as ``model.safetensors`` + ``structure.json``.

    Both files are written atomically (weights first, structure last), so an interrupted save never leaves
    a checkpoint that looks complete but is not. Returns the directory.
    """
    from safetensors.torch import save as st_save

    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise CheckpointError(
            f"{directory} exists and is a file; a checkpoint is a directory: pick another path."
        )
    directory.mkdir(parents=True, exist_ok=True)
    spec = _spec_of(model)
    reference: nn.Module | None = None
    if spec is not None:
        try:
            reference = _build_from_spec(spec)
        except CheckpointError:
            reference = None  # record every supported leaf: still loadable with a skeleton
    modules = _shape_changes(model, reference)
    tensors, aliases = _tensors_and_aliases(model)
    blob = st_save(tensors, metadata={"format": "pt", "torchslim_format": FORMAT_NAME})
    structure = {
        "format": FORMAT_NAME,
        "version": FORMAT_VERSION,
        "torch_version": torch.__version__,
        "model_class": type(model).__name__,
        "spec": spec,
        "modules": modules,
        "modules_complete": reference is None,
        "aliases": aliases,
        "recipe": recipe,
        "meta": meta or {},
    }
    atomic_write_bytes(directory / WEIGHTS_FILE, blob)
    atomic_write_json(directory / STRUCTURE_FILE, structure)
    return directory


def _read_structure(directory: Path) -> dict[str, Any]:
    sp = directory / STRUCTURE_FILE
    if not directory.is_dir():
        raise CheckpointError(
            f"{directory} is not a directory: a torchslim checkpoint is a folder with {WEIGHTS_FILE} and "
            f"{STRUCTURE_FILE} (written by save_checkpoint)."
        )
    if not sp.is_file():
        raise CheckpointError(
            f"{sp} is missing: {directory} is not a torchslim checkpoint, or its save was interrupted. "
            "Save the model again with save_checkpoint."
        )
    try:
        structure = json.loads(sp.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(
            f"{sp} is not valid JSON ({e}): the file is corrupted or truncated. Save the model again."
        ) from e
    if not isinstance(structure, dict) or structure.get("format") != FORMAT_NAME:
        found = structure.get("format") if isinstance(structure, dict) else type(structure).__name__
        raise CheckpointError(
            f"{sp} is not a torchslim checkpoint description (format={found!r}, expected {FORMAT_NAME!r}): "
            "it was written by another tool. Load it with that tool, or save with torchslim.save_checkpoint."
        )
    version = structure.get("version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise CheckpointError(
            f"{sp} has checkpoint format version {version!r}; this torchslim reads up to {FORMAT_VERSION}. "
            "Upgrade torchslim."
        )
    if not isinstance(structure.get("modules", {}), dict):
        raise CheckpointError(f"{sp}: 'modules' must be an object; the file is corrupted.")
    return structure


def _read_tensors(wp: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load as st_load

    if not wp.is_file():
        raise CheckpointError(f"{wp} is missing: the checkpoint is incomplete. Save the model again.")
    data = wp.read_bytes()
    # safetensors layout: 8-byte little-endian header length, JSON header, raw data. Check it ourselves
    # first so that truncation gets a precise message.
    if len(data) < 8:
        raise CheckpointError(f"{wp} is truncated ({len(data)} bytes): the save was interrupted. Save again.")
    n = int.from_bytes(data[:8], "little")
    if n <= 0 or 8 + n > len(data):
        raise CheckpointError(
            f"{wp} is not a valid safetensors file (header length {n}, file length {len(data)}): it is "
            "truncated or is not a safetensors file at all. Save the model again with save_checkpoint."
        )
    try:
        header = json.loads(data[8 : 8 + n])
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{wp} has a corrupted safetensors header ({e}). Save the model again.") from e
    ends = [v["data_offsets"][1] for k, v in header.items() if k != "__metadata__" and isinstance(v, dict)]
    if ends and 8 + n + max(ends) > len(data):
        raise CheckpointError(
            f"{wp} is truncated: tensors need {8 + n + max(ends)} bytes, the file has {len(data)}. "
            "The save was interrupted; save the model again."
        )
    try:
        return st_load(data)
    except Exception as e:  # safetensors raises its own SafetensorError
        raise CheckpointError(f"{wp} is corrupted ({type(e).__name__}: {e}). Save the model again.") from e


def load_checkpoint(directory: str | os.PathLike[str], model: nn.Module | None = None) -> nn.Module:
    """Load a checkpoint written by :func:`save_checkpoint`.

    Args:
        directory: the checkpoint folder.
        model: an architecture skeleton to load into (modified in place and returned). Default: rebuild
            from the zoo spec recorded in ``structure.json``.

    Raises:
        CheckpointError: missing/invalid ``structure.json``, a file of another tool, truncated or corrupted
            weights, or weights that do not fit the model (the message lists the mismatching keys).
    """
    directory = Path(directory)
    structure = _read_structure(directory)
    tensors = _read_tensors(directory / WEIGHTS_FILE)

    if model is None:
        spec = structure.get("spec")
        if not spec:
            raise CheckpointError(
                f"{directory / STRUCTURE_FILE} records no zoo spec (the model was not built by torchslim.zoo): "
                "pass the architecture: load_checkpoint(dir, model=<an instance of the original class>)."
            )
        model = _build_from_spec(spec)

    for name, rec in structure.get("modules", {}).items():
        try:
            old = model.get_submodule(name)
        except AttributeError as e:
            raise CheckpointError(
                f"the checkpoint changes module {name!r}, which the model does not have: the skeleton is a "
                "different architecture from the one saved. Pass the right model (or none, for zoo models)."
            ) from e
        if not isinstance(rec, dict) or "type" not in rec or "args" not in rec:
            raise CheckpointError(f"structure.json entry for module {name!r} is malformed: {rec!r}.")
        cur = module_args(old)
        if cur is not None and cur == (rec["type"], rec["args"]):
            continue
        model.set_submodule(name, _build_module(rec["type"], rec["args"], old))

    aliases = structure.get("aliases", {}) or {}
    state = dict(tensors)
    for k, src in aliases.items():
        if src not in tensors:
            raise CheckpointError(
                f"structure.json aliases {k!r} to {src!r}, which is not in the weights file."
            )
        state[k] = tensors[src]
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise CheckpointError(
            f"the weights in {directory / WEIGHTS_FILE} do not fit the model ({type(model).__name__}): {e}. "
            "Pass the skeleton of the architecture that was saved (or none for zoo models)."
        ) from e
    model.eval()
    return model


def read_structure(directory: str | os.PathLike[str]) -> dict[str, Any]:
    """The parsed and validated ``structure.json`` of a checkpoint (recipe, meta, spec, changed modules)."""
    return _read_structure(Path(directory))
