"""Forward-hook taps: captured tensors equal the manually computed intermediates; the model is unchanged."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from torchslim.core.errors import ConfigError
from torchslim.distillation.taps import Taps, resolve_paths


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Sequential(nn.Linear(4, 8), nn.ReLU()), nn.Sequential(nn.Linear(8, 6), nn.Tanh()), nn.Linear(6, 2)
    )


def test_outputs_and_inputs_equal_manual_intermediates() -> None:
    m = _model()
    x = torch.randn(3, 4)
    h1 = m[0](x)
    h2 = m[1](h1)
    with Taps(m, ["0", "1.0", "2"]) as out, Taps(m, ["2"], mode="input") as inp:
        y = m(x)
    assert torch.equal(out["0"], h1) and torch.equal(out["2"], y)
    assert torch.equal(out["1.0"], m[1][0](h1))
    assert torch.equal(inp["2"], h2)


def test_gradients_flow_and_hooks_are_removed() -> None:
    m = _model()
    with Taps(m, ["0"]) as taps:
        m(torch.randn(3, 4))
        taps["0"].sum().backward()
    assert m[0][0].weight.grad is not None and m[0][0].weight.grad.abs().sum() > 0
    assert all(len(mod._forward_hooks) == 0 for mod in m.modules())


def test_missing_path_names_both_models_and_close_matches() -> None:
    m = _model()
    with pytest.raises(ConfigError) as err:
        Taps(m, ["1.1", "1.3"], role="teacher", other="student (TinyNet)")
    msg = str(err.value)
    assert "teacher (Sequential)" in msg and "student (TinyNet)" in msg and "'1.3'" in msg and "1.1" in msg
    with pytest.raises(ConfigError, match="top-level modules"):
        resolve_paths(m, ["zzzzzzzz"], "student")


def test_reading_a_module_that_did_not_run_is_an_error() -> None:
    m = _model()
    with Taps(m, ["2"]) as taps:
        with pytest.raises(ConfigError, match="did not run"):
            taps["2"]
        with pytest.raises(ConfigError, match="not tapped"):
            taps["0"]
