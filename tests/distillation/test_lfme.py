"""LFME (Xiang et al. 2020): long-tail split, self-paced weights, curriculum, the loss, and a small run."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import TensorDataset

from torchslim.core.errors import ConfigError
from torchslim.distillation.methods.lfme import (
    LFME,
    curriculum_fraction,
    curriculum_mask,
    difficulty_ranks,
    group_accuracy,
    lfme_distill,
    lfme_loss,
    long_tail_counts,
    long_tailed_indices,
    self_paced_weight,
    split_groups,
    train_experts,
)
from torchslim.train import TrainConfig


def test_long_tail_split_has_the_exponential_100_to_1_profile() -> None:
    """Metric: per-class counts of the subset vs n_max * 100^(-i/9) (hand formula), exact after rounding;
    max/min ratio 100 exactly; every index is drawn from its class, without repetition."""
    y = torch.arange(10).repeat_interleave(600)[torch.randperm(6000, generator=torch.Generator().manual_seed(1))]
    order = [3, 1, 4, 0, 5, 9, 2, 6, 8, 7]
    idx = long_tailed_indices(y, imbalance=100, n_max=500, class_order=order, seed=0)
    assert len(set(idx.tolist())) == len(idx)
    counts = torch.bincount(y[idx], minlength=10)
    ref = [round(500 * 100 ** (-i / 9)) for i in range(10)]
    assert [int(counts[c]) for c in order] == ref == long_tail_counts(10, 500, 100)
    assert ref[0] / ref[-1] == 100
    # monotone: each class of the order has no more examples than the one before
    assert all(a >= b for a, b in zip(ref, ref[1:], strict=False))
    with pytest.raises(ConfigError, match="class 3 has 600 examples but the profile asks for 700"):
        long_tailed_indices(y, imbalance=100, n_max=700, class_order=order)
    with pytest.raises(ConfigError, match="permutation"):
        long_tailed_indices(y, class_order=[0, 1])


def test_groups_are_cardinality_adjacent() -> None:
    counts = long_tail_counts(10, 2000, 100)
    g = split_groups(counts, 3)
    assert g == [[0, 1, 2, 3], [4, 5, 6], [7, 8, 9]]
    # thresholds: many > 500, medium 100..500, few < 100 (hand-checked against the counts)
    assert counts == [2000, 1199, 719, 431, 258, 155, 93, 56, 33, 20]  # 258.5 rounds to even
    assert split_groups(counts, thresholds=(500, 100)) == [[0, 1, 2], [3, 4, 5], [6, 7, 8, 9]]
    # order follows the counts, not the class index
    assert split_groups([5, 50, 500], 3) == [[2], [1], [0]]
    with pytest.raises(ConfigError, match="empty"):
        split_groups(counts, thresholds=(5000, 100))


def test_self_paced_weight_follows_the_formula() -> None:
    """Hand computation of w = (acc_e - acc_s) / ((1 - alpha) acc_e) above alpha * acc_e, tolerance 1e-12."""
    acc_e, alpha = 0.8, 0.6  # threshold 0.48
    assert self_paced_weight(0.30, acc_e, alpha) == 1.0
    assert self_paced_weight(0.48, acc_e, alpha) == 1.0
    assert math.isclose(self_paced_weight(0.56, acc_e, alpha), 0.24 / 0.32, abs_tol=1e-12)  # 0.75
    assert math.isclose(self_paced_weight(0.70, acc_e, alpha), 0.10 / 0.32, abs_tol=1e-12)  # 0.3125
    assert self_paced_weight(0.80, acc_e, alpha) == 0.0  # the student matches the expert
    assert self_paced_weight(0.95, acc_e, alpha) == 0.0  # and stays 0 once it is better
    # continuous at the threshold and monotone decreasing in the student's accuracy
    ws = [self_paced_weight(a / 100, acc_e, alpha) for a in range(0, 101)]
    assert all(a >= b for a, b in zip(ws, ws[1:], strict=False))
    with pytest.raises(ConfigError, match="alpha"):
        self_paced_weight(0.5, 0.8, 1.0)


def test_curriculum_goes_from_easy_to_hard_within_each_group() -> None:
    """Ranks by decreasing expert confidence within each group; the selected set at fraction f is exactly the
    ceil(f * n_k) most confident examples of group k (brute force), growing until everything is used."""
    g = torch.Generator().manual_seed(0)
    conf = torch.rand(40, generator=g)
    group_of = torch.randint(0, 3, (40,), generator=g)
    ranks = difficulty_ranks(conf, group_of)
    fracs = [curriculum_fraction(e, 0.4, 3) for e in range(5)]
    assert fracs == pytest.approx([0.4, 0.6, 0.8, 1.0, 1.0])
    prev = torch.zeros(40, dtype=torch.bool)
    for f in fracs:
        mask = curriculum_mask(ranks, f)
        for k in range(3):
            idx = torch.nonzero(group_of == k).flatten()
            n_sel = max(1, math.ceil(f * len(idx) - 1e-9))
            easiest = set(idx[torch.argsort(-conf[idx])[:n_sel]].tolist())
            assert set(idx[mask[idx]].tolist()) == easiest
        assert bool((mask | ~prev).all())  # nothing selected earlier is dropped
        prev = mask
    assert bool(prev.all())


def test_lfme_loss_matches_a_hand_computation() -> None:
    """Reference: per-example CE plus w_k * T^2 KL over the group's classes only, averaged over the selected
    examples; tolerance 1e-6."""
    g = torch.Generator().manual_seed(0)
    z, t = torch.randn(6, 5, generator=g), torch.randn(6, 5, generator=g)
    y = torch.tensor([0, 1, 2, 3, 4, 0])
    groups, w, temp = [[0, 1], [2, 3, 4]], [0.7, 0.2], 3.0
    group_of = torch.tensor([0 if int(c) in groups[0] else 1 for c in y])
    mask = torch.tensor([True, True, False, True, True, False])
    ref = []
    for i in range(6):
        cls = groups[int(group_of[i])]
        p_t = torch.softmax(t[i, cls] / temp, -1)
        log_q = torch.log_softmax(z[i, cls] / temp, -1)
        kl = float((p_t * (p_t.log() - log_q)).sum()) * temp**2
        ce = float(F.cross_entropy(z[i : i + 1], y[i : i + 1]))
        ref.append(ce + 0.5 * w[int(group_of[i])] * kl)
    want = sum(r for r, m in zip(ref, mask.tolist(), strict=True) if m) / int(mask.sum())
    got = lfme_loss(z, y, t, group_of, groups, w, temp, kd_weight=0.5, instance_mask=mask, kd_classes="group")
    assert abs(float(got) - want) < 1e-6
    all_ = lfme_loss(z, y, t, group_of, groups, w, temp, kd_weight=0.5, kd_classes="group")
    assert abs(float(all_) - sum(ref) / 6) < 1e-6
    # kd_classes="all": the KL runs over every class (hand computation, no mask)
    ref_all = []
    for i in range(6):
        p_t = torch.softmax(t[i] / temp, -1)
        kl = float((p_t * (p_t.log() - torch.log_softmax(z[i] / temp, -1))).sum()) * temp**2
        ref_all.append(float(F.cross_entropy(z[i : i + 1], y[i : i + 1])) + w[int(group_of[i])] * kl)
    got_all = lfme_loss(z, y, t, group_of, groups, w, temp)  # default: all classes
    assert abs(float(got_all) - sum(ref_all) / 6) < 1e-6
    # zero weights leave plain cross-entropy
    assert torch.allclose(lfme_loss(z, y, t, group_of, groups, [0.0, 0.0], temp), F.cross_entropy(z, y))


def test_group_accuracy_predicts_among_the_group_classes() -> None:
    z = torch.tensor([[0.0, 1.0, 9.0], [2.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    # example 0: true class 0, overall argmax is class 2 but among {0, 1} class 1 wins -> wrong
    assert group_accuracy(z, torch.tensor([0, 0, 2]), [[0, 1], [2]]) == [0.5, 1.0]


def _blobs(n_per: list[int], seed: int) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(len(n_per), 8, generator=torch.Generator().manual_seed(99)) * 2.5
    xs = [centers[c] + torch.randn(n, 8, generator=g) for c, n in enumerate(n_per)]
    ys = [torch.full((n,), c) for c, n in enumerate(n_per)]
    return TensorDataset(torch.cat(xs), torch.cat(ys))


def test_lfme_distill_runs_logs_weights_and_checks_input(tmp_path: object) -> None:
    """Small run on 6 Gaussian blobs, long-tailed 120 -> 6 examples: 3 experts, 3 student epochs. Checks:
    history carries w_k in [0, 1] recomputed from the logged accuracies with the formula (tolerance 1e-12),
    the student beats chance on a balanced test set (top-1 > 0.5 with 6 classes), and bad inputs fail early."""
    counts = long_tail_counts(6, 120, 20)
    train, val, test = _blobs(counts, 0), _blobs([20] * 6, 1), _blobs([50] * 6, 2)
    groups = split_groups(counts, 3)
    tc = TrainConfig(epochs=6, batch_size=16, lr=0.05, schedule="cosine", seed=0)
    torch.manual_seed(0)
    experts = train_experts(lambda: nn.Linear(8, 6), train, train.tensors[1], groups, tc)
    torch.manual_seed(0)
    student = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 6))
    cfg = LFME(alpha=0.6, curriculum_start=0.5, train=tc.model_copy(update={"epochs": 3}))
    res = lfme_distill(student, experts, groups, train, cfg, val_data=val, progress=False)
    assert len(res.history) == 3
    for h in res.history:
        for k in range(3):
            want = self_paced_weight(h[f"lfme_acc{k}"], h["lfme_expert_acc"][k], 0.6)
            assert abs(h[f"lfme_w{k}"] - want) < 1e-12 and 0 <= want <= 1
    with torch.no_grad():
        acc = float((student(test.tensors[0]).argmax(1) == test.tensors[1]).float().mean())
    assert acc > 0.5
    with pytest.raises(ConfigError, match="2 experts for 3 groups"):
        lfme_distill(student, experts[:2], groups, train, cfg, progress=False)
    with pytest.raises(ConfigError, match=r"classes \[1\] are in more than one group"):
        lfme_distill(student, experts, [[0, 1], [1, 2, 3], [4, 5]], train, cfg, progress=False)
    with pytest.raises(ConfigError, match=r"expert 0 outputs \(5,\) logits .* student outputs \(6,\)"):
        lfme_distill(student, [nn.Linear(8, 5)] + experts[1:], groups, train, cfg, progress=False)


class _StopAt:
    def __init__(self, step: int) -> None:
        self.at = step

    def on_step_end(self, trainer: object, step: int, loss: float) -> None:
        if step == self.at:
            raise KeyboardInterrupt


def test_interrupted_lfme_resumes_to_the_uninterrupted_result(tmp_path: Path) -> None:
    """Metric: torch.equal on every student tensor and equal logged weights; reference: the same run never
    interrupted. 5 steps per epoch, 2 epochs, checkpoints every 2 steps, interrupted after step 9 (in epoch 2,
    so the self-paced weights of epoch 1 must come back from the checkpoint's history)."""
    counts = long_tail_counts(4, 40, 8)
    train, val = _blobs(counts + [0, 0], 3), _blobs([10, 10, 10, 10, 0, 0], 4)
    groups = [[0, 1], [2, 3]]
    tc = TrainConfig(epochs=2, batch_size=16, lr=0.1, checkpoint_every_steps=2, seed=1)
    experts = []
    for k in range(2):
        torch.manual_seed(k)
        experts.append(nn.Linear(8, 4).eval())
    cfg = LFME(alpha=0.5, curriculum_start=0.5, curriculum_epochs=2, train=tc)

    def student(seed: int) -> nn.Module:
        torch.manual_seed(seed)
        return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))

    s_ref = student(5)
    ref = lfme_distill(s_ref, experts, groups, train, cfg, val_data=val, progress=False)
    with pytest.raises(KeyboardInterrupt):
        lfme_distill(student(5), experts, groups, train, cfg, val_data=val, checkpoint_dir=tmp_path,
                     progress=False, callbacks=[_StopAt(9)])  # fmt: skip
    s_res = student(77)
    res = lfme_distill(s_res, experts, groups, train, cfg, val_data=val, checkpoint_dir=tmp_path, resume=True,
                       progress=False)  # fmt: skip
    assert all(torch.equal(a, b) for a, b in zip(s_ref.state_dict().values(), s_res.state_dict().values(), strict=True))
    assert [h["lfme_w0"] for h in ref.history] == [h["lfme_w0"] for h in res.history]
    # the weights used in epoch 2 are not the initial 1.0, so a resume that forgot them would differ
    assert min(ref.history[0]["lfme_w0"], ref.history[0]["lfme_w1"]) < 1.0, ref.history[0]
