"""Weight-only int8 LSTM (paper #17, KWS-QLSTM: Bluche, Primet & Gisselbrecht, arXiv 2002.10851).

The paper's keyword spotter runs a CTC-trained LSTM whose *weights* are quantised so that the whole
acoustic model fits in under 500 KB. This module implements that part only: post-training quantisation
of every ``nn.LSTM`` of a model to ``bits``-wide signed integers (int8 storage) with one symmetric scale
per gate row (each row of ``weight_ih_l*`` / ``weight_hh_l*`` / ``weight_hr_l*`` gets its own scale). At
run time the weights are dequantised (``q * scale``) and the standard LSTM recurrence runs in float32, so
the result equals ``nn.LSTM`` run with the dequantised weights. Activations are not quantised (the
abstract, the only part of the paper we could read, reports weight quantisation only).

Storage per layer and direction: int8 weight matrices, float32 per-row scales and, by default, one fused
float32 bias ``b_ih + b_hh`` (the LSTM only ever uses their sum). The keyword-spotting decoder and the
confidence calibration of the paper are out of scope.

Example::

    import torch
    from torch import nn
    from torchslim.quantization.lstm import QLSTMConfig, quantize_lstm_

    model = nn.Sequential()
    model.add_module("rnn", nn.LSTM(28, 64, num_layers=2, batch_first=True))
    replaced = quantize_lstm_(model, QLSTMConfig(bits=8))   # ['rnn']
    out, (h, c) = model.rnn(torch.randn(4, 28, 28))          # float32 compute on dequantised weights
"""

from __future__ import annotations

import math
import os
import tempfile
import warnings
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

import torch
from pydantic import Field
from torch import Tensor, nn

from torchslim.core.config import Config
from torchslim.core.errors import UnsupportedModelError
from torchslim.quantization.primitives import choose_qparams, dequantize, qrange, quantize

__all__ = [
    "QLSTMConfig",
    "QuantizedLSTM",
    "dynamic_quantize_uint8",
    "export_qlstm_onnx",
    "quantize_lstm_",
    "quantize_rows",
]


class QLSTMConfig(Config):
    """Configuration of weight-only LSTM quantisation.

    Attributes:
        bits: integer width of the weights, 2..8 (stored as int8 whatever the width).
        fuse_bias: store ``b_ih + b_hh`` once (float32) instead of both biases; changes results only by
            float rounding of the sum (< 1e-6) and saves ``4 * 4 * hidden_size`` bytes per layer/direction.
        activations: ``"float"`` (weight-only: float32 recurrence on dequantised weights) or
            ``"dynamic_uint8"``: simulate ONNX Runtime's ``com.microsoft.DynamicQuantizeLSTM`` exactly, i.e.
            both matrix products of every step run on integers: the input sequence of a layer is quantised
            once per call and the hidden state once per step, per tensor, to uint8 with ORT's asymmetric
            min/max rule (range widened to include 0, ``scale = (max - min) / 255``, zero point rounded half
            to even), accumulated in int32 against the int8 weights and rescaled by
            ``act_scale * row_scale``. This is what :func:`export_qlstm_onnx` models run.
        ort_threads: intra-op threads the ORT session will use; with more than one ORT splits the batch into
            ``ceil(batch / threads)``-row chunks, each with its own hidden-state scale (only with
            ``activations="dynamic_uint8"``).
    """

    type_name: ClassVar[str] = "qlstm"

    bits: Annotated[int, Field(ge=2, le=8)] = 8
    fuse_bias: bool = True
    activations: Literal["float", "dynamic_uint8"] = "float"
    ort_threads: Annotated[int, Field(ge=1)] = 1


def quantize_rows(w: Tensor, bits: int = 8) -> tuple[Tensor, Tensor]:
    """Symmetric per-row quantisation of a 2-D weight: ``(q int8 [rows, cols], scale float32 [rows])``.

    ``scale[r] = max|w[r]| / qmax`` with the narrow signed range ``[-qmax, qmax]``, ``qmax = 2**(bits-1) - 1``;
    ``q = clamp(round(w / scale), -qmax, qmax)``, so ``|q * scale - w| <= scale / 2`` elementwise.
    """
    if w.dim() != 2:
        raise ValueError(f"quantize_rows expects a 2-D weight matrix, got shape {tuple(w.shape)}")
    if not 2 <= bits <= 8:
        raise ValueError(f"bits must be in [2, 8] to fit int8 storage, got {bits}")
    w = w.detach().to(torch.float32)
    qmin, qmax = qrange(bits, signed=True, narrow_range=True)
    scale, zp = choose_qparams(
        w.amin(dim=1), w.amax(dim=1), bits=bits, symmetric=True, signed=True, narrow_range=True
    )
    q = quantize(w, scale, zp, qmin, qmax, axis=0).to(torch.int8)
    return q, scale


def dynamic_quantize_uint8(a: Tensor) -> tuple[Tensor, Tensor]:
    """ONNX Runtime's dynamic per-tensor uint8 quantisation of a float activation.

    Returns ``(q - zero_point, scale)``: the centred integers (float32 holding integers in [-255, 255]) and the
    float32 scale, with ``min = min(a.min(), 0)``, ``max = max(a.max(), 0)``,
    ``scale = (max - min) / 255`` (1 when ``max == min``), ``zero_point = round_half_even(clamp(-min / scale,
    0, 255))`` and ``q = clamp(round_half_even(a / scale) + zero_point, 0, 255)``, all in float32 as ORT's
    ``GetQuantizationParameter`` / ``MlasQuantizeLinear`` do.

    Example::

        >>> q, s = dynamic_quantize_uint8(torch.tensor([-1.0, 0.0, 3.0]))
        >>> [int(v) for v in q], round(float(s), 6)
        ([-64, 0, 191], 0.015686)
    """
    if a.numel() == 0:
        raise ValueError("dynamic_quantize_uint8 got an empty tensor")
    a = a.float()
    zero = a.new_zeros(())
    lo = torch.minimum(a.min(), zero)
    hi = torch.maximum(a.max(), zero)
    scale = (hi - lo) / 255.0 if bool(hi != lo) else a.new_ones(())
    zp = torch.round(torch.clamp(-lo / scale, 0.0, 255.0))
    q = torch.clamp(torch.round(a / scale) + zp, 0.0, 255.0)
    return q - zp, scale


class QuantizedLSTM(nn.Module):
    """An ``nn.LSTM`` replacement holding int8 weights with per-gate-row float32 scales.

    Inference only (``forward`` under autograd still works but no parameter is trainable). Accepts the same
    inputs as ``nn.LSTM`` (batched or unbatched tensors, ``batch_first`` either way, optional ``(h0, c0)``,
    ``PackedSequence``) and returns the same outputs. Bidirectional, multi-layer and ``proj_size`` LSTMs
    are supported. Build it with :meth:`from_float`.

    State dict (per layer ``k`` and direction suffix ``s`` in ``{"", "_reverse"}``):
    ``weight_ih_l{k}{s}_int8`` / ``weight_ih_l{k}{s}_scale`` (and ``hh``, ``hr``), then either
    ``bias_l{k}{s}`` (fused) or ``bias_ih_l{k}{s}`` and ``bias_hh_l{k}{s}``.
    """

    def __init__(
        self,
        template: nn.LSTM,
        bits: int,
        fuse_bias: bool,
        activations: str = "float",
        ort_threads: int = 1,
    ) -> None:
        super().__init__()
        if activations not in ("float", "dynamic_uint8"):
            raise ValueError(f"activations must be 'float' or 'dynamic_uint8', got {activations!r}")
        if activations == "dynamic_uint8" and template.proj_size:
            raise UnsupportedModelError(
                "activations='dynamic_uint8' simulates ONNX Runtime's DynamicQuantizeLSTM, which has no "
                f"projection (proj_size={template.proj_size}); use activations='float' for this LSTM"
            )
        self.activations = activations
        self.ort_threads = int(ort_threads)
        self.input_size = template.input_size
        self.hidden_size = template.hidden_size
        self.num_layers = template.num_layers
        self.bias = template.bias
        self.batch_first = template.batch_first
        self.bidirectional = template.bidirectional
        self.proj_size = template.proj_size
        self.bits = bits
        self.fuse_bias = fuse_bias
        # Shapes only: the template lives on the meta device and never holds data.
        self._template = [
            nn.LSTM(
                template.input_size,
                template.hidden_size,
                num_layers=template.num_layers,
                bias=template.bias,
                batch_first=template.batch_first,
                bidirectional=template.bidirectional,
                proj_size=template.proj_size,
                device="meta",
            ).eval()
        ]
        self._weight_names = [n for n in template._flat_weights_names if n.startswith("weight_")]
        self._bias_names = [n for n in template._flat_weights_names if n.startswith("bias_")]

    @classmethod
    def from_float(cls, lstm: nn.LSTM, config: QLSTMConfig | None = None) -> QuantizedLSTM:
        """Quantise a float ``nn.LSTM`` (its weights are read, not modified)."""
        if not isinstance(lstm, nn.LSTM):
            raise TypeError(f"QuantizedLSTM.from_float expects an nn.LSTM, got {type(lstm).__name__}")
        config = QLSTMConfig() if config is None else config
        q = cls(lstm, config.bits, config.fuse_bias, config.activations, config.ort_threads)
        params = dict(lstm.named_parameters())
        dev = next(iter(params.values())).device
        for name in q._weight_names:
            wq, scale = quantize_rows(params[name], config.bits)
            q.register_buffer(f"{name}_int8", wq.to(dev))
            q.register_buffer(f"{name}_scale", scale.to(dev))
        if lstm.bias:
            if config.fuse_bias:
                for name in q._bias_names:
                    if name.startswith("bias_ih_"):
                        suffix = name[len("bias_ih_") :]
                        fused = params[name].detach().float() + params[f"bias_hh_{suffix}"].detach().float()
                        q.register_buffer(f"bias_{suffix}", fused.clone())
            else:
                for name in q._bias_names:
                    q.register_buffer(name, params[name].detach().float().clone())
        return q

    def dequantized_weights(self) -> dict[str, Tensor]:
        """The float32 tensors ``nn.LSTM`` would use, keyed by its parameter names (biases included)."""
        out: dict[str, Tensor] = {}
        for name in self._weight_names:
            q: Tensor = getattr(self, f"{name}_int8")
            s: Tensor = getattr(self, f"{name}_scale")
            out[name] = dequantize(q, s, torch.zeros_like(s, dtype=torch.int32), axis=0)
        if self.bias:
            for name in self._bias_names:
                if not self.fuse_bias:
                    out[name] = getattr(self, name)
                elif name.startswith("bias_ih_"):
                    out[name] = getattr(self, f"bias_{name[len('bias_ih_'):]}")
                else:
                    b: Tensor = getattr(self, f"bias_{name[len('bias_hh_'):]}")
                    out[name] = torch.zeros_like(b)
        return out

    def to_float(self) -> nn.LSTM:
        """A float ``nn.LSTM`` holding the dequantised weights (same outputs as this module)."""
        t = self._template[0]
        dev = next(iter(self.buffers())).device
        lstm = nn.LSTM(
            t.input_size,
            t.hidden_size,
            num_layers=t.num_layers,
            bias=t.bias,
            batch_first=t.batch_first,
            bidirectional=t.bidirectional,
            proj_size=t.proj_size,
            device=dev,
        )
        with torch.no_grad():
            for k, v in self.dequantized_weights().items():
                getattr(lstm, k).copy_(v)
        return lstm.eval()

    def fused_bias(self, layer: int, suffix: str = "") -> Tensor:
        """``b_ih + b_hh`` of one layer/direction (zeros when the LSTM has no bias)."""
        if not self.bias:
            dev = next(iter(self.buffers())).device
            return torch.zeros(4 * self.hidden_size, device=dev)
        if self.fuse_bias:
            b: Tensor = getattr(self, f"bias_l{layer}{suffix}")
            return b
        return getattr(self, f"bias_ih_l{layer}{suffix}") + getattr(self, f"bias_hh_l{layer}{suffix}")

    def forward(self, input: Any, hx: tuple[Tensor, Tensor] | None = None) -> Any:  # noqa: A002
        """Same signature and outputs as ``nn.LSTM.forward``."""
        if self.activations == "dynamic_uint8":
            return self._forward_dynamic(input, hx)
        from torch.func import functional_call

        args: tuple[Any, ...] = (input,) if hx is None else (input, hx)
        return functional_call(self._template[0], self.dequantized_weights(), args)

    def _int_gemm(self, a: Tensor, name: str) -> Tensor:
        """``a @ W.T`` the way ORT's quantised GEMM computes it (uint8 ``a``, int8 ``W``, int32 sums)."""
        qa, a_scale = dynamic_quantize_uint8(a)
        w: Tensor = getattr(self, f"{name}_int8")
        w_scale: Tensor = getattr(self, f"{name}_scale")
        # Integer products summed in float64 are exact (|sum| < 2**53), i.e. equal to the int32 accumulator.
        acc = (qa.double() @ w.double().T).float()
        return acc * (a_scale * w_scale)

    def _forward_dynamic(self, input: Any, hx: tuple[Tensor, Tensor] | None) -> Any:
        if isinstance(input, nn.utils.rnn.PackedSequence):
            raise UnsupportedModelError(
                "activations='dynamic_uint8' does not take PackedSequence inputs; pad the batch instead"
            )
        x: Tensor = input
        unbatched = x.dim() == 2
        if unbatched:
            x = x.unsqueeze(0 if self.batch_first else 1)
            if hx is not None:
                hx = (hx[0].unsqueeze(1), hx[1].unsqueeze(1))
        if self.batch_first:
            x = x.transpose(0, 1)
        seq_len, batch, _ = x.shape
        dirs = 2 if self.bidirectional else 1
        hid = self.hidden_size
        # ORT partitions the batch across its threads (UniDirectionalLstm::SetNumThreads).
        batch_parallel = batch > 4 or (batch >= 2 and hid <= 256)
        chunk = math.ceil(batch / self.ort_threads) if batch_parallel else batch
        h_n: list[Tensor] = []
        c_n: list[Tensor] = []
        inp = x.float()
        for layer in range(self.num_layers):
            outs: list[Tensor] = []
            for d, suffix in enumerate(["", "_reverse"][:dirs]):
                idx = layer * dirs + d
                if hx is None:
                    h = inp.new_zeros(batch, hid)
                    c = inp.new_zeros(batch, hid)
                else:
                    h, c = hx[0][idx].float(), hx[1][idx].float()
                xw = self._int_gemm(inp.reshape(seq_len * batch, -1), f"weight_ih_l{layer}{suffix}")
                xw = xw.reshape(seq_len, batch, 4 * hid)
                bias = self.fused_bias(layer, suffix)
                steps = range(seq_len - 1, -1, -1) if suffix else range(seq_len)
                hs: list[Tensor] = [inp.new_empty(0)] * seq_len
                for t in steps:
                    hw = torch.cat(
                        [self._int_gemm(h[s : s + chunk], f"weight_hh_l{layer}{suffix}") for s in range(0, batch, chunk)]
                    )
                    i, f, g, o = ((xw[t] + hw) + bias).chunk(4, dim=1)
                    c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
                    h = torch.sigmoid(o) * torch.tanh(c)
                    hs[t] = h
                outs.append(torch.stack(hs))
                h_n.append(h)
                c_n.append(c)
            inp = torch.cat(outs, dim=2)
        out = inp.transpose(0, 1) if self.batch_first else inp
        hn, cn = torch.stack(h_n), torch.stack(c_n)
        if unbatched:
            out = out.squeeze(0 if self.batch_first else 1)
            hn, cn = hn.squeeze(1), cn.squeeze(1)
        return out, (hn, cn)

    def extra_repr(self) -> str:
        s = f"{self.input_size}, {self.hidden_size}, num_layers={self.num_layers}, bits={self.bits}"
        if self.activations != "float":
            s += f", activations={self.activations}"
        if self.batch_first:
            s += ", batch_first=True"
        if self.bidirectional:
            s += ", bidirectional=True"
        if self.proj_size:
            s += f", proj_size={self.proj_size}"
        return s


def quantize_lstm_(model: nn.Module, config: QLSTMConfig | None = None) -> list[str]:
    """Replace every ``nn.LSTM`` inside ``model`` (in place) by a :class:`QuantizedLSTM`.

    Returns the qualified names of the replaced modules. If ``model`` itself is an ``nn.LSTM`` there is no
    parent to replace it in: use ``QuantizedLSTM.from_float(model, config)`` instead.

    Raises:
        UnsupportedModelError: ``model`` is an ``nn.LSTM`` or contains none.
    """
    config = QLSTMConfig() if config is None else config
    if isinstance(model, nn.LSTM):
        raise UnsupportedModelError(
            "quantize_lstm_ replaces LSTMs inside a model; for a bare nn.LSTM call "
            "QuantizedLSTM.from_float(lstm, config)"
        )
    targets = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.LSTM)]
    if not targets:
        raise UnsupportedModelError(
            f"quantize_lstm_: {type(model).__name__} contains no nn.LSTM module (nothing to quantise); "
            "other recurrent layers (GRU, RNN, LSTMCell) are not supported"
        )
    for name, lstm in targets:
        parent_name, _, attr = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, attr, QuantizedLSTM.from_float(lstm, config))
    return [n for n, _ in targets]


# --------------------------------------------------------------------------- ONNX export (ORT int8 LSTM)
_IOFC = (0, 3, 1, 2)  # ONNX gate blocks i, o, f, c taken from PyTorch's i, f, g, o


def _to_iofc(t: Tensor, hidden: int) -> Tensor:
    """Reorder the 4 gate blocks along dim 0 from PyTorch's (i, f, g, o) to ONNX's (i, o, f, c)."""
    return torch.cat([t[k * hidden : (k + 1) * hidden] for k in _IOFC])


def _float_twin(model: nn.Module) -> nn.Module:
    """A copy of ``model`` with every QuantizedLSTM replaced by its dequantised ``nn.LSTM``."""
    import copy

    if isinstance(model, QuantizedLSTM):
        return model.to_float()
    twin = copy.deepcopy(model)
    for name, m in list(twin.named_modules()):
        if isinstance(m, QuantizedLSTM):
            parent_name, _, attr = name.rpartition(".")
            parent = twin.get_submodule(parent_name) if parent_name else twin
            setattr(parent, attr, m.to_float())
    return twin.eval()


def export_qlstm_onnx(
    model: nn.Module,
    example_input: Tensor | tuple[Tensor, ...],
    path: str | os.PathLike[str],
    weight_dtype: Literal["auto", "int8", "uint8"] = "auto",
    opset: int = 17,
) -> Path:
    """Export a model holding :class:`QuantizedLSTM` modules so that ONNX Runtime runs them in int8.

    The model is exported (TorchScript exporter, dynamic batch) with each QuantizedLSTM as a float LSTM on
    its dequantised weights; every resulting ONNX ``LSTM`` node is then replaced by ORT's contrib op
    ``com.microsoft.DynamicQuantizeLSTM`` holding *our* integers and per-row scales (gate rows reordered to
    ONNX's i, o, f, c; ``W``/``R`` stored transposed ``[directions, in, 4 * hidden]``; scales and zero points
    ``[directions, 4 * hidden]``). ORT then quantises activations dynamically to uint8 and runs integer GEMMs:
    the same arithmetic as ``QLSTMConfig(activations="dynamic_uint8")``, so the PyTorch simulation and ORT
    agree up to float rounding (check with :func:`torchslim.export.parity.check_parity`). Other layers stay
    float; an ``nn.LSTM`` that was not quantised stays a float ``LSTM`` node (with a warning).

    Args:
        model: a module containing QuantizedLSTM modules (or a QuantizedLSTM itself).
        example_input: input the model is run with (batch dimension 0 is made dynamic).
        path: destination ``.onnx`` file (written atomically).
        weight_dtype: ``"int8"`` (zero point 0; ORT's u8s8 kernel, the fastest) or ``"uint8"`` (the same
            integers + 128 with zero point 128; ORT's u8u8 kernel). On x86 CPUs without VNNI the u8s8 kernel
            adds pairs of uint8 x int8 products in *saturating int16* (``vpmaddubsw``), so with 8-bit weights
            (|q| up to 127) ORT's result can differ from the exact integer sum the simulation computes;
            with ``bits <= 7`` (|q| <= 63, ``2 * 255 * 63 < 32767``) it cannot saturate. ``"auto"``
            (default) picks ``"int8"`` when every quantised LSTM has ``bits <= 7`` and ``"uint8"``
            otherwise, so ORT always matches the simulation.
        opset: ONNX opset of the float export.

    Returns:
        The path written.

    Raises:
        UnsupportedModelError: the model contains no QuantizedLSTM, or one whose ONNX LSTM node cannot be
            found in the export.

    Example::

        >>> model = nn.Sequential()
        >>> model.add_module("rnn", nn.LSTM(8, 16, batch_first=True))
        >>> _ = quantize_lstm_(model, QLSTMConfig(activations="dynamic_uint8"))
        >>> p = export_qlstm_onnx(model, torch.randn(2, 5, 8), "/tmp/qlstm.onnx")   # doctest: +SKIP
    """
    import numpy as np
    import onnx
    from onnx import helper, numpy_helper

    from torchslim.core.io import atomic_write_bytes
    from torchslim.export.onnx import export_onnx

    if weight_dtype not in ("auto", "int8", "uint8"):
        raise ValueError(f"weight_dtype must be 'auto', 'int8' or 'uint8', got {weight_dtype!r}")
    qmods = (
        [model] if isinstance(model, QuantizedLSTM) else [m for m in model.modules() if isinstance(m, QuantizedLSTM)]
    )
    if not qmods:
        raise UnsupportedModelError(
            f"export_qlstm_onnx: {type(model).__name__} contains no QuantizedLSTM; call quantize_lstm_ first"
        )
    if weight_dtype == "auto":
        weight_dtype = "int8" if all(m.bits <= 7 for m in qmods) else "uint8"
    # Candidates: one per (module, layer), float W/R exactly as the exporter writes them (iofc order).
    cands: list[dict[str, Any]] = []
    for m in qmods:
        if m.proj_size:
            raise UnsupportedModelError("DynamicQuantizeLSTM has no projection: proj_size must be 0 to export")
        deq = m.dequantized_weights()
        sfx = ["", "_reverse"][: 2 if m.bidirectional else 1]
        for layer in range(m.num_layers):
            c: dict[str, Any] = {}
            for kind in ("ih", "hh"):
                names = [f"weight_{kind}_l{layer}{s}" for s in sfx]
                hid = m.hidden_size
                c[f"{kind}_float"] = np.stack([_to_iofc(deq[n], hid).cpu().numpy() for n in names])
                c[f"{kind}_int"] = np.stack(
                    [_to_iofc(getattr(m, f"{n}_int8"), hid).cpu().numpy().T for n in names]
                )
                c[f"{kind}_scale"] = np.stack(
                    [_to_iofc(getattr(m, f"{n}_scale"), hid).cpu().numpy() for n in names]
                ).astype(np.float32)
            cands.append(c)

    path = Path(path)
    with tempfile.TemporaryDirectory(dir=path.parent if path.parent.exists() else None) as tmp:
        float_path = export_onnx(_float_twin(model), example_input, Path(tmp) / "float.onnx", opset=opset)
        proto = onnx.load(str(float_path))
    graph = proto.graph
    inits = {i.name: i for i in graph.initializer}
    consts = {n.output[0]: n for n in graph.node if n.op_type == "Constant"}

    def value(name: str) -> np.ndarray | None:
        if name in inits:
            return numpy_helper.to_array(inits[name])
        if name in consts:
            return numpy_helper.to_array(consts[name].attribute[0].t)
        return None

    used: set[int] = set()
    new_nodes = []
    n_replaced = 0
    for node in graph.node:
        if node.op_type != "LSTM":
            new_nodes.append(node)
            continue
        w, r = value(node.input[1]), value(node.input[2])
        match = next(
            (
                k
                for k, c in enumerate(cands)
                if k not in used
                and w is not None
                and r is not None
                and w.shape == c["ih_float"].shape
                and r.shape == c["hh_float"].shape
                and np.array_equal(w, c["ih_float"])
                and np.array_equal(r, c["hh_float"])
            ),
            None,
        )
        if match is None:
            warnings.warn(
                f"ONNX LSTM node {node.name!r} matches no QuantizedLSTM layer: left in float", stacklevel=2
            )
            new_nodes.append(node)
            continue
        used.add(match)
        c = cands[match]
        base = f"{node.name or 'lstm'}_{n_replaced}"
        new_inputs = list(node.input[:8]) + [""] * (8 - len(node.input[:8]))
        for pos, kind in ((1, "ih"), (2, "hh")):
            q = c[f"{kind}_int"].astype(np.int8)
            scale = c[f"{kind}_scale"]
            if weight_dtype == "uint8":
                qt = (q.astype(np.int16) + 128).astype(np.uint8)
                zp = np.full(scale.shape, 128, dtype=np.uint8)
            else:
                qt, zp = q, np.zeros(scale.shape, dtype=np.int8)
            for suffix, arr in (("quantized", qt), ("scale", scale), ("zero_point", zp)):
                graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(arr), f"{base}_{kind}_{suffix}"))
            new_inputs[pos] = f"{base}_{kind}_quantized"
        new_inputs += [f"{base}_ih_scale", f"{base}_ih_zero_point", f"{base}_hh_scale", f"{base}_hh_zero_point"]
        qnode = helper.make_node(
            "DynamicQuantizeLSTM",
            new_inputs,
            list(node.output),
            name=f"{base}_int8",
            domain="com.microsoft",
        )
        qnode.attribute.extend(node.attribute)
        new_nodes.append(qnode)
        n_replaced += 1
    if n_replaced != len(cands):
        raise UnsupportedModelError(
            f"export_qlstm_onnx: found {n_replaced} of {len(cands)} quantised LSTM layers in the export; the "
            "exporter did not emit one ONNX LSTM node per layer (is the LSTM called more than once?)"
        )
    del graph.node[:]
    graph.node.extend(new_nodes)
    still_used = {i for n in graph.node for i in n.input}
    keep = [i for i in graph.initializer if i.name in still_used]
    del graph.initializer[:]
    graph.initializer.extend(keep)
    if not any(o.domain == "com.microsoft" for o in proto.opset_import):
        proto.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, proto.SerializeToString())
    return path
