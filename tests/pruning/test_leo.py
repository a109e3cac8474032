"""LEO lossless compression (Serra et al. 2020): stable-unit removal is exact over the input box.

Metrics: max abs difference between compressed and original outputs, computed in float64 (the surgery is
exact arithmetic; float32 rounding is not what is being tested), tolerance 1e-6.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from torchslim.core.errors import ConfigError, UnsupportedModelError
from torchslim.pruning.leo import (
    LosslessCompress,
    bounds_from_data,
    compress_lossless,
    interval_bounds,
    milp_bounds,
)

TOL = 1e-6


def _max_diff(a: nn.Module, b: nn.Module, x: torch.Tensor) -> float:
    with torch.no_grad():
        return float((a.double()(x.double()) - b.double()(x.double())).abs().max())


def _linear(w: list[list[float]], b: list[float]) -> nn.Linear:
    lin = nn.Linear(len(w[0]), len(w))
    with torch.no_grad():
        lin.weight.copy_(torch.tensor(w))
        lin.bias.copy_(torch.tensor(b))
    return lin


def _random_net(
    seed: int, sizes: tuple[int, ...] = (6, 12, 12, 8, 3), bias_shift: float = 0.7
) -> nn.Sequential:
    torch.manual_seed(seed)
    mods: list[nn.Module] = []
    for i in range(len(sizes) - 1):
        lin = nn.Linear(sizes[i], sizes[i + 1])
        with torch.no_grad():
            lin.bias.add_(bias_shift * torch.randn_like(lin.bias))
        mods += [lin, nn.ReLU()]
    return nn.Sequential(*mods[:-1])


def test_hand_built_always_off_and_always_on_units() -> None:
    # inputs in [0,1]^2. unit 0: x0 + x1 + 1 >= 1 (always on); unit 1: -x0 - 1 <= -1 (always off);
    # unit 2: x0 - x1 (changes sign).
    net = nn.Sequential(
        _linear([[1.0, 1.0], [-1.0, 0.0], [1.0, -1.0]], [1.0, -1.0, 0.0]),
        nn.ReLU(),
        _linear([[2.0, 5.0, 1.0], [-1.0, 3.0, 2.0]], [0.5, -0.5]),
    )
    new, rep = compress_lossless(net, LosslessCompress(lower=0.0, upper=1.0))
    (layer,) = rep.layers
    assert (layer.stably_inactive, layer.stably_active, layer.unstable) == (1, 1, 1)
    assert layer.kept_units == 2 and new[0].out_features == 2
    x = torch.rand(10_000, 2)
    assert _max_diff(new, net, x) <= TOL
    # interval bounds of the pre-activations, by hand
    (lo, hi), _ = interval_bounds(net, 0.0, 1.0)
    np.testing.assert_allclose(lo, [1.0, -2.0, -1.0])
    np.testing.assert_allclose(hi, [3.0, -1.0, 1.0])


def test_fully_stable_layer_is_folded_into_the_next() -> None:
    # every hidden unit is stably active on [0,1]^2 (or inactive): the ReLU layer disappears
    net = nn.Sequential(
        _linear([[1.0, 2.0], [0.5, -0.5], [-1.0, -1.0]], [0.0, 1.0, -3.0]),
        nn.ReLU(),
        _linear([[1.0, -2.0, 4.0]], [0.25]),
    )
    new, rep = compress_lossless(net, LosslessCompress())
    assert rep.layers[0].folded and rep.layers[0].kept_units == 0
    assert len(new) == 1 and isinstance(new[0], nn.Linear)
    # folded map: 1*(x0+2x1) - 2*(0.5x0-0.5x1+1) + 0.25 = 0*x0 + 3*x1 - 1.75
    np.testing.assert_allclose(new[0].weight.detach().numpy(), [[0.0, 3.0]], atol=1e-7)
    np.testing.assert_allclose(new[0].bias.detach().numpy(), [-1.75], atol=1e-7)
    assert _max_diff(new, net, torch.rand(10_000, 2)) <= TOL


def test_stably_active_units_reduced_to_their_rank() -> None:
    # 4 stably active units of a 2-input layer span a rank-2 row space -> replaced by 2 units
    w = [[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [2.0, -1.0], [1.0, -1.0]]
    b = [1.0, 1.0, 1.0, 2.0, 0.0]  # last unit (x0 - x1) is unstable
    net = nn.Sequential(_linear(w, b), nn.ReLU(), _linear([[1.0, -1.0, 2.0, 0.5, 3.0]] * 2, [0.0, 1.0]))
    new, rep = compress_lossless(net, LosslessCompress())
    assert rep.layers[0].stably_active == 4 and rep.layers[0].kept_units == 3
    assert _max_diff(new, net, torch.rand(10_000, 2)) <= TOL


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("method", ["interval", "milp"])
def test_random_networks_exact_on_the_box(seed: int, method: str) -> None:
    net = _random_net(seed)
    x = torch.rand(10_000, 6)
    cfg = LosslessCompress(lower=0.0, upper=1.0, method=method, time_limit_s=2.0)
    new, rep = compress_lossless(net, cfg, samples=x[:500])
    assert rep.units_removed > 0  # the bias shift makes stable units likely: the test must exercise surgery
    assert _max_diff(new, net, x) <= TOL
    # also exact at the corners of the box, where bounds are attained
    corners = torch.tensor(np.array(np.meshgrid(*[[0.0, 1.0]] * 6)).reshape(6, -1).T, dtype=torch.float32)
    assert _max_diff(new, net, corners) <= TOL
    assert rep.params_after < rep.params_before


def test_per_feature_box_from_data() -> None:
    net = _random_net(3, sizes=(5, 10, 10, 2))
    x = torch.randn(2000, 5) * torch.tensor([1.0, 0.1, 2.0, 0.5, 0.01])
    lo, hi = bounds_from_data(x)
    new, rep = compress_lossless(net, LosslessCompress(lower=lo, upper=hi))
    assert _max_diff(new, net, x) <= TOL
    u = torch.rand(10_000, 5) * (torch.tensor(hi) - torch.tensor(lo)) + torch.tensor(lo)
    assert _max_diff(new, net, u) <= TOL


@pytest.mark.parametrize("seed", [0, 1])
def test_milp_bounds_tighter_than_interval_and_sound(seed: int) -> None:
    net = _random_net(seed)
    cfg = LosslessCompress(method="milp", time_limit_s=2.0)
    mb = milp_bounds(net, cfg)  # no samples: every unit that is not stable by interval is solved
    ib = interval_bounds(net, 0.0, 1.0)
    x = torch.rand(20_000, 6, dtype=torch.float64)
    h = x
    tightened = 0.0
    lins = [m for m in net if isinstance(m, nn.Linear)]
    for k, ((li, ui), (lm, um)) in enumerate(zip(ib, mb, strict=True)):
        assert np.all(lm >= li) and np.all(um <= ui), f"layer {k}: MILP bounds looser than interval"
        lin = lins[k].double()
        z = lin(h).detach().numpy()
        # soundness: every sampled pre-activation lies inside the MILP bounds (float64; tolerance 1e-9)
        assert np.all(z >= lm[None] - 1e-9) and np.all(z <= um[None] + 1e-9), f"layer {k}: unsound"
        tightened += float(np.sum(ui - um) + np.sum(lm - li))
        h = torch.relu(torch.from_numpy(z))
    assert tightened > 0.1  # on these nets MILP strictly tightens the deeper layers' bounds


def test_milp_finds_at_least_as_many_stable_units_as_interval() -> None:
    for seed in range(3):
        net = _random_net(seed)
        _, ri = compress_lossless(net, LosslessCompress(method="interval"))
        _, rm = compress_lossless(net, LosslessCompress(method="milp"))
        si = sum(x.stably_inactive + x.stably_active for x in ri.layers)
        sm = sum(x.stably_inactive + x.stably_active for x in rm.layers)
        assert sm >= si


def test_l1_training_yields_more_removable_units_on_digits() -> None:
    """The paper's claim at small scale: an L1-regularised MLP has more stable (removable) units."""
    from sklearn.datasets import load_digits

    torch.set_num_threads(1)
    d = load_digits()
    x = torch.tensor(d.data / 16.0, dtype=torch.float32)  # pixels in [0, 1]: the box
    y = torch.tensor(d.target)
    removed = {}
    for l1 in (0.0, 1e-3):
        torch.manual_seed(0)
        net = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 10))
        opt = torch.optim.Adam(net.parameters(), lr=3e-3)
        g = torch.Generator().manual_seed(0)
        for _ in range(30):
            for idx in torch.randperm(len(x), generator=g).split(64):
                loss = nn.functional.cross_entropy(net(x[idx]), y[idx])
                loss = loss + l1 * sum(m.weight.abs().sum() for m in net if isinstance(m, nn.Linear))
                opt.zero_grad()
                loss.backward()
                opt.step()
        acc = float((net(x).argmax(1) == y).float().mean())
        assert acc > 0.9, f"l1={l1}: training failed (train accuracy {acc:.3f})"
        new, rep = compress_lossless(
            net, LosslessCompress(method="milp", time_limit_s=1.0, total_time_limit_s=5.0), samples=x
        )
        assert _max_diff(new, net, x) <= TOL
        assert _max_diff(new, net, torch.rand(10_000, 64)) <= TOL
        removed[l1] = rep.units_removed
    assert removed[1e-3] > removed[0.0], removed


@pytest.mark.parametrize("method", ["interval", "milp"])
def test_dead_first_layer_gives_a_constant_network(method: str) -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
    with torch.no_grad():
        net[0].bias.fill_(-10.0)  # every first-layer unit is off on [0,1]^3
    new, rep = compress_lossless(net, LosslessCompress(method=method))
    assert len(new) == 1 and rep.layers[0].stably_inactive == 4
    assert float(new[0].weight.detach().abs().max()) == 0.0  # the output does not depend on the input
    assert _max_diff(new, net, torch.rand(10_000, 3)) <= TOL


def test_bad_inputs_raise_clear_errors() -> None:
    with pytest.raises(ConfigError, match="time_limit_s"):
        LosslessCompress(time_limit_s=0)
    with pytest.raises(ConfigError, match="empty"):
        LosslessCompress(lower=1.0, upper=0.0)
    with pytest.raises(ConfigError, match="inputs"):
        compress_lossless(_random_net(0), LosslessCompress(lower=[0.0, 0.0], upper=[1.0, 1.0]))
    with pytest.raises(ConfigError, match="samples have 4 features"):
        compress_lossless(_random_net(0), LosslessCompress(), samples=torch.rand(5, 4))
    with pytest.raises(UnsupportedModelError, match="expected ReLU"):
        compress_lossless(nn.Sequential(nn.Linear(2, 2), nn.Tanh(), nn.Linear(2, 1)), LosslessCompress())
    with pytest.raises(UnsupportedModelError, match="Sequential"):
        compress_lossless(nn.Linear(2, 2), LosslessCompress())  # type: ignore[arg-type]
