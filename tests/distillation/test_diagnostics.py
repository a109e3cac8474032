"""KD diagnostics (Tang et al. 2020): each synthetic target as defined, the label-smoothing equivalence, and
the ablation runner."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import TensorDataset

from torchslim.core.errors import ConfigError
from torchslim.distillation.diagnostics import (
    ABLATIONS,
    KDDiagnostics,
    ablation_loss,
    ablation_targets,
    decomposition,
    run_ablations,
)
from torchslim.distillation.losses import kd_loss
from torchslim.train import TrainConfig


def _teacher() -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    return torch.randn(12, 5) * 2, torch.tensor([0, 1, 2, 3, 4, 0, 1, 2, 3, 4, 0, 0])


def test_targets_match_hand_computation() -> None:
    """Every ablation's target row recomputed by hand from p = softmax(z / T), T = 2.
    Metric: max abs difference; tolerance 1e-6. Rows sum to 1 (tolerance 1e-6)."""
    z, y = _teacher()
    T = 2.0
    p = torch.softmax(z / T, -1)
    c = 5
    for kind in ABLATIONS:
        r, w = ablation_targets(z, y, kind, T)
        assert torch.allclose(r.sum(1), torch.ones(12), atol=1e-6), kind
        for i in range(12):
            yi = int(y[i])
            py = float(p[i, yi])
            if kind in ("ce", "instance_weighted_ce"):
                ref = [1.0 if j == yi else 0.0 for j in range(c)]
            elif kind == "label_smoothing":
                conf = float(p[torch.arange(12), y].mean())
                ref = [conf if j == yi else (1 - conf) / (c - 1) for j in range(c)]
            elif kind == "kd_uniform_nontarget":
                ref = [py if j == yi else (1 - py) / (c - 1) for j in range(c)]
            elif kind == "kd_class_mean":
                rows = [k for k in range(12) if int(y[k]) == yi]
                ref = [sum(float(p[k, j]) for k in rows) / len(rows) for j in range(c)]
            elif kind == "kd":
                ref = p[i].tolist()
            else:  # kd_permuted: target kept, the non-target values are a permutation of the teacher's
                assert abs(float(r[i, yi]) - py) < 1e-6
                got = sorted(float(r[i, j]) for j in range(c) if j != yi)
                want = sorted(float(p[i, j]) for j in range(c) if j != yi)
                assert max(abs(a - b) for a, b in zip(got, want, strict=True)) < 1e-6
                continue
            assert max(abs(float(r[i, j]) - ref[j]) for j in range(c)) < 1e-6, (kind, i)
        if kind == "instance_weighted_ce":
            py_all = p[torch.arange(12), y]
            assert torch.allclose(w, py_all / py_all.mean(), atol=1e-6)
        else:
            assert torch.equal(w, torch.ones(12))


def test_permutation_actually_moves_mass_and_is_seeded() -> None:
    """kd_permuted differs from kd on most rows (not a no-op) and is reproducible for a seed."""
    z, y = _teacher()
    r1, _ = ablation_targets(z, y, "kd_permuted", 2.0, seed=1)
    r2, _ = ablation_targets(z, y, "kd_permuted", 2.0, seed=1)
    kd, _ = ablation_targets(z, y, "kd", 2.0)
    assert torch.equal(r1, r2)
    assert int(((r1 - kd).abs().max(1).values > 1e-4).sum()) >= 8


def test_uniform_nontarget_teacher_kd_equals_label_smoothing() -> None:
    """A teacher whose non-target probabilities are uniform: (a) KD's target equals kd_uniform_nontarget's;
    (b) at T = 1, alpha = 1 the KD loss equals torch's label-smoothed CE with eps = (1 - p_y) C / (C - 1);
    (c) it equals Hinton's kd_loss plus the (constant) entropy of the target. Tolerance 1e-5."""
    c, p_y = 6, 0.7
    y = torch.tensor([0, 3, 5, 2])
    probs = torch.full((4, c), (1 - p_y) / (c - 1))
    probs[torch.arange(4), y] = p_y
    z_t = probs.log()
    kd, _ = ablation_targets(z_t, y, "kd", 1.0)
    uni, w = ablation_targets(z_t, y, "kd_uniform_nontarget", 1.0)
    assert torch.allclose(kd, uni, atol=1e-6)
    torch.manual_seed(0)
    z_s = torch.randn(4, c)
    eps = (1 - p_y) * c / (c - 1)
    ours = ablation_loss(z_s, y, kd, w, alpha=1.0, temperature=1.0)
    assert math.isclose(float(ours), float(F.cross_entropy(z_s, y, label_smoothing=eps)), abs_tol=1e-5)
    entropy = -(probs * probs.log()).sum(1).mean()
    assert math.isclose(float(ours), float(kd_loss(z_s, z_t, 1.0) + entropy), abs_tol=1e-5)


def test_ablation_loss_hand_computation_and_errors() -> None:
    """(1 - a) CE + a T^2 H(r, softmax(z/T)), weighted per example, written out; tolerance 1e-6."""
    torch.manual_seed(2)
    z, y = torch.randn(3, 4), torch.tensor([1, 0, 3])
    r = torch.softmax(torch.randn(3, 4), -1)
    w = torch.tensor([0.5, 1.0, 1.5])
    a, T = 0.3, 3.0
    ref = 0.0
    for i in range(3):
        ce = -float(torch.log_softmax(z[i], -1)[y[i]])
        h = -float((r[i] * torch.log_softmax(z[i] / T, -1)).sum())
        ref += float(w[i]) * ((1 - a) * ce + a * T * T * h)
    assert math.isclose(float(ablation_loss(z, y, r, w, a, T)), ref / 3, rel_tol=1e-6)
    with pytest.raises(ConfigError, match="differ in shape"):
        ablation_loss(z, y, r[:, :3], w, a, T)
    with pytest.raises(ConfigError, match="unknown ablation"):
        ablation_targets(z, y, "kd_magic")
    with pytest.raises(ConfigError, match="labels must lie"):
        ablation_targets(z, torch.tensor([0, 1, 7]), "kd")
    with pytest.raises(ConfigError, match="one integer label per row"):
        ablation_targets(z, torch.tensor([0, 1]), "kd")


def test_run_ablations_table_and_decomposition() -> None:
    """Runner on a separable 3-class toy problem with a linear teacher: returns every ablation with runs per
    seed (three ablations here to stay fast; every target is checked above); a student that matches the
    teacher's structure learns it (top-1 >= 0.9 for ce and kd)."""
    torch.manual_seed(0)
    w_true = torch.randn(4, 3)
    x = torch.randn(300, 4)
    y = (x @ w_true).argmax(1)
    teacher = nn.Linear(4, 3)
    with torch.no_grad():
        teacher.weight.copy_(3 * w_true.T)
        teacher.bias.zero_()
    train, test = TensorDataset(x[:200], y[:200]), TensorDataset(x[200:], y[200:])
    cfg = KDDiagnostics(
        ablations=("ce", "label_smoothing", "kd"),
        seeds=(0, 1),
        temperature=2.0,
        train=TrainConfig(epochs=3, batch_size=50, lr=0.2, schedule="cosine"),
    )
    table = run_ablations(teacher, lambda: nn.Linear(4, 3), train, test, cfg)
    assert set(table["accuracy"]) == {"ce", "label_smoothing", "kd"}
    assert all(len(v["runs"]) == 2 for v in table["accuracy"].values())
    assert table["teacher_accuracy"] == 1.0
    assert table["accuracy"]["ce"]["mean"] >= 0.9 and table["accuracy"]["kd"]["mean"] >= 0.9, table[
        "accuracy"
    ]
    d = decomposition(table)
    assert set(d) == {"universe (label_smoothing - ce)", "total (kd - ce)"}  # pairs with missing runs skipped
    assert math.isclose(
        d["total (kd - ce)"], table["accuracy"]["kd"]["mean"] - table["accuracy"]["ce"]["mean"], abs_tol=1e-12
    )
    with pytest.raises(ConfigError, match="unknown ablations"):
        run_ablations(teacher, lambda: nn.Linear(4, 3), train, test, KDDiagnostics(ablations=("nope",)))
    with pytest.raises(ConfigError, match="classes"):
        run_ablations(teacher, lambda: nn.Linear(4, 2), train, test, KDDiagnostics(ablations=("kd",)))
