"""top1 on a hand-made data set, ORT predictor, agreement and KL."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.utils.data import Dataset, TensorDataset

from torchslim.bench.accuracy import agreement, ort_predict, top1
from torchslim.export.onnx import export_onnx

torch.set_num_threads(1)


class FirstFeature(nn.Module):
    """Predicts class 1 when x[0] > 0, else class 0."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([-x[:, 0], x[:, 0]], dim=1)


def _data() -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.tensor([[1.0, 0], [2.0, 0], [-1.0, 0], [-3.0, 0], [0.5, 0]])
    y = torch.tensor([1, 1, 0, 1, 0])  # the model gets 3 of 5 right
    return x, y


class ListDS(Dataset):
    def __init__(self) -> None:
        self.x, self.y = _data()

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int):
        return self.x[i], self.y[i]


def test_top1_on_hand_made_sets():
    x, y = _data()
    m = FirstFeature()
    assert top1(m, TensorDataset(x, y), batch_size=2) == pytest.approx(3 / 5)  # metric: exact fraction
    assert top1(m, (x, y)) == pytest.approx(3 / 5)
    assert top1(m, ListDS(), batch_size=3) == pytest.approx(3 / 5)
    assert top1(lambda b: m(b).numpy(), (x, y)) == pytest.approx(3 / 5)  # any callable returning logits
    with pytest.raises(ValueError, match="empty"):
        top1(m, (x[:0], y[:0]))


def test_top1_through_onnx_runtime(tmp_path):
    x, y = _data()
    p = export_onnx(FirstFeature(), x[:1], tmp_path / "m.onnx")
    assert top1(ort_predict(p, threads=1), (x, y), batch_size=2) == pytest.approx(3 / 5)


def test_agreement_and_kl():
    x = torch.randn(40, 2)
    m = FirstFeature()
    agree, kl = agreement(m, m, x)
    assert agree == 1.0 and kl == pytest.approx(0.0, abs=1e-12)  # identical models
    flipped = lambda b: -m(b)  # noqa: E731
    agree, kl = agreement(m, flipped, x, batch_size=16)
    assert agree == pytest.approx(float((x[:, 0] == 0).float().mean()))  # disagree everywhere x0 != 0
    # metric: KL(softmax(a) || softmax(-a)) computed by hand for two classes
    la = m(x).double()
    pa = la.softmax(-1)
    ref = float((pa * (la.log_softmax(-1) - (-la).log_softmax(-1))).sum(-1).mean())
    assert kl == pytest.approx(ref, rel=1e-9) and kl > 0 and math.isfinite(kl)
