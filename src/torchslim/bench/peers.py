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
* Torch-Pruning ``MetaPruner`` with ``GroupMagnitudeImportance`` (group L2 norm; :func:`tp_prune`), at a
  channel ratio or at a MACs target (the channel ratio is bisected until the measured MACs meet it).

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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

__all__ = [
    "ORT_CALIBRATION_METHODS",
    "TPPruneResult",
    "activations_to_uint8",
    "fold_batchnorm_eager",
    "nncf_export_onnx",
    "nncf_quantize",
    "ort_quantize_static",
    "tp_prune",
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


# --------------------------------------------------------------------------- Torch-Pruning
def _import_tp() -> Any:
    try:
        import torch_pruning
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError(f"torch-pruning is not installed: {_PEERS_HINT}") from err
    return torch_pruning


@dataclass
class TPPruneResult:
    """What :func:`tp_prune` did.

    Attributes:
        model: the pruned model (the same object that was passed in, pruned in place).
        ratio: the channel pruning ratio given to Torch-Pruning's ``MetaPruner``.
        macs_before: MACs of the unpruned model on ``example_input`` (:func:`torchslim.core.cost.profile`).
        macs_after: MACs of the pruned model.
        widths: output channels of every Conv/Linear after pruning (module path -> count).
        ignored: module paths Torch-Pruning was told not to prune (the layers producing the model's output).
    """

    model: nn.Module
    ratio: float
    macs_before: int
    macs_after: int
    widths: dict[str, int] = field(default_factory=dict)
    ignored: list[str] = field(default_factory=list)

    @property
    def macs_ratio(self) -> float:
        """``macs_after / macs_before``."""
        return self.macs_after / max(self.macs_before, 1)


def _output_layers(model: nn.Module, example: torch.Tensor) -> list[str]:
    """Paths of the leaf modules whose output tensor is (one of) the model's output(s)."""
    produced: dict[int, str] = {}
    hooks = []
    for name, mod in model.named_modules():
        if name and not list(mod.children()):
            def hook(_m: nn.Module, _i: Any, out: Any, name: str = name) -> None:
                if isinstance(out, torch.Tensor):
                    produced[id(out)] = name
            hooks.append(mod.register_forward_hook(hook))
    try:
        with torch.no_grad():
            out = model(example)
    finally:
        for h in hooks:
            h.remove()
    outs = [out] if isinstance(out, torch.Tensor) else [t for t in (out if isinstance(out, (tuple, list)) else [])
                                                         if isinstance(t, torch.Tensor)]
    return [produced[id(t)] for t in outs if id(t) in produced]


def _tp_prune_once(
    model: nn.Module, example: torch.Tensor, ratio: float, round_to: int | None, ignored: list[str]
) -> None:
    tp = _import_tp()
    mods = dict(model.named_modules())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pruner = tp.pruner.MetaPruner(
            model,
            example,
            importance=tp.importance.GroupMagnitudeImportance(p=2),
            pruning_ratio=ratio,
            ignored_layers=[mods[n] for n in ignored],
            round_to=round_to,
        )
        pruner.step()


def tp_prune(
    model: nn.Module,
    example_input: torch.Tensor,
    ratio: float | None = None,
    *,
    macs_target: float | None = None,
    round_to: int | None = None,
    ignored_layers: list[str] | None = None,
    tol: float = 0.005,
    max_rounds: int = 12,
) -> TPPruneResult:
    """Torch-Pruning's ``MetaPruner`` with group L2-magnitude importance, configured as its README shows.

    Give exactly one of ``ratio`` (fraction of channels removed per layer, Torch-Pruning's
    ``pruning_ratio``, local pruning) or ``macs_target`` (fraction of the original MACs to keep, in (0, 1]):
    the channel ratio is then bisected on copies of the model until the MACs measured with
    :func:`torchslim.core.cost.profile` are at most ``macs_target`` and within ``tol`` of it (or the
    bisection ends; the largest feasible MACs found win). ``round_to`` is Torch-Pruning's own: kept
    channels are rounded DOWN to a multiple of it (torchslim's ``ChannelPrune.round_to`` rounds up).
    The layers that produce the model's output (found with forward hooks) are never pruned, nor the
    module paths in ``ignored_layers``. ``model`` is pruned in place (put it in eval mode first).

    Raises:
        ImportError: torch-pruning is not installed.
        ValueError: neither or both of ``ratio`` / ``macs_target``, a value out of range, an unknown
            module path in ``ignored_layers``, or a MACs target that even ``ratio=0.95`` cannot reach.

    Example::

        >>> import torch
        >>> from torch import nn
        >>> net = nn.Sequential(nn.Conv2d(1, 16, 3), nn.BatchNorm2d(16), nn.ReLU(), nn.Conv2d(16, 16, 3),
        ...                     nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 4)).eval()
        >>> r = tp_prune(net, torch.randn(1, 1, 8, 8), macs_target=0.5)  # doctest: +SKIP
        >>> r.macs_ratio <= 0.5  # doctest: +SKIP
        True
    """
    from torchslim.core.cost import profile

    if (ratio is None) == (macs_target is None):
        raise ValueError("tp_prune: give exactly one of ratio= (channel fraction removed) or macs_target= "
                         "(fraction of the MACs kept)")
    if ratio is not None and not 0.0 <= ratio < 1.0:
        raise ValueError(f"tp_prune: ratio={ratio} must be in [0, 1)")
    if macs_target is not None and not 0.0 < macs_target <= 1.0:
        raise ValueError(f"tp_prune: macs_target={macs_target} must be in (0, 1]")
    if round_to is not None and round_to < 1:
        raise ValueError(f"tp_prune: round_to={round_to} must be >= 1 (or None)")
    _import_tp()
    paths = {n for n, _ in model.named_modules() if n}
    for n in ignored_layers or []:
        if n not in paths:
            raise ValueError(f"tp_prune: ignored layer {n!r} is not a module path of the model; "
                             f"paths look like {sorted(paths)[:6]}")
    ignored = sorted(set(_output_layers(model, example_input)) | set(ignored_layers or []))
    rt = None if round_to in (None, 1) else round_to
    macs_before = profile(model, (example_input,)).macs

    if macs_target is not None:
        budget = macs_target * macs_before

        def trial(r: float) -> int:
            m = copy.deepcopy(model)
            _tp_prune_once(m, example_input, r, rt, ignored)
            return int(profile(m, (example_input,)).macs)

        # MACs need not fall monotonically with the ratio (a layer whose kept count would round to 0 is left
        # unpruned, by round_to or at high ratios), so scan a coarse grid for the first feasible ratio, then
        # bisect between it and the grid point below.
        if trial(0.0) <= budget:
            lo = hi = 0.0
        else:
            grid = [i / 20 for i in range(1, 20)]
            first = next((i for i, r in enumerate(grid) if trial(r) <= budget), None)
            if first is None:
                raise ValueError(f"tp_prune: macs_target={macs_target} is not reached at any ratio <= {grid[-1]}"
                                 f" (round_to={round_to}); raise macs_target, lower round_to or ignore fewer layers")
            lo, hi = (grid[first - 1] if first else 0.0), grid[first]
        best = hi
        if hi > 0.0:
            for _ in range(max_rounds):
                mid = (lo + hi) / 2
                m_mid = trial(mid)
                if m_mid <= budget:
                    best, hi = mid, mid
                    if m_mid >= budget - tol * macs_before:
                        break
                else:
                    lo = mid
        ratio = best
    assert ratio is not None
    _tp_prune_once(model, example_input, ratio, rt, ignored)
    widths = {n: int(getattr(m, "out_channels", getattr(m, "out_features", 0)))
              for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Conv1d, nn.Linear))}
    return TPPruneResult(model=model, ratio=ratio, macs_before=macs_before,
                         macs_after=int(profile(model, (example_input,)).macs), widths=widths, ignored=ignored)
