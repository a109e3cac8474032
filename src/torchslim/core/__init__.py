"""Core building blocks: configs, registry, graph capture, cost model, errors, atomic I/O."""

from torchslim.core.config import Config
from torchslim.core.errors import (
    CaptureError,
    CheckpointError,
    ConfigError,
    DataSourceMissing,
    NumericalError,
    TorchSlimError,
    UnsupportedModelError,
)
from torchslim.core.registry import STAGES, Registry

__all__ = [
    "Config",
    "Registry",
    "STAGES",
    "TorchSlimError",
    "ConfigError",
    "CaptureError",
    "DataSourceMissing",
    "CheckpointError",
    "NumericalError",
    "UnsupportedModelError",
]
