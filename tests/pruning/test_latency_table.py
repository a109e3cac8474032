"""Latency table and width chooser (performance-aware pruning, PAPERS #45)."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from torchslim.pruning import ChannelPrune, PruneError, prune_
from torchslim.pruning.latency import LatencyTable, choose_widths, measure_table, plot_table

torch.set_num_threads(1)


def _synthetic() -> LatencyTable:
    # group "a": 16 is slower than 32 (non-monotonic), 48 slower than 64; group "b" monotonic
    return LatencyTable(
        entries={"a": {16: 3.0, 32: 2.0, 48: 5.0, 64: 4.5}, "b": {8: 1.0, 16: 2.0, 24: 3.0, 32: 4.0}},
        channels={"a": 64, "b": 32}, runtime="ort", input_shape=[1, 3, 8, 8],
    )


def test_frontier_drops_widths_slower_than_a_larger_one() -> None:
    t = _synthetic()
    assert t.frontier("a") == [32, 64] and t.non_monotonic("a") == [16, 48]
    assert t.frontier("b") == [8, 16, 24, 32] and t.non_monotonic("b") == []


def test_choose_widths_never_picks_dominated_widths_and_meets_budget() -> None:
    t = _synthetic()  # full estimate 4.5 + 4.0 = 8.5 ms
    for target in (8.0, 7.0, 6.0, 5.0, 4.0, 3.0):
        c = choose_widths(None, t, target_latency_ms=target, scores={})
        assert c.widths["a"] in (32, 64) and c.widths["b"] in (8, 16, 24, 32)
        est = t.latency("a", c.widths["a"]) + t.latency("b", c.widths["b"])
        assert est == pytest.approx(c.estimated_ms) and est <= target + 1e-9
    with pytest.raises(PruneError, match="budget"):
        choose_widths(None, t, target_latency_ms=2.5, scores={})


def test_choose_widths_greedy_by_importance_per_ms() -> None:
    t = _synthetic()
    # a's channels are all important (cost 32 units for 2.5 ms); b's lowest 8 channels are nearly useless
    scores = {"a": torch.ones(64), "b": torch.cat([torch.full((8,), 0.01), torch.ones(24)])}
    c = choose_widths(None, t, target_ratio=(8.5 - 1.0) / 8.5, scores=scores)
    assert c.widths == {"a": 64, "b": 24} and c.steps[0][:3] == ("b", 32, 24)
    # uniform importance, cost = fraction of the group's importance lost per ms saved:
    # a: 32/64 over 2.5 ms = 0.2/ms; b: 8/32 over 1 ms = 0.25/ms -> a first
    c2 = choose_widths(None, t, target_latency_ms=5.0, scores={})
    assert c2.steps[0][:3] == ("a", 64, 32)
    # min_width keeps b at >= 16 even if that makes the budget unreachable
    with pytest.raises(PruneError, match="budget"):
        choose_widths(None, t, target_latency_ms=3.5, scores={}, min_width=16)
    assert choose_widths(None, t, target_latency_ms=4.0, scores={}, min_width=16).widths == {"a": 32, "b": 16}
    with pytest.raises(ValueError, match="exactly one"):
        choose_widths(None, t, scores={})


def test_table_json_roundtrip(tmp_path) -> None:  # type: ignore[no-untyped-def]
    t = _synthetic()
    p = t.save(tmp_path / "t.json")
    t2 = LatencyTable.load(p)
    assert t2.entries == t.entries and t2.channels == t.channels and t2.input_shape == t.input_shape
    assert not list(tmp_path.glob("*.tmp*"))
    (tmp_path / "bad.json").write_text(json.dumps({"x": 1}))
    with pytest.raises(ValueError, match="not a latency table"):
        LatencyTable.load(tmp_path / "bad.json")
    assert plot_table(t, tmp_path / "t.png").stat().st_size > 0


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
                         nn.Conv2d(32, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 4)).eval()


@pytest.mark.parametrize("runtime", ["torch", "ort"])
def test_measure_table_and_prune_to_chosen_widths(tmp_path, runtime) -> None:  # type: ignore[no-untyped-def]
    m = _net()
    x = torch.randn(2, 3, 16, 16)
    cache = tmp_path / "lat.json"
    t = measure_table(m, (x,), runtime=runtime, step=8, repeats=3, cache=cache)
    assert set(t.entries) == {"0", "3"} and sorted(t.entries["0"]) == [8, 16, 24, 32]
    assert all(ms > 0 for row in t.entries.values() for ms in row.values())
    # cached: same key -> same object content without re-measuring (edit the file to prove it is read)
    d = json.loads(cache.read_text())
    d["entries"]["0"]["8"] = 123.0
    cache.write_text(json.dumps(d))
    assert measure_table(m, (x,), runtime=runtime, step=8, repeats=3, cache=cache).entries["0"][8] == 123.0
    fastest = sum(t.latency(g, min(t.frontier(g))) for g in t.entries)  # always reachable
    c = choose_widths(m, t, target_latency_ms=fastest + 1e-9)
    assert c.estimated_ms <= fastest + 1e-9
    assert all(w in t.frontier(g) for g, w in c.widths.items())
    ref = m(x)
    prune_(m, ChannelPrune(ratio=0.0), (x,), widths=c.widths)
    assert m[0].out_channels == c.widths["0"] and m(x).shape == ref.shape
