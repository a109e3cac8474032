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
    calibrate_sim_temperature,
    class_similarity,
    decomposition,
    geometry_agreement,
    gradient_rescaling,
    logit_layer,
    rank_correlation,
    rescaled_ce_loss,
    run_ablations,
    teacher_report,
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
    torch.manual_seed(1)
    sim = torch.rand(c, c) * 2 - 1
    beta = 0.5
    for kind in ABLATIONS:
        r, w = ablation_targets(z, y, kind, T, similarity=sim, sim_temperature=beta)
        assert torch.allclose(r.sum(1), torch.ones(12), atol=1e-6), kind
        for i in range(12):
            yi = int(y[i])
            py = float(p[i, yi])
            if kind == "instance_rescaled_ce":  # carries the teacher's p; the loss reads p_y from it
                ref = p[i].tolist()
            elif kind in ("ce", "instance_weighted_ce"):
                ref = [1.0 if j == yi else 0.0 for j in range(c)]
            elif kind == "label_smoothing":
                conf = float(p[torch.arange(12), y].mean())
                ref = [conf if j == yi else (1 - conf) / (c - 1) for j in range(c)]
            elif kind == "kd_uniform_nontarget":
                ref = [py if j == yi else (1 - py) / (c - 1) for j in range(c)]
            elif kind == "kd_class_mean":
                rows = [k for k in range(12) if int(y[k]) == yi]
                ref = [sum(float(p[k, j]) for k in rows) / len(rows) for j in range(c)]
            elif kind == "kd_sim":  # r_y = mean p_y; the rest ~ exp(S[y, j] / beta) over j != y
                conf = float(p[torch.arange(12), y].mean())
                e = [math.exp(float(sim[yi, j]) / beta) if j != yi else 0.0 for j in range(c)]
                ref = [conf if j == yi else (1 - conf) * e[j] / sum(e) for j in range(c)]
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
    seed (three ablations here to stay fast; every target is checked above; kd_sim takes its class
    similarity from the teacher's linear head); a student that matches the
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
        ablations=("ce", "kd_sim", "kd"),
        seeds=(0, 1),
        temperature=2.0,
        train=TrainConfig(epochs=3, batch_size=50, lr=0.2, schedule="cosine"),
    )
    table = run_ablations(teacher, lambda: nn.Linear(4, 3), train, test, cfg)
    assert set(table["accuracy"]) == {"ce", "kd_sim", "kd"}
    assert all(len(v["runs"]) == 2 for v in table["accuracy"].values())
    assert table["teacher_accuracy"] == 1.0
    assert table["accuracy"]["ce"]["mean"] >= 0.9 and table["accuracy"]["kd"]["mean"] >= 0.9, table[
        "accuracy"
    ]
    d = decomposition(table)
    assert set(d) == {"total (kd - ce)"}  # pairs with a missing ablation are skipped
    # diagnostics recorded: a geometry agreement per run (a correlation, in [-1, 1]) and the rescaling summary
    assert all(len(g["runs"]) == 2 and -1 <= g["mean"] <= 1 for g in table["geometry"].values())
    assert len(table["rescaling"]["mean_w_by_p_y_quartile"]) == 4
    assert table["sim_temperature"] > 0  # kd_sim's beta, calibrated (config.sim_temperature is None)
    assert math.isclose(table["teacher"]["T=1"]["accuracy"], table["teacher_train_accuracy"], abs_tol=1e-9)
    assert math.isclose(
        d["total (kd - ce)"], table["accuracy"]["kd"]["mean"] - table["accuracy"]["ce"]["mean"], abs_tol=1e-12
    )
    with pytest.raises(ConfigError, match="unknown ablations"):
        run_ablations(teacher, lambda: nn.Linear(4, 3), train, test, KDDiagnostics(ablations=("nope",)))
    with pytest.raises(ConfigError, match="classes"):
        run_ablations(teacher, lambda: nn.Linear(4, 2), train, test, KDDiagnostics(ablations=("kd",)))


def test_kd_sim_needs_a_similarity() -> None:
    """kd_sim without a [C, C] similarity, and run_ablations with kd_sim on a teacher without a linear head,
    fail before training with a message saying what to pass."""
    z, y = _teacher()
    with pytest.raises(ConfigError, match="kd_sim needs similarity"):
        ablation_targets(z, y, "kd_sim")
    with pytest.raises(ConfigError, match="kd_sim needs similarity"):
        ablation_targets(z, y, "kd_sim", similarity=torch.eye(4))
    x, yy = torch.randn(20, 5), torch.arange(20) % 5
    data = TensorDataset(x, yy)
    with pytest.raises(ConfigError, match="no nn.Linear with out_features=5"):
        cfg = KDDiagnostics(ablations=("kd_sim",))
        run_ablations(nn.Identity(), lambda: nn.Linear(5, 5), data, data, cfg)


def test_gradient_rescaling_matches_autograd_and_hand_value() -> None:
    """w = (KD-loss gradient on the ground-truth logit) / (CE gradient on it).
    (a) Hand value at T = 1, alpha = 1: z_s = 0 (q_y = 1/2), p_y = 0.8 -> w = (0.8 - 0.5) / (1 - 0.5) = 0.6.
    (b) Random logits, T = 3, alpha = 0.7: equals the ratio of autograd gradients of ablation_loss (with the
    teacher's p as target) and of CE; tolerance 1e-5 relative."""
    z_s = torch.zeros(1, 2)
    z_t = torch.tensor([[math.log(0.8), math.log(0.2)]])
    assert math.isclose(float(gradient_rescaling(z_s, z_t, torch.tensor([0]))[0]), 0.6, rel_tol=1e-6)
    torch.manual_seed(3)
    zs, zt = torch.randn(6, 5, dtype=torch.float64), torch.randn(6, 5) * 2
    y = torch.tensor([0, 1, 2, 3, 4, 0])
    T, a = 3.0, 0.7
    p = torch.softmax(zt.double() / T, -1)
    z1 = zs.clone().requires_grad_(True)
    ablation_loss(z1, y, p, torch.ones(6, dtype=torch.float64), a, T).backward()
    z2 = zs.clone().requires_grad_(True)
    F.cross_entropy(z2, y).backward()
    assert z1.grad is not None and z2.grad is not None
    ref = z1.grad[torch.arange(6), y] / z2.grad[torch.arange(6), y]
    got = gradient_rescaling(zs, zt, y, temperature=T, alpha=a)
    assert torch.allclose(got.double(), ref, rtol=1e-5), (got, ref)
    with pytest.raises(ConfigError, match="differ in shape"):
        gradient_rescaling(zs[:, :4], zt, y)


def test_rank_correlation_and_geometry_hand_values() -> None:
    """Spearman with ties (average ranks): a = [1, 2, 2, 3], b = [1, 3, 2, 4] -> ranks [1, 2.5, 2.5, 4] vs
    [1, 3, 2, 4]; Pearson of those = 4.5 / sqrt(4.5 * 5) = 0.948683 (tolerance 1e-6). Geometry: a weight whose
    class similarity is the reference -> 1; its negated off-diagonals -> -1; cosine of [1, 0] and [1, 1] is
    1/sqrt(2)."""
    got = rank_correlation(torch.tensor([1.0, 2.0, 2.0, 3.0]), torch.tensor([1.0, 3.0, 2.0, 4.0]))
    assert math.isclose(got, 4.5 / math.sqrt(4.5 * 5), abs_tol=1e-6)
    w = torch.tensor([[1.0, 0.0, 0.0], [1.0, 1.0, 0.0], [0.0, 0.3, 1.0]])
    s = class_similarity(w)
    assert math.isclose(float(s[0, 1]), 1 / math.sqrt(2), abs_tol=1e-6)
    assert math.isclose(geometry_agreement(w, s), 1.0, abs_tol=1e-6)
    assert math.isclose(geometry_agreement(w, 2 * torch.eye(3) - s), -1.0, abs_tol=1e-6)
    with pytest.raises(ConfigError, match="same classes"):
        geometry_agreement(w, torch.eye(4))
    head = nn.Linear(7, 3)
    assert logit_layer(nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 7), head), 3) is head


def test_teacher_report_hand_values() -> None:
    """Two examples, C = 4, T = 1. Row 0: p = [0.7, 0.1, 0.1, 0.1], y = 0 -> non-target uniform, normalised
    entropy 1. Row 1: p = [0.1, 0.6, 0.3, 0.0 (tiny)], y = 1 -> non-target [0.25, 0.75, ~0]: entropy
    (-.25 ln .25 - .75 ln .75) / ln 3. mean p_y = 0.65, universe mass 0.35, std p_y = 0.0707 (n - 1);
    tolerance 1e-6 (1e-5 for the entropy: the 'zero' has probability e^-30)."""
    p = torch.tensor([[0.7, 0.1, 0.1, 0.1], [0.1, 0.6, 0.3, math.exp(-30)]])
    r = teacher_report(p.log(), torch.tensor([0, 1]))
    assert math.isclose(r["mean_p_y"], 0.65, abs_tol=1e-6)
    assert math.isclose(r["universe_mass"], 0.35, abs_tol=1e-6)
    assert math.isclose(r["std_p_y"], 0.05 * math.sqrt(2), abs_tol=1e-6)
    h1 = -(0.25 * math.log(0.25) + 0.75 * math.log(0.75)) / math.log(3)
    assert math.isclose(r["nontarget_entropy"], (1 + h1) / 2, abs_tol=1e-5)
    assert r["accuracy"] == 1.0


def test_calibrate_sim_temperature_hits_the_target_entropy() -> None:
    """C = 3, S[0] = [1, 0.5, 0]: the non-target part of row 0 is [s, 1 - s] with s = sigmoid(0.5 / beta); its
    normalised entropy (base-2 entropy, log(C - 1) = log 2) at the calibrated beta equals the target, checked by
    hand from that closed form. Metric: abs difference; tolerance 1e-6. A target outside (0, 1) is refused."""
    s = torch.tensor([[1.0, 0.5, 0.0], [0.5, 1.0, 0.0], [0.0, 0.0, 1.0]])
    beta = calibrate_sim_temperature(s, torch.tensor([0]), 0.8)
    sg = 1 / (1 + math.exp(-0.5 / beta))
    h = -(sg * math.log(sg) + (1 - sg) * math.log(1 - sg)) / math.log(2)
    assert math.isclose(h, 0.8, abs_tol=1e-6)
    with pytest.raises(ConfigError, match=r"in \(0, 1\)"):
        calibrate_sim_temperature(s, torch.tensor([0]), 1.0)


def test_rescaled_ce_gives_kd_gradient_on_the_ground_truth_logit() -> None:
    """rescaled_ce_loss (T = 2, alpha = 0.9): per example, the autograd gradient on the ground-truth logit
    equals that of the KD ablation_loss with target p (tolerance 1e-6 relative), and on every other logit it is
    w_i q_j / N (CE's direction scaled by w_i, the hand formula; tolerance 1e-9 absolute)."""
    torch.manual_seed(4)
    n, c, T, a = 5, 4, 2.0, 0.9
    zs, zt, y = torch.randn(n, c, dtype=torch.float64), torch.randn(n, c) * 3, torch.tensor([0, 1, 2, 3, 1])
    p = torch.softmax(zt.double() / T, -1)
    z1 = zs.clone().requires_grad_(True)
    rescaled_ce_loss(z1, y, p, T, a).backward()
    z2 = zs.clone().requires_grad_(True)
    ablation_loss(z2, y, p, torch.ones(n, dtype=torch.float64), a, T).backward()
    assert z1.grad is not None and z2.grad is not None
    rows = torch.arange(n)
    assert torch.allclose(z1.grad[rows, y], z2.grad[rows, y], rtol=1e-6)
    w = gradient_rescaling(zs, zt, y, T, a).double()
    q = torch.softmax(zs, -1)
    off = torch.ones(n, c, dtype=torch.bool)
    off[rows, y] = False
    assert torch.allclose(z1.grad[off], (w[:, None] * q / n)[off], atol=1e-9)
    with pytest.raises(ConfigError, match="differ in shape"):
        rescaled_ce_loss(zs, y, p[:, :3], T, a)
