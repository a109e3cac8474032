"""The ``torchslim`` command line: compress | prune | quantize | distill | export | bench | runs | report."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from torchslim.core.errors import TorchSlimError

app = typer.Typer(
    name="torchslim",
    help="Make PyTorch models smaller and faster, and prove it.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
runs_app = typer.Typer(help="The run store: every compress run with its per-stage figures.", no_args_is_help=True)
app.add_typer(runs_app, name="runs")
console = Console(stderr=True)


def _fail(msg: str, code: int = 2) -> None:
    console.print(f"[bold red]error:[/] {msg}")
    raise typer.Exit(code)


def _store(runs_db: Path | None):  # type: ignore[no-untyped-def]
    from torchslim.reports.store import RunStore

    return RunStore(runs_db)


def _dataset_for(model_name: str, split: str):  # type: ignore[no-untyped-def]
    from torchslim import data

    if model_name.endswith("fmnist") or "fashion" in model_name:
        return data.fashion_mnist(split)
    if model_name.endswith("mnist"):
        return data.mnist(split)
    return None


@app.command()
def compress(
    model: Annotated[str, typer.Option(help="A zoo model name (see `torchslim compress --list-models`), e.g. resnet-fmnist.")] = "resnet-fmnist",
    recipe: Annotated[Path | None, typer.Option(help="Recipe YAML: a list of stages (prune, distill, quantize ...).")] = None,
    data: Annotated[str | None, typer.Option(help="Training/calibration data: fashion-mnist or mnist (default: the model's own).")] = None,
    report_dir: Annotated[Path | None, typer.Option(help="Write report.md, report.html and report.json here.")] = None,
    export_dir: Annotated[Path | None, typer.Option(help="Also copy the final model.onnx and checkpoint here.")] = None,
    work_dir: Annotated[Path | None, typer.Option(help="Where each stage's checkpoint and ONNX go (default ~/.torchslim/work/run-ID).")] = None,
    runs_db: Annotated[Path | None, typer.Option(help="Run store (SQLite) path; default ~/.torchslim/runs.db or $TORCHSLIM_RUNS_DB.")] = None,
    resume: Annotated[bool, typer.Option(help="Continue the newest interrupted run of this model and recipe.")] = False,
    resume_run: Annotated[int | None, typer.Option(help="Continue this run id.")] = None,
    threads: Annotated[int | None, typer.Option(help="Threads for PyTorch and ONNX Runtime (default: recipe's, else all cores).")] = None,
    progress: Annotated[bool, typer.Option(help="Show progress bars.")] = True,
    list_models: Annotated[bool, typer.Option("--list-models", help="List the zoo's models and exit.")] = False,
) -> None:
    """Run a recipe of stages on a model, measure after each stage, and report."""
    from torchslim import zoo
    from torchslim.pipeline import load_recipe

    if list_models:
        for name in zoo.available():
            typer.echo(name)
        return
    if recipe is None:
        _fail("--recipe is required (example: examples/recipes/demo.yaml)")
    assert recipe is not None
    rec = load_recipe(recipe)  # fails before any work on a bad recipe
    _run_recipe(rec, model, data, report_dir, export_dir, work_dir, runs_db, resume, resume_run, threads, progress,
                label=str(recipe))


def _run_recipe(
    rec,  # type: ignore[no-untyped-def]
    model: str,
    data: str | None,
    report_dir: Path | None,
    export_dir: Path | None,
    work_dir: Path | None,
    runs_db: Path | None,
    resume: bool,
    resume_run: int | None,
    threads: int | None,
    progress: bool,
    label: str,
) -> None:
    """Load the model and data, run the recipe through the pipeline, print and write the report."""
    from torchslim import zoo
    from torchslim.pipeline import compress as run_compress

    if threads is not None:
        rec = rec.model_copy(update={"threads": threads})
    train = _dataset_for(data or model, "train")
    test = _dataset_for(data or model, "test")
    if train is None:
        _fail(f"no data set known for model {model!r}: pass --data fashion-mnist or --data mnist")
    net = zoo.load(model, pretrained=True, progress=progress)
    store = _store(runs_db)
    console.print(f"[bold]torchslim[/] {model} with {label} ({len(rec.stages)} stages)")

    def on_stage(m) -> None:  # type: ignore[no-untyped-def]
        acc = f"{100 * m.accuracy:.2f}%" if m.accuracy is not None else "-"
        console.print(f"  [green]done[/] {m.name}: accuracy {acc}, params {m.params:,}, size {m.size_bytes:,} B, {m.seconds:.1f} s")

    try:
        result = run_compress(
            net,
            rec,
            data=train,
            eval_data=test,
            work_dir=work_dir,
            report_dir=report_dir,
            store=store,
            resume=resume_run if resume_run is not None else resume,
            progress=progress,
            on_stage=on_stage,
        )
    except KeyboardInterrupt:
        console.print("[yellow]interrupted[/]: the run is marked 'interrupted'; continue it with --resume")
        raise typer.Exit(130) from None
    result.table()
    if export_dir is not None:
        paths = result.export(export_dir)
        console.print(f"exported: {', '.join(str(p) for p in paths.values())}")
    if report_dir is not None:
        console.print(f"report: {report_dir}/report.md, report.html, report.json (run {result.run_id})")


# Options shared by the commands that run the pipeline.
ModelOpt = Annotated[str, typer.Option(help="A zoo model name (`torchslim compress --list-models`).")]
DataOpt = Annotated[str | None, typer.Option(help="Training/calibration data: fashion-mnist or mnist (default: the model's own).")]
ReportOpt = Annotated[Path | None, typer.Option(help="Write report.md, report.html and report.json here.")]
ExportOpt = Annotated[Path | None, typer.Option(help="Also copy the final model.onnx and checkpoint here.")]
WorkOpt = Annotated[Path | None, typer.Option(help="Where each stage's checkpoint and ONNX go.")]
RunsOpt = Annotated[Path | None, typer.Option(help="Run store (SQLite) path.")]
ThreadsOpt = Annotated[int | None, typer.Option(help="Threads for PyTorch and ONNX Runtime.")]


#: ``--method`` values of ``torchslim prune``: channel criteria (uniform ``--ratio``, or non-uniform widths from
#: sensitivity with ``--macs``) and the one-step pruning methods
PRUNE_CRITERIA = ("l1", "l2", "random", "bn_scale", "taylor", "hrank", "activation_density", "feature_relevance")
PRUNE_METHODS = (*PRUNE_CRITERIA, "knapsack", "dcp", "npn")


def prune_stages(
    method: str = "l1",
    ratio: float | None = None,
    macs: float | None = None,
    round_to: int = 16,
    min_channels: int = 1,
    include: list[str] | None = None,
    exclude: list[str] | None = None,
    sparsity: float = 1.0,
    distill: str = "hinton",
    distill_epochs: int = 1,
) -> list[dict[str, object]]:
    """The recipe stages (dicts) that ``torchslim prune`` runs for these options.

    * a criterion with ``--ratio`` (default 0.5) -> ``channel_prune`` (uniform ratio per group);
    * a criterion with ``--macs`` -> ``sensitivity_prune`` (non-uniform widths from per-group sensitivity);
    * ``knapsack`` -> ``knapsack_prune`` (``--macs``, default 0.5); ``dcp`` -> ``dcp_prune`` (``--ratio``);
      ``npn`` -> ``npn_prune`` (``--sparsity``);
    * then ``hinton_kd`` or ``inner_kd`` (``--distill inner``) for ``--distill-epochs`` epochs.

    Raises :class:`ConfigError` for an unknown method or an option the method does not take.

    >>> [s["type"] for s in prune_stages("knapsack", macs=0.5, distill="inner")]
    ['knapsack_prune', 'inner_kd']
    >>> prune_stages("l1", macs=0.5, distill_epochs=0)[0]["type"]
    'sensitivity_prune'
    """
    from torchslim.core.errors import ConfigError

    if method not in PRUNE_METHODS:
        raise ConfigError(f"options.method: unknown method {method!r} (allowed: {', '.join(PRUNE_METHODS)})")
    if distill not in ("hinton", "inner"):
        raise ConfigError(f"options.distill: {distill!r} is not a distillation (allowed: hinton, inner)")
    if distill_epochs < 0:
        raise ConfigError(f"options.distill_epochs: must be >= 0, got {distill_epochs}")
    if ratio is not None and macs is not None:
        raise ConfigError("options: give --ratio (uniform per group) or --macs (a MACs budget), not both")
    sel: dict[str, object] = {}
    if include:
        sel["include"] = list(include)
    if exclude:
        sel["exclude"] = list(exclude)
    stage: dict[str, object]
    if method == "knapsack":
        if ratio is not None:
            raise ConfigError("options.ratio: knapsack prunes to a MACs budget; use --macs (e.g. --macs 0.5)")
        stage = {"type": "knapsack_prune", "macs_ratio": 0.5 if macs is None else macs, "round_to": round_to, **sel}
    elif method == "npn":
        if ratio is not None or macs is not None:
            raise ConfigError("options: npn learns the widths; set the penalty with --sparsity, not --ratio/--macs")
        stage = {"type": "npn_prune", "sparsity": sparsity, "min_channels": min_channels, "round_to": round_to,
                 **sel}
    elif method == "dcp":
        if macs is not None:
            raise ConfigError("options.macs: dcp prunes a ratio per layer; use --ratio")
        stage = {"type": "dcp_prune", "ratio": 0.5 if ratio is None else ratio, "min_channels": min_channels, **sel}
    elif macs is not None:
        stage = {"type": "sensitivity_prune", "macs_ratio": macs, "importance": method, "round_to": round_to,
                 "min_channels": min_channels, **sel}
    else:
        stage = {"type": "channel_prune", "ratio": 0.5 if ratio is None else ratio, "importance": method,
                 "round_to": round_to, "min_channels": min_channels, **sel}
    stages = [stage]
    if distill_epochs > 0:
        train = {"epochs": distill_epochs, "lr": 0.05, "schedule": "onecycle"}
        if distill == "inner":
            stages.append({"type": "inner_kd", "temperature": 2.0, "alpha": 0.5, "beta": 1.0, "train": train})
        else:
            stages.append({"type": "hinton_kd", "temperature": 2.0, "alpha": 0.5, "train": train})
    return stages


@app.command()
def prune(
    model: ModelOpt = "resnet-fmnist",
    method: Annotated[str, typer.Option(help="Criterion (l1, l2, random, bn_scale, taylor, hrank, "
                                        "activation_density, feature_relevance) or method (knapsack, dcp, npn).")] = "l1",
    ratio: Annotated[float | None, typer.Option(help="Fraction of each group's channels to remove, in [0, 1) "
                                                "(criteria and dcp; default 0.5).")] = None,
    macs: Annotated[float | None, typer.Option(help="MACs budget as a fraction of the model's, in (0, 1]: knapsack "
                                               "(default 0.5), or with a criterion non-uniform widths chosen "
                                               "from per-group sensitivity.")] = None,
    round_to: Annotated[int, typer.Option(help="Keep channel counts in multiples of this (fast runtime kernels want 16).")] = 16,
    min_channels: Annotated[int, typer.Option(help="Fail before any work if a group would keep fewer channels.")] = 1,
    include: Annotated[list[str] | None, typer.Option(help="Only prune groups of these layers (glob, repeatable).")] = None,
    exclude: Annotated[list[str] | None, typer.Option(help="Leave groups touching these layers intact (glob, repeatable).")] = None,
    sparsity: Annotated[float, typer.Option(help="npn: weight of the gate sparsity penalty.")] = 1.0,
    distill: Annotated[str, typer.Option(help="Recovery: hinton (logit KD) or inner (Knapsack paper's inner KD).")] = "hinton",
    distill_epochs: Annotated[int, typer.Option(help="Epochs of distillation from the original afterwards (0: none).")] = 1,
    data: DataOpt = None,
    report_dir: ReportOpt = None,
    export_dir: ExportOpt = None,
    work_dir: WorkOpt = None,
    runs_db: RunsOpt = None,
    threads: ThreadsOpt = None,
    progress: Annotated[bool, typer.Option(help="Show progress bars.")] = True,
) -> None:
    """Structured pruning (channels physically removed), then optional distillation to recover.

    Every option maps to recipe stages (see `docs/pruning.md`); bad options and layer names fail before any work.
    """
    from torchslim.pipeline import Recipe

    stages = prune_stages(method, ratio, macs, round_to, min_channels, include, exclude, sparsity, distill,
                          distill_epochs)
    budget = f"macs{macs}" if macs is not None else f"{ratio if ratio is not None else ''}"
    rec = Recipe.from_dict({"type": "recipe", "name": f"prune-{method}-{budget}".rstrip("-"), "stages": stages},
                           where="options")
    _run_recipe(rec, model, data, report_dir, export_dir, work_dir, runs_db, False, None, threads, progress, label="prune")


#: ``--method`` names of ``torchslim quantize``: calibrators (kl = the entropy calibrator), ZeroQ, and the
#: weight-only low-bit methods
QUANT_METHODS = ("minmax", "percentile", "mse", "kl", "zeroq", "pwlq", "multipoint")
_CALIBRATOR_OF = {"minmax": "minmax", "percentile": "percentile", "mse": "mse", "kl": "entropy", "zeroq": "minmax"}


def quantize_stage(
    method: str,
    weights: str | None = None,
    activations: str | None = None,
    data_free: bool = False,
    budget: str | None = None,
    granularity: str = "per_channel",
    num_calibration: int | None = None,
) -> dict[str, object]:
    """The recipe stage (a dict) that ``torchslim quantize`` runs for these options.

    W8A8 with a calibrator on real data -> ``static_ptq``; other widths, ``--data-free`` / zeroq or a
    ``--budget`` -> ``lowbit_ptq`` / ``zeroq_ptq`` / ``mixed_precision``; pwlq / multipoint -> their
    weight-only stages. Raises :class:`ConfigError` for an unknown method or an option the method lacks.

    >>> quantize_stage("kl")["type"], quantize_stage("kl")["calibrator"]
    ('static_ptq', 'entropy')
    >>> quantize_stage("minmax", budget="size=0.5x")["type"]
    'mixed_precision'
    """
    from torchslim.core.errors import ConfigError

    if method not in QUANT_METHODS:
        raise ConfigError(f"options.method: unknown method {method!r} (allowed: {', '.join(QUANT_METHODS)})")
    if method in ("pwlq", "multipoint"):
        if activations not in (None, "float"):
            raise ConfigError(
                f"options.activations: {method} quantizes weights only (activations stay float); drop --activations"
            )
        if budget is not None or data_free:
            raise ConfigError(f"options: --budget and --data-free apply to minmax/percentile/mse/kl/zeroq, not {method}")
        stage: dict[str, object] = {"type": f"{method}_ptq", "weights": weights or "int4"}
        if method == "multipoint" and num_calibration is not None:
            stage["num_calibration"] = num_calibration
        return stage
    calibrator = _CALIBRATOR_OF[method]
    data_free = data_free or method == "zeroq"
    w, a = weights or ("mixed" if budget else "int8"), activations or "uint8"
    if w == "int8" and a in ("uint8", "int8") and not data_free and budget is None:
        stage = {"type": "static_ptq", "calibrator": calibrator, "weights": w, "activations": a,
                 "granularity": granularity}
    else:
        if granularity != "per_channel":
            raise ConfigError("options.granularity: low-bit / data-free / mixed precision use per_channel weights")
        kind = "mixed_precision" if budget else ("zeroq_ptq" if data_free else "lowbit_ptq")
        stage = {"type": kind, "calibrator": calibrator, "weights": w, "activations": a, "data_free": data_free}
        if budget:
            stage["budget"] = budget
    if num_calibration is not None:
        stage["num_calibration"] = num_calibration
    return stage


@app.command()
def quantize(
    model: ModelOpt = "resnet-fmnist",
    method: Annotated[str, typer.Option(help="minmax, percentile, mse, kl (entropy), zeroq (data-free), pwlq or "
                                        "multipoint (weight-only, simulated).")] = "minmax",
    weights: Annotated[str | None, typer.Option(help="Weight format: int8 (default), int2..int7; pwlq/multipoint "
                                                "default int4. With --budget: chosen per layer.")] = None,
    activations: Annotated[str | None, typer.Option(help="Activation format: uint8 (default, fast in ONNX Runtime), "
                                                    "int8, or uint2..uint7 / int2..int7 (simulated).")] = None,
    data_free: Annotated[bool, typer.Option("--data-free", help="Calibrate on ZeroQ distilled data (no training "
                                            "sample is read).")] = False,
    budget: Annotated[str | None, typer.Option(help="Mixed precision: weight size budget, size=150KB or size=0.5x "
                                               "(of the all-8-bit packed size).")] = None,
    granularity: Annotated[str, typer.Option(help="Weight scales: per_channel or per_tensor (W8A8 only).")] = "per_channel",
    num_calibration: Annotated[int | None, typer.Option(help="Calibration samples (real or distilled; default 512; "
                                                       "multipoint 256).")] = None,
    data: DataOpt = None,
    report_dir: ReportOpt = None,
    export_dir: ExportOpt = None,
    work_dir: WorkOpt = None,
    runs_db: RunsOpt = None,
    threads: ThreadsOpt = None,
    progress: Annotated[bool, typer.Option(help="Show progress bars.")] = True,
) -> None:
    """Post-training quantization: W8A8 int8 ONNX for ONNX Runtime, or low-bit / data-free / mixed precision.

    Every option maps to one recipe stage (see `docs/quantization.md`), so the same runs from a recipe YAML.
    """
    from torchslim.pipeline import Recipe

    stage = quantize_stage(method, weights, activations, data_free, budget, granularity, num_calibration)
    rec = Recipe.from_dict({"type": "recipe", "name": f"quantize-{method}", "stages": [stage]}, where="options")
    _run_recipe(rec, model, data, report_dir, export_dir, work_dir, runs_db, False, None, threads, progress, label="quantize")


@app.command()
def export(
    checkpoint: Annotated[Path, typer.Option(help="A torchslim checkpoint directory (model.safetensors + structure.json).")],
    output: Annotated[Path, typer.Option(help="The .onnx file to write.")],
    batch: Annotated[int, typer.Option(help="Batch size of the example input used for export and parity.")] = 8,
    input_shape: Annotated[str | None, typer.Option(help="Per-sample input shape, e.g. 1,28,28 (default: from the checkpoint).")] = None,
) -> None:
    """Export a checkpoint to ONNX and check parity with ONNX Runtime."""
    import torch

    from torchslim.export.checkpoint import load_checkpoint, read_structure
    from torchslim.export.onnx import export_onnx
    from torchslim.export.parity import check_parity

    model = load_checkpoint(checkpoint)
    if input_shape:
        shape = [int(s) for s in input_shape.split(",")]
    else:
        shape = list((read_structure(checkpoint).get("meta") or {}).get("input_shape") or [])
    if not shape:
        _fail("the checkpoint does not record its input shape: pass --input-shape, e.g. 1,28,28")
    x = torch.randn(batch, *shape)
    path = export_onnx(model, x, output)
    rep = check_parity(model, path, x)
    typer.echo(f"wrote {path}; parity vs ONNX Runtime: {json.dumps(_plain(rep))}")


@app.command()
def bench(
    onnx: Annotated[list[Path], typer.Option(help="ONNX files to time (repeat the option).")],
    batch: Annotated[int, typer.Option(help="Batch size.")] = 64,
    input_shape: Annotated[str, typer.Option(help="Per-sample input shape.")] = "1,28,28",
    repeats: Annotated[int, typer.Option(help="Timed samples per variant (median reported).")] = 20,
    threads: Annotated[int | None, typer.Option(help="Threads (default: all cores).")] = None,
) -> None:
    """Time ONNX models side by side in ONNX Runtime (interleaved, warm, median of --repeats)."""
    import torch

    from torchslim.bench import latency

    x = torch.randn(batch, *[int(s) for s in input_shape.split(",")])
    variants = {str(p): latency.ort_callable(p, x, threads=threads) for p in onnx}
    stats = latency.compare(variants, repeats=repeats, threads=threads)
    from rich.table import Table

    t = Table(title=f"ONNX Runtime latency, batch {batch}, threads {threads or torch.get_num_threads()}")
    for col in ("model", "median ms", "p10 ms", "p90 ms", "samples"):
        t.add_column(col)
    for name, s in stats.items():
        t.add_row(name, f"{s.median_ms:.2f}", f"{s.p10_ms:.2f}", f"{s.p90_ms:.2f}", str(s.n))
    Console().print(t)


@runs_app.command("list")
def runs_list(
    runs_db: Annotated[Path | None, typer.Option(help="Run store path.")] = None,
    limit: Annotated[int, typer.Option(help="How many runs.")] = 50,
) -> None:
    """List recorded runs, newest first."""
    import datetime

    from rich.table import Table

    t = Table(title="torchslim runs")
    for col in ("id", "created", "status", "title", "stages"):
        t.add_column(col)
    store = _store(runs_db)
    for row in store.list_runs(limit=limit):
        created = datetime.datetime.fromtimestamp(row.created).strftime("%Y-%m-%d %H:%M:%S")
        t.add_row(str(row.id), created, row.status, row.title, str(len(store.completed_stages(row.id))))
    Console().print(t)


@runs_app.command("show")
def runs_show(
    run_id: Annotated[int, typer.Argument(help="The run id (see `torchslim runs list`).")],
    runs_db: Annotated[Path | None, typer.Option(help="Run store path.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Show one run's per-stage figures."""
    from torchslim.reports.render import print_table

    row, rep = _store(runs_db).get_run(run_id)
    if as_json:
        typer.echo(json.dumps(rep.to_dict(), indent=2, default=str))
        return
    Console().print(f"run {row.id}: {row.title} [{row.status}]")
    print_table(rep)


@app.command()
def report(
    run_id: Annotated[int, typer.Argument(help="The run id.")],
    out: Annotated[Path, typer.Option(help="Directory for report.md / report.html / report.json.")] = Path("report"),
    runs_db: Annotated[Path | None, typer.Option(help="Run store path.")] = None,
) -> None:
    """Write a stored run's report (markdown, HTML with plots, JSON)."""
    from torchslim.reports.render import write_report

    _, rep = _store(runs_db).get_run(run_id)
    paths = write_report(rep, out)
    typer.echo("\n".join(str(p) for p in paths.values()))


def _plain(x):  # type: ignore[no-untyped-def]
    import dataclasses

    return dataclasses.asdict(x) if dataclasses.is_dataclass(x) else x


def _register_distill() -> None:
    from torchslim.cli.distill import register

    register(app)


_register_distill()


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        app()
    except TorchSlimError as e:
        console.print(f"[bold red]error:[/] {e}")
        sys.exit(2)


if __name__ == "__main__":
    main()
