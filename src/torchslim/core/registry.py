"""Registry from config type to the function that applies it.

``@register(MyConfig)`` registers an apply function; :func:`resolve` finds the function for a config
instance by walking its class's MRO, so a subclass inherits its parent's implementation unless it
registers its own.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from torchslim.core.config import Config
from torchslim.core.errors import ConfigError

F = TypeVar("F", bound=Callable[..., Any])


class Registry:
    def __init__(self, name: str) -> None:
        self.name = name
        self._fns: dict[type[Config], Callable[..., Any]] = {}

    def register(self, config_type: type[Config]) -> Callable[[F], F]:
        def deco(fn: F) -> F:
            if config_type in self._fns:
                raise ValueError(f"{self.name}: {config_type.__name__} is already registered")
            self._fns[config_type] = fn
            return fn

        return deco

    def resolve(self, config: Config | type[Config]) -> Callable[..., Any]:
        cls = config if isinstance(config, type) else type(config)
        for klass in cls.__mro__:
            if klass in self._fns:
                return self._fns[klass]
        known = ", ".join(sorted(c.type_name for c in self._fns)) or "none"
        raise ConfigError(f"{self.name}: no implementation registered for {cls.__name__} (known: {known})")

    def known(self) -> list[type[Config]]:
        return list(self._fns)

    def __contains__(self, config_type: object) -> bool:
        return isinstance(config_type, type) and any(k in self._fns for k in config_type.__mro__)


#: Pipeline stages: config type -> ``fn(config, context) -> None``; see ``torchslim.pipeline``.
STAGES = Registry("stages")
