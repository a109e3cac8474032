"""ONNX export: one self-contained file, dynamic batch, names, atomic write, fake-quant -> Q/DQ."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from torchslim.export.onnx import ExportError, export_onnx
from torchslim.export.parity import ort_session

torch.set_num_threads(1)


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 6 * 6, 4)
    )


def test_legacy_export_single_file_named_dynamic_batch(tmp_path):
    net = _net()
    p = export_onnx(net, torch.randn(2, 1, 6, 6), tmp_path / "m.onnx")
    assert p == tmp_path / "m.onnx"
    assert sorted(f.name for f in tmp_path.iterdir()) == ["m.onnx"]  # no external data, no temp left
    proto = onnx.load(str(p))
    assert [i.name for i in proto.graph.input] == ["input"]
    assert [o.name for o in proto.graph.output] == ["output"]
    assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    sess = ort_session(p, threads=1)
    x = torch.randn(5, 1, 6, 6)  # a batch size different from the example's
    got = sess.run(None, {"input": x.numpy()})[0]
    with torch.inference_mode():
        ref = net(x).numpy()
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-5)  # metric: allclose


def test_fake_quantize_exports_as_qdq(tmp_path):
    class FQ(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = torch.fake_quantize_per_tensor_affine(x, 0.05, 128, 0, 255)
            return self.fc(x)

    p = export_onnx(FQ(), torch.randn(2, 4), tmp_path / "fq.onnx")
    ops = {n.op_type for n in onnx.load(str(p)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops


def test_failed_export_keeps_old_file_and_names_cause(tmp_path):
    class Bad(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x @ torch.ones(7, 2)  # wrong shape for the example input

    target = tmp_path / "m.onnx"
    target.write_bytes(b"old")
    with pytest.raises(ExportError, match="legacy exporter"):
        export_onnx(Bad(), torch.randn(2, 4), target)
    assert target.read_bytes() == b"old"
    assert sorted(f.name for f in tmp_path.iterdir()) == ["m.onnx"]
    with pytest.raises(ExportError, match="unknown"):
        export_onnx(_net(), torch.randn(1, 1, 6, 6), target, exporter="tensorrt")


@pytest.mark.slow
def test_dynamo_export_is_one_file_and_matches(tmp_path):
    net = _net()
    p = export_onnx(net, torch.randn(2, 1, 6, 6), tmp_path / "d.onnx", exporter="dynamo")
    assert sorted(f.name for f in tmp_path.iterdir()) == ["d.onnx"]
    x = torch.randn(3, 1, 6, 6)
    got = ort_session(p, threads=1).run(None, {"input": x.numpy()})[0]
    with torch.inference_mode():
        np.testing.assert_allclose(got, net(x).numpy(), rtol=1e-4, atol=1e-5)  # metric: allclose
