"""Side-by-side runs of the tools people use today, configured the way their docs recommend.

Each function takes the same inputs torchslim's own method gets (the same FP32 model, the same calibration
samples), so a benchmark compares like with like. Peers are optional: a missing one raises ImportError
naming the install command (``pip install -e ".[peers]"``).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch


def ort_quantize_static(
    fp32_onnx: str | Path,
    out: str | Path,
    calib: torch.Tensor,
    *,
    reduce_range: bool = False,
    per_channel: bool = True,
    batch: int = 64,
) -> Path:
    """ONNX Runtime's ``quantize_static``: QDQ, U8S8 (uint8 activations, int8 weights), min-max calibration.

    ``calib`` is the calibration tensor fed in batches of ``batch`` to the model's first input.
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
            calibrate_method=CalibrationMethod.MinMax,
        )
    return Path(out)
