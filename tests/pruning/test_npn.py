"""NPN: gates scale the right channels, the sparsity loss, exact removal of gated-off filters, one-shot
keep decision, and that a larger sparsity weight removes more filters."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from torchslim.core.errors import ConfigError
from torchslim.distillation.taps import Taps
from torchslim.pruning.dcp import prune_selected_
from torchslim.pruning.npn import (
    GatedTarget,
    NPNConfig,
    PrunerNet,
    gate_keep,
    gate_layout,
    npn_train,
    sparsity_loss,
)
from torchslim.train import TrainConfig


def _net() -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                         nn.Conv2d(4, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 3))


def _randomise_bn(m: nn.Module) -> None:
    for mod in m.modules():
        if isinstance(mod, nn.BatchNorm2d):
            assert mod.running_mean is not None and mod.running_var is not None
            with torch.no_grad():
                mod.running_mean.uniform_(-0.5, 0.5)
                mod.running_var.uniform_(0.5, 2.0)
                mod.weight.uniform_(0.5, 1.5)
                mod.bias.uniform_(-0.2, 0.2)


def test_layout() -> None:
    m = _net()
    lay = gate_layout(m, (torch.randn(1, 1, 5, 5),))
    assert lay.groups == (("0", ("2",), 4), ("3", ("5",), 6))
    assert lay.total == 10 and lay.offsets == [0, 4]


def test_gates_multiply_the_right_channels() -> None:
    """Per-sample gates [N, 10]: the input of conv 3 (gated ReLU 2 output) must equal the ungated ReLU output
    times gates[n, c] for c in 0..3 (hand check, exact to 1e-6); ReLU 5's output times gates[n, 4 + c]."""
    torch.manual_seed(0)
    m = _net().eval()
    _randomise_bn(m)
    gt = GatedTarget(m, gate_layout(m, (torch.randn(1, 1, 5, 5),)))
    x = torch.randn(2, 1, 5, 5)
    gates = torch.rand(2, 10)
    with Taps(m, ["2", "5"]) as plain, torch.no_grad():
        m(x)
        r2, r5 = plain["2"].clone(), plain["5"].clone()
    with Taps(m, ["3", "6"], mode="input") as seen, torch.no_grad():
        gt(x, gates)
        in3, in6 = seen["3"], seen["6"]
    assert torch.allclose(in3, r2 * gates[:, :4, None, None], atol=1e-6)
    # ReLU 5 sees conv 3 of the GATED input, so recompute the reference from the gated stream
    with torch.no_grad():
        ref5 = m[5](m[4](m[3](in3)))
    assert torch.allclose(in6, ref5 * gates[:, 4:, None, None], atol=1e-6)
    assert not torch.allclose(ref5, r5)  # the first gates did change the second layer's input
    # hooks are gone after the call: the plain target is unchanged
    with torch.no_grad():
        assert torch.equal(m(x), m(x))
        assert len(m[2]._forward_hooks) == 0


def test_sparsity_loss_hand() -> None:
    g = torch.tensor([[0.2, 0.4, 1.0], [0.0, 0.6, 0.8]])
    # (0.2+0.4+1.0+0.0+0.6+0.8) / 6 = 0.5; times lambda 3 = 1.5
    assert abs(float(sparsity_loss(g, 3.0)) - 1.5) < 1e-6


def test_removing_zero_gated_filters_is_exact() -> None:
    """Binary gates (0 for filters 1, 3 of layer 0 and 0, 2, 5 of layer 3): the gated target and the target
    with those filters physically removed give the same outputs (max abs difference <= 1e-5)."""
    torch.manual_seed(0)
    m = _net().eval()
    _randomise_bn(m)
    x1 = (torch.randn(1, 1, 5, 5),)
    lay = gate_layout(m, x1)
    gates = torch.ones(10)
    off = torch.tensor([1, 3, 4 + 0, 4 + 2, 4 + 5])
    gates[off] = 0.0
    x = torch.randn(8, 1, 5, 5)
    with torch.no_grad():
        gated_out = GatedTarget(m, lay)(x, gates)
    keep = {name: torch.nonzero(g).flatten() for name, g in lay.split(gates).items()}
    pruned = copy.deepcopy(m)
    prune_selected_(pruned, x1, keep)
    assert pruned[0].out_channels == 2 and pruned[3].out_channels == 3 and pruned[8].in_features == 3
    with torch.no_grad():
        assert (pruned(x) - gated_out).abs().max() <= 1e-5
        assert (m(x) - gated_out).abs().max() > 1e-3  # gating really changed the function


def test_gate_keep_threshold_and_minimum() -> None:
    keep = gate_keep({"a": torch.tensor([0.1, 0.2, 0.05])}, 0.5, min_channels=2)
    assert keep["a"].tolist() == [0, 1]
    keep = gate_keep({"a": torch.tensor([0.5, 0.49, 0.9])}, 0.5)
    assert keep["a"].tolist() == [0, 2]


def test_gate_keep_rounds_up_to_multiples_and_caps_at_width() -> None:
    """round_to: 3 gates above threshold -> 4 kept (the next highest gate joins); never more than the width."""
    g = torch.tensor([0.9, 0.1, 0.6, 0.3, 0.7, 0.2])
    assert gate_keep({"a": g}, 0.5, round_to=4)["a"].tolist() == [0, 2, 3, 4]
    assert gate_keep({"a": g}, 0.5, round_to=8)["a"].tolist() == list(range(6))
    assert gate_keep({"a": g}, 0.5, round_to=3)["a"].tolist() == [0, 2, 4]


def test_pruner_shape_and_errors() -> None:
    m = _net()
    p = PrunerNet(m, 10, gate_init=3.0)
    g = p(torch.randn(3, 1, 5, 5))
    assert g.shape == (3, 10) and bool((g > 0.9).all())  # all gates start open (sigmoid(3) = 0.953)
    with pytest.raises(ConfigError, match="Linear"):
        PrunerNet(nn.Sequential(nn.Conv2d(1, 2, 1)), 2)
    with pytest.raises(ConfigError, match="expected 10 gates"):
        GatedTarget(m, gate_layout(m, (torch.randn(1, 1, 5, 5),)))(torch.randn(1, 1, 5, 5), torch.ones(3))


def test_larger_sparsity_weight_removes_more_filters() -> None:
    """Same data, seed and schedule: lambda = 20 closes every gate but the one kept per group
    (min_channels = 1, so 2 filters in all); lambda = 0 keeps more (random labels: the task loss alone keeps
    some filters open)."""
    torch.manual_seed(0)
    data = TensorDataset(torch.randn(64, 1, 5, 5), torch.randint(0, 3, (64,)))
    x1 = (torch.randn(1, 1, 5, 5),)
    widths = {}
    for lam in (0.0, 20.0):
        m = _net()
        cfg = NPNConfig(sparsity=lam, train=TrainConfig(epochs=4, batch_size=16, lr=0.1, schedule="constant",
                                                        optimizer="adamw", weight_decay=0.0))
        res = npn_train(m, cfg, data, x1)
        widths[lam] = sum(res.widths.values())
        assert set(res.ratios) == {"0", "3"}
    assert widths[20.0] == 2 and widths[0.0] > widths[20.0]
