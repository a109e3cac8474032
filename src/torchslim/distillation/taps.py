"""Capture the outputs (or inputs) of named submodules with forward hooks, without editing the model.

Example:
    >>> from torchslim.distillation.taps import Taps
    >>> model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    >>> with Taps(model, ["0", "2"]) as taps:
    ...     _ = model(torch.randn(3, 4))
    >>> taps["0"].shape, taps["2"].shape
    (torch.Size([3, 8]), torch.Size([3, 2]))
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from typing import Any, Literal

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from torchslim.core.errors import ConfigError

TapMode = Literal["output", "input"]


def _first_tensor(obj: Any) -> torch.Tensor | None:
    if isinstance(obj, torch.Tensor):
        return obj
    if isinstance(obj, (tuple, list)):
        for item in obj:
            t = _first_tensor(item)
            if t is not None:
                return t
    if isinstance(obj, dict):
        for item in obj.values():
            t = _first_tensor(item)
            if t is not None:
                return t
    for attr in ("last_hidden_state", "logits"):
        t = getattr(obj, attr, None)
        if isinstance(t, torch.Tensor):
            return t
    return None


def resolve_paths(
    model: nn.Module, paths: Sequence[str], role: str = "model", other: str | None = None
) -> dict[str, nn.Module]:
    """Look up submodules by dotted path (``model.named_modules()`` names).

    Args:
        model: the model to search.
        paths: dotted module paths, e.g. ``"layer2.0.conv1"``.
        role: what to call this model in errors (``"teacher"``, ``"student"``).
        other: a description of the other model of the pair, named in errors so that a user who swapped
            teacher and student sees it.

    Raises:
        ConfigError: a path names no submodule; the message names the model, its class, the other model and
            the closest existing paths.
    """
    modules = dict(model.named_modules())
    found: dict[str, nn.Module] = {}
    for path in paths:
        if path not in modules:
            names = [n for n in modules if n]
            close = difflib.get_close_matches(path, names, n=5, cutoff=0.4)
            pair = f" (the other model of the pair is the {other})" if other else ""
            hint = (
                f"; close matches: {', '.join(close)}"
                if close
                else f"; its top-level modules: {', '.join(n for n in names if '.' not in n)}"
            )
            raise ConfigError(
                f"taps: the {role} ({type(model).__name__}) has no submodule {path!r}{pair}{hint}. "
                f"Use a name from {role}.named_modules()"
            )
        found[path] = modules[path]
    return found


class Taps:
    """Forward hooks that record what named submodules output (or receive) during a forward.

    Use as a context manager (hooks removed on exit) or call :meth:`remove`. ``taps[path]`` is the tensor
    recorded by the most recent call of that module (the first tensor of a tuple output / of the positional
    inputs); gradients flow through it, so it can be used in a loss.

    Args:
        model: the model to observe; it is not modified (only hooks are added).
        paths: dotted submodule paths.
        mode: ``"output"`` (record outputs) or ``"input"`` (record the first positional input).
        role: name of the model in error messages (``"teacher"`` / ``"student"``).
        other: description of the other model of the pair, for error messages.

    Raises:
        ConfigError: unknown path (see :func:`resolve_paths`), or reading a path that did not run.
    """

    def __init__(
        self,
        model: nn.Module,
        paths: Sequence[str],
        mode: TapMode = "output",
        role: str = "model",
        other: str | None = None,
    ) -> None:
        if mode not in ("output", "input"):
            raise ConfigError(f"taps: mode must be 'output' or 'input', got {mode!r}")
        self.model = model
        self.mode = mode
        self.role = role
        self.paths = list(paths)
        self.values: dict[str, torch.Tensor] = {}
        self._handles: list[RemovableHandle] = []
        for path, mod in resolve_paths(model, self.paths, role, other).items():
            self._handles.append(mod.register_forward_hook(self._hook(path)))

    def _hook(self, path: str) -> Any:
        def hook(module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
            value = _first_tensor(args if self.mode == "input" else output)
            if value is not None:
                self.values[path] = value

        return hook

    def __getitem__(self, path: str) -> torch.Tensor:
        if path not in self.values:
            if path not in self.paths:
                raise ConfigError(f"taps: {path!r} is not tapped on the {self.role} (tapped: {self.paths})")
            raise ConfigError(
                f"taps: the {self.role}'s module {path!r} did not run (or returned no tensor) in the last "
                "forward; tap a module on the forward path"
            )
        return self.values[path]

    def clear(self) -> None:
        """Forget the recorded values (call between forwards to avoid reading stale ones)."""
        self.values.clear()

    def remove(self) -> None:
        """Remove the hooks; the model is back to its original state."""
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def __enter__(self) -> Taps:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()
