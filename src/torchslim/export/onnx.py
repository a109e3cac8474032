"""Export a PyTorch model to ONE self-contained ONNX file.

The TorchScript ("legacy") exporter is the default: on this project's machines it gave faster ONNX Runtime
graphs than the dynamo exporter, and it turns ``torch.fake_quantize_*`` into QuantizeLinear/DequantizeLinear
pairs that ONNX Runtime fuses into int8 kernels. ``exporter="dynamo"`` uses ``torch.export`` instead.

Example::

    >>> import torch
    >>> from torchslim.export import export_onnx
    >>> net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 2))
    >>> path = export_onnx(net, torch.randn(1, 4), "/tmp/net.onnx")   # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from torchslim.core.errors import TorchSlimError

__all__ = ["export_onnx", "ExportError"]

_TWO_GIB = 2**31 - 1


class ExportError(TorchSlimError):
    """``torch.onnx.export`` failed or produced an invalid model."""


def _as_tuple(example_input: Any) -> tuple[Any, ...]:
    if isinstance(example_input, tuple):
        return example_input
    if isinstance(example_input, list):
        return tuple(example_input)
    return (example_input,)


def _input_names(n: int) -> list[str]:
    return ["input"] + [f"input_{i}" for i in range(1, n)]


def export_onnx(
    model: nn.Module,
    example_input: torch.Tensor | tuple[torch.Tensor, ...],
    path: str | os.PathLike[str],
    opset: int = 17,
    dynamic_batch: bool = True,
    exporter: str = "legacy",
) -> Path:
    """Export ``model`` to ``path`` as a single ONNX file checked by ``onnx.checker``.

    Args:
        model: the module; it is put in eval mode (and left there).
        example_input: a tensor (or a tuple of tensors) with the shape the model is run with.
        path: destination ``.onnx`` file. Written atomically: on failure an existing file is untouched.
        opset: ONNX opset version.
        dynamic_batch: make dimension 0 of inputs and outputs symbolic ("batch").
        exporter: ``"legacy"`` (TorchScript exporter, default) or ``"dynamo"`` (``torch.export``).

    Inputs are named ``input`` (``input_1``, ... for more), the first output ``output``.

    Returns:
        The path written.

    Raises:
        ExportError: the export failed (message names the exporter and the cause), or the model is not
            valid ONNX, or it exceeds the 2 GiB single-file limit.
    """
    if exporter not in ("legacy", "dynamo"):
        raise ExportError(f"exporter={exporter!r} is unknown: use 'legacy' (default) or 'dynamo'.")
    import onnx

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    args = _as_tuple(example_input)
    in_names = _input_names(len(args))
    model.eval()

    tmpdir = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        tmp_path = tmpdir / "model.onnx"
        with torch.inference_mode(False), torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                if exporter == "legacy":
                    dyn_axes: dict[str, dict[int, str]] | None = None
                    if dynamic_batch:
                        dyn_axes = {n: {0: "batch"} for n in in_names}
                        dyn_axes["output"] = {0: "batch"}
                    torch.onnx.export(
                        model,
                        args,
                        str(tmp_path),
                        input_names=in_names,
                        output_names=["output"],
                        opset_version=opset,
                        dynamo=False,
                        dynamic_axes=dyn_axes,
                        do_constant_folding=True,
                    )
                else:
                    dyn_shapes: tuple[Any, ...] | None = None
                    if dynamic_batch:
                        batch = torch.export.Dim.DYNAMIC
                        dyn_shapes = tuple({0: batch} if isinstance(a, torch.Tensor) else None for a in args)
                    torch.onnx.export(
                        model,
                        args,
                        str(tmp_path),
                        input_names=in_names,
                        output_names=["output"],
                        opset_version=opset,
                        dynamo=True,
                        external_data=False,
                        dynamic_shapes=dyn_shapes,
                        optimize=True,
                        verbose=False,
                    )
            except Exception as e:
                raise ExportError(
                    f"torch.onnx.export ({exporter} exporter) failed for {type(model).__name__}: "
                    f"{type(e).__name__}: {e}. Try exporter="
                    f"{'dynamo' if exporter == 'legacy' else 'legacy'!r}, or check that the model runs on "
                    f"the example input."
                ) from e

        # Make sure the result is ONE file: fold any external-data files back into the protobuf.
        extra = [p for p in tmpdir.iterdir() if p.name != "model.onnx"]
        if extra:
            proto = onnx.load(str(tmp_path), load_external_data=True)
            if proto.ByteSize() > _TWO_GIB:
                raise ExportError(
                    f"the model is {proto.ByteSize() / 2**30:.1f} GiB: above the 2 GiB limit of a single ONNX "
                    "file. Quantize or prune it first, or export it with the dynamo exporter yourself."
                )
            onnx.save_model(proto, str(tmp_path), save_as_external_data=False)
            for p in extra:
                if p.is_file():
                    p.unlink()
        try:
            onnx.checker.check_model(str(tmp_path))
        except Exception as e:
            raise ExportError(
                f"the exported model fails onnx.checker ({e}); please report this model."
            ) from e
        with open(tmp_path, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp_path, path)
    finally:
        with contextlib.suppress(OSError):
            shutil.rmtree(tmpdir)
    return path
