"""MiniLM distillation of the real all-MiniLM-L6-v2 teacher into 3-layer (and narrow) students, then fine-tuning.

Run: ``python -m benchmarks.minilm_distill [--quick] [--threads T] [--steps N] [--ft-steps N] [--only a,b]``

Teacher: all-MiniLM-L6-v2 (6 layers, 384 wide, 12 heads, 22.7M parameters, loaded offline from the package).
Distillation: every student gets the same number of steps on the same sentences of ``data.news_text()``
(unlabelled, 48 tokens max), AdamW, one-cycle LR:

- ``minilm``: 3 x 384, teacher layers 1, 3, 5 copied, then MiniLM losses (last-layer attention + value relation);
- ``hidden_mse``: 3 x 384, copied, then MSE of last hidden states;
- ``embedding``: 3 x 384, copied, then 1 - cosine of the sentence embeddings (the encoder's output: the
  "logit-only" baseline of an encoder);
- ``copy_only``: 3 x 384, copied, no distillation;
- ``scratch``: 3 x 384, random init, no distillation ("training from scratch": only the fine-tuning below);
- ``scratch_minilm``: 3 x 384, random init, MiniLM losses (the paper's setting: students start random);
- ``narrow6``: 6 x 192 (12 heads), random init, MiniLM losses from the teacher; it is also the teacher
  assistant of ``narrow3_ta`` (the paper's assistant: teacher depth, student width);
- ``narrow3``: 3 x 192, random init, MiniLM losses from the teacher;
- ``narrow3_ta``: 3 x 192, random init, MiniLM losses from ``narrow6`` (distill_with_assistant; the assistant
  stage costs another ``steps`` steps, reported).

Evaluation task (labelled, never distilled on): health-tweet **topic** classification. A tweet of
``data.health_tweets()`` gets the topic whose keyword set it matches (exactly one of 12: cancer, ebola,
exercise, heart, mental health, smoking, flu, obesity, diabetes, sleep, HIV, vaccines); the matched keywords
and URLs are deleted from the text, so the model has to infer the topic from the rest of the tweet. Balanced,
fixed split (seed 0). Why not the outlet label of the tweets: outlets are recognised by surface tokens, and a
random-init encoder beats the teacher there (0.86 vs 0.59), so it cannot tell good from bad distillation; on
the topic task the random-init encoder is far below the teacher (checked and reported in every run).

Per model: cosine of test-tweet embeddings with the teacher's (same width only), correlation of the pairwise
similarity matrix with the teacher's (any width), a logistic-regression probe on frozen embeddings, and the
accuracy after fine-tuning the whole model with a linear head (``fine_tune_classifier``, same steps for
every model, the teacher included). Latency: teacher vs 3 x 384, 3 x 192 and 6 x 192 students at batch
32 x 128 tokens, interleaved in one run (``bench.latency.compare``); on a shared machine only the ratios mean
anything. Writes ``benchmarks/results/minilm_distill.json`` (``..._quick.json`` with ``--quick``).
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

RESULTS = Path(__file__).resolve().parent / "results" / "minilm_distill.json"

#: topic -> keyword regex (matched case-insensitively on word boundaries; matches are deleted from the text)
TOPICS: dict[str, str] = {
    "cancer": r"cancers?|tumou?rs?|chemo\w*|oncolog\w*",
    "ebola": r"ebola",
    "exercise": r"exercis\w*|workouts?|fitness",
    "heart": r"heart|cardiac|cardio\w*",
    "mental": r"depress\w*|anxiety|mental",
    "smoking": r"smok\w*|cigarettes?|tobacco|e-cigs?|vaping",
    "flu": r"flu|influenza",
    "obesity": r"obes\w*|overweight",
    "diabetes": r"diabet\w*|insulin",
    "sleep": r"sleep\w*|insomnia",
    "hiv": r"hiv|aids",
    "vaccine": r"vaccin\w*|immuni[sz]\w*",
}
#: other frequent topics: a tweet matching one of these as well is ambiguous and left out
OTHER_TOPICS = (
    r"alzheimer'?s?|dementia|pregnan\w*|autis\w*|strokes?|measles|alcohol\w*|drinking|booze"
)
MODELS = (
    "minilm",
    "hidden_mse",
    "embedding",
    "copy_only",
    "scratch",
    "scratch_minilm",
    "narrow6",
    "narrow3",
    "narrow3_ta",
)
QUICK_MODELS = ("minilm", "hidden_mse", "embedding", "copy_only", "scratch", "narrow3_ta")


def _sentences(n: int) -> list[str]:
    from torchslim import data

    out: list[str] = []
    for article in data.news_text():
        for s in re.split(r"(?<=[.!?])\s+", article):
            words = s.split()
            if 6 <= len(words) <= 60:
                out.append(" ".join(words))
    rng = np.random.default_rng(0)
    idx = rng.permutation(len(out))[:n]
    return [out[i] for i in idx]


def topic_task(n_train: int, n_test: int, seed: int = 0) -> tuple[list[str], list[int], list[str], list[int]]:
    """Balanced health-tweet topic split: ``n_train``/``n_test`` tweets per topic, keywords and URLs removed."""
    from torchslim import data

    pats = {k: re.compile(rf"\b(?:{v})\b", re.I) for k, v in TOPICS.items()}
    other = re.compile(rf"\b(?:{OTHER_TOPICS})\b", re.I)
    url = re.compile(r"https?://\S+")
    by: dict[str, list[str]] = defaultdict(list)
    for t in data.health_tweets().texts:
        t = url.sub(" ", t)
        hits = [k for k, p in pats.items() if p.search(t)]
        if len(hits) != 1 or other.search(t):
            continue
        s = re.sub(r"\s+", " ", pats[hits[0]].sub(" ", t)).strip()
        if len(s.split()) >= 3:
            by[hits[0]].append(s)
    rng = np.random.default_rng(seed)
    tr_x: list[str] = []
    tr_y: list[int] = []
    te_x: list[str] = []
    te_y: list[int] = []
    for ci, k in enumerate(TOPICS):
        if len(by[k]) < n_train + n_test:
            raise ValueError(f"topic {k!r} has {len(by[k])} tweets, fewer than {n_train + n_test} requested")
        idx = rng.permutation(len(by[k]))
        tr_x += [by[k][i] for i in idx[:n_train]]
        tr_y += [ci] * n_train
        te_x += [by[k][i] for i in idx[n_train : n_train + n_test]]
        te_y += [ci] * n_test
    return tr_x, tr_y, te_x, te_y


def _probe(train_x: np.ndarray, train_y: list[int], test_x: np.ndarray, test_y: list[int]) -> float:
    from sklearn.linear_model import LogisticRegression

    clf = LogisticRegression(C=1.0, max_iter=2000)
    clf.fit(train_x, train_y)
    return float((clf.predict(test_x) == np.asarray(test_y)).mean())


def _sim_corr(a: torch.Tensor, b: torch.Tensor) -> float:
    """Pearson correlation of the off-diagonal pairwise cosine similarities of two embedding sets."""
    sa = torch.nn.functional.normalize(a, dim=1) @ torch.nn.functional.normalize(a, dim=1).T
    sb = torch.nn.functional.normalize(b, dim=1) @ torch.nn.functional.normalize(b, dim=1).T
    off = ~torch.eye(len(a), dtype=torch.bool)
    x, y = sa[off], sb[off]
    x, y = x - x.mean(), y - y.mean()
    return float((x @ y) / (x.norm() * y.norm()))


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="few steps, small task (smoke run, < 4 min)")
    parser.add_argument("--steps", type=int, default=None, help="distillation steps per student")
    parser.add_argument("--batch", type=int, default=None, help="sentences per distillation step")
    parser.add_argument("--ft-steps", type=int, default=None, help="fine-tuning steps per model")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--lr", type=float, default=3e-4, help="peak AdamW learning rate of distillation")
    parser.add_argument("--ft-lr", type=float, default=1e-4, help="peak AdamW learning rate of fine-tuning")
    parser.add_argument(
        "--head-lr-mult", type=float, default=20.0, help="the new classifier head learns this many times faster"
    )
    parser.add_argument("--per-topic", type=int, nargs=2, default=None, metavar=("TRAIN", "TEST"))
    parser.add_argument("--only", default=None, help=f"comma-separated subset of {','.join(MODELS)}")
    parser.add_argument("--out", type=Path, default=None, help="result JSON path")
    args = parser.parse_args(argv)
    os.environ.setdefault("MALLOC_MMAP_THRESHOLD_", "1000000000")
    torch.set_num_threads(args.threads)

    from torchslim.bench.latency import compare, torch_callable, tune_malloc
    from torchslim.core.io import atomic_write_json
    from torchslim.distillation.methods.minilm import (
        MiniLMDistill,
        classifier_accuracy,
        distill_with_assistant,
        fine_tune_classifier,
        minilm_distill,
    )
    from torchslim.distillation.student import build_student
    from torchslim.train.trainer import TrainConfig
    from torchslim.zoo.minilm import MiniLMEncoder, minilm

    tune_malloc()
    steps = args.steps or (12 if args.quick else 120)
    batch = args.batch or (8 if args.quick else 32)
    ft_steps = args.ft_steps or (15 if args.quick else 80)
    n_train, n_test = args.per_topic or ((25, 15) if args.quick else (150, 50))
    names = tuple(args.only.split(",")) if args.only else (QUICK_MODELS if args.quick else MODELS)
    unknown = [n for n in names if n not in MODELS]
    if unknown:
        parser.error(f"--only: unknown model(s) {unknown}; choose from {MODELS}")
    out_path = args.out or (RESULTS.with_name("minilm_distill_quick.json") if args.quick else RESULTS)
    max_len, ft_len, ft_batch = 48, 48, (16 if args.quick else 32)
    t_start = time.time()

    teacher = minilm()
    sentences = _sentences(steps * batch)
    tr_x, tr_y, te_x, te_y = topic_task(n_train, n_test)
    n_cls = len(TOPICS)

    distill_train = TrainConfig(
        epochs=1,
        batch_size=batch,
        lr=args.lr,
        optimizer="adamw",
        weight_decay=0.01,
        schedule="onecycle",
        grad_clip=1.0,
        max_steps=steps,
        seed=0,
    )
    ft_train = TrainConfig(
        epochs=max(1, -(-ft_steps * ft_batch // len(tr_x))),
        batch_size=ft_batch,
        lr=args.ft_lr,
        optimizer="adamw",
        weight_decay=0.01,
        schedule="onecycle",
        grad_clip=1.0,
        max_steps=ft_steps,
        seed=0,
    )

    def cfg(objective: str) -> MiniLMDistill:
        return MiniLMDistill(objective=objective, max_length=max_len, train=distill_train)  # type: ignore[arg-type]

    t_test: torch.Tensor | None = None

    def evaluate(name: str, enc: MiniLMEncoder) -> dict[str, Any]:
        nonlocal t_test
        t0 = time.time()
        enc.eval()
        enc.max_length = ft_len
        a = enc.encode(tr_x, batch_size=64)
        b = enc.encode(te_x, batch_size=64)
        if t_test is None:
            t_test = b
        res: dict[str, Any] = {"probe_acc": _probe(a.numpy(), tr_y, b.numpy(), te_y)}
        res["cosine_vs_teacher"] = (
            float(torch.nn.functional.cosine_similarity(b, t_test).mean()) if b.shape == t_test.shape else None
        )
        res["sim_corr_vs_teacher"] = _sim_corr(b, t_test)
        res["eval_s"] = round(time.time() - t0, 1)
        t1 = time.time()
        clf, ft = fine_tune_classifier(
            enc, tr_x, tr_y, n_cls, ft_train, max_length=ft_len, seed=0, head_lr_mult=args.head_lr_mult, progress=False
        )
        res["finetune_acc"] = classifier_accuracy(clf, te_x, te_y, max_length=ft_len)
        res["finetune_s"] = round(time.time() - t1, 1)
        res["finetune_last_loss"] = ft.history[-1]["loss"] if ft.history else None
        res["params"] = sum(p.numel() for p in enc.parameters())
        bert: Any = enc.model
        res["transformer_params"] = sum(p.numel() for p in bert.encoder.parameters())
        print(f"{name}: {res}", flush=True)
        return res

    rows: dict[str, dict[str, Any]] = {}
    arch: dict[str, MiniLMEncoder] = {}  # untrained copies of each architecture, for latency
    rows["teacher"] = evaluate("teacher", minilm())  # a fresh copy: fine-tuning changes weights in place

    def narrow(layers: int) -> MiniLMEncoder:
        return build_student(teacher, num_layers=layers, hidden_size=192, init="scratch", seed=layers)

    order = [n for n in MODELS if n in names]
    if "narrow3_ta" in order and "narrow6" in order:  # narrow6 *is* the assistant: distil it once
        order.remove("narrow6")
    for name in order:
        t0 = time.time()
        loss: float | None = None
        extra: dict[str, Any] = {}
        if name in ("minilm", "hidden_mse", "embedding", "copy_only"):
            student = build_student(teacher, num_layers=3)
            if name != "copy_only":
                dres = minilm_distill(student, teacher, sentences, cfg(name), progress=False)
                loss = dres.history[-1]["loss"]
        elif name in ("scratch", "scratch_minilm"):
            student = build_student(teacher, num_layers=3, init="scratch")
            if name == "scratch_minilm":
                loss = minilm_distill(student, teacher, sentences, cfg("minilm"), progress=False).history[-1]["loss"]
        elif name in ("narrow6", "narrow3"):
            student = narrow(int(name[-1]))
            loss = minilm_distill(student, teacher, sentences, cfg("minilm"), progress=False).history[-1]["loss"]
        else:  # narrow3_ta
            student = narrow(3)
            res = distill_with_assistant(student, teacher, sentences, cfg("minilm"), assistant=narrow(6), progress=False)
            loss = res.student_result.history[-1]["loss"]
            extra = {"assistant_steps": res.assistant_result.steps}
            if "narrow6" in names:  # the assistant is the narrow 6-layer student
                a_s = round(time.time() - t0, 1)
                rows["narrow6"] = {
                    "distill_s": a_s,
                    "distill_last_loss": res.assistant_result.history[-1]["loss"],
                    **evaluate("narrow6", res.assistant),
                }
        d_s = round(time.time() - t0, 1)
        rows[name] = {"distill_s": d_s, "distill_last_loss": loss, **extra, **evaluate(name, student)}

    # latency: batch 32 x 128 tokens, interleaved; architectures only (weights do not change the time)
    arch["student_3x384"] = build_student(teacher, num_layers=3)
    if any(n.startswith("narrow") for n in names):
        arch["student_3x192"] = narrow(3)
        arch["student_6x192"] = narrow(6)
    enc = teacher.tokenizer(
        (tr_x * 4)[:32], padding="max_length", truncation=True, max_length=128, return_tensors="pt"
    )
    x = (enc["input_ids"], enc["attention_mask"])
    lat = compare(
        {"teacher": torch_callable(teacher.eval(), x), **{k: torch_callable(m.eval(), x) for k, m in arch.items()}},
        repeats=5 if args.quick else 12,
        threads=args.threads,
    )
    ratios = {k: lat[k].median_ms / lat["teacher"].median_ms for k in arch}

    t_probe, t_ft = rows["teacher"]["probe_acc"], rows["teacher"]["finetune_acc"]
    for r in rows.values():
        r["probe_vs_teacher"] = r["probe_acc"] / t_probe
        r["finetune_vs_teacher"] = r["finetune_acc"] / t_ft
    chance = 1.0 / n_cls
    print(
        f"\ndistil {steps} steps x {batch} sentences x {max_len} tokens; fine-tune {ft_steps} steps x {ft_batch}; "
        f"topic task {n_cls} classes, {len(tr_x)}/{len(te_x)} tweets (chance {chance:.3f}); threads {args.threads}"
    )
    print(f"{'model':<16}{'cosine':>8}{'simcorr':>9}{'probe':>8}{'/T':>7}{'finetune':>10}{'/T':>7}{'distil s':>10}")
    for name, r in rows.items():
        cos = "" if r["cosine_vs_teacher"] is None else f"{r['cosine_vs_teacher']:.3f}"
        print(
            f"{name:<16}{cos:>8}{r['sim_corr_vs_teacher']:>9.3f}{r['probe_acc']:>8.3f}{r['probe_vs_teacher']:>7.2f}"
            f"{r['finetune_acc']:>10.3f}{r['finetune_vs_teacher']:>7.2f}{r.get('distill_s', 0):>10}"
        )
    print(
        "latency batch 32x128, interleaved, student/teacher: "
        + ", ".join(f"{k} {v:.3f}" for k, v in ratios.items())
        + f" (teacher {lat['teacher'].median_ms:.0f} ms)"
        + (" (contaminated)" if any(s.contaminated for s in lat.values()) else "")
    )
    out: dict[str, Any] = {
        "benchmark": "minilm_distill",
        "quick": args.quick,
        "settings": {
            "distill_steps": steps,
            "distill_batch": batch,
            "distill_max_length": max_len,
            "distill_lr": args.lr,
            "n_sentences": len(sentences),
            "finetune_steps": ft_steps,
            "finetune_batch": ft_batch,
            "finetune_lr": args.ft_lr,
            "finetune_head_lr_mult": args.head_lr_mult,
            "finetune_max_length": ft_len,
            "task": "health-tweet topic (12 keyword topics, keywords and URLs removed)",
            "topics": list(TOPICS),
            "train_per_topic": n_train,
            "test_per_topic": n_test,
            "chance": chance,
            "threads": args.threads,
        },
        "results": rows,
        "latency": {k: v.to_dict() for k, v in lat.items()},
        "latency_ratio_over_teacher": ratios,
        "goal": "MiniLM student keeps >= 97% of the teacher's probe accuracy at <= 55% of its latency",
        "wall_s": round(time.time() - t_start, 1),
        "versions": {"torch": torch.__version__, "python": platform.python_version()},
        "machine": {"platform": platform.platform(), "processor": platform.processor(), "cpus": os.cpu_count()},
    }
    try:
        import transformers

        out["versions"]["transformers"] = transformers.__version__
    except ImportError:  # pragma: no cover
        pass
    out_path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out_path, out)
    print(f"wrote {out_path} ({out['wall_s']} s)")
    return out


if __name__ == "__main__":
    main()
