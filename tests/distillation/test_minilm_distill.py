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


def test_embedding_objective_matches_hand_cosine() -> None:
    # reference: explicit masked mean and cosine per sentence; metric abs error, tolerance 1e-6
    from torchslim.distillation.methods.minilm import embedding_cosine_loss

    g = torch.Generator().manual_seed(0)
    th, sh = torch.randn(2, 4, 6, generator=g), torch.randn(2, 4, 6, generator=g)
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])
    ref = 0.0
    for b in range(2):
        n = int(mask[b].sum())
        t, s = th[b, :n].mean(0), sh[b, :n].mean(0)
        ref += 1 - float(t @ s / (t.norm() * s.norm()))
    assert abs(float(embedding_cosine_loss(th, sh, mask)) - ref / 2) < 1e-6
    assert abs(float(embedding_cosine_loss(th, th, mask))) < 1e-6
    with pytest.raises(ConfigError, match="equal widths"):
        embedding_cosine_loss(th, sh[..., :3], mask)


def _topic_texts(n: int, seed: int) -> tuple[list[str], list[int]]:
    """Two synthetic topics: label 1 iff the text holds one of the 'b' words."""
    a, b = "flu vaccine cold fever cough".split(), "heart diet sleep brain study".split()
    g = torch.Generator().manual_seed(seed)
    texts, labels = [], []
    for i in range(n):
        y = i % 2
        pool = b if y else a
        texts.append(" ".join(pool[int(j)] for j in torch.randint(0, 5, (6,), generator=g)))
        labels.append(y)
    return texts, labels


def test_distill_with_assistant_chains_two_minilm_stages(tmp_path) -> None:  # type: ignore[no-untyped-def]
    # mechanics: the assistant has the teacher's depth and the student's width (paper 3.3), and the two-stage
    # result equals teacher->assistant then assistant->student run by hand (metric: exact weight equality)
    import copy

    from torchslim.distillation.methods.minilm import distill_with_assistant

    texts, _ = _topic_texts(32, 0)
    teacher = MiniLMEncoder(tiny_bert(hidden=16, heads=4, layers=4, seed=0), WordTokenizer())
    student = MiniLMEncoder(tiny_bert(hidden=8, heads=4, layers=1, seed=5), WordTokenizer())
    cfg = MiniLMDistill(
        max_length=16,
        train=TrainConfig(epochs=2, batch_size=8, lr=1e-2, optimizer="adamw", weight_decay=0.0),
    )
    s_ref, start = copy.deepcopy(student), copy.deepcopy(student)
    res = distill_with_assistant(student, teacher, texts, cfg, checkpoint_dir=tmp_path, progress=False)
    a_cfg = res.assistant.model.config
    assert (a_cfg.num_hidden_layers, a_cfg.hidden_size, a_cfg.num_attention_heads) == (4, 8, 4)
    assert res.assistant_result.steps == res.student_result.steps == 8
    # by hand: a fresh assistant (same seeded build) distilled from the teacher, then the student from it
    from torchslim.distillation.student import build_assistant

    ta = build_assistant(teacher, start)
    minilm_distill(ta, teacher, texts, cfg, progress=False)
    minilm_distill(s_ref, ta.eval(), texts, cfg, progress=False)
    assert all(torch.equal(a, b) for a, b in zip(ta.parameters(), res.assistant.parameters(), strict=True))
    assert all(torch.equal(a, b) for a, b in zip(s_ref.parameters(), student.parameters(), strict=True))
    # the student learned from the assistant: its MiniLM loss against it fell
    assert _eval_loss(student.eval(), res.assistant, texts) < _eval_loss(start.eval(), res.assistant, texts)
    # resuming finished stages changes nothing
    res2 = distill_with_assistant(
        student, teacher, texts, cfg, assistant=res.assistant, checkpoint_dir=tmp_path, resume=True, progress=False
    )
    assert res2.student_result.steps == 8
    assert all(torch.equal(a, b) for a, b in zip(s_ref.parameters(), student.parameters(), strict=True))


def test_distill_with_assistant_bad_inputs_fail_before_training() -> None:
    from torchslim.distillation.methods.minilm import distill_with_assistant

    teacher = MiniLMEncoder(tiny_bert(hidden=16, heads=4, layers=4), WordTokenizer())
    student = MiniLMEncoder(tiny_bert(hidden=8, heads=2, layers=1), WordTokenizer())
    before = [p.clone() for p in student.parameters()]
    with pytest.raises(ConfigError, match="teacher has 4 heads, the student has 2"):
        distill_with_assistant(student, teacher, ["a b c"] * 4, progress=False)
    with pytest.raises(ConfigError, match="objective='minilm'"):
        distill_with_assistant(student, teacher, ["a b"], MiniLMDistill(objective="hidden_mse"), progress=False)
    assert all(torch.equal(a, b) for a, b in zip(before, student.parameters(), strict=True))


def test_fine_tune_classifier_learns_a_separable_task() -> None:
    # metric: held-out accuracy (chance 0.5), checked against a per-text argmax by hand; expectation >= 0.95
    from torchslim.distillation.methods.minilm import (
        SentenceClassifier,
        classifier_accuracy,
        fine_tune_classifier,
    )

    tr_x, tr_y = _topic_texts(64, 1)
    te_x, te_y = _topic_texts(40, 2)
    enc = MiniLMEncoder(tiny_bert(hidden=16, heads=4, layers=1, seed=0), WordTokenizer())
    cfg = TrainConfig(epochs=8, batch_size=16, lr=1e-2, optimizer="adamw", weight_decay=0.0)
    clf, result = fine_tune_classifier(enc, tr_x, tr_y, 2, cfg, max_length=16, progress=False)
    assert isinstance(clf, SentenceClassifier) and clf.encoder is enc and result.steps == 8 * 4
    acc = classifier_accuracy(clf, te_x, te_y, batch_size=7, max_length=16)
    # reference accuracy by hand: argmax of the logits of each text alone
    with torch.no_grad():
        hand = sum(
            int(clf(**{k: v for k, v in WordTokenizer()([t]).items()}).argmax()) == y
            for t, y in zip(te_x, te_y, strict=True)
        ) / len(te_x)
    assert abs(acc - hand) < 1e-9
    assert acc >= 0.95, acc
    with pytest.raises(ConfigError, match="labels must lie in 0..1"):
        fine_tune_classifier(enc, ["a"], [2], 2, progress=False)
    with pytest.raises(ConfigError, match="2 texts but 1 labels"):
        fine_tune_classifier(enc, ["a", "b"], [0], 2, progress=False)
    with pytest.raises(ConfigError, match="num_classes must be >= 2"):
        SentenceClassifier(enc, 1)


def test_head_lr_mult_keeps_initial_logits_and_scales_adam_steps() -> None:
    # reference: a plain head (mult 1) with the same seed; metric max abs diff of logits, tolerance 1e-5;
    # one AdamW step (no weight decay) moves the scaled head's logits ~mult times further (ratio within 10%)
    from torchslim.distillation.methods.minilm import SentenceClassifier

    enc = MiniLMEncoder(tiny_bert(hidden=16, heads=4, layers=1, seed=0), WordTokenizer())
    for p in enc.parameters():
        p.requires_grad_(False)
    inp = batch()
    moves = []
    for mult in (1.0, 10.0):
        torch.manual_seed(0)
        clf = SentenceClassifier(enc, 3, dropout=0.0, head_lr_mult=mult)
        before = clf(**inp).detach()
        if mult == 1.0:
            ref = before
        assert (before - ref).abs().max() < 1e-5
        opt = torch.optim.AdamW(clf.head.parameters(), lr=1e-3, weight_decay=0.0)
        torch.nn.functional.cross_entropy(clf(**inp), torch.tensor([0, 2])).backward()
        opt.step()
        moves.append(float((clf(**inp).detach() - before).abs().mean()))
    assert abs(moves[1] / moves[0] - 10.0) < 1.0, moves
    with pytest.raises(ConfigError, match="head_lr_mult must be > 0"):
        SentenceClassifier(enc, 3, head_lr_mult=0.0)
