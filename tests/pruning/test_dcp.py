"""DCP: greedy pick order, adaptive stopping rule, and that the pruned model keeps exactly the selected
channels (shapes, weights, function)."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from torchslim.core.errors import ConfigError
from torchslim.pruning.api import PruneError
from torchslim.pruning.dcp import (
    DCPConfig,
    adaptive_stop,
    dcp_layers,
    dcp_select_,
    greedy_pick,
    prune_selected_,
    select_channels_,
)
from torchslim.train import TrainConfig


def test_greedy_pick_hand_case() -> None:
    # column norms: ch0 sqrt(1+0)=1, ch1 sqrt(4+4)=2.83, ch2 3 -> 2 first, then 1, then 0
    g = torch.tensor([[1.0, 2.0, 3.0], [0.0, 2.0, 0.0]])
    sel = torch.zeros(3, dtype=torch.bool)
    picks = []
    for _ in range(3):
        j = greedy_pick(g, sel)
        sel[j] = True
        picks.append(j)
    assert picks == [2, 1, 0]
    with pytest.raises(ValueError, match="already selected"):
        greedy_pick(g, sel)


def test_first_pick_is_largest_hand_gradient_norm() -> None:
    """1x1 conv, reconstruction only. At A = {} the output is the bias b, so for L = mean((b - y)^2) over
    M elements, dL/dW[o, j] = (2/M) sum_{n,h,w} (b_o - y[n,o,h,w]) x[n,j,h,w]. Metric: relative error of
    the reported gradient norms vs this hand formula, tolerance 1e-5; the first pick must be their argmax."""
    torch.manual_seed(0)
    x = torch.randn(32, 4, 3, 3)
    w_true = torch.tensor([[0.1, -0.2, 2.0, 0.3], [0.0, 0.5, -1.0, 0.2]]).reshape(2, 4, 1, 1)
    y = torch.nn.functional.conv2d(x, w_true)
    layer = nn.Conv2d(4, 2, 1)
    assert layer.bias is not None
    b = layer.bias.detach()
    resid = b.view(1, 2, 1, 1) - y
    hand = torch.einsum("nohw,njhw->oj", resid, x) * 2 / y.numel()
    hand_norms = hand.norm(dim=0).double()
    sel = select_channels_(layer, x, y, torch.zeros(32, dtype=torch.long), None,
                           DCPConfig(steps_per_channel=0, final_steps=0), max_keep=2)
    assert torch.allclose(sel.first_grad_norms, hand_norms, rtol=1e-5, atol=1e-8)
    assert sel.order[0] == int(hand_norms.argmax()) == 2


def test_aux_loss_changes_the_gradient() -> None:
    """With an auxiliary classifier the selection gradient is that of MSE + aux_weight * CE (checked against
    autograd on the same loss built by hand, tolerance 1e-5)."""
    torch.manual_seed(1)
    x = torch.randn(16, 3)
    y = torch.randn(16, 2)
    labels = torch.randint(0, 2, (16,))
    layer = nn.Linear(3, 2)
    aux = nn.Linear(2, 2)
    w = torch.zeros(2, 3, requires_grad=True)
    loss = torch.nn.functional.mse_loss(x @ w.T + layer.bias.detach(), y)
    loss = loss + 0.7 * torch.nn.functional.cross_entropy(aux(x @ w.T + layer.bias.detach()), labels)
    (g,) = torch.autograd.grad(loss, w)
    sel = select_channels_(layer, x, y, labels, aux, DCPConfig(aux_weight=0.7, steps_per_channel=0,
                                                               final_steps=0), max_keep=1)
    assert torch.allclose(sel.first_grad_norms, g.norm(dim=0).double(), rtol=1e-5, atol=1e-7)


def test_adaptive_stop_rule() -> None:
    assert not adaptive_stop([5.0], 0.1)  # nothing to compare yet
    assert adaptive_stop([10.0, 6.0, 5.0], 0.1)  # (6-5)/10 = 0.1 <= 0.1
    assert not adaptive_stop([10.0, 6.0, 4.9], 0.1)  # 0.11 > 0.1
    assert adaptive_stop([0.0, 0.0], 0.0)  # nothing left to explain


def test_adaptive_stop_keeps_only_informative_channels() -> None:
    """y = 2 x0 + 3 x1 from 5 input features (x2..x4 irrelevant): the greedy selection adds x1, then x0; the
    third channel lowers the loss by ~0 -> the adaptive rule stops and drops it. The fixed rule at
    ratio 0.4 keeps n_keep(5, 0.4) = 3."""
    torch.manual_seed(0)
    x = torch.randn(256, 5)
    y = (2 * x[:, 0] + 3 * x[:, 1]).unsqueeze(1)
    labels = torch.zeros(256, dtype=torch.long)
    cfg = DCPConfig(stop="adaptive", tol=0.01, steps_per_channel=150, final_steps=50, lr=0.1, batch_size=256)
    lin = nn.Linear(5, 1)
    sel = select_channels_(lin, x, y, labels, None, cfg, max_keep=5)
    assert sel.order == [1, 0] and sel.stopped == "adaptive"
    assert len(sel.losses) == 4  # L0, after x1, after x0, after the dropped third channel
    assert torch.all(lin.weight[0, 2:] == 0)
    assert torch.allclose(lin.weight[0, :2], torch.tensor([2.0, 3.0]), atol=0.05)
    fixed = select_channels_(nn.Linear(5, 1), x, y, labels, None, cfg.model_copy(update={"stop": "fixed"}),
                             max_keep=3)
    assert len(fixed.order) == 3 and fixed.order[:2] == [1, 0] and fixed.stopped == "fixed"


def _w(m: nn.Module, i: int) -> torch.Tensor:
    """Weight of layer ``i`` of a Sequential (typed for mypy)."""
    w = m.get_submodule(str(i)).weight
    assert isinstance(w, torch.Tensor)
    return w


def _net() -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 3))


def test_pruned_model_keeps_selected_channels() -> None:
    """After selection the unselected consumer weights are zero; removing the channels keeps exactly the
    selected indices: shapes, weights (producer rows / consumer columns of the masked model) and outputs
    (max abs difference <= 1e-5) match."""
    torch.manual_seed(0)
    m = _net()
    x1 = (torch.randn(1, 1, 6, 6),)
    data = TensorDataset(torch.randn(48, 1, 6, 6), torch.randint(0, 3, (48,)))
    cfg = DCPConfig(ratio=0.5, aux_train=TrainConfig(epochs=1, batch_size=16), final_steps=3, calib_samples=48)
    res = dcp_select_(m, cfg, data, x1)
    assert res.widths == {"0": 4, "3": 4}  # groups named by producer: conv 0 (read by conv 3), conv 3 (by fc 8)
    masked = copy.deepcopy(m).eval()
    prune_selected_(m, x1, res.keep)
    m.eval()
    k0, k3 = res.keep["0"], res.keep["3"]
    assert m[0].out_channels == 4 and m[3].in_channels == 4 and m[3].out_channels == 4 and m[8].in_features == 4
    assert torch.equal(_w(m, 0), _w(masked, 0)[k0])
    assert torch.equal(_w(m, 3), _w(masked, 3)[k3][:, k0])
    assert torch.equal(_w(m, 8), _w(masked, 8)[:, k3])
    # consumers: unselected input columns were zero before removal
    dropped = torch.tensor([i for i in range(8) if i not in k0.tolist()])
    assert torch.all(_w(masked, 3)[:, dropped] == 0)
    xs = torch.randn(10, 1, 6, 6)
    with torch.no_grad():
        assert (m(xs) - masked(xs)).abs().max() <= 1e-5


def test_layers_and_bad_input() -> None:
    m = _net()
    x1 = (torch.randn(1, 1, 6, 6),)
    chosen, _ = dcp_layers(m, x1, DCPConfig())
    assert [(g.name, c) for g, c in chosen] == [("0", "3"), ("3", "8")]  # forward order, consumer paths
    chosen, skipped = dcp_layers(m, x1, DCPConfig(include=["0"]))
    assert [(g.name, c) for g, c in chosen] == [("0", "3")] and ("3", "not matched by include") in skipped
    with pytest.raises(ConfigError, match="ratio"):
        DCPConfig(ratio=1.0)
    with pytest.raises(PruneError, match="not a prunable group"):
        prune_selected_(m, x1, {"nope": torch.tensor([0])})
    with pytest.raises(PruneError, match="is empty"):
        prune_selected_(m, x1, {"0": torch.tensor([], dtype=torch.long)})
    with pytest.raises(PruneError, match="out of range for a group of 8"):
        prune_selected_(m, x1, {"0": torch.tensor([0, 9])})
