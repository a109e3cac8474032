"""build_student: shallower/narrower BERT students of the real MiniLM-L6 (loaded offline from its package)."""

from __future__ import annotations

import pytest
import torch

from torchslim.core.errors import ConfigError, DataSourceMissing
from torchslim.distillation.student import build_student, every_other_layer
from torchslim.zoo.minilm import MiniLMEncoder

TEXTS = ["Flu season is here", "Eat more fibre to protect your heart", "New study on sleep and memory"]


@pytest.fixture(scope="module")
def teacher() -> MiniLMEncoder:
    from torchslim.zoo.minilm import minilm

    try:
        return minilm()
    except DataSourceMissing as e:  # pragma: no cover - the package is a declared dependency
        pytest.skip(str(e))


def test_every_other_layer() -> None:
    assert every_other_layer(6, 3) == [1, 3, 5]
    assert every_other_layer(6, 2) == [2, 5]
    assert every_other_layer(6, 6) == [0, 1, 2, 3, 4, 5]
    assert every_other_layer(12, 6) == [1, 3, 5, 7, 9, 11]
    with pytest.raises(ConfigError, match="init='scratch'"):
        every_other_layer(6, 7)


def test_copied_student_has_teacher_layers(teacher: MiniLMEncoder) -> None:
    # reference: the teacher's own tensors; metric: exact equality of every copied parameter
    student = build_student(teacher, num_layers=3)
    assert student.model.config.num_hidden_layers == 3
    assert student.tokenizer is teacher.tokenizer
    t_sd = teacher.model.state_dict()
    for dst, src in enumerate([1, 3, 5]):
        for k, v in student.model.encoder.layer[dst].state_dict().items():
            assert torch.equal(v, t_sd[f"encoder.layer.{src}.{k}"]), k
    for k, v in student.model.embeddings.state_dict().items():
        assert torch.equal(v, t_sd[f"embeddings.{k}"]), k
    assert teacher.model.config.num_hidden_layers == 6  # teacher untouched
    # 6 transformer layers -> 3: transformer parameters halve (embeddings are shared in size)
    t_layer = sum(p.numel() for p in teacher.model.encoder.parameters())
    s_layer = sum(p.numel() for p in student.model.encoder.parameters())
    assert s_layer * 2 == t_layer
    emb = student.encode(TEXTS)
    assert emb.shape == (3, 384)
    assert torch.allclose(emb.norm(dim=1), torch.ones(3), atol=1e-5)  # unit norm, like the teacher


def test_full_copy_reproduces_teacher(teacher: MiniLMEncoder) -> None:
    # reference: teacher embeddings; metric: cosine, tolerance 1 - 1e-6 (same weights, same pipeline)
    clone = build_student(teacher, num_layers=6, layers=range(6)).eval()
    cos = torch.nn.functional.cosine_similarity(clone.encode(TEXTS), teacher.encode(TEXTS))
    assert cos.min() > 1 - 1e-6


def test_scratch_narrow_student(teacher: MiniLMEncoder) -> None:
    student = build_student(teacher, num_layers=2, hidden_size=192, init="scratch", seed=1)
    cfg = student.model.config
    assert (cfg.num_hidden_layers, cfg.hidden_size, cfg.num_attention_heads, cfg.intermediate_size) == (
        2,
        192,
        12,
        768,
    )
    assert student.encode(TEXTS).shape == (3, 192)
    again = build_student(teacher, num_layers=2, hidden_size=192, init="scratch", seed=1)
    assert all(
        torch.equal(a, b) for a, b in zip(student.parameters(), again.parameters(), strict=True)
    )  # seeded
    assert sum(p.numel() for p in student.parameters()) < 0.5 * sum(p.numel() for p in teacher.parameters())


def test_bad_sizes_fail_clearly(teacher: MiniLMEncoder) -> None:
    with pytest.raises(ConfigError, match="init='scratch'"):
        build_student(teacher, num_layers=3, hidden_size=192)  # cannot copy 384-wide weights into 192
    with pytest.raises(ConfigError, match="not a multiple of num_heads 12"):
        build_student(teacher, num_layers=3, hidden_size=200, init="scratch")
    with pytest.raises(ConfigError, match=r"0\.\.5"):
        build_student(teacher, num_layers=2, layers=[0, 6])
    with pytest.raises(ConfigError, match="MiniLMEncoder"):
        build_student(teacher.model, num_layers=2)  # type: ignore[arg-type]


def test_assistant_has_teacher_depth_and_student_width(teacher: MiniLMEncoder) -> None:
    # paper section 3.3: the assistant is an L-layer Transformer with the student's hidden size d'_h
    from torchslim.distillation.student import build_assistant, needs_assistant

    student = build_student(teacher, num_layers=3, hidden_size=192, init="scratch")
    ta = build_assistant(teacher, student, seed=2)
    cfg = ta.model.config
    assert (cfg.num_hidden_layers, cfg.hidden_size, cfg.num_attention_heads, cfg.intermediate_size) == (
        6,
        192,
        12,
        768,
    )
    assert ta.tokenizer is teacher.tokenizer and ta.encode(TEXTS).shape == (3, 192)
    assert needs_assistant(teacher, student)  # 3 <= 6/2 and 192 <= 384/2
    assert not needs_assistant(teacher, build_student(teacher, num_layers=3))  # same width: no assistant
    assert not needs_assistant(teacher, ta)  # same depth: no assistant
    with pytest.raises(ConfigError, match="distil the student directly"):
        build_assistant(teacher, ta)
    with pytest.raises(ConfigError, match="MiniLMEncoder"):
        needs_assistant(teacher.model, student)  # type: ignore[arg-type]
