"""TwinBERT mechanics (arXiv 2002.06275) on tiny random BERTs with a word-hash tokenizer (no download)."""

from __future__ import annotations

import math
import zlib
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from transformers import BertConfig, BertModel

from torchslim.core.errors import ConfigError
from torchslim.distillation.methods.twinbert import (
    CosineCrossing,
    CrossEncoderTeacher,
    DocumentCache,
    QuantizedDocumentCache,
    ResidualCrossing,
    Tower,
    TriLetterTokenizer,
    TwinBERT,
    TwinDistill,
    WeightedPooling,
    WordTokenizer,
    calibrate_crossing,
    finetune_teacher,
    mine_hard_negatives,
    order_relevant,
    order_task,
    order_task_vocab,
    train_teacher_head,
    twin_from_tiny_bert,
    twinbert_distill,
    twinbert_loss,
)
from torchslim.distillation.methods.twinbert import (
    tiny_bert as lib_tiny_bert,
)
from torchslim.train.trainer import TrainConfig

VOCAB = 60


def tiny_bert(hidden: int = 16, layers: int = 1, seed: int = 0) -> BertModel:
    torch.manual_seed(seed)
    cfg = BertConfig(
        vocab_size=VOCAB,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=2,
        intermediate_size=2 * hidden,
        max_position_embeddings=64,
        type_vocab_size=2,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    return BertModel(cfg, add_pooling_layer=False).eval()


class HashTokenizer:
    """A stand-in for a HF tokenizer: words hashed to ids 3.., [CLS]=1, [SEP]=2; pairs get segment ids."""

    @staticmethod
    def _ids(text: str) -> list[int]:
        return [3 + (sum(map(ord, w)) % (VOCAB - 3)) for w in text.split()]

    def __call__(
        self,
        texts: list[str],
        text_pair: list[str] | None = None,
        padding: bool = True,
        truncation: Any = True,
        max_length: int = 16,
        return_tensors: str = "pt",
    ) -> dict[str, torch.Tensor]:
        rows, types = [], []
        for i, t in enumerate(texts):
            a = [1, *self._ids(t), 2]
            b = [*self._ids(text_pair[i]), 2] if text_pair is not None else []
            row = (a + b)[:max_length]
            rows.append(row)
            types.append(([0] * len(a) + [1] * len(b))[:max_length])
        n = max(len(r) for r in rows)
        ids = torch.zeros(len(rows), n, dtype=torch.long)
        mask = torch.zeros(len(rows), n, dtype=torch.long)
        tt = torch.zeros(len(rows), n, dtype=torch.long)
        for i, (r, ty) in enumerate(zip(rows, types, strict=True)):
            ids[i, : len(r)] = torch.tensor(r)
            mask[i, : len(r)] = 1
            tt[i, : len(r)] = torch.tensor(ty)
        return {"input_ids": ids, "attention_mask": mask, "token_type_ids": tt}


TOK = HashTokenizer()
QUERIES = ["flu vaccine", "stock market falls", "new rover lands on mars", "election results"]
DOCS = [
    "the flu vaccine is in short supply this winter",
    "shares dropped sharply as the market fell",
    "nasa rover touched down on the red planet",
    "votes were counted and the winner declared",
    "a recipe for lemon cake with icing",
]


def twin(crossing: str = "cosine", shared: bool = False) -> TwinBERT:
    q = Tower(tiny_bert(seed=0), TOK, pooling="weighted")
    d = None if shared else Tower(tiny_bert(seed=1), TOK, pooling="weighted")
    model = TwinBERT(q, d, crossing, query_max_length=16, doc_max_length=16)  # type: ignore[arg-type]
    if isinstance(model.crossing, ResidualCrossing):  # a non-trivial residual block (fc2 starts at zero)
        torch.manual_seed(3)
        torch.nn.init.normal_(model.crossing.fc2.weight, std=0.3)
    return model.eval()


def test_weighted_pooling_matches_hand_softmax() -> None:
    # metric: max abs difference to alpha = softmax(w.h + b) over unpadded tokens; tolerance 1e-6
    torch.manual_seed(0)
    pool = WeightedPooling(4)
    torch.nn.init.normal_(pool.score.weight)
    torch.nn.init.normal_(pool.score.bias)
    h = torch.randn(2, 3, 4)
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    pool.requires_grad_(False)
    out = pool(h, mask)
    for b in range(2):
        n = int(mask[b].sum())
        s = [float(pool.score.weight[0] @ h[b, t] + pool.score.bias[0]) for t in range(n)]
        z = sum(math.exp(v) for v in s)
        ref = torch.stack([math.exp(s[t]) / z * h[b, t] for t in range(n)]).sum(0)
        assert torch.allclose(out[b], ref, atol=1e-6)
    # at initialisation (w = b = 0) it is the masked mean: exact to 1e-6
    assert torch.allclose(WeightedPooling(4)(h, mask)[0], h[0, :2].mean(0), atol=1e-6)


def test_cosine_score_is_logistic_regression_on_cosine() -> None:
    # metric: |score - (w * cos(e_q, e_d) + b)| from the two tower outputs; tolerance 1e-5
    model = twin("cosine")
    with torch.no_grad():
        model.crossing.out.weight.fill_(3.0)
        model.crossing.out.bias.fill_(-0.5)
        q_in, d_in = model.query_tower.tokenize(QUERIES), model.doc_tower.tokenize(DOCS[:4])
        eq, ed = model.query_tower(**q_in), model.doc_tower(**d_in)
        got = model(q_in, d_in)
    for i in range(4):
        cos = float(eq[i] @ ed[i]) / (float(eq[i].norm()) * float(ed[i].norm()))
        assert abs(float(got[i]) - (3.0 * cos - 0.5)) < 1e-5


def test_residual_score_is_documented_function() -> None:
    # metric: |score - (v . (x + W2 relu(W1 x + b1) + b2) + c)|, x = max(e_q, e_d); tolerance 1e-5
    model = twin("residual")
    c = model.crossing
    with torch.no_grad():
        q_in, d_in = model.query_tower.tokenize(QUERIES), model.doc_tower.tokenize(DOCS[:4])
        eq, ed = model.query_tower(**q_in), model.doc_tower(**d_in)
        got = model(q_in, d_in)
        for i in range(4):
            x = torch.tensor([max(float(a), float(b)) for a, b in zip(eq[i], ed[i], strict=True)])
            y = x + c.fc2.weight @ torch.relu(c.fc1.weight @ x + c.fc1.bias) + c.fc2.bias
            ref = float(c.out.weight[0] @ y + c.out.bias[0])
            assert abs(float(got[i]) - ref) < 1e-5


@pytest.mark.parametrize("crossing", ["cosine", "residual"])
def test_cache_scores_equal_recomputing_and_never_reencode(crossing: str) -> None:
    # metric: cached scores vs recomputed document embeddings: exact (torch.equal); vs the paired forward
    # path (different batching) max abs diff <= 1e-5
    model = twin(crossing)
    cache = model.encode_documents(DOCS, batch_size=2)
    calls = {"doc": 0}
    hook = model.doc_tower.register_forward_hook(lambda *_: calls.__setitem__("doc", calls["doc"] + 1))
    try:
        cached = model.score(QUERIES, cache)
    finally:
        hook.remove()
    assert calls["doc"] == 0  # the document tower did not run
    assert cached.shape == (len(QUERIES), len(DOCS))
    assert torch.equal(cached, model.score_texts(QUERIES, DOCS, batch_size=2))
    with torch.no_grad():
        for qi, q in enumerate(QUERIES):
            paired = model.pair_logits([q] * len(DOCS), DOCS)
            assert torch.allclose(cached[qi], paired, atol=1e-5)
    # the cache does not depend on the queries: scoring one query alone gives its row (the query batch's
    # padding differs, so max abs diff <= 1e-5)
    assert torch.allclose(model.score(QUERIES[1:2], cache)[0], cached[1], atol=1e-5)


def test_cache_save_load_and_subset(tmp_path: Any) -> None:
    # metric: exact equality of embeddings and ids after a save/load round trip
    model = twin("cosine")
    cache = model.encode_documents(DOCS, ids=list("abcde"))
    cache.save(tmp_path / "docs.pt")
    back = DocumentCache.load(tmp_path / "docs.pt")
    assert torch.equal(back.embeddings, cache.embeddings) and back.ids == list("abcde")
    sub = cache.subset([4, 0])
    assert sub.ids == ["e", "a"] and torch.equal(sub.embeddings[1], cache.embeddings[0])


def test_shared_tower_is_one_module() -> None:
    model = twin("cosine", shared=True)
    assert model.doc_tower is model.query_tower and model.shared
    n_shared = sum(p.numel() for p in model.parameters())
    n_sep = sum(p.numel() for p in twin("cosine", shared=False).parameters())
    tower = sum(p.numel() for p in model.query_tower.parameters())
    assert n_sep - n_shared == tower  # separate towers hold one more tower's weights


def test_mismatched_tower_widths_fail_naming_both() -> None:
    q = Tower(tiny_bert(hidden=16), TOK)
    d = Tower(tiny_bert(hidden=8), TOK)
    with pytest.raises(ConfigError, match=r"query tower embeds to 16 dims but the document tower to 8"):
        TwinBERT(q, d)
    with pytest.raises(ConfigError, match=r"query embedding has 16 dims but the document embedding has 8"):
        CosineCrossing()(torch.ones(2, 16), torch.ones(2, 8))
    model = twin("cosine")
    bad = DocumentCache(torch.ones(3, 8))
    with pytest.raises(ConfigError, match=r"query tower embeds to 16 dims but the cached documents have 8"):
        model.score(QUERIES, bad)


def test_distillation_loss_equals_hand_computation() -> None:
    # metric: |loss - hand formula|; tolerance 1e-6
    s = torch.tensor([0.5, -1.0, 2.0])
    t = torch.tensor([1.5, -0.5, 0.0])
    for temp in (1.0, 2.0):
        ref = 0.0
        for si, ti in zip(s.tolist(), t.tolist(), strict=True):
            p = 1 / (1 + math.exp(-ti / temp))
            q = 1 / (1 + math.exp(-si / temp))
            ref += -(p * math.log(q) + (1 - p) * math.log(1 - q))
        assert abs(float(twinbert_loss(s, t, "bce", temp)) - ref / 3) < 1e-6
    mse = sum((a - b) ** 2 for a, b in zip(s.tolist(), t.tolist(), strict=True)) / 3
    assert abs(float(twinbert_loss(s, t, "mse")) - mse) < 1e-6
    # minimised where the student matches the teacher: gradient zero there (tolerance 1e-7)
    x = t.clone().requires_grad_(True)
    twinbert_loss(x, t, "bce").backward()
    assert x.grad is not None and float(x.grad.abs().max()) < 1e-7
    with pytest.raises(ConfigError, match=r"student logits \(3,\) and teacher logits \(2,\)"):
        twinbert_loss(s, t[:2])


def test_calibration_is_least_squares_fit_for_cosine() -> None:
    # metric: fitted (w, b) vs numpy-free closed form of simple regression (ridge 0); tolerance 1e-4
    model = twin("cosine")
    with torch.no_grad():
        cos = F.cosine_similarity(
            model.query_tower.embed(QUERIES), model.doc_tower.embed(DOCS[:4]), dim=-1
        ).double()
    target = 2.0 * cos - 1.0 + torch.tensor([0.01, -0.02, 0.03, 0.0], dtype=torch.float64)
    calibrate_crossing(model, QUERIES, DOCS[:4], target, ridge=0.0)
    cx, ct = cos - cos.mean(), target - target.mean()
    w = float((cx * ct).sum() / (cx * cx).sum())
    b = float(target.mean() - w * cos.mean())
    got_w, got_b = float(model.crossing.out.weight.detach()), float(model.crossing.out.bias.detach())
    assert abs(got_w - w) < 1e-4 and abs(got_b - b) < 1e-4


def test_distill_moves_student_towards_teacher_scores() -> None:
    # metric: mean BCE vs teacher soft labels before/after 40 steps; must drop by >= 20%
    torch.manual_seed(0)
    teacher = CrossEncoderTeacher(tiny_bert(seed=5), hidden=16, max_length=32, tokenizer=TOK)
    qs = [QUERIES[i % 4] for i in range(20)]
    ds = [DOCS[(i * 3) % 5] for i in range(20)]
    labels = [float(i % 4 == (i * 3) % 5) for i in range(20)]
    train_teacher_head(
        teacher, qs, ds, labels, TrainConfig(epochs=20, batch_size=10, lr=1e-2, optimizer="adamw")
    )
    t_logits = teacher.score_pairs(qs, ds)
    model = twin("cosine").train()
    cfg = TwinDistill(
        calibrate=False,
        train=TrainConfig(epochs=8, batch_size=5, lr=3e-3, optimizer="adamw", schedule="constant", seed=0),
    )

    def current() -> float:
        with torch.no_grad():
            model.eval()
            return float(twinbert_loss(model.pair_logits(qs, ds), t_logits))

    before = current()
    result = twinbert_distill(model, teacher, qs, ds, cfg, progress=False)
    after = current()
    assert result.steps == 32
    assert after < 0.8 * before, (before, after)


def test_teacher_is_a_joint_encoder_and_inputs_are_checked() -> None:
    # the teacher's score of (q, d) depends on d through the joint pass; bad inputs fail clearly
    teacher = CrossEncoderTeacher(tiny_bert(seed=5), hidden=8, max_length=32, tokenizer=TOK)
    a = teacher.score_pairs(QUERIES[:2], DOCS[:2])
    b = teacher.score_pairs(QUERIES[:2], DOCS[2:4])
    assert a.shape == (2,) and not torch.allclose(a, b)
    with pytest.raises(ConfigError, match="2 queries but 3 documents"):
        teacher.score_pairs(QUERIES[:2], DOCS[:3])
    with pytest.raises(ConfigError, match="labels must lie in"):
        train_teacher_head(teacher, QUERIES[:2], DOCS[:2], [0.0, 2.0])
    with pytest.raises(ConfigError, match="as many queries as documents"):
        twinbert_distill(twin(), teacher, QUERIES, DOCS, progress=False)


def test_mine_hard_negatives_matches_brute_force() -> None:
    # metric: exact index equality with a Python loop over cosine similarities (self excluded)
    g = torch.Generator().manual_seed(0)
    q, d = torch.randn(6, 5, generator=g), torch.randn(9, 5, generator=g)
    got = mine_hard_negatives(q, d, k=3)
    for i in range(6):
        sims = [(float(F.cosine_similarity(q[i], d[j], dim=0)), j) for j in range(9) if j != i]
        want = [j for _, j in sorted(sims, reverse=True)[:3]]
        assert got[i].tolist() == want
    assert 0 in mine_hard_negatives(d[:1] * 2, d, k=1, exclude_self=False)[0].tolist()
    with pytest.raises(ConfigError, match="k must be in 1..8"):
        mine_hard_negatives(q, d, k=9)


def test_finetune_teacher_trains_top_layers_only_and_fits_labels() -> None:
    # metric: BCE on the training pairs must drop by >= 30%; frozen parameters bit-identical
    teacher = CrossEncoderTeacher(tiny_bert(layers=2, seed=5), hidden=16, max_length=32, tokenizer=TOK)
    qs = [QUERIES[i % 4] for i in range(16)]
    ds = [DOCS[(i * 3) % 5] for i in range(16)]
    labels = torch.tensor([float(i % 4 == (i * 3) % 5) for i in range(16)])
    before = {k: v.detach().clone() for k, v in teacher.state_dict().items()}

    def loss() -> float:
        return float(F.binary_cross_entropy_with_logits(teacher.score_pairs(qs, ds), labels))

    start = loss()
    cfg = TrainConfig(epochs=15, batch_size=8, lr=1e-2, optimizer="adamw", schedule="constant", seed=0)
    result = finetune_teacher(teacher, qs, ds, labels, cfg, train_layers=1)
    assert result.steps == 30
    assert loss() < 0.7 * start, (start, loss())
    after = teacher.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert any(k.startswith("bert.encoder.layer.1.") for k in changed)
    assert any(k.startswith("head.") for k in changed)
    assert not any(k.startswith(("bert.encoder.layer.0.", "bert.embeddings.")) for k in changed)
    assert all(p.requires_grad for p in teacher.parameters())  # flags restored
    assert not teacher.training
    with pytest.raises(ConfigError, match="train_layers must be in 1..2"):
        finetune_teacher(teacher, qs, ds, labels, cfg, train_layers=3)
    with pytest.raises(ConfigError, match="16 queries, 16 documents and 2 labels"):
        finetune_teacher(teacher, qs, ds, [0.0, 1.0])


def test_bi_encoder_skip_adds_separate_pass_cosine_term() -> None:
    # metric: max abs difference to a hand computation (separate passes, mean pooling, cosine), tol 1e-5;
    # the cosine term is fitted by logistic regression: its BCE gradient is ~0 (tol 1e-3)
    bert = tiny_bert(seed=5)
    teacher = CrossEncoderTeacher(bert, hidden=8, max_length=32, tokenizer=TOK, bi_encoder_skip=True)
    plain = CrossEncoderTeacher(bert, hidden=8, max_length=32, tokenizer=TOK)
    plain.head.load_state_dict(
        {k: v for k, v in teacher.head.state_dict().items() if k.startswith("mlp.")}, strict=False
    )
    got = teacher.score_pairs(QUERIES[:3], DOCS[:3])
    skip = teacher.head.skip
    assert skip is not None
    with torch.no_grad():

        def emb(texts: list[str]) -> torch.Tensor:
            x = TOK(texts, max_length=32)
            h = bert(input_ids=x["input_ids"], attention_mask=x["attention_mask"])[0]
            m = x["attention_mask"].unsqueeze(-1).float()
            return (h * m).sum(1) / m.sum(1)

        cos = F.cosine_similarity(emb(QUERIES[:3]), emb(DOCS[:3]), dim=-1)
        want = (
            plain.score_pairs(QUERIES[:3], DOCS[:3])
            + skip.weight[0, 0] * cos
            + skip.bias[0]
        )
    assert torch.allclose(got, want, atol=1e-5)
    qs = [QUERIES[i % 4] for i in range(12)]
    ds = [DOCS[(i * 3) % 5] for i in range(12)]
    labels = torch.tensor([float(i % 4 == (i * 3) % 5) for i in range(12)])
    feats = teacher.pair_features(qs, ds)
    assert feats.shape == (12, 4 * 16 + 1)
    cfg = TrainConfig(epochs=1, batch_size=12, lr=1e-9, optimizer="adamw", schedule="constant")
    train_teacher_head(teacher, None, None, labels, cfg, features=feats)
    w = skip.weight.detach().clone().requires_grad_(True)
    b = skip.bias.detach().clone().requires_grad_(True)
    # the fit's objective: BCE + 1e-4 * w^2
    loss = F.binary_cross_entropy_with_logits(feats[:, -1] * w[0, 0] + b[0], labels) + 1e-4 * (w**2).sum()
    gw, gb = torch.autograd.grad(loss, (w, b))
    assert float(gw.abs().max()) < 1e-3 and float(gb.abs().max()) < 1e-3


# --------------------------------------------------------------------------- tiny models and the synthetic task
def test_word_tokenizer_matches_hand_encoding() -> None:
    # metric: exact ids / masks / segment ids against hand-written lists
    tok = WordTokenizer(["a", "b", "c"])  # ids: [PAD]=0 [UNK]=1 [CLS]=2 [SEP]=3 a=4 b=5 c=6
    assert tok.vocab_size == 7
    enc = tok(["a b", "c"])
    assert enc["input_ids"].tolist() == [[2, 4, 5, 3], [2, 6, 3, 0]]
    assert enc["attention_mask"].tolist() == [[1, 1, 1, 1], [1, 1, 1, 0]]
    pair = tok(["a"], ["b c zz"])
    assert pair["input_ids"].tolist() == [[2, 4, 3, 5, 6, 1, 3]]
    assert pair["token_type_ids"].tolist() == [[0, 0, 0, 1, 1, 1, 1]]
    # truncation: the second text loses words first, the specials stay
    cut = tok(["a b"], ["c c c"], max_length=6)
    assert cut["input_ids"].tolist() == [[2, 4, 5, 3, 6, 3]]
    assert tok(["a b c"], max_length=3)["input_ids"].tolist() == [[2, 4, 3]]
    assert tok(["a"], padding="max_length", max_length=5)["input_ids"].tolist() == [[2, 4, 3, 0, 0]]
    with pytest.raises(ConfigError, match="duplicate"):
        WordTokenizer(["a", "a"])
    with pytest.raises(ConfigError, match="special token"):
        WordTokenizer(["[CLS]"])
    with pytest.raises(ConfigError, match="max_length must be >= 3"):
        tok(["a"], ["b"], max_length=2)
    with pytest.raises(ConfigError, match="return_tensors='pt'"):
        tok(["a"], return_tensors="np")


def test_tiny_bert_is_seeded_and_checks_its_shape() -> None:
    # metric: bit-identical weights for one seed, different for another; init std within 10% of init_range
    a, b, c = lib_tiny_bert(30, 16, 1, 2, seed=1), lib_tiny_bert(30, 16, 1, 2, seed=1), lib_tiny_bert(30, 16, 1, 2, seed=2)
    wa = a.state_dict()["encoder.layer.0.attention.self.query.weight"]
    assert torch.equal(wa, b.state_dict()["encoder.layer.0.attention.self.query.weight"])
    assert not torch.equal(wa, c.state_dict()["encoder.layer.0.attention.self.query.weight"])
    big = lib_tiny_bert(30, 64, 1, 2, init_range=0.2, type_vocab_size=4, seed=0)
    std = float(big.state_dict()["encoder.layer.0.intermediate.dense.weight"].std())
    assert abs(std - 0.2) < 0.02, std
    assert big.config.type_vocab_size == 4
    with pytest.raises(ConfigError, match="hidden divisible by heads"):
        lib_tiny_bert(30, hidden=10, heads=3)


def test_order_relevant_on_hand_examples() -> None:
    assert order_relevant("a b", "x a b y", window=1)
    assert order_relevant("a b", "a x x b", window=3)  # exactly `window` positions after
    assert not order_relevant("a b", "a x x x b", window=3)  # one too far
    assert not order_relevant("a b", "b a", window=3)  # wrong order
    assert not order_relevant("a b", "a x y", window=3)  # b missing
    assert order_relevant("a b", "b a x a b", window=1)  # a later occurrence counts
    with pytest.raises(ConfigError, match="two words"):
        order_relevant("a", "a b")


def test_order_task_is_deterministic_and_labels_follow_the_rule() -> None:
    # metric: exact equality; every label equals order_relevant(...); each kind has its documented arrangement
    t1, t2 = order_task(300, vocab_size=60, doc_len=12, window=3, seed=7), order_task(300, 60, 12, 3, seed=7)
    assert (t1.queries, t1.docs, t1.labels, t1.kinds) == (t2.queries, t2.docs, t2.labels, t2.kinds)
    assert order_task(300, 60, 12, 3, seed=8).docs != t1.docs
    assert set(t1.kinds) == {"positive", "reversed", "far", "one_token", "random"}
    for q, d, y, kind in zip(t1.queries, t1.docs, t1.labels, t1.kinds, strict=True):
        a, b = q.split()
        words = d.split()
        assert len(words) == 12 and a != b and len(set(words)) == 12
        assert y == float(order_relevant(q, d, 3)) == float(kind == "positive")
        if kind in ("positive", "reversed", "far"):
            gap = words.index(b) - words.index(a)
            assert {"positive": 1 <= gap <= 3, "reversed": -3 <= gap <= -1, "far": gap > 5}[kind], (kind, gap)
        else:
            assert (a in words) + (b in words) == (1 if kind == "one_token" else 0)
    assert set(order_task_vocab(60)) >= {w for d in t1.docs for w in d.split()}
    with pytest.raises(ConfigError, match="doc_len >= window"):
        order_task(10, doc_len=5, window=3)


def test_match_features_mark_query_tokens_in_the_document() -> None:
    # metric: exact segment ids against a hand-written list; then the CLS-pooled score equals head(h[CLS])
    tok = WordTokenizer(["a", "b", "c", "d"])
    bert = lib_tiny_bert(tok.vocab_size, 16, 1, 2, type_vocab_size=4, seed=0)
    teacher = CrossEncoderTeacher(bert, hidden=8, max_length=16, tokenizer=tok, pooling="cls", match_features=True)
    enc = teacher.tokenize_pairs(["a b"], ["c b a b d"])
    # [CLS] a b [SEP] | c b a b d [SEP]: b (query word 2) -> 3, a (query word 1) -> 2
    assert enc["token_type_ids"].tolist() == [[0, 0, 0, 0, 1, 3, 2, 3, 1, 1]]
    with torch.no_grad():
        h = bert(**enc).last_hidden_state[:, 0]
        want = teacher.head(h).squeeze(-1)
    assert torch.allclose(teacher.score_pairs(["a b"], ["c b a b d"]), want, atol=1e-6)
    with pytest.raises(ConfigError, match="type_vocab_size >= 3"):
        CrossEncoderTeacher(lib_tiny_bert(tok.vocab_size, 16, 1, 2), tokenizer=tok, match_features=True)
    with pytest.raises(ConfigError, match="pooling must be 'segments' or 'cls'"):
        CrossEncoderTeacher(bert, tokenizer=tok, pooling="max")  # type: ignore[arg-type]


def test_twin_from_tiny_bert_scores_cached_documents_like_pairs() -> None:
    # metric: max abs difference between cached all-pairs scores and paired scores, tol 1e-5
    tok = WordTokenizer(order_task_vocab(40))
    task = order_task(6, vocab_size=40, doc_len=10, seed=0)
    twin_model = twin_from_tiny_bert(tok, hidden=16, layers=1, heads=2, crossing="residual", doc_max_length=12).eval()
    assert twin_model.shared and twin_model.query_tower.tokenizer is tok
    cache = twin_model.encode_documents(task.docs)
    all_pairs = twin_model.score(task.queries, cache)
    with torch.no_grad():
        paired = twin_model.pair_logits(task.queries, task.docs)
    assert torch.allclose(torch.diagonal(all_pairs), paired, atol=1e-5)


# --------------------------------------------------------------------------- tri-letter-gram input hashing
def test_triletter_trigrams_and_crc32_ids_on_hand_examples() -> None:
    # metric: exact equality with hand-derived trigram strings and crc32 values (computed once with
    # zlib.crc32 and written here, so a process-salted hash would fail)
    assert zlib.crc32(b"#ca") == 2972665857 and zlib.crc32(b"cat") == 2656977832
    assert zlib.crc32(b"at#") == 1600173445 and zlib.crc32(b"#a#") == 466291263
    tok = TriLetterTokenizer(num_buckets=1000, sum_words=False)
    assert tok.trigrams("cat") == ["#ca", "cat", "at#"]
    assert tok.trigrams("Cat") == ["#ca", "cat", "at#"]  # lower-cased by default
    assert TriLetterTokenizer(lowercase=False).trigrams("Cat") == ["#Ca", "Cat", "at#"]
    assert tok.trigrams("a") == ["#a#"]  # a one-letter word still gives one trigram
    # ids: 4 + crc32 % 1000: 4 + 857, 4 + 832, 4 + 445 for "cat"'s trigrams and 4 + 263 for "#a#"
    assert tok.word_ids("cat") == [861, 836, 449] and tok.word_ids("a") == [267]
    assert tok.vocab_size == 1004
    enc = tok(["a"], ["cat"])  # [CLS] #a# [SEP] #ca cat at# [SEP]
    assert enc["input_ids"].tolist() == [[2, 267, 3, 861, 836, 449, 3]]
    assert enc["token_type_ids"].tolist() == [[0, 0, 0, 1, 1, 1, 1]]
    summed = TriLetterTokenizer(num_buckets=1000)(["cat a", "a"])  # one row of trigram ids per word
    assert summed["input_ids"].tolist() == [
        [[2, 0, 0], [861, 836, 449], [267, 0, 0], [3, 0, 0]],
        [[2, 0, 0], [267, 0, 0], [3, 0, 0], [0, 0, 0]],
    ]
    assert summed["attention_mask"].tolist() == [[1, 1, 1, 1], [1, 1, 1, 0]]
    # truncation counts words in the summed layout (the pair's second text loses words first)
    cut = TriLetterTokenizer(num_buckets=1000)(["a cat"], ["cat a"], max_length=5)
    assert cut["input_ids"].shape[1] == 5 and cut["token_type_ids"].tolist() == [[0, 0, 0, 0, 1]]
    # a misspelling keeps most trigrams: "vacine" shares #va, vac, cin, ine, ne# (5 of its 6) with "vaccine"
    assert set(tok.trigrams("vaccine")) & set(tok.trigrams("vacine")) == {"#va", "vac", "cin", "ine", "ne#"}
    with pytest.raises(ConfigError, match="num_buckets must be >= 1"):
        TriLetterTokenizer(num_buckets=0)
    with pytest.raises(ConfigError, match="max_length must be >= 3"):
        tok(["a"], ["b"], max_length=2)


def test_tower_sums_trigram_embeddings_per_word() -> None:
    # metric: max abs difference of tower embeddings, tol 1e-6, against (1) the encoder run on hand-summed
    # trigram embeddings and (2) the sequence layout, identical when every word has a single trigram
    summed = TriLetterTokenizer(num_buckets=50, sum_words=True)
    seq = TriLetterTokenizer(num_buckets=50, sum_words=False)
    bert = lib_tiny_bert(summed.vocab_size, hidden=16, layers=1, heads=2, seed=0)
    tower_sum, tower_seq = Tower(bert, summed, pooling="mean"), Tower(bert, seq, pooling="mean")
    with torch.no_grad():
        got = tower_sum.embed(["cat a"])
        table = bert.get_input_embeddings().weight
        words = torch.stack(
            [table[2], table[summed.word_ids("cat")].sum(0), table[summed.word_ids("a")].sum(0), table[3]]
        )
        ref = bert(inputs_embeds=words[None], attention_mask=torch.ones(1, 4, dtype=torch.long)).last_hidden_state
        assert (got - ref.mean(1)).abs().max() <= 1e-6
        one_letter = ["a b c", "x y"]  # one trigram per word: both layouts feed the same vectors
        assert (tower_sum.embed(one_letter) - tower_seq.embed(one_letter)).abs().max() <= 1e-6


def test_twin_with_triletter_tokenizer_scores_cache_like_pairs() -> None:
    # metric: max abs difference between cached all-pairs scores and paired scores, tol 1e-5
    task = order_task(5, vocab_size=40, doc_len=10, seed=1)
    tok = TriLetterTokenizer(num_buckets=64)
    model = twin_from_tiny_bert(tok, hidden=16, layers=1, heads=2, doc_max_length=12).eval()
    cache = model.encode_documents(task.docs)
    with torch.no_grad():
        paired = model.pair_logits(task.queries, task.docs)
    assert torch.allclose(torch.diagonal(model.score(task.queries, cache)), paired, atol=1e-5)


# --------------------------------------------------------------------------- quantised document cache
@pytest.mark.parametrize("bits", [8, 4])
@pytest.mark.parametrize("granularity", ["vector", "dim"])
def test_quantized_cache_error_bound_and_memory(bits: int, granularity: str) -> None:
    # metric: per-element reconstruction error <= scale / 2 (+1e-6 float slack); bytes exactly
    # N*D*bits/8 + 4 * (number of scales) (hand count)
    torch.manual_seed(0)
    n, d = 100, 63  # odd D exercises the 4-bit packing's padding
    emb = torch.randn(n, d) * torch.rand(n, 1) * 3
    cache = DocumentCache(emb, max_length=12)
    q = cache.quantize(bits, granularity)  # type: ignore[arg-type]
    rec = q.dequantize().embeddings
    scale = q.scales[:, None] if granularity == "vector" else q.scales[None, :]
    assert bool(((rec - emb).abs() <= scale / 2 + 1e-6).all())
    qmax = 2 ** (bits - 1) - 1
    absmax = emb.abs().amax(1) if granularity == "vector" else emb.abs().amax(0)
    assert torch.allclose(q.scales, absmax / qmax)  # hand formula: s = max|x| / (2^(b-1) - 1)
    assert int(q.int_codes().abs().max()) == qmax
    n_scales = n if granularity == "vector" else d
    code_bytes = n * d if bits == 8 else n * ((d + 1) // 2)
    assert q.nbytes == code_bytes + 4 * n_scales and cache.nbytes == n * d * 4
    if granularity == "vector":  # float32 / quantised memory: 4 * 63 / (63 + 4) = 3.76 and 252 / 36 = 7.0
        assert cache.nbytes / q.nbytes >= (3.7 if bits == 8 else 6.9)


def test_quantized_cache_cosine_scores_close_to_float() -> None:
    # metric: |cos(q, x_hat) - cos(q, x)| per (query, document), cosine crossing with w=1, b=0. Bound (hand
    # derivation): |cos(q, a) - cos(q, b)| <= ||a/|a| - b/|b| || <= 2 ||a - b|| / ||b||, checked for every pair
    # (+1e-6). Also a fixed tolerance on 64-dim Gaussian embeddings: max abs error <= 0.01 (int8) and
    # <= 0.1 (4-bit), about 2-3x the observed worst case. Scoring the quantised cache == scoring its dequantised
    # float copy (1e-6), whatever the chunk size.
    model = twin("cosine")
    torch.manual_seed(1)
    docs = torch.randn(300, model.dim)
    queries = torch.randn(20, model.dim)
    ref = model.score_embeddings(queries, DocumentCache(docs))
    for bits in (8, 4):
        q = DocumentCache(docs).quantize(bits)
        got = model.score_embeddings(queries, q)
        rel = 2 * (q.dequantize_rows() - docs).norm(dim=1) / docs.norm(dim=1)
        assert got.shape == (20, 300) and bool(((got - ref).abs() <= rel[None, :] + 1e-6).all())
        assert torch.allclose(got, model.score_embeddings(queries, q.dequantize()), atol=1e-6)
        q.chunk = 7
        assert torch.allclose(model.score_embeddings(queries, q), got, atol=1e-6)
    crossing = CosineCrossing()
    torch.manual_seed(2)
    docs64, q64 = torch.randn(500, 64), torch.randn(50, 64)
    ref64 = crossing.all_pairs(q64, docs64)
    for bits, tol in ((8, 0.01), (4, 0.1)):
        deq = DocumentCache(docs64).quantize(bits).dequantize_rows()
        assert (crossing.all_pairs(q64, deq) - ref64).abs().max() <= tol
    # raw texts against a quantised cache of the real document tower
    cache = model.encode_documents(DOCS)
    f, i8 = model.score(QUERIES, cache), model.score(QUERIES, cache.quantize(8))
    assert (f - i8).abs().max() <= 0.01


def test_quantized_cache_save_load_subset_and_bad_input(tmp_path: Any) -> None:
    # metric: exact equality of codes, scales, ids and reconstructions after a save/load round trip
    torch.manual_seed(2)
    cache = DocumentCache(torch.randn(6, 9), ids=list("abcdef"), max_length=12)
    for bits in (8, 4):
        q = cache.quantize(bits)
        q.save(tmp_path / f"q{bits}.pt")
        back = QuantizedDocumentCache.load(tmp_path / f"q{bits}.pt")
        assert torch.equal(back.codes, q.codes) and torch.equal(back.scales, q.scales)
        assert back.ids == list("abcdef") and back.max_length == 12 and back.bits == bits
        assert torch.equal(back.dequantize().embeddings, q.dequantize().embeddings)
        sub = q.subset([5, 1])
        assert sub.ids == ["f", "b"] and torch.equal(sub.dequantize_rows()[1], q.dequantize_rows()[1])
    with pytest.raises(ConfigError, match="bits must be in 2..8"):
        cache.quantize(16)
    with pytest.raises(ConfigError, match="granularity must be"):
        cache.quantize(8, "row")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="NaN or Inf"):
        DocumentCache(torch.full((2, 3), float("nan"))).quantize(8)
    with pytest.raises(ConfigError, match="cached documents have 9"):
        twin("cosine").score_embeddings(torch.randn(1, 16), cache.quantize(8))
