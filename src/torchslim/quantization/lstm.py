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

from typing import Annotated, Any, ClassVar

import torch
from pydantic import Field
from torch import Tensor, nn

from torchslim.core.config import Config
from torchslim.core.errors import UnsupportedModelError
from torchslim.quantization.primitives import choose_qparams, dequantize, qrange, quantize

__all__ = ["QLSTMConfig", "QuantizedLSTM", "quantize_lstm_", "quantize_rows"]


class QLSTMConfig(Config):
    """Configuration of weight-only LSTM quantisation.

    Attributes:
        bits: integer width of the weights, 2..8 (stored as int8 whatever the width).
        fuse_bias: store ``b_ih + b_hh`` once (float32) instead of both biases; changes results only by
            float rounding of the sum (< 1e-6) and saves ``4 * 4 * hidden_size`` bytes per layer/direction.
    """

    type_name: ClassVar[str] = "qlstm"

    bits: Annotated[int, Field(ge=2, le=8)] = 8
    fuse_bias: bool = True


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

    def __init__(self, template: nn.LSTM, bits: int, fuse_bias: bool) -> None:
        super().__init__()
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
        q = cls(lstm, config.bits, config.fuse_bias)
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

    def forward(self, input: Any, hx: tuple[Tensor, Tensor] | None = None) -> Any:  # noqa: A002
        """Same signature and outputs as ``nn.LSTM.forward``."""
        from torch.func import functional_call

        args: tuple[Any, ...] = (input,) if hx is None else (input, hx)
        return functional_call(self._template[0], self.dequantized_weights(), args)

    def extra_repr(self) -> str:
        s = f"{self.input_size}, {self.hidden_size}, num_layers={self.num_layers}, bits={self.bits}"
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
