"""The pipeline: recipe validation before any work, an end-to-end compress on a tiny model, resume."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from torchslim.core.errors import ConfigError
from torchslim.pipeline import Recipe, compress, load_recipe

DEMO = Path(__file__).resolve().parents[1] / "examples" / "recipes" / "demo.yaml"


def test_demo_recipe_parses_into_typed_stages():
    r = load_recipe(DEMO)
    assert [s.type_name for s in r.stages] == ["channel_prune", "hinton_kd", "static_ptq"]
    # round trip through the dict form keeps every field
    again = Recipe.from_dict(r.to_dict())
    assert again.to_dict() == r.to_dict()


def test_mixed_precision_recipe_parses():
    r = load_recipe(DEMO.parent / "mixed_precision.yaml")
    assert [s.type_name for s in r.stages] == ["mixed_precision"]
    assert r.stages[0].budget == "size=0.5x" and r.stages[0].weights == "mixed"
    assert Recipe.from_dict(r.to_dict()).to_dict() == r.to_dict()


@pytest.mark.parametrize(
    ("stage", "needle"),
    [
        ({"type": "channel_prune", "ratio": 0.5, "ratoi": 1}, "recipe.stages[0].ratoi: unknown field"),
        ({"type": "channel_prune", "ratio": "half"}, "recipe.stages[0].ratio"),
        ({"type": "channel_prune", "ratio": 1.5}, "recipe.stages[0].ratio"),
        ({"type": "no_such_stage"}, "unknown type 'no_such_stage'"),
        ({"type": "static_ptq", "activations": "int4"}, "recipe.stages[0].activations"),
        ({"type": "lowbit_ptq", "weights": "int9"}, "recipe.stages[0].weights: Value error, bit width 9 is outside 1..8"),
        ({"type": "zeroq_ptq", "activations": "uint0"}, "recipe.stages[0].activations"),
        ({"type": "mixed_precision"}, "budget go together"),
    ],
)
def test_bad_recipe_fails_before_work_naming_the_field(stage, needle):
    with pytest.raises(ConfigError) as e:
        Recipe.from_dict({"type": "recipe", "stages": [stage]})
    assert needle in str(e.value)


def test_recipe_file_errors(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_recipe(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("stages: [ {type: channel_prune, ratio: 0.5\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_recipe(bad)
    empty = tmp_path / "empty.yaml"
    empty.write_text("stages: []\n")
    with pytest.raises(ConfigError, match="non-empty list of stages"):
        load_recipe(empty)


class TinyNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 64, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.conv2 = nn.Conv2d(64, 64, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(64)
        self.pool = nn.AdaptiveAvgPool2d(4)
        self.fc = nn.Linear(64 * 16, 10)

    def forward(self, x):
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.bn2(self.conv2(x)) + x)
        return self.fc(torch.flatten(self.pool(x), 1))


def _digits(split: str):
    from torchslim.data import digits

    ds = digits()
    x, y = ds.tensors
    x = x.float()
    n = 1400
    sl = slice(0, n) if split == "train" else slice(n, None)
    return torch.utils.data.TensorDataset(x[sl], y[sl])


@pytest.fixture
def tiny_setup(tmp_path):
    from torchslim.train import TrainConfig, Trainer

    torch.manual_seed(0)
    model = TinyNet()
    train, test = _digits("train"), _digits("test")
    Trainer(model, TrainConfig(epochs=4, lr=0.05, batch_size=64), progress=False).fit(train)
    recipe = Recipe.from_dict(
        {
            "type": "recipe",
            "latency_batch": 16,
            "latency_repeats": 3,
            "threads": 1,
            "stages": [
                {"type": "channel_prune", "ratio": 0.5, "round_to": 16},
                {"type": "hinton_kd", "train": {"epochs": 1, "lr": 0.02, "batch_size": 64}},
                {"type": "static_ptq", "num_calibration": 128},
            ],
        }
    )
    return model, train, test, recipe


def test_compress_end_to_end_on_a_tiny_model(tiny_setup, tmp_path):
    from torchslim.reports.store import RunStore

    model, train, test, recipe = tiny_setup
    store = RunStore(tmp_path / "runs.db")
    r = compress(model, recipe, data=train, eval_data=test, work_dir=tmp_path / "work", report_dir=tmp_path / "rep",
                 store=store, progress=False)
    names = [s.name for s in r.report.stages]
    assert names == ["original", "1. channel_prune", "2. hinton_kd", "3. static_ptq"]
    orig, pruned, kd, q = r.report.stages
    # pruning physically removed channels: fewer params and MACs (64 -> 32 channels: ~4x fewer conv2 MACs)
    assert pruned.params < 0.5 * orig.params and pruned.macs < 0.4 * orig.macs
    # per-group sensitivity (accuracy drop with only that group pruned) was measured before pruning
    assert set(pruned.extra["sensitivity"]) == set(pruned.extra["kept_channels"])
    # int8 artifact is smaller on disk than the FP32 one of the same structure (>= 2.5x for int8 weights)
    assert q.size_bytes * 2.5 < kd.size_bytes
    # accuracy: digits are easy; distillation recovers to within 5 points of the original (metric: top-1)
    assert orig.accuracy > 0.85
    assert kd.accuracy > orig.accuracy - 0.05
    assert q.accuracy > kd.accuracy - 0.03
    # every stage has latencies in ORT; PyTorch latency for the float stages
    assert all(s.latency_ms_ort and s.latency_ms_ort > 0 for s in r.report.stages)
    assert q.latency_ms_torch is None and orig.latency_ms_torch > 0
    # parity between the simulated int8 model and ONNX Runtime is recorded
    assert q.extra["parity"]["top1_agreement"] >= 0.95
    for f in ("report.md", "report.html", "report.json"):
        assert (tmp_path / "rep" / f).stat().st_size > 100
    row, stored = store.get_run(r.run_id)
    assert row.status == "finished" and [s.name for s in stored.stages] == names
    # export: the final ONNX, the checkpoint (recording the per-sample input shape) and the report
    from torchslim.export.checkpoint import read_structure

    paths = r.export(tmp_path / "exp")
    assert paths["onnx"].read_bytes() == r.onnx_path.read_bytes()
    assert read_structure(paths["checkpoint"])["meta"]["input_shape"] == [1, 8, 8]


def test_interrupted_compress_resumes_from_last_finished_stage(tiny_setup, tmp_path, monkeypatch):
    from torchslim import pipeline
    from torchslim.reports.store import RunStore

    model, train, test, recipe = tiny_setup
    store = RunStore(tmp_path / "runs.db")
    pristine = {k: v.clone() for k, v in model.state_dict().items()}

    calls: list[str] = []
    real = pipeline._measure_static

    def interrupt_after_prune(name, ctx, *a, **k):
        calls.append(name)
        if name.startswith("2."):
            raise KeyboardInterrupt  # Ctrl-C during the distillation stage's measurement
        return real(name, ctx, *a, **k)

    monkeypatch.setattr(pipeline, "_measure_static", interrupt_after_prune)
    with pytest.raises(KeyboardInterrupt):
        compress(model, recipe, data=train, eval_data=test, work_dir=tmp_path / "w", store=store, progress=False)
    (row,) = store.list_runs()
    assert row.status == "interrupted"
    assert [s.name for s in store.completed_stages(row.id)] == ["original", "1. channel_prune"]

    monkeypatch.setattr(pipeline, "_measure_static", real)
    fresh = TinyNet()
    fresh.load_state_dict(pristine)
    r = compress(fresh, recipe, data=train, eval_data=test, store=store, resume=True, progress=False)
    assert r.run_id == row.id
    assert [s.name for s in r.report.stages][-1] == "3. static_ptq"
    assert store.get_run(row.id)[0].status == "finished"


def test_data_driven_pruning_criterion_gets_calibration_batches(tiny_setup, tmp_path):
    model, train, test, _ = tiny_setup
    recipe = Recipe.from_dict(
        {"type": "recipe", "latency_batch": 8, "latency_repeats": 3, "threads": 1,
         "stages": [{"type": "channel_prune", "ratio": 0.5, "importance": "hrank", "round_to": 8}]}
    )
    r = compress(model, recipe, data=train, eval_data=test, work_dir=tmp_path / "w", progress=False)
    # 64 -> 32 channels in the coupled group (metric: exact counts recorded by the stage)
    kept = r.report.stages[1].extra["kept_channels"]
    assert any(v == [64, 32] for v in kept.values())


def test_finetune_stage_trains_and_records_steps(tiny_setup, tmp_path):
    model, train, test, _ = tiny_setup
    recipe = Recipe.from_dict(
        {"type": "recipe", "latency_batch": 8, "latency_repeats": 3, "threads": 1,
         "stages": [{"type": "finetune", "train": {"epochs": 1, "lr": 0.01, "batch_size": 64}}]}
    )
    r = compress(model, recipe, data=train, eval_data=test, work_dir=tmp_path / "w", progress=False)
    ft = r.report.stages[1]
    assert ft.extra["train_steps"] == -(-len(train) // 64)  # one epoch of ceil(N / 64) steps
    # metric: top-1 on held-out digits; a low-lr epoch keeps the model within 3 points
    assert ft.accuracy > r.report.stages[0].accuracy - 0.03


def test_transformer_prune_stages_are_registered_and_shrink_a_bert():
    transformers = pytest.importorskip("transformers")
    from torchslim.core.registry import STAGES
    from torchslim.pipeline import PipelineContext

    r = Recipe.from_dict({"type": "recipe", "stages": [{"type": "head_prune", "ratio": 0.5},
                                                       {"type": "ffn_prune", "ratio": 0.5}]})
    cfg = transformers.BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                  intermediate_size=64, vocab_size=100)
    torch.manual_seed(0)
    m = transformers.BertModel(cfg).eval()
    ids = torch.zeros(1, 8, dtype=torch.long)
    ctx = PipelineContext(model=m, original=m, train_data=None, eval_data=None, example_input=ids,
                          work_dir=Path("unused"))
    for stage in r.stages:
        STAGES.resolve(stage)(stage, ctx)
    # exact counts: 4 -> 2 heads and 64 -> 32 FFN neurons in each of the 2 layers
    assert set(map(tuple, ctx.extra["kept_heads"].values())) == {(4, 2)}
    assert set(map(tuple, ctx.extra["kept_neurons"].values())) == {(64, 32)}
    assert m(ids).last_hidden_state.shape == (1, 8, 32)


# ---------------------------------------------------------------------------------------------------
# low-bit quantization stages (quantization/mixed.py)
# ---------------------------------------------------------------------------------------------------
def _lowbit_recipe(stage: dict) -> Recipe:
    return Recipe.from_dict(
        {"type": "recipe", "latency_batch": 8, "latency_repeats": 2, "threads": 1, "eval_limit": 128,
         "stages": [stage]}
    )


def test_mixed_precision_stage_reports_sensitivity_sizes_and_parity(tmp_path):
    """A mixed_precision stage: chosen widths within the packed-size budget, both the packed size and the
    ONNX file size recorded, sim-vs-ORT parity (cosine > 0.999), the sensitivity table in report.md/html/json."""
    import json

    from torchslim.reports.store import RunStore

    torch.manual_seed(0)
    model = TinyNet().eval()
    rec = _lowbit_recipe({"type": "mixed_precision", "budget": "size=0.6x", "num_calibration": 64,
                          "sensitivity_samples": 32})
    r = compress(model, rec, data=_digits("train"), eval_data=_digits("test"), work_dir=tmp_path / "w",
                 report_dir=tmp_path / "rep", store=RunStore(tmp_path / "runs.db"), progress=False)
    q = r.report.stages[-1]
    wb, budget, table = q.extra["weight_bytes"], q.extra["budget"], q.extra["sensitivity_table"]
    assert wb["packed"] <= budget["bytes"] == int(0.6 * wb["packed_int8"])
    assert wb["onnx_file"] == q.size_bytes  # the deployed file, int8 containers
    assert set(table) == {"conv1", "conv2", "fc"} and {row["bits"] for row in table.values()} <= {2, 4, 8}
    assert q.extra["parity"]["cosine"] > 0.999
    assert "int8 containers" in q.extra["deployment"]
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "Per-layer sensitivity" in md and "| conv2 | 36.86k |" in md and "KL @ 4 bit" in md
    assert 'alt="per-layer sensitivity"' in (tmp_path / "rep" / "report.html").read_text()
    js = json.loads((tmp_path / "rep" / "report.json").read_text())
    assert js["stages"][-1]["extra"]["sensitivity_table"]["fc"]["params"] == 64 * 16 * 10


def test_data_free_w4a4_stage_reads_no_training_data_and_says_it_runs_float(tmp_path):
    """zeroq_ptq with data=None (nothing to read) at W4A4: emulated float ONNX, parity cosine > 0.999, the
    deployment note says ORT runs it in float."""
    from torchslim.reports.store import RunStore

    torch.manual_seed(0)
    model = TinyNet().eval()
    rec = _lowbit_recipe({"type": "zeroq_ptq", "weights": "int4", "activations": "uint4", "num_calibration": 32,
                          "distill_iterations": 20})
    r = compress(model, rec, data=None, eval_data=_digits("test"), work_dir=tmp_path / "w",
                 store=RunStore(tmp_path / "runs.db"), progress=False)
    q = r.report.stages[-1]
    assert "distilled" in q.extra["quantization"]["calibration_data"]
    assert q.extra["parity"]["cosine"] > 0.999
    assert "runs in float" in q.extra["deployment"]
    assert q.extra["weight_bytes"]["onnx_file_float"] == q.size_bytes and "onnx_file" not in q.extra["weight_bytes"]
    assert r.onnx_path.name == "model_emulated.onnx"


@pytest.mark.parametrize("stage", [{"type": "pwlq_ptq", "weights": "int4"},
                                   {"type": "multipoint_ptq", "weights": "int4", "num_calibration": 64}])
def test_weight_only_stages_are_float_models_with_honest_sizes(stage, tmp_path):
    """PWLQ / multi-point: the model stays float (PyTorch and ORT latency both measured, ONNX about FP32
    size), packed size between 4/32 and 6/32 of FP32 at 4 bits (+ per-channel floats), deployment note says
    float."""
    from torchslim.reports.store import RunStore

    torch.manual_seed(0)
    model = TinyNet().eval()
    r = compress(model, _lowbit_recipe(stage), data=_digits("train"), eval_data=_digits("test"),
                 work_dir=tmp_path / "w", store=RunStore(tmp_path / "runs.db"), progress=False)
    orig, q = r.report.stages
    wb = q.extra["weight_bytes"]
    assert 4 / 32 * wb["fp32"] < wb["packed"] < 6 / 32 * wb["fp32"]
    assert q.latency_ms_torch is not None and abs(q.size_bytes - orig.size_bytes) < 0.05 * orig.size_bytes
    assert "ORT runs it in float" in q.extra["deployment"]
    assert min(q.extra["layer_sqnr_db"].values()) > 10.0


# ---------------------------------------------------------------------------------------------------
# pruning stages: knapsack_prune, dcp_prune, npn_prune, sensitivity_prune, inner_kd; bad input before work
# ---------------------------------------------------------------------------------------------------
def _resnet():
    from torchslim import zoo

    torch.manual_seed(0)
    return zoo.build("resnet-fmnist").eval()


def _chain() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                         nn.Conv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                         nn.Conv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10)).eval()


@pytest.mark.parametrize("importance", ["l1", "random", "bn_scale"])
def test_kept_indices_reproduce_prune_exactly(importance):
    """The kept indices prune_ reports (used for inner KD and sensitivity) rebuild the same pruned model through
    prune_(keep=...) (metric: every state-dict tensor equal, tolerance 0)."""
    from torchslim.pipeline import _kept_indices
    from torchslim.pruning import ChannelPrune, prune_

    ref, ours = _resnet(), _resnet()
    cfg = ChannelPrune(ratio=0.4, importance=importance, round_to=8, exclude=["layer3.1.*"], seed=3)
    x = (torch.randn(1, 1, 28, 28),)
    keep = _kept_indices(prune_(ref, cfg, x))
    prune_(ours, ChannelPrune(ratio=0.0), x, keep=keep)
    assert keep and all(len(k) < 128 for k in keep.values())
    a, b = ref.state_dict(), ours.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _ctx(model, tmp_path, index: int, samples: int = 64):
    from torchslim.pipeline import PipelineContext

    train = _digits("train")
    x = torch.stack([train[i][0] for i in range(8)])
    return PipelineContext(model=model, original=model, train_data=train, eval_data=None, example_input=x,
                           work_dir=tmp_path, stage_index=index, progress=False, sensitivity_samples=samples)


def _run_stage(stage: dict, ctx) -> None:
    from torchslim.core.registry import STAGES

    (cfg,) = Recipe.from_dict({"type": "recipe", "stages": [stage]}).stages
    STAGES.resolve(cfg)(cfg, ctx)


def test_knapsack_stage_then_inner_kd_report_kept_channels_sensitivity_and_taps(tmp_path):
    """knapsack_prune on a TinyNet (64-channel residual group) within 50% MACs: kept channels, the budget and
    the per-group sensitivity (checked against a hand re-evaluation, tolerance 1e-4) are in ctx.extra; the
    channel map written for inner_kd lists the kept indices; inner_kd then taps bn1/bn2 of the parent."""
    import copy
    import json

    from torchslim.bench.accuracy import top1
    from torchslim.pipeline import _sample_batch
    from torchslim.pruning import ChannelPrune, prune_

    torch.manual_seed(0)
    model = TinyNet().eval()
    parent = copy.deepcopy(model)
    ctx = _ctx(model, tmp_path, 1)
    ctx.original = parent
    _run_stage({"type": "knapsack_prune", "macs_ratio": 0.5}, ctx)
    b = ctx.extra["macs_budget"]
    assert b["macs_after"] <= b["macs_budget"] == int(0.5 * b["macs_before"])
    (name, (before, after)), = ctx.extra["kept_channels"].items()
    assert before == 64 and 1 <= after < 64 and model.conv1.out_channels == after
    cmap = json.loads((tmp_path / "stage1" / "channel_map.json").read_text())
    assert len(cmap[name]) == after and cmap[name] == sorted(set(cmap[name]))
    # sensitivity = baseline - top1 with only this group cut to the kept channels (on the training probe)
    sx, sy = _sample_batch(ctx.train_data, 64, ctx.seed + 1)
    probe = torch.utils.data.TensorDataset(sx, sy)
    m = copy.deepcopy(parent)
    prune_(m, ChannelPrune(ratio=0.0), (ctx.example_input[:1],), keep={name: torch.tensor(cmap[name])})
    assert abs(ctx.extra["sensitivity"][name] - (top1(parent, probe) - top1(m, probe))) < 1e-4

    ctx.stage_index, ctx.extra = 2, {}
    _run_stage({"type": "inner_kd", "train": {"epochs": 1, "max_steps": 2, "batch_size": 32}}, ctx)
    assert ctx.extra["inner_taps"] == ["bn1", "bn2"] and ctx.extra["train_steps"] == 2


def test_channel_map_composes_over_two_pruning_stages(tmp_path):
    """Two channel_prune stages: the map holds indices in the ORIGINAL numbering (first[second]), checked by
    comparing the twice-pruned conv1 weight with the original's rows at those indices (tolerance 0)."""
    import json

    torch.manual_seed(0)
    model = TinyNet().eval()
    w0 = model.conv1.weight.detach().clone()
    ctx = _ctx(model, tmp_path, 1, samples=0)
    _run_stage({"type": "channel_prune", "ratio": 0.5}, ctx)
    ctx.stage_index = 2
    _run_stage({"type": "channel_prune", "ratio": 0.5, "importance": "random"}, ctx)
    cmap = json.loads((tmp_path / "stage2" / "channel_map.json").read_text())
    (idx,) = cmap.values()
    assert len(idx) == 16 and torch.equal(model.conv1.weight, w0[idx])


@pytest.mark.parametrize(
    "stage",
    [
        {"type": "dcp_prune", "ratio": 0.5, "calib_samples": 64, "steps_per_channel": 0, "final_steps": 1,
         "aux_train": {"epochs": 1, "max_steps": 2, "batch_size": 32}},
        {"type": "npn_prune", "sparsity": 50.0, "gate_samples": 64,
         "train": {"epochs": 1, "max_steps": 3, "batch_size": 32, "optimizer": "adamw", "lr": 0.3}},
    ],
)
def test_dcp_and_npn_stages_prune_physically_and_record_details(stage, tmp_path):
    """dcp_prune / npn_prune run as stages on a conv chain: the model's layers shrink to the recorded widths,
    and kept channels + sensitivity (one entry per pruned group) are recorded like channel_prune's."""
    model = _chain()
    ctx = _ctx(model, tmp_path, 1, samples=32)
    ctx.example_input = ctx.example_input[:, :, :8, :8]
    _run_stage(stage, ctx)
    kept = ctx.extra["kept_channels"]
    pruned = {n for n, (a, b) in kept.items() if b < a}
    assert pruned and set(ctx.extra["sensitivity"]) == pruned
    for n, (_, after) in kept.items():
        assert model.get_submodule(n).out_channels == after
    assert model(ctx.example_input).shape == (8, 10)


def test_sensitivity_widths_prunes_insensitive_groups_more_and_matches_brute_force():
    """A synthetic score that punishes cutting group '0' 50x more than '3' or '6': the plan leaves '0' whole,
    meets the 50% MACs budget (measured), and its summed drop equals the brute-force optimum over all width
    combinations whose measured MACs fit (tolerance 1e-9)."""
    import copy
    import itertools

    from torchslim.core.cost import profile
    from torchslim.pruning import ChannelPrune, prune_
    from torchslim.pruning.sensitivity import sensitivity_widths

    model = _chain()
    x = (torch.randn(1, 1, 8, 8),)
    weight = {"0": 0.5, "3": 0.01, "6": 0.01}

    def score(m):
        return 1.0 - sum(w * (1 - m.get_submodule(n).out_channels / 16) for n, w in weight.items())

    cfg = ChannelPrune(ratio=0.0, round_to=4)
    plan = sensitivity_widths(model, cfg, x, score, macs_ratio=0.5, ratios=(0.25, 0.5, 0.75))
    assert "0" not in plan.widths and plan.macs_after <= plan.budget == int(0.5 * plan.macs_before)
    widths_of = {n: [o[0] for o in opts] for n, opts in plan.options.items()}

    def drop(ws):
        return sum(weight[n] * (1 - ws.get(n, 16) / 16) for n in weight)

    best = None
    for combo in itertools.product(*widths_of.values()):
        ws = {n: w for n, w in zip(widths_of, combo, strict=True) if w < 16}
        m = copy.deepcopy(model)
        prune_(m, cfg, x, widths=ws)
        if profile(m, x).macs <= plan.budget and (best is None or drop(ws) < best):
            best = drop(ws)
    assert abs(drop(plan.widths) - best) < 1e-9


def test_sensitivity_prune_stage_meets_the_macs_budget(tmp_path):
    """sensitivity_prune on the untrained zoo ResNet: measured MACs within 50%, widths non-uniform allowed,
    the options table and the budget recorded."""
    from torchslim.core.cost import profile

    model = _resnet()
    ctx = _ctx(model, tmp_path, 1, samples=32)
    ctx.train_data = torch.utils.data.TensorDataset(torch.randn(64, 1, 28, 28), torch.randint(0, 10, (64,)))
    ctx.example_input = torch.randn(4, 1, 28, 28)
    _run_stage({"type": "sensitivity_prune", "macs_ratio": 0.5, "round_to": 8, "ratios": [0.5, 0.75]}, ctx)
    b = ctx.extra["macs_budget"]
    assert profile(model, (ctx.example_input[:1],)).macs == b["macs_after"] <= b["macs_budget"]
    assert set(ctx.extra["width_options"]) >= {n for n, (a, c) in ctx.extra["kept_channels"].items() if c < a}


@pytest.mark.parametrize(
    ("stage", "needle"),
    [
        ({"type": "channel_prune", "ratio": 0.5, "exclude": ["conv9*"]}, "stages[0] (channel_prune).exclude: 'conv9*' matches no layer"),
        ({"type": "channel_prune", "ratio": 0.5, "include": ["nosuch"]}, "(channel_prune).include: 'nosuch' matches no layer"),
        ({"type": "knapsack_prune", "macs_ratio": 0.5, "include": ["nosuch"]}, "(knapsack_prune).include: 'nosuch'"),
        ({"type": "dcp_prune", "ratio": 0.5, "exclude": ["nosuch"]}, "(dcp_prune).exclude: 'nosuch'"),
        ({"type": "npn_prune", "exclude": ["nosuch"]}, "(npn_prune).exclude: 'nosuch'"),
        ({"type": "sensitivity_prune", "macs_ratio": 0.5, "include": ["x.*"]}, "(sensitivity_prune).include: 'x.*'"),
        ({"type": "channel_prune", "ratio": 0.9, "min_channels": 16}, "fewer than min_channels=16"),
        ({"type": "dcp_prune", "ratio": 0.9, "min_channels": 16}, "(dcp_prune): channel_prune: ratio 0.9"),
        ({"type": "knapsack_prune", "macs_ratio": 0.0001}, "(knapsack_prune).macs_ratio: 0.0001 is below"),
        ({"type": "sensitivity_prune", "macs_ratio": 0.01, "min_channels": 16}, "would remove whole groups"),
    ],
)
def test_bad_pruning_input_fails_before_any_work(stage, needle, tmp_path, monkeypatch):
    """Unknown layer names (include/exclude) and ratios/budgets that would empty a group fail in compress
    before the original model is even measured, naming the stage and field."""
    from torchslim import pipeline
    from torchslim.reports.store import RunStore

    def boom(*a, **k):
        raise AssertionError("no work may start on bad input")

    monkeypatch.setattr(pipeline, "_measure_static", boom)
    rec = Recipe.from_dict({"type": "recipe", "stages": [stage]})
    with pytest.raises(ConfigError) as e:
        compress(TinyNet().eval(), rec, example_input=torch.randn(2, 1, 8, 8), store=RunStore(tmp_path / "r.db"),
                 work_dir=tmp_path / "w", progress=False)
    assert needle in str(e.value)


@pytest.mark.parametrize(
    ("stage", "needle"),
    [
        ({"type": "knapsack_prune", "macs_ratio": 0.0}, "recipe.stages[0].macs_ratio"),
        ({"type": "knapsack_prune", "macs_ratio": 1.5}, "recipe.stages[0].macs_ratio"),
        ({"type": "dcp_prune", "ratio": 1.0}, "recipe.stages[0].ratio"),
        ({"type": "channel_prune", "ratio": -0.1}, "recipe.stages[0].ratio"),
        ({"type": "sensitivity_prune", "macs_ratio": 0.5, "ratios": [0.5, 1.0]}, "ratios must be"),
        ({"type": "inner_kd", "alpha": 2}, "recipe.stages[0].alpha"),
    ],
)
def test_bad_ratios_of_the_new_stages_fail_at_parse_time(stage, needle):
    with pytest.raises(ConfigError) as e:
        Recipe.from_dict({"type": "recipe", "stages": [stage]})
    assert needle in str(e.value)


def test_knapsack_recipe_example_parses():
    r = load_recipe(DEMO.parent / "knapsack.yaml")
    assert [s.type_name for s in r.stages] == ["knapsack_prune", "inner_kd"]
