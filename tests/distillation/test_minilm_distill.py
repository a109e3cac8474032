"""MiniLM distillation mechanics (arXiv 2002.10957) on tiny random BERTs (no download)."""

from __future__ import annotations

import math

import pytest
import torch
from transformers import BertConfig, BertModel

from torchslim.core.errors import ConfigError, UnsupportedModelError
from torchslim.distillation.methods.minilm import (
    MiniLMDistill,
    attention_relation,
    capture_last_attention,
    check_heads,
    hidden_mse_loss,
    minilm_distill,
    minilm_losses,
)
from torchslim.train.trainer import TrainConfig
from torchslim.zoo.minilm import MiniLMEncoder

VOCAB = 50


def tiny_bert(hidden: int = 16, heads: int = 4, layers: int = 2, seed: int = 0) -> BertModel:
    torch.manual_seed(seed)
    cfg = BertConfig(
        vocab_size=VOCAB,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=2 * hidden,
        max_position_embeddings=32,
        initializer_range=0.5,  # peaked attention (the default 0.02 makes every head nearly uniform)
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    cfg._attn_implementation = "eager"
    return BertModel(cfg).eval()


class WordTokenizer:
    """A stand-in for a HF tokenizer: hashes words to ids, pads to the longest text."""

    def __call__(
        self,
        texts: list[str],
        padding: bool = True,
        truncation: bool = True,
        max_length: int = 16,
        return_tensors: str = "pt",
    ) -> dict[str, torch.Tensor]:
        rows = [[1 + (sum(map(ord, w)) % (VOCAB - 1)) for w in t.split()][:max_length] for t in texts]
        n = max(len(r) for r in rows)
        ids = torch.zeros(len(rows), n, dtype=torch.long)
        mask = torch.zeros(len(rows), n, dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, : len(r)] = torch.tensor(r)
            mask[i, : len(r)] = 1
        return {"input_ids": ids, "attention_mask": mask}


def batch() -> dict[str, torch.Tensor]:
    ids = torch.tensor([[3, 7, 9, 11, 2, 5], [4, 8, 6, 0, 0, 0]])
    mask = (ids != 0).long()
    return {"input_ids": ids, "attention_mask": mask}


def qkv(model: BertModel, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    with torch.no_grad(), capture_last_attention(model) as store:
        model(**inputs)
    return dict(store)


def test_losses_zero_for_identical_models() -> None:
    # metric: |L_AT|, |L_VR|; tolerance 1e-6 (KL of a distribution with itself)
    t, s = tiny_bert(seed=0), tiny_bert(seed=0)
    inp = batch()
    at, vr = minilm_losses(qkv(t, inp), qkv(s, inp), inp["attention_mask"])
    assert abs(float(at)) < 1e-6 and abs(float(vr)) < 1e-6
    other = tiny_bert(seed=1)
    at2, vr2 = minilm_losses(qkv(t, inp), qkv(other, inp), inp["attention_mask"])
    assert float(at2) > 1e-3 and float(vr2) > 1e-3  # and not zero for different models


def _hand_loss(t: BertModel, s: BertModel, inp: dict[str, torch.Tensor]) -> tuple[float, float]:
    """Loop-by-loop reference from the paper's formulas, from each model's last-layer input."""

    def proj(model: BertModel) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
        with torch.no_grad():
            h = model(**inp, output_hidden_states=True).hidden_states[-2]  # input of the last layer
            attn = model.encoder.layer[-1].attention.self
            heads = model.config.num_attention_heads
            return attn.query(h), attn.key(h), attn.value(h), heads

    tq, tk, tv, heads = proj(t)
    sq, sk, sv, _ = proj(s)
    mask = inp["attention_mask"]
    at_sum = vr_sum = 0.0
    count = 0
    for b in range(mask.shape[0]):
        valid = [j for j in range(mask.shape[1]) if mask[b, j]]
        for a in range(heads):

            def rows(
                x: torch.Tensor, y: torch.Tensor, a: int = a, b: int = b, valid: list[int] = valid
            ) -> list[list[float]]:
                d = x.shape[-1] // heads
                xa, ya = x[b, :, a * d : (a + 1) * d].double(), y[b, :, a * d : (a + 1) * d].double()
                out = []
                for i in valid:
                    scores = [float(xa[i] @ ya[j]) / math.sqrt(d) for j in valid]
                    m = max(scores)
                    z = sum(math.exp(v - m) for v in scores)
                    out.append([math.exp(v - m) / z for v in scores])
                return out

            for name, (pt, ps) in {
                "at": (rows(tq, tk), rows(sq, sk)),
                "vr": (rows(tv, tv), rows(sv, sv)),
            }.items():
                for rt, rs in zip(pt, ps, strict=True):
                    kl = sum(p * (math.log(p) - math.log(q)) for p, q in zip(rt, rs, strict=True))
                    if name == "at":
                        at_sum += kl
                    else:
                        vr_sum += kl
            count += len(valid)
    return at_sum / count, vr_sum / count


def test_losses_match_hand_computation_with_padding() -> None:
    # reference: explicit per-head, per-query KL loops in float64; metric abs error, tolerance 1e-5
    # the student is narrower (hidden 8 vs 16, d_k 2 vs 4) and shallower: only the head count matches
    t, s = tiny_bert(hidden=16, heads=4, layers=2, seed=0), tiny_bert(hidden=8, heads=4, layers=1, seed=3)
    inp = batch()
    at, vr = minilm_losses(qkv(t, inp), qkv(s, inp), inp["attention_mask"])
    ref_at, ref_vr = _hand_loss(t, s, inp)
    assert ref_at > 1e-3 and ref_vr > 1e-3
    assert abs(float(at) - ref_at) < 1e-5
    assert abs(float(vr) - ref_vr) < 1e-5


def test_attention_relation_equals_eager_output_attentions() -> None:
    # reference: transformers' eager attention probabilities; metric max abs diff, tolerance 1e-6
    t = tiny_bert()
    inp = batch()
    with torch.no_grad(), capture_last_attention(t) as store:
        out = t(**inp, output_attentions=True)
    ours = attention_relation(store["q"], store["k"], inp["attention_mask"]).exp()
    assert (ours - out.attentions[-1]).abs().max() < 1e-6


def test_head_mismatch_fails_before_training() -> None:
    t = MiniLMEncoder(tiny_bert(hidden=16, heads=4), WordTokenizer())
    s = MiniLMEncoder(tiny_bert(hidden=16, heads=2, layers=1), WordTokenizer())
    before = [p.clone() for p in s.parameters()]
    with pytest.raises(ConfigError, match=r"teacher has 4 heads, the student has 2"):
        minilm_distill(s, t, ["a b c"] * 8, progress=False)
    with pytest.raises(ConfigError, match="4.*2"):
        check_heads(t, s)
    assert all(torch.equal(a, b) for a, b in zip(before, s.parameters(), strict=True))  # nothing trained


def test_bad_inputs_have_clear_errors() -> None:
    with pytest.raises(UnsupportedModelError, match="BertModel"):
        check_heads(torch.nn.Linear(2, 2), tiny_bert())
    with pytest.raises(ConfigError, match="equal widths"):
        hidden_mse_loss(torch.zeros(1, 3, 8), torch.zeros(1, 3, 4))
    t = MiniLMEncoder(tiny_bert(hidden=16, heads=4), WordTokenizer())
    s = MiniLMEncoder(tiny_bert(hidden=8, heads=4, layers=1), WordTokenizer())
    with pytest.raises(ConfigError, match="hidden_size is 16 and the student's 8"):
        minilm_distill(s, t, ["a b"], MiniLMDistill(objective="hidden_mse"), progress=False)
    with pytest.raises(ConfigError, match="no non-empty text"):
        minilm_distill(s, t, ["", "  "], progress=False)


def _eval_loss(s: MiniLMEncoder, t: MiniLMEncoder, texts: list[str]) -> float:
    inp = WordTokenizer()(texts)
    at, vr = minilm_losses(qkv(t.model, inp), qkv(s.model, inp), inp["attention_mask"])
    return float(at + vr)


def test_distillation_reduces_minilm_loss_of_narrow_student() -> None:
    # metric: L_AT + L_VR on held-out texts; expectation: at least halved by 150 steps of MiniLM distillation
    words = "flu vaccine health diet sleep heart study cancer risk doctor brain child".split()
    g = torch.Generator().manual_seed(0)
    texts = [
        " ".join(words[int(i)] for i in torch.randint(0, len(words), (8,), generator=g)) for _ in range(160)
    ]
    t = MiniLMEncoder(tiny_bert(hidden=16, heads=4, layers=2, seed=0), WordTokenizer())
    s = MiniLMEncoder(tiny_bert(hidden=8, heads=4, layers=1, seed=5), WordTokenizer())
    before = _eval_loss(s, t, texts[:32])
    cfg = MiniLMDistill(
        max_length=16,
        train=TrainConfig(
            epochs=15, batch_size=16, lr=1e-2, optimizer="adamw", weight_decay=0.0, schedule="cosine"
        ),
    )
    result = minilm_distill(s, t, texts[32:], cfg, progress=False)
    after = _eval_loss(s.eval(), t, texts[:32])
    assert result.steps == 15 * 8
    assert after < 0.5 * before, (before, after)
