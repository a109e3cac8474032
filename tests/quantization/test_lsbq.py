"""LSQ-binary closed forms vs brute-force least squares, and the paper's error ordering."""

from __future__ import annotations

import itertools

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from torchslim.core.errors import ConfigError
from torchslim.quantization.binary import LSBQ, apply_lsbq, lsbq_fake_quantize, lsbq_quantize
from torchslim.quantization.binary.lsbq import binary_1bit, greedy_kbit, ls_2bit, ternary

torch.set_num_threads(1)


def _brute_2bit(x: torch.Tensor) -> float:
    """min over b1, b2 in {+-1}^n and a in R^2 of ||x - a1 b1 - a2 b2||^2 (lstsq per pattern)."""
    n = x.numel()
    signs = torch.tensor(list(itertools.product([-1.0, 1.0], repeat=n)), dtype=torch.float64)  # [2^n, n]
    b1 = signs[:, None, :].expand(-1, len(signs), -1).reshape(-1, n)
    b2 = signs[None, :, :].expand(len(signs), -1, -1).reshape(-1, n)
    basis = torch.stack([b1, b2], dim=2)  # [P, n, 2]
    gram = basis.transpose(1, 2) @ basis + 1e-12 * torch.eye(2, dtype=torch.float64)
    coef = torch.linalg.solve(gram, basis.transpose(1, 2) @ x[None, :, None])
    return float(((x[None, :, None] - basis @ coef) ** 2).sum(dim=(1, 2)).min())


def _brute_ternary(x: torch.Tensor) -> float:
    n = x.numel()
    t = torch.tensor(list(itertools.product([-1.0, 0.0, 1.0], repeat=n)), dtype=torch.float64)
    tt = (t * t).sum(1).clamp(min=1e-30)
    a = (t @ x) / tt
    return float(((x[None, :] - a[:, None] * t) ** 2).sum(1).min())


@settings(max_examples=25, deadline=None)
@given(n=st.integers(2, 7), seed=st.integers(0, 10_000), laplace=st.booleans())
def test_2bit_closed_form_equals_brute_force(n: int, seed: int, laplace: bool) -> None:
    # paper claim (optimality): closed-form 2-bit error == brute-force minimum (rel tol 1e-9)
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, generator=g, dtype=torch.float64)
    if laplace:
        x = torch.sign(x) * -torch.log(torch.rand(n, generator=g, dtype=torch.float64))
    xq, al = ls_2bit(x, per_channel=False)
    err = float(((x - xq) ** 2).sum())
    ref = _brute_2bit(x)
    assert err == pytest.approx(ref, rel=1e-9, abs=1e-12)
    # values are exactly a1 b1 + a2 b2 with a1 >= a2 >= 0
    a1, a2 = float(al[0, 0]), float(al[0, 1])
    assert a1 >= a2 >= 0
    lv = torch.tensor([a1 + a2, a1 - a2, -a1 + a2, -a1 - a2], dtype=torch.float64)
    assert bool(((xq[:, None] - lv[None, :]).abs().min(1).values < 1e-12).all())


@settings(max_examples=25, deadline=None)
@given(n=st.integers(1, 8), seed=st.integers(0, 10_000))
def test_ternary_and_1bit_closed_forms(n: int, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, generator=g, dtype=torch.float64)
    # ternary: error == brute force over all 3^n patterns with the LS scale (rel tol 1e-9)
    xt, _ = ternary(x, per_channel=False)
    assert float(((x - xt) ** 2).sum()) == pytest.approx(_brute_ternary(x), rel=1e-9, abs=1e-12)
    # 1-bit: alpha == mean|x| exactly, and it is the LS optimum for b = sign(x)
    xb, a = binary_1bit(x, per_channel=False)
    assert float(a[0]) == pytest.approx(float(x.abs().mean()), rel=1e-12)
    b = torch.where(x >= 0, 1.0, -1.0).to(x.dtype)
    assert float(a[0]) == pytest.approx(float(b @ x / n), rel=1e-12)


@pytest.mark.parametrize("dist", ["gaussian", "laplace"])
def test_error_ordering_ls2_greedy2_1bit(dist: str) -> None:
    # paper claim: MSE(LS-2bit) <= MSE(greedy-2bit) < MSE(1-bit), per channel on 64 x 576 tensors
    g = torch.Generator().manual_seed(0)
    w = torch.randn(64, 576, generator=g)
    if dist == "laplace":
        w = torch.sign(w) * -torch.log(torch.rand(64, 576, generator=g))
    mse = {s: float(((w - lsbq_quantize(w, s)) ** 2).mean()) for s in ("2bit", "1bit", "ternary")}
    mse["greedy"] = float(((w - greedy_kbit(w, 2)[0]) ** 2).mean())
    assert mse["2bit"] <= mse["greedy"] * (1 + 1e-6) < mse["1bit"]
    assert mse["ternary"] < mse["1bit"]


def test_per_channel_rows_independent_and_ste() -> None:
    # per-channel: each row equals the per-tensor result of that row alone (exact)
    w = torch.randn(4, 3, 3, 3)
    q = lsbq_quantize(w, "2bit")
    for i in range(4):
        assert torch.allclose(
            q[i], lsbq_quantize(w[i].reshape(-1), "2bit", per_channel=False).reshape(3, 3, 3)
        )
    # STE: gradient is the identity
    x = torch.randn(10, requires_grad=True)
    lsbq_fake_quantize(x, "1bit").sum().backward()
    assert x.grad is not None and torch.equal(x.grad, torch.ones(10))


def test_apply_lsbq_and_errors() -> None:
    m = nn.Sequential(nn.Conv2d(1, 4, 3), nn.Flatten(), nn.Linear(4 * 6 * 6, 3))
    ref = m[0].weight.detach().clone()
    rep = apply_lsbq(m, LSBQ(scheme="1bit"), filter_fn=lambda n, _m: n == "0")
    assert list(rep) == ["0"]
    # each output channel now holds exactly two values +-mean|w_c| (exact up to float rounding)
    for c in range(4):
        assert torch.allclose(m[0].weight[c].abs(), ref[c].abs().mean().expand(1, 3, 3))
    with pytest.raises(ValueError, match="no Conv2d/Linear"):
        apply_lsbq(m, LSBQ(), filter_fn=lambda n, _m: False)
    with pytest.raises(ConfigError):
        LSBQ(scheme="3bit")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="NaN"):
        lsbq_quantize(torch.tensor([1.0, float("nan")]))
