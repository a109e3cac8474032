"""Model zoo registry: names -> builders (untrained) and pretrained loaders.

Every model returned by :func:`build` or :func:`load` carries ``model._torchslim_spec =
{"name": ..., "kwargs": ...}`` so that a checkpoint can rebuild the architecture with
``build(spec["name"], **spec["kwargs"])`` before loading weights.

Example::

    from torchslim import zoo
    zoo.available()                       # ['minilm-l6', 'mobilenet_v2', 'resnet-fmnist', 'tweet-classifier']
    model = zoo.load("resnet-fmnist")     # trained on first use (about 2-3 min), then cached
    spec = zoo.spec_of(model)             # {'name': 'resnet-fmnist', 'kwargs': {}}
    same_arch = zoo.build(spec["name"], **spec["kwargs"])
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from torch import nn

from torchslim.core.errors import ConfigError

__all__ = ["ZooEntry", "available", "build", "load", "register", "spec_of"]


@dataclass(frozen=True)
class ZooEntry:
    """A registered model: ``builder(**kwargs)`` makes it untrained; ``pretrained(progress)`` makes it
    with weights (``None``: no pretrained weights exist)."""

    name: str
    builder: Callable[..., nn.Module]
    pretrained: Callable[[bool], nn.Module] | None
    description: str = ""


_ENTRIES: dict[str, ZooEntry] = {}


def register(
    name: str,
    builder: Callable[..., nn.Module],
    pretrained: Callable[[bool], nn.Module] | None = None,
    description: str = "",
) -> None:
    """Register a model under ``name`` (raises ``ValueError`` if the name is taken)."""
    if name in _ENTRIES:
        raise ValueError(f"zoo: model name {name!r} is already registered")
    _ENTRIES[name] = ZooEntry(name, builder, pretrained, description)


def available() -> list[str]:
    """Sorted names of the registered models."""
    return sorted(_ENTRIES)


def _entry(name: str) -> ZooEntry:
    if not isinstance(name, str) or name not in _ENTRIES:
        raise ConfigError(f"zoo: unknown model {name!r}; known models: {', '.join(available())}")
    return _ENTRIES[name]


def _jsonable(v: Any) -> Any:
    if isinstance(v, (tuple, list)):
        return [_jsonable(x) for x in v]
    if isinstance(v, Mapping):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if v is None or isinstance(v, (bool, int, float, str)):
        return v
    raise ConfigError(
        f"zoo: build() argument value {v!r} ({type(v).__name__}) is not JSON-serialisable; "
        "pass plain numbers, strings, lists or dicts so the spec can rebuild the model"
    )


def _stamp(model: nn.Module, name: str, kwargs: Mapping[str, Any]) -> nn.Module:
    model._torchslim_spec = {"name": name, "kwargs": _jsonable(dict(kwargs))}  # type: ignore[assignment]
    return model


def build(name: str, **kwargs: Any) -> nn.Module:
    """Build the untrained architecture ``name`` (keyword arguments go to its constructor).

    Raises :class:`~torchslim.core.errors.ConfigError` for an unknown name (listing the known ones) or
    for arguments the constructor does not accept.

    Example::

        model = build("resnet-fmnist", widths=[16, 32, 64])
    """
    entry = _entry(name)
    try:
        model = entry.builder(**kwargs)
    except TypeError as e:
        raise ConfigError(f"zoo: bad arguments for {name!r}: {e}") from e
    return _stamp(model, name, kwargs)


def load(name: str, pretrained: bool = True, progress: bool = True) -> nn.Module:
    """The model ``name``, with its pretrained weights (``pretrained=True``) or untrained.

    ``"resnet-fmnist"`` is trained on Fashion-MNIST on first use and cached under
    ``cache_dir()/zoo``; ``"mobilenet_v2"`` and ``"minilm-l6"`` load weights from installed packages
    (no network). Pretrained models are returned in eval mode.
    """
    entry = _entry(name)
    if not pretrained:
        return build(name)
    if entry.pretrained is None:
        raise ConfigError(
            f"zoo: {name!r} has no pretrained weights; use load({name!r}, pretrained=False) or build({name!r})"
        )
    return _stamp(entry.pretrained(progress), name, {})


def spec_of(model: nn.Module) -> dict[str, Any] | None:
    """``{"name": ..., "kwargs": ...}`` recorded by :func:`build`/:func:`load`, or ``None``."""
    spec = getattr(model, "_torchslim_spec", None)
    if not isinstance(spec, dict) or "name" not in spec:
        return None
    return {"name": spec["name"], "kwargs": dict(spec.get("kwargs", {}))}


# --------------------------------------------------------------------------------------------------
# built-in models (imports deferred: building the registry stays cheap)


def _resnet(**kw: Any) -> nn.Module:
    from torchslim.zoo.resnet import ResNet

    return ResNet(**kw)


def _resnet_pretrained(progress: bool) -> nn.Module:
    from torchslim.zoo.resnet import pretrained_resnet_fmnist

    return pretrained_resnet_fmnist(progress=progress)


def _mobilenet(**kw: Any) -> nn.Module:
    from torchslim.zoo.mobilenet_v2 import MobileNetV2

    return MobileNetV2(**kw)


def _mobilenet_pretrained(progress: bool) -> nn.Module:
    from torchslim.zoo.mobilenet_v2 import mobilenet_v2

    return mobilenet_v2(pretrained=True)


def _minilm(**kw: Any) -> nn.Module:
    from torchslim.zoo.minilm import minilm

    return minilm(pretrained=False, **kw)


def _minilm_pretrained(progress: bool) -> nn.Module:
    from torchslim.zoo.minilm import minilm

    return minilm(pretrained=True)


def _tweet_classifier(**kw: Any) -> nn.Module:
    from torchslim.zoo.text_classifier import TweetClassifier

    return TweetClassifier(**kw)


register(
    "resnet-fmnist", _resnet, _resnet_pretrained, "ResNet 32/64/128 for 28x28 grey images; Fashion-MNIST"
)
register("mobilenet_v2", _mobilenet, _mobilenet_pretrained, "MobileNetV2, ImageNet weights (torchvision)")
register("minilm-l6", _minilm, _minilm_pretrained, "all-MiniLM-L6-v2 sentence encoder (mean pool + L2)")
register("tweet-classifier", _tweet_classifier, None, "Linear head on 384-d sentence embeddings, 16 classes")
