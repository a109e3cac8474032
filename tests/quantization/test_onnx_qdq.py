"""finalize_qdq: int8 weights / int32 biases folded exactly; ORT runs the fused int8 conv."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from torch import nn

from torchslim.quantization import StaticPTQ, quantize_static
from torchslim.quantization.static import WeightQuantWrapper

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):  # type: ignore[no-untyped-def]
    torch.manual_seed(0)
    torch.set_num_threads(1)
    model = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1)).eval()
    x = torch.randn(32, 1, 8, 8)
    q = quantize_static(model, StaticPTQ(num_calibration=32), x, progress=False)
    path = q.export_onnx(tmp_path_factory.mktemp("qdq") / "tiny.onnx", x[:1])
    return q, path, x


def test_int8_weights_equal_simulated_integers(tiny):  # type: ignore[no-untyped-def]
    """The int8 initializers equal the wrapper's integer weights (exact) and dequantise with its scales."""
    from onnx import numpy_helper

    q, path, _ = tiny
    m = onnx.load(str(path))
    inits = {t.name: numpy_helper.to_array(t) for t in m.graph.initializer}
    for name in ("0", "2"):
        wrapper = q.sim.get_submodule(name)
        assert isinstance(wrapper, WeightQuantWrapper)
        stored = inits[f"{name}.module.weight_quantized"]
        assert stored.dtype == np.int8
        np.testing.assert_array_equal(stored.astype(np.int32), wrapper.int_weight().numpy())
        bias = inits[f"{name}.module.bias_quantized"]
        assert bias.dtype == np.int32


def test_ort_optimised_graph_has_qlinearconv(tiny):  # type: ignore[no-untyped-def]
    """ORT turns both convs into QLinearConv (op-type counts of the optimised graph)."""
    from torchslim.quantization.onnx_qdq import ort_optimized_op_counts

    _, path, _ = tiny
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ops = ort_optimized_op_counts(path)
    assert ops.get("QLinearConv", 0) == 2, ops
    assert "Conv" not in ops and "Relu" not in ops, ops


def test_parity_tiny(tiny):  # type: ignore[no-untyped-def]
    """Sim vs ORT: cosine >= 0.999 (the last conv's output is float, as a model output)."""
    q, path, x = tiny
    p = q.parity(path, x)
    assert p.cosine >= 0.999, p
