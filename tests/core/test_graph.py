"""Tests of torchslim.core.graph.capture: strategies, shape propagation, module paths, clear errors."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from torchslim.core.errors import CaptureError
from torchslim.core.graph import capture

torch.set_num_threads(1)


class ResBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.short = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(y)) + self.short(x))


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.block = ResBlock(3, 8, 2)
        self.fc = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.block(x).mean((2, 3)))


class DataDependent(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        if x.sum() > 0:
            return x * 2
        return x


class Wrapper(nn.Module):
    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.encoder = nn.Sequential(nn.Identity(), inner)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x)


X = torch.randn(2, 3, 16, 16)


@pytest.mark.parametrize("strategy", ["auto", "export", "fx"])
def test_resnet_block_shapes_and_paths(strategy: str) -> None:
    model = Net().eval()
    g = capture(model, (X,), strategy=strategy)  # type: ignore[arg-type]
    assert g.strategy == ("export" if strategy == "auto" else strategy)
    # metric: exact shape equality with the eager output
    assert [tuple(s) for s in g.output_shapes()] == [tuple(model(X).shape)]
    convs = [n for n in g.nodes if g.module_path(n) == "block.conv1" and g.shape_of(n) is not None
             and len(g.shape_of(n)) == 4]  # type: ignore[arg-type]
    assert convs, g.describe()
    assert tuple(g.shape_of(convs[0])) == (2, 8, 8, 8)  # type: ignore[arg-type]
    assert g.dtype_of(convs[0]) == torch.float32
    # the graph module computes the same function (exact for FX; export graph takes params as inputs)
    if g.strategy == "fx":
        assert torch.equal(g.graph_module(X), model(X))
    else:
        assert torch.allclose(g.exported_program.module()(X), model(X), atol=1e-6)


def test_fx_call_module_path_is_target_and_non_module_nodes_owned() -> None:
    g = capture(Net(), (X,), strategy="fx")
    mods = {str(n.target): g.module_path(n) for n in g.nodes if n.op == "call_module"}
    assert mods["block.short.0"] == "block.short.0"
    relus = [n for n in g.nodes if n.op == "call_function" and n.target is torch.relu]
    assert {g.module_path(n) for n in relus} == {"block"}


def test_capture_does_not_touch_batchnorm_stats() -> None:
    model: Any = Net().train()
    before = model.block.bn1.running_mean.clone()
    capture(model, (X,), strategy="fx")
    assert torch.equal(model.block.bn1.running_mean, before)  # exact
    assert model.training and model.block.bn1.training


def test_data_dependent_control_flow_errors_clearly() -> None:
    model = Wrapper(DataDependent())
    with pytest.raises(CaptureError) as ei:
        capture(model, (X,))
    msg = str(ei.value)
    assert "if x.sum() > 0" in msg  # the failing op / line
    assert "encoder.1" in msg and "DataDependent" in msg  # the module path and type
    assert "torch.export" in msg and "torch.fx" in msg  # both strategies were tried
    assert "do not need capture" in msg


class UsesLen(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * len(x)


def test_fx_error_names_op_and_module() -> None:
    with pytest.raises(CaptureError) as ei:
        capture(Wrapper(UsesLen()), (X,), strategy="fx")
    msg = str(ei.value)
    assert "len(x)" in msg and "'encoder.1' (UsesLen)" in msg


def test_bad_arguments() -> None:
    with pytest.raises(CaptureError, match="wrap a single tensor"):
        capture(Net(), X)  # type: ignore[arg-type]
    with pytest.raises(CaptureError, match="unknown capture strategy"):
        capture(Net(), (X,), strategy="jit")  # type: ignore[arg-type]


def _numpy_relu(x: torch.Tensor) -> torch.Tensor:
    return torch.from_numpy(np.maximum(x.detach().numpy(), 0))


torch.fx.wrap("_numpy_relu")


class NumpyNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _numpy_relu(self.conv(x)) + 1


def test_auto_falls_back_to_fx_when_export_fails() -> None:
    model = NumpyNet()
    g = capture(model, (X,))
    assert g.strategy == "fx"
    assert g.attempts and g.attempts[0][0] == "export" and "numpy" in g.attempts[0][1]
    assert torch.equal(g.graph_module(X), model(X))  # exact: same computation
    assert [tuple(s) for s in g.output_shapes()] == [(2, 4, 14, 14)]
