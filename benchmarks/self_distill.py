"""Self-distillation (SDA / SDV, Xu et al. 2020) vs plain fine-tuning at equal steps.

Run: ``python -m benchmarks.self_distill [--quick] [--threads N] [--tweets] [--bert] [--only-bert]``

Part 1: a small CNN (``benchmarks.distill_cnn.cnn_body`` at width 8) trained from scratch on a Fashion-MNIST
subset with cross-entropy ("plain"), SDA (teacher = parameter average of the last K snapshots) and SDV
(teacher = mean logits of the last K snapshots); same data order, optimizer, schedule and steps; several
seeds.
Part 2 (full mode, or ``--tweets``): a ``TweetClassifier`` (MLP head with dropout) on frozen MiniLM sentence
embeddings of the health tweets (16 outlets).
Part 3 (full mode, or ``--bert``): the paper's setting at small scale: end-to-end fine-tuning of the whole
MiniLM-L6 encoder (a 6-layer BERT) plus a linear head on the health tweets, every method from the same
pretrained weights, head initialisation, data order and number of steps.
Reported: test top-1 mean and std over seeds.
Writes ``benchmarks/results/self_distill.json``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import TensorDataset

RESULTS = Path(__file__).resolve().parent / "results" / "self_distill.json"


def _stats(v: list[float]) -> dict[str, Any]:
    m = sum(v) / len(v)
    s = (sum((x - m) ** 2 for x in v) / max(len(v) - 1, 1)) ** 0.5
    return {"mean": m, "std": s, "runs": v}


def _compare(
    make: Any, train: Any, test: Any, tc: Any, seeds: tuple[int, ...], k: int, lam: float,
    keys: tuple[str, ...] = ("plain", "sda", "sdv"),
) -> dict[str, Any]:
    from torchslim.distillation.methods.self_distill import SelfDistill, self_distill
    from torchslim.train import top1_accuracy

    acc: dict[str, list[float]] = {key: [] for key in keys}
    secs: dict[str, float] = {key: 0.0 for key in keys}
    for seed in seeds:
        for key in keys:
            mode = "none" if key == "plain" else key
            torch.manual_seed(seed)
            m = make()
            tc_seed = tc.model_copy(update={"seed": seed})
            cfg = SelfDistill(mode=mode, k=k, lam=lam, train=tc_seed)  # type: ignore[arg-type]
            t0 = time.time()
            self_distill(m, train, cfg, progress=False)
            secs[key] += time.time() - t0
            acc[key].append(top1_accuracy(m, test))
    return {"accuracy": {k2: _stats(v) for k2, v in acc.items()}, "train_seconds": secs, "k": k, "lam": lam}


def fmnist(quick: bool) -> dict[str, Any]:
    from benchmarks.distill_cnn import cnn_body
    from torchslim import data
    from torchslim.train import TrainConfig

    n_train, n_test, epochs = (3000, 2000, 2) if quick else (20000, 10000, 5)
    seeds = (0, 1, 2) if quick else (0, 1, 2, 3, 4)
    full, test = data.fashion_mnist("train"), data.fashion_mnist("test")
    g = torch.Generator().manual_seed(0)
    idx = torch.randperm(len(full.images), generator=g)[:n_train]
    train = TensorDataset(full.images[idx].contiguous(), full.labels[idx].contiguous())
    test_set = TensorDataset(test.images[:n_test], test.labels[:n_test])
    tc = TrainConfig(epochs=epochs, batch_size=64, lr=0.05, schedule="onecycle")
    res = _compare(
        lambda: nn.Sequential(cnn_body(8, feat=64), nn.Linear(64, 10)),
        train,
        test_set,
        tc,
        seeds,
        k=3,
        lam=1.0,
    )
    res["setup"] = {"n_train": n_train, "n_test": n_test, "train": tc.to_dict(), "seeds": list(seeds)}
    return res


def tweets(quick: bool) -> dict[str, Any]:
    from torchslim import data
    from torchslim.train import TrainConfig
    from torchslim.zoo.minilm import minilm
    from torchslim.zoo.text_classifier import embed_texts

    n_train, n_test = (2000, 1000) if quick else (6000, 3000)
    ds = data.health_tweets()
    g = torch.Generator().manual_seed(0)
    idx = torch.randperm(len(ds), generator=g)[: n_train + n_test]
    texts = [ds.texts[int(i)] for i in idx]
    emb = embed_texts(minilm(), texts)
    y = ds.labels[idx]
    train = TensorDataset(emb[:n_train], y[:n_train])
    test_set = TensorDataset(emb[n_train:], y[n_train:])
    tc = TrainConfig(
        epochs=10, batch_size=64, lr=1e-3, optimizer="adamw", schedule="cosine", weight_decay=0.01
    )
    c = len(ds.label_names)

    def make() -> nn.Module:
        return nn.Sequential(
            nn.Dropout(0.2), nn.Linear(emb.shape[1], 256), nn.GELU(), nn.Dropout(0.2), nn.Linear(256, c)
        )

    res = _compare(make, train, test_set, tc, (0, 1, 2), k=3, lam=1.0)
    res["setup"] = {"n_train": n_train, "n_test": n_test, "train": tc.to_dict(), "classes": c}
    return res


class _Packed(nn.Module):
    """A ``SentenceClassifier`` fed one tensor ``[B, 2, L]`` (token ids, attention mask), so that the generic
    ``(x, y)`` training loop of ``self_distill`` (and its snapshot teachers) can drive a BERT."""

    def __init__(self, clf: nn.Module) -> None:
        super().__init__()
        self.clf = clf

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.clf(input_ids=x[:, 0], attention_mask=x[:, 1])  # type: ignore[no-any-return]


def bert(quick: bool, lam: float = 1.0, keys: tuple[str, ...] = ("plain", "sda", "sdv")) -> dict[str, Any]:
    from torchslim import data
    from torchslim.distillation.methods.minilm import SentenceClassifier
    from torchslim.train import TrainConfig
    from torchslim.zoo.minilm import minilm

    n_train, n_test, max_len = (320, 320, 32) if quick else (2400, 1600, 48)
    seeds = (0,) if quick else (0, 1, 2)
    ds = data.health_tweets()
    g = torch.Generator().manual_seed(1)
    idx = torch.randperm(len(ds), generator=g)[: n_train + n_test]
    enc = minilm()
    tok = enc.tokenize([ds.texts[int(i)] for i in idx], max_length=max_len)
    ids, mask = tok["input_ids"], tok["attention_mask"]
    if ids.shape[1] < max_len:  # pad to a fixed length so every batch stacks
        pad = max_len - ids.shape[1]
        ids = torch.nn.functional.pad(ids, (0, pad))
        mask = torch.nn.functional.pad(mask, (0, pad))
    x = torch.stack([ids, mask], dim=1)
    y = ds.labels[idx]
    train = TensorDataset(x[:n_train], y[:n_train])
    test_set = TensorDataset(x[n_train:], y[n_train:])
    c = len(ds.label_names)
    state = {k: v.clone() for k, v in enc.state_dict().items()}
    tc = TrainConfig(
        epochs=1 if quick else 2, batch_size=32, lr=1e-4, optimizer="adamw", schedule="onecycle",
        weight_decay=0.01, grad_clip=1.0,
    )

    def make() -> nn.Module:
        e = minilm()
        e.load_state_dict(state)
        return _Packed(SentenceClassifier(e, c, head_lr_mult=20.0))

    res = _compare(make, train, test_set, tc, seeds, k=3, lam=lam, keys=keys)
    res["setup"] = {
        "n_train": n_train, "n_test": n_test, "max_length": max_len, "train": tc.to_dict(), "classes": c,
        "seeds": list(seeds), "model": "MiniLM-L6 (all-MiniLM-L6-v2) + linear head, fine-tuned end to end",
    }
    return res


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="3,000 images, 2 epochs, 3 seeds; no tweets")
    ap.add_argument("--tweets", action="store_true", help="also run the health-tweets part in quick mode")
    ap.add_argument("--bert", action="store_true", help="also run the end-to-end MiniLM fine-tuning part")
    ap.add_argument("--only-bert", action="store_true", help="run only the end-to-end MiniLM part")
    ap.add_argument("--bert-lam", type=float, default=1.0, help="lambda of the end-to-end part (the head's "
                    "logits are scaled by head_lr_mult=20, so the MSE term is 400x the paper's at equal lambda)")
    ap.add_argument("--bert-methods", default="plain,sda,sdv", help="comma-separated subset of plain,sda,sdv")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args(argv)

    from torchslim.bench import latency
    from torchslim.core.io import atomic_write_json

    torch.set_num_threads(args.threads)
    t0 = time.time()
    out: dict[str, Any] = {"benchmark": "self_distill", "quick": args.quick, "threads": args.threads}
    if not args.only_bert:
        out["fashion_mnist"] = fmnist(args.quick)
        if not args.quick or args.tweets:
            out["health_tweets"] = tweets(args.quick)
    if not args.quick or args.bert or args.only_bert:
        out["bert_finetune"] = bert(args.quick, args.bert_lam, tuple(args.bert_methods.split(",")))
    out["wall_seconds"] = time.time() - t0
    out["environment"] = latency.environment()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.out, out)
    for part in ("fashion_mnist", "health_tweets", "bert_finetune"):
        if part not in out:
            continue
        r = out[part]
        print(
            f"{part}: {r['setup']['n_train']} train / {r['setup']['n_test']} test, "
            f"K={r['k']}, lambda={r['lam']}"
        )
        print(f"  {'method':<8}{'top-1 mean':>12}{'std':>8}{'train s':>10}")
        for k, v in r["accuracy"].items():
            print(f"  {k:<8}{v['mean']:>12.4f}{v['std']:>8.4f}{r['train_seconds'][k]:>10.1f}")
    print(f"wall {out['wall_seconds']:.0f} s -> {args.out}")
    return out


if __name__ == "__main__":
    main()
