"""Quantisation: reference primitives, observers, BatchNorm folding and static int8 PTQ with QDQ export.

Importing this package is light: ONNX / ONNX Runtime are imported only when exporting or checking parity.

Example::

    from torchslim.quantization import StaticPTQ, quantize_static
    q = quantize_static(model, StaticPTQ(), calib_images, progress=False)
    q.export_onnx("model_int8.onnx", calib_images[:1])
"""

from __future__ import annotations

from torchslim.quantization.api import quantize_
from torchslim.quantization.dynamic import DynamicPTQ, layer_sensitivity, quantize_dynamic
from torchslim.quantization.fold import fold_batchnorm
from torchslim.quantization.lstm import QLSTMConfig, quantize_lstm_
from torchslim.quantization.observers import MinMaxObserver, MovingAverageMinMaxObserver, register_calibrator
from torchslim.quantization.primitives import choose_qparams, dequantize, fake_quantize, qrange, quantize
from torchslim.quantization.smooth import SmoothQuant, smooth_quant
from torchslim.quantization.static import Phase, QuantizedModel, StaticPTQ, quantize_static, sqnr_db

__all__ = [
    "DynamicPTQ",
    "QLSTMConfig",
    "quantize_dynamic",
    "quantize_",
    "quantize_lstm_",
    "layer_sensitivity",
    "SmoothQuant",
    "smooth_quant",
    "MinMaxObserver",
    "MovingAverageMinMaxObserver",
    "Phase",
    "QuantizedModel",
    "StaticPTQ",
    "choose_qparams",
    "dequantize",
    "fake_quantize",
    "fold_batchnorm",
    "qrange",
    "quantize",
    "quantize_static",
    "register_calibrator",
    "sqnr_db",
]
