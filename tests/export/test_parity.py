"""check_parity compares PyTorch and ONNX Runtime outputs and detects a mismatch."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from torchslim.export.onnx import export_onnx
from torchslim.export.parity import check_parity

torch.set_num_threads(1)


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 10)).eval()


def test_parity_of_faithful_export(tmp_path):
    net = _net()
    p = export_onnx(net, torch.randn(1, 1, 4, 4), tmp_path / "m.onnx")
    x = torch.randn(70, 1, 4, 4)
    r = check_parity(net, p, x, threads=1, batch_size=32)  # 3 batches, last one partial
    assert r.n == 70
    # metric: max abs diff <= 1e-5, cosine >= 1 - 1e-9, top-1 agreement exact
    assert r.max_abs_diff <= 1e-5 and r.mean_abs_diff <= r.max_abs_diff
    assert r.cosine >= 1 - 1e-9
    assert r.top1_agreement == 1.0


def test_parity_detects_a_different_model(tmp_path):
    net = _net()
    p = export_onnx(net, torch.randn(1, 1, 4, 4), tmp_path / "m.onnx")
    other = _net()
    with torch.no_grad():
        other[3].bias += 1.0  # shifts every logit by 1
    x = torch.randn(20, 1, 4, 4)
    r = check_parity(other, p, [x[:10], x[10:]])  # iterable of batches
    assert r.n == 20
    assert r.max_abs_diff == pytest.approx(1.0, abs=1e-4)  # metric: the injected offset
    assert r.mean_abs_diff == pytest.approx(1.0, abs=1e-4)


def test_parity_shape_mismatch_is_explained(tmp_path):
    p = export_onnx(_net(), torch.randn(1, 1, 4, 4), tmp_path / "m.onnx")
    with pytest.raises(ValueError, match="not exported from this model"):
        check_parity(lambda x: torch.zeros(x.shape[0], 3), p, torch.randn(4, 1, 4, 4))
