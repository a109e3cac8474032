"""PWLQ: grid mechanics, breakpoint search vs brute force, and lower MSE than uniform at equal bits."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from torchslim.quantization.formats import IntFormat, int_quantize
from torchslim.quantization.ptq import PWLQ, apply_pwlq, pwlq_quantize
from torchslim.quantization.ptq.pwlq import pwlq_error, pwlq_with_breakpoint, search_breakpoint

torch.set_num_threads(1)


def test_levels_of_4bit_grid() -> None:
    # mechanics (exact): 4-bit PWLQ on [-m, m] with breakpoint p has centre levels k p / 3 (|k| <= 3) and tail
    # levels +-(p + k (m - p) / 4) (k = 1..4): 15 distinct values, i.e. 1 region bit + sign + 2 magnitude bits
    m, p = 1.0, 0.3
    x = torch.linspace(-1, 1, 20001, dtype=torch.float64)[None, :]
    q = pwlq_with_breakpoint(x, torch.tensor([p], dtype=torch.float64), 4)
    vals = torch.unique(q.round(decimals=12))
    centre = [k * p / 3 for k in range(-3, 4)]
    tails = [s * (p + k * (m - p) / 4) for s in (-1, 1) for k in range(1, 5)]
    ref = torch.tensor(sorted(centre + tails), dtype=torch.float64)
    assert torch.allclose(vals, ref, atol=1e-12)
    with pytest.raises(ValueError, match="bits"):
        pwlq_quantize(torch.randn(4, 4), bits=2)


@pytest.mark.parametrize("bits", [3, 4, 5])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_search_matches_brute_force(bits: int, seed: int) -> None:
    # unit test (paper: p minimises the quantisation MSE): searched MSE within 0.1% of the minimum over a dense
    # grid of 20,000 breakpoints on small Laplace tensors (3 rows x 40 values)
    g = torch.Generator().manual_seed(seed)
    w = torch.sign(torch.randn(3, 40, generator=g, dtype=torch.float64)) * -torch.log(
        torch.rand(3, 40, generator=g, dtype=torch.float64)
    )
    p = search_breakpoint(w, bits)
    err = pwlq_error(w, p, bits)
    m = w.abs().amax(1)
    grid = m[:, None] * torch.linspace(0, 1, 20002, dtype=torch.float64)[1:-1][None, :]
    brute = pwlq_error(w, grid, bits).min(dim=1).values
    assert bool((err <= brute * (1 + 1e-3) + 1e-15).all()), (err, brute)


@pytest.mark.parametrize("bits", [3, 4])
def test_lower_mse_than_uniform_at_equal_bits(bits: int) -> None:
    # paper claim at small scale (metric: weight MSE, per channel, 32 x 288): b-bit PWLQ beats b-bit symmetric
    # uniform on [-m, m] (the paper's baseline; same 2^b - 1 levels, same storage) on Gaussian and Laplace
    # weights. Measured ratios at seed 0: 0.79-0.83 (Gaussian), 0.58-0.63 (Laplace).
    g = torch.Generator().manual_seed(0)
    gauss = torch.randn(32, 288, generator=g)
    laplace = torch.sign(torch.randn(32, 288, generator=g)) * -torch.log(torch.rand(32, 288, generator=g))
    for w in (gauss, laplace):
        e_pw = float(((pwlq_quantize(w, bits)[0] - w) ** 2).mean())
        e_sym = float(((int_quantize(w, IntFormat(bits), symmetric=True, axis=0) - w) ** 2).mean())
        assert e_pw < 0.9 * e_sym, (e_pw, e_sym)
    # heavy tails at 4 bits: PWLQ also beats asymmetric min-max (16 levels). Not asserted at 3 bits or for
    # Gaussian weights, where asymmetric min-max wins (see benchmarks/low_bit_weights.py).
    if bits == 4:
        e_pw = float(((pwlq_quantize(laplace, 4)[0] - laplace) ** 2).mean())
        e_asym = float(((int_quantize(laplace, IntFormat(4), symmetric=False, axis=0) - laplace) ** 2).mean())
        assert e_pw < e_asym, (e_pw, e_asym)


def test_apply_pwlq_in_place() -> None:
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(2, 8, 3), nn.Flatten(), nn.Linear(8 * 4 * 4, 5))
    ref = m[2].weight.detach().clone()
    rep = apply_pwlq(m, PWLQ(bits=4))
    assert set(rep) == {"0", "2"}
    # the in-place weights equal the pure function's output (exact), and SQNR is that of a 4-bit quantiser
    assert torch.allclose(m[2].weight, pwlq_quantize(ref, 4)[0])
    assert 15.0 < rep["2"]["sqnr_db"] < 40.0
    with pytest.raises(ValueError, match="NaN"):
        pwlq_quantize(torch.tensor([[1.0, float("inf")]]))
