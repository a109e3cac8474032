"""``quantize_``: one entry point for post-training quantization, whatever the config.

The config decides the engine:

* :class:`~torchslim.quantization.static.StaticPTQ` -> static W8A8 (PREPARE: fold BN and insert observers,
  CALIBRATE on ``calib_inputs``, CONVERT ranges to scales; the result simulates the int8 model in PyTorch and
  exports a QDQ ONNX model that ONNX Runtime runs with integer kernels);
* :class:`~torchslim.quantization.dynamic.DynamicPTQ` -> dynamic int8 ``nn.Linear`` layers (no calibration);
* :class:`~torchslim.quantization.lstm.QLSTMConfig` -> int8 ``nn.LSTM`` layers, replaced in place.

``include`` / ``exclude`` (module-path globs) and ``filter_fn(path, module) -> bool`` select the layers; the
others stay in float. Example::

    >>> import torch
    >>> from torch import nn
    >>> from torchslim.quantization import DynamicPTQ, quantize_
    >>> m = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    >>> q = quantize_(m, DynamicPTQ(), exclude=["2"])
    >>> q.quantized, q.skipped
    (['0'], ['2'])
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from torch import Tensor, nn

from torchslim.core.config import Config
from torchslim.core.errors import ConfigError

__all__ = ["quantize_"]

FilterFn = Callable[[str, nn.Module], bool]


def _matches(path: str, patterns: Sequence[str]) -> bool:
    return any(fnmatch.fnmatchcase(path, p) or fnmatch.fnmatchcase(path, p + ".*") for p in patterns)


def _float_paths(
    model: nn.Module, include: Sequence[str], exclude: Sequence[str], filter_fn: FilterFn | None
) -> list[str]:
    """Leaf-module paths that must stay in float under ``include`` / ``exclude`` / ``filter_fn``."""
    paths = [(p, m) for p, m in model.named_modules() if p and not list(m.children())]
    names = [p for p, _ in paths]
    for kind, pats in (("include", include), ("exclude", exclude)):
        for pat in pats:
            if not any(_matches(n, [pat]) for n in names):
                raise ConfigError(
                    f"quantize_: {kind} pattern {pat!r} matches no module; module paths look like {names[:6]}"
                )
    out = []
    for p, m in paths:
        keep = (not include or _matches(p, include)) and not _matches(p, exclude)
        if keep and filter_fn is not None:
            keep = bool(filter_fn(p, m))
        if not keep:
            out.append(p)
    return out


def quantize_(
    model: nn.Module,
    config: Config,
    calib_inputs: Tensor | Iterable[Any] | None = None,
    *,
    example_input: Tensor | None = None,
    include: Sequence[str] = (),
    exclude: Sequence[str] = (),
    filter_fn: FilterFn | None = None,
    progress: bool = True,
) -> Any:
    """Quantize ``model`` with the engine ``config`` selects (see the module docstring).

    Args:
        model: the float model. Static and dynamic PTQ work on a copy; :class:`QLSTMConfig` replaces the LSTMs
            of ``model`` in place (and returns the replaced paths).
        config: a ``StaticPTQ``, ``DynamicPTQ`` or ``QLSTMConfig``.
        calib_inputs: calibration samples for static PTQ (a tensor or an iterable of batches).
        example_input: static PTQ runs the converted model on it once as a check.
        include: module-path globs; when given, only matching layers are quantized.
        exclude: module-path globs left in float (added to the config's own ``exclude``).
        filter_fn: ``(path, module) -> bool``; a layer is quantized only when it returns True.
        progress: progress bar while calibrating.

    Returns:
        a :class:`~torchslim.quantization.static.QuantizedModel` (static), a
        :class:`~torchslim.quantization.dynamic.DynamicQuantizedModel` (dynamic) or the list of replaced LSTM
        paths (``QLSTMConfig``).

    Raises:
        ConfigError: an unsupported config type, a pattern that matches no module, a missing calibration set
            (static), or ``include`` / ``filter_fn`` with ``QLSTMConfig`` (use ``exclude``-free models or
            ``QuantizedLSTM.from_float`` per layer instead).
    """
    from torchslim.quantization.dynamic import DynamicPTQ, quantize_dynamic
    from torchslim.quantization.lstm import QLSTMConfig, quantize_lstm_
    from torchslim.quantization.static import StaticPTQ, quantize_static

    if isinstance(config, StaticPTQ):
        left = _float_paths(model, include, exclude, filter_fn)
        cfg = config.model_copy(update={"exclude": [*config.exclude, *left]}) if left else config
        return quantize_static(model, cfg, calib_inputs, example_input=example_input, progress=progress)
    if isinstance(config, DynamicPTQ):
        floats = set(_float_paths(model, include, exclude, filter_fn))
        return quantize_dynamic(model, config, filter_fn=lambda path, _lin: path not in floats)
    if isinstance(config, QLSTMConfig):
        if include or exclude or filter_fn is not None:
            raise ConfigError("quantize_: QLSTMConfig quantizes every nn.LSTM; include / exclude / filter_fn are "
                              "not supported for it (use QuantizedLSTM.from_float on the layers you want)")
        return quantize_lstm_(model, config)
    raise ConfigError(
        f"quantize_: no engine for a {type(config).__name__} config; pass StaticPTQ, DynamicPTQ or QLSTMConfig "
        "(low-bit, data-free and mixed precision run through torchslim.quantization.mixed.run_lowbit_ptq)"
    )
