"""Range observers used during calibration.

An observer sees activations (or weights) through :meth:`update` and turns the range it saw into
quantisation parameters with :meth:`qparams`. NaN or Inf in the observed data raise
:class:`~torchslim.core.errors.NumericalError`.

Example::

    import torch
    from torchslim.quantization.observers import MinMaxObserver
    obs = MinMaxObserver(per_channel_axis=0)
    obs.update(torch.randn(16, 3, 3, 3))
    scale, zp = obs.qparams(bits=8, symmetric=True, signed=True)     # 16 scales
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from torchslim.core.errors import NumericalError
from torchslim.quantization.primitives import choose_qparams


def _reduce_minmax(x: Tensor, axis: int | None) -> tuple[Tensor, Tensor]:
    x = x.detach().to(torch.float32)
    if axis is None:
        return x.min(), x.max()
    ax = axis % x.dim()
    flat = x.movedim(ax, 0).reshape(x.shape[ax], -1)
    return flat.min(dim=1).values, flat.max(dim=1).values


class Observer:
    """Base class: tracks a range; ``per_channel_axis`` selects per-channel ranges along that dim."""

    def __init__(self, per_channel_axis: int | None = None, name: str = "") -> None:
        self.per_channel_axis = per_channel_axis
        self.name = name
        self.min_val: Tensor | None = None
        self.max_val: Tensor | None = None
        self.count = 0

    def _check(self, x: Tensor) -> None:
        if x.numel() == 0:
            raise ValueError(f"observer {self.name or ''}: empty tensor")
        if not bool(torch.isfinite(x).all()):
            where = f" at {self.name}" if self.name else ""
            raise NumericalError(
                f"NaN or Inf in calibration data{where}: clean the calibration inputs (or the model producing "
                "non-finite activations) before quantising"
            )

    def update(self, x: Tensor) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def qparams(
        self, bits: int = 8, symmetric: bool = False, signed: bool = False, narrow_range: bool = False
    ) -> tuple[Tensor, Tensor]:
        """Scale and zero point for the observed range (see :func:`choose_qparams`)."""
        if self.min_val is None or self.max_val is None:
            where = f" {self.name}" if self.name else ""
            raise RuntimeError(f"observer{where} saw no data: run calibration before converting")
        return choose_qparams(self.min_val, self.max_val, bits, symmetric, signed, narrow_range)


class MinMaxObserver(Observer):
    """Running minimum and maximum over everything seen."""

    def update(self, x: Tensor) -> None:
        self._check(x)
        mn, mx = _reduce_minmax(x, self.per_channel_axis)
        if self.min_val is None or self.max_val is None:
            self.min_val, self.max_val = mn, mx
        else:
            self.min_val = torch.minimum(self.min_val, mn)
            self.max_val = torch.maximum(self.max_val, mx)
        self.count += 1


class MovingAverageMinMaxObserver(Observer):
    """Exponential moving average of per-batch minima and maxima (``averaging_constant`` = weight of a new batch)."""

    def __init__(
        self, per_channel_axis: int | None = None, averaging_constant: float = 0.01, name: str = ""
    ) -> None:
        super().__init__(per_channel_axis, name)
        if not 0.0 < averaging_constant <= 1.0:
            raise ValueError(f"averaging_constant must be in (0, 1], got {averaging_constant}")
        self.averaging_constant = averaging_constant

    def update(self, x: Tensor) -> None:
        self._check(x)
        mn, mx = _reduce_minmax(x, self.per_channel_axis)
        if self.min_val is None or self.max_val is None:
            self.min_val, self.max_val = mn, mx
        else:
            c = self.averaging_constant
            self.min_val = self.min_val + c * (mn - self.min_val)
            self.max_val = self.max_val + c * (mx - self.max_val)
        self.count += 1


#: calibrator name -> observer factory ``(per_channel_axis, name) -> Observer``. More come later.
CALIBRATORS: dict[str, Callable[..., Observer]] = {
    "minmax": MinMaxObserver,
    "moving_average_minmax": MovingAverageMinMaxObserver,
}


def register_calibrator(name: str, factory: Callable[..., Observer]) -> None:
    """Register an observer factory under ``name`` (used by ``StaticPTQ.calibrator``)."""
    if name in CALIBRATORS:
        raise ValueError(f"calibrator {name!r} is already registered")
    CALIBRATORS[name] = factory


def make_observer(calibrator: str, per_channel_axis: int | None = None, name: str = "") -> Observer:
    """Instantiate the observer registered as ``calibrator``."""
    try:
        factory = CALIBRATORS[calibrator]
    except KeyError:
        raise ValueError(
            f"unknown calibrator {calibrator!r} (known: {', '.join(sorted(CALIBRATORS))})"
        ) from None
    return factory(per_channel_axis=per_channel_axis, name=name)
