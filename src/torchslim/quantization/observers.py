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

Calibrators registered in :data:`CALIBRATORS` (names for ``StaticPTQ(calibrator=...)``): ``"minmax"``,
``"moving_average_minmax"``, and the per-tensor histogram calibrators ``"percentile"`` (99.99th
percentile), ``"mse"`` (range minimising the expected squared error) and ``"entropy"`` (KL divergence
between the clipped and the quantised histogram). The histogram calibrators choose their range for the
bit width asked in :meth:`Observer.qparams`, so the same observer serves 8-bit and 4-bit conversion.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from torchslim.core.errors import NumericalError
from torchslim.quantization.primitives import choose_qparams, qrange


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


class HistogramObserver(Observer):
    """Base of the histogram calibrators: a running histogram of everything seen (per tensor only).

    The histogram has ``bins`` equal-width bins over the running ``[min, max]``; when a new batch widens
    the range, the old counts are re-binned by their bin centres. Subclasses pick the clipping range
    ``[lo, hi]`` for a given bit width in :meth:`clip_range`; :meth:`qparams` turns it into a scale and
    zero point with :func:`~torchslim.quantization.primitives.choose_qparams`.
    """

    def __init__(self, per_channel_axis: int | None = None, name: str = "", bins: int = 2048) -> None:
        if per_channel_axis is not None:
            raise ValueError(
                f"{type(self).__name__}{' ' + name if name else ''}: histogram calibrators are per tensor; "
                "use per_channel_axis=None (or the 'minmax' calibrator for per-channel ranges)"
            )
        super().__init__(None, name)
        if bins < 16:
            raise ValueError(f"bins must be >= 16, got {bins}")
        self.bins = bins
        self.hist: Tensor | None = None

    def update(self, x: Tensor) -> None:
        self._check(x)
        x = x.detach().to(torch.float64).reshape(-1)
        mn, mx = x.min(), x.max()
        if self.hist is None or self.min_val is None or self.max_val is None:
            lo, hi = mn, mx
            old = None
        else:
            lo, hi = torch.minimum(self.min_val.double(), mn), torch.maximum(self.max_val.double(), mx)
            old = (self.hist, self.min_val.double(), self.max_val.double())
        if float(hi) <= float(lo):
            hi = lo + 1e-8
        hist = torch.histc(x, self.bins, float(lo), float(hi))
        if old is not None:
            h0, lo0, hi0 = old
            width0 = (hi0 - lo0) / self.bins
            centres = lo0 + (torch.arange(self.bins, dtype=torch.float64) + 0.5) * width0
            idx = ((centres - lo) / (hi - lo) * self.bins).floor().clamp(0, self.bins - 1).long()
            hist = hist.index_add(0, idx, h0)
        self.hist = hist
        self.min_val, self.max_val = lo.to(torch.float32), hi.to(torch.float32)
        self.count += 1

    def _edges(self) -> Tensor:
        assert self.min_val is not None and self.max_val is not None
        return torch.linspace(float(self.min_val), float(self.max_val), self.bins + 1, dtype=torch.float64)

    def clip_range(
        self, bits: int, symmetric: bool, signed: bool, narrow_range: bool
    ) -> tuple[float, float]:  # pragma: no cover - abstract
        raise NotImplementedError

    def qparams(
        self, bits: int = 8, symmetric: bool = False, signed: bool = False, narrow_range: bool = False
    ) -> tuple[Tensor, Tensor]:
        """Scale and zero point of the clipping range this calibrator chooses for ``bits``."""
        if self.hist is None:
            where = f" {self.name}" if self.name else ""
            raise RuntimeError(f"observer{where} saw no data: run calibration before converting")
        lo, hi = self.clip_range(bits, symmetric, signed, narrow_range)
        return choose_qparams(torch.tensor(lo), torch.tensor(hi), bits, symmetric, signed, narrow_range)

    def _candidates(self, num: int = 60, min_fraction: float = 0.05) -> list[tuple[float, float]]:
        """Candidate ranges: the observed range shrunk by factors in ``[min_fraction, 1]``, plus the ranges
        between the ``a`` and ``1 - a`` quantiles for tail masses ``a`` in ``[1e-6, 0.1]`` (log-spaced);
        the quantile candidates handle asymmetric ranges where only one tail holds outliers."""
        assert self.min_val is not None and self.max_val is not None and self.hist is not None
        lo, hi = min(float(self.min_val), 0.0), max(float(self.max_val), 0.0)
        out = [(lo * f, hi * f) for f in torch.linspace(min_fraction, 1.0, num).tolist()]
        cdf = torch.cumsum(self.hist, 0) / self.hist.sum()
        edges = self._edges()
        for a in torch.logspace(-6, -1, num // 2, dtype=torch.float64).tolist():
            i = int(torch.searchsorted(cdf, torch.tensor(a, dtype=cdf.dtype)).clamp(max=self.bins - 1))
            j = int(torch.searchsorted(cdf, torch.tensor(1.0 - a, dtype=cdf.dtype)).clamp(max=self.bins - 1))
            out.append((min(float(edges[i]), 0.0), max(float(edges[j + 1]), 0.0)))
        return out


class PercentileObserver(HistogramObserver):
    """Clips to the ``percentile`` (upper) and ``100 - percentile`` (lower) percentiles of the data seen."""

    def __init__(
        self, per_channel_axis: int | None = None, name: str = "", bins: int = 2048, percentile: float = 99.99
    ) -> None:
        super().__init__(per_channel_axis, name, bins)
        if not 50.0 < percentile <= 100.0:
            raise ValueError(f"percentile must be in (50, 100], got {percentile}")
        self.percentile = percentile

    def clip_range(self, bits: int, symmetric: bool, signed: bool, narrow_range: bool) -> tuple[float, float]:
        assert self.hist is not None
        cdf = torch.cumsum(self.hist, 0) / self.hist.sum()
        edges = self._edges()
        q = self.percentile / 100.0
        hi_idx = int(torch.searchsorted(cdf, torch.tensor(q, dtype=cdf.dtype)).clamp(max=self.bins - 1))
        lo_idx = int(torch.searchsorted(cdf, torch.tensor(1.0 - q, dtype=cdf.dtype)).clamp(max=self.bins - 1))
        hi = float(edges[hi_idx + 1]) if q < 1.0 else float(edges[-1])
        lo = float(edges[lo_idx]) if q < 1.0 else float(edges[0])
        return lo, hi


def _fq_grid(values: Tensor, lo: float, hi: float, bits: int, symmetric: bool, signed: bool, narrow: bool) -> Tensor:
    s, z = choose_qparams(torch.tensor(lo), torch.tensor(hi), bits, symmetric, signed, narrow)
    qmin, qmax = qrange(bits, signed, narrow)
    q = torch.clamp(torch.round(values / s.double()) + float(z), qmin, qmax)
    return (q - float(z)) * s.double()


class MSEObserver(HistogramObserver):
    """Picks the clipping range minimising the expected squared quantisation error on the histogram.

    Candidates are the observed range shrunk by factors in ``[0.05, 1]``; every bin contributes
    ``count * (centre - fake_quant(centre))^2``.
    """

    def clip_range(self, bits: int, symmetric: bool, signed: bool, narrow_range: bool) -> tuple[float, float]:
        assert self.hist is not None
        edges = self._edges()
        centres = 0.5 * (edges[1:] + edges[:-1])
        best, best_err = (float(self.min_val or 0.0), float(self.max_val or 0.0)), float("inf")
        for lo, hi in self._candidates():
            err = float((self.hist * (centres - _fq_grid(centres, lo, hi, bits, symmetric, signed, narrow_range)) ** 2).sum())
            if err < best_err:
                best, best_err = (lo, hi), err
        return best


class EntropyObserver(HistogramObserver):
    """KL/entropy calibration: the clipping range minimising ``KL(P || Q)`` between the clipped histogram
    ``P`` (outliers folded into the edge bins) and its ``2**bits``-level quantised version ``Q`` (each
    level's mass spread evenly over the level's non-empty bins), as in TensorRT's entropy calibrator."""

    def clip_range(self, bits: int, symmetric: bool, signed: bool, narrow_range: bool) -> tuple[float, float]:
        assert self.hist is not None
        edges = self._edges()
        centres = 0.5 * (edges[1:] + edges[:-1])
        levels = 2**bits
        best, best_kl = (float(edges[0]), float(edges[-1])), float("inf")
        total = float(self.hist.sum())
        for lo, hi in self._candidates():
            keep = (centres >= lo) & (centres <= hi)
            idx = torch.nonzero(keep).reshape(-1)
            if idx.numel() < levels:
                continue
            a, b = int(idx[0]), int(idx[-1]) + 1
            p = self.hist[a:b].clone()
            p[0] += self.hist[:a].sum()
            p[-1] += self.hist[b:].sum()
            n = b - a
            level = (torch.arange(n) * levels) // n
            inner = self.hist[a:b]
            mass = torch.zeros(levels, dtype=p.dtype).index_add(0, level, inner)
            nz = torch.zeros(levels, dtype=p.dtype).index_add(0, level, (inner > 0).to(p.dtype))
            q = torch.where(inner > 0, mass[level] / nz[level].clamp(min=1), torch.zeros_like(inner))
            pn = p / total
            qn = q / q.sum().clamp(min=1e-12)
            mask = pn > 0
            kl = float((pn[mask] * torch.log(pn[mask] / qn[mask].clamp(min=1e-12))).sum())
            if kl < best_kl:
                best, best_kl = (float(edges[a]), float(edges[b])), kl
        return best


#: calibrator name -> observer factory ``(per_channel_axis, name) -> Observer``.
CALIBRATORS: dict[str, Callable[..., Observer]] = {
    "minmax": MinMaxObserver,
    "moving_average_minmax": MovingAverageMinMaxObserver,
    "percentile": PercentileObserver,
    "mse": MSEObserver,
    "entropy": EntropyObserver,
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
