"""Error types. Every message names what is wrong and what to do about it."""

from __future__ import annotations


class TorchSlimError(Exception):
    """Base class of every error torchslim raises on purpose."""


class ConfigError(TorchSlimError, ValueError):
    """A recipe or config is invalid (unknown field, wrong type, value out of range)."""


class CaptureError(TorchSlimError):
    """Graph capture failed; the message names the op and the module path."""


class DataSourceMissing(TorchSlimError, FileNotFoundError):
    """A data set or weights package is not installed; the message gives the install command."""


class CheckpointError(TorchSlimError):
    """A checkpoint is truncated, corrupted or not a torchslim checkpoint."""


class NumericalError(TorchSlimError, FloatingPointError):
    """NaN or Inf appeared during calibration or training."""


class UnsupportedModelError(TorchSlimError):
    """A model or layer cannot be handled by a stage; the message says which stages can skip it."""
