"""NPN composed with distillation and int8 quantisation through the pipeline (examples/recipes/npn_kd_int8.yaml).

The example recipe runs on a tiny UNTRAINED conv chain with its training shortened to a few steps: the stages
must chain (NPN removes filters physically, KD trains the pruned model, static PTQ quantises it) and the int8
ONNX file must carry the widths NPN chose. Runs in a few seconds.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from torchslim.pipeline import Recipe, compress, load_recipe

RECIPE = Path(__file__).resolve().parents[1] / "examples" / "recipes" / "npn_kd_int8.yaml"


def _chain() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                         nn.Conv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(64, 10)).eval()


def _digits() -> tuple[torch.utils.data.TensorDataset, torch.utils.data.TensorDataset]:
    from torchslim.data import digits

    x, y = digits().tensors
    x = x.float()
    return (torch.utils.data.TensorDataset(x[:256], y[:256]),
            torch.utils.data.TensorDataset(x[1400:1656], y[1400:1656]))


def _onnx_conv_shapes(path: Path) -> list[tuple[int, int, str]]:
    """(out, in, dtype) of every Conv node's weight in an ONNX file (int8 QDQ: traced back through
    DequantizeLinear to the stored initializer), in graph order."""
    import onnx
    from onnx import numpy_helper

    g = onnx.load(str(path)).graph
    inits = {i.name: numpy_helper.to_array(i) for i in g.initializer}
    producer = {o: n for n in g.node for o in n.output}
    shapes = []
    for n in g.node:
        if n.op_type not in ("Conv", "QLinearConv"):
            continue
        name = n.input[3] if n.op_type == "QLinearConv" else n.input[1]
        while name not in inits:  # weight -> DequantizeLinear -> (QuantizeLinear ->) initializer
            name = producer[name].input[0]
        w = inits[name]
        shapes.append((int(w.shape[0]), int(w.shape[1]), str(w.dtype)))
    return shapes


def _shortened() -> Recipe:
    """The example recipe with training cut to a few steps and latency to 3 repeats (the mechanics, not accuracy)."""
    d = load_recipe(RECIPE).to_dict()
    d.update(latency_batch=16, latency_repeats=3, threads=1, sensitivity_samples=0)
    npn, kd, ptq = d["stages"]
    # an untrained net: a strong penalty and a large step make the gates close within 4 steps
    npn.update(sparsity=5.0, gate_samples=64,
               train={**npn["train"], "epochs": 1, "max_steps": 4, "batch_size": 32, "lr": 0.3})
    kd["train"] = {**kd["train"], "epochs": 1, "max_steps": 3, "batch_size": 32}
    ptq["num_calibration"] = 64
    return Recipe.from_dict(d)


def test_example_recipe_parses_into_npn_kd_int8():
    r = load_recipe(RECIPE)
    assert [s.type_name for s in r.stages] == ["npn_prune", "hinton_kd", "static_ptq"]
    assert Recipe.from_dict(r.to_dict()).to_dict() == r.to_dict()


@pytest.mark.parametrize("recovery", ["hinton_kd", "inner_kd", "finetune"])
def test_npn_widths_survive_recovery_and_int8_export(recovery, tmp_path, monkeypatch):
    """npn_prune -> {hinton_kd | inner_kd | finetune} -> static_ptq: the widths NPN recorded are those of the
    pruned PyTorch model AND of the int8 ONNX file's Conv weights (exact counts); the int8 model agrees with
    its fake-quant simulation in ONNX Runtime (metric: top-1 agreement >= 0.9 and cosine >= 0.99 on 256
    held-out digits; an untrained net has near-tied logits, so a few flips are allowed). Latency timing is
    stubbed out (it is tested in tests/test_pipeline.py and costs seconds)."""
    from torchslim import pipeline
    from torchslim.reports.store import RunStore

    monkeypatch.setattr(pipeline, "_measure_latency", lambda arts, *a, **k: {
        f"{i}:{x.name}": {"torch": None, "ort": None} for i, x in enumerate(arts)})

    recipe = _shortened()
    if recovery != "hinton_kd":
        d = recipe.to_dict()
        d["stages"][1] = {"type": recovery, "train": d["stages"][1]["train"]}
        recipe = Recipe.from_dict(d)
    model = _chain()
    train, test = _digits()
    r = compress(model, recipe, data=train, eval_data=test, work_dir=tmp_path / "w",
                 store=RunStore(tmp_path / "runs.db"), progress=False)
    orig, pruned, recovered, q = r.report.stages
    assert [s.name for s in r.report.stages][1:] == ["1. npn_prune", f"2. {recovery}", "3. static_ptq"]

    kept = pruned.extra["kept_channels"]  # group -> [before, after]
    assert set(kept) == {"0", "3"}
    assert any(after < before for before, after in kept.values()), f"NPN removed nothing: {kept}"
    # the pruned PyTorch model has exactly the recorded widths, and so has the recovered one
    want = [(kept["0"][1], 1), (kept["3"][1], kept["0"][1])]
    assert [(m.out_channels, m.in_channels) for m in r.model.modules() if isinstance(m, nn.Conv2d)] == want
    assert pruned.macs < orig.macs and recovered.macs == pruned.macs and q.macs == pruned.macs
    # ... and so has the deployable ONNX file, whose Conv weights are stored as int8
    assert _onnx_conv_shapes(r.onnx_path) == [(o, i, "int8") for o, i in want]
    assert r.onnx_path.name == "model_int8.onnx"
    parity = q.extra["parity"]
    assert parity["top1_agreement"] >= 0.9 and parity["cosine"] >= 0.99
    if recovery == "inner_kd":  # the channel map NPN wrote feeds inner distillation's feature taps
        assert recovered.extra["inner_taps"]
