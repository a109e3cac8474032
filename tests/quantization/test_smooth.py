"""SmoothQuant smoothing: scale formula, exact float function, folds, flatter activations, better int8."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn

from torchslim.core.errors import ConfigError
from torchslim.quantization.dynamic import DynamicQuantLinear
from torchslim.quantization.smooth import (
    SmoothLinear,
    SmoothQuant,
    bert_fold_map,
    collect_input_absmax,
    smooth_quant,
    smoothing_scales,
)
from torchslim.quantization.static import sqnr_db

torch.set_num_threads(1)


def _tiny_bert_with_outliers() -> nn.Module:
    """Tiny BERT whose LayerNorm outputs have a few 20x outlier channels (as real BERTs do)."""
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
    bert = transformers.BertModel(cfg).eval()
    with torch.no_grad():
        for m in bert.modules():
            if isinstance(m, nn.LayerNorm):
                m.weight[[3, 17, 40]] *= 20.0
    return bert


def _batches() -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 100, (6, 20), generator=g)
    return [(ids[:3], torch.ones_like(ids[:3])), (ids[3:], torch.ones_like(ids[3:]))]


def test_smoothing_scales_hand_computed() -> None:
    """Exact (1e-6): s = a^alpha / w^(1-alpha), w = max over the group's columns; zeros give s = 1."""
    a = torch.tensor([4.0, 1.0, 9.0, 0.0])
    w1 = torch.tensor([[1.0, -4.0, 1.0, 2.0]])
    w2 = torch.tensor([[-2.0, 1.0, 0.5, 1.0]])
    s = smoothing_scales(a, [w1, w2], 0.5)
    expected = torch.tensor([4.0**0.5 / 2.0**0.5, 1.0 / 2.0, 3.0 / 1.0, 1.0])
    assert torch.allclose(s, expected, atol=1e-6)
    s75 = smoothing_scales(a[:3], [w1[:, :3]], 0.75)
    assert torch.allclose(s75, a[:3] ** 0.75 / torch.tensor([1.0, 4.0, 1.0]) ** 0.25, atol=1e-6)
    with pytest.raises(ConfigError, match="alpha"):
        smoothing_scales(a, [w1], 1.0)


def test_tiny_bert_function_unchanged_and_activations_flatter() -> None:
    """Metrics: max abs change of last_hidden_state <= 1e-5 x max|out|; per smoothed input, the
    channel max/median ratio of the effective (quantised) LayerNorm-output activation drops >= 4x, and
    every effective activation range equals the formula
    a_j / s_j = (a_j * w_j)^(1-alpha) to 1e-4 relative."""
    bert = _tiny_bert_with_outliers()
    batches = _batches()
    res = smooth_quant(bert, batches, SmoothQuant(alpha=0.5, fold_into=bert_fold_map(bert)))
    with torch.no_grad():
        for ids, mask in batches:
            ref = bert(ids, mask).last_hidden_state
            out = res.model(ids, mask).last_hidden_state
            assert float((out - ref).abs().max()) <= 1e-5 * float(ref.abs().max())
    # folds: attention output projection into V (exact); post-LN LayerNorm folds rejected (the residual)
    assert len(res.folded) == 2 and all(v.endswith("attention.self.value") for v in res.folded.values())
    assert len(res.rejected_folds) >= 4 and all("LayerNorm" in v for v in res.rejected_folds.values())
    q = res.model.get_submodule("encoder.layer.0.attention.self.query")
    k = res.model.get_submodule("encoder.layer.0.attention.self.key")
    assert isinstance(q, SmoothLinear) and q.input_scale is k.input_scale  # Q, K, V share one 1/s
    before = collect_input_absmax(bert, batches)
    after = collect_input_absmax(res.model, batches)  # hooks see the input before SmoothLinear's 1/s
    w_before = dict(bert.named_modules())
    for head in res.explicit:
        lin: Any = res.model.get_submodule(head)
        eff = after[head] * lin.input_scale
        a = before[head]
        if head in res.rejected_folds:  # LayerNorm outputs: the injected outlier channels get flattened
            assert float(eff.max() / eff.median()) < 0.25 * float(a.max() / a.median()), head
        wmax = w_before[head].weight.abs().amax(0)  # type: ignore[union-attr]
        group = next(g for g in res.groups if g[0] == head)
        for n in group[1:]:
            wmax = torch.maximum(wmax, w_before[n].weight.abs().amax(0))  # type: ignore[union-attr]
        assert torch.allclose(eff, (a * wmax).sqrt(), rtol=1e-4, atol=1e-6)


def test_pre_ln_fold_is_free_and_explicit_elsewhere() -> None:
    """Exact function (1e-5) with the LayerNorm fold kept (its output feeds only the Linear); the Linear
    after ReLU has no foldable producer and becomes a SmoothLinear."""
    torch.manual_seed(0)
    model: Any = nn.Sequential(nn.LayerNorm(8), nn.Linear(8, 6), nn.ReLU(), nn.Linear(6, 2)).eval()
    with torch.no_grad():
        model[0].weight[2] = 30.0
    x = torch.randn(16, 8)
    res: Any = smooth_quant(model, [x], SmoothQuant(alpha=0.5))
    assert res.folded == {"1": "0"} and res.explicit == ["3"]
    assert isinstance(res.model[1], nn.Linear) and not isinstance(res.model[1], SmoothLinear)
    assert isinstance(res.model[3], SmoothLinear)
    with torch.no_grad():
        assert torch.allclose(res.model(x), model(x), atol=1e-5)
        # LayerNorm output channel 2 (the outlier) is divided by s_2 > 1 in the smoothed model
        assert float(res.model[0](x)[:, 2].abs().max()) < float(model[0](x)[:, 2].abs().max()) / 2


def test_smoothing_improves_per_tensor_int8() -> None:
    """Metric: SQNR (dB) of a per-tensor dynamic int8 Linear vs float on inputs with 3 outlier channels;
    smoothing (alpha 0.5) must gain >= 6 dB."""
    torch.manual_seed(0)
    lin = nn.Linear(64, 32)
    x = torch.randn(8, 16, 64)
    x[..., [1, 9, 30]] *= 60.0
    with torch.no_grad():
        ref = lin(x)
        plain = DynamicQuantLinear(lin, per_token=False)(x)
        res: Any = smooth_quant(nn.Sequential(lin), [x], SmoothQuant(alpha=0.5))
        smoothed = DynamicQuantLinear(res.model[0], per_token=False)(x)
    assert sqnr_db(ref, smoothed) >= sqnr_db(ref, plain) + 6.0


def test_exclude_and_errors() -> None:
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
    x = torch.randn(3, 4)
    res: Any = smooth_quant(model, [x], SmoothQuant(exclude=["2"]))
    assert "2" not in res.scales and type(res.model[2]) is nn.Linear
    with pytest.raises(ConfigError, match="at least one calibration batch"):
        smooth_quant(model, [])
    with pytest.raises(ConfigError, match="NaN"):
        smooth_quant(model, [torch.full((2, 4), float("nan"))])
    with pytest.raises(ConfigError, match="no nn.Linear"):
        smooth_quant(nn.Sequential(nn.ReLU()), [x])
    with pytest.raises(ConfigError):
        SmoothQuant(alpha=1.5)
    with pytest.raises(ConfigError, match="SmoothQuant config"):
        smooth_quant(model, [x], object())  # type: ignore[arg-type]
    assert SmoothQuant.from_dict(SmoothQuant(alpha=0.7).to_dict()).alpha == 0.7
