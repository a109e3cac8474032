"""Static post-training quantisation (W8A8) with our own observers, fake-quant simulation and QDQ export.

Flow (phases of :class:`Phase`):

1. PREPARE -- fold BatchNorm into Conv/Linear (:mod:`.fold`), trace with FX, wrap each Conv/Linear so its
   weight is fake-quantised (int8, symmetric, per output channel by default) and insert activation
   fake-quant modules at the same points ONNX Runtime's quantiser uses for CNNs: the model input, each
   Conv/Linear output (after the ReLU when a ReLU follows, so ORT can fuse it), both inputs and the
   output of residual ``add`` (after its ReLU), average pooling outputs. Max-pool / flatten / reshape keep
   their input's parameters so ORT drops their Q/DQ pair.
2. CALIBRATE -- run the calibration inputs; observers record activation ranges (NaN/Inf -> NumericalError).
3. CONVERT -- turn ranges into scales/zero points; the model becomes a fake-quant simulation
   (:attr:`QuantizedModel.sim`) of what ORT computes with its int8 kernels.

:meth:`QuantizedModel.export_onnx` writes a QDQ model (int8 weight initializers + DequantizeLinear,
uint8 QuantizeLinear/DequantizeLinear on activations, int32 biases) that ORT fuses into QLinearConv /
QLinearAdd / QGemm; :meth:`QuantizedModel.parity` compares the simulation with ORT.

Example::

    import torch
    from torchslim.quantization import StaticPTQ, quantize_static
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 16, 3), torch.nn.ReLU(), torch.nn.Flatten(),
                                torch.nn.Linear(16 * 26 * 26, 10)).eval()
    calib = torch.randn(64, 1, 28, 28)
    q = quantize_static(model, StaticPTQ(), calib, progress=False)
    path = q.export_onnx("model_int8.onnx", calib[:1])
    print(q.parity(path, calib))      # ParityResult(max_abs_diff=..., cosine=..., top1_agreement=...)
"""

from __future__ import annotations

import copy
import fnmatch
import operator
import tempfile
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import Tensor, nn

from torchslim.core.config import Config
from torchslim.core.errors import ConfigError, NumericalError
from torchslim.quantization.fold import fold_batchnorm
from torchslim.quantization.observers import Observer, make_observer
from torchslim.quantization.primitives import (
    choose_qparams,
    fake_quantize,
    qrange,
    sqnr_db,  # noqa: F401 - re-exported
)


class Phase(Enum):
    """Phases of static PTQ."""

    PREPARE = "prepare"
    CALIBRATE = "calibrate"
    CONVERT = "convert"


class StaticPTQ(Config):
    """Static post-training quantisation: int8 weights, 8-bit activations calibrated on sample inputs.

    ``exclude`` holds module-path globs (``"layer1.*"``, ``"fc"``) left in float.
    """

    type_name: ClassVar[str] = "static_ptq"

    weights: Literal["int8"] = "int8"
    activations: Literal["uint8", "int8"] = "uint8"
    granularity: Literal["per_channel", "per_tensor"] = "per_channel"
    calibrator: Literal["minmax", "moving_average_minmax", "percentile", "mse", "entropy"] = "minmax"
    num_calibration: int = 512
    exclude: list[str] = []
    #: 7-bit weights ([-63, 63]) so ORT's U8S8 kernels cannot saturate on CPUs without VNNI (AVX2's
    #: VPMADDUBSW adds pairs of u8*s8 products in int16). ``None`` = auto: on when the CPU lacks VNNI.
    reduce_range: bool | None = None

    def resolved_reduce_range(self) -> bool:
        """``reduce_range`` with ``None`` resolved for this machine."""
        return cpu_lacks_vnni() if self.reduce_range is None else self.reduce_range


def cpu_lacks_vnni() -> bool:
    """True on x86 CPUs without AVX512-VNNI / AVX-VNNI (ORT's U8S8 int8 kernels may saturate there)."""
    import platform

    if platform.machine().lower() not in ("x86_64", "amd64", "i386", "i686"):
        return False
    try:
        with open("/proc/cpuinfo") as fh:
            flags = fh.read()
    except OSError:
        return False
    return not ("avx512_vnni" in flags or "avx_vnni" in flags)


# ------------------------------------------------------------------------------------------------ modules
class ActFakeQuant(nn.Module):
    """Activation quantisation point: observes during calibration, fake-quantises after conversion."""

    scale: Tensor
    zero_point: Tensor

    def __init__(self, observer: Observer | None, bits: int = 8, signed: bool = False) -> None:
        super().__init__()
        self.observer = observer
        self.bits = bits
        self.signed = signed
        self.qmin, self.qmax = qrange(bits, signed)
        self.phase = Phase.PREPARE
        #: name of the ActFakeQuant whose parameters this one shares (max-pool, flatten, ...), or None
        self.shares: str | None = None
        self.register_buffer("scale", torch.tensor(1.0))
        self.register_buffer("zero_point", torch.tensor(0, dtype=torch.int32))

    def forward(self, x: Tensor) -> Tensor:
        if self.phase is Phase.CONVERT:
            return fake_quantize(x, self.scale, self.zero_point, self.qmin, self.qmax)
        if self.phase is Phase.CALIBRATE and self.observer is not None:
            self.observer.update(x)
        return x

    def convert(self) -> None:
        if self.observer is not None:
            s, z = self.observer.qparams(self.bits, symmetric=False, signed=self.signed)
            self.scale.copy_(s)
            self.zero_point.copy_(z)
        self.phase = Phase.CONVERT

    def extra_repr(self) -> str:
        if self.phase is Phase.CONVERT:
            return f"scale={float(self.scale):.6g}, zero_point={int(self.zero_point)}, range=[{self.qmin}, {self.qmax}]"
        return f"phase={self.phase.value}, shares={self.shares}"


class WeightQuantWrapper(nn.Module):
    """Wraps a Conv/Linear: the weight is fake-quantised to int8 (symmetric, narrow range) on every call."""

    scale: Tensor
    zero_point: Tensor
    module: Any

    def __init__(self, module: nn.Module, per_channel: bool = True, bits: int = 8) -> None:
        super().__init__()
        self.module = module
        self.per_channel = per_channel
        self.bits = bits
        self.axis: int | None = 0 if per_channel else None
        self.register_buffer("scale", torch.ones(()))
        self.register_buffer("zero_point", torch.zeros((), dtype=torch.int32))
        self.enabled = True
        self.update_qparams()

    @torch.no_grad()
    def update_qparams(self) -> None:
        w = self.module.weight.detach()
        if self.per_channel:
            flat = w.reshape(w.shape[0], -1)
            mn, mx = flat.min(dim=1).values, flat.max(dim=1).values
        else:
            mn, mx = w.min(), w.max()
        s, z = choose_qparams(mn, mx, bits=self.bits, symmetric=True, signed=True, narrow_range=True)
        self.scale = s
        self.zero_point = z

    def quantized_weight(self) -> Tensor:
        # range [-128, 127] keeps the ONNX exporter happy; with scale = absmax / 127 values stay in [-127, 127]
        return fake_quantize(self.module.weight, self.scale, self.zero_point, -128, 127, axis=self.axis)

    def int_weight(self) -> Tensor:
        """The int8 weight values (as int32) this wrapper simulates."""
        from torchslim.quantization.primitives import quantize

        return quantize(self.module.weight.detach(), self.scale, self.zero_point, -128, 127, axis=self.axis)

    def forward(self, x: Tensor) -> Tensor:
        w = self.quantized_weight() if self.enabled else self.module.weight
        m = self.module
        if isinstance(m, nn.Linear):
            return F.linear(x, w, m.bias)
        return m._conv_forward(x, w, m.bias)  # type: ignore[operator]


# ------------------------------------------------------------------------------------------- graph rewrite
_QUANT_LAYERS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
_AVGPOOL_MODULES = (nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AvgPool1d, nn.AvgPool2d)
_PASS_MODULES = (nn.MaxPool1d, nn.MaxPool2d, nn.Flatten, nn.Identity, nn.Dropout)
#: activations fused into the preceding Conv/Linear's output quantisation (ORT drops Relu / Clip(0, 6) in
#: front of a QuantizeLinear whose range lies inside theirs)
_RELU_MODULES = (nn.ReLU, nn.ReLU6)
_PASS_FUNCS = {torch.flatten, F.max_pool2d, F.max_pool1d, torch.reshape}
_PASS_METHODS = {"flatten", "view", "reshape", "contiguous"}
_AVGPOOL_FUNCS = {F.adaptive_avg_pool2d, F.avg_pool2d}
_ADD_FUNCS = {operator.add, torch.add}
#: modules that are fine to leave in float without a warning (no parameters, cheap)
_QUIET_FLOAT = (nn.ReLU, nn.ReLU6, nn.Identity, nn.Dropout)


def _is_relu(node: fx.Node, modules: dict[str, nn.Module]) -> bool:
    if node.op == "call_module":
        return isinstance(modules.get(str(node.target)), _RELU_MODULES)
    if node.op == "call_function":
        return node.target in (F.relu, torch.relu, F.relu6)
    if node.op == "call_method":
        return node.target == "relu"
    return False


@dataclass
class _Rewriter:
    gm: fx.GraphModule
    config: StaticPTQ
    modules: dict[str, nn.Module]
    unsupported: list[str] = field(default_factory=list)
    excluded: list[str] = field(default_factory=list)
    fq_names: set[str] = field(default_factory=set)
    counter: int = 0
    cache: dict[fx.Node, fx.Node] = field(default_factory=dict)

    def _new_fq(self, hint: str, shares: str | None = None) -> str:
        signed = self.config.activations == "int8"
        observer = None if shares else make_observer(self.config.calibrator, None, name=hint)
        fq = ActFakeQuant(observer, bits=8, signed=signed)
        fq.shares = shares
        name = f"act_fq_{self.counter}"
        self.counter += 1
        self.gm.add_module(name, fq)
        self.fq_names.add(name)
        return name

    def is_quantized(self, node: Any) -> bool:
        return isinstance(node, fx.Node) and node.op == "call_module" and str(node.target) in self.fq_names

    def quantize_after(self, node: fx.Node, hint: str, shares: str | None = None) -> fx.Node:
        """Insert a fake-quant after ``node`` and route every other user of ``node`` through it."""
        name = self._new_fq(hint, shares)
        with self.gm.graph.inserting_after(node):
            fq = self.gm.graph.call_module(name, (node,))
        node.replace_all_uses_with(fq, delete_user_cb=lambda u: u is not fq)
        self.cache[node] = fq
        return fq

    def ensure_input_quantized(self, node: fx.Node, user: fx.Node) -> None:
        if self.is_quantized(node):
            return
        fq = self.cache.get(node)
        if fq is None:
            name = self._new_fq(f"{node.name}->{user.name}")
            with self.gm.graph.inserting_after(node):
                fq = self.gm.graph.call_module(name, (node,))
            self.cache[node] = fq
        user.replace_input_with(node, fq)

    def output_anchor(self, node: fx.Node) -> fx.Node:
        users = list(node.users)
        if len(users) == 1 and _is_relu(users[0], self.modules):
            return users[0]
        return node

    def excluded_path(self, path: str) -> bool:
        return any(
            fnmatch.fnmatchcase(path, pat) or fnmatch.fnmatchcase(path, pat + ".*")
            for pat in self.config.exclude
        )

    def run(self) -> None:
        graph = self.gm.graph
        for node in list(graph.nodes):
            if node.op == "placeholder":
                if node.users:
                    self.quantize_after(node, f"input {node.name}")
                continue
            if node.op == "call_module":
                target = str(node.target)
                if target in self.fq_names:
                    continue
                mod = self.modules.get(target)
                if isinstance(mod, _QUANT_LAYERS):
                    if self.excluded_path(target):
                        self.excluded.append(target)
                        continue
                    wrapper = WeightQuantWrapper(
                        mod,
                        per_channel=self.config.granularity == "per_channel",
                        bits=7 if self.config.resolved_reduce_range() else 8,
                    )
                    self._replace_module(target, wrapper)
                    self._compute(node, [node.args[0]], target, float_output_ok=isinstance(mod, nn.Linear))
                elif isinstance(mod, _AVGPOOL_MODULES):
                    self._compute(node, [node.args[0]], target)
                elif isinstance(mod, _PASS_MODULES):
                    self._pass_through(node, target)
                elif not isinstance(mod, _QUIET_FLOAT):
                    if self.excluded_path(target):
                        self.excluded.append(target)
                    else:
                        self.unsupported.append(f"{target} ({type(mod).__name__})")
                continue
            if node.op == "call_function":
                if (
                    node.target in _ADD_FUNCS
                    and len(node.args) >= 2
                    and all(isinstance(a, fx.Node) for a in node.args[:2])
                ):
                    self._compute(node, list(node.args[:2]), node.name)
                elif node.target in _AVGPOOL_FUNCS:
                    self._compute(node, [node.args[0]], node.name)
                elif node.target in _PASS_FUNCS:
                    self._pass_through(node, node.name)
                continue
            if node.op == "call_method":
                if node.target in _PASS_METHODS:
                    self._pass_through(node, node.name)
                elif node.target == "add" and len(node.args) >= 2 and isinstance(node.args[1], fx.Node):
                    self._compute(node, list(node.args[:2]), node.name)

    def _replace_module(self, target: str, new: nn.Module) -> None:
        parent_path, _, leaf = target.rpartition(".")
        parent = self.gm.get_submodule(parent_path) if parent_path else self.gm
        setattr(parent, leaf, new)

    def _compute(self, node: fx.Node, inputs: list[Any], hint: str, float_output_ok: bool = False) -> None:
        for a in inputs:
            if isinstance(a, fx.Node):
                self.ensure_input_quantized(a, node)
        anchor = self.output_anchor(node)
        if float_output_ok and all(u.op == "output" for u in anchor.users):
            # a Linear producing a model output stays float: ORT runs QGemm with a float output, and the
            # logits keep their full resolution (a Conv has no float-output int8 kernel, so it keeps its Q)
            return
        self.quantize_after(anchor, f"output of {hint}")

    def _pass_through(self, node: fx.Node, hint: str) -> None:
        src = node.args[0] if node.args else None
        if self.is_quantized(src):
            assert isinstance(src, fx.Node)
            root = str(src.target)
            src_fq = self.gm.get_submodule(root)
            assert isinstance(src_fq, ActFakeQuant)
            shares = src_fq.shares or root
            self.quantize_after(node, f"output of {hint}", shares=shares)


# -------------------------------------------------------------------------------------------- results
@dataclass(frozen=True)
class ParityResult:
    """Agreement between the fake-quant simulation and ONNX Runtime on the same inputs."""

    max_abs_diff: float
    mean_abs_diff: float
    cosine: float
    top1_agreement: float


@dataclass
class QuantizedModel:
    """Result of :func:`quantize_static`.

    Attributes: ``sim`` (fake-quant GraphModule, eval mode), ``float_model`` (BN-folded FP32 GraphModule),
    ``config``, ``unsupported`` (module paths left in float because their type is not quantised),
    ``excluded`` (paths left in float by ``config.exclude``), ``num_calibration`` (samples seen).
    """

    sim: fx.GraphModule
    float_model: fx.GraphModule
    config: StaticPTQ
    unsupported: list[str]
    excluded: list[str]
    num_calibration: int

    def __call__(self, x: Tensor) -> Tensor:
        with torch.no_grad():
            return self.sim(x)

    def activation_qparams(self) -> dict[str, tuple[float, int]]:
        """``{fake-quant module name: (scale, zero_point)}`` of every activation quantisation point."""
        return {
            n: (float(m.scale), int(m.zero_point))
            for n, m in self.sim.named_modules()
            if isinstance(m, ActFakeQuant)
        }

    def export_onnx(
        self, path: str | Path, example_input: Tensor, opset: int = 17, dynamic_batch: bool = True
    ) -> Path:
        """Write a QDQ ONNX model ORT runs with int8 kernels; returns the path (written atomically).

        Weights become int8 initializers (per-channel scales, zero point 0) feeding DequantizeLinear, biases
        int32 initializers, activations QuantizeLinear -> DequantizeLinear with the calibrated parameters.
        """
        from torchslim.core.io import atomic_write_bytes
        from torchslim.quantization.onnx_qdq import finalize_qdq

        path = Path(path)
        model = copy.deepcopy(self.sim).eval()
        with tempfile.TemporaryDirectory() as tmp:
            raw = Path(tmp) / "raw.onnx"
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                axes = {"input": {0: "batch"}, "output": {0: "batch"}} if dynamic_batch else None
                torch.onnx.export(
                    model,
                    (example_input,),
                    str(raw),
                    dynamo=False,
                    opset_version=max(opset, 13),
                    input_names=["input"],
                    output_names=["output"],
                    dynamic_axes=axes,
                    do_constant_folding=True,
                )
            import onnx

            proto = finalize_qdq(onnx.load(str(raw)))
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(path, proto.SerializeToString())
        return path

    def parity(
        self, onnx_path: str | Path, inputs: Tensor, batch_size: int = 256, threads: int | None = 1
    ) -> ParityResult:
        """Run ``onnx_path`` in ONNX Runtime and ``sim`` in PyTorch on ``inputs``; compare the outputs."""
        import numpy as np
        import onnxruntime as ort

        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = threads
            opts.inter_op_num_threads = 1
        sess = ort.InferenceSession(str(onnx_path), opts, providers=["CPUExecutionProvider"])
        name = sess.get_inputs()[0].name
        ref_chunks, ort_chunks = [], []
        with torch.no_grad():
            for i in range(0, inputs.shape[0], batch_size):
                xb = inputs[i : i + batch_size]
                ref_chunks.append(self.sim(xb).float())
                ort_chunks.append(torch.from_numpy(np.asarray(sess.run(None, {name: xb.numpy()})[0])).float())
        ref = torch.cat(ref_chunks)
        got = torch.cat(ort_chunks)
        diff = (ref - got).abs()
        cos = F.cosine_similarity(ref.flatten().double(), got.flatten().double(), dim=0)
        top1 = float((ref.argmax(-1) == got.argmax(-1)).float().mean()) if ref.dim() >= 2 else float("nan")
        return ParityResult(float(diff.max()), float(diff.mean()), float(cos), top1)


# ----------------------------------------------------------------------------------------------- driver
def _batches(calib_inputs: Tensor | Iterable[Any], limit: int, batch_size: int = 64) -> Iterator[Tensor]:
    seen = 0
    if isinstance(calib_inputs, Tensor):
        source: Iterable[Any] = calib_inputs.split(batch_size)
    else:
        source = calib_inputs
    for item in source:
        x = item[0] if isinstance(item, (tuple, list)) else item
        if not isinstance(x, Tensor):
            raise TypeError(f"calibration items must be tensors (or (x, y) tuples), got {type(x).__name__}")
        if seen >= limit:
            return
        x = x[: limit - seen]
        seen += x.shape[0]
        yield x


#: fewer calibration samples than this give activation ranges that say little about the data: refused
MIN_CALIBRATION_SAMPLES = 16


def check_calibration(batches: list[Tensor], requested: int) -> int:
    """Check calibration batches before any work; returns the number of samples.

    Raises :class:`ConfigError` when the set is empty or has fewer than :data:`MIN_CALIBRATION_SAMPLES`
    samples, and :class:`NumericalError` (naming the first bad sample) when it holds NaN or Inf.

    >>> check_calibration([torch.zeros(32, 3)], 512)
    32
    """
    n = sum(int(b.shape[0]) for b in batches)
    if n == 0:
        raise ConfigError(
            "quantize_static: the calibration set is empty; pass at least one input batch (e.g. 512 training images)"
        )
    seen = 0
    for b in batches:
        finite = torch.isfinite(b.reshape(b.shape[0], -1)).all(dim=1)
        if not bool(finite.all()):
            first = seen + int((~finite).nonzero()[0, 0])
            raise NumericalError(
                f"calibration inputs contain NaN or Inf (first at sample {first}): remove those samples "
                "before quantising"
            )
        seen += int(b.shape[0])
    if n < MIN_CALIBRATION_SAMPLES:
        raise ConfigError(
            f"quantize_static: the calibration set is too small ({n} samples, num_calibration={requested}); "
            f"pass at least {MIN_CALIBRATION_SAMPLES} samples (a few hundred is typical, e.g. 512)"
        )
    return n


def prepare(
    model: nn.Module, config: StaticPTQ, example_input: Tensor | None = None
) -> tuple[fx.GraphModule, fx.GraphModule, list[str], list[str]]:
    """PREPARE phase: fold BN, trace, insert observers/fake-quant. Returns (sim, folded_float, unsupported, excluded)."""
    folded = fold_batchnorm(model, example_inputs=None if example_input is None else (example_input,))
    sim = copy.deepcopy(folded)
    rw = _Rewriter(sim, config, dict(sim.named_modules()))
    rw.run()
    sim.graph.lint()
    sim.recompile()
    sim.eval()
    return sim, folded, rw.unsupported, rw.excluded


def _set_phase(sim: nn.Module, phase: Phase) -> None:
    for m in sim.modules():
        if isinstance(m, ActFakeQuant):
            m.phase = phase


def quantize_static(
    model: nn.Module,
    config: StaticPTQ | None = None,
    calib_inputs: Tensor | Iterable[Any] | None = None,
    example_input: Tensor | None = None,
    progress: bool = True,
) -> QuantizedModel:
    """Static W8A8 post-training quantisation of ``model`` (not modified) with our own engine.

    ``calib_inputs``: a tensor of samples (split in batches of 64) or an iterable of tensors / ``(x, y)``
    tuples; at most ``config.num_calibration`` samples are used. ``example_input`` is accepted for API
    symmetry with export: when given, the converted simulation is run on it once as a check.

    Before any work the calibration set is checked (:func:`check_calibration`): empty or fewer than
    :data:`MIN_CALIBRATION_SAMPLES` samples -> :class:`ConfigError`; NaN/Inf -> :class:`NumericalError`.
    Modules of types that are not quantised are left in float with a warning naming their paths.

    Example::

        q = quantize_static(model, StaticPTQ(num_calibration=256), train_images[:256], progress=False)
        q.export_onnx("model_int8.onnx", train_images[:1])
    """
    config = config or StaticPTQ()
    if calib_inputs is None:
        raise ConfigError(
            "quantize_static: calib_inputs is required (a tensor or an iterable of input batches)"
        )
    if config.num_calibration <= 0:
        raise ConfigError(f"static_ptq.num_calibration: must be > 0, got {config.num_calibration}")
    batches = list(_batches(calib_inputs, config.num_calibration))
    check_calibration(batches, config.num_calibration)
    example = example_input if example_input is not None else batches[0][:1]
    sim, folded, unsupported, excluded = prepare(model, config, example)
    if unsupported:
        warnings.warn(
            "static PTQ left these modules in float (type not quantised): " + ", ".join(unsupported),
            stacklevel=2,
        )
    _set_phase(sim, Phase.CALIBRATE)
    seen = 0
    iterator: Iterable[Tensor] = batches
    if progress:
        from torchslim.core.progress import progress_bar

        iterator = progress_bar(batches, desc="calibrating", unit="batch")
    with torch.no_grad():
        for xb in iterator:
            sim(xb)
            seen += xb.shape[0]
    # CONVERT
    fqs = dict(sim.named_modules())
    for m in fqs.values():
        if isinstance(m, ActFakeQuant) and m.shares is None:
            m.convert()
    for m in fqs.values():
        if isinstance(m, ActFakeQuant) and m.shares is not None:
            src = fqs[m.shares]
            assert isinstance(src, ActFakeQuant)
            m.scale.copy_(src.scale)
            m.zero_point.copy_(src.zero_point)
            m.phase = Phase.CONVERT
    sim.eval()
    if example_input is not None:
        with torch.no_grad():
            sim(example_input)  # fail here, not at export, if the converted model cannot run this input
    return QuantizedModel(sim, folded, config, unsupported, excluded, seen)
