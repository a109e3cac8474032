"""APQNN: quantisers, the redundancy criterion of discrete filters, size in bits, and the ratio search."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from torchslim.core.errors import ConfigError
from torchslim.pruning import ChannelPrune, PruneError, prune_
from torchslim.pruning.apqnn import (
    APQNNSearch,
    QAct,
    QConv2d,
    _SizeModel,
    binarize,
    dorefa_weight,
    filter_distances,
    prune_quantized_,
    quant_cnn,
    redundancy_keep,
    redundancy_scores,
    search_ratios,
    size_bits,
    uniform_widths,
    widths_for_direction,
)
from torchslim.pruning.importance import n_keep

X1 = (torch.zeros(1, 1, 8, 8),)


def _data(n: int = 64, seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 1, 8, 8, generator=g)
    y = torch.randint(0, 10, (n,), generator=g)
    return [(x[:32], y[:32]), (x[32:], y[32:])]


# ----------------------------------------------------------------------------------------------- quantisers
def test_binarize_values_and_clipped_ste() -> None:
    x = torch.tensor([-2.0, -0.5, 0.0, 0.5, 2.0], requires_grad=True)
    y = binarize(x)
    assert y.tolist() == [-1.0, -1.0, 1.0, 1.0, 1.0]
    y.sum().backward()
    assert x.grad is not None
    assert x.grad.tolist() == [0.0, 1.0, 1.0, 1.0, 0.0]  # exact: identity inside |x| <= 1, zero outside


def test_qconv_forward_equals_conv_with_sign_weights() -> None:
    torch.manual_seed(0)
    c = QConv2d(3, 4, 3, padding=1, bias=False, precision="binary")
    x = torch.randn(2, 3, 6, 6)
    ref = F.conv2d(x, torch.where(c.weight >= 0, 1.0, -1.0), padding=1)
    torch.testing.assert_close(c(x), ref, atol=1e-5, rtol=0)  # metric: max abs error, tol 1e-5 (float sums)


def test_dorefa_weight_levels_and_activation() -> None:
    w = dorefa_weight(torch.randn(1000, generator=torch.Generator().manual_seed(0)), bits=2)
    levels = sorted({round(v, 5) for v in w.tolist()})
    assert levels == [-1.0, -0.33333, 0.33333, 1.0]  # 2^2 levels of 2*q/3 - 1 (hand computed)
    a = QAct("dorefa", 2)(torch.tensor([-0.4, 0.1, 0.2, 0.9, 1.5]))
    torch.testing.assert_close(a, torch.tensor([0.0, 0.0, 1 / 3, 1.0, 1.0]), atol=1e-6, rtol=0)


def test_bad_precision_is_rejected() -> None:
    with pytest.raises(ConfigError, match="DoReFa bits"):
        QConv2d(1, 2, 3, precision="dorefa", bits=1)
    with pytest.raises(ConfigError, match="precision"):
        QAct("ternary")  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------ redundancy criterion
def test_distances_are_hamming_fractions_for_binary_filters() -> None:
    w = torch.tensor([[1.0, 1, 1, 1], [1, 1, -1, -1], [-1, -1, -1, -1]])
    # hand: filters 0/1 differ in 2 of 4 weights, 0/2 in 4 of 4, 1/2 in 2 of 4
    expect = torch.tensor([[0, 0.5, 1], [0.5, 0, 0.5], [1, 0.5, 0]], dtype=torch.float64)
    torch.testing.assert_close(filter_distances(w), expect, atol=1e-12, rtol=0)


def test_duplicate_filters_are_ranked_redundant_first() -> None:
    g = torch.Generator().manual_seed(3)
    w = torch.where(torch.randn(6, 2, 3, 3, generator=g) >= 0, 1.0, -1.0)
    w[4] = w[1]  # duplicate pair (1, 4)
    w[5] = w[2]  # duplicate pair (2, 5)
    s = redundancy_scores([w])
    # one copy of each duplicate pair goes first (the higher index on a tie), and only one copy
    assert set(torch.argsort(s)[:2].tolist()) == {4, 5}
    assert sorted(s.tolist()) == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]  # a permutation of ranks


def test_redundancy_ranking_matches_brute_force_elimination() -> None:
    # reference: the same greedy rule written as plain Python over the distance matrix
    g = torch.Generator().manual_seed(1)
    w = torch.where(torch.randn(7, 4, generator=g) >= 0, 1.0, -1.0)
    d = filter_distances(w).tolist()
    alive, order = list(range(7)), []
    while len(alive) > 1:
        def key(i: int) -> tuple[float, float, int]:
            return (min(d[i][j] for j in alive if j != i), sum(d[i][j] for j in alive), -i)
        i = min(alive, key=key)
        order.append(i)
        alive.remove(i)
    order += alive
    s = redundancy_scores([w])
    assert [int(s[i]) for i in order] == list(range(7))


def test_registered_criterion_prunes_duplicates_of_a_float_model() -> None:
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(1, 6, 3), nn.BatchNorm2d(6), nn.ReLU(), nn.Conv2d(6, 2, 3))
    w = m[0].weight
    assert isinstance(w, torch.Tensor)
    with torch.no_grad():
        w[3] = w[0] * 0.5  # same signs: a duplicate binary filter
        w[5] = w[1] * 2.0
    prune_(m, ChannelPrune(ratio=1 / 3, importance="apqnn_redundancy"), X1)
    conv = m[0]
    assert isinstance(conv, nn.Conv2d) and conv.out_channels == 4
    with torch.no_grad():
        signs = torch.where(conv.weight >= 0, 1.0, -1.0).reshape(4, -1)
    assert len({tuple(r.tolist()) for r in signs}) == 4  # no duplicate sign pattern left


def test_prune_quantized_removes_a_duplicate_binary_filter() -> None:
    torch.manual_seed(0)
    m = quant_cnn((4, 8, 8))
    q = m[3]
    assert isinstance(q, QConv2d)
    with torch.no_grad():
        q.weight[6] = q.weight[2] * 1.0  # duplicate binary filter of 2
    keep = redundancy_keep(m, X1, {"3": 7})
    assert keep["3"].tolist() == [0, 1, 2, 3, 4, 5, 7]
    r = prune_quantized_(m, X1, widths={"3": 7})
    assert isinstance(m[3], QConv2d) and m[3].out_channels == 7 and m[4].num_features == 7
    assert isinstance(m[6], QConv2d) and m[6].in_channels == 7 and isinstance(m[5], QAct)
    assert r.params_after < r.params_before
    assert m(torch.randn(2, 1, 8, 8)).shape == (2, 10)


def test_prune_quantized_rejects_unknown_group() -> None:
    m = quant_cnn((4, 8, 8))
    with pytest.raises(PruneError, match="not a prunable group"):
        prune_quantized_(m, X1, widths={"11": 3})
    assert m[3].out_channels == 8  # nothing modified


# ------------------------------------------------------------------------------------------- size in bits
def test_size_bits_hand_count() -> None:
    m = quant_cnn((4, 8, 8))
    # stem conv 36 x 32 + BN 8 x 32 + binary conv 288 x 1 + BN 16 x 32 + binary conv 576 x 1 + BN 16 x 32
    # + Linear (80 + 10) x 32
    assert size_bits(m) == 1152 + 256 + 288 + 512 + 576 + 512 + 2880
    d = quant_cnn((4, 8, 8), precision="dorefa", bits=2)
    assert size_bits(d) == 1152 + 256 + 576 + 512 + 1152 + 512 + 2880  # 2 bits per inner conv weight
    prune_quantized_(m, X1, widths={"0": 2, "3": 5, "6": 3})
    # stem 18 x 32, BN 4 x 32, conv 2*5*9 x 1, BN 10 x 32, conv 5*3*9 x 1, BN 6 x 32, Linear (30 + 10) x 32
    assert size_bits(m) == 576 + 128 + 90 + 320 + 135 + 192 + 1280


# ------------------------------------------------------------------------------------------------- search
def test_uniform_widths_is_the_smallest_uniform_ratio_in_budget() -> None:
    m = quant_cnn((8, 16, 16))
    sizes = _SizeModel(m, X1)
    budget = int(0.5 * size_bits(m))
    w = widths_for_direction(sizes, [1.0, 1.0, 1.0], budget, 0.9)
    assert w is not None and sizes.size(w) <= budget
    # brute force over a fine grid of the common ratio: the first fitting one gives the same widths
    for i in range(2001):
        cand = {n: n_keep(c, 0.9 * i / 2000) for n, c in sizes.channels.items()}
        if sizes.size(cand) <= budget:
            break
    assert cand == w
    assert uniform_widths(m, X1, 0.5, max_ratio=0.9) == w


def test_size_model_matches_physical_pruning() -> None:
    m = quant_cnn((6, 12, 10), precision="dorefa", bits=2)
    sizes = _SizeModel(m, X1)
    g = torch.Generator().manual_seed(0)
    for _ in range(5):
        w = {n: int(torch.randint(1, c + 1, (1,), generator=g)) for n, c in sizes.channels.items()}
        mm = quant_cnn((6, 12, 10), precision="dorefa", bits=2)
        prune_quantized_(mm, X1, widths={n: v for n, v in w.items() if v < sizes.channels[n]})
        assert sizes.size(w) == size_bits(mm)  # exact integer equality with the pruned model's count


def test_unreachable_direction_is_infeasible() -> None:
    m = quant_cnn((8, 16, 16))
    sizes = _SizeModel(m, X1)
    assert widths_for_direction(sizes, [1.0, 0.0, 0.0], int(0.2 * size_bits(m)), 0.9) is None


@pytest.mark.parametrize("sampler", ["gp", "random"])
def test_search_respects_the_budget(sampler: str) -> None:
    torch.manual_seed(0)
    m = quant_cnn((4, 8, 8))
    data = _data()
    cfg = APQNNSearch(size_ratio=0.5, n_trials=4, n_startup_trials=2, sampler=sampler)  # type: ignore[arg-type]
    r = search_ratios(m, cfg, X1, data, data)
    assert r.budget_bits == int(0.5 * size_bits(m))
    assert r.size_bits <= r.budget_bits
    for t in r.trials:
        if t["feasible"]:
            assert t["size_bits"] <= r.budget_bits
    assert any(t["feasible"] for t in r.trials)
    assert size_bits(m) == r.size_before  # the model itself is not modified
    assert set(r.widths) == {"0", "3", "6"}


def test_search_is_reproducible_with_a_seed() -> None:
    torch.manual_seed(0)
    m = quant_cnn((4, 8, 8))
    data = _data()
    cfg = APQNNSearch(size_ratio=0.5, n_trials=3, n_startup_trials=2, sampler="tpe", proxy_steps=2, seed=7)
    a = search_ratios(m, cfg, X1, data, data)
    b = search_ratios(m, cfg, X1, data, data)
    assert [t["direction"] for t in a.trials] == [t["direction"] for t in b.trials]
    assert [t["value"] for t in a.trials] == [t["value"] for t in b.trials]
    c = search_ratios(m, cfg.model_copy(update={"seed": 8}), X1, data, data)
    assert [t["direction"] for t in c.trials] != [t["direction"] for t in a.trials]


def test_search_bad_input() -> None:
    m = quant_cnn((4, 8, 8))
    with pytest.raises(ConfigError, match="size_ratio"):
        APQNNSearch(size_ratio=1.5)
    with pytest.raises(ConfigError, match="APQNNSearch"):
        search_ratios(m, ChannelPrune(ratio=0.5), X1, _data(), _data())  # type: ignore[arg-type]
    with pytest.raises(PruneError, match="empty"):
        search_ratios(m, APQNNSearch(size_ratio=0.5, n_trials=1), X1, [], _data())
