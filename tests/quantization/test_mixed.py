"""Low-bit / mixed-precision PTQ (quantization/mixed.py): honest sizes, exact budgeted DP, config checks,
deployment with sim-vs-ORT parity."""

from __future__ import annotations

import itertools
import math
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from torchslim.core.errors import ConfigError
from torchslim.quantization.mixed import (
    PWLQPTQ,
    LowBitPTQ,
    MixedPrecision,
    MultiPointPTQ,
    ZeroQPTQ,
    choose_bits,
    packed_weight_bytes,
    parse_bits,
    parse_budget,
    plan_mixed_precision,
    run_lowbit_ptq,
)
from torchslim.quantization.static import WeightQuantWrapper

pytest.importorskip("onnxruntime")


class Net(nn.Module):
    """Conv-BN-ReLU x2 + residual + linear head on 1x12x12 inputs; BN statistics set to non-trivial values."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(1, 16, 3, padding=1, bias=False)
        self.b1 = nn.BatchNorm2d(16)
        self.c2 = nn.Conv2d(16, 16, 3, padding=1, bias=False)
        self.b2 = nn.BatchNorm2d(16)
        self.pool = nn.AdaptiveAvgPool2d(2)
        self.fc = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.b1(self.c1(x)))
        y = F.relu(self.b2(self.c2(y)) + y)
        return self.fc(torch.flatten(self.pool(y), 1))


@pytest.fixture
def net() -> Net:
    torch.manual_seed(0)
    m = Net()
    with torch.no_grad():
        for bn in (m.b1, m.b2):
            bn.running_mean.uniform_(-0.2, 0.2)
            bn.running_var.uniform_(0.5, 2.0)
    return m.eval()


def _x(n: int = 64) -> torch.Tensor:
    return torch.rand(n, 1, 12, 12, generator=torch.Generator().manual_seed(1)) * 2 - 0.5


# ------------------------------------------------------------------------------------------ sizes / parsing
def test_packed_weight_bytes_by_hand():
    """ceil(bits * numel / 8) + 4 bytes per output channel (exact): 3 x 100 weights at 3 bits, 10 rows."""
    assert packed_weight_bytes(100, 10, 3) == math.ceil(300 / 8) + 40 == 78
    assert packed_weight_bytes(1000, 10, 8, scale_bytes_per_row=8.0) == 1000 + 80


def test_parse_budget_and_bits():
    """Budgets: KB = 1000 B, KiB = 1024 B, x = ratio of the 8-bit packed size (exact values)."""
    assert parse_budget("size=150KB").bytes == 150_000
    assert parse_budget("0.2MiB").bytes == int(0.2 * 2**20)
    assert parse_budget("size=0.5x").resolve(1000) == 500
    for bad in ("size=", "150 parsecs", "1.5x", "0x"):
        with pytest.raises(ValueError):
            parse_budget(bad)
    assert parse_bits("uint4") == (4, False) and parse_bits("int8") == (8, True)
    with pytest.raises(ValueError, match="outside 1..8"):
        parse_bits("int9")
    with pytest.raises(ValueError, match="LS-binary"):
        parse_bits("int1")


@pytest.mark.parametrize(
    ("cfg", "field"),
    [
        ({"type": "lowbit_ptq", "weights": "int9"}, "recipe.stages[0].weights"),
        ({"type": "lowbit_ptq", "weights": "int0"}, "recipe.stages[0].weights"),
        ({"type": "lowbit_ptq", "activations": "uint16"}, "recipe.stages[0].activations"),
        ({"type": "lowbit_ptq", "weights": "uint4"}, "recipe.stages[0].weights"),
        ({"type": "mixed_precision", "candidate_bits": [1, 4]}, "recipe.stages[0].candidate_bits"),
        ({"type": "mixed_precision", "budget": "size=lots"}, "recipe.stages[0].budget"),
        ({"type": "pwlq_ptq", "weights": "int2"}, "recipe.stages[0].weights"),
        ({"type": "multipoint_ptq", "weights": "int12"}, "recipe.stages[0].weights"),
    ],
)
def test_bit_widths_rejected_at_config_time_with_field_path(cfg, field):
    from torchslim.pipeline import Recipe

    with pytest.raises(ConfigError) as e:
        Recipe.from_dict({"type": "recipe", "stages": [cfg]})
    assert field in str(e.value)


def test_mixed_and_budget_go_together():
    with pytest.raises(ConfigError, match="budget"):
        MixedPrecision()  # no budget
    with pytest.raises(ConfigError, match="budget"):
        LowBitPTQ(weights="int4", budget="0.5x")
    assert MixedPrecision(budget="size=0.5x").weights == "mixed"
    assert ZeroQPTQ().data_free and not LowBitPTQ().data_free
    assert PWLQPTQ(weights="int3").weights == "int3" and MultiPointPTQ().weights == "int4"


# ------------------------------------------------------------------------------------------ DP
def _brute(sens, numel, rows, budget):
    names = list(sens)
    best = (math.inf, None)
    for combo in itertools.product(*[sorted(sens[n]) for n in names]):
        size = sum(packed_weight_bytes(numel[n], rows[n], b) for n, b in zip(names, combo, strict=True))
        cost = sum(sens[n][b] for n, b in zip(names, combo, strict=True))
        if size <= budget and cost < best[0] - 1e-12:
            best = (cost, dict(zip(names, combo, strict=True)))
    return best


@pytest.mark.parametrize("seed", range(6))
def test_choose_bits_matches_brute_force_and_respects_budget(seed):
    """Exact DP == exhaustive search over 3^5 assignments (metric: summed KL, tolerance 1e-9) at several
    budgets; the chosen packed size never exceeds the budget."""
    g = torch.Generator().manual_seed(seed)
    names = [f"l{i}" for i in range(5)]
    numel = {n: int(torch.randint(50, 400, (1,), generator=g)) for n in names}
    rows = {n: int(torch.randint(2, 9, (1,), generator=g)) for n in names}
    sens = {n: {2: float(torch.rand(1, generator=g)) * 10, 4: float(torch.rand(1, generator=g)),
                8: float(torch.rand(1, generator=g)) * 0.01} for n in names}
    lo = sum(packed_weight_bytes(numel[n], rows[n], 2) for n in names)
    hi = sum(packed_weight_bytes(numel[n], rows[n], 8) for n in names)
    for frac in (0.0, 0.2, 0.45, 0.7, 1.0):
        budget = int(lo + frac * (hi - lo))
        bits, front = choose_bits(sens, numel, rows, budget)
        size = sum(packed_weight_bytes(numel[n], rows[n], bits[n]) for n in names)
        assert size <= budget
        cost, ref = _brute(sens, numel, rows, budget)
        assert abs(sum(sens[n][bits[n]] for n in names) - cost) < 1e-9, (bits, ref)
        assert all(a[0] < b[0] and a[1] > b[1] for a, b in itertools.pairwise(front))  # a Pareto front
    with pytest.raises(ConfigError, match=f"at least {lo} B"):
        choose_bits(sens, numel, rows, lo - 1)


def test_plan_on_a_model_respects_budget_and_more_budget_never_hurts(net):
    """plan_mixed_precision: packed size <= budget for 0.3x / 0.6x / 1x of the 8-bit size, summed KL is
    non-increasing in the budget, and 1x picks 8 bits everywhere (8 bit is the lowest-KL width here)."""
    x = _x(32)
    plans = [plan_mixed_precision(net, x, f"{r}x") for r in (0.3, 0.6, 1.0)]
    sens = plans[0].sensitivity
    for p in plans:
        assert p.packed_bytes <= p.budget_bytes
        assert set(p.bits) == {"c1", "c2", "fc"}
        assert p.sensitivity == sens
    assert plans[0].total_kl >= plans[1].total_kl >= plans[2].total_kl
    if all(sens[n][8] < min(sens[n][2], sens[n][4]) for n in sens):
        assert set(plans[2].bits.values()) == {8}
    t = plans[1].table()
    assert t["c2"]["params"] == 16 * 16 * 9 and set(t["c2"]["kl"]) == {"2", "4", "8"}


# ------------------------------------------------------------------------------------------ deployment
def test_w4a8_exports_int8_qdq_with_4bit_values_and_parity(net, tmp_path):
    """W4A8: integer weights lie in [-7, 7] (4-bit symmetric narrow range, exact), the ONNX runs in int8
    kernels, and ORT matches the simulation (cosine > 0.999, top-1 agreement >= 0.98)."""
    from torchslim.quantization.onnx_qdq import ort_optimized_op_counts

    x = _x()
    res = run_lowbit_ptq(net, LowBitPTQ(weights="int4", num_calibration=64), x)
    for m in res.quantized.sim.modules():
        if isinstance(m, WeightQuantWrapper):
            assert int(m.int_weight().abs().max()) == 7
    assert res.ort_int8 and res.packed_bytes < 0.55 * res.int8_bytes
    path = res.export(tmp_path / "w4a8.onnx", x[:4])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ops = ort_optimized_op_counts(path)
    assert ops.get("QLinearConv", 0) == 2, ops
    par = res.quantized.parity(path, x)
    assert par.cosine > 0.999 and par.top1_agreement >= 0.98, par


def test_w4a4_exports_float_emulation_with_parity(net, tmp_path):
    """A4 has no int8 kernel: the exported graph is float Round/Clip emulation (no QLinearConv), and ORT
    matches the simulation (cosine > 0.999)."""
    from torchslim.quantization.onnx_qdq import ort_optimized_op_counts

    x = _x()
    res = run_lowbit_ptq(net, LowBitPTQ(weights="int4", activations="uint4", num_calibration=64), x)
    assert not res.ort_int8
    path = res.export(tmp_path / "w4a4.onnx", x[:4])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ops = ort_optimized_op_counts(path)
    assert ops.get("QLinearConv", 0) == 0 and ops.get("Round", 0) >= 3, ops
    par = res.quantized.parity(path, x)
    assert par.cosine > 0.999, par


def test_mixed_precision_run_respects_budget_and_parity(net, tmp_path):
    """Mixed precision end to end: per-layer widths within the budget, simulation set to those widths
    (exact integer ranges; 8-bit layers stored in 7 bits on CPUs without VNNI, where ORT's U8S8 kernels
    would saturate), int8 QDQ export matches ORT (cosine > 0.999)."""
    from torchslim.quantization.static import cpu_lacks_vnni

    x = _x()
    cfg = MixedPrecision(budget="size=0.6x", num_calibration=64, sensitivity_samples=32)
    res = run_lowbit_ptq(net, cfg, x)
    assert res.plan is not None and res.packed_bytes <= res.plan.budget_bytes
    assert len(set(res.bits.values())) > 1  # really mixed at 0.6x
    wrappers = {n: m for n, m in res.quantized.sim.named_modules() if isinstance(m, WeightQuantWrapper)}
    for n, b in res.bits.items():
        stored = 7 if b == 8 and cpu_lacks_vnni() else b
        assert int(wrappers[n].int_weight().abs().max()) == 2 ** (stored - 1) - 1
    path = res.export(tmp_path / "mp.onnx", x[:4])
    assert res.quantized.parity(path, x).cosine > 0.999


def test_data_free_calibrates_on_distilled_data(net, tmp_path):
    """zeroq_ptq reads no calibration sample (calib=None) and still gives a model close to FP32
    (SQNR of the logits >= 15 dB at W8A8 on held-out inputs), with ORT parity (cosine > 0.999)."""
    from torchslim.quantization.primitives import sqnr_db

    x = _x()
    res = run_lowbit_ptq(net, ZeroQPTQ(num_calibration=32, distill_iterations=30), None, example_input=x[:2])
    assert "distilled" in res.calibration
    with torch.no_grad():
        assert sqnr_db(net(x), res.quantized.sim(x)) >= 15.0
    path = res.export(tmp_path / "zq.onnx", x[:4])
    assert res.quantized.parity(path, x).cosine > 0.999


def test_calibration_too_small_or_nan_fails_before_work(net):
    x = _x(8)
    with pytest.raises(ConfigError, match="too small"):
        run_lowbit_ptq(net, LowBitPTQ(weights="int4"), x)
    bad = _x(32)
    bad[5, 0, 0, 0] = float("inf")
    from torchslim.core.errors import NumericalError

    with pytest.raises(NumericalError, match="sample 5"):
        run_lowbit_ptq(net, LowBitPTQ(weights="int4"), bad)
