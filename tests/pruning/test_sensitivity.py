"""Per-group pruning sensitivity: only the analysed group is pruned; the model itself is untouched."""

from __future__ import annotations

import torch
from torch import nn

from torchslim.pruning import ChannelPrune
from torchslim.pruning.sensitivity import channel_sensitivity


def _model() -> nn.Sequential:
    torch.manual_seed(0)
    m = nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(),  # group "0": every channel matters
        nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),  # group "2": half of its channels are exactly zero
        nn.Flatten(), nn.Linear(8 * 6 * 6, 3),
    ).eval()
    with torch.no_grad():
        m[2].weight[4:] = 0
        m[2].bias[4:] = 0
    return m


def test_sensitivity_isolates_groups_and_leaves_the_model_alone():
    m = _model()
    x = torch.randn(32, 1, 6, 6)
    with torch.no_grad():
        ref = m(x)
    before = {k: v.clone() for k, v in m.state_dict().items()}

    def score(model: nn.Module) -> float:  # metric: negative MSE to the unpruned outputs
        with torch.no_grad():
            return -float(((model(x) - ref) ** 2).mean())

    base, sens = channel_sensitivity(m, ChannelPrune(ratio=0.5), (x[:1],), score)
    by = {s.group: s for s in sens}
    assert base == 0.0
    # removing the 4 all-zero channels (L1 keeps the non-zero ones) changes nothing: drop exactly 0
    zero_group = next(s for s in sens if s.drop == 0.0)
    assert zero_group.channels == 8 and zero_group.kept == 4
    # the other group loses real channels: a positive drop, and it is listed first
    assert sens[0].drop > 1e-6 and len(by) == 2
    assert all(torch.equal(v, m.state_dict()[k]) for k, v in before.items())
