"""``torchslim distill``: spec grammar, bad input before training, a small end-to-end run (saved student,
report), and resume of an interrupted run to the same student."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import typer
from typer.testing import CliRunner

from torchslim import zoo
from torchslim.cli.distill import build_cli_student, parse_student_spec, register, resnet_layout
from torchslim.core.errors import ConfigError
from torchslim.export.checkpoint import load_checkpoint, save_checkpoint

torch.set_num_threads(1)
runner = CliRunner()


def make_app() -> typer.Typer:
    app = typer.Typer()
    register(app)

    @app.command()
    def _noop() -> None:  # a second command keeps `distill` a named subcommand
        """Unused."""

    return app


@pytest.fixture(scope="module")
def tiny_teacher(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An (untrained) small zoo ResNet saved as a checkpoint directory: a teacher given by path."""
    torch.manual_seed(0)
    model = zoo.build("resnet-fmnist", widths=[16, 16, 32], blocks=[1, 1, 1])
    return save_checkpoint(model, tmp_path_factory.mktemp("teacher") / "t", meta={"input_shape": [1, 28, 28]})


@pytest.fixture(scope="module", autouse=True)
def _warm_data() -> None:
    """Load Fashion-MNIST once (cached in-process), so that each test times only its own work."""
    from torchslim import data

    data.fashion_mnist("train"), data.fashion_mnist("test")
    import torchslim.bench.accuracy
    import torchslim.bench.latency
    import torchslim.core.cost  # noqa: F401


def base_args(teacher: Path, *extra: str, limit: int = 64) -> list[str]:
    return ["distill", "--teacher", str(teacher), "--data", "fashion-mnist", "--limit", str(limit), "--eval-limit", "64",
            "--batch-size", "16", "--latency-repeats", "0", "--no-progress", *extra]  # fmt: skip


def test_student_spec_grammar() -> None:
    assert parse_student_spec("resnet-fmnist:width=0.5", "resnet").options == {"width": "0.5"}
    assert parse_student_spec("widths=16/32/64,blocks=1/1/1", "resnet").options == {"widths": "16/32/64", "blocks": "1/1/1"}
    assert parse_student_spec("minilm:layers=3,hidden=192", "minilm").options == {"layers": "3", "hidden": "192"}
    assert parse_student_spec("minilm", "minilm").options == {}
    teacher = zoo.build("resnet-fmnist")
    # width=0.5 halves every stage width (multiples of 8); explicit widths and blocks are taken as given
    assert resnet_layout(build_cli_student(teacher, parse_student_spec("width=0.5", "resnet"))) == ([16, 32, 64], [1, 1, 2], 10)
    s = build_cli_student(teacher, parse_student_spec("widths=8/16/24,blocks=1/1/1", "resnet"))
    assert resnet_layout(s) == ([8, 16, 24], [1, 1, 1], 10)
    assert zoo.spec_of(s) == {"name": "resnet-fmnist", "kwargs": {"widths": [8, 16, 24], "blocks": [1, 1, 1]}}


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("resnet:depth=3", "unknown option 'depth'"),
        ("minilm:layers=3", "a minilm student cannot be distilled from a resnet teacher"),
        ("vgg:width=1", "unknown family 'vgg'"),
        ("width", "unknown family 'width'"),
        ("width=0.5,width=0.25", "given twice"),
        ("widths=16/x/64", "integers separated by '/'"),
    ],
)
def test_bad_student_specs_are_named(spec: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        build_cli_student(zoo.build("resnet-fmnist"), parse_student_spec(spec, "resnet"))


def test_help_documents_the_grammar() -> None:
    out = runner.invoke(make_app(), ["distill", "--help"], env={"COLUMNS": "200"}).output
    assert "width=F" in out and "layers=N" in out and "--resume" in out


def test_bad_options_fail_before_training(tiny_teacher: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torchslim.train.trainer as trainer

    def boom(*a: object, **k: object) -> None:
        raise AssertionError("no training step may run for bad input")

    monkeypatch.setattr(trainer.Trainer, "fit", boom)
    app = make_app()
    for extra, message in [
        (["--method", "minilm"], "not available for a resnet teacher"),
        (["--data", "news"], "does not fit a resnet teacher"),
        (["--resume"], "--resume needs --checkpoint-dir"),
    ]:
        res = runner.invoke(app, base_args(tiny_teacher, *extra))
        assert res.exit_code == 2, res.output
        assert message in res.output.replace("\n", " ")
    res = runner.invoke(app, ["distill", "--teacher", "no-such-model", "--no-progress"])
    assert res.exit_code == 2 and "neither a zoo model" in res.output


@pytest.mark.parametrize("method", ["hinton", "hidden_mse", "residual", "hydra"])
def test_distill_end_to_end_saves_student_and_report(tiny_teacher: Path, tmp_path: Path, method: str) -> None:
    out, rep = tmp_path / "student", tmp_path / "report"
    args = base_args(tiny_teacher, "--method", method, "--student", "width=0.5", "--steps", "3",
                     "--output", str(out), "--report-dir", str(rep), "--latency-repeats", "2")  # fmt: skip
    res = runner.invoke(make_app(), args)
    assert res.exit_code == 0, res.output + repr(res.exception)
    report = json.loads((rep / "report.json").read_text())
    assert report["method"] == method and report["quality"]["metric"] == "top1"
    assert 0 <= report["quality"]["student"] <= 1
    assert report["params"]["student"] < report["params"]["teacher"]
    assert report["latency"]["ratio"] > 0 and "MACs" in (rep / "report.md").read_text()
    assert (out / "model.safetensors").is_file() and any((tmp_path / "student.ckpt").rglob("last.pt"))
    if method in ("hinton", "hidden_mse"):  # zoo-built student: reloads without a skeleton
        student = load_checkpoint(out)
        assert resnet_layout(student)[0] == [8, 8, 16]


def test_interrupted_cli_run_resumes_to_the_same_student(
    tiny_teacher: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Metric: torch.equal on every student tensor; reference: the same command never interrupted."""
    import torchslim.train.trainer as trainer

    app = make_app()
    common = ["--method", "hidden_mse", "--steps", "6", "--checkpoint-every", "2"]
    ref_out = tmp_path / "ref"
    assert runner.invoke(app, base_args(tiny_teacher, *common, "--output", str(ref_out), limit=128)).exit_code == 0

    real_step = trainer.Trainer._train_step
    calls = {"n": 0}

    def interrupting_step(self: trainer.Trainer, batch: object, scale: object) -> float:
        calls["n"] += 1
        if calls["n"] == 5:  # after the checkpoint at step 4
            raise KeyboardInterrupt
        return real_step(self, batch, scale)

    out = tmp_path / "run"
    monkeypatch.setattr(trainer.Trainer, "_train_step", interrupting_step)
    res = runner.invoke(app, base_args(tiny_teacher, *common, "--output", str(out), limit=128))
    assert res.exit_code == 130 and "--resume" in res.output
    assert not out.exists()
    monkeypatch.setattr(trainer.Trainer, "_train_step", real_step)
    res = runner.invoke(app, base_args(tiny_teacher, *common, "--output", str(out), "--resume", limit=128))
    assert res.exit_code == 0, res.output
    ref, got = load_checkpoint(ref_out).state_dict(), load_checkpoint(out).state_dict()
    assert ref.keys() == got.keys()
    assert all(torch.equal(ref[k], got[k]) for k in ref)


def test_minilm_student_spec_builds_the_described_student() -> None:
    from transformers import BertConfig, BertModel

    from torchslim.zoo.minilm import MiniLMEncoder

    c = BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=4, num_attention_heads=4,
                   intermediate_size=32, max_position_embeddings=16)  # fmt: skip
    teacher = MiniLMEncoder(BertModel(c), tokenizer=None)
    s = build_cli_student(teacher, parse_student_spec("minilm:layers=2", "minilm"))
    cfg = s.model.config  # type: ignore[union-attr]
    assert (cfg.num_hidden_layers, cfg.hidden_size, cfg.num_attention_heads) == (2, 16, 4)
    # init=teacher by default at the teacher's width: layer 0 of the student is the teacher's layer 1
    t_layer, s_layer = teacher.model.encoder.layer[1], s.model.encoder.layer[0]  # type: ignore[union-attr,index]
    assert all(torch.equal(a, b) for a, b in zip(t_layer.parameters(), s_layer.parameters(), strict=True))
    narrow = build_cli_student(teacher, parse_student_spec("layers=1,hidden=8,heads=4", "minilm"))
    cfg = narrow.model.config  # type: ignore[union-attr]
    assert (cfg.num_hidden_layers, cfg.hidden_size, cfg.num_attention_heads) == (1, 8, 4)
