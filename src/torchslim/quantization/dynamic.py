"""Dynamic int8 post-training quantisation of ``nn.Linear`` layers (transformers), with ONNX Runtime export.

Weights are quantised once, symmetric int8 per output channel (per row of ``W [N, K]``; optionally one
scale per tensor). Activations are quantised at run time, asymmetric uint8, either per token (one
scale/zero point per row of the ``[..., K]`` input: each token gets its own range) or per tensor (one
range per call, ONNX ``DynamicQuantizeLinear``). No calibration data is needed.

:attr:`DynamicQuantizedModel.sim` is a PyTorch simulation that computes exactly what the exported graph
computes: ``y = s_x * s_w * (q_x - z_x) @ q_w^T + b``. :meth:`DynamicQuantizedModel.export_onnx` writes a
graph with integer ``MatMulInteger`` kernels:

* ``per_tensor``: ``DynamicQuantizeLinear -> MatMulInteger -> Cast -> Mul -> Add``, which ORT fuses into
  ``DynamicQuantizeMatMul`` / ``MatMulIntegerToFloat`` (one kernel per Linear);
* ``per_token``: row min/max -> scale, zero point -> ``Round/Clip/Cast`` to uint8 -> ``MatMulInteger`` ->
  ``(acc - z_x * colsum(q_w)) * s_x * s_w + b`` (the zero-point correction is exact integer algebra).

CPUs without VNNI (AVX2): ORT's uint8 x int8 kernels add pairs of products in int16 with saturation, so
full-range int8 weights make ORT disagree with the simulation. ``weight_dtype="uint8"`` stores the
same symmetric weights offset by 128 (zero point 128): ORT then uses its u8 x u8 kernels, which do not
saturate. ``"auto"`` picks that on CPUs without VNNI.

Per-tensor activations (the fused, fast ORT kernels) lose accuracy on transformers' outlier channels;
smoothing the model first (:mod:`torchslim.quantization.smooth`) fixes most of it: a smoothed Linear's
``1 / s`` input scale is kept as one ``Mul`` in front of the quantiser. :func:`layer_sensitivity` ranks
Linears for ``exclude`` / ``full_range``.

Example::

    import torch
    from transformers import BertConfig, BertModel
    from torchslim.quantization.dynamic import DynamicPTQ, quantize_dynamic
    bert = BertModel(BertConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                intermediate_size=128, vocab_size=100)).eval()
    q = quantize_dynamic(bert, DynamicPTQ())
    ids = torch.randint(0, 100, (2, 16)); mask = torch.ones_like(ids)
    path = q.export_onnx("bert_int8.onnx", (ids, mask))
    print(q.parity(path, (ids, mask)))
"""

from __future__ import annotations

import copy
import fnmatch
import tempfile
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from torchslim.core.config import Config
from torchslim.core.errors import ConfigError
from torchslim.quantization.static import cpu_lacks_vnni

__all__ = [
    "DynamicPTQ",
    "DynamicQuantLinear",
    "DynamicQuantizedModel",
    "DynamicParity",
    "layer_sensitivity",
    "quantize_dynamic",
]

#: Smallest activation scale (an all-zero row would otherwise give scale 0 and a division by zero).
_EPS = 1e-8


class DynamicPTQ(Config):
    """Dynamic int8 PTQ of ``nn.Linear`` layers (``type: dynamic_ptq`` in a recipe).

    Fields:
        activations: ``"per_token"`` (one uint8 range per row of the input, default) or ``"per_tensor"``.
        weights: ``"per_channel"`` (one int8 scale per output row, default) or ``"per_tensor"``.
        weight_dtype: storage of the int8 weights in ONNX: ``"int8"`` (ORT's u8 x s8 kernels), ``"uint8"``
            (the same values + 128, zero point 128: ORT's u8 x u8 kernels, which do not saturate on
            AVX2), ``"auto"`` (``uint8`` on CPUs without VNNI, else ``int8``). The PyTorch simulation
            is identical for all three.
        reduce_range: 7-bit weights (``[-63, 63]``); avoids the AVX2 saturation with ``int8`` storage at
            the cost of about 6 dB SQNR. Default ``False``.
        exclude: globs of module paths left in float (e.g. ``"pooler.*"``).
        full_range: globs of module paths that keep full 8-bit weights (stored ``uint8`` on CPUs without
            VNNI: exact u8 x u8 kernels) even when ``reduce_range`` / ``int8`` storage applies to the rest: the few
            most sensitive layers (see :func:`layer_sensitivity`) pay for the slower kernel, not all.
    """

    type_name: ClassVar[str] = "dynamic_ptq"

    activations: Literal["per_token", "per_tensor"] = "per_token"
    weights: Literal["per_channel", "per_tensor"] = "per_channel"
    weight_dtype: Literal["auto", "int8", "uint8"] = "auto"
    reduce_range: bool = False
    exclude: list[str] = []
    full_range: list[str] = []

    def resolved_weight_dtype(self) -> str:
        """``weight_dtype`` with ``"auto"`` resolved for this machine."""
        if self.weight_dtype == "auto":
            return "uint8" if cpu_lacks_vnni() else "int8"
        return self.weight_dtype


# ------------------------------------------------------------------------------------------ the kernel
def _act_qparams_per_token(x: Tensor) -> tuple[Tensor, Tensor]:
    """Per-row uint8 scale and zero point (float), the range widened to contain 0; mirrors the ONNX ops."""
    mn = torch.clamp(x.amin(dim=-1, keepdim=True), max=0.0)
    mx = torch.clamp(x.amax(dim=-1, keepdim=True), min=0.0)
    scale = torch.clamp((mx - mn) / 255.0, min=_EPS)
    zp = torch.clamp(torch.round(-mn / scale), 0.0, 255.0)
    return scale, zp


def _act_qparams_per_tensor(x: Tensor) -> tuple[Tensor, Tensor]:
    """ONNX ``DynamicQuantizeLinear`` parameters: ``scale = (max(x,0) - min(x,0)) / 255``, ``zp = round(-min/scale)``."""
    mn = torch.clamp(x.min(), max=0.0)
    mx = torch.clamp(x.max(), min=0.0)
    scale = torch.clamp((mx - mn) / 255.0, min=_EPS)
    zp = torch.clamp(torch.round(-mn / scale), 0.0, 255.0)
    return scale, zp


def _reduce(g: Any, op: str, x: Any) -> Any:
    if g.opset >= 18:
        axes = g.op("Constant", value_t=torch.tensor([-1], dtype=torch.int64))
        return g.op(op, x, axes, keepdims_i=1)
    return g.op(op, x, axes_i=[-1], keepdims_i=1)


def _const(g: Any, value: float) -> Any:
    return g.op("Constant", value_t=torch.tensor(value, dtype=torch.float32))


class _DynQLinearFn(torch.autograd.Function):
    """Integer-exact dynamic int8 linear; ``symbolic`` emits the ONNX integer graph (legacy exporter)."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        x: Tensor,
        w_t: Tensor,
        w_zp: Tensor,
        w_scale: Tensor,
        colsum: Tensor,
        bias: Tensor,
        per_token: bool,
        has_bias: bool,
        in_features: int,
        out_features: int,
    ) -> Tensor:
        xf = x.to(torch.float32)
        if per_token:
            scale, zp = _act_qparams_per_token(xf)
        else:
            scale, zp = _act_qparams_per_tensor(xf)
        q = torch.clamp(torch.round(xf / scale) + zp, 0.0, 255.0)
        w = w_t.to(torch.float32) - w_zp.to(torch.float32)  # [K, N] signed integer values
        acc = q @ w  # integer-valued; float32 rounding only beyond 2**24 (relative 6e-8)
        y = (acc - zp * colsum) * (scale * w_scale)
        if has_bias:
            y = y + bias
        return y.to(x.dtype)

    @staticmethod
    def symbolic(
        g: Any,
        x: Any,
        w_t: Any,
        w_zp: Any,
        w_scale: Any,
        colsum: Any,
        bias: Any,
        per_token: bool,
        has_bias: bool,
        in_features: int,
        out_features: int,
    ) -> Any:
        if per_token:
            # Rows of the flattened [M, K] input are tokens: QuantizeLinear per axis 0 quantises each token
            # with its own scale/zero point in one fused op; the output is reshaped back to [..., N].
            i64 = torch.int64
            x2 = g.op("Reshape", x, g.op("Constant", value_t=torch.tensor([-1, in_features], dtype=i64)))
            mn = g.op("Min", _reduce(g, "ReduceMin", x2), _const(g, 0.0))  # [M, 1]
            mx = g.op("Max", _reduce(g, "ReduceMax", x2), _const(g, 0.0))
            scale = g.op("Max", g.op("Div", g.op("Sub", mx, mn), _const(g, 255.0)), _const(g, _EPS))
            zp = g.op(
                "Clip", g.op("Round", g.op("Div", g.op("Neg", mn), scale)), _const(g, 0.0), _const(g, 255.0)
            )
            flat = g.op("Constant", value_t=torch.tensor([-1], dtype=i64))
            zp_u8 = g.op("Cast", g.op("Reshape", zp, flat), to_i=2)  # TensorProto.UINT8
            q = g.op("QuantizeLinear", x2, g.op("Reshape", scale, flat), zp_u8, axis_i=0)
            acc = g.op(
                "MatMulInteger", q, w_t, g.op("Constant", value_t=torch.tensor(0, dtype=torch.uint8)), w_zp
            )
            accf = g.op("Cast", acc, to_i=1)  # FLOAT
            y = g.op("Mul", g.op("Sub", accf, g.op("Mul", zp, colsum)), g.op("Mul", scale, w_scale))
            if has_bias:
                y = g.op("Add", y, bias)
            lead = g.op(
                "Slice",
                g.op("Shape", x),
                g.op("Constant", value_t=torch.tensor([0], dtype=i64)),
                g.op("Constant", value_t=torch.tensor([-1], dtype=i64)),
            )
            out_shape = g.op(
                "Concat", lead, g.op("Constant", value_t=torch.tensor([out_features], dtype=i64)), axis_i=0
            )
            return g.op("Reshape", y, out_shape)
        else:
            q, scale, zp = g.op("DynamicQuantizeLinear", x, outputs=3)
            acc = g.op("MatMulInteger", q, w_t, zp, w_zp)
            y = g.op("Mul", g.op("Cast", acc, to_i=1), g.op("Mul", scale, w_scale))
        if has_bias:
            y = g.op("Add", y, bias)
        return y


class DynamicQuantLinear(nn.Module):
    """``nn.Linear`` with int8 weights and dynamically quantised uint8 activations.

    Buffers: ``w_t`` (``[K, N]`` int8, or uint8 = int8 + 128), ``w_zp`` (0 or 128), ``w_scale [N]`` (or
    ``[1]``), ``colsum [N]`` (sum over K of the signed integer weights, for the zero-point correction),
    ``bias [N]``.
    """

    w_t: Tensor
    w_zp: Tensor
    w_scale: Tensor
    colsum: Tensor
    bias: Tensor
    input_scale: Tensor | None

    def __init__(
        self,
        linear: nn.Linear,
        per_token: bool = True,
        per_channel: bool = True,
        weight_dtype: str = "int8",
        weight_bits: int = 8,
    ) -> None:
        super().__init__()
        if weight_dtype not in ("int8", "uint8"):
            raise ConfigError(f"weight_dtype must be 'int8' or 'uint8', got {weight_dtype!r}")
        w = linear.weight.detach().to(torch.float32)
        qmax = 2 ** (weight_bits - 1) - 1
        absmax = w.abs().amax(dim=1) if per_channel else w.abs().max().reshape(1)
        w_scale = torch.clamp(absmax / qmax, min=1e-12)
        w_int = torch.clamp(torch.round(w / w_scale.reshape(-1, 1)), -qmax, qmax)  # [N, K] signed
        offset = 128 if weight_dtype == "uint8" else 0
        dtype = torch.uint8 if weight_dtype == "uint8" else torch.int8
        self.in_features = linear.in_features
        self.out_features = linear.out_features
        self.per_token = per_token
        self.per_channel = per_channel
        self.weight_dtype = weight_dtype
        self.weight_bits = weight_bits
        self.register_buffer("w_t", (w_int.t() + offset).contiguous().to(dtype))
        self.register_buffer("w_zp", torch.tensor(offset, dtype=dtype))
        self.register_buffer("w_scale", w_scale.to(torch.float32))
        self.register_buffer("colsum", w_int.sum(dim=1).to(torch.float32))
        has_bias = linear.bias is not None
        self.has_bias = has_bias
        b = linear.bias.detach().to(torch.float32) if linear.bias is not None else torch.zeros(0)
        self.register_buffer("bias", b)
        # SmoothQuant (smooth.SmoothLinear): the input is multiplied by 1/s before it is quantised
        scale = getattr(linear, "input_scale", None)
        self.register_buffer("input_scale", scale if isinstance(scale, Tensor) else None)

    def dequantized_weight(self) -> Tensor:
        """The float weight ``[N, K]`` the layer effectively uses."""
        w = self.w_t.to(torch.float32) - self.w_zp.to(torch.float32)
        return (w * self.w_scale).t().contiguous()

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[-1] != self.in_features:
            raise ValueError(
                f"DynamicQuantLinear expects last dim {self.in_features}, got shape {tuple(x.shape)}"
            )
        if self.input_scale is not None:
            x = x * self.input_scale
        out = _DynQLinearFn.apply(
            x,
            self.w_t,
            self.w_zp,
            self.w_scale,
            self.colsum,
            self.bias,
            self.per_token,
            self.has_bias,
            self.in_features,
            self.out_features,
        )
        return out  # type: ignore[no-any-return]

    def extra_repr(self) -> str:
        acts = "per_token" if self.per_token else "per_tensor"
        wts = "per_channel" if self.per_channel else "per_tensor"
        return (
            f"in={self.in_features}, out={self.out_features}, act=uint8 {acts}, "
            f"weight=int{self.weight_bits} {wts} stored {self.weight_dtype}"
            + (", smoothed" if self.input_scale is not None else "")
        )


# -------------------------------------------------------------------------------------------- results
@dataclass(frozen=True)
class DynamicParity:
    """Agreement of ONNX Runtime with the PyTorch simulation on the same inputs (first output)."""

    max_abs_diff: float
    mean_abs_diff: float
    cosine: float


def _as_tuple(x: Any) -> tuple[Tensor, ...]:
    if isinstance(x, Tensor):
        return (x,)
    if isinstance(x, (tuple, list)) and all(isinstance(t, Tensor) for t in x):
        return tuple(x)
    raise ConfigError(
        "example_inputs must be a tensor or a tuple of tensors (e.g. (input_ids, attention_mask))."
    )


def _first_tensor(out: Any) -> Tensor:
    if isinstance(out, Tensor):
        return out
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], Tensor):
        return out[0]
    if hasattr(out, "last_hidden_state"):
        return out.last_hidden_state  # type: ignore[no-any-return]
    if hasattr(out, "to_tuple"):
        return _first_tensor(out.to_tuple())
    raise ConfigError(f"cannot find an output tensor in a {type(out).__name__}")


class _FirstOutput(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, *args: Tensor) -> Tensor:
        return _first_tensor(self.model(*args))


@dataclass
class DynamicQuantizedModel:
    """Result of :func:`quantize_dynamic`.

    Attributes: ``sim`` (the model with :class:`DynamicQuantLinear` layers; runs in PyTorch and computes
    what the exported graph computes), ``float_model`` (the untouched input model), ``config``,
    ``quantized`` (module paths replaced), ``skipped`` (Linear paths left in float by ``exclude`` /
    ``filter_fn``).
    """

    sim: nn.Module
    float_model: nn.Module
    config: DynamicPTQ
    quantized: list[str]
    skipped: list[str] = field(default_factory=list)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        with torch.no_grad():
            return self.sim(*args, **kwargs)

    def export_onnx(
        self,
        path: str | Path,
        example_inputs: Tensor | tuple[Tensor, ...],
        opset: int = 17,
        input_names: Sequence[str] | None = None,
    ) -> Path:
        """Write the integer ONNX graph (legacy TorchScript exporter); returns ``path`` (written atomically).

        Every dimension of every input is symbolic (batch and sequence length); the graph returns the
        model's first output as ``output``. Inputs are named ``input_names`` (default ``input``,
        ``input_1``, ...).
        """
        import onnx

        from torchslim.core.io import atomic_write_bytes

        args = _as_tuple(example_inputs)
        names = list(input_names) if input_names else ["input"] + [f"input_{i}" for i in range(1, len(args))]
        if len(names) != len(args):
            raise ConfigError(
                f"{len(names)} input_names for {len(args)} example inputs; pass one name per input."
            )
        axes: dict[str, dict[int, str]] = {
            n: {d: f"{n}_d{d}" for d in range(a.dim())} for n, a in zip(names, args, strict=True)
        }
        axes["output"] = {0: "batch"}
        wrapper = _FirstOutput(copy.deepcopy(self.sim)).eval()
        path = Path(path)
        with tempfile.TemporaryDirectory() as tmp:
            raw = Path(tmp) / "raw.onnx"
            with warnings.catch_warnings(), torch.no_grad():
                warnings.simplefilter("ignore")
                torch.onnx.export(
                    wrapper,
                    args,
                    str(raw),
                    dynamo=False,
                    opset_version=opset,
                    input_names=names,
                    output_names=["output"],
                    dynamic_axes=axes,
                    do_constant_folding=True,
                )
            proto = onnx.load(str(raw))
        onnx.checker.check_model(proto)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(path, proto.SerializeToString())
        return path

    def parity(
        self, onnx_path: str | Path, inputs: Tensor | tuple[Tensor, ...], threads: int | None = 1
    ) -> DynamicParity:
        """Run ``onnx_path`` in ONNX Runtime and :attr:`sim` in PyTorch on ``inputs``; compare first outputs."""
        import numpy as np
        import onnxruntime as ort

        args = _as_tuple(inputs)
        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = threads
            opts.inter_op_num_threads = 1
        sess = ort.InferenceSession(str(onnx_path), opts, providers=["CPUExecutionProvider"])
        feed = {i.name: a.numpy() for i, a in zip(sess.get_inputs(), args, strict=False)}
        got = torch.from_numpy(np.asarray(sess.run(None, feed)[0])).double()
        with torch.no_grad():
            ref = _first_tensor(self.sim(*args)).double()
        diff = (ref - got).abs()
        cos = F.cosine_similarity(ref.flatten(), got.flatten(), dim=0)
        return DynamicParity(float(diff.max()), float(diff.mean()), float(cos))


# ----------------------------------------------------------------------------------------------- driver
def quantize_dynamic(
    model: nn.Module,
    config: DynamicPTQ | None = None,
    filter_fn: Callable[[str, nn.Linear], bool] | None = None,
) -> DynamicQuantizedModel:
    """Replace every ``nn.Linear`` of a copy of ``model`` by a :class:`DynamicQuantLinear`.

    Args:
        model: any module (the input is not modified).
        config: :class:`DynamicPTQ` (default: per-token activations, per-channel weights).
        filter_fn: ``(path, linear) -> bool``; a Linear is quantised only when it returns True (and its path
            matches no ``config.exclude`` glob).

    Raises:
        ConfigError: ``config`` is not a :class:`DynamicPTQ`, or the model has no Linear left to quantise.
    """
    config = config or DynamicPTQ()
    if not isinstance(config, DynamicPTQ):
        raise ConfigError(f"quantize_dynamic needs a DynamicPTQ config, got {type(config).__name__}.")
    sim = copy.deepcopy(model).eval()
    wdtype = config.resolved_weight_dtype()
    bits = 7 if config.reduce_range else 8
    quantized: list[str] = []
    skipped: list[str] = []
    targets = [(n, m) for n, m in sim.named_modules() if isinstance(m, nn.Linear)]
    for name, lin in targets:
        if any(fnmatch.fnmatch(name, p) for p in config.exclude) or (
            filter_fn is not None and not filter_fn(name, lin)
        ):
            skipped.append(name)
            continue
        full = any(fnmatch.fnmatch(name, p) for p in config.full_range)
        new = DynamicQuantLinear(
            lin,
            per_token=config.activations == "per_token",
            per_channel=config.weights == "per_channel",
            weight_dtype="uint8" if full and cpu_lacks_vnni() else wdtype,
            weight_bits=8 if full else bits,
        )
        parent_name, _, attr = name.rpartition(".")
        parent = sim.get_submodule(parent_name) if parent_name else sim
        setattr(parent, attr, new)
        quantized.append(name)
    if not quantized:
        raise ConfigError(
            "quantize_dynamic found no nn.Linear to quantise"
            + (f" (all {len(skipped)} excluded by exclude/filter_fn)" if skipped else "")
            + "; dynamic PTQ only handles nn.Linear (use quantize_static for CNNs)."
        )
    return DynamicQuantizedModel(
        sim=sim, float_model=model, config=config, quantized=quantized, skipped=skipped
    )


def layer_sensitivity(
    model: nn.Module, batches: Sequence[Any], config: DynamicPTQ | None = None
) -> dict[str, float]:
    """Local SQNR (dB) of each ``nn.Linear``'s output when only that layer is quantised by ``config``.

    One float forward pass per batch; every Linear sees its real float input and is compared with its
    :class:`DynamicQuantLinear` (same ``config``) on it. Low SQNR = sensitive: candidates for
    ``config.exclude``. Returned sorted from most to least sensitive.

    Example::

        sens = layer_sensitivity(bert, [(ids, mask)], DynamicPTQ(activations="per_tensor"))
        worst = next(iter(sens))          # path of the most sensitive Linear
    """
    config = config or DynamicPTQ()
    batches = list(batches)
    if not batches:
        raise ConfigError("layer_sensitivity needs at least one batch; got an empty list.")
    wdtype = config.resolved_weight_dtype()
    bits = 7 if config.reduce_range else 8
    err: dict[str, float] = {}
    sig: dict[str, float] = {}
    hooks = []

    def hook(name: str, q: DynamicQuantLinear) -> Any:
        def fn(_m: nn.Module, args: tuple[Any, ...], out: Tensor) -> None:
            ref = out.detach().double()
            got = q(args[0].detach()).double()
            err[name] = err.get(name, 0.0) + float((ref - got).pow(2).sum())
            sig[name] = sig.get(name, 0.0) + float(ref.pow(2).sum())

        return fn

    for name, m in model.named_modules():
        if isinstance(m, nn.Linear):
            q = DynamicQuantLinear(
                m,
                per_token=config.activations == "per_token",
                per_channel=config.weights == "per_channel",
                weight_dtype=wdtype,
                weight_bits=bits,
            )
            hooks.append(m.register_forward_hook(hook(name, q)))
    if not hooks:
        raise ConfigError("layer_sensitivity found no nn.Linear in the model.")
    try:
        with torch.no_grad():
            for b in batches:
                if isinstance(b, Tensor):
                    model(b)
                elif isinstance(b, dict):
                    model(**b)
                else:
                    model(*b)
    finally:
        for h in hooks:
            h.remove()
    import math

    sqnr = {n: 10.0 * math.log10(max(sig[n], 1e-30) / max(err[n], 1e-30)) for n in err}
    return dict(sorted(sqnr.items(), key=lambda kv: kv[1]))
