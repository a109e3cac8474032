"""Config base: frozen, strict, versioned; dict/YAML round trips; errors name the field path."""

from __future__ import annotations

from typing import ClassVar, Literal

import pytest
from pydantic import Field

from torchslim.core.config import Config, config_types
from torchslim.core.errors import ConfigError


class Prune(Config):
    type_name: ClassVar[str] = "test_prune"
    ratio: float = Field(0.5, ge=0.0, lt=1.0)
    mode: Literal["l1", "l2"] = "l1"
    layers: list[str] = []


class PruneV2(Prune):
    type_name: ClassVar[str] = "test_prune_v2"
    version: ClassVar[int] = 2


def test_round_trip_dict_and_yaml():
    c = Prune(ratio=0.3, mode="l2", layers=["a.b"])
    d = c.to_dict()
    assert d == {"type": "test_prune", "version": 1, "ratio": 0.3, "mode": "l2", "layers": ["a.b"]}
    assert Config.from_dict(d) == c  # the base class picks the subclass by 'type'
    assert Prune.from_yaml(c.to_yaml()) == c


def test_frozen():
    c = Prune()
    with pytest.raises(Exception):  # noqa: B017 - pydantic raises its own ValidationError type
        c.ratio = 0.9  # type: ignore[misc]


@pytest.mark.parametrize(
    ("data", "needle"),
    [
        ({"ratio": 0.2, "ratoi": 1}, "stages[3].ratoi: unknown field (allowed fields: layers, mode, ratio)"),
        ({"ratio": "half"}, "stages[3].ratio: Input should be a valid number"),
        ({"ratio": 1.0}, "stages[3].ratio: Input should be less than 1"),
        ({"mode": "l3"}, "stages[3].mode: Input should be 'l1' or 'l2'"),
    ],
)
def test_errors_name_the_field_path_and_allowed_values(data, needle):
    with pytest.raises(ConfigError) as e:
        Prune.from_dict(data, where="stages[3]")
    assert needle in str(e.value)


def test_unknown_type_lists_known_types():
    with pytest.raises(ConfigError, match=r"unknown type 'nope' \(known: .*test_prune"):
        Config.from_dict({"type": "nope"})
    with pytest.raises(ConfigError, match="missing 'type'"):
        Config.from_dict({"ratio": 0.1})


def test_wrong_subclass_and_newer_version_are_refused():
    with pytest.raises(ConfigError, match="is not a PruneV2"):
        PruneV2.from_dict({"type": "test_prune"})
    with pytest.raises(ConfigError, match="newer than this torchslim understands"):
        Prune.from_dict({"type": "test_prune", "version": 7})
    assert PruneV2.from_dict({"type": "test_prune_v2", "version": 2}).version == 2


def test_json_schema_names_the_type_and_fields():
    schema = Prune.json_schema()
    assert schema["properties"]["type"] == {"const": "test_prune"}
    assert schema["properties"]["ratio"]["exclusiveMaximum"] == 1.0
    assert "test_prune" in config_types()
