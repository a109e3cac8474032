"""Distillation loss registry and losses, each checked against an independent reference computation."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from torchslim.core.errors import ConfigError
from torchslim.distillation.losses import (
    HintLoss,
    attention_kl,
    available_losses,
    fsp_loss,
    fsp_matrix,
    get_loss,
    hidden_cosine,
    hidden_mse,
    kd_loss,
    register_loss,
    value_relation,
    value_relation_kl,
)


def test_registry_names_and_unknown_name_error() -> None:
    names = set(available_losses())
    assert {"kl", "mse", "cosine", "attention_kl", "value_relation_kl", "fsp", "hint"} <= names
    assert get_loss("kl") is kd_loss and get_loss("hint") is HintLoss
    with pytest.raises(ConfigError, match="did you mean cosine"):
        get_loss("cosin")
    with pytest.raises(ConfigError, match="already registered"):
        register_loss("mse")(hidden_mse)


def test_hidden_mse_and_cosine_match_manual() -> None:
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(4, 5, 8, generator=g), torch.randn(4, 5, 8, generator=g)
    # metric: absolute difference, tolerance 1e-6
    assert abs(float(hidden_mse(s, t)) - float(((s - t) ** 2).mean())) < 1e-6
    cos = (s * t).sum(-1) / (s.norm(dim=-1) * t.norm(dim=-1))
    assert abs(float(hidden_cosine(s, t)) - float((1 - cos).mean())) < 1e-6
    with pytest.raises(ConfigError, match="hint"):
        hidden_mse(s, t[..., :4])


def test_attention_kl_matches_manual_kl_and_is_zero_on_equal_maps() -> None:
    g = torch.Generator().manual_seed(1)
    a_s = torch.softmax(torch.randn(2, 3, 4, 4, generator=g), -1)
    a_t = torch.softmax(torch.randn(2, 3, 4, 4, generator=g), -1)
    ref = (a_t * (a_t.log() - a_s.log())).sum(-1).mean()
    assert abs(float(attention_kl(a_s, a_t)) - float(ref)) < 1e-6  # abs diff <= 1e-6
    assert float(attention_kl(a_t, a_t)) < 1e-7
    with pytest.raises(ConfigError, match="heads"):
        attention_kl(a_s[:, :2], a_t)


def test_value_relation_kl_allows_other_head_dim() -> None:
    g = torch.Generator().manual_seed(2)
    vs, vt = torch.randn(2, 3, 5, 4, generator=g), torch.randn(2, 3, 5, 16, generator=g)
    rs = torch.softmax(vs @ vs.transpose(-1, -2) / 2.0, -1)  # sqrt(4) = 2
    rt = torch.softmax(vt @ vt.transpose(-1, -2) / 4.0, -1)  # sqrt(16) = 4
    assert torch.allclose(value_relation(vs), rs, atol=1e-6)
    ref = (rt * (rt.log() - rs.log())).sum(-1).mean()
    assert abs(float(value_relation_kl(vs, vt)) - float(ref)) < 1e-5
    with pytest.raises(ConfigError, match="d_head may differ"):
        value_relation_kl(vs, vt[:, :, :4])


def test_fsp_matrix_matches_einsum_and_loss() -> None:
    g = torch.Generator().manual_seed(3)
    f1, f2 = torch.randn(2, 3, 4, 5, generator=g), torch.randn(2, 6, 4, 5, generator=g)
    ref = torch.einsum("bihw,bjhw->bij", f1, f2) / 20
    assert torch.allclose(fsp_matrix(f1, f2), ref, atol=1e-6)
    h1, h2 = torch.randn(2, 3, 4, 5, generator=g), torch.randn(2, 6, 4, 5, generator=g)
    ref_loss = ((fsp_matrix(f1, f2) - fsp_matrix(h1, h2)) ** 2).mean()
    assert abs(float(fsp_loss((f1, f2), (h1, h2))) - float(ref_loss)) < 1e-6
    with pytest.raises(ConfigError, match="same resolution"):
        fsp_matrix(f1, torch.randn(2, 6, 2, 2))


def test_hint_loss_learns_the_projection() -> None:
    """Teacher features are a fixed linear map of the student's: training the 1x1 projection drives the
    hint loss to ~0 (metric: final / initial loss < 1e-3)."""
    torch.manual_seed(0)
    w = torch.randn(8, 4)
    s = torch.randn(16, 4, 3, 3)
    t = torch.einsum("oc,bchw->bohw", w, s)
    hint = HintLoss(4, 8, conv=True)
    opt = torch.optim.Adam(hint.parameters(), lr=0.05)
    first = float(hint(s, t).detach())
    for _ in range(400):
        opt.zero_grad()
        loss = hint(s, t)
        loss.backward()
        opt.step()
    assert float(hint(s, t).detach()) / first < 1e-3
    vec = HintLoss(4, 8, conv=False)
    assert vec(torch.randn(5, 4), torch.randn(5, 8)).dim() == 0
    with pytest.raises(ConfigError, match="conv=False"):
        hint(torch.randn(5, 4), torch.randn(5, 8))


def test_kl_is_kd_loss_with_t_squared() -> None:
    g = torch.Generator().manual_seed(4)
    s, t = torch.randn(6, 10, generator=g), torch.randn(6, 10, generator=g)
    ref = F.kl_div(F.log_softmax(s / 2, -1), F.softmax(t / 2, -1), reduction="batchmean") * 4
    assert math.isclose(float(get_loss("kl")(s, t, 2.0)), float(ref), rel_tol=1e-5)
