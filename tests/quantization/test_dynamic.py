"""Dynamic int8 PTQ of Linear layers: mechanics, fidelity on a tiny BERT, ORT parity and int8 kernels."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from torchslim.core.errors import ConfigError
from torchslim.quantization.dynamic import DynamicPTQ, DynamicQuantLinear, quantize_dynamic
from torchslim.quantization.primitives import choose_qparams, dequantize, quantize
from torchslim.quantization.static import sqnr_db

torch.set_num_threads(1)


def _tiny_bert() -> nn.Module:
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = transformers.BertConfig(
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=128,
        vocab_size=100,
        max_position_embeddings=64,
        attn_implementation="eager",
    )
    return transformers.BertModel(cfg).eval()


def _inputs() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 100, (4, 24), generator=g)
    mask = torch.ones_like(ids)
    mask[2:, 18:] = 0  # padded rows
    return ids, mask


def _cos(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(F.cosine_similarity(a.flatten().double(), b.flatten().double(), dim=0))


# ------------------------------------------------------------------------------------------ mechanics
@pytest.mark.parametrize("weight_dtype", ["int8", "uint8"])
def test_per_token_linear_matches_reference_primitives(weight_dtype: str) -> None:
    """Metric: max abs diff vs a reference built from primitives.py; tolerance 1e-4 (float32 matmul order)."""
    torch.manual_seed(0)
    lin = nn.Linear(48, 20)
    x = torch.randn(3, 7, 48) * 2
    layer = DynamicQuantLinear(lin, per_token=True, per_channel=True, weight_dtype=weight_dtype)
    # reference: per-row symmetric int8 weights, per-token asymmetric uint8 activations
    w = lin.weight.detach()
    ws, wz = choose_qparams(w.amin(1), w.amax(1), bits=8, symmetric=True, signed=True, narrow_range=True)
    wq = dequantize(quantize(w, ws, wz, -127, 127, axis=0), ws, wz, axis=0)
    rows = x.reshape(-1, 48)
    xs, xz = choose_qparams(rows.amin(1), rows.amax(1), bits=8)
    xq = dequantize(quantize(rows, xs, xz, 0, 255, axis=0), xs, xz, axis=0).reshape_as(x)
    ref = F.linear(xq, wq, lin.bias.detach())
    with torch.no_grad():
        out = layer(x)
    assert torch.allclose(layer.dequantized_weight(), wq, atol=1e-6)
    assert (out - ref).abs().max() < 1e-4


def test_weight_storage_and_colsum() -> None:
    """Exact: uint8 storage = int8 + 128 with zero point 128; colsum = sum over K of the signed ints."""
    torch.manual_seed(0)
    lin = nn.Linear(16, 8)
    a = DynamicQuantLinear(lin, weight_dtype="int8")
    b = DynamicQuantLinear(lin, weight_dtype="uint8")
    assert a.w_t.dtype == torch.int8 and b.w_t.dtype == torch.uint8 and int(b.w_zp) == 128
    assert torch.equal(a.w_t.to(torch.int32) + 128, b.w_t.to(torch.int32))
    assert int(a.w_t.abs().max()) == 127  # full range per row (symmetric, narrow)
    assert torch.equal(a.colsum, a.w_t.to(torch.float32).sum(0))
    seven = DynamicQuantLinear(lin, weight_dtype="int8", weight_bits=7)
    assert int(seven.w_t.abs().max()) == 63
    x = torch.randn(5, 16)
    with torch.no_grad():
        assert torch.equal(a(x), b(x))  # the simulation does not depend on the storage


def test_per_channel_and_per_token_beat_per_tensor_on_outliers() -> None:
    """Qualitative claim at small scale: per-row weights / per-token activations keep SQNR (dB) far higher."""
    torch.manual_seed(0)
    lin = nn.Linear(64, 32)
    with torch.no_grad():
        lin.weight[:4] *= 50.0  # a few output rows with a much larger range
    x = torch.randn(2, 16, 64)
    x[:, 0] *= 40.0  # an outlier token (like [CLS] / punctuation tokens in BERT)
    with torch.no_grad():
        ref = lin(x)
        pc_pt = DynamicQuantLinear(lin, per_token=True, per_channel=True)(x)
        pc_tensor = DynamicQuantLinear(lin, per_token=False, per_channel=True)(x)
        tensor_pt = DynamicQuantLinear(lin, per_token=True, per_channel=False)(x)
    # measured on the non-outlier tokens/rows, where coarse granularity hurts
    s_best = sqnr_db(ref[:, 1:, 4:], pc_pt[:, 1:, 4:])
    assert s_best > sqnr_db(ref[:, 1:, 4:], pc_tensor[:, 1:, 4:]) + 10.0
    assert s_best > sqnr_db(ref[:, 1:, 4:], tensor_pt[:, 1:, 4:]) + 10.0


# ------------------------------------------------------------------------------------- tiny BERT + ORT
@pytest.mark.parametrize("activations", ["per_token", "per_tensor"])
def test_tiny_bert_fidelity(activations: str) -> None:
    """Metric: cosine of last_hidden_state vs FP32; tolerance >= 0.99."""
    bert = _tiny_bert()
    ids, mask = _inputs()
    q = quantize_dynamic(bert, DynamicPTQ(activations=activations))  # type: ignore[arg-type]
    assert len(q.quantized) == 2 * 6 + 1  # q, k, v, attn-out, ffn-in, ffn-out per layer + pooler
    with torch.no_grad():
        ref = bert(ids, mask).last_hidden_state
        out = q(ids, mask).last_hidden_state
    assert _cos(out, ref) >= 0.99
    assert all(not isinstance(m, nn.Linear) for m in q.sim.modules())
    assert any(isinstance(m, nn.Linear) for m in bert.modules())  # input model untouched


@pytest.mark.parametrize(
    ("activations", "kernels"),
    [("per_token", {"MatMulInteger"}), ("per_tensor", {"DynamicQuantizeMatMul", "MatMulIntegerToFloat"})],
)
def test_tiny_bert_ort_parity_and_int8_kernels(tmp_path: Path, activations: str, kernels: set[str]) -> None:
    """Metric: sim vs ORT cosine >= 0.99999 and max abs diff <= 1e-3 (uint8 weight storage: exact kernels).

    The optimised ORT graph must run every Linear of the encoder with integer kernels (12; the pooler does
    not feed the exported first output, last_hidden_state, so the exporter drops it).
    """
    pytest.importorskip("onnxruntime")
    from torchslim.quantization.onnx_qdq import ort_optimized_op_counts

    bert = _tiny_bert()
    ids, mask = _inputs()
    q = quantize_dynamic(bert, DynamicPTQ(activations=activations, weight_dtype="uint8"))  # type: ignore[arg-type]
    path = q.export_onnx(
        tmp_path / "bert_int8.onnx", (ids, mask), input_names=["input_ids", "attention_mask"]
    )
    # a different batch and sequence length than the export example: axes are dynamic
    ids2, mask2 = ids[:3, :20], mask[:3, :20]
    par = q.parity(path, (ids2, mask2))
    assert par.cosine >= 0.99999
    assert par.max_abs_diff <= 1e-3
    ops = ort_optimized_op_counts(path)
    assert sum(ops.get(k, 0) for k in kernels) == 12, ops
    assert ops.get("Gemm", 0) == 0  # no float Linear left


def test_exclude_and_filter_fn() -> None:
    bert = _tiny_bert()
    q = quantize_dynamic(
        bert, DynamicPTQ(exclude=["pooler.*"]), filter_fn=lambda n, m: "attention" in n or "pooler" in n
    )
    assert "pooler.dense" in q.skipped
    assert all("attention" in n for n in q.quantized) and len(q.quantized) == 8
    assert isinstance(q.sim.get_submodule("encoder.layer.0.intermediate.dense"), nn.Linear)


def test_errors_are_clear() -> None:
    with pytest.raises(ConfigError, match="no nn.Linear"):
        quantize_dynamic(nn.Sequential(nn.Conv2d(1, 2, 3)), DynamicPTQ())
    with pytest.raises(ConfigError, match="unknown field"):
        DynamicPTQ.from_dict({"type": "dynamic_ptq", "bits": 4})
    with pytest.raises(ConfigError):
        DynamicPTQ(activations="per_channel")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="DynamicPTQ"):
        quantize_dynamic(nn.Linear(2, 2), object())  # type: ignore[arg-type]


def test_config_round_trip() -> None:
    cfg = DynamicPTQ(activations="per_tensor", weight_dtype="int8", exclude=["pooler.*"])
    again = DynamicPTQ.from_dict(cfg.to_dict())
    assert again == cfg
    assert cfg.resolved_weight_dtype() == "int8"


# ------------------------------------------------------------------------------------ SmoothQuant inputs
def test_smoothed_tiny_bert_ort_parity_fused_kernels_and_fidelity(tmp_path: Path) -> None:
    """Metrics: sim vs ORT cosine >= 0.99999, max abs diff <= 1e-3 (smoothing's 1/s runs as a Mul before
    DynamicQuantizeLinear; still 12 fused integer kernels); with 20x outlier LayerNorm channels, per-tensor
    cosine vs FP32 after smoothing exceeds the unsmoothed one (reference: the same quantiser unsmoothed)."""
    pytest.importorskip("onnxruntime")
    from torchslim.quantization.onnx_qdq import ort_optimized_op_counts
    from torchslim.quantization.smooth import SmoothQuant, bert_fold_map, smooth_quant

    bert = _tiny_bert()
    with torch.no_grad():
        for m in bert.modules():
            if isinstance(m, nn.LayerNorm):
                m.weight[[3, 17, 40]] *= 20.0
    ids, mask = _inputs()
    sm = smooth_quant(bert, [(ids, mask)], SmoothQuant(alpha=0.5, fold_into=bert_fold_map(bert)))
    cfg = DynamicPTQ(activations="per_tensor", weight_dtype="uint8")
    q = quantize_dynamic(sm.model, cfg)
    assert all(m.input_scale is not None for n, m in q.sim.named_modules() if n.endswith("self.query"))
    path = q.export_onnx(tmp_path / "smooth.onnx", (ids, mask), input_names=["input_ids", "attention_mask"])
    par = q.parity(path, (ids[:3, :20], mask[:3, :20]))
    assert par.cosine >= 0.99999 and par.max_abs_diff <= 1e-3
    ops = ort_optimized_op_counts(path)
    assert ops.get("DynamicQuantizeMatMul", 0) + ops.get("MatMulIntegerToFloat", 0) == 12, ops
    plain = quantize_dynamic(bert, cfg)
    with torch.no_grad():
        ref = bert(ids, mask).last_hidden_state
        c_smooth = _cos(q(ids, mask).last_hidden_state, ref)
        c_plain = _cos(plain(ids, mask).last_hidden_state, ref)
    assert c_smooth > c_plain


def test_layer_sensitivity_ranks_outlier_input_first() -> None:
    """Metric: SQNR (dB) per Linear equals sqnr_db of that layer's DynamicQuantLinear vs float on its real
    input (tolerance 1e-3 dB); the Linear fed by outlier channels is ranked most sensitive."""
    from torchslim.quantization.dynamic import layer_sensitivity

    torch.manual_seed(0)

    class Two(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Linear(16, 16)
            self.b = nn.Linear(16, 8)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = self.a(x)
            h = h * torch.cat([torch.full((1,), 50.0), torch.ones(15)])  # one outlier channel into b
            return self.b(h)

    model = Two().eval()
    x = torch.randn(4, 16)
    cfg = DynamicPTQ(activations="per_tensor")
    sens = layer_sensitivity(model, [x], cfg)
    assert list(sens) == ["b", "a"]
    with torch.no_grad():
        h = model.a(x) * torch.cat([torch.full((1,), 50.0), torch.ones(15)])
        ref_b = sqnr_db(model.b(h), DynamicQuantLinear(model.b, per_token=False, weight_dtype="uint8")(h))
    assert abs(sens["b"] - float(ref_b)) < 1e-3
    with pytest.raises(ConfigError, match="empty"):
        layer_sensitivity(model, [], cfg)


def test_full_range_layers_keep_8bit_weights() -> None:
    """Exact: with reduce_range, layers matching full_range keep [-127, 127] weights (uint8 storage on
    CPUs without VNNI, so ORT stays exact), the others get [-63, 63]."""
    from torchslim.quantization.static import cpu_lacks_vnni

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 4))
    q = quantize_dynamic(model, DynamicPTQ(weight_dtype="int8", reduce_range=True, full_range=["0"]))
    first: Any = q.sim.get_submodule("0")
    last: Any = q.sim.get_submodule("2")
    assert first.weight_bits == 8 and last.weight_bits == 7
    assert first.weight_dtype == ("uint8" if cpu_lacks_vnni() else "int8") and last.weight_dtype == "int8"
    signed = first.w_t.to(torch.int32) - int(first.w_zp)
    assert int(signed.abs().max()) == 127 and int(last.w_t.abs().max()) == 63
