"""Layer mapping strategies and pre-training validation."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from torchslim.core.errors import ConfigError
from torchslim.distillation.mapping import map_layers, validate_mapping

T12 = [f"t{i}" for i in range(1, 13)]
S4 = [f"s{i}" for i in range(1, 5)]


def test_uniform_last_explicit() -> None:
    assert map_layers(T12, S4, "uniform") == [("s1", "t3"), ("s2", "t6"), ("s3", "t9"), ("s4", "t12")]
    assert map_layers(T12, S4, "last") == [("s1", "t9"), ("s2", "t10"), ("s3", "t11"), ("s4", "t12")]
    assert map_layers(["a", "b", "c"], ["x", "y"], "uniform") == [("x", "b"), ("y", "c")]  # round(1.5)=2, 3
    assert map_layers(T12, S4, "explicit", {"s1": "t1", "s4": "t12"}) == [("s1", "t1"), ("s4", "t12")]


def test_mapping_errors_name_the_side() -> None:
    with pytest.raises(ConfigError, match="student has 4 layers and the teacher only 2"):
        map_layers(["a", "b"], S4)
    with pytest.raises(ConfigError, match="teacher layer 't99'"):
        map_layers(T12, S4, "explicit", {"s1": "t99"})
    with pytest.raises(ConfigError, match="unknown strategy"):
        map_layers(T12, S4, "skip")  # type: ignore[arg-type]


class _Net(nn.Module):
    def __init__(self, widths: list[int]) -> None:
        super().__init__()
        chans = [1, *widths]
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.Conv2d(a, b, 3, padding=1), nn.ReLU())
            for a, b in zip(chans, chans[1:], strict=False)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for b in self.blocks:
            x = b(x)
        return x


def test_validate_mapping_checks_shapes_before_training() -> None:
    teacher, student = _Net([16, 16, 32, 32]), _Net([8, 16])
    pairs = map_layers([f"blocks.{i}" for i in range(4)], ["blocks.0", "blocks.1"], "uniform")
    x = torch.randn(2, 1, 8, 8)
    with pytest.raises(ConfigError) as err:
        validate_mapping(teacher, student, pairs, x)
    msg = str(err.value)
    assert "student layer 'blocks.0'" in msg and "teacher layer 'blocks.1'" in msg and "(2, 8, 8, 8)" in msg
    assert "HintLoss" in msg
    shapes = validate_mapping(teacher, student, pairs, x, allow_projection=True)
    assert [p.teacher_shape for p in shapes] == [(2, 16, 8, 8), (2, 32, 8, 8)]
    assert not any(len(m._forward_hooks) for m in teacher.modules())  # hooks removed
    with pytest.raises(ConfigError, match=r"student \(_Net\) has no submodule 'blocks.7'.*teacher \(_Net\)"):
        validate_mapping(teacher, student, [("blocks.7", "blocks.0")], x)
