"""The compression pipeline: a recipe of stages run in order on one model, measured after each stage.

``compress(model, recipe, data=..., eval_data=...)`` runs each stage of the :class:`Recipe` (prune,
distil, fine-tune, quantize ...), and after every stage saves the model (checkpoint + ONNX), measures
accuracy, params, MACs and size on disk, and records the figures in the run store. At the end it times
every stage's deployable artifact in PyTorch and ONNX Runtime in ONE interleaved run, so the speedups in
the report are ratios measured side by side. An interrupted run (Ctrl-C, crash) is marked in the run
store and continues from its last finished stage with ``resume=True`` (``--resume`` on the CLI).

Stage configs are ordinary :class:`~torchslim.core.config.Config` subclasses; the function that runs a
stage is registered in :data:`torchslim.core.registry.STAGES` against the config type.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
from pydantic import Field, field_validator
from torch import nn
from torch.utils.data import Dataset

from torchslim.core.config import _WHERE, Config
from torchslim.core.errors import ConfigError, TorchSlimError
from torchslim.core.registry import STAGES
from torchslim.pruning.dcp import DCPConfig
from torchslim.pruning.npn import NPNConfig
from torchslim.reports.schema import Report, StageMetrics
from torchslim.train.trainer import TrainConfig, seed_everything

log = logging.getLogger(__name__)

__all__ = ["Recipe", "FineTune", "PipelineContext", "CompressResult", "compress", "load_recipe"]


# ---------------------------------------------------------------------------------------------------
# Recipe
# ---------------------------------------------------------------------------------------------------
def _parse_stages(value: Any) -> list[Config]:
    """Turn a list of stage configs or ``{type: ..., ...}`` mappings into typed, registered stages."""
    where = _WHERE.get() or "recipe"
    if not isinstance(value, list | tuple) or not value:
        raise ConfigError(f"{where}.stages: a recipe needs a non-empty list of stages")
    _register_stages()
    out: list[Config] = []
    for i, item in enumerate(value):
        at = f"{where}.stages[{i}]"
        if isinstance(item, dict):
            item = Config.from_dict(item, where=at)
        if not isinstance(item, Config):
            raise ConfigError(f"{at}: expected a stage config or a mapping with 'type', got {type(item).__name__}")
        if type(item) not in STAGES:
            known = ", ".join(sorted(c.type_name for c in STAGES.known()))
            raise ConfigError(f"{at}: {item.type_name!r} is not a pipeline stage (stages: {known})")
        out.append(item)
    return out


class Recipe(Config):
    """An ordered list of stages plus how to measure them.

    YAML form::

        name: demo
        stages:
          - {type: channel_prune, ratio: 0.5, round_to: 16}
          - {type: hinton_kd, temperature: 4.0, train: {epochs: 2, lr: 0.01}}
          - {type: static_ptq, num_calibration: 512}
    """

    type_name = "recipe"

    name: str = "recipe"
    stages: list[Any]
    seed: int = 0
    latency_batch: int = 64
    latency_repeats: int = 15
    threads: int | None = None
    eval_limit: int | None = None  # evaluate on the first N held-out samples only (None: all)
    # channel_prune stages first measure each group's sensitivity (accuracy drop when pruned alone) on
    # this many TRAINING samples; 0 turns it off (it costs one evaluation per prunable group)
    sensitivity_samples: int = 1000

    def __init__(self, **data: Any) -> None:
        # Stages are parsed here, outside pydantic, so their errors keep their own field paths.
        if "stages" in data:
            data["stages"] = _parse_stages(data["stages"])
        super().__init__(**data)

    def to_dict(self) -> dict[str, Any]:
        d = super().to_dict()
        d["stages"] = [s.to_dict() for s in self.stages]
        return d

    def fingerprint(self) -> str:
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:16]


def load_recipe(path: str | Path) -> Recipe:
    """Read a recipe from a YAML/JSON file (``yaml.safe_load``; never executes anything)."""
    import yaml

    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"recipe file {p} does not exist")
    try:
        data = yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"recipe file {p} is not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"recipe file {p}: expected a mapping with 'stages', got {type(data).__name__}")
    data.setdefault("type", "recipe")
    return Recipe.from_dict(data, where="recipe")


# ---------------------------------------------------------------------------------------------------
# Context and stage glue
# ---------------------------------------------------------------------------------------------------
@dataclass
class PipelineContext:
    """What a stage can read and change."""

    model: nn.Module
    original: nn.Module  # frozen copy of the input model: the teacher for distillation stages
    train_data: Dataset | None
    eval_data: Dataset | None
    example_input: torch.Tensor
    work_dir: Path
    stage_index: int = 0
    resume: bool = False
    progress: bool = True
    seed: int = 0
    sensitivity_samples: int = 0
    onnx_path: Path | None = None  # set by a stage that produces its own deployable ONNX (quantization)
    quantized: Any = None
    extra: dict[str, Any] = field(default_factory=dict)  # the stage's own figures for the report

    def stage_dir(self) -> Path:
        d = self.work_dir / f"stage{self.stage_index}"
        d.mkdir(parents=True, exist_ok=True)
        return d

    def need_train_data(self, what: str) -> Dataset:
        if self.train_data is None:
            raise ConfigError(f"stage {what!r} trains the model and needs training data: pass data=... (CLI: --data)")
        return self.train_data


class FineTune(Config):
    """Plain supervised fine-tuning (cross-entropy on the training data)."""

    type_name = "finetune"
    train: TrainConfig = TrainConfig()


def _register_stages() -> None:
    from torchslim.distillation import HintonKD, distill
    from torchslim.pruning import ChannelPrune, prune_
    from torchslim.pruning.structured.transformer import FFNPrune, HeadPrune, prune_ffn_, prune_heads_
    from torchslim.quantization import StaticPTQ, quantize_static

    if ChannelPrune in STAGES:
        return

    @STAGES.register(ChannelPrune)
    def _prune(cfg: ChannelPrune, ctx: PipelineContext) -> None:
        batches = _calibration_batches(ctx)  # data-driven criteria (hrank, taylor) score on these

        def run(model: nn.Module) -> tuple[Any, dict[str, torch.Tensor]]:
            res = prune_(model, cfg, (ctx.example_input,), data=batches)
            return res, _kept_indices(res)

        _pruning_stage(ctx, run)

    _register_pruning_stages()

    @STAGES.register(HeadPrune)
    def _heads(cfg: HeadPrune, ctx: PipelineContext) -> None:
        ctx.extra["kept_heads"] = {p: [a, b] for p, a, b in prune_heads_(ctx.model, cfg).layers}

    @STAGES.register(FFNPrune)
    def _ffn(cfg: FFNPrune, ctx: PipelineContext) -> None:
        ctx.extra["kept_neurons"] = {p: [a, b] for p, a, b in prune_ffn_(ctx.model, cfg).layers}

    @STAGES.register(HintonKD)
    def _distill(cfg: HintonKD, ctx: PipelineContext) -> None:
        res = distill(
            ctx.model,
            ctx.original,
            ctx.need_train_data(cfg.type_name),
            cfg,
            checkpoint_dir=ctx.stage_dir() / "train",
            resume=ctx.resume,
            progress=ctx.progress,
        )
        ctx.extra["train_steps"] = res.steps

    @STAGES.register(FineTune)
    def _finetune(cfg: FineTune, ctx: PipelineContext) -> None:
        from torchslim.train import Trainer

        res = Trainer(ctx.model, cfg.train, checkpoint_dir=ctx.stage_dir() / "train", progress=ctx.progress).fit(
            ctx.need_train_data(cfg.type_name), resume=ctx.resume
        )
        ctx.extra["train_steps"] = res.steps

    @STAGES.register(StaticPTQ)
    def _ptq(cfg: StaticPTQ, ctx: PipelineContext) -> None:
        calib, _ = _sample_batch(ctx.need_train_data(cfg.type_name), cfg.num_calibration, ctx.seed)
        q = quantize_static(ctx.model, cfg, calib, example_input=ctx.example_input, progress=ctx.progress)
        path = q.export_onnx(ctx.stage_dir() / "model_int8.onnx", ctx.example_input)
        # parity on up to 1024 held-out samples (the example batch alone says little about top-1 agreement)
        probe = ctx.example_input
        if ctx.eval_data is not None:
            probe, _ = _sample_batch(ctx.eval_data, 1024, ctx.seed)
        parity = q.parity(path, probe)
        ctx.extra["parity"] = _as_dict(parity)
        ctx.extra["quantization"] = {
            "method": cfg.type_name,
            "calibrator": cfg.calibrator,
            "weights": f"{cfg.weights} {cfg.granularity.replace('_', '-')}"
            + (" (7-bit values: CPU without VNNI)" if cfg.resolved_reduce_range() else ""),
            "activations": cfg.activations,
            "calibration_data": f"{q.num_calibration} real training samples",
        }
        if q.unsupported:
            ctx.extra["left_in_float"] = list(q.unsupported)
        ctx.extra["deployment"] = "ONNX Runtime runs int8 QDQ kernels (QLinearConv / QGemm ...)"
        ctx.quantized = q
        ctx.onnx_path = Path(path)

    _register_lowbit_stages()


# ---------------------------------------------------------------------------------------------------
# pruning stages: every one goes through _pruning_stage (kept channels, sensitivity, channel map)
# ---------------------------------------------------------------------------------------------------
class DCPPrune(DCPConfig):
    """Recipe stage ``dcp_prune``: discrimination-aware channel pruning (:func:`~torchslim.pruning.dcp.dcp_prune_`)
    with the fields of :class:`~torchslim.pruning.dcp.DCPConfig`, on the pipeline's training data."""

    type_name: ClassVar[str] = "dcp_prune"


class NPNPrune(NPNConfig):
    """Recipe stage ``npn_prune``: network pruning network (:func:`~torchslim.pruning.npn.npn_prune_`) with the
    fields of :class:`~torchslim.pruning.npn.NPNConfig`, on the pipeline's training data."""

    type_name: ClassVar[str] = "npn_prune"


class SensitivityPrune(Config):
    """Recipe stage ``sensitivity_prune``: non-uniform channel widths under a MACs budget.

    Each group's sensitivity (accuracy drop on ``Recipe.sensitivity_samples`` training samples with only that
    group pruned) is measured at every ratio in ``ratios``; a multiple-choice knapsack
    (:func:`~torchslim.pruning.sensitivity.sensitivity_widths`) picks one width per group minimising the summed
    drop with the pruned model's measured MACs within ``macs_ratio`` of the input's. Channels are then chosen
    inside each group by ``importance`` as in ``channel_prune``.

    YAML: ``{type: sensitivity_prune, macs_ratio: 0.5, importance: l1, round_to: 8}``
    """

    type_name: ClassVar[str] = "sensitivity_prune"

    macs_ratio: float = Field(gt=0.0, le=1.0)
    importance: str = "l1"
    ratios: list[float] = Field(default_factory=lambda: [0.25, 0.5, 0.75, 0.875])
    round_to: int = Field(default=1, ge=1)
    min_channels: int = Field(default=1, ge=1)
    include: list[str] = Field(default_factory=list)
    exclude: list[str] = Field(default_factory=list)
    seed: int = 0

    @field_validator("ratios")
    @classmethod
    def _ratios_in_range(cls, v: list[float]) -> list[float]:
        if not v or any(not 0.0 < r < 1.0 for r in v):
            raise ValueError(f"ratios must be a non-empty list of fractions in (0, 1), got {v}")
        return v

    def channel_prune(self) -> Any:
        """The :class:`~torchslim.pruning.ChannelPrune` (ratio 0) used for the widths and the channel choice."""
        from torchslim.pruning import ChannelPrune

        return ChannelPrune(ratio=0.0, importance=self.importance, round_to=self.round_to,
                            min_channels=self.min_channels, include=list(self.include),
                            exclude=list(self.exclude), seed=self.seed)


_CHANNEL_MAP = "channel_map.json"  # per stage: kept channels per group, in the ORIGINAL model's numbering


def _calibration_batches(ctx: PipelineContext, n: int = 256) -> list[tuple[torch.Tensor, torch.Tensor]] | None:
    """``n`` seeded training samples in batches of 64 (``None`` without training data)."""
    if ctx.train_data is None:
        return None
    x, y = _sample_batch(ctx.train_data, n, ctx.seed)
    return [(x[i : i + 64], y[i : i + 64]) for i in range(0, len(x), 64)]


def _sensitivity_probe(ctx: PipelineContext) -> Callable[[nn.Module], float] | None:
    """top-1 on ``ctx.sensitivity_samples`` seeded TRAINING samples, or ``None`` when sensitivity is off."""
    if ctx.train_data is None or ctx.sensitivity_samples <= 0:
        return None
    from torchslim.bench.accuracy import top1

    sx, sy = _sample_batch(ctx.train_data, ctx.sensitivity_samples, ctx.seed + 1)
    probe = torch.utils.data.TensorDataset(sx, sy)
    return lambda m: float(top1(m, probe))


def _kept_indices(result: Any) -> dict[str, torch.Tensor]:
    """The channel indices each pruned group of a :class:`~torchslim.pruning.PruneResult` kept (for inner
    distillation and the per-group sensitivity)."""
    return {g.name: torch.tensor(g.kept, dtype=torch.long) for g in result.groups if g.channels_after < g.channels_before}


def _keep_sensitivity(
    parent: nn.Module, keep: dict[str, torch.Tensor], example_inputs: tuple[Any, ...],
    evaluate: Callable[[nn.Module], float],
) -> tuple[float, dict[str, float]]:
    """Baseline score and, per group, the drop with ONLY that group cut to exactly its kept channels."""
    from torchslim.pruning import ChannelPrune, prune_

    base = float(evaluate(parent))
    drops: dict[str, float] = {}
    for name, idx in keep.items():
        m = copy.deepcopy(parent)
        prune_(m, ChannelPrune(ratio=0.0), example_inputs, keep={name: idx})
        drops[name] = round(base - float(evaluate(m)), 4)
    return base, dict(sorted(drops.items(), key=lambda kv: -kv[1]))


def _load_channel_map(ctx: PipelineContext) -> dict[str, list[int]]:
    """Kept channels per group (original numbering) after the latest pruning stage before this one."""
    for i in range(ctx.stage_index - 1, 0, -1):
        f = ctx.work_dir / f"stage{i}" / _CHANNEL_MAP
        if f.is_file():
            data: dict[str, list[int]] = json.loads(f.read_text())
            return data
    return {}


def _pruning_stage(ctx: PipelineContext, run: Callable[[nn.Module], tuple[Any, dict[str, torch.Tensor]]]) -> None:
    """Run one pruning method and record what every pruning stage reports.

    ``run(model)`` prunes ``model`` in place and returns ``(PruneResult, kept indices per group)``. Recorded in
    ``ctx.extra``: ``kept_channels`` (group -> [before, after]), ``sensitivity`` (group -> top-1 drop on training
    samples with only that group cut to exactly the kept channels) and ``sensitivity_baseline``, ``skipped``;
    and, in the stage folder, the channel map in the original model's numbering (read by ``inner_kd``).
    """
    evaluate = _sensitivity_probe(ctx)
    parent = copy.deepcopy(ctx.model).eval() if evaluate is not None else None
    result, keep = run(ctx.model)
    ctx.extra["kept_channels"] = {g.name: [g.channels_before, g.channels_after] for g in result.groups}
    if result.skipped:
        ctx.extra["skipped"] = [list(map(str, s)) for s in result.skipped]
    pruned = {n: k for n, k in keep.items() if n in ctx.extra["kept_channels"]
              and len(k) < ctx.extra["kept_channels"][n][0]}
    if parent is not None and evaluate is not None and pruned:
        base, drops = _keep_sensitivity(parent, pruned, (ctx.example_input[:1],), evaluate)
        ctx.extra["sensitivity"] = drops
        ctx.extra["sensitivity_baseline"] = base
    cmap = _load_channel_map(ctx)
    for name, idx in pruned.items():
        prev = cmap.get(name)
        cmap[name] = [prev[i] for i in idx.tolist()] if prev is not None else idx.tolist()
    (ctx.stage_dir() / _CHANNEL_MAP).write_text(json.dumps(cmap))


def _register_pruning_stages() -> None:
    """knapsack_prune, dcp_prune, npn_prune, sensitivity_prune and the inner_kd recovery stage."""
    from torchslim.pruning import prune_
    from torchslim.pruning.dcp import dcp_prune_
    from torchslim.pruning.knapsack import (
        InnerKD,
        KnapsackPrune,
        default_taps,
        inner_distill,
        knapsack_prune_,
    )
    from torchslim.pruning.npn import npn_prune_
    from torchslim.pruning.sensitivity import sensitivity_widths

    @STAGES.register(KnapsackPrune)
    def _knapsack(cfg: KnapsackPrune, ctx: PipelineContext) -> None:
        batches = _calibration_batches(ctx)
        if batches is None:
            ctx.need_train_data(cfg.type_name)

        def run(model: nn.Module) -> tuple[Any, dict[str, torch.Tensor]]:
            r = knapsack_prune_(model, cfg, (ctx.example_input[:1],), batches or [])
            ctx.extra["macs_budget"] = {"macs_ratio": cfg.macs_ratio, "macs_budget": r.budget,
                                   "macs_before": r.macs_before, "macs_after": r.macs_after}
            return r.prune, r.keep

        _pruning_stage(ctx, run)

    @STAGES.register(DCPPrune)
    def _dcp(cfg: DCPPrune, ctx: PipelineContext) -> None:
        data = ctx.need_train_data(cfg.type_name)

        def run(model: nn.Module) -> tuple[Any, dict[str, torch.Tensor]]:
            r = dcp_prune_(model, cfg, data, (ctx.example_input[:1],), progress=ctx.progress)
            if r.skipped:
                ctx.extra["dcp_left_intact"] = [list(map(str, s)) for s in r.skipped]
            return r.prune, r.keep

        _pruning_stage(ctx, run)

    @STAGES.register(NPNPrune)
    def _npn(cfg: NPNPrune, ctx: PipelineContext) -> None:
        data = ctx.need_train_data(cfg.type_name)

        def run(model: nn.Module) -> tuple[Any, dict[str, torch.Tensor]]:
            r = npn_prune_(model, cfg, data, (ctx.example_input[:1],), progress=ctx.progress)
            return r.prune, r.keep

        _pruning_stage(ctx, run)

    @STAGES.register(SensitivityPrune)
    def _sens(cfg: SensitivityPrune, ctx: PipelineContext) -> None:
        ctx.need_train_data(cfg.type_name)
        evaluate = _sensitivity_probe(ctx)
        if evaluate is None:
            raise ConfigError("sensitivity_prune measures each group's sensitivity: set recipe.sensitivity_samples > 0")
        batches = _calibration_batches(ctx)
        cp = cfg.channel_prune()
        ex = (ctx.example_input[:1],)

        def run(model: nn.Module) -> tuple[Any, dict[str, torch.Tensor]]:
            plan = sensitivity_widths(model, cp, ex, evaluate, cfg.macs_ratio, tuple(cfg.ratios), data=batches)
            ctx.extra["macs_budget"] = {"macs_ratio": cfg.macs_ratio, "macs_budget": plan.budget,
                                   "macs_before": plan.macs_before, "macs_after": plan.macs_after}
            ctx.extra["width_options"] = {g: [[w, round(d, 4), m] for w, d, m in opts]
                                          for g, opts in plan.options.items()}
            res = prune_(model, cp, ex, data=batches, widths=plan.widths)
            return res, _kept_indices(res)

        _pruning_stage(ctx, run)

    @STAGES.register(InnerKD)
    def _inner_kd(cfg: InnerKD, ctx: PipelineContext) -> None:
        data = ctx.need_train_data(cfg.type_name)
        cmap = {n: torch.tensor(v, dtype=torch.long) for n, v in _load_channel_map(ctx).items()}
        taps: dict[str, torch.Tensor | None] = dict(default_taps(ctx.original, (ctx.example_input[:1],), cmap))
        ctx.extra["inner_taps"] = sorted(taps)
        if not taps:
            ctx.extra["note"] = "no pruning stage before inner_kd: no inner features to match (logit KD only)"
        res = inner_distill(ctx.model, ctx.original, data, cfg, taps, progress=ctx.progress)
        ctx.extra["train_steps"] = res.steps


def _check_patterns(at: str, cfg: Any, paths: list[str]) -> None:
    import fnmatch

    for kind in ("include", "exclude"):
        for pat in getattr(cfg, kind, None) or []:
            if not any(fnmatch.fnmatchcase(x, pat) for x in paths):
                raise ConfigError(
                    f"{at}.{kind}: {pat!r} matches no layer of the model; layer names look like {paths[:6]} "
                    "(glob patterns on module paths, e.g. 'layer1.*')"
                )


def _preflight(recipe: Recipe, model: nn.Module, example_input: torch.Tensor) -> None:
    """Check every pruning stage against the model BEFORE any work (measurement, training, pruning).

    Fails with a :class:`ConfigError` naming the stage and field for: an include / exclude pattern matching no
    layer; a channel_prune / dcp_prune ratio that leaves some group fewer than ``min_channels`` channels; a
    knapsack_prune / sensitivity_prune MACs budget below what one channel (``min_channels``) per group costs.
    Later stages are checked against the input model (their own input is only known when they run).
    """
    from torchslim.core.cost import profile
    from torchslim.pruning import ChannelPrune, prune_
    from torchslim.pruning.api import PruneError
    from torchslim.pruning.knapsack import KnapsackPrune

    paths = [n for n, _ in model.named_modules() if n]
    ex = (example_input[:1],)
    for i, cfg in enumerate(recipe.stages):
        at = f"recipe.stages[{i}] ({cfg.type_name})"
        _check_patterns(at, cfg, paths)
        if not isinstance(cfg, ChannelPrune | DCPPrune | KnapsackPrune | SensitivityPrune):
            continue
        min_ch = getattr(cfg, "min_channels", 1)
        ratio = getattr(cfg, "ratio", 0.0)
        dry = ChannelPrune(ratio=ratio, round_to=getattr(cfg, "round_to", 1), min_channels=min_ch,
                           include=list(cfg.include), exclude=list(cfg.exclude))
        try:
            res = prune_(copy.deepcopy(model), dry, ex)
            if isinstance(cfg, KnapsackPrune | SensitivityPrune):
                smallest = {g.name: min(min_ch, g.channels_before) for g in res.groups}
                trial = copy.deepcopy(model)
                prune_(trial, dry.model_copy(update={"ratio": 0.0}), ex, widths=smallest)
                full, least = profile(model, ex).macs, profile(trial, ex).macs
                if least > cfg.macs_ratio * full:
                    raise ConfigError(
                        f"{at}.macs_ratio: {cfg.macs_ratio} is below what keeping {min_ch} channel(s) in every "
                        f"prunable group already costs ({least / full:.1%} of the MACs): it would remove whole "
                        "groups; raise macs_ratio or prune more layers (include / exclude)"
                    )
        except PruneError as e:
            raise ConfigError(f"{at}: {e}") from None


def _register_lowbit_stages() -> None:
    """Low-bit PTQ stages (:mod:`torchslim.quantization.mixed`): any-width / data-free / mixed precision,
    PWLQ and multi-point. Each records its sizes and an explicit deployment note in the stage details."""
    from torchslim.quantization.mixed import PWLQPTQ, LowBitPTQ, MultiPointPTQ, parse_bits, run_lowbit_ptq

    @STAGES.register(LowBitPTQ)
    def _lowbit(cfg: LowBitPTQ, ctx: PipelineContext) -> None:
        calib = None
        if not cfg.data_free:
            calib, _ = _sample_batch(ctx.need_train_data(cfg.type_name), cfg.num_calibration, ctx.seed)
        res = run_lowbit_ptq(ctx.model, cfg, calib, example_input=ctx.example_input, seed=ctx.seed)
        path = res.export(ctx.stage_dir() / ("model_int8.onnx" if res.ort_int8 else "model_emulated.onnx"),
                          ctx.example_input)
        probe = ctx.example_input
        if ctx.eval_data is not None:
            probe, _ = _sample_batch(ctx.eval_data, 1024, ctx.seed)
        ctx.extra["parity"] = _as_dict(res.quantized.parity(path, probe))
        from torchslim.bench.size import file_bytes

        wbits = sorted(set(res.bits.values()))
        ctx.extra["quantization"] = {
            "method": cfg.type_name,
            "calibrator": cfg.calibrator,
            "weights": cfg.weights if cfg.weights != "mixed" else "mixed " + "/".join(f"int{b}" for b in wbits),
            "activations": cfg.activations,
            "calibration_data": res.calibration,
        }
        ctx.extra["weight_bytes"] = {
            "packed": res.packed_bytes,
            "packed_int8": res.int8_bytes,
            ("onnx_file" if res.ort_int8 else "onnx_file_float"): file_bytes(path),
        }
        if res.plan is not None:
            ctx.extra["budget"] = {"spec": cfg.budget, "bytes": res.plan.budget_bytes}
            ctx.extra["sensitivity_table"] = res.plan.table()
            ctx.extra["pareto_front"] = [[int(a), float(b)] for a, b in res.plan.front]
        if res.quantized.unsupported:
            ctx.extra["left_in_float"] = list(res.quantized.unsupported)
        if res.ort_int8:
            low = any(b < 8 for b in res.bits.values())
            ctx.extra["deployment"] = (
                "ONNX Runtime runs int8 QDQ kernels"
                + (
                    "; the weights below 8 bits are stored in int8 containers, so the ONNX file and the "
                    "kernels are those of a W8A8 model (the packed size is what a bit-packing format would need)"
                    if low
                    else ""
                )
            )
        else:
            ctx.extra["deployment"] = (
                f"activations at {res.act_bits} bits have no ONNX Runtime int8 kernel: the exported ONNX is a float "
                "graph emulating the rounding (Round/Clip), which ORT runs in float (no speed-up; the packed "
                "size is theoretical)"
            )
        ctx.quantized = res.quantized
        ctx.onnx_path = Path(path)

    @STAGES.register(PWLQPTQ)
    def _pwlq(cfg: PWLQPTQ, ctx: PipelineContext) -> None:
        from torchslim.quantization.mixed import packed_weight_bytes
        from torchslim.quantization.ptq.pwlq import PWLQ, apply_pwlq

        bits = parse_bits(cfg.weights)[0]
        rep = apply_pwlq(ctx.model, PWLQ(bits=bits, per_channel=cfg.per_channel))
        layers = dict(ctx.model.named_modules())
        # per output channel: breakpoint p and range m (2 fp32)
        packed = sum(
            packed_weight_bytes(int(r["numel"]), _out_rows(layers[n], cfg.per_channel), bits, 8.0)
            for n, r in rep.items()
        )
        _weight_only_extra(ctx, "pwlq", cfg.weights, rep, packed)

    @STAGES.register(MultiPointPTQ)
    def _multipoint(cfg: MultiPointPTQ, ctx: PipelineContext) -> None:
        from torchslim.quantization.mixed import packed_weight_bytes
        from torchslim.quantization.ptq.multipoint import MultiPoint, apply_multipoint

        bits = parse_bits(cfg.weights)[0]
        calibration = None
        if cfg.num_calibration > 0 and ctx.train_data is not None:
            x, _ = _sample_batch(ctx.train_data, cfg.num_calibration, ctx.seed)
            calibration = list(x.split(64))
        mp = MultiPoint(bits=bits, mean_points=cfg.mean_points, max_points=cfg.max_points, scale_grid=32)
        rep = apply_multipoint(ctx.model, mp, calibration=calibration)
        layers = dict(ctx.model.named_modules())
        # every point of a channel has its own fp32 scale
        packed = sum(
            packed_weight_bytes(int(r["numel"]), _out_rows(layers[n], True), r["bits_per_weight"], 4.0 * r["mean_points"])
            for n, r in rep.items()
        )
        _weight_only_extra(ctx, "multipoint", cfg.weights, rep, packed)


def _out_rows(layer: nn.Module, per_channel: bool) -> int:
    w = layer.weight
    assert isinstance(w, torch.Tensor)
    return int(w.shape[0]) if per_channel else 1


def _weight_only_extra(
    ctx: PipelineContext, method: str, weights: str, rep: dict[str, dict[str, float]], packed: int
) -> None:
    """Stage details of a weight-only (simulated) quantiser: per-layer error, sizes, deployment note."""
    numel = sum(int(r["numel"]) for r in rep.values())
    ctx.extra["quantization"] = {"method": method, "weights": weights, "activations": "float (weight-only)"}
    ctx.extra["weight_bytes"] = {"packed": packed, "fp32": 4 * numel}
    ctx.extra["layer_sqnr_db"] = {n: round(float(r["sqnr_db"]), 2) for n, r in rep.items()}
    ctx.extra["deployment"] = (
        f"{method} is simulated in PyTorch: the weights are float tensors holding the quantised values, so the "
        "exported ONNX is a float model and ORT runs it in float (size on disk and latency are those of FP32; "
        "the packed size is what a bit-packing format would need, not measured in any runtime)"
    )


def _sample_batch(data: Dataset, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` samples drawn without replacement (seeded) from a data set of ``(x, y)`` items."""
    g = torch.Generator().manual_seed(seed)
    n = min(n, len(data))  # type: ignore[arg-type]
    idx = torch.randperm(len(data), generator=g)[:n].tolist()  # type: ignore[arg-type]
    items = [data[i] for i in idx]
    return torch.stack([it[0] for it in items]), torch.as_tensor([int(it[1]) for it in items])


def _as_dict(x: Any) -> Any:
    if hasattr(x, "to_dict"):
        return x.to_dict()
    if hasattr(x, "__dataclass_fields__"):
        import dataclasses

        return dataclasses.asdict(x)
    return x


# ---------------------------------------------------------------------------------------------------
# compress
# ---------------------------------------------------------------------------------------------------
@dataclass
class StageArtifact:
    name: str
    onnx_path: Path
    torch_model: nn.Module | None  # None where the stage's deployable form is ONNX only (int8)


@dataclass
class CompressResult:
    """The outcome of :func:`compress`: the final model, its deployable ONNX file and the report."""

    model: nn.Module
    onnx_path: Path
    report: Report
    run_id: int | None
    work_dir: Path
    artifacts: list[StageArtifact] = field(default_factory=list)

    def table(self) -> None:
        from torchslim.reports.render import print_table

        print_table(self.report)

    def export(self, directory: str | Path) -> dict[str, Path]:
        """Copy the final ONNX model, write the checkpoint of the last PyTorch model and the report."""
        import shutil

        from torchslim.export.checkpoint import save_checkpoint
        from torchslim.reports.render import write_report

        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        paths = dict(write_report(self.report, out))
        dst = out / "model.onnx"
        shutil.copyfile(self.onnx_path, dst)
        paths["onnx"] = dst
        shape = list(self.report.meta.get("input_shape") or [])[1:]  # per-sample shape, for `torchslim export`
        paths["checkpoint"] = save_checkpoint(
            self.model, out / "checkpoint", meta={"title": self.report.title, "input_shape": shape}
        )
        return paths


def _data_fingerprint(ds: Dataset | None) -> str | None:
    if ds is None:
        return None
    h = hashlib.sha256()
    tensors = getattr(ds, "tensors", None)
    if tensors:
        for t in tensors:
            h.update(str(tuple(t.shape)).encode())
            h.update(t.flatten()[:4096].numpy().tobytes())
    else:
        h.update(str(len(ds)).encode())  # type: ignore[arg-type]
    return h.hexdigest()[:16]


def _subset(ds: Dataset | None, limit: int | None) -> Dataset | None:
    if ds is None or limit is None or limit >= len(ds):  # type: ignore[arg-type]
        return ds
    return torch.utils.data.Subset(ds, range(limit))


def _measure_static(
    name: str,
    ctx: PipelineContext,
    seconds: float,
) -> tuple[StageMetrics, StageArtifact]:
    """Accuracy, params, MACs, size on disk of the stage's deployable artifact (latency comes later)."""
    from torchslim.bench.accuracy import ort_predict, top1
    from torchslim.bench.size import file_bytes
    from torchslim.core.cost import profile
    from torchslim.export.checkpoint import save_checkpoint
    from torchslim.export.onnx import export_onnx

    ctx.model.eval()
    sd = ctx.stage_dir()
    extra = dict(ctx.extra)
    costs = profile(ctx.model, (ctx.example_input[:1],))
    if ctx.onnx_path is not None:  # the stage produced its own deployable (int8) model
        onnx_path = ctx.onnx_path
        torch_model = None
        acc = top1(ort_predict(onnx_path), ctx.eval_data) if ctx.eval_data is not None else None
        bops = costs.macs * 8 * 8
    else:
        onnx_path = export_onnx(ctx.model, ctx.example_input, sd / "model.onnx")
        # a snapshot: later stages change ctx.model in place, and each stage is timed as it was
        torch_model = copy.deepcopy(ctx.model).eval()
        acc = top1(ctx.model, ctx.eval_data) if ctx.eval_data is not None else None
        ckpt = save_checkpoint(ctx.model, sd / "checkpoint", meta={"stage": name, "input_shape": list(ctx.example_input.shape[1:])})
        extra["checkpoint_bytes"] = file_bytes(ckpt)
        bops = costs.bops
    extra["bops"] = int(bops)
    m = StageMetrics(
        name=name,
        accuracy=acc,
        params=int(costs.params),
        macs=int(costs.macs),
        size_bytes=file_bytes(onnx_path),
        seconds=seconds,
        extra=extra,
    )
    return m, StageArtifact(name, Path(onnx_path), torch_model)


def _measure_latency(
    artifacts: list[StageArtifact], example: torch.Tensor, repeats: int, threads: int | None
) -> dict[str, dict[str, float | None]]:
    """Time every artifact in PyTorch and ONNX Runtime in one interleaved run."""
    from torchslim.bench import latency

    variants: dict[str, Callable[[], object]] = {}
    for i, a in enumerate(artifacts):
        key = f"{i}:{a.name}"
        if a.torch_model is not None:
            variants[key + ":torch"] = latency.torch_callable(a.torch_model, example)
        variants[key + ":ort"] = latency.ort_callable(a.onnx_path, example, threads=threads)
    stats = latency.compare(variants, repeats=repeats, threads=threads)
    out: dict[str, dict[str, float | None]] = {}
    for i, a in enumerate(artifacts):
        key = f"{i}:{a.name}"
        t = stats.get(key + ":torch")
        o = stats.get(key + ":ort")
        out[key] = {
            "torch": t.median_ms if t is not None else None,
            "ort": o.median_ms if o is not None else None,
        }
    return out


@contextlib.contextmanager
def _run_status(store: Any, run_id: int | None) -> Iterator[None]:
    try:
        yield
    except KeyboardInterrupt:
        if store is not None and run_id is not None:
            store.finish_run(run_id, "interrupted")
        raise
    except BaseException:
        if store is not None and run_id is not None:
            store.finish_run(run_id, "failed")
        raise


def compress(
    model: nn.Module,
    recipe: Recipe | dict[str, Any] | str | Path,
    data: Dataset | None = None,
    eval_data: Dataset | None = None,
    *,
    example_input: torch.Tensor | None = None,
    title: str | None = None,
    work_dir: str | Path | None = None,
    report_dir: str | Path | None = None,
    store: Any = None,
    resume: bool | int = False,
    progress: bool = True,
    on_stage: Callable[[StageMetrics], None] | None = None,
) -> CompressResult:
    """Run ``recipe`` on ``model`` and measure after every stage.

    Args:
        model: the model to compress (modified in place; a frozen copy is kept as the teacher).
        recipe: a :class:`Recipe`, its dict form, or a YAML path.
        data: training data (distillation, fine-tuning) and the source of calibration samples.
        eval_data: held-out data for accuracy (never used for training or calibration).
        example_input: a batch used for export and latency; default: the first ``latency_batch``
            samples of ``eval_data`` (or ``data``).
        work_dir: where checkpoints and ONNX files of each stage go (default ``~/.torchslim/work/run-ID``).
        report_dir: if given, write report.md / report.html / report.json there.
        store: a :class:`~torchslim.reports.store.RunStore`; default: the user's run store.
        resume: ``True`` resumes the newest unfinished run of this recipe and model; an int resumes that run.

    Example::

        import torchslim as ts
        model = ts.zoo.load("resnet-fmnist")
        r = ts.compress(model, "examples/recipes/demo.yaml",
                        data=ts.data.fashion_mnist("train"), eval_data=ts.data.fashion_mnist("test"))
        r.table()
    """
    from torchslim.export.checkpoint import load_checkpoint
    from torchslim.reports.store import RunStore

    if not isinstance(recipe, Recipe):
        recipe = load_recipe(recipe) if isinstance(recipe, str | Path) else Recipe.from_dict({"type": "recipe", **recipe})
    _register_stages()
    seed_everything(recipe.seed)
    if recipe.threads:
        torch.set_num_threads(recipe.threads)
    threads = recipe.threads or torch.get_num_threads()

    source = eval_data if eval_data is not None else data
    if example_input is None:
        if source is None:
            raise ConfigError("compress needs example_input=... or a data set to take an example batch from")
        n = min(recipe.latency_batch, len(source))  # type: ignore[arg-type]
        example_input = torch.stack([source[i][0] for i in range(n)])
    eval_set = _subset(eval_data, recipe.eval_limit)
    _preflight(recipe, model, example_input)  # bad pruning input fails here, before any work

    from torchslim.zoo import spec_of

    spec = spec_of(model)
    title = title or f"{(spec or {}).get('name', type(model).__name__)} / {recipe.name}"
    store = store if store is not None else RunStore()
    fingerprint = {"recipe": recipe.fingerprint(), "model": json.dumps(spec, sort_keys=True, default=str)}

    run_id: int | None = None
    done: list[StageMetrics] = []
    if resume:
        run_id = _find_resumable(store, fingerprint, resume)
        if run_id is not None:
            row, rep = store.get_run(run_id)
            done = store.completed_stages(run_id)
            work = Path(row.meta["work_dir"])
            log.info("resuming run %s from stage %d", run_id, len(done))
        else:
            log.info("no unfinished run of this recipe to resume: starting a new one")
    from torchslim.bench.latency import environment, tune_malloc

    tune_malloc()  # before anything allocates: eager PyTorch is up to 2x slower without it (DESIGN.md 7)

    meta: dict[str, Any] = {
        "batch": int(example_input.shape[0]),
        "input_shape": list(example_input.shape),
        "threads": threads,
        "seed": recipe.seed,
        "environment": environment(),
        "data": getattr(data, "name", type(data).__name__ if data is not None else None),
        "data_hash": _data_fingerprint(data),
        "eval_data": getattr(eval_data, "name", None),
        "eval_samples": len(eval_set) if eval_set is not None else 0,  # type: ignore[arg-type]
        "fingerprint": fingerprint,
    }
    if run_id is None:
        run_id = store.start_run(title, recipe.to_dict(), meta)
        work = Path(work_dir) if work_dir is not None else _default_work_dir(run_id)
        meta["work_dir"] = str(work)
        store.update_meta(run_id, meta)
        done = []
    else:
        store.finish_run(run_id, "running")
    work.mkdir(parents=True, exist_ok=True)

    original = copy.deepcopy(model).eval()
    for p in original.parameters():
        p.requires_grad_(False)

    report = Report(title=title, meta={**meta, "recipe": recipe.to_dict(), "run_id": run_id})
    ctx = PipelineContext(
        model=model,
        original=original,
        train_data=data,
        eval_data=eval_set,
        example_input=example_input,
        work_dir=work,
        progress=progress,
        seed=recipe.seed,
        sensitivity_samples=recipe.sensitivity_samples,
    )
    artifacts: list[StageArtifact] = []
    names = ["original"] + [f"{i + 1}. {s.type_name}" for i, s in enumerate(recipe.stages)]

    with _run_status(store, run_id):
        for idx, name in enumerate(names):
            ctx.stage_index = idx
            ctx.extra = {}
            if idx < len(done):  # finished in an earlier, interrupted attempt: reload, don't redo
                prev = done[idx]
                report.stages.append(prev)
                sd = ctx.stage_dir()
                if (sd / "checkpoint").exists():
                    ctx.model = load_checkpoint(sd / "checkpoint", model=ctx.model)
                    artifacts.append(StageArtifact(name, sd / "model.onnx", copy.deepcopy(ctx.model).eval()))
                else:
                    artifacts.append(StageArtifact(name, Path(prev.extra["onnx_path"]), None))
                    ctx.onnx_path = Path(prev.extra["onnx_path"])
                continue
            t0 = time.perf_counter()
            if idx > 0:
                stage_cfg = recipe.stages[idx - 1]
                ctx.resume = bool(resume)
                STAGES.resolve(stage_cfg)(stage_cfg, ctx)
                if ctx.onnx_path is not None and idx < len(names) - 1:
                    raise ConfigError(
                        f"recipe.stages[{idx - 1}] ({stage_cfg.type_name}) produces an int8 ONNX model: "
                        "it must be the last stage"
                    )
            seconds = time.perf_counter() - t0
            metrics, art = _measure_static(name, ctx, seconds)
            metrics.extra["onnx_path"] = str(art.onnx_path)
            report.stages.append(metrics)
            artifacts.append(art)
            store.record_stage(run_id, idx, metrics)
            if on_stage is not None:
                on_stage(metrics)

        lat = _measure_latency(artifacts, example_input, recipe.latency_repeats, threads)
        for i, (m, a) in enumerate(zip(report.stages, artifacts, strict=True)):
            figures = lat[f"{i}:{a.name}"]
            m.latency_ms_torch = figures["torch"]
            m.latency_ms_ort = figures["ort"]
            store.record_stage(run_id, i, m)
        store.finish_run(run_id, "finished")

    if report_dir is not None:
        from torchslim.reports.render import write_report

        write_report(report, Path(report_dir))
    final_onnx = artifacts[-1].onnx_path
    return CompressResult(model=ctx.model, onnx_path=final_onnx, report=report, run_id=run_id, work_dir=work, artifacts=artifacts)


def _default_work_dir(run_id: int) -> Path:
    import os

    root = Path(os.environ.get("TORCHSLIM_HOME", Path.home() / ".torchslim"))
    return root / "work" / f"run-{run_id}"


def _find_resumable(store: Any, fingerprint: dict[str, str], resume: bool | int) -> int | None:
    if not isinstance(resume, bool):
        row, _ = store.get_run(int(resume))
        if row.status == "finished":
            raise TorchSlimError(f"run {resume} already finished; nothing to resume")
        return int(resume)
    for row in store.list_runs(limit=200):
        if row.status in ("interrupted", "failed", "running") and (row.meta or {}).get("fingerprint") == fingerprint:
            return int(row.id)
    return None
