"""Side-by-side runs of the tools people use today, configured the way their docs recommend.

Each function takes the same inputs torchslim's own method gets (the same FP32 model, the same calibration
samples), so a benchmark compares like with like. Peers are optional: a missing one raises ImportError
naming the install command (``pip install -e ".[peers]"``).

Peers wrapped here:

* ONNX Runtime ``quantize_static`` (:func:`ort_quantize_static`): QDQ U8S8, min-max / entropy / percentile.
* NNCF ``nncf.quantize`` (:func:`nncf_quantize`, :func:`nncf_export_onnx`): its default post-training
  recipe (per-channel symmetric int8 weights, per-tensor symmetric int8/uint8 activations, fast bias
  correction), exported as ONNX QuantizeLinear/DequantizeLinear pairs for ONNX Runtime.
  :func:`activations_to_uint8` rewrites its signed activation quantizers to the equivalent uint8 ones.

Example::

    >>> import torch
    >>> from torchslim.bench.peers import ort_quantize_static
    >>> from torchslim.export import export_onnx
    >>> net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.ReLU()).eval()
    >>> x = torch.randn(32, 1, 8, 8)
    >>> fp32 = export_onnx(net, x[:2], "/tmp/peer_fp32.onnx")  # doctest: +SKIP
    >>> int8 = ort_quantize_static(fp32, "/tmp/peer_int8.onnx", x)  # doctest: +SKIP
"""

from __future__ import annotations

import copy
import logging
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

__all__ = [
    "ORT_CALIBRATION_METHODS",
    "activations_to_uint8",
    "fold_batchnorm_eager",
    "nncf_export_onnx",
    "nncf_quantize",
    "ort_quantize_static",
]

#: ``calibrate_method`` names accepted by :func:`ort_quantize_static` -> ORT's ``CalibrationMethod`` member.
ORT_CALIBRATION_METHODS = {"minmax": "MinMax", "entropy": "Entropy", "percentile": "Percentile"}

_PEERS_HINT = 'install the peers extra: pip install -e ".[peers]"'


def ort_quantize_static(
    fp32_onnx: str | Path,
    out: str | Path,
    calib: torch.Tensor,
    *,
    reduce_range: bool = False,
    per_channel: bool = True,
    batch: int = 64,
    calibrate_method: str = "minmax",
) -> Path:
    """ONNX Runtime's ``quantize_static``: QDQ, U8S8 (uint8 activations, int8 weights).

    ``calib`` is the calibration tensor fed in batches of ``batch`` to the model's first input;
    ``calibrate_method`` is one of :data:`ORT_CALIBRATION_METHODS` (``"minmax"``, ``"entropy"``,
    ``"percentile"``; ORT's defaults for each method's own options).

    Example::

        >>> ort_quantize_static("fp32.onnx", "int8.onnx", torch.randn(64, 1, 8, 8))  # doctest: +SKIP
    """
    import numpy as np
    import onnxruntime as ort
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    if calibrate_method not in ORT_CALIBRATION_METHODS:
        raise ValueError(
            f"calibrate_method={calibrate_method!r} is unknown: use one of {sorted(ORT_CALIBRATION_METHODS)}"
        )
    if calib.shape[0] == 0:
        raise ValueError("calib is empty: pass at least one calibration sample")
    method = getattr(CalibrationMethod, ORT_CALIBRATION_METHODS[calibrate_method])
    name = ort.InferenceSession(str(fp32_onnx), providers=["CPUExecutionProvider"]).get_inputs()[0].name

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter([{name: b.numpy()} for b in calib.split(batch)])

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.batches, None)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        quantize_static(
            str(fp32_onnx),
            str(out),
            Reader(),
            quant_format=QuantFormat.QDQ,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            per_channel=per_channel,
            reduce_range=reduce_range,
            calibrate_method=method,
        )
    return Path(out)


def fold_batchnorm_eager(model: nn.Module) -> nn.Module:
    """A copy of ``model`` (same class, eager) with every BatchNorm that follows a Conv/Linear folded into it.

    The folded BatchNorm modules are replaced by ``nn.Identity``, so the copy keeps its module structure
    (tools that trace the eager model, such as NNCF, see the same graph the BN-folded ONNX has). Pairs are
    found with :func:`torchslim.quantization.fold.fold_batchnorm` (``torch.fx``), so the model must be
    traceable by ``torch.fx.symbolic_trace``.

    Example::

        >>> net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2)).eval()
        >>> folded = fold_batchnorm_eager(net)
        >>> type(folded[1]).__name__
        'Identity'
    """
    from torchslim.quantization.fold import fold_batchnorm

    m = copy.deepcopy(model).eval()
    gm = fold_batchnorm(m, inplace=True)  # the GraphModule shares m's submodules: their weights are folded
    kept = {id(mod) for mod in gm.modules()}
    for parent in list(m.modules()):
        for child_name, child in list(parent.named_children()):
            if isinstance(child, nn.modules.batchnorm._BatchNorm) and id(child) not in kept:
                setattr(parent, child_name, nn.Identity())
    return m


class _SequentialWrapper(nn.Module):
    """NNCF registers a hook-storage child on the model it quantizes; ``nn.Sequential.forward`` would call it."""

    def __init__(self, body: nn.Module) -> None:
        super().__init__()
        self.body = body

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)  # type: ignore[no-any-return]


def _import_nncf() -> Any:
    try:
        import nncf
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError(f"nncf is not installed: {_PEERS_HINT}") from err
    return nncf


def nncf_quantize(
    model: nn.Module,
    calib: torch.Tensor,
    *,
    batch: int = 64,
    fold_bn: bool = True,
    fast_bias_correction: bool = True,
    quiet: bool = True,
) -> nn.Module:
    """``nncf.quantize`` post-training int8 quantization with NNCF's default (CPU, "performance") recipe.

    The calibration tensor is given to NNCF as ``ceil(len(calib) / batch)`` batches and ``subset_size``
    is set so every sample is used. ``fold_bn`` first folds BatchNorm into the preceding layers
    (:func:`fold_batchnorm_eager`) so NNCF starts from the same BN-folded model ORT's ``quantize_static``
    gets. A top-level ``nn.Sequential`` is wrapped in a one-child module (NNCF adds a child to the model it
    quantizes, which ``Sequential`` would run). Returns NNCF's quantized eager model (fake-quant modules inserted), ready for
    :func:`nncf_export_onnx`.

    Raises:
        ImportError: nncf is not installed.
        ValueError: ``calib`` is empty or ``batch`` < 1.

    Example::

        >>> q = nncf_quantize(model, calib_images)  # doctest: +SKIP
        >>> nncf_export_onnx(q, calib_images[:64], "nncf_int8.onnx")  # doctest: +SKIP
    """
    nncf = _import_nncf()
    if calib.shape[0] == 0:
        raise ValueError("calib is empty: pass at least one calibration sample")
    if batch < 1:
        raise ValueError(f"batch={batch} must be >= 1")
    if quiet:
        nncf.set_log_level(logging.ERROR)
    base = fold_batchnorm_eager(model) if fold_bn else copy.deepcopy(model).eval()
    if isinstance(base, nn.Sequential):
        base = _SequentialWrapper(base).eval()
    batches = list(calib.split(batch))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return nncf.quantize(  # type: ignore[no-any-return]
            base,
            nncf.Dataset(batches),
            subset_size=len(batches),
            fast_bias_correction=fast_bias_correction,
        )


def nncf_export_onnx(qmodel: nn.Module, example: torch.Tensor, path: str | Path) -> Path:
    """Export an :func:`nncf_quantize` model to ONNX with QuantizeLinear/DequantizeLinear pairs.

    NNCF's quantizer modules export to OpenVINO ``FakeQuantize`` nodes by default, which ONNX Runtime
    cannot run; they are switched to NNCF's own ``ONNX_QUANTIZE_DEQUANTIZE_PAIRS`` export mode first (the
    model is changed in place). Activation quantizers after a ReLU are uint8, the others int8 (as NNCF
    exports them; see :func:`activations_to_uint8`).

    Example::

        >>> nncf_export_onnx(q, torch.randn(64, 1, 28, 28), "nncf_int8.onnx")  # doctest: +SKIP
    """
    _import_nncf()
    from nncf.torch.quantization.layers import BaseQuantizer, QuantizerExportMode

    from torchslim.export.onnx import export_onnx

    n = 0
    for mod in qmodel.modules():
        if isinstance(mod, BaseQuantizer):
            mod.set_export_mode(QuantizerExportMode.ONNX_QUANTIZE_DEQUANTIZE_PAIRS)
            n += 1
    if n == 0:
        raise ValueError("qmodel has no NNCF quantizer module: pass the model nncf_quantize returned")
    return export_onnx(qmodel, example, path)


def activations_to_uint8(onnx_in: str | Path, onnx_out: str | Path) -> tuple[Path, int]:
    """Rewrite every per-tensor int8 *activation* QuantizeLinear (and its DequantizeLinears) to uint8.

    ``q_u8 = q_s8 + 128`` with the same scale and ``zero_point_u8 = zero_point_s8 + 128``: every value the
    int8 quantizer can represent is represented exactly, so the model computes the same function, but ONNX
    Runtime's x86 kernels (U8S8) run it without a signed-activation fallback. Weight quantizers (input is a
    constant) and per-channel activation quantizers are left alone.

    Returns the path written and the number of quantizers rewritten.

    Example::

        >>> activations_to_uint8("nncf_int8.onnx", "nncf_int8_u8.onnx")  # doctest: +SKIP
        (PosixPath('nncf_int8_u8.onnx'), 17)
    """
    import numpy as np
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(onnx_in))
    graph = model.graph
    consts: dict[str, np.ndarray] = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value":
                    consts[node.output[0]] = numpy_helper.to_array(attr.t)
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for inp in node.input:
            consumers.setdefault(inp, []).append(node)
    rewritten = 0
    for node in list(graph.node):
        if node.op_type != "QuantizeLinear" or len(node.input) < 3 or node.input[0] in consts:
            continue
        zp = consts.get(node.input[2])
        scale = consts.get(node.input[1])
        if zp is None or scale is None or zp.dtype != np.int8 or zp.size != 1 or scale.size != 1:
            continue
        dqs = [c for c in consumers.get(node.output[0], []) if c.op_type == "DequantizeLinear"]
        if len(dqs) != len(consumers.get(node.output[0], [])):
            continue  # something else reads the int8 tensor: leave it
        new_name = f"{node.output[0]}_zero_point_u8"
        new_zp = (zp.astype(np.int16) + 128).astype(np.uint8).reshape(zp.shape)
        graph.initializer.append(numpy_helper.from_array(new_zp, new_name))
        node.input[2] = new_name
        for dq in dqs:
            if len(dq.input) >= 3:
                dq.input[2] = new_name
            else:
                dq.input.append(new_name)
        rewritten += 1
    out = Path(onnx_out)
    onnx.checker.check_model(model)
    onnx.save(model, str(out))
    return out, rewritten
