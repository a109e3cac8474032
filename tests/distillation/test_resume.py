"""Issue 5 acceptance: an interrupted distillation resumes from its last checkpoint to the same result.

Metric: ``torch.equal`` on every tensor of the student (and, for ``feature_distill``, of the learned
projections); reference: the same run never interrupted. The interruption is a callback raising
``KeyboardInterrupt`` after step 5 of 8, with checkpoints every 2 steps (the resumed run redoes step 5).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from torchslim.distillation.hinton import FeatureKD, HintonKD, distill, feature_distill
from torchslim.train import Callback, TrainConfig

torch.set_num_threads(1)

g = torch.Generator().manual_seed(0)
DATA = TensorDataset(torch.randn(64, 1, 8, 8, generator=g), torch.randint(0, 4, (64,), generator=g))
TRAIN = TrainConfig(epochs=2, batch_size=16, lr=0.05, checkpoint_every_steps=2, seed=1)


def cnn(width: int, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(1, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(), nn.Dropout(0.1),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, 4),
    )  # fmt: skip


class StopAt(Callback):
    def __init__(self, step: int) -> None:
        self.at = step

    def on_step_end(self, trainer: Any, step: int, loss: float) -> None:
        if step == self.at:
            raise KeyboardInterrupt


def run(method: str, student: nn.Module, teacher: nn.Module, ckpt: Path | None, **kw: Any) -> dict[str, torch.Tensor]:
    if method == "hinton":
        distill(student, teacher, DATA, HintonKD(temperature=2.0, alpha=0.5, train=TRAIN), checkpoint_dir=ckpt,
                progress=False, **kw)  # fmt: skip
        return dict(student.state_dict())
    cfg = FeatureKD(temperature=2.0, alpha=0.5, layers={"2": "2"}, train=TRAIN)
    _, crit = feature_distill(student, teacher, DATA, cfg, checkpoint_dir=ckpt, progress=False, **kw)
    return {**student.state_dict(), **{f"proj.{k}": v for k, v in crit.state_dict().items()}}


@pytest.mark.parametrize("method", ["hinton", "feature"])
def test_interrupted_distillation_resumes_to_the_uninterrupted_result(tmp_path: Path, method: str) -> None:
    teacher = cnn(16, seed=0).eval()
    reference = run(method, cnn(8, seed=5), teacher, None)

    with pytest.raises(KeyboardInterrupt):
        run(method, cnn(8, seed=5), teacher, tmp_path, callbacks=[StopAt(5)])
    assert (tmp_path / "last.pt").is_file()
    # a fresh process would rebuild the student from scratch: use other initial weights to prove they are loaded
    resumed = run(method, cnn(8, seed=77), teacher, tmp_path, resume=True)
    assert reference.keys() == resumed.keys()
    assert all(torch.equal(reference[k], resumed[k]) for k in reference)
    changed = cnn(8, seed=5).state_dict()
    assert not torch.equal(changed["0.weight"], resumed["0.weight"])  # training did change the student
