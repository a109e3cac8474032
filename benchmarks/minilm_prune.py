"""MiniLM-L6 head + FFN-neuron pruning to ~50% of the encoder MACs, then distillation from the original.

Run: ``python -m benchmarks.minilm_prune [--quick] [--threads T] [--steps N] [--budget R]``

Model: all-MiniLM-L6-v2 (``zoo.load("minilm-l6")``: 6 BERT layers, 384 wide, 12 heads of 32, FFN 1536).
"Encoder MACs" are the MACs under ``model.encoder`` (Q/K/V/O, attention matmuls, FFN) measured by
``core.cost.profile`` at 1 x 128 tokens; embeddings and pooling are left out (they cost nothing comparable).

Pruning (``torchslim.pruning.structured.transformer``, weights physically removed):

1. ``prune_heads_``: the same number of heads is removed from every layer (``--heads-keep``, default
   6 and 8 of 12 are both tried), importance ``l1`` (norm of the head's Q/K/V rows and O columns),
   ``random`` (seed 0), or ``act``: the heads with the smallest measured output contribution (mean L2 norm of
   ``ctx_h @ W_o[:, h]^T`` over the tokens of calibration news sentences, :func:`head_output_scores`), passed
   to ``prune_heads_`` as an explicit ``heads_per_layer`` dict;
2. ``prune_ffn_``: every FFN keeps the same number of neurons, the largest multiple of ``--round-to``
   (16) that brings the encoder to ``<= --budget`` (0.5) of the original MACs; importance ``l1`` / ``random``
   as for the heads (``l1`` for ``act``: ``prune_ffn_`` takes no explicit keep list).

Every (heads kept, importance) variant is scored one-shot by the embedding cosine to the original on
held-out *news* sentences (never on the evaluation tweets); the best one is distilled.

Distillation (``distillation.engine.fit_student``, AdamW one-cycle, the original frozen): news sentences
(``data.news_text()``, split into sentences, 64 tokens max), loss = mean over the 6 layers of the hidden-state
MSE (``methods.minilm.hidden_mse_loss``; the pruned model keeps the width and depth, so layer i maps to
layer i) + ``1 - cos`` of the mean-pooled sentence embeddings (``methods.minilm.embedding_cosine_loss``).

Evaluation on held-out health tweets (``data.health_tweets()``, balanced over the 16 outlets, seed 0,
>= 500 test tweets; the tweets are never distilled on):

* mean cosine of each model's sentence embedding with the original's, before and after distillation;
* outlet probe: a logistic regression (sklearn, C=1) on frozen embeddings, 16 classes. Earlier runs
  (benchmarks/minilm_distill.py) found this probe barely separates models (outlets are recognised by
  surface tokens), so a random-init MiniLM-L6 is probed too as the floor a reader should compare with.

Latency: original vs pruned at batch 32 x 128 tokens, PyTorch (eager, SDPA) and ONNX Runtime (legacy export,
all graph optimisations), all four interleaved in one ``bench.latency.compare`` run; the speedup is shown
next to the MAC ratio. On a shared machine only ratios from one interleaved run mean anything.

Writes ``benchmarks/results/minilm_prune.json`` (``minilm_prune_quick.json`` with ``--quick``).
"""

from __future__ import annotations

import argparse
import copy
import os
import platform
import re
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

RESULTS_DIR = Path(__file__).resolve().parent / "results"
ENCODER = "model.encoder"


# --------------------------------------------------------------------------------------------------- data
def news_sentences(n: int, skip: int = 0, seed: int = 0) -> list[str]:
    """``n`` sentences (6..60 words) of ``data.news_text()`` after the first ``skip`` of a seeded shuffle.

    Disjoint slices (``skip``) give disjoint distillation and selection sets.

    Example::

        train, held_out = news_sentences(512), news_sentences(128, skip=512)
    """
    from torchslim import data

    out: list[str] = []
    for article in data.news_text():
        for s in re.split(r"(?<=[.!?])\s+", article):
            words = s.split()
            if 6 <= len(words) <= 60:
                out.append(" ".join(words))
    if skip + n > len(out):
        raise ValueError(f"news_sentences: asked for {skip + n} sentences, the corpus has {len(out)}")
    idx = np.random.default_rng(seed).permutation(len(out))[skip : skip + n]
    return [out[i] for i in idx]


def outlet_split(n_train: int, n_test: int, seed: int = 0) -> tuple[list[str], list[int], list[str], list[int]]:
    """Balanced health-tweet outlet split: ``n_train`` / ``n_test`` distinct tweets per outlet (16 outlets).

    Example::

        tr_x, tr_y, te_x, te_y = outlet_split(40, 32)     # 640 / 512 tweets
    """
    from torchslim import data

    ds = data.health_tweets()
    labels = ds.labels.numpy()
    rng = np.random.default_rng(seed)
    tr_x: list[str] = []
    tr_y: list[int] = []
    te_x: list[str] = []
    te_y: list[int] = []
    for c in range(len(ds.label_names)):
        seen: set[str] = set()
        texts: list[str] = []
        for i in rng.permutation(np.flatnonzero(labels == c)):
            t = ds.texts[i].strip()
            if t and t not in seen:
                seen.add(t)
                texts.append(t)
            if len(texts) == n_train + n_test:
                break
        if len(texts) < n_train + n_test:
            raise ValueError(f"outlet {ds.label_names[c]!r} has {len(texts)} distinct tweets, "
                             f"fewer than {n_train + n_test} requested")
        tr_x += texts[:n_train]
        tr_y += [c] * n_train
        te_x += texts[n_train:]
        te_y += [c] * n_test
    return tr_x, tr_y, te_x, te_y


def probe_accuracy(train_x: np.ndarray, train_y: Sequence[int], test_x: np.ndarray, test_y: Sequence[int]) -> float:
    """Test accuracy of a logistic regression (C=1) fitted on frozen embeddings."""
    from sklearn.linear_model import LogisticRegression

    clf = LogisticRegression(C=1.0, max_iter=3000)
    clf.fit(train_x, list(train_y))
    return float((clf.predict(test_x) == np.asarray(test_y)).mean())


def mean_cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean row-wise cosine similarity of two ``[N, D]`` embedding sets (float64)."""
    return float(torch.nn.functional.cosine_similarity(a.double(), b.double(), dim=1).mean())


# --------------------------------------------------------------------------------------------------- pruning
def encoder_macs(enc: nn.Module, seq: int = 128) -> int:
    """MACs under ``model.encoder`` of a ``MiniLMEncoder`` for one sequence of ``seq`` tokens."""
    from torchslim.core.cost import profile

    ids = torch.full((1, seq), 1000, dtype=torch.long)
    mask = torch.ones(1, seq, dtype=torch.long)
    return int(profile(enc, (ids, mask)).macs_under(ENCODER))


def head_output_scores(enc: Any, texts: Sequence[str], max_length: int = 64) -> list[torch.Tensor]:
    """Data-driven head importance: per layer ``[heads]``, the mean L2 norm of each head's contribution
    ``ctx_h @ W_o[:, h]^T`` to the attention output over the unpadded tokens of ``texts``.

    Example::

        scores = head_output_scores(zoo.load("minilm-l6"), ["A sentence.", "Another one here."])
    """
    from torchslim.pruning.structured.transformer import find_attention

    sites = find_attention(enc)
    sums = [torch.zeros(s.num_heads, dtype=torch.float64) for s in sites]
    count = 0
    mask_box: dict[str, torch.Tensor] = {}

    def hook(i: int) -> Any:
        s = sites[i]
        w = enc.get_submodule(s.o).weight.detach()  # [D, H*d]

        def fn(_m: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
            ctx = args[0].detach()  # [B, T, H*d]
            b, t, _ = ctx.shape
            per = torch.einsum("bthd,ohd->btho", ctx.view(b, t, s.num_heads, s.head_dim),
                               w.view(-1, s.num_heads, s.head_dim)).norm(dim=-1)  # [B, T, H]
            m = mask_box["mask"].to(per.dtype)[..., None]
            sums[i] += (per * m).sum((0, 1)).double()

        return fn

    handles = [enc.get_submodule(s.o).register_forward_pre_hook(hook(i)) for i, s in enumerate(sites)]
    try:
        with torch.no_grad():
            for j in range(0, len(texts), 32):
                tok = enc.tokenize(list(texts[j : j + 32]), max_length=max_length)
                mask_box["mask"] = tok["attention_mask"]
                count += int(tok["attention_mask"].sum())
                enc(tok["input_ids"], tok["attention_mask"])
    finally:
        for h in handles:
            h.remove()
    return [s_ / max(count, 1) for s_ in sums]


def prune_to_budget(
    base: nn.Module,
    heads_keep: int,
    importance: str,
    budget: int,
    round_to: int = 16,
    seed: int = 0,
    calib: Sequence[str] = (),
) -> tuple[nn.Module, dict[str, Any]]:
    """A copy of ``base`` with ``heads_keep`` heads per layer and the widest FFN (multiple of ``round_to``)
    whose encoder MACs are ``<= budget``.

    Heads go first (``prune_heads_``); then the FFN width is found by bisection on measured MACs over the
    multiples of ``round_to`` (MACs grow with the width) and applied with ``prune_ffn_``.

    Raises:
        PruneError: even ``round_to`` neurons per FFN exceed the budget.

    Example::

        m, info = prune_to_budget(zoo.load("minilm-l6"), 6, "l1", budget=int(0.5 * encoder_macs(enc)))
    """
    from torchslim.pruning import PruneError
    from torchslim.pruning.structured.transformer import find_attention, find_ffn, prune_ffn_, prune_heads_

    heads = find_attention(base)[0].num_heads
    width = find_ffn(base)[0].width
    if not 1 <= heads_keep <= heads:
        raise PruneError(f"heads_keep must be in [1, {heads}], got {heads_keep}")
    m_heads = copy.deepcopy(base)
    ffn_importance = importance
    if importance == "act":  # heads by measured output contribution, FFN neurons by L1 (prune_ffn_ has no keep list)
        if not calib:
            raise PruneError("importance='act' needs calibration texts (calib=...)")
        ffn_importance = "l1"
        if heads_keep < heads:
            scores = head_output_scores(base, calib)
            drop = {i: sorted(torch.argsort(sc)[: heads - heads_keep].tolist()) for i, sc in enumerate(scores)}
            prune_heads_(m_heads, heads_per_layer=drop)
    elif heads_keep < heads:
        prune_heads_(m_heads, heads_per_layer=heads - heads_keep, importance=importance, seed=seed)  # type: ignore[arg-type]

    def with_ffn(w: int) -> nn.Module:
        m = copy.deepcopy(m_heads)
        if w < width:
            prune_ffn_(m, 1.0 - w / width, round_to=round_to, importance=ffn_importance, seed=seed)  # type: ignore[arg-type]
        return m

    lo, hi = 1, width // round_to  # in units of round_to
    if encoder_macs(with_ffn(lo * round_to)) > budget:
        raise PruneError(f"{heads_keep} heads and {round_to} FFN neurons per layer already exceed {budget:,} MACs")
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if encoder_macs(with_ffn(mid * round_to)) <= budget:
            lo = mid
        else:
            hi = mid - 1
    m = with_ffn(lo * round_to)
    got = find_ffn(m)[0].width
    if got != lo * round_to:  # n_keep rounding must land exactly on the multiple
        raise PruneError(f"prune_ffn_ kept {got} neurons, expected {lo * round_to}")
    return m, {"heads_keep": heads_keep, "ffn_width": got, "head_importance": importance,
               "ffn_importance": ffn_importance, "macs": encoder_macs(m)}


# --------------------------------------------------------------------------------------------------- distillation
def distill_layers(
    student: nn.Module,
    teacher: Any,
    sentences: Sequence[str],
    steps: int,
    batch: int,
    lr: float,
    max_length: int = 64,
    emb_weight: float = 1.0,
) -> Any:
    """Distil ``teacher`` into ``student`` (same depth and width): mean layer-wise hidden MSE + embedding cosine.

    Returns the ``TrainResult`` of ``distillation.engine.fit_student``.
    """
    from torchslim.distillation.engine import fit_student
    from torchslim.distillation.methods.minilm import bert_of, embedding_cosine_loss, hidden_mse_loss
    from torchslim.train.trainer import TrainConfig

    tok = teacher.tokenizer
    t_bert = bert_of(teacher)
    cfg = TrainConfig(epochs=max(1, -(-steps * batch // len(sentences))), batch_size=batch, lr=lr,
                      optimizer="adamw", weight_decay=0.01, schedule="onecycle", grad_clip=1.0,
                      max_steps=steps, seed=0)

    def step_fn(model: nn.Module, texts: Any) -> torch.Tensor:
        enc = tok(list(texts), padding=True, truncation=True, max_length=max_length, return_tensors="pt")
        inputs = {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}
        mask = inputs["attention_mask"]
        with torch.no_grad():
            t_out = t_bert(**inputs, output_hidden_states=True).hidden_states
        s_out = bert_of(model)(**inputs, output_hidden_states=True).hidden_states
        hid = torch.stack([hidden_mse_loss(t, s, mask) for t, s in zip(t_out[1:], s_out[1:], strict=True)]).mean()
        return hid + emb_weight * embedding_cosine_loss(t_out[-1], s_out[-1], mask)

    return fit_student(student, teacher, list(sentences), cfg, step_fn, progress=False)  # type: ignore[arg-type]  # a list of texts is a map-style data set


# --------------------------------------------------------------------------------------------------- latency
def ort_text_callable(path: Path, ids: torch.Tensor, mask: torch.Tensor, threads: int) -> Callable[[], Any]:
    """A zero-argument callable running an exported ``MiniLMEncoder`` (inputs ``input``, ``input_1``) in ORT."""
    from torchslim.export.parity import ort_session

    sess = ort_session(path, threads)
    names = [i.name for i in sess.get_inputs()]
    feed = dict(zip(names, (ids.numpy(), mask.numpy()), strict=True))

    def run() -> Any:
        return sess.run(None, feed)

    return run


# --------------------------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer steps / tweets / latency samples (< 6 min, 1 thread)")
    ap.add_argument("--threads", type=int, default=1, help="intra-op threads for torch and ORT")
    ap.add_argument("--budget", type=float, default=0.5, help="encoder MACs budget, fraction of the original's")
    ap.add_argument("--round-to", type=int, default=16, help="FFN widths are multiples of this")
    ap.add_argument("--heads-keep", type=int, nargs="+", default=[6, 8], help="heads kept per layer (tried)")
    ap.add_argument("--importance", nargs="+", default=["l1", "random", "act"], choices=["l1", "l2", "random", "act"],
                    help="head importance: prune_heads_'s l1/l2/random (FFN the same) or 'act' (measured head "
                    "output norm on calibration news sentences; FFN l1)")
    ap.add_argument("--steps", type=int, default=None, help="distillation steps (default 200; 40 with --quick)")
    ap.add_argument("--batch", type=int, default=None, help="sentences per step (default 32; 16 with --quick)")
    ap.add_argument("--lr", type=float, default=6e-4, help="peak AdamW learning rate (6e-4 beat 2e-4 on held-out news)")
    ap.add_argument("--per-outlet", type=int, nargs=2, default=None, metavar=("TRAIN", "TEST"),
                    help="probe tweets per outlet (default 60 40; 40 32 with --quick)")
    ap.add_argument("--repeats", type=int, default=None, help="latency samples (default 10; 4 with --quick)")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    q = args.quick
    steps = args.steps if args.steps is not None else (40 if q else 200)
    batch = args.batch if args.batch is not None else (16 if q else 32)
    n_tr, n_te = args.per_outlet or ((40, 32) if q else (60, 40))
    repeats = args.repeats if args.repeats is not None else (4 if q else 10)
    if not 0.0 < args.budget < 1.0:
        ap.error(f"--budget must be in (0, 1), got {args.budget}")
    if steps < 0 or batch < 1 or repeats < 1 or n_tr < 1 or n_te < 1 or args.round_to < 1:
        ap.error("--steps must be >= 0; --batch, --repeats, --per-outlet and --round-to >= 1")
    out_path = args.out or RESULTS_DIR / ("minilm_prune_quick.json" if q else "minilm_prune.json")

    os.environ.setdefault("MALLOC_MMAP_THRESHOLD_", "1000000000")
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    import logging
    import warnings

    import onnxruntime as ort
    from rich.console import Console
    from rich.table import Table

    from torchslim import zoo
    from torchslim.bench.latency import compare, environment, torch_callable, tune_malloc
    from torchslim.core.io import atomic_write_json
    from torchslim.export.onnx import export_onnx
    from torchslim.pruning import count_params

    ort.set_default_logger_severity(3)
    logging.getLogger().setLevel(logging.ERROR)
    tune_malloc()
    console = Console(width=140)
    t0 = time.time()
    timings: dict[str, float] = {}

    base: Any = zoo.load("minilm-l6").eval()
    n_distill = max(steps * batch, batch)
    n_select = 64 if q else 128
    distill_x = news_sentences(n_distill)
    select_x = news_sentences(n_select, skip=n_distill)
    calib_x = distill_x[:n_select]  # head-importance calibration: a prefix of the distillation sentences
    tr_x, tr_y, te_x, te_y = outlet_split(n_tr, n_te)
    macs0 = encoder_macs(base)
    budget = int(args.budget * macs0)

    def embed(m: Any, texts: list[str]) -> torch.Tensor:
        m.eval()
        return m.encode(texts, batch_size=64)

    t = time.time()
    ref_sel = embed(base, select_x)
    ref_tr, ref_te = embed(base, tr_x), embed(base, te_x)
    timings["encode_original_s"] = time.time() - t

    # one-shot variants, selected on held-out news sentences
    t = time.time()
    variants: dict[str, dict[str, Any]] = {}
    models: dict[str, nn.Module] = {}
    for hk in args.heads_keep:
        for imp in args.importance:
            name = f"h{hk}_{imp}"
            m, info = prune_to_budget(base, hk, imp, budget, args.round_to, calib=calib_x)
            info["macs_ratio"] = info["macs"] / macs0
            info["params"] = count_params(m)
            info["select_cosine"] = mean_cosine(embed(m, select_x), ref_sel)
            variants[name], models[name] = info, m
            console.print(f"  {name}: FFN {info['ffn_width']}, encoder MACs {info['macs_ratio']:.3f}, "
                          f"one-shot news cosine {info['select_cosine']:.3f}")
    best = max(variants, key=lambda k: variants[k]["select_cosine"])
    timings["prune_and_select_s"] = time.time() - t
    student: Any = models[best]

    rows: dict[str, dict[str, Any]] = {}

    def evaluate(name: str, m: Any, **extra: Any) -> dict[str, Any]:
        a, b = (ref_tr, ref_te) if m is base else (embed(m, tr_x), embed(m, te_x))
        row: dict[str, Any] = {"cosine_vs_original": mean_cosine(b, ref_te),
                               "probe_acc": probe_accuracy(a.numpy(), tr_y, b.numpy(), te_y), **extra}
        rows[name] = row
        console.print(f"  {name}: cosine {row['cosine_vs_original']:.4f}, probe {row['probe_acc']:.3f}")
        return row

    t = time.time()
    evaluate("original", base, macs_ratio=1.0, params=count_params(base))
    torch.manual_seed(1)
    rand: Any = zoo.load("minilm-l6", pretrained=False).eval()
    evaluate("random_init", rand, macs_ratio=1.0, params=count_params(rand))
    evaluate(f"{best}_oneshot", student, macs_ratio=variants[best]["macs_ratio"], params=variants[best]["params"])
    timings["evaluate_s"] = time.time() - t

    t = time.time()
    hist: list[float] = []
    if steps > 0:
        res = distill_layers(student, base, distill_x, steps, batch, args.lr)
        hist = [h["loss"] for h in res.history]
    timings["distill_s"] = time.time() - t
    student.eval()
    t = time.time()
    evaluate(f"{best}_distilled", student, macs_ratio=variants[best]["macs_ratio"], params=variants[best]["params"],
             distill_loss=hist)
    timings["evaluate_s"] += time.time() - t

    # latency: batch 32 x 128 tokens, original vs pruned, torch and ORT interleaved
    t = time.time()
    tok = base.tokenizer((te_x * 2)[:32], padding="max_length", truncation=True, max_length=128, return_tensors="pt")
    ids, mask = tok["input_ids"], tok["attention_mask"]
    calls: dict[str, Callable[[], Any]] = {}
    with tempfile.TemporaryDirectory() as tmp_s, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        parity: dict[str, float] = {}
        for name, m in (("original", base), ("pruned", student)):
            path = export_onnx(m, (ids[:2], mask[:2]), Path(tmp_s) / f"{name}.onnx")
            calls[f"{name}/torch"] = torch_callable(m, (ids, mask))
            calls[f"{name}/ort"] = ort_text_callable(path, ids, mask, args.threads)
            with torch.inference_mode():
                ref = m(ids, mask)
            parity[name] = float((torch.from_numpy(calls[f"{name}/ort"]()[0]) - ref).abs().max())
        stats = compare(calls, repeats=repeats, warmup=1, pause_s=0.1, threads=args.threads)
    timings["latency_s"] = time.time() - t
    mac_cut = macs0 / variants[best]["macs"]
    latency = {
        rt: {"original_ms": stats[f"original/{rt}"].median_ms, "pruned_ms": stats[f"pruned/{rt}"].median_ms,
             "speedup": stats[f"original/{rt}"].median_ms / stats[f"pruned/{rt}"].median_ms,
             "speedup_over_mac_cut": stats[f"original/{rt}"].median_ms / stats[f"pruned/{rt}"].median_ms / mac_cut,
             "contaminated": stats[f"original/{rt}"].contaminated or stats[f"pruned/{rt}"].contaminated}
        for rt in ("torch", "ort")
    }

    out: dict[str, Any] = {
        "benchmark": "minilm_prune",
        "quick": q,
        "model": "all-MiniLM-L6-v2 (zoo.load('minilm-l6'))",
        "encoder_macs_original_at_128": macs0,
        "budget_ratio": args.budget,
        "round_to": args.round_to,
        "variants_one_shot": variants,
        "selected": best,
        "selection": f"highest one-shot embedding cosine on {n_select} held-out news sentences",
        "distillation": {"data": "news_text sentences (6..60 words), 64 tokens max", "steps": steps, "batch": batch,
                         "lr": args.lr, "optimizer": "adamw, onecycle, grad clip 1",
                         "loss": "mean layer-wise hidden MSE (6 layers) + (1 - cos) of mean-pooled embeddings"},
        "evaluation": {"data": "health_tweets, 16 outlets, balanced, distinct tweets, seed 0",
                       "probe_train": len(tr_x), "probe_test": len(te_x), "chance": 1 / 16,
                       "probe": "sklearn LogisticRegression(C=1) on frozen unit-norm embeddings"},
        "rows": rows,
        "latency": {"batch": 32, "tokens": 128, "threads": args.threads, "repeats": repeats, "interleaved": True,
                    "mac_cut": mac_cut, **latency, "ort_parity_max_abs": parity,
                    "stats": {k: v.to_dict() for k, v in stats.items()}},
        "timings": timings,
        "wall_s": time.time() - t0,
        "environment": environment(),
        "versions": {"torch": torch.__version__, "python": platform.python_version()},
        "note": "latency measured on a shared machine: only the ratios of this interleaved run mean anything",
    }
    out_path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out_path, out)

    table = Table(title=f"MiniLM-L6 pruned to {args.budget:.0%} encoder MACs ({best}, FFN round_to {args.round_to}); "
                  f"{len(te_x)} test tweets; distil {steps} x {batch} news sentences")
    for c in ("model", "enc. MACs", "params", "cosine vs orig", "outlet probe"):
        table.add_column(c, justify="left" if c == "model" else "right")
    for name, r in rows.items():
        table.add_row(name, f"{r['macs_ratio']:.3f}", f"{r['params'] / 1e6:.2f}M", f"{r['cosine_vs_original']:.4f}",
                      f"{r['probe_acc']:.3f}")
    console.print(table)
    for rt in ("torch", "ort"):
        la = latency[rt]
        console.print(f"{rt}: {la['original_ms']:.0f} -> {la['pruned_ms']:.0f} ms, speedup {la['speedup']:.2f}x "
                      f"for a {mac_cut:.2f}x MAC cut (ratio {la['speedup_over_mac_cut']:.2f})"
                      + (" [contaminated]" if la["contaminated"] else ""))
    console.print(f"wall {out['wall_s']:.0f} s; timings {({k: round(v) for k, v in timings.items()})}; "
                  f"wrote {out_path}")
    return out


if __name__ == "__main__":
    main()
