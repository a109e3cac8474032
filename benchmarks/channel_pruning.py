"""Channel-pruning criteria on the Fashion-MNIST ResNet, same fine-tuning for all, plus latency-aware widths.

Run: ``python -m benchmarks.channel_pruning [--quick] [--threads N]``

Every variant starts from the same trained ``zoo.load("resnet-fmnist")`` and removes the same fraction of
channels per group (``ratio``, ``round_to=8``; about half the MACs) with one criterion: L1 filter norm,
random, BN scale (network slimming), first-order Taylor and HRank (the last two see the same 4 calibration
batches of 64 training images). Each pruned model then gets the SAME short recovery: Hinton KD from the
original model (T=4, alpha=0.9) for one pass over a fixed training subset. A last variant,
``l1+latency``, keeps L1 ranking but picks per-group widths (>= 16) from an ORT latency table
(:mod:`torchslim.pruning.latency`), with the table target bisected so that its MACs match the uniform
model's (latency-aware vs FLOPs-proportional widths at equal MACs, PAPERS #45).
``l1+attenuation`` (filter attenuation) trains the FULL model during the same KD pass while multiplying
the L1-weakest channels by beta after every step (beta^steps = 1e-3), then removes them, no further
fine-tuning ("acc pruned" is not applicable; the accuracy after removal is in the "+KD" column).

Reported: test-split top-1 before and after fine-tuning, MACs, params, and ORT FP32 latency (batch 64,
fixed threads) of each model as a ratio to the unpruned model, all models timed interleaved in one run.
The machine is shared: absolute times are indicative only. The comparison with Torch-Pruning is
``benchmarks/tp_compare.py``. Writes ``benchmarks/results/channel_pruning.json`` and the latency-table plot
``benchmarks/results/channel_pruning_latency.png``.
"""

from __future__ import annotations

import argparse
import copy
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

RESULTS = Path(__file__).resolve().parent / "results" / "channel_pruning.json"
CRITERIA = ["l1", "random", "bn_scale", "taylor", "hrank"]


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="smaller fine-tuning / test subsets")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--ratio", type=float, default=0.35)
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    from torchslim import data, zoo
    from torchslim.bench import latency
    from torchslim.bench.accuracy import top1
    from torchslim.core.cost import profile
    from torchslim.core.io import atomic_write_json
    from torchslim.distillation import HintonKD, distill
    from torchslim.export import export_onnx
    from torchslim.pruning import ChannelPrune, PruneError, prune_
    from torchslim.pruning.latency import choose_widths, measure_table, plot_table
    from torchslim.pruning.structured.importance.attenuation import FilterAttenuation
    from torchslim.train import TrainConfig

    t0 = time.time()
    latency.tune_malloc()
    base = zoo.load("resnet-fmnist", progress=False).eval()
    train, test = data.fashion_mnist("train"), data.fashion_mnist("test")
    n_ft, n_test = (2500, 2000) if args.quick else (10000, 10000)
    g = torch.Generator().manual_seed(0)
    ft_idx = torch.randperm(len(train), generator=g)[: n_ft + 256]
    ft_set = torch.utils.data.TensorDataset(train.images[ft_idx[:n_ft]], train.labels[ft_idx[:n_ft]])
    calib = list(zip(train.images[ft_idx[n_ft:]].split(64), train.labels[ft_idx[n_ft:]].split(64), strict=True))
    test_set = torch.utils.data.TensorDataset(test.images[:n_test], test.labels[:n_test])
    x1 = test.images[:1]
    kd = HintonKD(temperature=4.0, alpha=0.9,
                  train=TrainConfig(epochs=1, lr=0.01, schedule="cosine", batch_size=64, seed=0))

    def cost(m: torch.nn.Module) -> tuple[int, int]:
        r = profile(m, (x1,))
        return r.macs, r.params

    base_macs, base_params = cost(base)
    rows: dict[str, dict[str, Any]] = {"unpruned": {"acc_before_ft": top1(base, test_set), "macs": base_macs,
                                                     "params": base_params}}
    rows["unpruned"]["acc_after_ft"] = rows["unpruned"]["acc_before_ft"]
    models: dict[str, torch.nn.Module] = {"unpruned": base}
    cfg = ChannelPrune(ratio=args.ratio, round_to=8)

    # latency table (ORT, batch 64) for the latency-aware variant and the non-monotonicity plot
    xb = test.images[:64]
    t_tab = time.time()
    table = measure_table(base, (xb,), runtime="ort", step=8, repeats=7 if args.quick else 15,
                          min_sample_s=0.02,
                          threads=args.threads)
    table_s = time.time() - t_tab
    plot_path = plot_table(table, args.out.with_name("channel_pruning_latency.png"))

    def run_variant(name: str, crit: str, widths: dict[str, int] | None = None) -> None:
        m = copy.deepcopy(base)
        pr = prune_(m, cfg.model_copy(update={"importance": crit}), (x1,), data=calib, widths=widths)
        row: dict[str, Any] = {"widths": {gi.name: gi.channels_after for gi in pr.groups}}
        row["acc_before_ft"] = top1(m, test_set)
        t = time.time()
        distill(m, base, ft_set, kd, progress=False)
        row["ft_s"] = time.time() - t
        m.eval()
        row["acc_after_ft"] = top1(m, test_set)
        row["macs"], row["params"] = cost(m)
        rows[name], models[name] = row, m
        print(f"  {name}: {row['acc_before_ft']:.4f} -> {row['acc_after_ft']:.4f} ({row['ft_s']:.0f} s FT)", flush=True)

    for crit in CRITERIA:
        run_variant(crit, crit)
    # latency-aware: same L1 ranking, widths from the table to meet the uniform-ratio L1 model's table latency
    uni = rows["l1"]["widths"]
    budget = sum(table.latency(gname, uni[gname]) if uni[gname] in table.entries[gname] else
                 table.latency(gname, table.channels[gname]) for gname in table.entries)
    rows["l1"]["table_estimate_ms"] = budget
    choice_d: dict[str, Any]
    try:
        # The table's additive estimate over-counts convs shared by two groups, so a table ratio is not a MAC or
        # end-to-end ratio: bisect the table target until the chosen widths reach the uniform L1 model's MACs,
        # then compare the two at (about) equal MACs.
        goal = rows["l1"]["macs"]
        lo, hi, choice = 0.02, 1.0, None
        for _ in range(10):
            mid = (lo + hi) / 2
            try:
                c = choose_widths(base, table, target_ratio=mid, min_width=16)
            except PruneError:
                lo = mid
                continue
            mm = copy.deepcopy(base)
            prune_(mm, ChannelPrune(ratio=0.0), (x1,), widths=c.widths)
            if cost(mm)[0] <= goal * 1.01:
                choice, lo = c, mid
            else:
                hi = mid
        if choice is None:
            raise PruneError("no table target reached the uniform model's MACs with widths >= 16")
        choice_d = {"widths": choice.widths, "table_target_ratio": lo, "estimate_ms": choice.estimated_ms,
                    "full_estimate_ms": choice.full_ms}
        run_variant("l1+latency", "l1", widths=choice.widths)
    except PruneError as e:  # the noisy table may not reach the budget with widths >= 16
        choice_d = {"error": str(e), "budget_ms": budget}
        print(f"  l1+latency skipped: {e}")

    # filter attenuation (PAPERS #38): L1 weak set attenuated during the same KD pass, then removed
    m = copy.deepcopy(base)
    steps = -(-n_ft // 64)
    beta = 1e-3 ** (1.0 / steps)  # weak filters reach 1e-3 of their size by the end if never re-ranked up
    att = FilterAttenuation(m, (x1,), ratio=args.ratio, beta=beta, round_to=8)
    t = time.time()
    distill(m, base, ft_set, kd, progress=False, callbacks=[att])
    att_row: dict[str, Any] = {"ft_s": time.time() - t, "beta": beta}
    m.eval()
    att_row["acc_before_prune"] = top1(m, test_set)
    att_row["returned_channels"] = sum(len(v) for v in att.returned.values())
    att_row["attenuated_ever"] = sum(len(v) for v in att.attenuated_ever.values())
    pr = att.prune()
    att_row["widths"] = {gi.name: gi.channels_after for gi in pr.groups}
    att_row["acc_before_ft"] = float("nan")
    att_row["acc_after_ft"] = top1(m, test_set)
    att_row["macs"], att_row["params"] = cost(m)
    rows["l1+attenuation"], models["l1+attenuation"] = att_row, m
    print(f"  l1+attenuation: {att_row['acc_before_prune']:.4f} before removal -> {att_row['acc_after_ft']:.4f}; "
          f"{att_row['returned_channels']} of {att_row['attenuated_ever']} attenuated channels came back", flush=True)

    # ORT latency, all variants interleaved in one run
    with tempfile.TemporaryDirectory() as tmp:
        calls = {k: latency.ort_callable(export_onnx(m, xb, Path(tmp) / f"{k}.onnx"), xb, threads=args.threads)
                 for k, m in models.items()}
        stats = latency.compare(calls, repeats=10 if args.quick else 20, warmup=3, pause_s=0.2, threads=args.threads)
    for k, st in stats.items():
        rows[k]["ort_ms_b64"] = st.median_ms
        rows[k]["ort_ratio"] = st.median_ms / stats["unpruned"].median_ms
        rows[k]["latency_samples_kept"] = st.n

    print(f"\nresnet-fmnist, ratio={args.ratio} round_to=8, 1-epoch KD on {n_ft} train images, test n={n_test}, "
          f"threads={args.threads}")
    print(f"{'variant':12s} {'acc pruned':>10s} {'acc +KD':>8s} {'MACs':>7s} {'params':>8s} {'ORT ratio':>9s}")
    for k, r in rows.items():
        print(f"{k:12s} {r['acc_before_ft']:10.4f} {r['acc_after_ft']:8.4f} {r['macs'] / base_macs:7.1%} "
              f"{r['params'] / base_params:8.1%} {r['ort_ratio']:9.3f}")
    nonmono = {gname: table.non_monotonic(gname) for gname in table.entries}
    print("non-monotonic widths in the ORT table (slower than a larger width):", nonmono)
    out = {
        "benchmark": "channel_pruning", "quick": args.quick, "ratio": args.ratio, "round_to": 8,
        "fine_tune": {"method": "HintonKD T=4 alpha=0.9, 1 epoch", "n_train": n_ft, "batch_size": 64, "lr": 0.01},
        "n_test": n_test, "calibration": "4 batches x 64 train images (disjoint from the FT subset)",
        "results": rows, "latency_table": table.to_dict(), "latency_table_s": table_s,
        "non_monotonic": nonmono, "latency_choice": choice_d,
        "plot": str(plot_path.name), "torch_pruning": "not installed; no comparison made",
        "latency_note": "ORT FP32 batch 64, interleaved in one run on a shared 2-core machine: ratios only",
        "threads": args.threads, "environment": latency.environment(), "wall_s": time.time() - t0,
    }
    atomic_write_json(args.out, out)
    print(f"wrote {args.out} ({time.time() - t0:.0f} s)")
    return out


if __name__ == "__main__":
    main()
