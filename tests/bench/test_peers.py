"""Peer wrappers: ONNX Runtime's quantize_static on the same FP32 ONNX and calibration data."""

from __future__ import annotations

import torch
from torch import nn

from torchslim.bench.peers import ort_quantize_static
from torchslim.export.onnx import export_onnx


def test_ort_quantize_static_produces_a_qdq_model_close_to_fp32(tmp_path):
    import onnx
    import onnxruntime as ort

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(16 * 8 * 8, 4)).eval()
    x = torch.randn(64, 1, 8, 8)
    fp32 = export_onnx(model, x[:2], tmp_path / "fp32.onnx")
    # reduce_range: 7-bit weights, so the U8S8 kernels cannot saturate on CPUs without VNNI
    q = ort_quantize_static(fp32, tmp_path / "int8.onnx", x, batch=16, reduce_range=True)
    ops = {n.op_type for n in onnx.load(str(q)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    sess = ort.InferenceSession(str(q), providers=["CPUExecutionProvider"])
    out = torch.from_numpy(sess.run(None, {"input": x.numpy()})[0])
    with torch.no_grad():
        ref = model(x)
    # metric: cosine similarity of logits, int8 vs FP32; tolerance: >= 0.99 for min-max U8S8
    cos = torch.nn.functional.cosine_similarity(out.flatten(), ref.flatten(), dim=0)
    assert cos >= 0.99
