"""HRank: exact feature-map ranks on constructed maps, and the paper's stability claim."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from torchslim.pruning import ChannelPrune, prune_
from torchslim.pruning.structured import build_groups
from torchslim.pruning.structured.importance import ScoreContext
from torchslim.pruning.structured.importance.hrank import feature_map_ranks, hrank_scores

torch.set_num_threads(1)


def _rank_r(n: int, h: int, w: int, r: int, g: torch.Generator) -> torch.Tensor:
    """n matrices h x w of rank exactly r (product of random h x r and r x w factors)."""
    return torch.randn(n, h, r, generator=g) @ torch.randn(n, r, w, generator=g)


def test_feature_map_ranks_exact_on_constructed_maps() -> None:
    g = torch.Generator().manual_seed(0)
    ranks = [0, 1, 3, 5, 8]
    maps = torch.stack([_rank_r(4, 8, 10, r, g) if r else torch.zeros(4, 8, 10) for r in ranks], dim=1)
    # metric: exact equality of the average rank per channel with the constructed rank
    assert feature_map_ranks(maps).tolist() == [float(r) for r in ranks]
    # mixed ranks within one channel average over the batch: (2 + 6) / 2
    mixed = torch.stack([_rank_r(1, 8, 8, 2, g)[0], _rank_r(1, 8, 8, 6, g)[0]])[:, None]
    assert feature_map_ranks(mixed).tolist() == [4.0]


def test_feature_map_ranks_rejects_non_4d() -> None:
    with pytest.raises(ValueError, match=r"\[N, C, H, W\]"):
        feature_map_ranks(torch.randn(4, 8))


def _known_rank_model() -> tuple[nn.Module, torch.Tensor]:
    """1x1 conv mapping input channels (full-rank x0 >= 0, rank-1 x1 >= 0) to outputs of rank 1, 8, 0, 8."""
    conv = nn.Conv2d(2, 4, 1, bias=False)
    with torch.no_grad():
        conv.weight.copy_(torch.tensor([[0.0, 1.0], [1.0, 0.0], [-1.0, 0.0], [1.0, 1.0]]).view(4, 2, 1, 1))
    model = nn.Sequential(conv, nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 3, 3)).eval()
    g = torch.Generator().manual_seed(1)
    x0 = torch.rand(6, 8, 8, generator=g) + 0.1                      # positive, full rank (a.s.)
    x1 = torch.rand(6, 8, 1, generator=g) @ torch.rand(6, 1, 8, generator=g)  # positive, rank 1
    return model, torch.stack([x0, x1], dim=1)


def test_hrank_scores_of_a_model_match_constructed_ranks() -> None:
    model, x = _known_rank_model()
    groups = [gr for gr in build_groups(model, (x[:1],)) if gr.prunable]
    (scores,) = hrank_scores(model, groups, ScoreContext(data=[x[:3], x[3:]]))
    # metric: exact average rank; channel 2 is relu(-x0) = 0 -> rank 0
    assert scores.tolist() == [1.0, 8.0, 0.0, 8.0]


def test_prune_with_hrank_keeps_highest_rank_channels_and_needs_data() -> None:
    model, x = _known_rank_model()
    ref_w = model[0].weight.detach().clone()
    with pytest.raises(Exception, match="needs calibration data"):
        prune_(model, ChannelPrune(ratio=0.5, importance="hrank"), (x[:1],))
    prune_(model, ChannelPrune(ratio=0.5, importance="hrank"), (x[:1],), data=[(x, torch.zeros(6))])
    # kept channels 1 and 3 (rank 8): exact weight equality with the original rows
    assert torch.equal(model[0].weight, ref_w[[1, 3]])
    assert model[3].in_channels == 2


@pytest.mark.slow  # uses the trained zoo ResNet: on a machine without its cache, first use trains it (~3 min)
def test_hrank_ranks_stable_across_batch_counts() -> None:
    """Paper claim (PAPERS #47): average ranks from few batches are stable. Metric: Pearson correlation
    of per-filter ranks from 1 batch vs 5 batches of 32 Fashion-MNIST test images, threshold 0.95."""
    from torchslim import data, zoo

    model = zoo.load("resnet-fmnist", progress=False).eval()
    ds = data.fashion_mnist("test")
    xs = ds.images[:160]
    groups = [gr for gr in build_groups(model, (xs[:1],)) if gr.prunable]
    one = torch.cat(hrank_scores(model, groups, ScoreContext(data=[xs[:32]])))
    five = torch.cat(hrank_scores(model, groups, ScoreContext(data=list(xs.split(32)))))
    r = torch.corrcoef(torch.stack([one, five]))[0, 1].item()
    assert r > 0.95, r
