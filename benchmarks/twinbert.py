"""TwinBERT: twin 2-layer MiniLM students distilled from a MiniLM-L6 cross-encoder, with cached documents.

Run: ``python -m benchmarks.twinbert [--quick] [--threads N]``

Task (derived from ``data.news_text()``, 3,824 real news articles, no labels shipped): the *query* is an
article's first sentence (its lead, a headline-like summary, <= 48 tokens) and the *document* is the rest of
the article (<= 96 tokens). A (query, document) pair is relevant when both come from the same article.
Articles are split once (seed 0) into a training part and a held-out evaluation part.

- Teacher: a cross-encoder over ``[CLS] q [SEP] d [SEP]`` (all-MiniLM-L6-v2, 6 layers, frozen) with an MLP
  head on the two segments' pooled states, the head trained on labelled pairs (one positive and one
  random-article negative per training article).
- Students (``build_twinbert``): one shared 2-layer tower initialised from teacher layers 2 and 5 (the
  ``build_student`` default), weighted-average pooling, cosine or residual crossing, distilled on the
  teacher's scores of the training pairs (binary cross-entropy with soft labels), AdamW, one-cycle LR.
- References: the 2-layer tower before distillation (copied layers, cosine) and the full all-MiniLM-L6-v2
  sentence encoder used as a twin (cosine of its embeddings; it was pretrained for similarity).

Ranking quality, on the held-out articles: every query is scored against every held-out document (one
relevant, the others not): ROC AUC over all pairs, MRR of the relevant document, and the Pearson
correlation of each model's logits with the teacher's.

Serving cost (``bench.latency.compare``, interleaved, 1 thread, tokenization included): scoring one query
against ``N`` documents with the cross-encoder (N joint passes, batches of 50) vs the twin with the documents
cached (one query pass + the crossing layer over N cached embeddings), and the twin re-encoding the
documents (no cache). The cross-encoder is timed at N=100; its N=1000 figure is extrapolated linearly
(10 x N=100, stated in the output) unless ``--cross-n1000`` times it. Writes
``benchmarks/results/twinbert.json``.

Sizes: default 384 training articles (768 pairs, 48 steps of 32 per student), 32 x 32 held-out pairs,
queries <= 48 tokens, documents <= 96; ``--quick``: 128 articles (16 steps), 24 x 24 held-out pairs,
32 / 64 tokens.
"""

from __future__ import annotations

import argparse
import re
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

RESULTS = Path(__file__).resolve().parent / "results" / "twinbert.json"


def make_pairs(n_train: int, n_eval: int, seed: int = 0) -> dict[str, Any]:
    """Queries (lead sentences) and documents (rest of the article) of train / held-out articles."""
    from torchslim import data

    items: list[tuple[str, str]] = []
    for article in data.news_text():
        sents = re.split(r"(?<=[.!?])\s+", article.strip())
        if len(sents) < 3:
            continue
        lead, rest = sents[0], " ".join(sents[1:])
        if 6 <= len(lead.split()) <= 60 and len(rest.split()) >= 30:
            items.append((lead, rest))
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(items))
    if n_train + n_eval > len(items):
        raise SystemExit(f"only {len(items)} usable articles, asked for {n_train} + {n_eval}")
    ev = [items[i] for i in order[:n_eval]]
    tr = [items[i] for i in order[n_eval : n_eval + n_train]]
    # one positive and one random-article negative per training article
    neg = rng.permutation(len(tr))
    neg = np.where(neg == np.arange(len(tr)), (neg + 1) % len(tr), neg)
    tq, td, ty = [], [], []
    for i, (q, d) in enumerate(tr):
        tq += [q, q]
        td += [d, tr[int(neg[i])][1]]
        ty += [1.0, 0.0]
    return {
        "train_q": tq,
        "train_d": td,
        "train_y": ty,
        "eval_q": [q for q, _ in ev],
        "eval_d": [d for _, d in ev],
        "n_usable": len(items),
    }


def ranking_metrics(scores: torch.Tensor, ref: torch.Tensor | None = None) -> dict[str, float]:
    """AUC over all pairs and MRR for a [Q, Q] score matrix whose diagonal holds the relevant pairs."""
    from sklearn.metrics import roc_auc_score

    s = scores.double()
    n = s.shape[0]
    labels = torch.eye(n).flatten().numpy()
    out = {"auc": float(roc_auc_score(labels, s.flatten().numpy()))}
    diag = s.diagonal().unsqueeze(1)
    ranks = 1 + (s > diag).sum(1).double() + 0.5 * ((s == diag).sum(1).double() - 1)
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
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    from torchslim.bench import latency
    from torchslim.core.io import atomic_write_json
    from torchslim.distillation.methods.twinbert import (
        CrossEncoderTeacher,
        TwinDistill,
        build_twinbert,
        train_teacher_head,
        twinbert_distill,
    )
    from torchslim.train.trainer import TrainConfig
    from torchslim.zoo.minilm import minilm

    latency.tune_malloc()
    t_start = time.time()
    quick = args.quick
    n_train, n_eval = (128, 24) if quick else (384, 32)
    epochs = 2
    q_len, d_len = (32, 64) if quick else (48, 96)
    pairs = make_pairs(n_train, n_eval)
    n_head = (len(pairs["train_q"]) * 2) // 3  # the head learns from 2/3 of the labelled pairs

    enc = minilm()
    teacher = CrossEncoderTeacher(enc, hidden=256, max_length=q_len + d_len)
    t0 = time.time()
    feats = teacher.pair_features(pairs["train_q"], pairs["train_d"], batch_size=32)
    train_teacher_head(
        teacher,
        None,
        None,
        pairs["train_y"][:n_head],
        TrainConfig(epochs=60, batch_size=64, lr=1e-3, optimizer="adamw", weight_decay=0.01, seed=0),
        features=feats[:n_head],
    )
    with torch.no_grad():
        t_train_logits = teacher.head(feats).squeeze(-1)
    held = torch.tensor(pairs["train_y"][n_head:])
    teacher_fit = {
        "features_s": round(time.time() - t0, 1),
        "head_pairs": n_head,
        "acc_on_unused_train_pairs": float(((t_train_logits[n_head:] > 0).float() == held).float().mean()),
    }
    print(f"teacher head: {teacher_fit}", flush=True)

    # evaluation matrix: every held-out query with every held-out document
    eq, ed = pairs["eval_q"], pairs["eval_d"]
    n = len(eq)
    t0 = time.time()
    t_scores = teacher.score_pairs([q for q in eq for _ in ed], [d for _ in eq for d in ed], 32).view(n, n)
    rows: dict[str, dict[str, Any]] = {"teacher_cross_encoder_L6": ranking_metrics(t_scores)}
    rows["teacher_cross_encoder_L6"]["eval_s"] = round(time.time() - t0, 1)
    print(f"teacher: {rows['teacher_cross_encoder_L6']}", flush=True)

    with torch.no_grad():
        e_q, e_d = enc.encode(eq, batch_size=64), enc.encode(ed, batch_size=64)
    rows["minilm_L6_as_twin_no_distill"] = ranking_metrics(e_q @ e_d.T, t_scores)

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
    rows["twin_L2_cosine_no_distill"] = ranking_metrics(reference.score_texts(eq, ed), t_scores)
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
        cache = twin.encode_documents(ed)
        rows[name] = {
            **ranking_metrics(twin.score(eq, cache), t_scores),
            "train_s": round(train_s, 1),
            "steps": res.steps,
            "final_epoch_loss": res.history[-1]["loss"] if res.history else None,
        }
        students[crossing] = twin.eval()
        print(f"{name}: {rows[name]}", flush=True)

    # ------------------------------------------------------------------ serving cost
    twin = students["cosine"]
    pool_docs = (pairs["train_d"][::2] * 4)[:1000]  # 1000 documents to serve from
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

    t_auc, t_mrr = rows["teacher_cross_encoder_L6"]["auc"], rows["teacher_cross_encoder_L6"]["mrr"]
    print(
        f"\nheld-out: {n} queries x {n} documents; train pairs {len(pairs['train_q'])}; threads {args.threads}"
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
            "train_articles": n_train,
            "eval_articles": n,
            "train_pairs": len(pairs["train_q"]),
            "query_max_length": q_len,
            "doc_max_length": d_len,
            "student_layers": 2,
            "epochs": epochs,
            "lr": train.lr,
            "threads": args.threads,
            "usable_articles": pairs["n_usable"],
        },
        "teacher_head": teacher_fit,
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


if __name__ == "__main__":
    main()
