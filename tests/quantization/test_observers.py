"""Observers: per-tensor and per-channel ranges, moving average, NaN/Inf guard."""

from __future__ import annotations

import pytest
import torch

from torchslim.core.errors import NumericalError
from torchslim.quantization.observers import MinMaxObserver, MovingAverageMinMaxObserver, make_observer


def test_minmax_per_tensor_tracks_global_range():
    """Running min/max equal the min/max of all batches seen (exact)."""
    obs = MinMaxObserver()
    a, b = torch.randn(4, 10), torch.randn(4, 10) * 3
    obs.update(a)
    obs.update(b)
    both = torch.cat([a, b])
    assert float(obs.min_val) == float(both.min()) and float(obs.max_val) == float(both.max())
    scale, zp = obs.qparams(8, symmetric=False, signed=False)
    torch.testing.assert_close(scale, (both.max() - both.min()) / 255)


def test_minmax_per_channel_values():
    """Per-channel (axis 1) ranges equal the per-channel reference (exact)."""
    x = torch.randn(6, 3, 5, 5)
    x[:, 1] += 10
    obs = MinMaxObserver(per_channel_axis=1)
    obs.update(x)
    ref_min = x.transpose(0, 1).reshape(3, -1).min(dim=1).values
    ref_max = x.transpose(0, 1).reshape(3, -1).max(dim=1).values
    assert torch.equal(obs.min_val, ref_min) and torch.equal(obs.max_val, ref_max)
    scale, zp = obs.qparams(8, symmetric=True, signed=True, narrow_range=True)
    torch.testing.assert_close(scale, torch.maximum(ref_min.abs(), ref_max.abs()) / 127)
    assert scale.shape == (3,) and (zp == 0).all()


def test_moving_average():
    """EMA with constant c: m1 = x1, m2 = m1 + c (x2 - m1) (allclose 1e-6)."""
    obs = MovingAverageMinMaxObserver(averaging_constant=0.5)
    obs.update(torch.tensor([0.0, 2.0]))
    obs.update(torch.tensor([-2.0, 4.0]))
    assert abs(float(obs.min_val) - (-1.0)) < 1e-6 and abs(float(obs.max_val) - 3.0) < 1e-6


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_raises(bad):
    """NaN/Inf in calibration data raise NumericalError naming the problem."""
    obs = make_observer("minmax", name="layer1")
    x = torch.randn(10)
    x[3] = bad
    with pytest.raises(NumericalError, match="NaN or Inf.*layer1"):
        obs.update(x)


def test_qparams_before_data_and_unknown_calibrator():
    """Asking for qparams before calibration, or an unknown calibrator, fails clearly."""
    with pytest.raises(RuntimeError, match="run calibration"):
        MinMaxObserver().qparams()
    with pytest.raises(ValueError, match="unknown calibrator 'kl'.*minmax"):
        make_observer("kl")
