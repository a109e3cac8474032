"""Hyper/hypo neuron pruning (Mitra & Franco 2020): activation frequency and neuron classes against a hand
count, physical FC-neuron removal against a hand-computed output, and selective adaptation."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from torchslim.pruning.api import PruneError
from torchslim.pruning.hyperhypo import (
    AdaptConfig,
    activation_frequency,
    adapt_neurons,
    adapt_then_finetune,
    classify_neurons,
    finetune_network,
    mean_activations,
    remove_neurons_,
    top_hyper_hypo,
)
from torchslim.train import TrainConfig


def _mlp() -> nn.Sequential:
    first = nn.Linear(1, 4)
    m = nn.Sequential(first, nn.ReLU(), nn.Linear(4, 3))
    with torch.no_grad():
        first.weight.copy_(torch.tensor([[1.0], [0.0], [1.0], [1.0]]))
        first.bias.copy_(torch.tensor([10.0, -1.0, 0.0, -0.75]))
    return m


def test_frequency_and_classes_match_hand_count() -> None:
    """Metric: fraction of samples with Linear output > 0, per neuron; reference: counting by hand on
    x = -1, -0.9, ..., 1 (21 values): neuron0 always (10 + x > 0), neuron1 never, neuron2 x > 0 (10/21),
    neuron3 x > 0.75 (2/21: 0.8, 0.9, 1.0 -> 3/21); exact."""
    m = _mlp()
    xs = torch.linspace(-1, 1, 21).reshape(-1, 1)
    f = activation_frequency(m, [xs[:10], (xs[10:], torch.zeros(11))])["0"]
    hand = [sum(1 for x in xs.flatten().tolist() if w * x + b > 0) / 21
            for w, b in ((1, 10), (0, -1), (1, 0), (1, -0.75))]
    assert f.tolist() == pytest.approx(hand, abs=1e-12)
    assert classify_neurons({"0": f}, hyper=0.95, hypo=0.2) == {"0": {"hyper": [0], "hypo": [1, 3]}}
    assert top_hyper_hypo({"0": f}, 1, 1) == {"0": [0, 1]}
    with pytest.raises(PruneError, match="at least one must stay"):
        top_hyper_hypo({"0": f}, 2, 2)


def test_removing_hypo_neuron_is_exact_and_others_keep_their_function() -> None:
    """Metric: max |output difference| after removal; reference: the original output minus the removed
    neurons' contribution W2[:, j] * relu(h_j) computed by hand (and, with mean compensation, plus
    W2[:, j] * mean_j); tolerance 1e-6."""
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(5, 6), nn.ReLU(), nn.Linear(6, 6), nn.ReLU(), nn.Linear(6, 3))
    x = torch.randn(40, 5)
    with torch.no_grad():
        m[0].bias[1] = -100.0  # type: ignore[index,operator]  # neuron 1 of layer 0: never active (hypo)
        ref = m(x)
    # hypo neuron: exact
    r = remove_neurons_(m, {"0": [1]}, (x[:1],))
    assert r == {"0": 5} and m[0].out_features == 5 and m[2].in_features == 5
    assert (m(x) - ref).abs().max() < 1e-6
    # an active neuron: the next layer loses exactly its contribution
    m2 = nn.Sequential(nn.Linear(5, 6), nn.ReLU(), nn.Linear(6, 2))
    with torch.no_grad():
        h = torch.relu(m2[0](x))  # type: ignore[operator]
        ref2 = m2(x)
        w = m2[2].weight.clone()  # type: ignore[operator]
    remove_neurons_(m2, {"0": [2, 4]}, (x[:1],))
    expect = ref2 - h[:, [2, 4]] @ w[:, [2, 4]].T
    assert (m2(x).detach() - expect).abs().max() < 1e-6
    # with mean compensation the removed neurons are replaced by their mean activation
    m3 = nn.Sequential(nn.Linear(5, 6), nn.ReLU(), nn.Linear(6, 2))
    with torch.no_grad():
        h3 = torch.relu(m3[0](x))  # type: ignore[operator]
        ref3 = m3(x)
        w3 = m3[2].weight.clone()  # type: ignore[operator]
    mean = mean_activations(m3, [x], ["0"])
    assert torch.allclose(mean["0"], h3.mean(0), atol=1e-6)
    remove_neurons_(m3, {"0": [0]}, (x[:1],), mean_activation=mean)
    expect3 = ref3 - (h3[:, [0]] - mean["0"][0]) @ w3[:, [0]].T
    assert (m3(x).detach() - expect3).abs().max() < 1e-5


def test_remove_rejects_output_layer_and_bad_index() -> None:
    m = _mlp()
    x = torch.zeros(1, 1)
    with pytest.raises(PruneError, match="cannot be pruned"):
        remove_neurons_(m, {"2": [0]}, (x,))
    with pytest.raises(PruneError, match="out of range"):
        remove_neurons_(m, {"0": [7]}, (x,))
    with pytest.raises(PruneError, match="not nn.Linear"):
        remove_neurons_(m, {"1": [0]}, (x,))


def test_adapt_only_selected_neurons_moves_only_them() -> None:
    """Metric: which parameter entries changed after entropy-minimisation adaptation; reference: only the
    rows (weights + bias) of the selected neurons of the selected layer (exact equality elsewhere)."""
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 3))
    before = {k: v.clone() for k, v in m.state_dict().items()}
    data = TensorDataset(torch.randn(64, 4), torch.zeros(64, dtype=torch.long))
    cfg = AdaptConfig(train=TrainConfig(epochs=2, batch_size=16, lr=0.5, schedule="constant"))
    adapt_neurons(m, data, cfg, neurons={"2": [1, 5]})
    after = {k: v.clone() for k, v in m.state_dict().items()}
    for k in before:
        if k.startswith("2."):
            changed = (after[k] != before[k]).reshape(after[k].shape[0], -1).any(1)
            assert changed.nonzero().flatten().tolist() == [1, 5], k
        else:
            assert torch.equal(after[k], before[k]), k
    assert all(p.requires_grad for p in m.parameters())
    # whole-layer adaptation moves every row of the layer
    adapt_neurons(m, data, cfg, layers=["0"])
    assert (m.state_dict()["0.weight"] != after["0.weight"]).any(1).all()


def test_hand_made_statistics_give_expected_sets() -> None:
    """Metric: hyper/hypo sets from activation frequencies; reference: a 2-hidden-layer net whose first
    layer is the identity on 4 hand-made inputs, so frequencies are counted by hand: x = rows of
    [[1, -1, 1, 0], [1, -1, 1, 0], [1, -1, -1, 0], [1, 1, -1, 0]] -> layer 0 neurons active on 4, 1, 2, 0
    of 4 samples; layer 2 (weights 1 on neuron 0, -1 on neuron 3, bias 0) -> its neuron 0 sees relu(x0) = 1
    (always active), neuron 1 sees -relu(x0) (never); exact."""
    l0, l2 = nn.Linear(4, 4), nn.Linear(4, 2)
    m = nn.Sequential(l0, nn.ReLU(), l2, nn.ReLU(), nn.Linear(2, 2))
    with torch.no_grad():
        l0.weight.copy_(torch.eye(4))
        l0.bias.zero_()
        l2.weight.copy_(torch.tensor([[1.0, 0, 0, 0], [-1.0, 0, 0, 0]]))
        l2.bias.zero_()
    x = torch.tensor([[1.0, -1, 1, 0], [1.0, -1, 1, 0], [1.0, -1, -1, 0], [1.0, 1, -1, 0]])
    f = activation_frequency(m, [x])
    assert f["0"].tolist() == [1.0, 0.25, 0.5, 0.0] and f["2"].tolist() == [1.0, 0.0]
    assert classify_neurons(f, hyper=0.95, hypo=0.25) == {"0": {"hyper": [0], "hypo": [1, 3]},
                                                          "2": {"hyper": [0], "hypo": [1]}}
    assert classify_neurons(f, hyper=0.5, hypo=0.0)["0"] == {"hyper": [0, 2], "hypo": [3]}  # bounds inclusive
    assert top_hyper_hypo({"0": f["0"]}, 1, 2) == {"0": [0, 1, 3]}


def test_selective_adaptation_freezes_batchnorm_statistics() -> None:
    """Metric: BatchNorm running statistics and non-selected parameters after adaptation; reference: the
    values before (exact); the selected rows do move."""
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 3))
    before = {k: v.clone() for k, v in m.state_dict().items()}
    data = TensorDataset(torch.randn(64, 4) * 3 + 1)
    cfg = AdaptConfig(train=TrainConfig(epochs=1, batch_size=16, lr=0.5, schedule="constant"))
    adapt_neurons(m, data, cfg, neurons={"3": [2]})
    after = m.state_dict()
    for k in before:
        if k.startswith("3."):
            assert (after[k] != before[k]).reshape(8, -1).any(1).nonzero().flatten().tolist() == [2], k
        else:
            assert torch.equal(after[k], before[k]), k
    assert m.training  # mode restored


def test_pseudo_label_step_matches_hand_gradient() -> None:
    """Metric: selected rows after one full-batch SGD step (no momentum) with the pseudo-label loss;
    reference: W - lr * grad of cross-entropy against the unadapted model's argmax, computed with autograd
    by hand and masked to the selected rows; tolerance 1e-6."""
    torch.manual_seed(0)
    a0, a2 = nn.Linear(3, 5), nn.Linear(5, 4)
    m = nn.Sequential(a0, nn.ReLU(), a2)
    x = torch.randn(32, 3)
    r0, r2 = nn.Linear(3, 5), nn.Linear(5, 4)
    ref = nn.Sequential(r0, nn.ReLU(), r2)
    ref.load_state_dict(m.state_dict())
    y = ref(x).argmax(1)
    torch.nn.functional.cross_entropy(ref(x), y).backward()
    lr = 0.3
    mask = torch.zeros(5, 1)
    mask[[1, 4]] = 1.0
    assert r0.weight.grad is not None and r0.bias.grad is not None
    want_w = r0.weight - lr * r0.weight.grad * mask
    want_b = r0.bias - lr * r0.bias.grad * mask[:, 0]
    cfg = AdaptConfig(train=TrainConfig(epochs=1, batch_size=32, lr=lr, momentum=0.0, schedule="constant"),
                      loss="pseudo_label")
    adapt_neurons(m, TensorDataset(x), cfg, neurons={"0": [1, 4]})
    assert (a0.weight - want_w).abs().max() < 1e-6 and (a0.bias - want_b).abs().max() < 1e-6
    assert torch.equal(a2.weight, r2.weight)


def test_adapt_then_finetune_moves_everything_and_restores_flags() -> None:
    """Metric: which parameters changed; reference: the selective stage alone changes only the selected
    rows (checked above), the full fine-tuning stage then changes every trainable parameter tensor; a
    parameter frozen by the user stays frozen and unchanged (exact)."""
    torch.manual_seed(0)
    last = nn.Linear(8, 3)
    m = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), last)
    last.bias.requires_grad_(False)
    before = {k: v.clone() for k, v in m.state_dict().items()}
    data = TensorDataset(torch.randn(64, 4))
    cfg = AdaptConfig(train=TrainConfig(epochs=1, batch_size=16, lr=0.2, schedule="constant"))
    adapt_then_finetune(m, data, {"2": [0]}, cfg, cfg)
    after = m.state_dict()
    assert all(not torch.equal(after[k], before[k]) for k in before if k != "4.bias")
    assert torch.equal(after["4.bias"], before["4.bias"])
    assert [p.requires_grad for p in m.parameters()] == [True] * 5 + [False]
    with pytest.raises(PruneError, match="empty"):
        finetune_network(m, TensorDataset(torch.zeros(0, 4)), cfg)
