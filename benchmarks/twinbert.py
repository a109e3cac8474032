"""TwinBERT: twin 2-layer MiniLM students distilled from a fine-tuned MiniLM-L6 cross-encoder, cached documents.

Run: ``python -m benchmarks.twinbert [--quick] [--threads N] [--teacher-layers N] [--teacher-lr LR]``
or ``python -m benchmarks.twinbert --task synthetic [--quick] [--seeds N]`` (the synthetic test, at the end).

Task (derived from ``data.news_text()``, real news articles, no labels shipped): the *query* is the first 10
words of an article's lead sentence (a short, headline-like query) and the *document* is the rest of the
article (<= 64 tokens for every model). A (query, document) pair is relevant when both come from the same
article. Articles are split once (seed 0) into training articles and a held-out pool.

- Evaluation is re-ranking with lexical hard negatives: each held-out query is scored against its own document
  and the ``C - 1`` pool documents most TF-IDF-similar to it (TF-IDF, not a neural retriever, so the candidate
  lists do not favour any compared model). Reported: ROC AUC over all (query, candidate) pairs, MRR and
  recall@1 of the relevant document, and the Pearson correlation of each model's logits with the teacher's.
- Training pairs: per training article, its document, a *hard negative* (the other training document most
  similar to the query under the all-MiniLM-L6-v2 bi-encoder, ``mine_hard_negatives``) and a random other
  document. The teacher sees the labels of the first ``n_teacher`` articles; the twins distil the teacher's
  scores on those and on ``n_distill`` more articles whose labels are not used.
- Teacher: a cross-encoder over ``[CLS] q [SEP] d [SEP]`` (all-MiniLM-L6-v2, 6 layers) with an MLP head on the
  two segments' pooled states. The head is first fitted on frozen features (reported as a reference row), then
  the whole encoder + head are fine-tuned end to end (``finetune_teacher``; ``--teacher-layers N``: only the
  top N layers), binary cross-entropy, AdamW, one-cycle, 2 epochs of batch 16.
- Students (``build_twinbert``): one shared 2-layer tower initialised from teacher layers 2 and 5 (the
  ``build_student`` default; the pretrained all-MiniLM-L6-v2 weights, not the fine-tuned cross-encoder's),
  weighted-average pooling, cosine or residual crossing, distilled on the teacher's scores (binary
  cross-entropy with soft labels), AdamW, one-cycle LR.
- References: the 2-layer tower before distillation (copied layers, cosine) and the full all-MiniLM-L6-v2
  sentence encoder used as a twin (cosine of its embeddings; it was pretrained for similarity).

Serving cost (``bench.latency.compare``, interleaved, tokenization included): scoring one query against ``N``
documents with the cross-encoder (N joint passes, batches of 50) vs the twin with the documents cached (one
query pass + the crossing layer over N cached embeddings), and the twin re-encoding the documents (no cache).
The cross-encoder is timed at N=100; its N=1000 figure is extrapolated linearly (10 x N=100, stated in the
output) unless ``--cross-n1000`` times it. Writes ``benchmarks/results/twinbert.json``.

Sizes: default 384 labelled + 192 unlabelled training articles (1,728 pairs), 48 held-out queries x 16
candidates from a 400-article pool; ``--quick``: 160 + 64 articles (672 pairs), 32 queries x 8 candidates
from 200 articles. Budget: ``--quick`` < 5 min at 1 thread, default < 12 min at ``--threads 2`` (quiet
machine).

``--task synthetic`` (PAPERS.md's test; no pretrained weights, no text data): ``order_task`` pairs a two-word
query ``"a b"`` (vocabulary of 500 words) with a 20-word document; relevant iff ``a`` is followed by ``b``
within 3 positions. Negatives: reversed order, too far apart, only one of the words, neither. Teacher: a
random-init 2-layer BERT (hidden 64, 4 heads) cross-encoder over ``[CLS] q [SEP] d [SEP]`` with a head on
``[CLS]`` and exact-match segment ids (document tokens equal to query word j get segment 2 + j), trained
on the labels of ``n_lab`` pairs. Twins: the same tiny BERT as one shared tower (weighted pooling), trained
either on the labels of the ``n_lab`` pairs (as hard targets: logits +-20, same BCE loss) or on the teacher's
scores of those plus ``n_unlab`` unlabelled pairs, the same number of optimizer steps for both. Reported:
ROC AUC on held-out pairs (overall and positives vs each negative kind), mean +- std over seeds, and the
latency of one query against 1000 documents: cross-encoder (1000 joint passes in batches of 250, with and
without tokenization) vs the twin with cached document embeddings (query tower + crossing) vs the twin
re-encoding the documents. ``--quick``: 6000 + 18000 pairs, 1 seed; default 12000 + 48000 pairs, 2 seeds.
The synthetic mode also reports the paper's two serving details: the distilled cosine twin scoring an
int8 and a 4-bit copy of its document cache (``DocumentCache.quantize``; AUC, bytes, max logit change), and
a cosine twin whose input is hashed letter trigrams summed per word (``TriLetterTokenizer``, 4096 buckets)
instead of whole-word ids, distilled on the same teacher scores with the same steps.
Writes ``benchmarks/results/twinbert_synthetic[_quick].json``.
"""

from __future__ import annotations

import argparse
import copy
import re
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

RESULTS = Path(__file__).resolve().parent / "results" / "twinbert.json"


def make_pairs(
    n_teacher: int,
    n_distill: int,
    n_pool: int,
    n_eval: int,
    n_cand: int,
    q_words: int,
    d_len: int,
    seed: int = 0,
) -> dict[str, Any]:
    """Training pairs (with bi-encoder hard negatives) and a held-out re-ranking set (TF-IDF candidates).

    Queries are the first ``q_words`` words of an article's lead sentence; documents are the rest of it.
    Held-out: ``n_pool`` articles; each of the first ``n_eval`` queries gets its own document plus the
    ``n_cand - 1`` pool documents most TF-IDF-similar to the query (a lexical retriever, so the candidates do
    not favour any of the compared neural models). Training: for ``n_teacher`` labelled articles and
    ``n_distill`` unlabelled ones, each query gets its document, the most bi-encoder-similar other training
    document (all-MiniLM-L6-v2 cosine; a hard negative) and a random other document.
    """
    from sklearn.feature_extraction.text import TfidfVectorizer

    from torchslim import data
    from torchslim.distillation.methods.twinbert import mine_hard_negatives
    from torchslim.zoo.minilm import minilm

    items: list[tuple[str, str]] = []
    for article in data.news_text():
        sents = re.split(r"(?<=[.!?])\s+", article.strip())
        if len(sents) < 3:
            continue
        lead, rest = sents[0], " ".join(sents[1:])
        if q_words <= len(lead.split()) <= 60 and len(rest.split()) >= 30:
            items.append((" ".join(lead.split()[:q_words]), rest))
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(items))
    n_train = n_teacher + n_distill
    if n_train + n_pool > len(items):
        raise SystemExit(f"only {len(items)} usable articles, asked for {n_train} + {n_pool}")
    pool = [items[i] for i in order[:n_pool]]
    tr = [items[i] for i in order[n_pool : n_pool + n_train]]

    tfidf = TfidfVectorizer(stop_words="english", sublinear_tf=True).fit([q + " " + d for q, d in pool])
    sim = (tfidf.transform([q for q, _ in pool[:n_eval]]) @ tfidf.transform([d for _, d in pool]).T).toarray()
    cands = []
    for i in range(n_eval):
        sim[i, i] = -np.inf
        cands.append([i, *np.argsort(-sim[i], kind="stable")[: n_cand - 1].tolist()])

    enc = minilm(max_length=d_len)  # the bi-encoder sees as much of a document as the other models
    with torch.no_grad():
        e_q = enc.encode([q for q, _ in tr], batch_size=64)
        e_d = enc.encode([d for _, d in tr], batch_size=64)
    hard = mine_hard_negatives(e_q, e_d, k=1)[:, 0].tolist()
    rand = rng.permutation(n_train)
    rand = np.where(rand == np.arange(n_train), (rand + 1) % n_train, rand)
    tq, td, ty = [], [], []
    for i, (q, d) in enumerate(tr):
        tq += [q, q, q]
        td += [d, tr[hard[i]][1], tr[int(rand[i])][1]]
        ty += [1.0, 0.0, 0.0]
    return {
        "train_q": tq,
        "train_d": td,
        "train_y": ty,
        "n_teacher_pairs": 3 * n_teacher,
        "train_bodies": [d for _, d in tr],
        "eval_q": [q for q, _ in pool[:n_eval]],
        "pool_d": [d for _, d in pool],
        "cands": torch.tensor(cands),
        "n_usable": len(items),
        "encoder": enc,
    }


def ranking_metrics(scores: torch.Tensor, ref: torch.Tensor | None = None) -> dict[str, float]:
    """AUC over all pairs, MRR and recall@1 of a [Q, C] score matrix whose column 0 is the relevant pair."""
    from sklearn.metrics import roc_auc_score

    s = scores.double()
    labels = torch.zeros_like(s)
    labels[:, 0] = 1
    out = {"auc": float(roc_auc_score(labels.flatten().numpy(), s.flatten().numpy()))}
    pos = s[:, :1]
    ranks = 1 + (s > pos).sum(1).double() + 0.5 * ((s == pos).sum(1).double() - 1)
    out["mrr"] = float((1.0 / ranks).mean())
    out["recall_at_1"] = float((ranks == 1).double().mean())
    if ref is not None:
        a, b = s.flatten(), ref.double().flatten()
        out["pearson_vs_teacher"] = float(torch.corrcoef(torch.stack([a, b]))[0, 1])
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small run (< 4 min on one thread)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument(
        "--cross-n1000",
        action="store_true",
        help="also time the cross-encoder on 1000 pairs (slow; else 10 x N=100)",
    )
    ap.add_argument(
        "--teacher-layers",
        type=int,
        default=None,
        help="fine-tune only the teacher's top N layers (default: the whole encoder)",
    )
    ap.add_argument("--teacher-lr", type=float, default=1e-4)
    ap.add_argument(
        "--no-skip",
        action="store_true",
        help="a plain joint cross-encoder teacher (no separate-pass cosine term)",
    )
    ap.add_argument(
        "--task",
        choices=("news", "synthetic"),
        default="news",
        help="news: real-text MiniLM benchmark; synthetic: tiny cross-encoder on an order-sensitive task",
    )
    ap.add_argument("--seeds", type=int, default=0, help="synthetic task: seeds (default 1 quick, 2 full)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.task == "synthetic":
        return run_synthetic(args)

    from torchslim.bench import latency
    from torchslim.core.io import atomic_write_json
    from torchslim.distillation.methods.twinbert import (
        CrossEncoderTeacher,
        TwinDistill,
        build_twinbert,
        finetune_teacher,
        train_teacher_head,
        twinbert_distill,
    )
    from torchslim.train.trainer import TrainConfig

    latency.tune_malloc()
    t_start = time.time()
    quick = args.quick
    # teacher articles, extra unlabelled distillation articles, held-out pool, held-out queries, candidates
    n_teacher, n_distill, n_pool, n_eval, n_cand = (
        (160, 64, 200, 32, 8) if quick else (384, 192, 400, 48, 16)
    )
    q_words, q_len, d_len = 10, 24, 64
    epochs = 2
    pairs = make_pairs(n_teacher, n_distill, n_pool, n_eval, n_cand, q_words, d_len)
    enc = pairs["encoder"]
    n_lab = pairs["n_teacher_pairs"]
    lab_q, lab_d, lab_y = pairs["train_q"][:n_lab], pairs["train_d"][:n_lab], pairs["train_y"][:n_lab]
    print(f"data ready ({time.time() - t_start:.0f} s)", flush=True)

    # teacher: head on frozen features first, then the top layers + head fine-tuned end to end
    # its own copy: fine-tuning must not change the bi-encoder reference or the students' initial layers
    teacher = CrossEncoderTeacher(
        copy.deepcopy(enc), hidden=256, max_length=q_len + d_len, bi_encoder_skip=not args.no_skip
    )
    t0 = time.time()
    feats = teacher.pair_features(lab_q, lab_d, batch_size=32)
    train_teacher_head(
        teacher,
        None,
        None,
        lab_y,
        TrainConfig(epochs=60, batch_size=64, lr=1e-3, optimizer="adamw", weight_decay=0.01, seed=0),
        features=feats,
    )
    head_s = time.time() - t0
    eq, pool_d, cands = pairs["eval_q"], pairs["pool_d"], pairs["cands"]
    n, c = cands.shape
    flat_q = [eq[i] for i in range(n) for _ in range(c)]
    flat_d = [pool_d[j] for j in cands.flatten().tolist()]
    head_only = teacher.score_pairs(flat_q, flat_d, 32).view(n, c)
    rows: dict[str, dict[str, Any]] = {"teacher_frozen_encoder_head_only": ranking_metrics(head_only)}
    print(f"teacher, head only: {rows['teacher_frozen_encoder_head_only']}", flush=True)
    t0 = time.time()
    ft = finetune_teacher(
        teacher,
        lab_q,
        lab_d,
        lab_y,
        TrainConfig(
            epochs=epochs,
            batch_size=16,
            lr=args.teacher_lr,
            optimizer="adamw",
            weight_decay=0.01,
            schedule="onecycle",
            grad_clip=1.0,
            seed=0,
        ),
        train_layers=args.teacher_layers,
    )
    teacher_fit = {
        "head_s": round(head_s, 1),
        "finetune_s": round(time.time() - t0, 1),
        "labelled_pairs": n_lab,
        "finetuned_layers": args.teacher_layers or "all",
        "bi_encoder_skip": not args.no_skip,
        "steps": ft.steps,
        "final_epoch_loss": ft.history[-1]["loss"] if ft.history else None,
    }
    print(f"teacher fine-tune: {teacher_fit}", flush=True)

    t0 = time.time()
    t_scores = teacher.score_pairs(flat_q, flat_d, 32).view(n, c)
    rows["teacher_cross_encoder_L6_finetuned"] = ranking_metrics(t_scores)
    rows["teacher_cross_encoder_L6_finetuned"]["eval_s"] = round(time.time() - t0, 1)
    rows["teacher_frozen_encoder_head_only"] = ranking_metrics(head_only, t_scores)
    print(f"teacher: {rows['teacher_cross_encoder_L6_finetuned']}", flush=True)
    t_train_logits = teacher.score_pairs(pairs["train_q"], pairs["train_d"], 32)

    with torch.no_grad():
        e_q, e_d = enc.encode(eq, batch_size=64), enc.encode(pool_d, batch_size=64)
    rows["minilm_L6_as_twin_no_distill"] = ranking_metrics((e_q @ e_d.T).gather(1, cands), t_scores)

    train = TrainConfig(
        epochs=epochs,
        batch_size=32,
        lr=2e-4,
        optimizer="adamw",
        weight_decay=0.01,
        schedule="onecycle",
        grad_clip=1.0,
        seed=0,
    )
    students: dict[str, Any] = {}
    reference = build_twinbert(
        enc, num_layers=2, crossing="cosine", query_max_length=q_len, doc_max_length=d_len
    )
    ref_cache = reference.eval().encode_documents(pool_d)
    rows["twin_L2_cosine_no_distill"] = ranking_metrics(
        reference.score(eq, ref_cache).gather(1, cands), t_scores
    )
    for crossing in ("cosine", "residual"):
        name = f"twin_L2_{crossing}_distilled"
        twin = build_twinbert(
            enc, num_layers=2, crossing=crossing, query_max_length=q_len, doc_max_length=d_len
        )  # type: ignore[arg-type]
        t0 = time.time()
        res = twinbert_distill(
            twin,
            teacher,
            pairs["train_q"],
            pairs["train_d"],
            TwinDistill(loss="bce", train=train),
            teacher_logits=t_train_logits,
            progress=False,
        )
        train_s = time.time() - t0
        cache = twin.eval().encode_documents(pool_d)
        rows[name] = {
            **ranking_metrics(twin.score(eq, cache).gather(1, cands), t_scores),
            "train_s": round(train_s, 1),
            "steps": res.steps,
            "final_epoch_loss": res.history[-1]["loss"] if res.history else None,
        }
        students[crossing] = twin.eval()
        print(f"{name}: {rows[name]}", flush=True)

    # ------------------------------------------------------------------ serving cost
    twin = students["cosine"]
    pool_docs = (pairs["train_bodies"] * 4)[:1000]  # 1000 documents to serve from
    cache1000 = twin.encode_documents(pool_docs)
    cache100 = cache1000.subset(range(100))
    query = eq[0]
    variants = {
        "cross_encoder_N100": lambda: teacher.score_pairs([query] * 100, pool_docs[:100], 50),
        "twin_cached_N100": lambda: twin.score([query], cache100),
        "twin_cached_N1000": lambda: twin.score([query], cache1000),
        "twin_uncached_N100": lambda: twin.score_texts([query], pool_docs[:100]),
    }
    if args.cross_n1000:
        variants["cross_encoder_N1000"] = lambda: teacher.score_pairs([query] * 1000, pool_docs, 50)
    lat = latency.compare(
        variants, repeats=3 if quick else 5, warmup=1, threads=args.threads, min_sample_s=0.0
    )
    ms = {k: v.median_ms for k, v in lat.items()}
    cross1000 = ms.get("cross_encoder_N1000", 10 * ms["cross_encoder_N100"])
    speed = {
        "N100_cross_over_twin_cached": ms["cross_encoder_N100"] / ms["twin_cached_N100"],
        "N1000_cross_over_twin_cached": cross1000 / ms["twin_cached_N1000"],
        "N100_twin_uncached_over_cached": ms["twin_uncached_N100"] / ms["twin_cached_N100"],
        "cross_encoder_N1000_measured": "cross_encoder_N1000" in ms,
    }
    contaminated = any(v.contaminated for v in lat.values())

    t_row = rows["teacher_cross_encoder_L6_finetuned"]
    t_auc, t_mrr = t_row["auc"], t_row["mrr"]
    print(
        f"\nheld-out: {n} queries x {c} candidates; train pairs {len(pairs['train_q'])} "
        f"({n_lab} labelled); threads {args.threads}"
    )
    print(f"{'model':<32}{'AUC':>8}{'MRR':>8}{'R@1':>7}{'r vs T':>8}{'AUC-T':>8}")
    for name, r in rows.items():
        print(
            f"{name:<32}{r['auc']:>8.4f}{r['mrr']:>8.4f}{r['recall_at_1']:>7.3f}"
            f"{r.get('pearson_vs_teacher', 1.0):>8.3f}{r['auc'] - t_auc:>+8.4f}"
        )
    print(f"\nlatency, 1 query (median ms, 1 thread{', CONTAMINATED' if contaminated else ''}):")
    for k, v in ms.items():
        print(f"  {k:<22}{v:>10.2f}")
    if "cross_encoder_N1000" not in ms:
        print(f"  cross_encoder_N1000   {cross1000:>10.2f}  (extrapolated: 10 x N100)")
    print(
        f"speed-up cached twin vs cross-encoder: N=100 {speed['N100_cross_over_twin_cached']:.0f}x, "
        f"N=1000 {speed['N1000_cross_over_twin_cached']:.0f}x; cache saves "
        f"{speed['N100_twin_uncached_over_cached']:.0f}x at N=100"
    )
    out = {
        "benchmark": "twinbert",
        "quick": quick,
        "settings": {
            "teacher_articles": n_teacher,
            "distill_only_articles": n_distill,
            "eval_pool_articles": n_pool,
            "eval_queries": n,
            "candidates_per_query": c,
            "query_words": q_words,
            "train_pairs": len(pairs["train_q"]),
            "query_max_length": q_len,
            "doc_max_length": d_len,
            "student_layers": 2,
            "epochs": epochs,
            "lr": train.lr,
            "threads": args.threads,
            "usable_articles": pairs["n_usable"],
        },
        "teacher_fit": teacher_fit,
        "results": rows,
        "teacher_auc": t_auc,
        "teacher_mrr": t_mrr,
        "latency_ms": ms,
        "latency": {k: v.to_dict() for k, v in lat.items()},
        "speedup": speed,
        "latency_contaminated": contaminated,
        "paper_claim": "about 20 ms on CPU while keeping most of the fine-tuned BERT-Base gain (Bing data)",
        "wall_s": round(time.time() - t_start, 1),
        "environment": latency.environment(),
    }
    atomic_write_json(args.out, out)
    print(f"wrote {args.out} ({out['wall_s']} s)")
    return out


# ---------------------------------------------------------------------------------------------- synthetic task
RESULTS_SYNTHETIC = Path(__file__).resolve().parent / "results" / "twinbert_synthetic.json"


def _auc_by_kind(scores: torch.Tensor, labels: list[float], kinds: list[str]) -> dict[str, float]:
    """ROC AUC over all pairs, and of the positives against each kind of negative."""
    from sklearn.metrics import roc_auc_score

    s, y, k = scores.double().numpy(), np.asarray(labels), np.asarray(kinds)
    out = {"auc": float(roc_auc_score(y, s))}
    for kind in ("reversed", "far", "one_token", "random"):
        m = (k == kind) | (k == "positive")
        if (k == kind).any():
            out[f"auc_vs_{kind}"] = float(roc_auc_score(y[m], s[m]))
    return out


def run_synthetic(args: argparse.Namespace) -> dict[str, Any]:
    """The synthetic order-sensitive retrieval test (``--task synthetic``); see the module docstring."""
    from torchslim.bench import latency
    from torchslim.core.io import atomic_write_json
    from torchslim.distillation.methods.twinbert import (
        CrossEncoderTeacher,
        TriLetterTokenizer,
        TwinDistill,
        WordTokenizer,
        finetune_teacher,
        order_task,
        order_task_vocab,
        tiny_bert,
        twin_from_tiny_bert,
        twinbert_distill,
    )
    from torchslim.train.trainer import TrainConfig

    latency.tune_malloc()
    t_start = time.time()
    quick = args.quick
    vocab, doc_len, window, hidden, layers, heads = 500, 20, 3, 64, 2, 4
    n_lab, n_unlab, n_test = (6000, 18000, 2000) if quick else (12000, 48000, 4000)
    teacher_epochs, batch = (6, 64) if quick else (8, 64)
    seeds = list(range(args.seeds if args.seeds else (1 if quick else 2)))
    tok = WordTokenizer(order_task_vocab(vocab))
    tri = TriLetterTokenizer(num_buckets=4096, sum_words=True)  # the paper's input: summed hashed letter trigrams
    test = order_task(n_test, vocab, doc_len, window, seed=10_000)
    q_len, d_len = 2 + 2, doc_len + 2

    def train_cfg(epochs: int, seed: int) -> TrainConfig:
        return TrainConfig(
            epochs=epochs,
            batch_size=batch,
            lr=1e-3,
            optimizer="adamw",
            weight_decay=0.01,
            schedule="onecycle",
            grad_clip=1.0,
            seed=seed,
        )

    per_seed: list[dict[str, Any]] = []
    teacher = twin = None
    for seed in seeds:
        lab = order_task(n_lab, vocab, doc_len, window, seed=2 * seed + 1)
        unlab = order_task(n_unlab, vocab, doc_len, window, seed=2 * seed + 2)  # labels never used
        rows: dict[str, dict[str, Any]] = {}
        bert = tiny_bert(tok.vocab_size, hidden, layers, heads, max_positions=q_len + d_len, type_vocab_size=4, seed=seed)
        torch.manual_seed(1000 + seed)  # the teacher's head: torch's default seed differs between processes
        teacher = CrossEncoderTeacher(
            bert, hidden=64, max_length=q_len + d_len, tokenizer=tok, pooling="cls", match_features=True
        )
        t0 = time.time()
        fit = finetune_teacher(teacher, lab.queries, lab.docs, lab.labels, train_cfg(teacher_epochs, seed))
        rows["teacher_cross_encoder"] = {
            **_auc_by_kind(teacher.score_pairs(test.queries, test.docs, 256), test.labels, test.kinds),
            "train_s": round(time.time() - t0, 1),
            "steps": fit.steps,
        }
        print(f"seed {seed} teacher: {rows['teacher_cross_encoder']}", flush=True)
        all_q, all_d = lab.queries + unlab.queries, lab.docs + unlab.docs
        t_logits = teacher.score_pairs(all_q, all_d, 256)
        distill_epochs = 1
        steps = -(-len(all_q) // batch) * distill_epochs
        label_epochs = max(1, round(steps / -(-n_lab // batch)))  # the same number of optimizer steps
        hard = 20.0 * (2 * torch.tensor(lab.labels) - 1)
        runs: dict[str, tuple[Any, ...]] = {
            "twin_cosine_labels_only": ("cosine", lab.queries, lab.docs, hard, label_epochs, tok),
            "twin_cosine_distilled": ("cosine", all_q, all_d, t_logits, distill_epochs, tok),
            "twin_residual_distilled": ("residual", all_q, all_d, t_logits, distill_epochs, tok),
            "twin_cosine_distilled_triletter": ("cosine", all_q, all_d, t_logits, distill_epochs, tri),
        }
        for name, (crossing, qs, ds, targets, epochs, tokenizer) in runs.items():
            model = twin_from_tiny_bert(
                tokenizer, hidden, layers, heads, crossing=crossing,
                query_max_length=q_len, doc_max_length=d_len, seed=100 + seed,
            )
            t0 = time.time()
            res = twinbert_distill(
                model, None, qs, ds, TwinDistill(train=train_cfg(epochs, seed)), teacher_logits=targets, progress=False
            )
            cache = model.eval().encode_documents(test.docs, batch_size=256)
            q_emb = model.encode_queries(test.queries, batch_size=256)
            paired = model.crossing(q_emb, cache.embeddings)  # query i with document i
            rows[name] = {
                **_auc_by_kind(paired.detach(), test.labels, test.kinds),
                "train_pairs": len(qs),
                "epochs": epochs,
                "steps": res.steps,
                "train_s": round(time.time() - t0, 1),
            }
            print(f"seed {seed} {name}: {rows[name]}", flush=True)
            if name == "twin_cosine_distilled":
                twin = model
                rows[name]["cache_bytes"] = cache.nbytes
                for bits in (8, 4):  # the same twin scoring a quantised copy of the cache
                    qcache = cache.quantize(bits)
                    q_paired = model.crossing(q_emb, qcache.dequantize_rows())
                    rows[f"{name}_int{bits}_cache"] = {
                        **_auc_by_kind(q_paired.detach(), test.labels, test.kinds),
                        "cache_bytes": qcache.nbytes,
                        "memory_ratio_vs_float": cache.nbytes / qcache.nbytes,
                        "max_abs_logit_diff_vs_float": float((q_paired - paired).detach().abs().max()),
                    }
                    print(f"seed {seed} {name}_int{bits}_cache: {rows[f'{name}_int{bits}_cache']}", flush=True)
        per_seed.append(rows)

    names = list(per_seed[0])
    summary = {
        n: {
            "auc_mean": float(np.mean([r[n]["auc"] for r in per_seed])),
            "auc_std": float(np.std([r[n]["auc"] for r in per_seed])),
            **{
                k: float(np.mean([r[n][k] for r in per_seed]))
                for k in per_seed[0][n]
                if k.startswith("auc_vs_")
            },
        }
        for n in names
    }

    # ------------------------------------------------------------------ serving cost over 1000 documents
    assert teacher is not None and twin is not None
    serve = order_task(1000, vocab, doc_len, window, seed=20_000)
    cache = twin.encode_documents(serve.docs, batch_size=256)
    query = serve.queries[0]
    pre = [teacher.tokenize_pairs([query] * 250, serve.docs[i : i + 250]) for i in range(0, 1000, 250)]

    @torch.no_grad()
    def cross_model_only() -> list[torch.Tensor]:
        return [teacher(**x) for x in pre]

    variants = {
        "cross_encoder_N1000": lambda: teacher.score_pairs([query] * 1000, serve.docs, 250),
        "cross_encoder_N1000_pretokenized": cross_model_only,
        "twin_cached_N1000": lambda: twin.score([query], cache),
        "twin_uncached_N1000": lambda: twin.score_texts([query], serve.docs, 250),
    }
    lat = latency.compare(variants, repeats=5 if quick else 15, warmup=1, threads=args.threads, min_sample_s=0.0)
    ms = {k: v.median_ms for k, v in lat.items()}
    speed = {
        "cross_over_twin_cached": ms["cross_encoder_N1000"] / ms["twin_cached_N1000"],
        "cross_pretokenized_over_twin_cached": ms["cross_encoder_N1000_pretokenized"] / ms["twin_cached_N1000"],
        "twin_uncached_over_cached": ms["twin_uncached_N1000"] / ms["twin_cached_N1000"],
    }
    contaminated = any(v.contaminated for v in lat.values())

    t_auc = summary["teacher_cross_encoder"]["auc_mean"]
    print(f"\nsynthetic order task: {n_lab} labelled + {n_unlab} unlabelled pairs, {n_test} test pairs, seeds {seeds}")
    kinds = ("reversed", "far", "one_token", "random")
    print(f"{'model':<28}{'AUC':>8}{'+-':>7}{'AUC-T':>8}" + "".join(f"{'vs ' + k:>14}" for k in kinds))
    for n, r in summary.items():
        print(
            f"{n:<28}{r['auc_mean']:>8.4f}{r['auc_std']:>7.4f}{r['auc_mean'] - t_auc:>+8.4f}"
            + "".join(f"{r.get('auc_vs_' + k, float('nan')):>14.4f}" for k in kinds)
        )
    r0 = per_seed[0]
    print(f"test cache ({n_test} documents x {hidden} dims), seed {seeds[0]}: float32 "
          f"{r0['twin_cosine_distilled']['cache_bytes']} B" + "".join(
              f", int{b} {r0[f'twin_cosine_distilled_int{b}_cache']['cache_bytes']} B "
              f"({r0[f'twin_cosine_distilled_int{b}_cache']['memory_ratio_vs_float']:.2f}x smaller, max |logit diff| "
              f"{r0[f'twin_cosine_distilled_int{b}_cache']['max_abs_logit_diff_vs_float']:.4f})" for b in (8, 4)))
    print(f"\nlatency, 1 query vs 1000 documents (median ms, {args.threads} thread{'s' if args.threads > 1 else ''}"
          f"{', CONTAMINATED' if contaminated else ''}):")
    for k, v in ms.items():
        print(f"  {k:<34}{v:>10.2f}")
    print(
        f"cached twin vs cross-encoder: {speed['cross_over_twin_cached']:.0f}x (tokenization included), "
        f"{speed['cross_pretokenized_over_twin_cached']:.0f}x (cross-encoder pre-tokenized); cache saves "
        f"{speed['twin_uncached_over_cached']:.0f}x"
    )
    out = {
        "benchmark": "twinbert_synthetic",
        "quick": quick,
        "settings": {
            "vocab": vocab,
            "doc_len": doc_len,
            "window": window,
            "hidden": hidden,
            "layers": layers,
            "heads": heads,
            "labelled_pairs": n_lab,
            "unlabelled_pairs": n_unlab,
            "test_pairs": n_test,
            "teacher_epochs": teacher_epochs,
            "batch_size": batch,
            "lr": 1e-3,
            "seeds": seeds,
            "threads": args.threads,
        },
        "per_seed": per_seed,
        "summary": summary,
        "latency_ms": ms,
        "latency": {k: v.to_dict() for k, v in lat.items()},
        "speedup": speed,
        "latency_contaminated": contaminated,
        "paper_claim": "the twin keeps most of the fine-tuned cross-encoder's quality at a fraction of its cost",
        "papers_md_test": "AUC within a few points of the teacher; >= 10x lower query latency over 1000 cached documents",
        "wall_s": round(time.time() - t_start, 1),
        "environment": latency.environment(),
    }
    default = RESULTS_SYNTHETIC.with_name("twinbert_synthetic_quick.json") if quick else RESULTS_SYNTHETIC
    path = args.out if args.out != RESULTS else default
    atomic_write_json(path, out)
    print(f"wrote {path} ({out['wall_s']} s)")
    return out


if __name__ == "__main__":
    main()
