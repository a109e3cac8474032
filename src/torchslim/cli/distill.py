"""``torchslim distill``: distil a zoo model (or a saved checkpoint) into a smaller student from the shell.

The command is added to a typer app by :func:`register` (``torchslim.cli.main`` calls it). It loads the
teacher, builds the student from a short spec, checks everything on one batch before training (bad specs,
missing layers, incomparable shapes, mismatched MiniLM heads fail first, naming both sides), trains with
progress bars and resumable checkpoints, saves the student with :func:`torchslim.export.save_checkpoint` and
reports teacher vs student quality, parameters, MACs and the latency ratio.

Student spec grammar (``--student``)::

    SPEC   := [FAMILY ":"] OPTION ("," OPTION)*  |  FAMILY
    FAMILY := resnet | resnet-fmnist | minilm | minilm-l6       (default: the teacher's family)
    resnet options:  width=F        multiply every teacher stage width by F (rounded to a multiple of 8)
                     widths=A/B/C   explicit stage widths
                     blocks=A/B/C   blocks per stage (default: the teacher's)
    minilm options:  layers=N  hidden=H  heads=K  intermediate=I  init=teacher|scratch
                     (init defaults to "teacher" -- copy every other teacher layer -- when the width is
                     the teacher's, else "scratch")

Example::

    torchslim distill --teacher resnet-fmnist --student resnet-fmnist:width=0.5 --method hinton \\
        --data fashion-mnist --epochs 2 --output student --report-dir report
    torchslim distill --teacher minilm-l6 --student minilm:layers=3 --method minilm --data news --steps 200
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import torch
import typer
from rich.console import Console
from rich.table import Table
from torch import nn

from torchslim.core.errors import ConfigError, TorchSlimError

__all__ = ["CNN_METHODS", "TEXT_METHODS", "StudentSpec", "build_cli_student", "parse_student_spec", "register"]

#: Methods per teacher family.
CNN_METHODS = ("hinton", "hidden_mse", "residual", "hydra")
TEXT_METHODS = ("minilm", "hidden_mse", "embedding")
_IMAGE_DATA = ("fashion-mnist", "mnist")
_TEXT_DATA = ("news", "health-tweets")
_FAMILY_ALIASES = {"resnet": "resnet", "resnet-fmnist": "resnet", "minilm": "minilm", "minilm-l6": "minilm"}
_RESNET_KEYS = {"width", "widths", "blocks"}
_MINILM_KEYS = {"layers", "hidden", "heads", "intermediate", "init"}

STUDENT_HELP = (
    "Student spec: [FAMILY:]KEY=VALUE,... (FAMILY defaults to the teacher's). ResNet: width=F (multiplier of "
    "the teacher's stage widths), widths=A/B/C, blocks=A/B/C, e.g. resnet-fmnist:width=0.5. MiniLM: layers=N, "
    "hidden=H, heads=K, intermediate=I, init=teacher|scratch, e.g. minilm:layers=3."
)


@dataclass(frozen=True)
class StudentSpec:
    """A parsed ``--student`` value: the family (``"resnet"`` / ``"minilm"``) and its options."""

    family: str
    options: dict[str, str] = field(default_factory=dict)


def parse_student_spec(spec: str, teacher_family: str) -> StudentSpec:
    """Parse the ``--student`` grammar (see the module docstring).

    Raises:
        ConfigError: unknown family or key, a key given twice, a family other than the teacher's, or an
            option without ``=`` (the message shows the grammar).

    Example:
        >>> parse_student_spec("resnet-fmnist:width=0.5", "resnet")
        StudentSpec(family='resnet', options={'width': '0.5'})
        >>> parse_student_spec("layers=3", "minilm")
        StudentSpec(family='minilm', options={'layers': '3'})
    """
    text = spec.strip()
    family, rest = teacher_family, text
    head, sep, tail = text.partition(":")
    if sep:
        family, rest = head.strip().lower(), tail
    elif "=" not in text and text:
        family, rest = text.lower(), ""
    if family not in _FAMILY_ALIASES.values():
        if family not in _FAMILY_ALIASES:
            raise ConfigError(
                f"--student {spec!r}: unknown family {family!r}; use one of {', '.join(sorted(_FAMILY_ALIASES))} "
                "(grammar: [FAMILY:]KEY=VALUE,...)"
            )
        family = _FAMILY_ALIASES[family]
    if family != teacher_family:
        raise ConfigError(
            f"--student {spec!r}: a {family} student cannot be distilled from a {teacher_family} teacher by this "
            f"command; use a {teacher_family} spec"
        )
    allowed = _RESNET_KEYS if family == "resnet" else _MINILM_KEYS
    options: dict[str, str] = {}
    for part in filter(None, (p.strip() for p in rest.split(","))):
        key, eq, value = part.partition("=")
        key = key.strip().lower()
        if not eq or not value.strip():
            raise ConfigError(f"--student {spec!r}: {part!r} is not KEY=VALUE (grammar: [FAMILY:]KEY=VALUE,...)")
        if key not in allowed:
            raise ConfigError(
                f"--student {spec!r}: unknown option {key!r} for a {family} student; allowed: {', '.join(sorted(allowed))}"
            )
        if key in options:
            raise ConfigError(f"--student {spec!r}: option {key!r} is given twice")
        options[key] = value.strip()
    if family == "resnet" and "width" in options and "widths" in options:
        raise ConfigError(f"--student {spec!r}: give width=F or widths=A/B/C, not both")
    return StudentSpec(family, options)


def _ints(spec: StudentSpec, key: str) -> list[int]:
    try:
        vals = [int(v) for v in spec.options[key].split("/")]
    except ValueError:
        raise ConfigError(f"--student: {key}={spec.options[key]!r} must be integers separated by '/', e.g. 16/32/64") from None
    if any(v <= 0 for v in vals):
        raise ConfigError(f"--student: {key}={spec.options[key]!r} must be positive")
    return vals


def _int(spec: StudentSpec, key: str) -> int | None:
    if key not in spec.options:
        return None
    try:
        v = int(spec.options[key])
    except ValueError:
        raise ConfigError(f"--student: {key}={spec.options[key]!r} must be an integer") from None
    if v <= 0:
        raise ConfigError(f"--student: {key}={v} must be positive")
    return v


def resnet_layout(model: nn.Module) -> tuple[list[int], list[int], int]:
    """``(widths, blocks, num_classes)`` read from a zoo :class:`~torchslim.zoo.resnet.ResNet`'s modules."""
    from torchslim.zoo.resnet import ResNet

    if not isinstance(model, ResNet):
        raise ConfigError(f"expected a ResNet teacher, got {type(model).__name__}")
    widths, blocks = [], []
    for name in model.stage_names:
        stage = getattr(model, name)
        widths.append(int(stage[-1].conv2.out_channels))
        blocks.append(len(stage))
    return widths, blocks, int(model.fc.out_features)


def build_cli_student(teacher: nn.Module, spec: StudentSpec, seed: int = 0) -> nn.Module:
    """The student a spec describes, built from the teacher's architecture (untrained unless copied).

    ResNet students are zoo-built (``zoo.build("resnet-fmnist", widths=..., blocks=...)``) so a saved
    checkpoint reloads without a skeleton; MiniLM students come from
    :func:`torchslim.distillation.student.build_student`.

    Example:
        >>> from torchslim import zoo
        >>> t = zoo.build("resnet-fmnist")
        >>> s = build_cli_student(t, parse_student_spec("width=0.5", "resnet"))
        >>> resnet_layout(s)
        ([16, 32, 64], [1, 1, 2], 10)
    """
    if spec.family == "resnet":
        from torchslim import zoo

        t_widths, t_blocks, classes = resnet_layout(teacher)
        if "widths" in spec.options:
            widths = _ints(spec, "widths")
        else:
            try:
                mult = float(spec.options.get("width", "1"))
            except ValueError:
                raise ConfigError(f"--student: width={spec.options['width']!r} must be a number, e.g. 0.5") from None
            if not 0 < mult <= 4:
                raise ConfigError(f"--student: width={mult} must be in (0, 4]")
            widths = [max(8, int(round(w * mult / 8)) * 8) for w in t_widths]
        blocks = _ints(spec, "blocks") if "blocks" in spec.options else t_blocks
        if len(widths) != len(t_widths) or len(blocks) != len(t_blocks):
            raise ConfigError(
                f"--student: the teacher has {len(t_widths)} stages; widths {widths} and blocks {blocks} need "
                f"{len(t_widths)} entries each"
            )
        torch.manual_seed(seed)
        kwargs: dict[str, Any] = {"widths": widths, "blocks": blocks}
        if classes != 10:
            kwargs["num_classes"] = classes
        return zoo.build("resnet-fmnist", **kwargs)
    from torchslim.distillation.student import build_student

    cfg: Any = getattr(teacher, "model").config  # noqa: B009
    hidden = _int(spec, "hidden")
    init = spec.options.get("init") or ("teacher" if hidden in (None, int(cfg.hidden_size)) else "scratch")
    if init not in ("teacher", "scratch"):
        raise ConfigError(f"--student: init={init!r} must be 'teacher' or 'scratch'")
    return build_student(
        teacher,  # type: ignore[arg-type]
        num_layers=_int(spec, "layers") or max(1, int(cfg.num_hidden_layers) // 2),
        hidden_size=hidden,
        num_heads=_int(spec, "heads"),
        intermediate_size=_int(spec, "intermediate"),
        init=init,  # type: ignore[arg-type]
        seed=seed,
    )


# --------------------------------------------------------------------------- loading


def _family_of(model: nn.Module) -> str:
    from torchslim.zoo.minilm import MiniLMEncoder
    from torchslim.zoo.resnet import ResNet

    if isinstance(model, ResNet):
        return "resnet"
    if isinstance(model, MiniLMEncoder):
        return "minilm"
    raise ConfigError(
        f"--teacher: a {type(model).__name__} teacher is not supported by the CLI (ResNet and MiniLM are); "
        "use the Python API (torchslim.distillation.distill / feature_distill) for other models"
    )


def load_teacher(ref: str, progress: bool) -> nn.Module:
    """A zoo model name (pretrained) or a torchslim checkpoint directory, in eval mode."""
    from torchslim import zoo

    if ref in zoo.available():
        return zoo.load(ref, pretrained=True, progress=progress).eval()
    path = Path(ref)
    if path.is_dir():
        from torchslim.export.checkpoint import load_checkpoint

        return load_checkpoint(path).eval()
    raise ConfigError(
        f"--teacher {ref!r} is neither a zoo model ({', '.join(zoo.available())}) nor a checkpoint directory"
    )


def _image_data(name: str, split: str, limit: int | None) -> Any:
    from torch.utils.data import TensorDataset

    from torchslim import data

    ds = data.fashion_mnist(split) if name == "fashion-mnist" else data.mnist(split)
    if limit is None or limit >= len(ds):
        return ds
    return TensorDataset(ds.images[:limit], ds.labels[:limit])


def _texts(name: str) -> list[str]:
    from torchslim import data

    raw = data.news_text() if name == "news" else data.health_tweets().texts
    return [t for t in raw if t.strip()]


# --------------------------------------------------------------------------- measuring


def _macs(model: nn.Module, inputs: tuple[Any, ...]) -> int:
    from torchslim.core.cost import profile

    return int(profile(model, inputs).macs)


def _latency_ratio(teacher: nn.Module, student: nn.Module, x: Any, repeats: int, threads: int | None) -> dict[str, Any]:
    from torchslim.bench import latency

    stats = latency.compare(
        {"teacher": latency.torch_callable(teacher, x), "student": latency.torch_callable(student, x)},
        repeats=repeats,
        warmup=1,
        threads=threads,
    )
    t, s = stats["teacher"], stats["student"]
    return {
        "teacher_ms": t.median_ms,
        "student_ms": s.median_ms,
        "ratio": s.median_ms / t.median_ms if t.median_ms > 0 else math.nan,
        "contaminated": bool(t.contaminated or s.contaminated),
        "threads": t.threads,
    }


def _similarity_corr(a: torch.Tensor, b: torch.Tensor) -> float:
    """Pearson correlation of the off-diagonal cosine similarities of two embedding sets (any widths)."""
    sa = torch.nn.functional.normalize(a.double(), dim=1)
    sb = torch.nn.functional.normalize(b.double(), dim=1)
    n = sa.shape[0]
    off = ~torch.eye(n, dtype=torch.bool)
    x, y = (sa @ sa.T)[off], (sb @ sb.T)[off]
    x, y = x - x.mean(), y - y.mean()
    return float((x * y).sum() / (x.norm() * y.norm()).clamp_min(1e-12))


# --------------------------------------------------------------------------- the command


@dataclass
class _Run:
    """What a method needs to train and what the report needs to measure."""

    train: Callable[[], None]
    trained: nn.Module  # the model to save and measure (student, or its wrapper)


def _train_config(**kw: Any) -> Any:
    from torchslim.train import TrainConfig

    return TrainConfig(**{k: v for k, v in kw.items() if v is not None})


def register(app: typer.Typer) -> None:
    """Add the ``distill`` command to ``app``.

    Example:
        >>> import typer
        >>> app = typer.Typer()
        >>> register(app)
    """

    @app.command("distill")
    def distill_cmd(
        teacher: Annotated[
            list[str], typer.Option(help="Zoo model name (resnet-fmnist, minilm-l6) or checkpoint directory. Repeat for a Hydra ensemble.")
        ],
        student: Annotated[str, typer.Option(help=STUDENT_HELP)] = "width=0.5",
        method: Annotated[
            str, typer.Option(help=f"CNN teachers: {', '.join(CNN_METHODS)}; MiniLM teachers: {', '.join(TEXT_METHODS)}.")
        ] = "hinton",
        data: Annotated[
            str | None, typer.Option(help="fashion-mnist | mnist (CNN) or news | health-tweets (MiniLM); default: fashion-mnist / news.")
        ] = None,
        epochs: Annotated[int, typer.Option(min=1, help="Passes over the training data.")] = 1,
        steps: Annotated[int | None, typer.Option(min=1, help="Stop after this many optimizer steps.")] = None,
        lr: Annotated[float | None, typer.Option(help="Peak learning rate (default: 0.05 SGD for CNNs, 5e-4 AdamW for MiniLM).")] = None,
        batch_size: Annotated[int | None, typer.Option(min=1, help="Batch size (default: 128 CNN / 32 text).")] = None,
        temperature: Annotated[float, typer.Option(help="KD temperature (hinton, hidden_mse on CNNs, residual, hydra).")] = 4.0,
        alpha: Annotated[
            float | None, typer.Option(help="Weight of the KD term; 1 - alpha weighs the label cross-entropy (default 0.9; hydra 1.0, as in the paper).")
        ] = None,
        hidden_weight: Annotated[float, typer.Option(help="Weight of the hidden-state terms (hidden_mse on CNNs, residual).")] = 1.0,
        limit: Annotated[int | None, typer.Option(min=1, help="Use only the first N training examples / texts.")] = None,
        eval_limit: Annotated[int, typer.Option(min=1, help="Held-out examples (or texts) for the report.")] = 2000,
        seed: Annotated[int, typer.Option(min=0, help="Seed of the student's initialisation and the data order.")] = 0,
        checkpoint_dir: Annotated[
            Path | None, typer.Option(help="Training checkpoints (last.pt) for --resume; default: OUTPUT.ckpt when --output is given.")
        ] = None,
        checkpoint_every: Annotated[int, typer.Option(min=1, help="Write a training checkpoint every N steps.")] = 50,
        resume: Annotated[bool, typer.Option(help="Continue an interrupted run from the checkpoint (same options).")] = False,
        output: Annotated[Path | None, typer.Option(help="Save the student here (torchslim checkpoint directory).")] = None,
        report_dir: Annotated[Path | None, typer.Option(help="Write report.json and report.md here.")] = None,
        latency_repeats: Annotated[int, typer.Option(min=0, help="Latency samples per model (0: skip latency).")] = 10,
        threads: Annotated[int | None, typer.Option(min=1, help="torch threads for training and timing.")] = None,
        progress: Annotated[bool, typer.Option(help="Show progress bars.")] = True,
    ) -> None:
        """Distil a teacher into a smaller student (resumable), save it and report teacher vs student."""
        console = Console(stderr=True)
        try:
            report = run_distill(
                teachers=teacher, student=student, method=method, data=data, epochs=epochs, steps=steps, lr=lr,
                batch_size=batch_size, temperature=temperature, alpha=alpha, hidden_weight=hidden_weight,
                limit=limit, eval_limit=eval_limit, seed=seed, checkpoint_dir=checkpoint_dir,
                checkpoint_every=checkpoint_every, resume=resume, output=output, report_dir=report_dir,
                latency_repeats=latency_repeats, threads=threads, progress=progress,
            )  # fmt: skip
        except TorchSlimError as err:
            console.print(f"[bold red]error:[/] {err}")
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            console.print("[yellow]interrupted[/]: rerun the same command with --resume to continue from the checkpoint")
            raise typer.Exit(130) from None
        _print_report(report)


def run_distill(
    *,
    teachers: Sequence[str],
    student: str,
    method: str,
    data: str | None,
    epochs: int = 1,
    steps: int | None = None,
    lr: float | None = None,
    batch_size: int | None = None,
    temperature: float = 4.0,
    alpha: float | None = None,
    hidden_weight: float = 1.0,
    limit: int | None = None,
    eval_limit: int = 2000,
    seed: int = 0,
    checkpoint_dir: Path | None = None,
    checkpoint_every: int = 50,
    resume: bool = False,
    output: Path | None = None,
    report_dir: Path | None = None,
    latency_repeats: int = 10,
    threads: int | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """The ``distill`` command without the CLI layer; returns the report dict (see docs/distill-cli.md).

    Every option is checked before the teacher is loaded where possible, and the models are checked on
    one batch before any training step.
    """
    if threads is not None:
        torch.set_num_threads(threads)
    if not teachers:
        raise ConfigError("--teacher is required: a zoo model name or a checkpoint directory")
    if len(teachers) > 1 and method != "hydra":
        raise ConfigError(f"--teacher was given {len(teachers)} times; only --method hydra takes an ensemble")
    if alpha is None:
        alpha = 1.0 if method == "hydra" else 0.9
    if not 0 <= alpha <= 1:
        raise ConfigError(f"--alpha {alpha} must be in [0, 1]")
    if not temperature > 0:
        raise ConfigError(f"--temperature {temperature} must be > 0")
    if checkpoint_dir is None and output is not None:
        checkpoint_dir = Path(str(output) + ".ckpt")
    if resume and checkpoint_dir is None:
        raise ConfigError("--resume needs --checkpoint-dir (or --output, whose OUTPUT.ckpt is the default)")
    if method == "hydra" and resume:
        raise ConfigError("--method hydra runs two training phases and does not support --resume yet; rerun without it")

    t_models = [load_teacher(t, progress) for t in teachers]
    t0 = t_models[0]
    family = _family_of(t0)
    for other in t_models[1:]:
        if _family_of(other) != family:
            raise ConfigError("--teacher: all ensemble members must be of the same family")
    methods = CNN_METHODS if family == "resnet" else TEXT_METHODS
    if method not in methods:
        raise ConfigError(f"--method {method!r} is not available for a {family} teacher; choose one of {', '.join(methods)}")
    data = data or ("fashion-mnist" if family == "resnet" else "news")
    allowed_data = _IMAGE_DATA if family == "resnet" else _TEXT_DATA
    if data not in allowed_data:
        raise ConfigError(f"--data {data!r} does not fit a {family} teacher; choose one of {', '.join(allowed_data)}")
    spec = parse_student_spec(student, family)
    s_model = build_cli_student(t0, spec, seed=seed)

    ckpt = str(checkpoint_dir) if checkpoint_dir is not None else None
    if family == "resnet":
        run, eval_fn, example = _cnn_run(
            method, t_models, s_model, data, epochs, steps, lr, batch_size, temperature, alpha, hidden_weight,
            limit, eval_limit, seed, ckpt, checkpoint_every, resume, progress,
        )  # fmt: skip
    else:
        run, eval_fn, example = _text_run(
            method, t0, s_model, data, epochs, steps, lr, batch_size, limit, eval_limit, seed, ckpt,
            checkpoint_every, resume, progress,
        )  # fmt: skip
    run.train()

    from torchslim.bench.size import params

    trained = run.trained.eval()
    quality = eval_fn(t0, trained)
    report: dict[str, Any] = {
        "teacher": list(teachers),
        "student_spec": student,
        "method": method,
        "data": data,
        "quality": quality,
        "params": {"teacher": params(t0), "student": params(trained)},
        "macs": {"teacher": _macs(t0, example), "student": _macs(trained, example)},
    }
    report["params"]["ratio"] = report["params"]["student"] / report["params"]["teacher"]
    report["macs"]["ratio"] = report["macs"]["student"] / max(1, report["macs"]["teacher"])
    if latency_repeats > 0:
        batch = _latency_input(family, t0, example)
        report["latency"] = _latency_ratio(t0, trained, batch, latency_repeats, threads)
    if output is not None:
        from torchslim.export.checkpoint import save_checkpoint

        meta: dict[str, Any] = {"distill": {k: report[k] for k in ("teacher", "student_spec", "method", "data")}}
        if family == "resnet":
            meta["input_shape"] = [1, 28, 28]
        else:
            meta["student_config"] = trained.model.config.to_dict()  # type: ignore[union-attr,operator]
        save_checkpoint(trained, output, meta=json.loads(json.dumps(meta, default=str)))
        report["output"] = str(output)
    if report_dir is not None:
        _write_report(report, report_dir)
    return report


def _cnn_run(
    method: str,
    teachers: list[nn.Module],
    student: nn.Module,
    data: str,
    epochs: int,
    steps: int | None,
    lr: float | None,
    batch_size: int | None,
    temperature: float,
    alpha: float,
    hidden_weight: float,
    limit: int | None,
    eval_limit: int,
    seed: int,
    ckpt: str | None,
    every: int,
    resume: bool,
    progress: bool,
) -> tuple[_Run, Callable[[nn.Module, nn.Module], dict[str, Any]], tuple[Any, ...]]:
    from torchslim.bench.accuracy import top1
    from torchslim.distillation.hinton import FeatureKD, HintonKD, distill, feature_distill

    train_set = _image_data(data, "train", limit)
    test_set = _image_data(data, "test", eval_limit)
    teacher = teachers[0]
    tc = _train_config(
        epochs=epochs, max_steps=steps, lr=lr or 0.05, batch_size=batch_size or 128, schedule="onecycle",
        seed=seed, checkpoint_every_steps=every,
    )  # fmt: skip

    def evaluate(t: nn.Module, s: nn.Module) -> dict[str, Any]:
        return {"metric": "top1", "teacher": top1(t, test_set), "student": top1(s, test_set), "n": len(test_set)}

    trained: nn.Module = student
    if method == "hinton":
        cfg = HintonKD(temperature=temperature, alpha=alpha, train=tc)

        def train() -> None:
            distill(student, teacher, train_set, cfg, checkpoint_dir=ckpt, resume=resume, progress=progress)

    elif method == "hidden_mse":
        from torchslim.distillation.mapping import map_layers

        pairs = map_layers(list(teacher.stage_names), list(student.stage_names), "uniform")  # type: ignore[arg-type]
        fcfg = FeatureKD(
            temperature=temperature, alpha=alpha, hidden_weight=hidden_weight, layers=dict(pairs), train=tc
        )

        def train() -> None:
            feature_distill(student, teacher, train_set, fcfg, checkpoint_dir=ckpt, resume=resume, progress=progress)

    elif method == "residual":
        from torchslim import zoo
        from torchslim.distillation.methods.residual import ResidualKD, ResidualStudent, residual_distill

        widths, blocks, classes = resnet_layout(student)
        feat = int(teacher.fc.in_features)  # type: ignore[union-attr,arg-type]
        body = zoo.build("resnet-fmnist", widths=widths, blocks=blocks, num_classes=feat)
        assistant = zoo.build(
            "resnet-fmnist", widths=[max(8, w // 2 // 8 * 8) for w in widths], blocks=[1] * len(widths), num_classes=feat
        )
        head = nn.Linear(feat, classes)
        head.load_state_dict(teacher.fc.state_dict())  # type: ignore[union-attr,arg-type]
        trained = ResidualStudent(body, assistant, head)
        rcfg = ResidualKD(teacher_layer="fc", teacher_mode="input", temperature=temperature, alpha=alpha,
                          beta=hidden_weight, train=tc)  # fmt: skip
        model = trained

        def train() -> None:
            residual_distill(model, teacher, train_set, rcfg, checkpoint_dir=ckpt, resume=resume, progress=progress)  # type: ignore[arg-type]

    else:  # hydra
        from torchslim.distillation.methods.hydra import HydraKD, HydraStudent, hydra_distill

        widths, _blocks, classes = resnet_layout(student)
        student.fc = nn.Identity()  # type: ignore[assignment]
        hydra = HydraStudent(student, nn.Linear(widths[-1], classes), num_heads=len(teachers))
        trained = hydra
        hcfg = HydraKD(temperature=temperature, alpha=alpha, phase1=tc, phase2=tc)

        def train() -> None:
            hydra_distill(hydra, teachers, train_set, hcfg, checkpoint_dir=ckpt, progress=progress)

    return _Run(train, trained), evaluate, (torch.zeros(1, 1, 28, 28),)


def _text_run(
    method: str,
    teacher: nn.Module,
    student: nn.Module,
    data: str,
    epochs: int,
    steps: int | None,
    lr: float | None,
    batch_size: int | None,
    limit: int | None,
    eval_limit: int,
    seed: int,
    ckpt: str | None,
    every: int,
    resume: bool,
    progress: bool,
) -> tuple[_Run, Callable[[nn.Module, nn.Module], dict[str, Any]], tuple[Any, ...]]:
    from torchslim.distillation.methods.minilm import MiniLMDistill, minilm_distill

    texts = _texts(data)
    train_texts = texts[:limit] if limit is not None else texts
    eval_texts = _texts("health-tweets")[-eval_limit:]
    tc = _train_config(
        epochs=epochs, max_steps=steps, lr=lr or 5e-4, batch_size=batch_size or 32, optimizer="adamw",
        weight_decay=0.01, schedule="onecycle", grad_clip=1.0, seed=seed, checkpoint_every_steps=every,
    )  # fmt: skip
    cfg = MiniLMDistill(objective=method, train=tc)  # type: ignore[arg-type]  # method is checked against TEXT_METHODS

    def train() -> None:
        minilm_distill(student, teacher, train_texts, cfg, checkpoint_dir=ckpt, resume=resume, progress=progress)

    def evaluate(t: nn.Module, s: nn.Module) -> dict[str, Any]:
        et = t.encode(eval_texts)  # type: ignore[operator]
        es = s.encode(eval_texts)  # type: ignore[operator]
        out: dict[str, Any] = {"metric": "cosine", "n": len(eval_texts), "similarity_corr": _similarity_corr(et, es)}
        out["cosine"] = (
            float(torch.nn.functional.cosine_similarity(et, es, dim=1).mean()) if et.shape == es.shape else None
        )
        return out

    ids = torch.randint(1000, 2000, (1, 128))  # MACs of one 128-token sequence
    return _Run(train, student), evaluate, (ids, torch.ones_like(ids))


def _latency_input(family: str, teacher: nn.Module, example: tuple[Any, ...]) -> Any:
    if family == "resnet":
        return torch.randn(64, 1, 28, 28)
    ids = torch.randint(1000, 2000, (32, 128))
    return (ids, torch.ones_like(ids))


def _write_report(report: dict[str, Any], directory: Path) -> None:
    from torchslim.core.io import atomic_write_json, atomic_write_text

    directory.mkdir(parents=True, exist_ok=True)
    atomic_write_json(directory / "report.json", report)
    q = report["quality"]
    lines = [
        f"# torchslim distill: {report['method']} on {report['data']}",
        "",
        f"teacher {', '.join(report['teacher'])} -> student `{report['student_spec']}`",
        "",
        "| | teacher | student | ratio |",
        "|---|---|---|---|",
    ]
    if q["metric"] == "top1":
        lines.append(f"| top-1 ({q['n']} test) | {100 * q['teacher']:.2f}% | {100 * q['student']:.2f}% | |")
    else:
        cos = "n/a (widths differ)" if q["cosine"] is None else f"{q['cosine']:.4f}"
        lines.append(f"| embedding cosine vs teacher ({q['n']} texts) | 1 | {cos} | |")
        lines.append(f"| similarity-structure correlation | 1 | {q['similarity_corr']:.4f} | |")
    p, m = report["params"], report["macs"]
    lines.append(f"| params | {p['teacher']:,} | {p['student']:,} | {p['ratio']:.3f} |")
    unit = "one example" if q["metric"] == "top1" else "one 128-token text"
    lines.append(f"| MACs ({unit}) | {m['teacher']:,} | {m['student']:,} | {m['ratio']:.3f} |")
    if "latency" in report:
        lt = report["latency"]
        lines.append(f"| latency ms (torch, interleaved) | {lt['teacher_ms']:.2f} | {lt['student_ms']:.2f} | {lt['ratio']:.3f} |")
    atomic_write_text(directory / "report.md", "\n".join(lines) + "\n")


def _print_report(report: dict[str, Any]) -> None:
    t = Table(title=f"distill {report['method']} on {report['data']}")
    for col in ("", "teacher", "student", "student / teacher"):
        t.add_column(col)
    q = report["quality"]
    if q["metric"] == "top1":
        t.add_row("top-1", f"{100 * q['teacher']:.2f}%", f"{100 * q['student']:.2f}%", "")
    else:
        cos = "n/a" if q["cosine"] is None else f"{q['cosine']:.4f}"
        t.add_row("cosine vs teacher", "1", cos, "")
        t.add_row("similarity corr", "1", f"{q['similarity_corr']:.4f}", "")
    p, m = report["params"], report["macs"]
    t.add_row("params", f"{p['teacher']:,}", f"{p['student']:,}", f"{p['ratio']:.3f}")
    t.add_row("MACs", f"{m['teacher']:,}", f"{m['student']:,}", f"{m['ratio']:.3f}")
    if "latency" in report:
        lt = report["latency"]
        t.add_row("latency ms", f"{lt['teacher_ms']:.2f}", f"{lt['student_ms']:.2f}", f"{lt['ratio']:.3f}")
    Console(width=120).print(t)
    if "output" in report:
        typer.echo(f"student saved to {report['output']}")
