"""DCP: greedy pick order, adaptive stopping rule, and that the pruned model keeps exactly the selected
channels (shapes, weights, function); groups with several consumers (residual streams): planned, pruned,
exported, and the shared pick / loss against hand computations. DKP: kernel greedy pick, kernel counts, persistent masks through
fine-tuning, loss not increased by the weight optimisation, kernel-sparse MACs."""

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
    DKPConfig,
    adaptive_stop,
    dcp_layers,
    dcp_select_,
    dkp_prune_,
    greedy_pick,
    greedy_pick_kernels,
    kernel_sparse_macs,
    prune_selected_,
    remove_kernel_masks_,
    select_channels_,
    select_kernels_,
    select_shared_channels_,
)
from torchslim.pruning.importance import n_keep
from torchslim.train import TrainConfig, Trainer


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
    assert [(g.name, c) for g, c in chosen] == [("0", ("3",)), ("3", ("8",))]  # forward order, consumer paths
    chosen, skipped = dcp_layers(m, x1, DCPConfig(include=["0"]))
    assert [(g.name, c) for g, c in chosen] == [("0", ("3",))] and ("3", "not matched by include") in skipped
    with pytest.raises(ConfigError, match="ratio"):
        DCPConfig(ratio=1.0)
    with pytest.raises(PruneError, match="not a prunable group"):
        prune_selected_(m, x1, {"nope": torch.tensor([0])})
    with pytest.raises(PruneError, match="is empty"):
        prune_selected_(m, x1, {"0": torch.tensor([], dtype=torch.long)})
    with pytest.raises(PruneError, match="out of range for a group of 8"):
        prune_selected_(m, x1, {"0": torch.tensor([0, 9])})


# ------------------------------------------------------------------------------------------------------
# DKP
# ------------------------------------------------------------------------------------------------------


def test_greedy_pick_kernels_hand_case() -> None:
    """Kernel norms of a [2, 2, 1, 2] gradient by hand: (0,0) 5, (0,1) 1, (1,0) 2.24, (1,1) 5 -> (0,0) and
    (1,1) tie at 5 (lower flat index first), then (1,0), then (0,1)."""
    g = torch.tensor([[[[3.0, 4.0]], [[1.0, 0.0]]], [[[1.0, 2.0]], [[0.0, 5.0]]]])
    sel = torch.zeros(2, 2, dtype=torch.bool)
    assert greedy_pick_kernels(g, sel, k=4) == [(0, 0), (1, 1), (1, 0), (0, 1)]
    sel[0, 0] = True
    assert greedy_pick_kernels(g, sel) == [(1, 1)]
    with pytest.raises(ValueError, match="already selected"):
        greedy_pick_kernels(g, torch.ones(2, 2, dtype=torch.bool))


def test_dkp_first_pick_is_argmax_of_hand_kernel_gradient_norms() -> None:
    """1x1 conv, reconstruction only: at A = {} the output is the bias, dL/dW[o, j] =
    (2/M) sum (b_o - y[n,o,h,w]) x[n,j,h,w] (hand formula). Metric: relative error of the reported kernel
    gradient norms vs the hand ones, tolerance 1e-5; the first greedy pick (one kernel per step) must be
    their argmax."""
    torch.manual_seed(0)
    x = torch.randn(32, 3, 3, 3)
    w_true = torch.tensor([[0.1, -0.2, 2.0], [1.5, 0.5, 0.0]]).reshape(2, 3, 1, 1)
    y = torch.nn.functional.conv2d(x, w_true)
    layer = nn.Conv2d(3, 2, 1)
    assert layer.bias is not None
    resid = layer.bias.detach().view(1, 2, 1, 1) - y
    hand = (torch.einsum("nohw,njhw->oj", resid, x) * 2 / y.numel()).abs().reshape(-1).double()
    cfg = DKPConfig(steps_per_pick=0, final_steps=0, kernels_per_step=1)
    sel = select_kernels_(layer, x, y, torch.zeros(32, dtype=torch.long), None, cfg, max_keep=2)
    assert torch.allclose(sel.first_grad_norms, hand, rtol=1e-5, atol=1e-8)
    assert sel.order[0] == int(hand.argmax())


def test_dkp_kernel_count_matches_target() -> None:
    """ratio 0.7 of a 6x4 conv (24 kernels) keeps n_keep(24, 0.7) = 8 kernels, in batches of
    kernels_per_step = 3 (3 + 3 + 2); the weight has exactly 8 nonzero kernels, those of ``order``."""
    torch.manual_seed(0)
    x = torch.randn(40, 4, 5, 5)
    conv = nn.Conv2d(4, 6, 3, padding=1)
    y = torch.randn(40, 6, 5, 5)
    k = n_keep(24, 0.7)
    sel = select_kernels_(conv, x, y, torch.zeros(40, dtype=torch.long), None,
                          DKPConfig(kernels_per_step=3, steps_per_pick=1, final_steps=2), max_keep=k)
    assert k == 8 and len(sel.order) == 8 and len(sel.losses) == 4 and sel.stopped == "fixed"
    nz = (conv.weight.detach().abs().sum(dim=(2, 3)) > 0).reshape(-1)
    assert sorted(torch.nonzero(nz).flatten().tolist()) == sorted(sel.order)


def test_dkp_optimisation_does_not_increase_loss() -> None:
    """Same selection (final_steps only runs after it), 0 vs 60 final SGD steps: the reconstruction loss of
    the selected kernels after optimisation <= before (metric: MSE on the calibration samples)."""
    torch.manual_seed(2)
    x = torch.randn(64, 3, 4, 4)
    y = torch.nn.functional.conv2d(x, torch.randn(4, 3, 3, 3), padding=1)
    labels = torch.zeros(64, dtype=torch.long)
    base = nn.Conv2d(3, 4, 3, padding=1, bias=False)
    losses = []
    orders = []
    for final in (0, 60):
        conv = copy.deepcopy(base)
        sel = select_kernels_(conv, x, y, labels, None,
                              DKPConfig(kernels_per_step=2, steps_per_pick=0, final_steps=final, lr=0.05,
                                        batch_size=64), max_keep=6)
        orders.append(sel.order)
        with torch.no_grad():
            losses.append(float(torch.nn.functional.mse_loss(conv(x), y)))
    assert orders[0] == orders[1]
    assert losses[1] <= losses[0] and losses[1] < 0.95 * losses[0]


def test_dkp_masks_persist_through_finetuning() -> None:
    """dkp_prune_ keeps n_keep(out*in, ratio) kernels per conv; after fine-tuning with SGD + momentum +
    weight decay the masked kernels are EXACTLY zero (effective and underlying weights); removing the masks
    leaves a plain state dict and the same outputs (max abs difference 0)."""
    torch.manual_seed(0)
    m = _net()
    x1 = (torch.randn(1, 1, 6, 6),)
    data = TensorDataset(torch.randn(48, 1, 6, 6), torch.randint(0, 3, (48,)))
    cfg = DKPConfig(ratio=0.75, aux_train=TrainConfig(epochs=1, batch_size=16), final_steps=3, calib_samples=48)
    res = dkp_prune_(m, cfg, data, x1)
    assert set(res.masks) == {"0", "3"}
    assert int(res.masks["0"].sum()) == n_keep(8, 0.75) and int(res.masks["3"].sum()) == n_keep(64, 0.75)
    assert abs(res.kernel_sparsity - (1 - (2 + 16) / 72)) < 1e-9
    Trainer(m, TrainConfig(epochs=2, batch_size=16, lr=0.1, momentum=0.9, weight_decay=1e-3),
            progress=False).fit(data)
    for path, mask in res.masks.items():
        conv = m.get_submodule(path)
        orig = conv.parametrizations.weight.original  # type: ignore[union-attr]
        assert isinstance(orig, torch.Tensor)
        assert torch.all(_w(m, int(path))[~mask] == 0) and torch.all(orig[~mask] == 0)
        assert torch.any(orig[mask] != 0)
    xs = torch.randn(5, 1, 6, 6)
    m.eval()
    with torch.no_grad():
        before = m(xs)
        remove_kernel_masks_(m)
        assert torch.equal(m(xs), before)
    assert "0.weight" in m.state_dict() and not any("parametrizations" in k for k in m.state_dict())
    dense, sparse = kernel_sparse_macs(m, x1)
    # conv0: 8 kernels x 9 x 36 px -> 2 kept; conv3: 64 kernels x 9 x 36 px -> 16 kept (hand count)
    assert dense - sparse == (8 - 2) * 9 * 36 + (64 - 16) * 9 * 36


def test_dkp_bad_input() -> None:
    m = _net()
    x1 = (torch.randn(1, 1, 6, 6),)
    data = TensorDataset(torch.randn(8, 1, 6, 6), torch.randint(0, 3, (8,)))
    with pytest.raises(ConfigError, match="not prunable convs"):
        dkp_prune_(m, DKPConfig(layer_ratios={"nope": 0.5}), data, x1)
    with pytest.raises(ConfigError, match=r"in \[0, 1\)"):
        dkp_prune_(m, DKPConfig(layer_ratios={"3": 1.5}), data, x1)
    with pytest.raises(ConfigError, match="groups=1"):
        select_kernels_(nn.Conv2d(2, 2, 1, groups=2), torch.randn(2, 2, 1, 1), torch.randn(2, 2, 1, 1),
                        torch.zeros(2, dtype=torch.long), None, DKPConfig(), 1)


# ------------------------------------------------------------------------------------------------------
# groups with several consumers (residual streams)
# ------------------------------------------------------------------------------------------------------


class _TinyRes(nn.Module):
    """stem conv-BN-ReLU, one residual block (conv-BN-ReLU-conv-BN + identity shortcut), then a conv
    that reads the stream: the stream group (producers stem + block conv2) has two consumers, the block's
    conv1 and ``head``."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, 8, 3, padding=1, bias=False)
        self.bn0 = nn.BatchNorm2d(8)
        self.conv1 = nn.Conv2d(8, 8, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(8)
        self.head = nn.Conv2d(8, 6, 3, padding=1)
        self.fc = nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn0(self.stem(x)))
        out = self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x)))))
        x = torch.relu(out + x)
        x = torch.relu(self.head(x))
        return self.fc(x.mean(dim=(2, 3)))


def test_residual_stream_group_is_selected_pruned_and_exported(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """The stream group is planned with both consumers (not skipped), pruned to n_keep(8, 0.5) = 4 with
    exactly the selected indices (consumer columns of the masked model), the pruned model computes the
    masked model's function (max abs difference <= 1e-5) and exports to ONNX (ORT output within 1e-4).
    With ``multi_consumer=False`` the group is skipped, as before."""
    import onnxruntime as ort

    from torchslim.export.onnx import export_onnx

    torch.manual_seed(0)
    m = _TinyRes()
    x1 = (torch.randn(1, 1, 6, 6),)
    chosen, skipped = dcp_layers(m, x1, DCPConfig())
    assert [(g.name, c) for g, c in chosen] == [("stem", ("conv1", "head")), ("conv1", ("conv2",)),
                                                 ("head", ("fc",))] and skipped == []
    _, old = dcp_layers(m, x1, DCPConfig(multi_consumer=False))
    assert old == [("stem", "read by 2 layers (multi_consumer=False)")]
    data = TensorDataset(torch.randn(48, 1, 6, 6), torch.randint(0, 3, (48,)))
    cfg = DCPConfig(ratio=0.5, aux_train=TrainConfig(epochs=1, batch_size=16), final_steps=3, calib_samples=48)
    res = dcp_select_(m, cfg, data, x1)
    assert res.widths == {"stem": 4, "conv1": 4, "head": 3} and res.skipped == []
    assert res.layers["stem"][0] == ("conv1", "head")
    keep = res.keep["stem"]
    dropped = [i for i in range(8) if i not in keep.tolist()]
    assert torch.all(m.conv1.weight[:, dropped] == 0) and torch.all(m.head.weight[:, dropped] == 0)
    masked = copy.deepcopy(m).eval()
    prune_selected_(m, x1, res.keep)
    m.eval()
    assert (m.stem.out_channels, m.conv2.out_channels, m.conv1.in_channels, m.head.in_channels) == (4, 4, 4, 4)
    assert torch.equal(m.stem.weight, masked.stem.weight[keep])
    assert torch.equal(m.head.weight, masked.head.weight[res.keep["head"]][:, keep])
    xs = torch.randn(10, 1, 6, 6)
    with torch.no_grad():
        assert (m(xs) - masked(xs)).abs().max() <= 1e-5
        ref = m(xs).numpy()
    path = export_onnx(m, xs[:1], tmp_path / "dcp_res.onnx")
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = sess.run(None, {"input": xs.numpy()})[0]
    assert abs(got - ref).max() <= 1e-4


def test_shared_pick_is_argmax_of_summed_hand_gradient_norms() -> None:
    """Two consumers of the same 3 channels, reconstruction only, no bias (so the output at A = {} is 0):
    a Linear with y_A = 3 x0 + 2.5 x2 and a 1x1 conv with y_B = 3 x1 + 2.5 x2. By hand
    dL/dW_k = -(2 / M_k) sum y_k x (M_k = elements of y_k); the channel score is
    sqrt(||G_A[:, j]||^2 + ||G_B[:, j]||^2). Metric: relative error of the reported scores vs the hand ones,
    tolerance 1e-5. Expected scores ~ (6, 6, 7.1): the shared pick is channel 2 (wanted by both), although
    each consumer alone picks its own channel (0 resp. 1)."""
    torch.manual_seed(0)
    xa = torch.randn(200, 3)
    xb = torch.randn(200, 3, 2, 2)
    ya = (3 * xa[:, 0] + 2.5 * xa[:, 2]).unsqueeze(1)
    yb = (3 * xb[:, 1] + 2.5 * xb[:, 2]).unsqueeze(1)
    lin, conv = nn.Linear(3, 1, bias=False), nn.Conv2d(3, 1, 1, bias=False)
    ga = -2 / ya.numel() * torch.einsum("no,nj->oj", ya, xa)
    gb = -2 / yb.numel() * torch.einsum("nohw,njhw->oj", yb, xb)
    hand = (ga.pow(2).sum(0) + gb.pow(2).sum(0)).sqrt().double()
    labels = torch.zeros(200, dtype=torch.long)
    cfg = DCPConfig(steps_per_channel=0, final_steps=0, batch_size=64)
    sel = select_shared_channels_([lin, conv], [xa, xb], [ya, yb], labels, [None, None], cfg, max_keep=1)
    assert torch.allclose(sel.first_grad_norms, hand, rtol=1e-5, atol=1e-8)
    assert sel.order == [2] == [int(hand.argmax())]
    alone_a = select_channels_(nn.Linear(3, 1, bias=False), xa, ya, labels, None, cfg, max_keep=1)
    alone_b = select_channels_(nn.Conv2d(3, 1, 1, bias=False), xb, yb, labels, None, cfg, max_keep=1)
    assert (alone_a.order, alone_b.order) == ([0], [1])
    assert torch.all(lin.weight[:, :2] == 0) and torch.all(conv.weight[:, :2] == 0)


def test_shared_loss_sums_mse_and_averages_aux_ce() -> None:
    """L = MSE_A + MSE_B + aux_weight * (CE_A + CE_B) / 2: the reported L_0 and channel scores match autograd
    on that loss built by hand (relative tolerance 1e-5)."""
    torch.manual_seed(3)
    xa, xb = torch.randn(32, 4), torch.randn(32, 4)
    ya, yb = torch.randn(32, 2), torch.randn(32, 3)
    labels = torch.randint(0, 2, (32,))
    la, lb = nn.Linear(4, 2), nn.Linear(4, 3)
    aa, ab = nn.Linear(2, 2), nn.Linear(3, 2)
    wa = torch.zeros(2, 4, requires_grad=True)
    wb = torch.zeros(3, 4, requires_grad=True)
    oa, ob = xa @ wa.T + la.bias.detach(), xb @ wb.T + lb.bias.detach()
    f = torch.nn.functional
    loss = f.mse_loss(oa, ya) + f.mse_loss(ob, yb) + 0.6 * (f.cross_entropy(aa(oa), labels)
                                                             + f.cross_entropy(ab(ob), labels)) / 2
    ga, gb = torch.autograd.grad(loss, (wa, wb))
    hand = (ga.pow(2).sum(0) + gb.pow(2).sum(0)).sqrt().double()
    sel = select_shared_channels_([la, lb], [xa, xb], [ya, yb], labels, [aa, ab],
                                  DCPConfig(aux_weight=0.6, steps_per_channel=0, final_steps=0), max_keep=1)
    l0 = float(loss.detach())
    assert abs(sel.losses[0] - l0) <= 1e-5 * l0
    assert torch.allclose(sel.first_grad_norms, hand, rtol=1e-5, atol=1e-7)
    with pytest.raises(ConfigError, match="same 4 channels"):
        select_shared_channels_([la, nn.Linear(3, 1)], [xa, torch.randn(32, 3)], [ya, torch.randn(32, 1)],
                                labels, [None, None], DCPConfig(), max_keep=1)
