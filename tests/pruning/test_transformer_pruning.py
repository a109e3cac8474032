"""Tests of attention-head and FFN-neuron pruning (``pruning/structured/transformer.py``) on tiny random
Hugging Face BERT, GPT-2 and ViT models (no download)."""

from __future__ import annotations

import copy
from collections.abc import Callable

import pytest
import torch
from torch import nn

from torchslim.core.config import Config
from torchslim.core.errors import ConfigError
from torchslim.pruning import PruneError, count_params
from torchslim.pruning.structured.transformer import (
    FFNPrune,
    HeadPrune,
    find_attention,
    find_ffn,
    prune_ffn_,
    prune_heads_,
)

torch.set_num_threads(1)
transformers = pytest.importorskip("transformers")
H, NH, D = 32, 4, 8


def _bert() -> tuple[nn.Module, Callable[[nn.Module], torch.Tensor]]:
    cfg = transformers.BertConfig(hidden_size=H, num_hidden_layers=2, num_attention_heads=NH,
                                  intermediate_size=64, vocab_size=100, max_position_embeddings=32)
    ids = torch.randint(0, 100, (2, 9), generator=torch.Generator().manual_seed(1))
    return transformers.BertModel(cfg).eval(), lambda m: m(input_ids=ids).last_hidden_state


def _gpt2() -> tuple[nn.Module, Callable[[nn.Module], torch.Tensor]]:
    cfg = transformers.GPT2Config(n_embd=H, n_layer=2, n_head=NH, vocab_size=100, n_positions=32,
                                  bos_token_id=0, eos_token_id=0)
    ids = torch.randint(0, 100, (2, 9), generator=torch.Generator().manual_seed(1))
    return transformers.GPT2Model(cfg).eval(), lambda m: m(input_ids=ids).last_hidden_state


def _vit() -> tuple[nn.Module, Callable[[nn.Module], torch.Tensor]]:
    cfg = transformers.ViTConfig(hidden_size=H, num_hidden_layers=2, num_attention_heads=NH, intermediate_size=64,
                                 image_size=16, patch_size=8, num_channels=3)
    px = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    return transformers.ViTModel(cfg).eval(), lambda m: m(pixel_values=px).last_hidden_state


MODELS = {"bert": _bert, "gpt2": _gpt2, "vit": _vit}


def _zero_head(m: nn.Module, layer: int, head: int) -> None:
    """Zero every weight and bias of ``head``: its contribution to the output is then exactly zero."""
    s = find_attention(m)[layer]
    rows = torch.arange(head * D, (head + 1) * D)
    with torch.no_grad():
        if s.kind == "fused":
            ca, cp = m.get_submodule(s.q), m.get_submodule(s.o)
            for j in range(3):
                ca.weight[:, j * H + rows] = 0
                ca.bias[j * H + rows] = 0
            cp.weight[rows] = 0
        else:
            for p in (s.q, s.k, s.v):
                lin = m.get_submodule(p)
                lin.weight[rows] = 0
                lin.bias[rows] = 0
            m.get_submodule(s.o).weight[:, rows] = 0


def _zero_neurons(m: nn.Module, block: int, idx: torch.Tensor) -> None:
    """Zero the neurons' input rows and biases (act(0) = 0 for GELU) and output columns."""
    s = find_ffn(m)[block]
    a, b = m.get_submodule(s.fc_in), m.get_submodule(s.fc_out)
    with torch.no_grad():
        if isinstance(a, nn.Linear):
            a.weight[idx] = 0
            a.bias[idx] = 0  # type: ignore[index]
            b.weight[:, idx] = 0
        else:  # GPT-2 Conv1D, weight [in, out]
            a.weight[:, idx] = 0
            a.bias[idx] = 0
            b.weight[idx] = 0


@pytest.mark.parametrize("name", list(MODELS))
def test_discovery(name: str) -> None:
    m, _ = MODELS[name]()
    att, ffn = find_attention(m), find_ffn(m)
    assert len(att) == 2 and len(ffn) == 2
    assert all(s.num_heads == NH and s.head_dim == D for s in att)
    assert all(s.width == (128 if name == "gpt2" else 64) for s in ffn)


@pytest.mark.parametrize("name", list(MODELS))
def test_pruning_zero_heads_is_exact(name: str) -> None:
    """Metric: output of the model with the zeroed heads removed vs before, allclose atol=rtol=1e-5."""
    torch.manual_seed(0)
    m, run = MODELS[name]()
    _zero_head(m, 0, 1)
    _zero_head(m, 0, 3)
    _zero_head(m, 1, 2)
    ref = run(m)
    r = prune_heads_(m, heads_per_layer=1)  # l1: a zero head of each layer goes first
    p0, p1 = find_attention(m)[0].path, find_attention(m)[1].path
    assert r.removed[p0] in ([1], [3]) and r.removed[p1] == [2]
    other = 4 - r.removed[p0][0]  # the other zero head of layer 0, renumbered after the first removal
    r2 = prune_heads_(m, heads_per_layer={0: [other - (1 if r.removed[p0][0] < other else 0)]})
    assert len(r2.removed[p0]) == 1
    assert [s.num_heads for s in find_attention(m)] == [2, 3]
    torch.testing.assert_close(run(m), ref, atol=1e-5, rtol=1e-5)
    assert r.params_after < r.params_before


@pytest.mark.parametrize("name", list(MODELS))
def test_pruning_zero_neurons_is_exact(name: str) -> None:
    """Metric: output after removing zeroed FFN neurons vs before, allclose atol=rtol=1e-5."""
    torch.manual_seed(0)
    m, run = MODELS[name]()
    widths = [s.width for s in find_ffn(m)]
    for b, w in enumerate(widths):
        _zero_neurons(m, b, torch.arange(1, w, 2))  # half of the neurons
    ref = run(m)
    r = prune_ffn_(m, 0.5)
    assert [s.width for s in find_ffn(m)] == [w // 2 for w in widths]
    torch.testing.assert_close(run(m), ref, atol=1e-5, rtol=1e-5)
    assert r.params_before - r.params_after == sum((w // 2) * (2 * H + 1) for w in widths)


@pytest.mark.parametrize("name", list(MODELS))
def test_shapes_attributes_and_round_to(name: str) -> None:
    m, run = MODELS[name]()
    y0 = run(m)
    before = count_params(m)
    prune_heads_(m, HeadPrune(ratio=0.5, importance="l2"))
    prune_ffn_(m, FFNPrune(ratio=0.7, round_to=8))
    for s in find_attention(m):
        assert s.num_heads == 2
        owner = m.get_submodule(s.owner)
        if hasattr(owner, "all_head_size"):
            assert owner.all_head_size == 2 * D
        if s.kind == "fused":
            assert owner.split_size == 2 * D and m.get_submodule(s.q).weight.shape == (H, 3 * 2 * D)
        else:
            assert m.get_submodule(s.q).out_features == 2 * D and m.get_submodule(s.o).in_features == 2 * D
    assert all(s.width % 8 == 0 for s in find_ffn(m))
    y1 = run(m)
    assert y1.shape == y0.shape and torch.isfinite(y1).all()
    assert count_params(m) < 0.8 * before


def test_l1_beats_random_on_low_norm_heads() -> None:
    """Qualitative claim of magnitude head pruning: when some heads are weak (weights scaled x0.05),
    l1 removes them and the output barely moves; random choice removes strong heads too.
    Metric: relative output error ||y' - y|| / ||y||; l1 < 0.25 * mean over 5 random seeds."""
    torch.manual_seed(0)
    base, run = _bert()
    for layer in range(2):
        s = find_attention(base)[layer]
        rows = torch.arange(0, 2 * D)  # heads 0 and 1 weak
        with torch.no_grad():
            for p in (s.q, s.k, s.v):
                base.get_submodule(p).weight[rows] *= 0.05
                base.get_submodule(p).bias[rows] *= 0.05
            base.get_submodule(s.o).weight[:, rows] *= 0.05
    with torch.no_grad():
        ref = run(base)

    def err(importance: str, seed: int = 0) -> float:
        m = copy.deepcopy(base)
        prune_heads_(m, 0.5, importance=importance, seed=seed)  # type: ignore[arg-type]
        with torch.no_grad():
            return float((run(m) - ref).norm() / ref.norm())

    e_l1 = err("l1")
    e_rand = sum(err("random", s) for s in range(5)) / 5
    assert e_l1 < 0.25 * e_rand, (e_l1, e_rand)


def test_configs_and_errors() -> None:
    c = Config.from_dict({"type": "head_prune", "ratio": 0.25})
    assert isinstance(c, HeadPrune) and c.to_dict()["type"] == "head_prune"
    f = Config.from_dict({"type": "ffn_prune", "ratio": 0.5, "round_to": 16})
    assert isinstance(f, FFNPrune) and f.round_to == 16
    with pytest.raises(ConfigError):
        FFNPrune(ratio=1.5)
    with pytest.raises(ConfigError):
        HeadPrune(importance="taylor")  # type: ignore[arg-type]
    m, _ = _bert()
    with pytest.raises(PruneError, match="layer index 7 out of range"):
        prune_heads_(m, heads_per_layer={7: [0]})
    with pytest.raises(PruneError, match="invalid head indices"):
        prune_heads_(m, heads_per_layer={0: [4]})
    with pytest.raises(PruneError, match="fewer than min_heads"):
        prune_heads_(m, heads_per_layer={0: [0, 1, 2, 3]})
    assert find_attention(m)[0].num_heads == NH  # nothing modified by a failed call
    with pytest.raises(PruneError, match="no attention layer"):
        prune_heads_(nn.Sequential(nn.Linear(2, 2)), 0.5)
    with pytest.raises(PruneError, match="no FFN block"):
        prune_ffn_(nn.Sequential(nn.Linear(2, 2)), 0.5)
