"""quantize_: one entry point; include / exclude / filter_fn select the quantized layers."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from torchslim.core.errors import ConfigError
from torchslim.quantization import DynamicPTQ, QLSTMConfig, StaticPTQ, quantize_
from torchslim.quantization.dynamic import DynamicQuantLinear


def _cnn() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(8, 4)).eval()


def test_static_include_exclude_filter_leave_the_rest_in_float() -> None:
    """Static PTQ through quantize_: excluded / not-included / filtered layers are reported as excluded and
    their outputs match the float model's (metric: the excluded list, exact)."""
    x = torch.randn(64, 1, 8, 8)
    q = quantize_(_cnn(), StaticPTQ(num_calibration=64), x, exclude=["7"], progress=False)
    assert "7" in q.excluded and "0" not in q.excluded
    q = quantize_(_cnn(), StaticPTQ(num_calibration=64), x, include=["3"], progress=False)
    assert set(q.excluded) >= {"0", "7"} and "3" not in q.excluded
    q = quantize_(_cnn(), StaticPTQ(num_calibration=64), x, filter_fn=lambda p, m: not isinstance(m, nn.Linear),
                  progress=False)
    assert "7" in q.excluded
    # the quantized model still approximates the float one (metric: cosine of logits, tolerance 0.99)
    ref = _cnn()(x)
    cos = torch.nn.functional.cosine_similarity(q(x).flatten(), ref.flatten(), dim=0)
    assert float(cos) > 0.99


def test_dynamic_and_bad_input() -> None:
    m = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    q = quantize_(m, DynamicPTQ(), filter_fn=lambda p, mod: p != "0")
    assert q.quantized == ["2"] and q.skipped == ["0"]
    assert isinstance(quantize_(m, DynamicPTQ(), include=["0"]).sim[0], DynamicQuantLinear)
    with pytest.raises(ConfigError, match="matches no module"):
        quantize_(m, DynamicPTQ(), exclude=["nope"])
    with pytest.raises(ConfigError, match="no engine"):
        quantize_(m, object())  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="not supported"):
        quantize_(nn.Sequential(nn.LSTM(4, 4)), QLSTMConfig(), exclude=["0"])
