"""Importance-criteria registry, BN-scale, first-order Taylor, filter attenuation, prune_(widths=)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from torchslim.pruning import ChannelPrune, PruneError, prune_
from torchslim.pruning.structured import build_groups
from torchslim.pruning.structured.importance import (
    ScoreContext,
    available,
    get_criterion,
    register_criterion,
)
from torchslim.pruning.structured.importance.attenuation import FilterAttenuation
from torchslim.pruning.structured.importance.taylor import taylor_scores

torch.set_num_threads(1)


def _net(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 3),
    )


def test_registry_lists_builtins_and_rejects_unknown() -> None:
    assert {"l1", "l2", "random", "bn_scale", "taylor", "hrank"} <= set(available())
    assert get_criterion("taylor").needs_data and not get_criterion("bn_scale").needs_data
    with pytest.raises(Exception, match="unknown importance 'nope'"):
        ChannelPrune(ratio=0.5, importance="nope")
    with pytest.raises(KeyError, match="known:"):
        get_criterion("nope")


def test_custom_criterion_through_registry() -> None:
    name = "test_reverse_index"
    if name not in available():
        register_criterion(name, lambda model, groups, ctx: [-torch.arange(g.channels, dtype=torch.float64)
                                                            for g in groups])
    with pytest.raises(ValueError, match="already registered"):
        register_criterion("l1", lambda m, g, c: [])
    m = _net()
    w = m[0].weight.detach().clone()
    prune_(m, ChannelPrune(ratio=0.5, importance=name), (torch.randn(1, 1, 8, 8),))
    assert torch.equal(m[0].weight, w[:4])  # exact: the lowest indices score highest


def test_bn_scale_keeps_largest_gamma() -> None:
    m = _net()
    gam = torch.tensor([0.1, -2.0, 0.3, 1.5, 0.05, -0.9, 0.2, 3.0])
    with torch.no_grad():
        m[1].weight.copy_(gam)
    prune_(m, ChannelPrune(ratio=0.5, importance="bn_scale"), (torch.randn(1, 1, 8, 8),))
    # exact: kept |gamma| are the 4 largest, in index order
    assert m[1].weight.tolist() == pytest.approx([-2.0, 1.5, -0.9, 3.0])


def test_taylor_matches_manual_reference() -> None:
    m = _net().eval()
    g = torch.Generator().manual_seed(0)
    batches = [(torch.randn(5, 1, 8, 8, generator=g), torch.randint(0, 3, (5,), generator=g)) for _ in range(2)]
    groups = [gr for gr in build_groups(m, (batches[0][0][:1],)) if gr.prunable]
    got = taylor_scores(m, groups, ScoreContext(data=batches))
    # reference: per batch, (sum over conv filter + conv bias + BN gamma + BN beta of grad * w)^2, summed
    ref = [torch.zeros(8, dtype=torch.float64), torch.zeros(6, dtype=torch.float64)]
    for x, y in batches:
        m.zero_grad()
        F.cross_entropy(m(x), y).backward()
        for gi, (conv, bn) in enumerate([(m[0], m[1]), (m[3], m[4])]):
            c = (conv.weight.grad * conv.weight).sum((1, 2, 3)) + conv.bias.grad * conv.bias
            c = c + bn.weight.grad * bn.weight + bn.bias.grad * bn.bias
            ref[gi] += c.detach().double() ** 2
    for a, b in zip(got, ref, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-12)  # metric: allclose, rtol 1e-5


def test_taylor_prunes_dead_channels_first_and_old_call_works() -> None:
    m = _net()
    with torch.no_grad():  # channels 2 and 5 are dead (output constant 0): Taylor score exactly 0
        for c in (2, 5):
            m[1].weight[c] = 0.0
            m[1].bias[c] = 0.0
    g = torch.Generator().manual_seed(0)
    data = [(torch.randn(8, 1, 8, 8, generator=g), torch.randint(0, 3, (8,), generator=g))]
    w = m[0].weight.detach().clone()
    r = prune_(m, ChannelPrune(ratio=0.25, importance="taylor"), (data[0][0][:1],), data=data)
    assert m[0].out_channels == 6
    kept = [i for i in range(8) if any(torch.equal(w[i], k) for k in m[0].weight)]
    assert 2 not in kept and 5 not in kept
    assert r.params_after < r.params_before
    # the old 3-argument call still works for data-free criteria
    prune_(_net(), ChannelPrune(ratio=0.5), (torch.randn(1, 1, 8, 8),))


def test_prune_widths_override_and_validation() -> None:
    m = _net()
    x = torch.randn(1, 1, 8, 8)
    with pytest.raises(PruneError, match="not a prunable group"):
        prune_(m, ChannelPrune(ratio=0.0), (x,), widths={"nope": 4})
    with pytest.raises(PruneError, match=r"must be in \[1, 8\]"):
        prune_(m, ChannelPrune(ratio=0.0), (x,), widths={"0": 9})
    prune_(m, ChannelPrune(ratio=0.0), (x,), widths={"0": 5})
    assert (m[0].out_channels, m[3].out_channels) == (5, 6)


def test_filter_attenuation_mechanics() -> None:
    """Weak channels (lowest L1) shrink by beta per step on producer weights/bias and BN affine; strong ones
    are untouched; prune() then removes exactly the attenuated channels. Metric: exact / allclose 1e-6."""
    m = _net()
    with torch.no_grad():
        m[0].weight.mul_(torch.tensor([1, 9, 1, 9, 9, 1, 9, 1.0]).view(8, 1, 1, 1))
    x = torch.randn(1, 1, 8, 8)
    att = FilterAttenuation(m, (x,), ratio=0.5, beta=0.5, include=["0"])
    before = {k: v.detach().clone() for k, v in m.state_dict().items()}
    att.on_train_start(None)  # type: ignore[arg-type]
    for s in range(3):
        att.on_step_end(None, s, 0.0)  # type: ignore[arg-type]
    weak = [0, 2, 5, 7]
    assert att.weak["0"].tolist() == weak
    f = torch.ones(8)
    f[weak] = 0.5 ** 3
    for key, shape in (("0.weight", (8, 1, 1, 1)), ("0.bias", (8,)), ("1.weight", (8,)), ("1.bias", (8,))):
        torch.testing.assert_close(m.state_dict()[key], before[key] * f.view(shape), rtol=1e-6, atol=0)
    assert torch.equal(m[3].weight, before["3.weight"])  # the other group is not attenuated
    assert att.returned == {"0": set()}
    strong = m[0].weight.detach()[[1, 3, 4, 6]].clone()
    att.prune()
    assert m[0].out_channels == 4 and torch.equal(m[0].weight, strong)


def test_filter_attenuation_lets_a_channel_come_back() -> None:
    m = _net()
    x = torch.randn(1, 1, 8, 8)
    att = FilterAttenuation(m, (x,), ratio=0.25, beta=0.9, include=["0"])
    att.on_train_start(None)  # type: ignore[arg-type]
    first = att.weak["0"].tolist()
    with torch.no_grad():  # "training" makes a weak filter strong again
        m[0].weight[first[0]] *= 100
    att.on_step_end(None, 0, 0.0)  # type: ignore[arg-type]
    assert first[0] not in att.weak["0"].tolist()
    assert first[0] in att.returned["0"]


def test_filter_attenuation_bad_args() -> None:
    with pytest.raises(ValueError, match="beta must be in"):
        FilterAttenuation(_net(), (torch.randn(1, 1, 8, 8),), ratio=0.5, beta=1.5)
    with pytest.raises(PruneError, match="needs data"):
        FilterAttenuation(_net(), (torch.randn(1, 1, 8, 8),), ratio=0.5, importance="hrank")
