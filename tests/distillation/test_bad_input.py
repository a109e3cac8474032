"""Issue 5 acceptance, bad input: a mapping naming a missing module, mismatched MiniLM head counts and
teacher/student outputs that cannot be compared all fail before any training step, with a message naming
both sides (teacher module path/shape and student module path/shape)."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from torchslim.core.errors import ConfigError
from torchslim.distillation.hinton import FeatureKD, HintonKD, distill, feature_distill
from torchslim.train import TrainConfig

torch.set_num_threads(1)

DATA = TensorDataset(torch.randn(16, 1, 8, 8), torch.randint(0, 4, (16,)))


def cnn(widths: list[int], classes: int = 4, pool_first: bool = False) -> nn.Module:
    layers: list[nn.Module] = [nn.Conv2d(1, widths[0], 3, padding=1), nn.ReLU()]
    if pool_first:
        layers.append(nn.MaxPool2d(2))
    layers += [nn.Conv2d(widths[0], widths[1], 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
               nn.Linear(widths[1], classes)]  # fmt: skip
    return nn.Sequential(*layers)


@pytest.fixture(autouse=True)
def no_training(monkeypatch: pytest.MonkeyPatch) -> None:
    import torchslim.train.trainer as trainer

    def boom(*a: object, **k: object) -> None:
        raise AssertionError("bad input must fail before training")

    monkeypatch.setattr(trainer.Trainer, "fit", boom)


def cfg(layers: dict[str, str]) -> FeatureKD:
    return FeatureKD(layers=layers, train=TrainConfig(batch_size=8))


def test_mapping_naming_a_missing_module() -> None:
    teacher, student = cnn([8, 16]), cnn([4, 8])
    with pytest.raises(ConfigError) as err:
        feature_distill(student, teacher, DATA, cfg({"2": "9"}), progress=False)
    msg = str(err.value)
    assert "student '2' -> teacher '9'" in msg  # the pair, both sides
    assert "teacher (Sequential) has no submodule '9'" in msg and "top-level modules: 0, 1, 2" in msg
    with pytest.raises(ConfigError, match=r"student 'body\.0' -> teacher '2'.*student \(Sequential\) has no submodule"):
        feature_distill(student, teacher, DATA, cfg({"body.0": "2"}), progress=False)


def test_mapped_features_that_cannot_be_compared() -> None:
    teacher, student = cnn([8, 16]), cnn([4, 8], pool_first=True)  # the student's 2nd conv runs at 4x4
    with pytest.raises(ConfigError) as err:
        feature_distill(student, teacher, DATA, cfg({"3": "2"}), progress=False)
    msg = str(err.value)
    assert "student layer '3'" in msg and "(8, 8, 4, 4)" in msg
    assert "teacher layer '2'" in msg and "(8, 16, 8, 8)" in msg


def test_outputs_that_cannot_be_compared() -> None:
    teacher, student = cnn([8, 16], classes=4), cnn([4, 8], classes=3)
    for run in (
        lambda: distill(student, teacher, DATA, HintonKD(train=TrainConfig(batch_size=8)), progress=False),
        lambda: feature_distill(student, teacher, DATA, cfg({"2": "2"}), progress=False),
    ):
        with pytest.raises(ConfigError) as err:
            run()
        msg = str(err.value)
        assert "student output shape (8, 3)" in msg and "teacher output shape (8, 4)" in msg
        assert "student Sequential output vs teacher Sequential output" in msg


def test_minilm_head_mismatch_names_both_attention_modules() -> None:
    from transformers import BertConfig, BertModel

    from torchslim.distillation.methods.minilm import minilm_distill
    from torchslim.zoo.minilm import MiniLMEncoder

    def bert(heads: int, layers: int) -> MiniLMEncoder:
        c = BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=layers, num_attention_heads=heads,
                       intermediate_size=32, max_position_embeddings=16)  # fmt: skip
        return MiniLMEncoder(BertModel(c), tokenizer=None)

    teacher, student = bert(heads=4, layers=2), bert(heads=2, layers=1)
    with pytest.raises(ConfigError) as err:
        minilm_distill(student, teacher, ["a b c"] * 4, progress=False)
    msg = str(err.value)
    assert "teacher MiniLMEncoder module 'model.encoder.layer.1.attention.self': 4 heads" in msg
    assert "student MiniLMEncoder module 'model.encoder.layer.0.attention.self': 2 heads" in msg
