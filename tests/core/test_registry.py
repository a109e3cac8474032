"""Registry: config type -> function, resolved through the MRO; unknown types name the known ones."""

from __future__ import annotations

from typing import ClassVar

import pytest

from torchslim.core.config import Config
from torchslim.core.errors import ConfigError
from torchslim.core.registry import Registry


class Base(Config):
    type_name: ClassVar[str] = "reg_base"


class Child(Base):
    type_name: ClassVar[str] = "reg_child"


class Special(Base):
    type_name: ClassVar[str] = "reg_special"


class Other(Config):
    type_name: ClassVar[str] = "reg_other"


def test_resolution_walks_the_mro():
    reg = Registry("test")
    reg.register(Base)(lambda c: "base")
    reg.register(Special)(lambda c: "special")
    assert reg.resolve(Child())(None) == "base"  # inherited
    assert reg.resolve(Special())(None) == "special"  # own registration wins
    assert Child in reg and Other not in reg


def test_unknown_and_duplicate():
    reg = Registry("stages")
    reg.register(Base)(lambda c: None)
    with pytest.raises(ConfigError, match=r"stages: no implementation registered for Other \(known: reg_base\)"):
        reg.resolve(Other())
    with pytest.raises(ValueError, match="already registered"):
        reg.register(Base)(lambda c: None)
