"""Low-bit post-training quantisation stages: any-width and mixed-precision PTQ, PWLQ and multi-point.

What this module adds on top of the engines (:mod:`.static`, :mod:`.ptq.zeroq`, :mod:`.ptq.pwlq`,
:mod:`.ptq.multipoint`):

* **Honest weight sizes** -- :func:`packed_weight_bytes`: ``ceil(bits * numel / 8)`` plus one fp32 scale per
  output channel, per layer. This is the *packed* size a bit-packing format would need; ONNX Runtime's
  Conv/Gemm int8 kernels read int8 containers, so the ONNX file of a W4 model is about as large as a W8
  one. Both figures are reported, named as such.
* **Mixed precision under a size budget** -- :func:`plan_mixed_precision`: ZeroQ per-layer KL sensitivity
  (on distilled or real data) for each candidate width, the exact Pareto front of (packed bytes, summed
  KL) by :func:`torchslim.search.solvers.pareto_frontier`, and the lowest-KL point whose packed size fits
  the budget. Budgets: ``"150KB"`` / ``"0.2MiB"`` / ``"600000B"`` (absolute), or ``"0.5x"`` (a fraction of
  the all-8-bit packed size, scales included).
* **Stage configs** used by the pipeline (``torchslim quantize`` and recipes):

  ============== ============================================================================================
  ``lowbit_ptq``  static PTQ at any widths ``weights: int2..int8``, ``activations: uint2..uint8 | int2..int8``,
                  any calibrator, real or ZeroQ-distilled calibration data (``data_free``), and
                  ``weights: mixed`` + ``budget`` for per-layer widths.
  ``zeroq_ptq``   the same with ``data_free: true`` by default (ZeroQ).
  ``mixed_precision`` the same with ``weights: mixed`` by default and ``budget`` required.
  ``pwlq_ptq``    weight-only piecewise-linear quantisation (:mod:`.ptq.pwlq`), ``weights: int3..int8``.
  ``multipoint_ptq`` weight-only multi-point quantisation (:mod:`.ptq.multipoint`), ``weights: int2..int8``.
  ============== ============================================================================================

  Bit widths are validated when the config is built (the error names the field path); widths outside
  1..8 are refused, and so is 1 bit for the uniform quantisers (use the LS-binary quantiser for 1 bit).

Deployment, stated plainly: W8A8 runs in ONNX Runtime's int8 kernels (use ``static_ptq`` for the fastest
model). W2..W7 with 8-bit activations are exported as int8 QDQ (the low-bit values in int8 containers),
so ORT runs the same int8 kernels: no extra speed or file-size gain over W8A8. Activations below 8 bits
cannot be expressed as ONNX QuantizeLinear; such a model is exported as a *float* graph that emulates the
rounding (Round/Clip), which ORT runs in float. PWLQ and multi-point are simulated in PyTorch: their
weights are float tensors holding the quantised values, and ORT runs a float model.

Example::

    import torch
    from torchslim import zoo
    from torchslim.quantization.mixed import LowBitPTQ, plan_mixed_precision, run_lowbit_ptq
    model = zoo.build("resnet-fmnist").eval()
    calib = torch.randn(64, 1, 28, 28)
    plan = plan_mixed_precision(model, calib, budget="0.5x")
    print(plan.bits, plan.packed_bytes, plan.budget_bytes)
    res = run_lowbit_ptq(model, LowBitPTQ(weights="mixed", budget="0.5x", num_calibration=64), calib)
"""

from __future__ import annotations

import copy
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
from pydantic import Field, field_validator, model_validator
from torch import Tensor, nn

from torchslim.core.config import Config
from torchslim.core.errors import ConfigError

__all__ = [
    "LowBitPTQ",
    "LowBitResult",
    "MixedPrecision",
    "MixedPrecisionPlan",
    "MultiPointPTQ",
    "PWLQPTQ",
    "ZeroQPTQ",
    "choose_bits",
    "emulation_onnx",
    "packed_weight_bytes",
    "parse_bits",
    "parse_budget",
    "plan_mixed_precision",
    "run_lowbit_ptq",
]

_UNITS = {"": 1, "b": 1, "kb": 1000, "kib": 1024, "mb": 1000**2, "mib": 1024**2}
_BUDGET_RE = re.compile(r"^\s*(?:size\s*=\s*)?([0-9]*\.?[0-9]+)\s*([a-z]*)\s*$", re.IGNORECASE)
_FMT_RE = re.compile(r"^(u?int)(\d+)$")


# ------------------------------------------------------------------------------------------ parsing
def parse_bits(fmt: str, *, signed_only: bool = False, lo: int = 2) -> tuple[int, bool]:
    """``"int4"`` -> ``(4, True)``, ``"uint8"`` -> ``(8, False)``; raises ``ValueError`` outside ``lo..8``.

    >>> parse_bits("uint4")
    (4, False)
    """
    m = _FMT_RE.match(str(fmt).strip().lower())
    if m is None:
        raise ValueError(f"expected a format like int8, int4, uint8 (bits {lo}..8), got {fmt!r}")
    bits, signed = int(m.group(2)), m.group(1) == "int"
    if not 1 <= bits <= 8:
        raise ValueError(f"bit width {bits} is outside 1..8 (got {fmt!r})")
    if bits < lo:
        hint = " (for 1-bit weights use the LS-binary quantiser, torchslim.quantization.binary)" if bits == 1 else ""
        raise ValueError(f"{fmt!r}: this quantiser needs at least {lo} bits{hint}")
    if signed_only and not signed:
        raise ValueError(f"{fmt!r}: weights are quantised symmetrically, use int{bits}")
    return bits, signed


@dataclass(frozen=True)
class SizeBudget:
    """A weight-size budget: absolute ``bytes`` or a ``ratio`` of the all-8-bit packed size."""

    text: str
    bytes: int | None = None
    ratio: float | None = None

    def resolve(self, int8_bytes: int) -> int:
        """The budget in bytes, given the packed size of the same model with 8-bit weights."""
        return int(self.bytes) if self.bytes is not None else int(math.floor(float(self.ratio or 0) * int8_bytes))


def parse_budget(text: str) -> SizeBudget:
    """Parse ``"size=150KB"``, ``"150KB"``, ``"0.2MiB"``, ``"600000"`` (bytes) or ``"0.5x"``.

    ``KB``/``MB`` are powers of 1000, ``KiB``/``MiB`` powers of 1024; ``x`` is a fraction of the packed size
    of the same model with all weights at 8 bits (fp32 per-channel scales included).

    >>> parse_budget("size=150KB").bytes
    150000
    >>> parse_budget("0.5x").ratio
    0.5
    """
    m = _BUDGET_RE.match(str(text))
    if m is None:
        raise ValueError(f"budget {text!r}: expected e.g. size=150KB, size=0.2MiB or size=0.5x")
    value, unit = float(m.group(1)), m.group(2).lower()
    if unit == "x":
        if not 0 < value <= 1:
            raise ValueError(f"budget {text!r}: a ratio of the 8-bit size must be in (0, 1]")
        return SizeBudget(text, ratio=value)
    if unit not in _UNITS:
        raise ValueError(f"budget {text!r}: unknown unit {unit!r} (use B, KB, KiB, MB, MiB or x)")
    if value <= 0:
        raise ValueError(f"budget {text!r} must be > 0")
    return SizeBudget(text, bytes=int(value * _UNITS[unit]))


# ------------------------------------------------------------------------------------------ sizes
def _rows(layer: nn.Module) -> int:
    w = layer.weight
    assert isinstance(w, Tensor)
    return int(w.shape[0])


def packed_weight_bytes(numel: int, rows: int, bits: float, scale_bytes_per_row: float = 4.0) -> int:
    """Bytes of one layer's weights bit-packed at ``bits`` per weight plus ``scale_bytes_per_row`` per output
    channel (fp32 scale): ``ceil(bits * numel / 8) + rows * scale_bytes_per_row``.

    >>> packed_weight_bytes(1000, 10, 4)
    540
    """
    return int(math.ceil(bits * numel / 8) + math.ceil(rows * scale_bytes_per_row))


# ------------------------------------------------------------------------------------------ planning
@dataclass
class MixedPrecisionPlan:
    """Chosen per-layer weight widths and how they were chosen.

    ``sensitivity[layer][bits]`` is ZeroQ's KL; ``front`` the Pareto front ``[(packed bytes, summed KL)]``
    of all assignments; ``packed_bytes`` the chosen assignment's packed size, ``int8_bytes`` the all-8-bit
    one, ``budget_bytes`` the resolved budget.
    """

    bits: dict[str, int]
    sensitivity: dict[str, dict[int, float]]
    numel: dict[str, int]
    rows: dict[str, int]
    packed_bytes: int
    int8_bytes: int
    budget_bytes: int
    total_kl: float
    front: list[tuple[int, float]] = field(default_factory=list)

    def table(self) -> dict[str, dict[str, Any]]:
        """JSON-ready ``{layer: {"params", "kl": {bits: KL}, "bits"}}`` (the report's sensitivity table)."""
        return {
            n: {
                "params": self.numel[n],
                "kl": {str(k): float(v) for k, v in sorted(self.sensitivity[n].items())},
                "bits": self.bits[n],
            }
            for n in self.bits
        }


def choose_bits(
    sensitivity: Mapping[str, Mapping[int, float]],
    numel: Mapping[str, int],
    rows: Mapping[str, int],
    budget_bytes: int,
) -> tuple[dict[str, int], list[tuple[int, float]]]:
    """Per-layer widths minimising the summed sensitivity with packed weight bytes ``<= budget_bytes``.

    Exact: the Pareto front of (packed bytes, summed sensitivity) by dynamic programming
    (:func:`~torchslim.search.solvers.pareto_frontier`); returns ``(bits, front)``. Raises
    :class:`ConfigError` naming the smallest feasible budget when even the lowest widths do not fit.

    >>> choose_bits({"a": {2: 1.0, 8: 0.0}, "b": {2: 5.0, 8: 0.0}}, {"a": 80, "b": 80}, {"a": 1, "b": 1}, 112)[0]
    {'a': 2, 'b': 8}
    """
    from torchslim.search.solvers import pareto_frontier

    names = list(sensitivity)
    options = [sorted(sensitivity[n]) for n in names]
    costs = [[float(sensitivity[n][k]) for k in o] for n, o in zip(names, options, strict=True)]
    sizes = [[packed_weight_bytes(numel[n], rows[n], k) for k in o] for n, o in zip(names, options, strict=True)]
    smallest = sum(min(s) for s in sizes)
    if smallest > budget_bytes:
        raise ConfigError(
            f"size budget {budget_bytes} B is infeasible: even the lowest widths need {smallest} B of packed "
            f"weights (scales included); raise the budget to at least {smallest} B"
        )
    front = pareto_frontier(costs, sizes)
    feasible = [p for p in front if p.size <= budget_bytes]
    best = feasible[-1]  # the frontier's cost strictly decreases with size
    bits = {n: o[j] for n, o, j in zip(names, options, best.choices, strict=True)}
    return bits, [(p.size, p.cost) for p in front]


def plan_mixed_precision(
    model: nn.Module,
    inputs: Tensor,
    budget: str | SizeBudget,
    candidate_bits: Sequence[int] = (2, 4, 8),
    sensitivity: Mapping[str, Mapping[int, float]] | None = None,
) -> MixedPrecisionPlan:
    """ZeroQ mixed precision: sensitivity of each (BN-folded) Conv/Linear at ``candidate_bits`` on ``inputs``
    (real or distilled), then the lowest-KL assignment within ``budget`` (see :func:`choose_bits`).

    Example::

        plan = plan_mixed_precision(model, distilled, budget="size=150KB")
        plan.bits                                   # {"stem.0": 8, "layer1.0.conv1": 4, ...}
    """
    from torchslim.quantization.ptq.zeroq import layer_sensitivity, quantizable_layers

    b = parse_budget(budget) if isinstance(budget, str) else budget
    layers = quantizable_layers(model)
    if not layers:
        raise ConfigError("mixed precision: the model has no Conv/Linear layer to assign bit widths to")
    numel = {n: int(m.weight.numel()) for n, m in layers.items()}  # type: ignore[operator]
    rows = {n: _rows(m) for n, m in layers.items()}
    sens = dict(sensitivity) if sensitivity is not None else layer_sensitivity(model, inputs, tuple(candidate_bits))
    sens = {n: {int(k): float(v) for k, v in sens[n].items()} for n in layers}
    int8_bytes = sum(packed_weight_bytes(numel[n], rows[n], 8) for n in layers)
    budget_bytes = b.resolve(int8_bytes)
    bits, front = choose_bits(sens, numel, rows, budget_bytes)
    packed = sum(packed_weight_bytes(numel[n], rows[n], bits[n]) for n in layers)
    total = sum(sens[n][bits[n]] for n in layers)
    return MixedPrecisionPlan(bits, sens, numel, rows, packed, int8_bytes, budget_bytes, total, front)


# ------------------------------------------------------------------------------------------ configs
_CALIBRATORS = Literal["minmax", "moving_average_minmax", "percentile", "mse", "entropy"]


class LowBitPTQ(Config):
    """Static PTQ at any widths 2..8, optionally data-free (ZeroQ) and mixed precision under a size budget.

    ``weights``: ``int2`` .. ``int8`` (symmetric per-channel) or ``mixed`` (per-layer widths from
    ``candidate_bits`` chosen under ``budget``). ``activations``: ``uint2`` .. ``uint8`` or ``int2`` .. ``int8``.
    ``data_free``: calibrate (and measure sensitivity) on ZeroQ distilled data instead of training samples.
    ``budget``: ``size=150KB`` or ``size=0.5x`` (of the all-8-bit packed weight size).
    """

    type_name: ClassVar[str] = "lowbit_ptq"

    weights: str = "int8"
    activations: str = "uint8"
    calibrator: _CALIBRATORS = "minmax"
    data_free: bool = False
    #: calibration samples (real, or distilled when ``data_free``); at least 16 (MIN_CALIBRATION_SAMPLES)
    num_calibration: int = Field(512, ge=16)
    distill_iterations: int = Field(200, ge=0)
    distill_lr: float = Field(0.5, gt=0)
    budget: str | None = None
    candidate_bits: list[int] = [2, 4, 8]
    sensitivity_samples: int = Field(256, ge=1)
    #: 8-bit weights as 7-bit on CPUs without VNNI (see :class:`~torchslim.quantization.StaticPTQ`)
    reduce_range: bool | None = None

    @field_validator("weights")
    @classmethod
    def _weights(cls, v: str) -> str:
        if v.strip().lower() == "mixed":
            return "mixed"
        parse_bits(v, signed_only=True)
        return v.strip().lower()

    @field_validator("activations")
    @classmethod
    def _activations(cls, v: str) -> str:
        parse_bits(v)
        return v.strip().lower()

    @field_validator("candidate_bits")
    @classmethod
    def _candidates(cls, v: list[int]) -> list[int]:
        if not v:
            raise ValueError("needs at least one width, e.g. [2, 4, 8]")
        bad = [b for b in v if not 2 <= int(b) <= 8]
        if bad:
            raise ValueError(f"widths {bad} are outside 2..8 (uniform weights need >= 2 bits; 1..8 overall)")
        return sorted({int(b) for b in v})

    @field_validator("budget")
    @classmethod
    def _budget(cls, v: str | None) -> str | None:
        if v is not None:
            parse_budget(v)
        return v

    @model_validator(mode="after")
    def _mixed_needs_budget(self) -> LowBitPTQ:
        if (self.weights == "mixed") != (self.budget is not None):
            raise ValueError("weights: mixed and budget go together (budget picks the per-layer widths)")
        return self

    def weight_bits(self) -> int | None:
        """The uniform weight width, or ``None`` for mixed precision."""
        return None if self.weights == "mixed" else parse_bits(self.weights)[0]

    def act_format(self) -> tuple[int, bool]:
        """``(bits, signed)`` of the activations."""
        return parse_bits(self.activations)


class ZeroQPTQ(LowBitPTQ):
    """:class:`LowBitPTQ` calibrated on ZeroQ distilled data (no training sample is read)."""

    type_name: ClassVar[str] = "zeroq_ptq"
    data_free: bool = True


class MixedPrecision(LowBitPTQ):
    """:class:`LowBitPTQ` with per-layer weight widths under a size ``budget`` (required)."""

    type_name: ClassVar[str] = "mixed_precision"
    weights: str = "mixed"


class PWLQPTQ(Config):
    """Weight-only piecewise linear quantisation stage (simulated; the model stays a float model)."""

    type_name: ClassVar[str] = "pwlq_ptq"
    weights: str = "int4"
    per_channel: bool = True

    @field_validator("weights")
    @classmethod
    def _weights(cls, v: str) -> str:
        parse_bits(v, signed_only=True, lo=3)  # one region bit + >= 2 bits per region
        return v.strip().lower()


class MultiPointPTQ(Config):
    """Weight-only multi-point quantisation stage (simulated; the model stays a float model).

    ``mean_points``: average number of ``bits``-wide points per output channel (storage ``mean_points *
    bits`` bits per weight); extra points go where the layer output error drops most on calibration data.
    """

    type_name: ClassVar[str] = "multipoint_ptq"
    weights: str = "int4"
    mean_points: float = Field(1.25, ge=1.0)
    max_points: int = Field(4, ge=1)
    num_calibration: int = Field(256, ge=0)

    @field_validator("weights")
    @classmethod
    def _weights(cls, v: str) -> str:
        parse_bits(v, signed_only=True)
        return v.strip().lower()


# ------------------------------------------------------------------------------------------ running
@dataclass
class LowBitResult:
    """What :func:`run_lowbit_ptq` produced: the quantised model, the plan (mixed precision only), the
    per-layer widths, sizes and the calibration data description."""

    quantized: Any  # QuantizedModel
    bits: dict[str, int]
    act_bits: int
    act_signed: bool
    packed_bytes: int
    int8_bytes: int
    plan: MixedPrecisionPlan | None
    calibration: str

    @property
    def ort_int8(self) -> bool:
        """True when the model can be exported as int8 QDQ (activations at 8 bits)."""
        return self.act_bits == 8

    def export(self, path: str | Path, example_input: Tensor) -> Path:
        """int8 QDQ ONNX when activations are 8-bit, else a float ONNX graph emulating the rounding."""
        if self.ort_int8:
            return Path(self.quantized.export_onnx(path, example_input))
        return emulation_onnx(self.quantized, path, example_input)


def run_lowbit_ptq(
    model: nn.Module,
    config: LowBitPTQ,
    calib: Tensor | None,
    example_input: Tensor | None = None,
    seed: int = 0,
) -> LowBitResult:
    """Run the :class:`LowBitPTQ` family on ``model`` (not modified).

    ``calib``: real calibration samples (ignored, and may be ``None``, when ``config.data_free``: then
    ``config.num_calibration`` samples are distilled from the BatchNorm statistics with ZeroQ; the input
    shape comes from ``example_input``).
    """
    from torchslim.quantization.ptq.zeroq import distill_data, quantizable_layers, set_bits
    from torchslim.quantization.static import StaticPTQ, quantize_static

    act_bits, act_signed = config.act_format()
    if config.data_free:
        shape_src = example_input if example_input is not None else calib
        if shape_src is None:
            raise ConfigError("data-free calibration needs example_input (for the input shape)")
        calib = distill_data(
            model,
            num_samples=config.num_calibration,
            input_shape=tuple(shape_src.shape[1:]),
            iterations=config.distill_iterations,
            lr=config.distill_lr,
            seed=seed,
        )
        what = f"ZeroQ distilled data ({config.num_calibration} samples, {config.distill_iterations} Adam steps)"
    else:
        if calib is None:
            raise ConfigError(f"{config.type_name}: needs calibration samples (or data_free: true)")
        calib = calib[: config.num_calibration]
        what = f"{calib.shape[0]} real training samples"
    base = StaticPTQ(
        calibrator=config.calibrator,
        num_calibration=int(calib.shape[0]),
        activations="int8" if act_signed else "uint8",
        reduce_range=False,
    )
    q = quantize_static(model, base, calib, progress=False)  # checks empty / too small / NaN first
    layers = quantizable_layers(model)
    numel = {n: int(m.weight.numel()) for n, m in layers.items()}  # type: ignore[operator]
    rows = {n: _rows(m) for n, m in layers.items()}
    plan = None
    if config.weights == "mixed":
        assert config.budget is not None
        plan = plan_mixed_precision(
            model, calib[: config.sensitivity_samples], config.budget, config.candidate_bits
        )
        bits = dict(plan.bits)
    else:
        wb = config.weight_bits()
        assert wb is not None
        bits = {n: wb for n in layers}
    rr = StaticPTQ(reduce_range=config.reduce_range).resolved_reduce_range()
    wrapped = {n for n, m in q.sim.named_modules() if type(m).__name__ == "WeightQuantWrapper"}
    # on CPUs without VNNI, 8-bit weights are stored in 7 bits (ORT's U8S8 kernels would saturate)
    sim_bits = {n: (7 if rr and b == 8 and act_bits == 8 else b) for n, b in bits.items() if n in wrapped}
    q = set_bits(q, sim_bits, act_bits)
    packed = sum(packed_weight_bytes(numel[n], rows[n], bits[n]) for n in layers)
    int8 = sum(packed_weight_bytes(numel[n], rows[n], 8) for n in layers)
    return LowBitResult(q, bits, act_bits, act_signed, packed, int8, plan, what)


class _EmulatedActQuant(nn.Module):
    """Fake quantisation written with Round/Clip (exports to plain float ONNX ops at any width)."""

    scale: Tensor
    zp: Tensor

    def __init__(self, scale: Tensor, zero_point: Tensor, qmin: int, qmax: int) -> None:
        super().__init__()
        self.register_buffer("scale", scale.detach().clone().float())
        self.register_buffer("zp", zero_point.detach().clone().float())
        self.qmin, self.qmax = float(qmin), float(qmax)

    def forward(self, x: Tensor) -> Tensor:
        q = torch.clamp(torch.round(x / self.scale) + self.zp, self.qmin, self.qmax)
        return (q - self.zp) * self.scale


def emulation_onnx(quantized: Any, path: str | Path, example_input: Tensor) -> Path:
    """Export ``quantized.sim`` as a *float* ONNX graph that emulates its quantisation at any width.

    Weights become float initializers holding the quantised values; each activation quantisation point
    becomes ``Clip(Round(x / s) + z) - z) * s``. ONNX Runtime runs this in float (no int8 kernels, no
    speed-up): it is how a model with activations below 8 bits is deployed and checked for parity.
    """
    from torchslim.export.onnx import export_onnx
    from torchslim.quantization.static import ActFakeQuant, WeightQuantWrapper

    sim = copy.deepcopy(quantized.sim).eval()
    for name, mod in list(sim.named_modules()):
        if isinstance(mod, ActFakeQuant):
            new: nn.Module = _EmulatedActQuant(mod.scale, mod.zero_point, mod.qmin, mod.qmax)
        elif isinstance(mod, WeightQuantWrapper):
            new = copy.deepcopy(mod.module)
            with torch.no_grad():
                new.weight.copy_(mod.quantized_weight().detach())  # type: ignore[operator]
        else:
            continue
        parent, _, leaf = name.rpartition(".")
        setattr(sim.get_submodule(parent) if parent else sim, leaf, new)
    sim.recompile()
    return export_onnx(sim, example_input, path)
