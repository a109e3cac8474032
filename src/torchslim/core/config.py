"""Versioned, frozen configuration objects.

Every technique is configured by a subclass of :class:`Config`: a frozen pydantic v2 model that rejects
unknown fields. Configs round-trip through plain dicts and YAML with their ``type`` name and ``version``,
and export a JSON Schema. Validation errors are re-raised as :class:`~torchslim.core.errors.ConfigError`
naming the field path and what is allowed.
"""

from __future__ import annotations

import contextvars
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from torchslim.core.errors import ConfigError

C = TypeVar("C", bound="Config")

#: Field-path prefix used in error messages while ``from_dict`` builds a nested config.
_WHERE: contextvars.ContextVar[str] = contextvars.ContextVar("torchslim_config_where", default="")

#: config type name -> config class, filled by ``Config.__init_subclass__``.
_CONFIG_TYPES: dict[str, type[Config]] = {}


def format_validation_error(err: ValidationError, where: str = "") -> str:
    """One line per problem: ``path.to.field: message (allowed: ...)``."""
    lines = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"])
        path = f"{where}.{loc}" if where and loc else (where or loc or "<root>")
        msg = e["msg"]
        ctx = e.get("ctx") or {}
        if e["type"] == "extra_forbidden":
            msg = "unknown field"
            model = _model_at(err.title)
            if model is not None:
                msg += f" (allowed fields: {', '.join(sorted(model.model_fields))})"
        elif "expected" in ctx:
            msg += f" (allowed: {ctx['expected']})"
        lines.append(f"{path}: {msg}; got {e.get('input')!r}")
    return "\n".join(lines)


def _model_at(title: str) -> type[BaseModel] | None:
    for cls in _CONFIG_TYPES.values():
        if cls.__name__ == title:
            return cls
    return None


class Config(BaseModel):
    """Base of every technique/stage config: frozen, strict about unknown fields, versioned."""

    model_config = ConfigDict(frozen=True, extra="forbid", validate_default=True, use_enum_values=False)

    #: Bumped when a field's meaning changes; ``from_dict`` refuses newer versions than it knows.
    version: ClassVar[int] = 1
    #: The name used in YAML recipes (``type: channel_prune``). Defaults to the class name.
    type_name: ClassVar[str] = ""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        name = cls.__dict__.get("type_name") or cls.__name__
        cls.type_name = name
        _CONFIG_TYPES[name] = cls

    def __init__(self, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as err:
            where = _WHERE.get() or type(self).type_name
            raise ConfigError(f"invalid {type(self).type_name} config:\n" + format_validation_error(err, where)) from None

    # ---- (de)serialisation -------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        body = self.model_dump(mode="json")
        return {"type": self.type_name, "version": self.version, **body}

    @classmethod
    def from_dict(cls: type[C], data: dict[str, Any], where: str = "") -> C:
        """Build a config from a dict. On the base class, ``type`` picks the subclass."""
        if not isinstance(data, dict):
            raise ConfigError(f"{where or '<config>'}: expected a mapping, got {type(data).__name__}")
        data = dict(data)
        type_name = data.pop("type", None)
        version = data.pop("version", None)
        target: type[Config] = cls
        if type_name is not None:
            if type_name not in _CONFIG_TYPES:
                known = ", ".join(sorted(k for k, v in _CONFIG_TYPES.items() if issubclass(v, cls)))
                raise ConfigError(f"{where or '<config>'}.type: unknown type {type_name!r} (known: {known})")
            target = _CONFIG_TYPES[type_name]
            if not issubclass(target, cls):
                raise ConfigError(f"{where or '<config>'}.type: {type_name!r} is not a {cls.__name__}")
        elif cls is Config:
            raise ConfigError(f"{where or '<config>'}: missing 'type' (known: {', '.join(sorted(_CONFIG_TYPES))})")
        if version is not None and int(version) > target.version:
            raise ConfigError(
                f"{where or '<config>'}.version: {target.type_name} version {version} is newer than this torchslim "
                f"understands ({target.version}); upgrade torchslim"
            )
        token = _WHERE.set(where)
        try:
            return target(**data)  # type: ignore[return-value]
        finally:
            _WHERE.reset(token)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    @classmethod
    def from_yaml(cls: type[C], text_or_path: str | Path) -> C:
        text = Path(text_or_path).read_text() if _looks_like_path(text_or_path) else str(text_or_path)
        return cls.from_dict(yaml.safe_load(text))

    @classmethod
    def json_schema(cls) -> dict[str, Any]:
        schema = cls.model_json_schema()
        schema.setdefault("properties", {})["type"] = {"const": cls.type_name}
        return schema


def _looks_like_path(x: str | Path) -> bool:
    if isinstance(x, Path):
        return True
    return "\n" not in x and (x.endswith((".yaml", ".yml", ".json")) or Path(x).is_file())


def config_types() -> dict[str, type[Config]]:
    """All known config type names (for error messages and the CLI)."""
    return dict(_CONFIG_TYPES)
