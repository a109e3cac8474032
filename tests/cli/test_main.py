"""The CLI: bad input fails before any work with a clear message; runs list/show read the store."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from torchslim.cli.main import app
from torchslim.reports.schema import StageMetrics

runner = CliRunner()


def test_help_lists_every_command():
    out = runner.invoke(app, ["--help"]).output
    for cmd in ("compress", "prune", "quantize", "distill", "export", "bench", "runs", "report"):
        assert cmd in out


def test_bad_recipe_fails_before_loading_the_model(tmp_path, monkeypatch):
    import torchslim.zoo as zoo

    def boom(*a, **k):
        raise AssertionError("the model must not be loaded for an invalid recipe")

    monkeypatch.setattr(zoo, "load", boom)
    bad = tmp_path / "bad.yaml"
    bad.write_text("stages:\n  - {type: channel_prune, ratio: 0.5, importanse: l1}\n")
    res = runner.invoke(app, ["compress", "--recipe", str(bad), "--runs-db", str(tmp_path / "r.db")])
    assert res.exit_code != 0
    assert "recipe.stages[0].importanse: unknown field" in str(res.exception) + res.output


def test_runs_list_and_show(tmp_path):
    from torchslim.reports.store import RunStore

    db = tmp_path / "runs.db"
    store = RunStore(db)
    rid = store.start_run("demo", {"stages": []}, {"batch": 64})
    store.record_stage(rid, 0, StageMetrics(name="original", accuracy=0.9, params=100, latency_ms_ort=2.0))
    store.finish_run(rid, "finished")
    out = runner.invoke(app, ["runs", "list", "--runs-db", str(db)])
    assert out.exit_code == 0 and "demo" in out.output and "finished" in out.output
    out = runner.invoke(app, ["runs", "show", str(rid), "--runs-db", str(db), "--json"])
    assert out.exit_code == 0 and '"original"' in out.output


@pytest.mark.parametrize("args", [["runs", "show", "999"], ["report", "999"]])
def test_unknown_run_is_a_clear_error(tmp_path, args):
    res = runner.invoke(app, [*args, "--runs-db", str(tmp_path / "r.db")])
    assert res.exit_code != 0
    assert "999" in str(res.exception) + res.output


def test_export_of_a_checkpoint_without_architecture_says_what_to_do(tmp_path):
    from torch import nn

    from torchslim.export.checkpoint import save_checkpoint

    model = nn.Sequential(nn.Conv2d(1, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 6 * 6, 3)).eval()
    ckpt = save_checkpoint(model, tmp_path / "ckpt", meta={"input_shape": [1, 8, 8]})
    out = tmp_path / "m.onnx"
    # a checkpoint without a zoo spec needs its architecture: the error says so and how
    res = runner.invoke(app, ["export", "--checkpoint", str(ckpt), "--output", str(out)])
    assert res.exit_code != 0 and not out.exists()
    assert "records no zoo spec" in str(res.exception) and "model=" in str(res.exception)


def test_export_command_on_a_zoo_checkpoint(tmp_path):
    from torchslim import zoo
    from torchslim.export.checkpoint import save_checkpoint

    model = zoo.build("resnet-fmnist").eval()
    ckpt = save_checkpoint(model, tmp_path / "ckpt", meta={"input_shape": [1, 28, 28]})
    out = tmp_path / "m.onnx"
    res = runner.invoke(app, ["export", "--checkpoint", str(ckpt), "--output", str(out), "--batch", "4"])
    assert res.exit_code == 0, res.output
    assert out.stat().st_size > 100_000
    # metric: max abs difference between PyTorch and ONNX Runtime outputs, reported by the parity check
    import json
    import re

    rep = json.loads(re.search(r"parity vs ONNX Runtime: (\{.*\})", res.output).group(1))
    assert rep["max_abs_diff"] < 1e-4 and rep["top1_agreement"] == 1.0


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["prune", "--ratio", "1.5"], "options.stages[0].ratio"),
        (["prune", "--method", "magic"], "magic"),
        (["quantize", "--method", "kl-div"], "allowed: minmax, percentile, mse, kl, zeroq, pwlq, multipoint"),
        (["quantize", "--activations", "int9"], "options.stages[0].activations"),
        (["quantize", "--weights", "int0"], "options.stages[0].weights"),
        (["quantize", "--weights", "int16"], "outside 1..8"),
        (["quantize", "--method", "pwlq", "--weights", "int2"], "options.stages[0].weights"),
        (["quantize", "--method", "pwlq", "--activations", "uint8"], "weights only"),
        (["quantize", "--budget", "size=lots"], "options.stages[0].budget"),
        (["quantize", "--budget", "0.5x", "--weights", "int4"], "budget go together"),
    ],
)
def test_prune_and_quantize_reject_bad_options_before_loading_anything(args, needle, tmp_path, monkeypatch):
    import torchslim.zoo as zoo

    def boom(*a, **k):
        raise AssertionError("nothing may be loaded for invalid options")

    monkeypatch.setattr(zoo, "load", boom)
    res = runner.invoke(app, [*args, "--runs-db", str(tmp_path / "r.db")])
    assert res.exit_code != 0
    assert needle in str(res.exception) + res.output


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        ({"method": "kl"}, {"type": "static_ptq", "calibrator": "entropy", "weights": "int8", "activations": "uint8"}),
        ({"method": "minmax", "weights": "int4"}, {"type": "lowbit_ptq", "weights": "int4", "data_free": False}),
        ({"method": "mse", "data_free": True}, {"type": "zeroq_ptq", "calibrator": "mse", "data_free": True}),
        ({"method": "zeroq"}, {"type": "zeroq_ptq", "calibrator": "minmax", "weights": "int8", "data_free": True}),
        ({"method": "minmax", "budget": "size=150KB"}, {"type": "mixed_precision", "weights": "mixed",
                                                        "budget": "size=150KB"}),
        ({"method": "pwlq"}, {"type": "pwlq_ptq", "weights": "int4"}),
        ({"method": "multipoint", "weights": "int3"}, {"type": "multipoint_ptq", "weights": "int3"}),
    ],
)
def test_quantize_options_map_to_recipe_stages(args, expected):
    """Every `torchslim quantize` option combination is one recipe stage (exact fields), which parses."""
    from torchslim.cli.main import quantize_stage
    from torchslim.pipeline import Recipe

    stage = quantize_stage(**args)
    assert {k: stage[k] for k in expected} == expected
    rec = Recipe.from_dict({"type": "recipe", "stages": [stage]})
    assert rec.stages[0].type_name == expected["type"]


def test_quantize_help_lists_methods_and_options():
    out = runner.invoke(app, ["quantize", "--help"], terminal_width=200).output
    for word in ("zeroq", "pwlq", "multipoint", "--data-free", "--budget", "size=150KB"):
        assert word in out


# ---------------------------------------------------------------------------------------------------
# torchslim prune: methods -> recipe stages; bad input before any work
# ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("args", "expected"),
    [
        ({}, [{"type": "channel_prune", "ratio": 0.5, "importance": "l1", "round_to": 16}, {"type": "hinton_kd"}]),
        ({"method": "taylor", "ratio": 0.3, "distill_epochs": 0}, [{"type": "channel_prune", "ratio": 0.3}]),
        ({"method": "l1", "macs": 0.5, "round_to": 8}, [{"type": "sensitivity_prune", "macs_ratio": 0.5,
                                                         "round_to": 8}, {"type": "hinton_kd"}]),
        ({"method": "knapsack", "distill": "inner"}, [{"type": "knapsack_prune", "macs_ratio": 0.5},
                                                      {"type": "inner_kd"}]),
        ({"method": "knapsack", "macs": 0.3, "exclude": ["fc"]}, [{"type": "knapsack_prune", "macs_ratio": 0.3,
                                                                    "exclude": ["fc"]}, {"type": "hinton_kd"}]),
        ({"method": "dcp", "ratio": 0.25, "distill_epochs": 0}, [{"type": "dcp_prune", "ratio": 0.25}]),
        ({"method": "npn", "sparsity": 2.0, "distill_epochs": 0}, [{"type": "npn_prune", "sparsity": 2.0,
                                                                   "round_to": 16}]),
    ],
)
def test_prune_options_map_to_recipe_stages(args, expected):
    """Every `torchslim prune` method is a recipe stage (exact fields) followed by the chosen distillation."""
    from torchslim.cli.main import prune_stages
    from torchslim.pipeline import Recipe

    stages = prune_stages(**args)
    assert [s["type"] for s in stages] == [e["type"] for e in expected]
    for s, e in zip(stages, expected, strict=True):
        assert {k: s[k] for k in e} == e
    rec = Recipe.from_dict({"type": "recipe", "stages": stages})
    assert [s.type_name for s in rec.stages] == [e["type"] for e in expected]


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--method", "knapsack", "--ratio", "0.5"], "use --macs"),
        (["--ratio", "0.5", "--macs", "0.5"], "not both"),
        (["--method", "knapsack", "--macs", "1.5"], "options.stages[0].macs_ratio"),
        (["--macs", "0"], "options.stages[0].macs_ratio"),
        (["--method", "dcp", "--ratio", "1.0"], "options.stages[0].ratio"),
        (["--ratio", "-0.2"], "options.stages[0].ratio"),
        (["--method", "npn", "--ratio", "0.5"], "--sparsity"),
        (["--distill", "magic"], "options.distill"),
    ],
)
def test_prune_rejects_bad_method_options_before_loading(args, needle, tmp_path, monkeypatch):
    import torchslim.zoo as zoo

    def boom(*a, **k):
        raise AssertionError("nothing may be loaded for invalid options")

    monkeypatch.setattr(zoo, "load", boom)
    res = runner.invoke(app, ["prune", *args, "--runs-db", str(tmp_path / "r.db")])
    assert res.exit_code != 0
    assert needle in str(res.exception) + res.output


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--exclude", "layer9.*"], "stages[0] (channel_prune).exclude: 'layer9.*' matches no layer"),
        (["--method", "knapsack", "--include", "nosuch"], "(knapsack_prune).include: 'nosuch' matches no layer"),
        (["--method", "dcp", "--exclude", "nosuch"], "(dcp_prune).exclude: 'nosuch'"),
        (["--method", "npn", "--include", "nosuch"], "(npn_prune).include: 'nosuch'"),
        (["--macs", "0.5", "--exclude", "nosuch"], "(sensitivity_prune).exclude: 'nosuch'"),
        (["--ratio", "0.9", "--round-to", "1", "--min-channels", "8"], "fewer than min_channels=8"),
        (["--method", "knapsack", "--macs", "0.0001"], "would remove whole groups"),
    ],
)
def test_prune_rejects_unknown_layers_and_group_emptying_ratios_before_any_work(args, needle, tmp_path,
                                                                                monkeypatch):
    """Checked against the model itself (an untrained zoo ResNet here), before the original is measured."""
    import torch

    import torchslim.zoo as zoo
    from torchslim import pipeline

    def tiny(name, **k):
        torch.manual_seed(0)
        return zoo.build(name)

    def boom(*a, **k):
        raise AssertionError("no work may start on bad input")

    monkeypatch.setattr(zoo, "load", tiny)
    monkeypatch.setattr(pipeline, "_measure_static", boom)
    res = runner.invoke(app, ["prune", *args, "--runs-db", str(tmp_path / "r.db"), "--work-dir", str(tmp_path / "w"),
                              "--no-progress"])
    assert res.exit_code != 0
    assert needle in str(res.exception) + res.output
    assert "AssertionError" not in repr(res.exception)


def test_prune_help_lists_the_new_methods():
    out = runner.invoke(app, ["prune", "--help"], terminal_width=200).output
    for word in ("knapsack", "dcp", "npn", "--macs", "--distill", "--exclude", "--min-channels"):
        assert word in out
