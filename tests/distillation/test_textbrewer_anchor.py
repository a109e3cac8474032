"""TextBrewer anchor (issue 5): logit + hidden-MSE distillation configured with our API (``FeatureKD``) gives
the loss computed by hand, and the loss of TextBrewer's own functions on the same tensors when TextBrewer is
importable.

TextBrewer's configuration "kd loss = kd_ce_loss(logits_S, logits_T, T), intermediate match
hidden_mse with a linear 'proj'" differs from ours in two documented ways, both checked here: TextBrewer uses
the cross-entropy ``-sum p_T log p_S`` (ours: the KL divergence, i.e. minus the teacher entropy, a constant
with the same gradient) and does not multiply by ``T^2`` (Hinton et al. do; ours does).
"""

from __future__ import annotations

import importlib.util
import sys
import types
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from torchslim.distillation.hinton import FeatureKD, FeatureKDLoss, feature_distill
from torchslim.distillation.mapping import PairShape
from torchslim.train import TrainConfig

torch.set_num_threads(1)
T = 3.0


def hand_loss(s_logits, t_logits, y, s_hid, t_hid, weight, bias, alpha, beta, temp):  # type: ignore[no-untyped-def]
    """alpha * T^2 * KL(p_T || p_S) + (1 - alpha) * CE + beta * MSE(s_hid W^T + b, t_hid), written out."""
    def log_softmax(z: torch.Tensor) -> torch.Tensor:
        z = z - z.max(dim=-1, keepdim=True).values
        return z - z.exp().sum(-1, keepdim=True).log()

    log_ps, log_pt = log_softmax(s_logits / temp), log_softmax(t_logits / temp)
    kl = (log_pt.exp() * (log_pt - log_ps)).sum(-1).mean() * temp * temp
    ce = -log_softmax(s_logits)[torch.arange(len(y)), y].mean()
    proj = s_hid @ weight.T + bias
    mse = ((proj - t_hid) ** 2).mean()
    return alpha * kl + (1 - alpha) * ce + beta * mse, kl, mse


def test_configured_loss_equals_hand_computation() -> None:
    """Metric: |ours - hand| on float64 tensors; tolerance 1e-6 (absolute) on every part."""
    g = torch.Generator().manual_seed(0)
    s_logits, t_logits = torch.randn(6, 10, generator=g, dtype=torch.float64), torch.randn(6, 10, generator=g, dtype=torch.float64)
    s_hid, t_hid = torch.randn(6, 8, generator=g, dtype=torch.float64), torch.randn(6, 16, generator=g, dtype=torch.float64)
    y = torch.randint(0, 10, (6,), generator=g)
    cfg = FeatureKD(temperature=T, alpha=0.7, hidden_weight=2.0, layers={"s.h": "t.h"})
    crit = FeatureKDLoss(cfg, [PairShape("s.h", "t.h", (6, 8), (6, 16))]).double()
    parts = crit(s_logits, t_logits, {"s.h": s_hid}, {"t.h": t_hid}, y)
    lin = crit.proj["0"].proj
    total, kl, mse = hand_loss(s_logits, t_logits, y, s_hid, t_hid, lin.weight, lin.bias, 0.7, 2.0, T)
    assert abs(float(parts["kd"] - kl)) < 1e-6
    assert abs(float(parts["hidden"] - mse)) < 1e-6
    assert abs(float(parts["loss"] - total)) < 1e-6
    assert float(parts["loss"]) > 0  # the check above is not trivially 0 == 0


def test_first_training_step_loss_equals_hand_computation() -> None:
    """End to end through ``feature_distill``: the loss logged for the first (only) step of an epoch holding
    one batch equals the hand computation with the initial weights and projection. Metric: relative error;
    tolerance 1e-6 (float32)."""
    torch.manual_seed(0)
    teacher = nn.Sequential(nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 5))
    student = nn.Sequential(nn.Linear(12, 8), nn.ReLU(), nn.Linear(8, 5))
    x, y = torch.randn(32, 12), torch.randint(0, 5, (32,))
    cfg = FeatureKD(temperature=T, alpha=0.6, hidden_weight=0.5, layers={"1": "1"},
                    train=TrainConfig(epochs=1, batch_size=32, lr=0.1, seed=3))  # fmt: skip
    with torch.no_grad():
        s_hid, t_hid = torch.relu(student[0](x)), torch.relu(teacher[0](x))
        s_logits, t_logits = student(x), teacher(x)
    # the projection FeatureKD will create: seeded by train.seed, independent of the global RNG
    crit = FeatureKDLoss(cfg, [PairShape("1", "1", (32, 8), (32, 16))], seed=3)
    lin = crit.proj["0"].proj
    expected, _, _ = hand_loss(s_logits, t_logits, y, s_hid, t_hid, lin.weight, lin.bias, 0.6, 0.5, T)
    result, trained = feature_distill(student, teacher, TensorDataset(x, y), cfg, progress=False)
    got = result.history[0]["loss"]
    assert abs(got - float(expected)) / float(expected) < 1e-6
    assert not torch.equal(trained.proj["0"].proj.weight, lin.weight)  # the projection was trained


def _textbrewer_losses() -> Any:
    """``textbrewer.losses``; when the package's ``__init__`` fails on an optional dependency (it imports
    tensorboard), its ``losses.py`` is loaded on its own. ``None`` when TextBrewer is not installed."""
    try:
        from textbrewer import losses

        return losses
    except ImportError:
        pass
    spec = importlib.util.find_spec("textbrewer")
    if spec is None or not spec.submodule_search_locations:
        return None
    root = Path(list(spec.submodule_search_locations)[0])
    pkg = types.ModuleType("_textbrewer_losses_only")
    pkg.__path__ = [str(root)]
    sys.modules.setdefault("_textbrewer_losses_only", pkg)
    for name in ("compatibility", "losses"):
        s = importlib.util.spec_from_file_location(f"_textbrewer_losses_only.{name}", root / f"{name}.py")
        if s is None or s.loader is None:
            return None
        mod = importlib.util.module_from_spec(s)
        sys.modules[s.name] = mod
        try:
            s.loader.exec_module(mod)
        except Exception:  # noqa: BLE001 - any failure means: cannot compare, skip
            return None
    return sys.modules["_textbrewer_losses_only.losses"]


def test_matches_textbrewer_losses_on_the_same_tensors() -> None:
    """Metric: absolute difference on float64 tensors, tolerance 1e-6, for the loss and its gradient."""
    tb = _textbrewer_losses()
    if tb is None:
        pytest.skip("TextBrewer is not installed (pip install textbrewer --no-deps)")
    g = torch.Generator().manual_seed(1)
    s = torch.randn(4, 7, 10, generator=g, dtype=torch.float64, requires_grad=True)
    t = torch.randn(4, 7, 10, generator=g, dtype=torch.float64)
    s_hid = torch.randn(4, 7, 8, generator=g, dtype=torch.float64, requires_grad=True)
    t_hid = torch.randn(4, 7, 16, generator=g, dtype=torch.float64)
    cfg = FeatureKD(temperature=T, alpha=1.0, hidden_weight=1.0, layers={"h": "h"})
    crit = FeatureKDLoss(cfg, [PairShape("h", "h", (4, 7, 8), (4, 7, 16))]).double()
    ours = crit(s, t, {"h": s_hid}, {"h": t_hid})
    # TextBrewer: kd_ce_loss (cross-entropy, no T^2) and hid_mse_loss after the same linear projection
    tb_kd = tb.kd_ce_loss(s, t, T)
    teacher_entropy = tb.kd_ce_loss(t, t, T)
    tb_hidden = tb.hid_mse_loss(crit.proj["0"].proj(s_hid), t_hid)
    assert abs(float(ours["kd"] - T * T * (tb_kd - teacher_entropy))) < 1e-6
    assert abs(float(ours["hidden"] - tb_hidden)) < 1e-6
    g_ours = torch.autograd.grad(ours["loss"], (s, s_hid))
    g_tb = torch.autograd.grad(T * T * tb_kd + tb_hidden, (s, s_hid))
    assert all(float((a - b).abs().max()) < 1e-6 for a, b in zip(g_ours, g_tb, strict=True))
