"""Peer wrappers: ONNX Runtime's quantize_static and NNCF on the same FP32 model and calibration data."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from torchslim.bench.peers import activations_to_uint8, fold_batchnorm_eager, ort_quantize_static
from torchslim.export.onnx import export_onnx


class _SmallCNN(nn.Module):
    # not an nn.Sequential: NNCF registers a hook-storage child, which Sequential.forward would call
    def __init__(self) -> None:
        super().__init__()
        self.conv, self.bn, self.fc = nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.Linear(16 * 8 * 8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.bn(self.conv(x))).flatten(1))


def _small_cnn() -> nn.Module:
    torch.manual_seed(0)
    return _SmallCNN().eval()


def _run(path, x: torch.Tensor) -> torch.Tensor:
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return torch.from_numpy(sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0])


def test_ort_quantize_static_produces_a_qdq_model_close_to_fp32(tmp_path):
    import onnx

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(16 * 8 * 8, 4)).eval()
    x = torch.randn(64, 1, 8, 8)
    fp32 = export_onnx(model, x[:2], tmp_path / "fp32.onnx")
    # reduce_range: 7-bit weights, so the U8S8 kernels cannot saturate on CPUs without VNNI
    q = ort_quantize_static(fp32, tmp_path / "int8.onnx", x, batch=16, reduce_range=True)
    ops = {n.op_type for n in onnx.load(str(q)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    out = _run(q, x)
    with torch.no_grad():
        ref = model(x)
    # metric: cosine similarity of logits, int8 vs FP32; tolerance: >= 0.99 for min-max U8S8
    cos = torch.nn.functional.cosine_similarity(out.flatten(), ref.flatten(), dim=0)
    assert cos >= 0.99


@pytest.mark.parametrize("method", ["entropy", "percentile"])
def test_ort_quantize_static_other_calibrators_run_and_stay_close(tmp_path, method):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 8 * 8, 4)).eval()
    x = torch.randn(32, 1, 8, 8)
    fp32 = export_onnx(model, x[:2], tmp_path / "fp32.onnx")
    q = ort_quantize_static(fp32, tmp_path / f"{method}.onnx", x, batch=16, reduce_range=True, calibrate_method=method)
    with torch.no_grad():
        ref = model(x)
    # metric: logit cosine vs FP32; tolerance >= 0.98 (entropy/percentile clip outliers, so a bit looser)
    assert torch.nn.functional.cosine_similarity(_run(q, x).flatten(), ref.flatten(), dim=0) >= 0.98


def test_ort_quantize_static_rejects_unknown_method_and_empty_calibration(tmp_path):
    with pytest.raises(ValueError, match="calibrate_method"):
        ort_quantize_static(tmp_path / "x.onnx", tmp_path / "y.onnx", torch.randn(4, 1), calibrate_method="kl")
    with pytest.raises(ValueError, match="empty"):
        ort_quantize_static(tmp_path / "x.onnx", tmp_path / "y.onnx", torch.randn(0, 1))


def test_fold_batchnorm_eager_matches_the_unfolded_model():
    model = _small_cnn()
    with torch.no_grad():  # non-trivial BN statistics
        model.bn.running_mean.uniform_(-1, 1)
        model.bn.running_var.uniform_(0.5, 2)
        model.bn.weight.uniform_(0.5, 1.5)
    folded = fold_batchnorm_eager(model)
    assert isinstance(folded.bn, nn.Identity) and isinstance(model.bn, nn.BatchNorm2d)  # original untouched
    x = torch.randn(8, 1, 8, 8)
    with torch.no_grad():
        # metric: max abs diff of logits; tolerance 1e-5 (float32 rounding of the folded weights)
        assert torch.allclose(folded(x), model(x), atol=1e-5)


def _int8_activation_qdq_model(path, scale: float = 0.05, zp: int = -3):
    """x -> QuantizeLinear(int8) -> DequantizeLinear -> Relu, activation zero point int8."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    inits = [
        numpy_helper.from_array(np.array(scale, dtype=np.float32), "s"),
        numpy_helper.from_array(np.array(zp, dtype=np.int8), "zp"),
    ]
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "s", "zp"], ["xq"]),
        helper.make_node("DequantizeLinear", ["xq", "s", "zp"], ["xd"]),
        helper.make_node("Relu", ["xd"], ["y"]),
    ]
    g = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 5])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 5])],
        inits,
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(m, str(path))
    return path


def test_activations_to_uint8_is_exact_and_changes_the_zero_point_type(tmp_path):
    import onnx
    from onnx import numpy_helper

    src = _int8_activation_qdq_model(tmp_path / "s8.onnx")
    dst, n = activations_to_uint8(src, tmp_path / "u8.onnx")
    assert n == 1
    zps = [numpy_helper.to_array(i) for i in onnx.load(str(dst)).graph.initializer if i.name.endswith("_u8")]
    assert len(zps) == 1 and zps[0].dtype == np.uint8 and int(zps[0]) == -3 + 128
    # include values that saturate the int8 range on both sides (|x| > 127 * 0.05)
    x = torch.linspace(-8, 8, 50).reshape(10, 5)
    # metric: max abs diff int8-QDQ vs uint8-QDQ outputs; tolerance 0 (same grid, same clamp)
    assert torch.equal(_run(src, x), _run(dst, x))


def test_nncf_quantize_exports_an_ort_model_matching_its_simulation(tmp_path):
    pytest.importorskip("nncf")
    from torchslim.bench.peers import nncf_export_onnx, nncf_quantize

    model = _small_cnn()
    calib = torch.randn(64, 1, 8, 8)
    q = nncf_quantize(model, calib, batch=32)
    path = nncf_export_onnx(q, calib[:2], tmp_path / "nncf.onnx")
    x = torch.randn(32, 1, 8, 8)
    out = _run(path, x)
    with torch.no_grad():
        sim, ref = q(x), model(x)
    cos = torch.nn.functional.cosine_similarity
    # metric: logit cosine; tolerances: ORT vs NNCF's simulation >= 0.999, vs FP32 >= 0.99 (8-bit)
    assert cos(out.flatten(), sim.flatten(), dim=0) >= 0.999
    assert cos(out.flatten(), ref.flatten(), dim=0) >= 0.99
    u8, _ = activations_to_uint8(path, tmp_path / "nncf_u8.onnx")
    # metric: max abs diff; tolerance 1e-6 (the uint8 rewrite is exact)
    assert torch.allclose(_run(u8, x), out, atol=1e-6)


class _TinyResNet(nn.Module):
    """conv-BN-ReLU stem, one residual block (add), global pool, linear head: a coupled channel group."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU())
        self.c1, self.b1 = nn.Conv2d(16, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16)
        self.c2, self.b2 = nn.Conv2d(16, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16)
        self.fc = nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.stem(x)
        h = torch.relu(h + self.b2(self.c2(torch.relu(self.b1(self.c1(h))))))
        return self.fc(h.mean((2, 3)))


def test_tp_prune_hits_the_macs_target_and_matches_a_hand_count(tmp_path):
    pytest.importorskip("torch_pruning")
    from torchslim.bench.peers import tp_prune
    from torchslim.core.cost import profile

    torch.manual_seed(0)
    model = _TinyResNet().eval()
    x = torch.randn(1, 1, 8, 8)
    r = tp_prune(model, x, macs_target=0.5, tol=0.05)
    assert r.ignored == ["fc"] and r.widths["fc"] == 4  # the output layer is never pruned
    # residual coupling: stem and c2 (added together) keep the same width
    assert r.widths["stem.0"] == r.widths["c2"]
    a, b = r.widths["stem.0"], r.widths["c1"]
    # metric: MACs; reference: hand count on 8x8 maps (3x3 convs, no bias) + fc; tolerance: exact
    hand = 64 * 9 * (1 * a + a * b + b * a) + a * 4
    assert r.macs_after == profile(model, (x,)).macs == hand
    assert 0.5 - 0.05 <= r.macs_ratio <= 0.5  # within the budget and within tol of it
    assert model(torch.randn(2, 1, 8, 8)).shape == (2, 4)
    # the pruned model exports and runs in ONNX Runtime with the same logits (max abs diff <= 1e-4)
    xx = torch.randn(3, 1, 8, 8)
    with torch.no_grad():
        ref = model(xx)
    assert torch.allclose(_run(export_onnx(model, xx, tmp_path / "tp.onnx"), xx), ref, atol=1e-4)


def test_tp_prune_round_to_gives_multiples_and_rejects_bad_input():
    pytest.importorskip("torch_pruning")
    from torchslim.bench.peers import tp_prune

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
                          nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(32, 4)).eval()
    x = torch.randn(1, 1, 8, 8)
    r = tp_prune(model, x, ratio=0.3, round_to=8)
    # Torch-Pruning rounds kept channels DOWN: 32 * 0.7 = 22.4 -> 22 -> 16
    assert r.widths["0"] == 16 and r.widths["3"] == 16 and r.widths["7"] == 4
    with pytest.raises(ValueError, match="exactly one"):
        tp_prune(model, x)
    with pytest.raises(ValueError, match="ratio"):
        tp_prune(model, x, ratio=1.0)
    with pytest.raises(ValueError, match="not a module path"):
        tp_prune(model, x, ratio=0.2, ignored_layers=["nope"])
