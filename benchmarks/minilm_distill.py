"""MiniLM distillation of the real all-MiniLM-L6-v2 teacher into a 3-layer student.

Run: ``python -m benchmarks.minilm_distill [--quick] [--steps N] [--batch B]``

Teacher: all-MiniLM-L6-v2 (6 layers, 384 wide, 12 heads, 22.7M parameters, loaded offline from the package).
Students (3 layers, same width and heads), each trained for the same number of steps on the same sentences
of ``data.news_text()`` (articles split into sentences, 64 tokens max), AdamW, one-cycle LR:

- ``minilm``: teacher layers 1, 3, 5 copied, then MiniLM losses (last-layer attention + value relation KL);
- ``hidden_mse``: teacher layers 1, 3, 5 copied, then MSE of last hidden states;
- ``scratch_minilm``: random initialisation, then MiniLM losses (no teacher weights);
- ``copy_only``: teacher layers 1, 3, 5 copied, no training (reference).

Evaluation on ``data.health_tweets()`` (fixed split, seed 0; never used for training): cosine of the
student's sentence embeddings with the teacher's, and accuracy of a 16-class logistic-regression probe
(outlet of the tweet) trained on each model's own embeddings of the train split. Latency: teacher vs the
student at batch 32 x 128 tokens, interleaved in one run (``bench.latency.compare``), 1 thread; only the
ratio is meaningful on the shared machine. Writes ``benchmarks/results/minilm_distill.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

RESULTS = Path(__file__).resolve().parent / "results" / "minilm_distill.json"


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


def _probe(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray) -> float:
    from sklearn.linear_model import LogisticRegression

    clf = LogisticRegression(C=10.0, max_iter=2000)
    clf.fit(train_x, train_y)
    return float((clf.predict(test_x) == test_y).mean())


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="few steps and a small evaluation (smoke run)")
    parser.add_argument("--steps", type=int, default=None, help="training steps per student")
    parser.add_argument("--batch", type=int, default=None, help="sentences per step")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--lr", type=float, default=1e-4, help="peak AdamW learning rate")
    parser.add_argument(
        "--probe",
        type=int,
        nargs=2,
        default=None,
        metavar=("TRAIN", "TEST"),
        help="probe split sizes (tweets)",
    )
    args = parser.parse_args(argv)
    os.environ.setdefault("MALLOC_MMAP_THRESHOLD_", "1000000000")
    torch.set_num_threads(args.threads)

    from torchslim import data
    from torchslim.bench.latency import compare, torch_callable, tune_malloc
    from torchslim.distillation.methods.minilm import MiniLMDistill, minilm_distill
    from torchslim.distillation.student import build_student
    from torchslim.train.trainer import TrainConfig
    from torchslim.zoo.minilm import minilm

    tune_malloc()
    steps = args.steps or (20 if args.quick else 300)
    batch = args.batch or (16 if args.quick else 32)
    n_train, n_test = args.probe or ((600, 300) if args.quick else (4000, 2000))
    max_len = 64
    t_start = time.time()

    teacher = minilm()
    sentences = _sentences(steps * batch)
    tweets = data.health_tweets()
    perm = np.random.default_rng(0).permutation(len(tweets))
    tr_idx, te_idx = perm[:n_train], perm[n_train : n_train + n_test]
    texts = list(tweets.texts)
    labels = tweets.labels.numpy()[perm[: n_train + n_test]]
    tr_text, te_text = [texts[int(i)] for i in tr_idx], [texts[int(i)] for i in te_idx]
    tr_y, te_y = labels[:n_train], labels[n_train:]

    def evaluate(enc: torch.nn.Module, ref_test: torch.Tensor | None) -> dict[str, float]:
        t0 = time.time()
        enc.max_length = 128  # type: ignore[assignment]
        a = enc.encode(tr_text, batch_size=64).numpy()  # type: ignore[operator]
        b = enc.encode(te_text, batch_size=64)  # type: ignore[operator]
        res = {"probe_acc": _probe(a, tr_y, b.numpy(), te_y)}
        if ref_test is not None:
            res["cosine_vs_teacher"] = float(torch.nn.functional.cosine_similarity(b, ref_test).mean())
        res["eval_s"] = round(time.time() - t0, 1)
        return res

    t_eval = teacher.encode(te_text, batch_size=64)
    rows: dict[str, dict[str, Any]] = {"teacher": evaluate(teacher, None)}
    rows["teacher"]["cosine_vs_teacher"] = 1.0
    train = TrainConfig(
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
    plans = {
        "minilm": ("teacher", "minilm"),
        "hidden_mse": ("teacher", "hidden_mse"),
        "scratch_minilm": ("scratch", "minilm"),
        "copy_only": ("teacher", None),
    }
    students: dict[str, torch.nn.Module] = {}
    for name, (init, objective) in plans.items():
        student = build_student(teacher, num_layers=3, init=init)  # type: ignore[arg-type]
        t0 = time.time()
        final_loss = None
        if objective is not None:
            cfg = MiniLMDistill(objective=objective, max_length=max_len, train=train)  # type: ignore[arg-type]
            result = minilm_distill(student, teacher, sentences, cfg, progress=False)
            final_loss = result.history[-1]["loss"] if result.history else None
        train_s = time.time() - t0
        rows[name] = {
            **evaluate(student.eval(), t_eval),
            "train_s": round(train_s, 1),
            "epoch_mean_loss": final_loss,
        }
        students[name] = student
        print(f"{name}: {rows[name]}", flush=True)

    # latency: batch 32 x 128 tokens, interleaved
    enc = teacher.tokenizer(
        (tr_text * 2)[:32], padding="max_length", truncation=True, max_length=128, return_tensors="pt"
    )
    x = (enc["input_ids"], enc["attention_mask"])

    def call(m: torch.nn.Module) -> Any:
        m.eval()
        return torch_callable(m, x)

    lat = compare(
        {"teacher": call(teacher), "student": call(students["minilm"])},
        repeats=6 if args.quick else 12,
        threads=args.threads,
    )
    ratio = lat["student"].median_ms / lat["teacher"].median_ms

    t_acc = rows["teacher"]["probe_acc"]
    for r in rows.values():
        r["probe_acc_vs_teacher"] = r["probe_acc"] / t_acc
    n_params = {
        k: sum(p.numel() for p in m.parameters()) for k, m in {"teacher": teacher, **students}.items()
    }
    print(
        f"\nsteps {steps} x batch {batch} x {max_len} tokens; probe {n_train}/{n_test} tweets; threads {args.threads}"
    )
    print(f"{'model':<16}{'cosine':>9}{'probe acc':>11}{'vs teacher':>12}{'train s':>9}")
    for name, r in rows.items():
        print(
            f"{name:<16}{r['cosine_vs_teacher']:>9.4f}{r['probe_acc']:>11.4f}{r['probe_acc_vs_teacher']:>12.3f}"
            f"{r.get('train_s', 0):>9}"
        )
    print(
        f"latency batch 32x128 (1 thread, interleaved): teacher {lat['teacher'].median_ms:.0f} ms, "
        f"student {lat['student'].median_ms:.0f} ms, student/teacher = {ratio:.3f}"
        f"{' (contaminated)' if lat['teacher'].contaminated or lat['student'].contaminated else ''}"
    )
    out = {
        "benchmark": "minilm_distill",
        "quick": args.quick,
        "settings": {
            "steps": steps,
            "batch": batch,
            "max_length": max_len,
            "n_sentences": len(sentences),
            "probe_train": n_train,
            "probe_test": n_test,
            "threads": args.threads,
            "lr": train.lr,
        },
        "results": rows,
        "params": n_params,
        "latency": {k: v.to_dict() for k, v in lat.items()},
        "latency_ratio_student_over_teacher": ratio,
        "goal": "student probe acc >= 97% of teacher's at <= 55% of its latency",
        "wall_s": round(time.time() - t_start, 1),
        "versions": {"torch": torch.__version__, "python": platform.python_version()},
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor(),
            "cpus": os.cpu_count(),
        },
    }
    try:
        import transformers

        out["versions"]["transformers"] = transformers.__version__
    except ImportError:  # pragma: no cover
        pass
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(out, indent=2, default=str))
    print(f"wrote {RESULTS} ({out['wall_s']} s)")
    return out


if __name__ == "__main__":
    main()
