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


def _net() -> nn.Sequential:
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


# ------------------------------------------------------------------------------------------ end-to-end model
from torchslim.pruning.latency import (  # noqa: E402
    LatencyModel,
    fit_affine,
    fit_latency_model,
    fit_quality,
    random_widths,
    snap_widths,
)


def test_fit_affine_recovers_line_exactly_and_matches_lstsq_reference() -> None:
    # noise-free: y = 3.25 + 0.625 x must be recovered to 1e-9 (float64 least squares)
    xs = [1.0, 2.5, 4.0, 7.0, 11.0]
    a, b = fit_affine(xs, [3.25 + 0.625 * x for x in xs])
    assert abs(a - 3.25) < 1e-9 and abs(b - 0.625) < 1e-9
    # noisy: equals the closed-form simple-regression solution b = cov(x, y) / var(x), a = ybar - b xbar (1e-9)
    ys = [4.0, 4.1, 6.2, 7.1, 10.3]
    xbar, ybar = sum(xs) / 5, sum(ys) / 5
    b_ref = sum((x - xbar) * (y - ybar) for x, y in zip(xs, ys, strict=True)) / sum((x - xbar) ** 2 for x in xs)
    a2, b2 = fit_affine(xs, ys)
    assert abs(b2 - b_ref) < 1e-9 and abs(a2 - (ybar - b_ref * xbar)) < 1e-9
    with pytest.raises(ValueError, match="at least 2"):
        fit_affine([1.0], [1.0])
    with pytest.raises(ValueError, match="all x are equal"):
        fit_affine([2.0, 2.0, 2.0], [1.0, 2.0, 3.0])


def test_fit_quality_against_hand_values() -> None:
    y, p = [10.0, 20.0, 30.0, 40.0], [12.0, 18.0, 30.0, 44.0]
    q = fit_quality(y, p)
    # hand: SS_res = 4 + 4 + 0 + 16 = 24, SS_tot = 500 -> R^2 = 0.952; MAPE = (0.2 + 0.1 + 0 + 0.1) / 4 = 0.1
    assert q["r2"] == pytest.approx(1 - 24 / 500, abs=1e-12) and q["mape"] == pytest.approx(0.1, abs=1e-12)
    assert q["spearman"] == pytest.approx(1.0, abs=1e-12)
    # ties get average ranks: y ranks [0, 1.5, 1.5, 3, 4], p ranks [0, 3, 1.5, 1.5, 4]; centred (mean 2),
    # Pearson of the ranks = 7.25 / sqrt(9.5 * 9.5) (scipy.stats.spearmanr gives the same, 0.763158)
    ties_y, ties_p = [1.0, 2.0, 2.0, 3.0, 5.0], [1.0, 3.0, 2.0, 2.0, 4.0]
    assert fit_quality(ties_y, ties_p)["spearman"] == pytest.approx(7.25 / 9.5, abs=1e-12)


def test_latency_model_prediction_is_a_plus_b_times_table_sum() -> None:
    t = _synthetic()
    lm = LatencyModel(a=1.5, b=0.8)
    # hand: a at 32 -> 2.0 ms, b at 16 -> 2.0 ms; sum 4.0 -> 1.5 + 0.8 * 4.0 = 4.7
    assert t.estimate({"a": 32, "b": 16}) == 4.0
    assert lm.predict(t, {"a": 32, "b": 16}) == pytest.approx(4.7, abs=1e-12)
    assert lm.predict(t, {}) == pytest.approx(1.5 + 0.8 * 8.5, abs=1e-12)  # absent groups: full width
    assert lm.table_budget(4.7) == pytest.approx(4.0, abs=1e-12)
    with pytest.raises(KeyError, match="not in the latency table"):
        t.estimate({"zz": 4})
    with pytest.raises(KeyError, match="measured widths"):
        t.estimate({"a": 17})
    with pytest.raises(ValueError, match="slope"):
        LatencyModel(a=0.0, b=-1.0).table_budget(3.0)


def test_choose_widths_with_model_meets_budget_in_predicted_ms() -> None:
    t = _synthetic()
    lm = LatencyModel(a=2.0, b=0.5)  # end-to-end = 2 + 0.5 * sum; full = 6.25 ms
    for target in (6.0, 5.5, 5.0, 4.5, 4.0):
        c = choose_widths(None, t, target_latency_ms=target, scores={}, latency_model=lm)
        pred = 2.0 + 0.5 * (t.latency("a", c.widths["a"]) + t.latency("b", c.widths["b"]))
        assert c.predicted_ms == pytest.approx(pred, abs=1e-12) and pred <= target + 1e-9
        assert c.full_predicted_ms == pytest.approx(6.25) and c.budget_predicted_ms == target
        # same choice as the raw table budget (target - a) / b
        assert c.widths == choose_widths(None, t, target_latency_ms=(target - 2.0) / 0.5, scores={}).widths
    c = choose_widths(None, t, target_ratio=0.8, scores={}, latency_model=lm)
    assert c.budget_predicted_ms == pytest.approx(0.8 * 6.25) and c.predicted_ms is not None
    assert c.predicted_ms <= 0.8 * 6.25 + 1e-9
    with pytest.raises(PruneError, match="end-to-end budget"):  # fastest frontier: 2 + 0.5 * 3 = 3.5 ms
        choose_widths(None, t, target_latency_ms=3.4, scores={}, latency_model=lm)
    t.key = "tableA"
    with pytest.raises(ValueError, match="fitted for table"):
        choose_widths(None, t, target_latency_ms=5.0, scores={}, latency_model=LatencyModel(2.0, 0.5, table_key="B"))


def test_table_with_latency_model_roundtrip(tmp_path) -> None:  # type: ignore[no-untyped-def]
    t = _synthetic()
    t.latency_model = LatencyModel(a=1.25, b=0.75, fit_quality={"test": {"r2": 0.9, "mape": 0.05}},
                                   points=[{"widths": {"a": 32}, "table_ms": 6.0, "measured_ms": 5.8}],
                                   runtime="ort", threads=2, input_shape=[1, 3, 8, 8], table_key="k")
    t2 = LatencyTable.load(t.save(tmp_path / "t.json"))
    assert t2.latency_model == t.latency_model and t2.entries == t.entries
    assert not list(tmp_path.glob("*.tmp*"))
    assert LatencyTable.load(_synthetic().save(tmp_path / "n.json")).latency_model is None
    d = json.loads((tmp_path / "t.json").read_text())
    d["latency_model"] = {"b": 1.0}
    (tmp_path / "bad.json").write_text(json.dumps(d))
    with pytest.raises(ValueError, match="not a latency"):
        LatencyTable.load(tmp_path / "bad.json")


def test_snap_and_random_widths() -> None:
    t = _synthetic()  # frontier a: [32, 64]; b: [8, 16, 24, 32]
    assert snap_widths(t, {"a": 60, "b": 20}) == {"a": 32, "b": 16}
    assert snap_widths(t, {"a": 50, "b": 20}, mode="nearest") == {"a": 64, "b": 24}  # ties to the larger
    assert snap_widths(t, {"a": 10}) == {"a": 32, "b": 32}  # below the frontier: its smallest width
    assert snap_widths(t, {"b": 4}, min_width=16) == {"a": 64, "b": 16}
    ws = random_widths(t, 20, seed=1, min_width=16)
    assert len(ws) == 20 and ws[0] == {"a": 64, "b": 32}
    assert all(w["a"] in t.entries["a"] and w["b"] in (16, 24, 32) for w in ws)
    sums = [t.estimate(w) for w in ws]
    assert max(sums) - min(sums) >= 3.0  # spread over the latency range (full 8.5 ms), not one point
    assert random_widths(t, 5, seed=3) == random_widths(t, 5, seed=3)


def test_fit_latency_model_prunes_times_and_fits(monkeypatch, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """The pipeline on a real (tiny) model with the timer replaced by a known law: each pruned copy is run,
    and the latency 0.3 + 2 * table sum (+ a term on the test points only) must come back as a = 0.3, b = 2."""
    from torchslim.bench import latency as bench
    from torchslim.bench.latency import LatencyStats

    m = _net()
    x = torch.randn(2, 3, 16, 16)
    t = LatencyTable({"0": {8: 1.0, 16: 1.5, 24: 2.5, 32: 3.0}, "3": {8: 0.5, 16: 1.0}},
                     {"0": 32, "3": 16}, runtime="torch", input_shape=[2, 3, 16, 16], key="k1")
    assign = [{"0": 32, "3": 16}, {"0": 8, "3": 8}, {"0": 16, "3": 16}, {"0": 24, "3": 8},
              {"0": 8, "3": 16}, {"0": 32, "3": 8}]
    law = [0.3 + 2.0 * t.estimate(a) for a in assign]
    law[4] += 0.2  # a held-out point off the line: the test MAPE must see it
    ran: list[str] = []

    def fake_compare(calls, **kw):  # type: ignore[no-untyped-def]
        out = {}
        for name, fn in calls.items():
            y = fn()  # the pruned model really runs, at the example input
            assert y.shape == (2, 4)
            ran.append(name)
            ms = law[int(name)]
            out[name] = LatencyStats(name, ms, ms, ms, ms, 1)
        return out

    monkeypatch.setattr(bench, "compare", fake_compare)
    lm = fit_latency_model(m, t, (x,), assignments=assign, holdout=0.34)
    assert sorted(ran) == [str(i) for i in range(6)] and t.latency_model is lm
    assert abs(lm.a - 0.3) < 1e-9 and abs(lm.b - 2.0) < 1e-9  # fit on the first 4 points only
    assert lm.fit_quality["fit"]["r2"] == pytest.approx(1.0, abs=1e-12)
    # held out: point 4 sum 1.0 + 1.0 = 2.0 -> pred 4.3, measured 4.5; point 5 exact -> MAPE = (0.2 / 4.5) / 2
    assert lm.fit_quality["test"]["mape"] == pytest.approx(0.2 / 4.5 / 2, abs=1e-9)
    assert [p["split"] for p in lm.points] == ["fit"] * 4 + ["test"] * 2 and lm.table_key == "k1"
    with pytest.raises(ValueError, match="need >= 2"):
        fit_latency_model(m, t, (x,), assignments=assign[:3], holdout=0.34)
    with pytest.raises(KeyError, match="measured widths"):
        fit_latency_model(m, t, (x,), assignments=[{"0": 7}] * 4, holdout=0.5)


def test_frontier_tolerance_keeps_widths_within_noise() -> None:
    t = LatencyTable({"a": {8: 1.02, 16: 1.0, 24: 2.0, 32: 1.9}}, {"a": 32})
    assert t.frontier("a") == [16, 32]  # strict: 8 is 2% slower than 16, 24 5% slower than 32
    assert t.frontier("a", rel_tol=0.03) == [8, 16, 32]  # 2% is within a 3% tolerance, 5% is not
    assert t.frontier("a", rel_tol=0.06) == [8, 16, 24, 32]
    assert snap_widths(t, {"a": 12}, rel_tol=0.03) == {"a": 8} and snap_widths(t, {"a": 12}) == {"a": 16}
    with pytest.raises(ValueError, match="rel_tol"):
        t.frontier("a", rel_tol=-0.1)
