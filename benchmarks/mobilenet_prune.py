"""MobileNetV2 (ImageNet weights) pruned to 70% of its MACs, before and after a short logit distillation.

Run: ``python -m benchmarks.mobilenet_prune [--quick] [--threads N]``

Data: seeded 224x224 crops of the photos bundled with scikit-image / scikit-learn
(:mod:`torchslim.data.natural_images`, ``split_by="region"``): the distillation crops (and the Taylor
calibration crops, a prefix of them) come from the first 40% of each photo, the evaluation crops from the
rest, so no pixel is shared. No ImageNet labels exist offline: quality is top-1 agreement with the unpruned
model and mean KL(original || pruned) on the evaluation crops.

Variants, each with kept channel counts a multiple of ``--round-to`` (8):

* ``uniform_l1``: every dependency group (inverted-residual stages joined by their residual adds, depthwise
  convs as pass-throughs) loses the same fraction of channels by filter L1 norm (``prune_`` with
  :func:`uniform_widths`: kept counts rounded to the nearest multiple of ``round_to``); the ratio is the
  smallest one whose MEASURED MACs (:func:`torchslim.core.cost.profile`) fit the budget, by bisection.
* ``knapsack_taylor``: the knapsack of :mod:`torchslim.pruning.knapsack` (first-order Taylor value, MACs cost,
  exact DP, capacity bisected on measured MACs), with items of ``round_to`` channels (the ``round_to``
  most important remaining channels of a group, their summed Taylor value, ``round_to`` x the channel cost)
  so that widths stay multiples of ``round_to``. Taylor needs labels: the unpruned model's top-1 on the
  calibration crops is used as pseudo-label.

Recovery: Hinton logit KD from the unpruned model (``HintonKD(alpha=1)``: no labels) on the distillation
crops, BatchNorm statistics frozen (a few hundred crops of 7 photos would bias them). Latency: PyTorch and
ONNX Runtime, all six models (original / uniform / knapsack x torch / ORT) interleaved in one
:func:`torchslim.bench.latency.compare` run at batch 32 (8 with ``--quick``), 224x224.
Writes ``benchmarks/results/mobilenet_prune.json`` (``mobilenet_prune_quick.json`` with ``--quick``).
"""

from __future__ import annotations

import argparse
import copy
import logging
import math
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

RESULTS_DIR = Path(__file__).resolve().parent / "results"


class FreezeBatchNorm:
    """Trainer callback: BatchNorm layers stay in eval mode (running statistics frozen, affine still trained).

    Example::

        distill(student, teacher, data, HintonKD(alpha=1.0), callbacks=[FreezeBatchNorm()])
    """

    def on_train_start(self, trainer: Any) -> None:
        for m in trainer.model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.eval()


def _logits(model: nn.Module, x: torch.Tensor, batch: int = 32) -> torch.Tensor:
    model.eval()
    with torch.inference_mode():
        return torch.cat([model(xb) for xb in x.split(batch)])


def _const(t: torch.Tensor) -> Any:
    """A "model" that ignores its input and returns ``t`` (precomputed logits)."""
    return lambda _x: t


def _agreement(ref: torch.Tensor, model: nn.Module, x: torch.Tensor) -> tuple[float, float]:
    from torchslim.bench import accuracy

    return accuracy.agreement(_const(ref), _const(_logits(model, x)), x, batch_size=x.shape[0])


def _macs(model: nn.Module, x1: torch.Tensor) -> int:
    from torchslim.core.cost import profile

    return int(profile(model, (x1,)).macs)


def uniform_widths(channels: dict[str, int], ratio: float, round_to: int) -> dict[str, int]:
    """Uniform kept widths: ``(1 - ratio) * C`` rounded to the NEAREST multiple of ``round_to`` (at least
    ``round_to``, at most ``C``).

    ``ChannelPrune.round_to`` rounds up, and MobileNetV2's widths are all multiples of 8, so every group
    crosses a multiple of 8 at the same ratios and the MACs jump (e.g. from above 70% to 63% at ratio 0.25);
    nearest rounding of the same fraction moves the groups one at a time.

    >>> uniform_widths({"a": 96, "b": 24}, 0.25, 8)
    {'a': 72, 'b': 16}
    """
    return {n: min(c, max(round_to, round_to * math.floor((1 - ratio) * c / round_to + 0.5)))
            for n, c in channels.items()}


def uniform_for_budget(
    base: nn.Module, x1: torch.Tensor, budget: int, round_to: int, rounds: int = 14
) -> tuple[nn.Module, float, Any]:
    """Prune a copy of ``base`` uniformly by filter L1 at the smallest ratio whose MACs are ``<= budget``.

    Widths are :func:`uniform_widths` (monotone in the ratio); the ratio is bisected in [0, 0.95] on the
    measured MACs. Returns ``(pruned copy, ratio, PruneResult)``.

    Example::

        m, ratio, res = uniform_for_budget(model, x[:1], int(0.7 * macs), round_to=8)
    """
    from torchslim.pruning import ChannelPrune, PruneError, prune_
    from torchslim.pruning.structured.dependency import build_groups

    chans = {g.name: g.channels for g in build_groups(base, (x1,)) if g.prunable}

    def cut(r: float) -> tuple[nn.Module, Any]:
        m = copy.deepcopy(base)
        res = prune_(m, ChannelPrune(ratio=0.0, importance="l1"), (x1,), widths=uniform_widths(chans, r, round_to))
        return m, res

    lo, hi = 0.0, 0.95
    if _macs(cut(hi)[0], x1) > budget:
        raise PruneError(f"uniform ratio 0.95 (round_to={round_to}) does not reach the budget of {budget:,} MACs")
    for _ in range(rounds):
        mid = (lo + hi) / 2
        if _macs(cut(mid)[0], x1) <= budget:
            hi = mid
        else:
            lo = mid
    m, res = cut(hi)
    return m, hi, res


def block_knapsack_for_budget(
    base: nn.Module,
    x1: torch.Tensor,
    calib: list[tuple[torch.Tensor, torch.Tensor]],
    budget: int,
    round_to: int,
    rounds: int = 14,
    resolution: int = 4000,
) -> tuple[nn.Module, dict[str, Any]]:
    """Knapsack (Taylor value / MACs cost) on blocks of ``round_to`` channels, capacity bisected on measured MACs.

    Each group's channels are sorted by Taylor importance and cut into blocks of ``round_to``; a block's value
    is the summed importance of its channels and its cost ``round_to`` x the group's per-channel MACs
    (:func:`torchslim.pruning.knapsack.channel_costs`). :func:`~torchslim.pruning.knapsack.knapsack_select`
    (exact DP) picks the blocks; each group keeps its ``round_to x blocks`` most important channels.

    Returns ``(pruned copy, info)`` with ``info`` holding widths, measured MACs, rounds and the kept value.

    Example::

        m, info = block_knapsack_for_budget(model, x[:1], [(x, y)], int(0.7 * macs), round_to=8)
    """
    from torchslim.pruning import ChannelPrune, PruneError, prune_
    from torchslim.pruning.importance import top_channels
    from torchslim.pruning.knapsack import channel_costs, knapsack_select
    from torchslim.pruning.structured.dependency import build_groups
    from torchslim.pruning.structured.importance import ScoreContext, get_criterion

    groups = [g for g in build_groups(base, (x1,)) if g.prunable]
    names = [g.name for g in groups]
    chans = {g.name: g.channels for g in groups}
    scores = dict(zip(names, get_criterion("taylor")(base, groups, ScoreContext(data=calib)), strict=True))
    costs = channel_costs(base, groups, (x1,))
    bvals: dict[str, torch.Tensor] = {}
    for n in names:
        s = torch.sort(scores[n].double(), descending=True).values
        pad = (-s.numel()) % round_to
        bvals[n] = torch.cat([s, s.new_zeros(pad)]).view(-1, round_to).sum(1)
    bcosts = {n: costs[n] * round_to for n in names}

    def widths_at(cap: float) -> dict[str, int]:
        kb = knapsack_select(bvals, bcosts, cap, "dp", resolution)
        return {n: min(chans[n], round_to * len(kb[n])) for n in names}

    def cut(widths: dict[str, int]) -> nn.Module:
        m = copy.deepcopy(base)
        keep = {n: top_channels(scores[n], w) for n, w in widths.items() if w < chans[n]}
        prune_(m, ChannelPrune(ratio=0.0), (x1,), keep=keep)
        return m

    lo = sum(bcosts.values())  # one block per group
    hi = sum(bcosts[n] * bvals[n].numel() for n in names)
    smallest = widths_at(lo)
    if _macs(cut(smallest), x1) > budget:
        raise PruneError(f"one block of {round_to} channels per group already exceeds {budget:,} MACs")
    best = smallest
    for _ in range(rounds):
        mid = (lo + hi) / 2
        w = widths_at(mid)
        if _macs(cut(w), x1) <= budget:
            best, lo = w, mid
        else:
            hi = mid
    m = cut(best)
    value = float(sum(scores[n][top_channels(scores[n], w)].sum() for n, w in best.items()))
    total = float(sum(s.sum() for s in scores.values()))
    return m, {"widths": best, "taylor_value_kept_fraction": value / total if total > 0 else float("nan"),
               "rounds": rounds}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true",
                    help="96 eval / 64 distillation crops, 1 epoch, latency at batch 8 with 3 repeats")
    ap.add_argument("--threads", type=int, default=1, help="intra-op threads for torch and ORT (fixed)")
    ap.add_argument("--macs-ratio", type=float, default=0.7, help="MACs budget as a fraction of the original's")
    ap.add_argument("--round-to", type=int, default=8, help="kept channel counts are multiples of this")
    ap.add_argument("--n-eval", type=int, default=None, help="evaluation crops (default 360; 96 with --quick)")
    ap.add_argument("--n-train", type=int, default=None, help="distillation crops (default 256; 64 with --quick)")
    ap.add_argument("--n-taylor", type=int, default=None,
                    help="calibration crops for the Taylor importance, a prefix of the distillation crops "
                    "(default 64; 16 with --quick)")
    ap.add_argument("--epochs", type=int, default=None, help="distillation epochs (default 2; 1 with --quick)")
    ap.add_argument("--lr", type=float, default=5e-4, help="distillation peak learning rate (cosine)")
    ap.add_argument("--optimizer", choices=("adamw", "sgd"), default="adamw", help="distillation optimizer")
    ap.add_argument("--temperature", type=float, default=2.0, help="Hinton KD temperature")
    ap.add_argument("--batch", type=int, default=None, help="latency batch (default 32; 8 with --quick)")
    ap.add_argument("--repeats", type=int, default=None, help="latency samples per variant (default 7; 3 quick)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    q = args.quick
    n_eval = args.n_eval if args.n_eval is not None else (96 if q else 360)
    n_train = args.n_train if args.n_train is not None else (64 if q else 256)
    n_taylor = args.n_taylor if args.n_taylor is not None else (16 if q else 64)
    epochs = args.epochs if args.epochs is not None else (1 if q else 2)
    lat_batch = args.batch if args.batch is not None else (8 if q else 32)
    repeats = args.repeats if args.repeats is not None else (3 if q else 7)
    if n_eval < 1 or n_train < 1 or epochs < 1 or lat_batch < 1 or repeats < 1:
        ap.error("--n-eval, --n-train, --epochs, --batch and --repeats must be >= 1")
    if not 1 <= n_taylor <= n_train:
        ap.error(f"--n-taylor must be in [1, --n-train={n_train}] (the Taylor crops are a prefix of them)")
    if not 0.0 < args.macs_ratio < 1.0:
        ap.error(f"--macs-ratio must be in (0, 1), got {args.macs_ratio}")
    if args.round_to < 1:
        ap.error("--round-to must be >= 1")
    out_path = args.out or RESULTS_DIR / ("mobilenet_prune_quick.json" if q else "mobilenet_prune.json")

    import onnxruntime as ort
    from rich.console import Console
    from rich.table import Table
    from torch.utils.data import TensorDataset

    from torchslim import zoo
    from torchslim.bench import latency
    from torchslim.core.io import atomic_write_json
    from torchslim.data.natural_images import PHOTOS, natural_image_crops
    from torchslim.distillation import HintonKD, distill
    from torchslim.export.onnx import export_onnx
    from torchslim.pruning import count_params
    from torchslim.train import TrainConfig

    ort.set_default_logger_severity(3)
    logging.getLogger().setLevel(logging.ERROR)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    console = Console(width=150)
    t0 = time.time()
    timings: dict[str, float] = {}

    train_x, evaluation = natural_image_crops(n_calib=n_train, n_eval=n_eval, seed=args.seed)
    base = zoo.load("mobilenet_v2").eval()
    x1 = evaluation[:1]
    macs0 = _macs(base, x1)
    budget = int(args.macs_ratio * macs0)
    ref = _logits(base, evaluation)

    t = time.time()
    m_uni, ratio, res_uni = uniform_for_budget(base, x1, budget, args.round_to)
    timings["uniform_bisection_s"] = time.time() - t
    t = time.time()
    xt = train_x[:n_taylor]
    pseudo = _logits(base, xt).argmax(-1)
    calib = [(xb, yb) for xb, yb in zip(xt.split(8), pseudo.split(8), strict=True)]
    m_kn, kn_info = block_knapsack_for_budget(base, x1, calib, budget, args.round_to)
    timings["knapsack_s"] = time.time() - t

    models: dict[str, nn.Module] = {"uniform_l1": m_uni, "knapsack_taylor": m_kn}
    rows: dict[str, dict[str, Any]] = {}
    rows["original"] = {"macs": macs0, "params": count_params(base), "top1_agreement": 1.0, "kl": 0.0}
    kd = HintonKD(temperature=args.temperature, alpha=1.0,
                  train=TrainConfig(epochs=epochs, batch_size=16, lr=args.lr, schedule="cosine", optimizer=args.optimizer,
                                    weight_decay=0.0, seed=args.seed))
    train_set = TensorDataset(train_x)
    for name, m in models.items():
        macs = _macs(m, x1)
        row: dict[str, Any] = {"macs": macs, "macs_ratio": macs / macs0, "params": count_params(m)}
        row["widths"] = (kn_info["widths"] if name == "knapsack_taylor"
                         else {g.name: g.channels_after for g in res_uni.groups})
        if name == "uniform_l1":
            row["uniform_ratio"] = ratio
        else:
            row["taylor_value_kept_fraction"] = kn_info["taylor_value_kept_fraction"]
        row["top1_agreement_before_kd"], row["kl_before_kd"] = _agreement(ref, m, evaluation)
        t = time.time()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            hist = distill(m, base, train_set, kd, progress=False, callbacks=[FreezeBatchNorm()])
        row["kd_s"] = time.time() - t
        row["kd_loss_per_epoch"] = [h["loss"] for h in hist.history]
        m.eval()
        row["top1_agreement"], row["kl"] = _agreement(ref, m, evaluation)
        rows[name] = row
        console.print(f"  {name}: MACs {macs / macs0:.3f}, agreement {row['top1_agreement_before_kd']:.3f} -> "
                      f"{row['top1_agreement']:.3f}, KL {row['kl_before_kd']:.3f} -> {row['kl']:.3f} "
                      f"({row['kd_s']:.0f} s KD)")

    t = time.time()
    xb = evaluation[:lat_batch].contiguous()
    if xb.shape[0] < lat_batch:
        xb = xb.repeat((lat_batch + xb.shape[0] - 1) // xb.shape[0], 1, 1, 1)[:lat_batch].contiguous()
    everything = {"original": base, **models}
    with tempfile.TemporaryDirectory() as tmp_s:
        calls: dict[str, Any] = {}
        for name, m in everything.items():
            path = export_onnx(m, xb[:1], Path(tmp_s) / f"{name}.onnx")
            calls[f"{name}/torch"] = latency.torch_callable(m, xb)
            calls[f"{name}/ort"] = latency.ort_callable(path, xb, threads=args.threads)
        stats = latency.compare(calls, repeats=repeats, warmup=1, pause_s=0.1, threads=args.threads)
    timings["latency_s"] = time.time() - t
    contaminated = False
    for name in everything:
        for rt in ("torch", "ort"):
            st = stats[f"{name}/{rt}"]
            base_st = stats[f"original/{rt}"]
            rows[name][f"{rt}_ms"] = st.median_ms
            rows[name][f"{rt}_p10_p90_ms"] = [st.p10_ms, st.p90_ms]
            rows[name][f"{rt}_speedup"] = base_st.median_ms / st.median_ms
            rows[name][f"{rt}_latency_contaminated"] = st.contaminated
            contaminated = contaminated or st.contaminated
        rows[name]["mac_reduction"] = macs0 / rows[name]["macs"]

    out = {
        "benchmark": "mobilenet_prune",
        "quick": q,
        "model": "mobilenet_v2 (torchvision ImageNet weights, torchslim.zoo)",
        "data": {
            "source": "natural_image_crops, split_by='region' (distillation / Taylor crops: first 40% of each "
            "photo along its longer side; evaluation: the rest)",
            "photos": list(PHOTOS),
            "n_distill": n_train,
            "n_taylor": n_taylor,
            "taylor_labels": "pseudo-labels: the original model's top-1 on the Taylor crops",
            "n_eval": n_eval,
            "seed": args.seed,
        },
        "macs_budget_ratio": args.macs_ratio,
        "round_to": args.round_to,
        "distillation": {"method": "Hinton logit KD from the original, alpha=1 (no labels), BN statistics frozen",
                         "temperature": args.temperature, "epochs": epochs, "batch_size": 16, "lr": args.lr,
                         "optimizer": f"{args.optimizer}, cosine schedule, no weight decay"},
        "latency": {"batch": lat_batch, "size": 224, "threads": args.threads, "repeats": repeats,
                    "interleaved": True, "any_contaminated": contaminated},
        "rows": rows,
        "timings": timings,
        "wall_seconds": time.time() - t0,
        "environment": latency.environment(),
        "note": "latency on a shared machine: compare ratios within this run only",
    }
    out_path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out_path, out)

    table = Table(title=f"MobileNetV2 at {args.macs_ratio:.0%} MACs (round_to={args.round_to}), {n_eval} eval crops, "
                  f"KD {epochs} ep x {n_train} crops; latency batch {lat_batch}, {args.threads} thread(s)")
    cols = ("model", "MACs", "MAC cut", "params", "agree before KD", "agree after KD", "KL before", "KL after",
            "torch ms", "torch x", "ORT ms", "ORT x")
    for c in cols:
        table.add_column(c, justify="left" if c == "model" else "right", no_wrap=True)
    for name, r in rows.items():
        table.add_row(
            name, f"{r['macs'] / 1e6:.0f}M", f"{r['mac_reduction']:.2f}x", f"{r['params'] / 1e6:.2f}M",
            f"{r.get('top1_agreement_before_kd', 1.0):.3f}", f"{r['top1_agreement']:.3f}",
            f"{r.get('kl_before_kd', 0.0):.3f}", f"{r['kl']:.3f}",
            f"{r['torch_ms']:.1f}", f"{r['torch_speedup']:.2f}x", f"{r['ort_ms']:.1f}", f"{r['ort_speedup']:.2f}x",
        )
    console.print(table)
    console.print(f"uniform ratio {ratio:.3f}; wall {out['wall_seconds']:.0f} s; latency contaminated: "
                  f"{contaminated}; wrote {out_path}")
    return out


if __name__ == "__main__":
    main()
