"""Performance-aware channel pruning (Radu et al. 2019, PAPERS #45): end-to-end latency model and budgets.

Run: ``python -m benchmarks.latency_model [--quick] [--threads 1,2]``  (one command; rerun it on a quiet
machine for trustworthy latency figures: every latency here is measured on whatever else the CPU is doing).

Three parts, all on this CPU:

1. **Width sweep** (the paper's headline): one 3x3 conv (128 input channels, 14x14, batch 1) with 1..256
   output channels, all widths timed interleaved in one ``bench.latency.compare`` run (PyTorch eager; ONNX
   Runtime too without ``--quick``). Reported: the non-monotonic widths (slower than some wider conv by more than
   10%, with the smaller width's p10 above the wider one's p90), and the worst slowdown caused by
   removing at most 12.5% of the channels (``lat(w) / lat(w')`` with ``w < w' <= w / 0.875``), counted only
   when it is clear of the timing noise (``p10(w) > p90(w')``). Plot ``latency_model_sweep.png``.
2. **End-to-end latency model**, per thread count: an ORT latency table of the trained ``resnet-fmnist``
   at batch 64 (``measure_table``), then ``fit_latency_model``: ``K`` random width assignments are
   physically pruned, timed end to end (interleaved) and ``ms = a + b * table sum`` is fitted on 75% of them;
   R^2 / MAPE / Spearman on the held-out 25% (and of the raw, uncalibrated table sum). Plot
   ``latency_model_fit.png``.
3. **Latency-aware vs FLOPs-proportional widths at the same budget** (50% of the unpruned model's latency),
   per thread count, all with L1 channel ranking:

   * ``latency-aware``: ``choose_widths(..., target_latency_ms=budget, latency_model=lm, min_width=8)``
     (greedy over frontier widths, importance lost per ms saved);
   * ``frontier-uniform``: FLOPs-proportional widths ``round(f * C)`` snapped down to the table frontier
     (``snap_widths``, 5% tolerance; the paper's "local minima"), largest ``f`` predicted to meet the budget;
   * ``uniform@latency``: FLOPs-proportional widths (``round_to=1``), the largest ``f`` of a grid whose
     *measured* latency meets the budget;
   * ``uniform@MACs``: FLOPs-proportional widths with the ``frontier-uniform`` model's MACs (latency at
     equal MACs).

   All variants are timed interleaved with the unpruned model, then get the SAME recovery (1 epoch of Hinton
   KD from the original, T=4, alpha=0.9) and test top-1.

Writes ``benchmarks/results/latency_model[_quick].json`` and the two plots next to it.
"""

from __future__ import annotations

import argparse
import copy
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

RESULTS = Path(__file__).resolve().parent / "results"
SLOWDOWN_FRACTION = 0.125  # "pruning 12% of channels can cause a 2x slowdown"


# ------------------------------------------------------------------------------------------------ part 1
def sweep(runtime: str, widths: list[int], repeats: int, threads: int, in_ch: int = 128, hw: int = 14,
          batch: int = 1, min_sample_s: float = 0.01) -> dict[str, Any]:
    """Time a 3x3 conv with ``in_ch`` inputs at every output width in ``widths``, interleaved."""
    from torchslim.bench import latency
    from torchslim.export import export_onnx

    torch.manual_seed(0)
    x = torch.randn(batch, in_ch, hw, hw)
    with tempfile.TemporaryDirectory() as tmp:
        calls = {}
        for w in widths:
            conv = nn.Conv2d(in_ch, w, 3, padding=1).eval()
            if runtime == "ort":
                path = export_onnx(conv, x, Path(tmp) / f"c{w}.onnx", dynamic_batch=False)
                calls[str(w)] = latency.ort_callable(path, x, threads=threads)
            else:
                calls[str(w)] = latency.torch_callable(conv, x)
        stats = latency.compare(calls, repeats=repeats, warmup=1, pause_s=0.0, threads=threads,
                                min_sample_s=min_sample_s)
    med = {w: stats[str(w)].median_ms for w in widths}
    p10 = {w: stats[str(w)].p10_ms for w in widths}
    p90 = {w: stats[str(w)].p90_ms for w in widths}
    # non-monotonic: slower than some wider conv, clear of the timing noise (p10 above the wider one's p90)
    # and by more than 10% (the median), so that load fluctuations between samples are not counted
    nonmono = [w for w in widths if any(p10[w] > p90[v] and med[w] > 1.1 * med[v] for v in widths if v > w)]
    # worst slowdown from removing <= 12.5% of the channels, clear of noise (p10 of the smaller > p90 of larger)
    worst: dict[str, Any] = {"ratio": 1.0}
    for wl in widths:
        for ws in widths:
            if ws < wl and (wl - ws) / wl <= SLOWDOWN_FRACTION + 1e-9 and p10[ws] > p90[wl]:
                r = med[ws] / med[wl]
                if r > worst["ratio"]:
                    worst = {"ratio": r, "from": wl, "to": ws, "removed": (wl - ws) / wl,
                             "ms_from": med[wl], "ms_to": med[ws]}
    full = widths[-1]
    near_full = [(med[w] / med[full], w) for w in widths
                 if (full - w) / full <= SLOWDOWN_FRACTION + 1e-9 and p10[w] > p90[full]]
    worst_full = max(near_full) if near_full else (1.0, full)
    return {"runtime": runtime, "threads": threads, "shape": [batch, in_ch, hw, hw], "median_ms": med,
            "p10_ms": p10, "p90_ms": p90, "non_monotonic": nonmono, "n_non_monotonic": len(nonmono),
            "worst_slowdown_le_12pct": worst,
            "worst_slowdown_from_full": {"ratio": worst_full[0], "to": worst_full[1]},
            "contaminated": sum(s.contaminated for s in stats.values())}


def plot_sweeps(sweeps: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(sweeps), figsize=(6.5 * len(sweeps), 4.2), squeeze=False)
    for ax, sw in zip(axes[0], sweeps, strict=True):
        ws = sorted(sw["median_ms"])
        ax.plot(ws, [sw["median_ms"][w] for w in ws], lw=1, label="median")
        ax.fill_between(ws, [sw["p10_ms"][w] for w in ws], [sw["p90_ms"][w] for w in ws], alpha=0.3,
                        label="p10-p90")
        bad = sw["non_monotonic"]
        ax.scatter(bad, [sw["median_ms"][w] for w in bad], marker="x", color="red", s=12,
                   label="slower than some wider conv")
        wst = sw["worst_slowdown_le_12pct"]
        if "from" in wst:
            ax.annotate(f"{wst['from']}->{wst['to']} ch: {wst['ratio']:.2f}x slower",
                        (wst["to"], wst["ms_to"]), xytext=(10, 20), textcoords="offset points",
                        arrowprops={"arrowstyle": "->"})
        ax.set_xlabel("output channels")
        ax.set_ylabel("ms per call")
        ax.set_title(f"conv3x3 {sw['shape']} -> w, {sw['runtime']}, {sw['threads']} thread(s)")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_fits(fits: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(fits), figsize=(5.0 * len(fits), 4.5), squeeze=False)
    for ax, (name, lm) in zip(axes[0], fits.items(), strict=True):
        for split, mk in (("fit", "o"), ("test", "s")):
            pts = [p for p in lm["points"] if p["split"] == split]
            ax.scatter([p["measured_ms"] for p in pts], [p["predicted_ms"] for p in pts], marker=mk, label=split)
        hi = max(max(p["measured_ms"], p["predicted_ms"]) for p in lm["points"]) * 1.05
        ax.plot([0, hi], [0, hi], "k--", lw=0.8)
        q = lm["fit_quality"].get("test", lm["fit_quality"]["fit"])
        ax.set_title(f"{name}: a={lm['a']:.2f}, b={lm['b']:.3f}\nheld-out R2={q['r2']:.3f} "
                     f"MAPE={q['mape']:.1%} rho={q['spearman']:.2f}", fontsize=9)
        ax.set_xlabel("measured end-to-end ms (ORT, batch 64)")
        ax.set_ylabel("predicted ms = a + b * table sum")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


# ------------------------------------------------------------------------------------------------ parts 2-3
def uniform_widths(channels: dict[str, int], f: float) -> dict[str, int]:
    """FLOPs-proportional widths: every group keeps ``round(f * C)`` channels (at least 1)."""
    return {g: max(1, round(f * c)) for g, c in channels.items()}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="coarser table, fewer repeats and samples (< 4 min)")
    ap.add_argument("--threads", default="1,2", help="comma-separated thread counts (default 1,2)")
    ap.add_argument("--budget", type=float, default=0.5, help="latency budget as a fraction of the unpruned")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    thread_counts = [int(t) for t in args.threads.split(",")]
    out_path = args.out or RESULTS / ("latency_model_quick.json" if args.quick else "latency_model.json")
    suffix = "_quick" if args.quick else ""
    torch.set_num_threads(1)

    from torchslim import data, zoo
    from torchslim.bench import latency
    from torchslim.bench.accuracy import top1
    from torchslim.core.cost import profile
    from torchslim.core.io import atomic_write_json
    from torchslim.distillation import HintonKD, distill
    from torchslim.export import export_onnx
    from torchslim.pruning import ChannelPrune, PruneError, prune_
    from torchslim.pruning.latency import choose_widths, fit_latency_model, measure_table, snap_widths
    from torchslim.train import TrainConfig

    t0 = time.time()
    latency.tune_malloc()
    q = args.quick
    step, k, reps = (16, 16, 5) if q else (8, 24, 9)
    n_ft, n_test = (2500, 2000) if q else (10000, 10000)

    # ---- part 1: width sweep of one conv
    sweeps = []
    for rt in ["torch"] if q else ["torch", "ort"]:
        ts = time.time()
        sw = sweep(rt, list(range(1, 257)), repeats=5 if q else 11, threads=1, min_sample_s=0.004 if q else 0.01)
        sw["wall_s"] = time.time() - ts
        sweeps.append(sw)
        wst = sw["worst_slowdown_le_12pct"]
        print(f"sweep {rt}: {sw['n_non_monotonic']} of 256 widths slower than a wider conv; worst slowdown from "
              f"removing <= 12.5% of channels: {wst['ratio']:.2f}x "
              f"({wst.get('from')} -> {wst.get('to')} channels) [{sw['wall_s']:.0f} s]", flush=True)
    sweep_png = out_path.with_name(f"latency_model_sweep{suffix}.png")
    plot_sweeps(sweeps, sweep_png)

    # ---- parts 2 and 3
    base = zoo.load("resnet-fmnist", progress=False).eval()
    train, test = data.fashion_mnist("train"), data.fashion_mnist("test")
    g = torch.Generator().manual_seed(0)
    ft_idx = torch.randperm(len(train), generator=g)[:n_ft]
    ft_set = torch.utils.data.TensorDataset(train.images[ft_idx], train.labels[ft_idx])
    test_set = torch.utils.data.TensorDataset(test.images[:n_test], test.labels[:n_test])
    xb, x1 = test.images[:64], test.images[:1]
    kd = HintonKD(temperature=4.0, alpha=0.9,
                  train=TrainConfig(epochs=1, lr=0.01, schedule="cosine", batch_size=64, seed=0))
    base_macs = profile(base, (x1,)).macs
    base_acc = top1(base, test_set)

    def pruned(widths: dict[str, int]) -> nn.Module:
        m = copy.deepcopy(base)
        prune_(m, ChannelPrune(ratio=0.0), (x1,), widths=widths)
        return m.eval()

    per_threads: dict[str, Any] = {}
    fits: dict[str, Any] = {}
    ft_cache: dict[tuple[tuple[str, int], ...], dict[str, float]] = {}
    for th in thread_counts:
        res: dict[str, Any] = {}
        ts = time.time()
        table = measure_table(base, (xb,), runtime="ort", step=step, repeats=reps, threads=th, min_sample_s=0.02)
        res["table_s"] = time.time() - ts
        ts = time.time()
        lm = fit_latency_model(base, table, (xb,), k=k, repeats=reps, seed=th, min_width=8)
        res["fit_s"] = time.time() - ts
        res["latency_model"] = lm.to_dict()
        res["latency_table"] = table.to_dict()
        fits[f"{th} thread(s)"] = lm.to_dict()
        tq, rq = lm.fit_quality["test"], lm.fit_quality["raw_sum"]
        print(f"threads={th}: ms = {lm.a:.2f} + {lm.b:.3f} * table sum; held-out R2 {tq['r2']:.3f} MAPE "
              f"{tq['mape']:.1%} Spearman {tq['spearman']:.2f} (raw sum: MAPE {rq['mape']:.1%}) "
              f"[table {res['table_s']:.0f} s, fit {res['fit_s']:.0f} s]", flush=True)

        # measured unpruned latency and uniform grid, interleaved
        grid = [round(0.30 + 0.1 * i, 2) for i in range(7)] if q else [round(0.30 + 0.05 * i, 2) for i in range(14)]
        full_pred = lm.predict(table, {})
        budget_pred = args.budget * full_pred
        try:
            choice = choose_widths(base, table, target_latency_ms=budget_pred, latency_model=lm, min_width=8)
            aware_w: dict[str, int] | None = choice.widths
        except PruneError as e:
            print(f"  latency-aware choice failed: {e}")
            aware_w = None
        # frontier-uniform: FLOPs-proportional widths snapped down to the table frontier (local minima), with
        # the largest f whose predicted end-to-end latency meets the budget
        snap_f = max((f / 100 for f in range(10, 101) if lm.predict(
            table, snap_widths(table, uniform_widths(table.channels, f / 100), min_width=8, rel_tol=0.05)) <= budget_pred),
            default=None)
        variants: dict[str, dict[str, int]] = {"unpruned": dict(table.channels)}
        if aware_w is not None:
            variants["latency-aware"] = aware_w
        if snap_f is not None:
            variants["frontier-uniform"] = snap_widths(table, uniform_widths(table.channels, snap_f), min_width=8,
                                                      rel_tol=0.05)
        for f in grid:
            variants[f"uniform f={f:.2f}"] = uniform_widths(table.channels, f)
        models = {name: (base if name == "unpruned" else pruned(w)) for name, w in variants.items()}
        with tempfile.TemporaryDirectory() as tmp:
            calls = {name: latency.ort_callable(export_onnx(m, xb, Path(tmp) / f"v{i}.onnx", dynamic_batch=False),
                                                xb, threads=th) for i, (name, m) in enumerate(models.items())}
            stats = latency.compare(calls, repeats=reps, warmup=2, pause_s=0.0, threads=th, min_sample_s=0.05)
        full_ms = stats["unpruned"].median_ms
        budget = args.budget * full_ms
        macs = {name: profile(m, (x1,)).macs for name, m in models.items()}
        grid_ratio = {f: stats[f"uniform f={f:.2f}"].median_ms / full_ms for f in grid}
        near = [f for f in grid if f >= 1 - SLOWDOWN_FRACTION - 1e-9]
        if near:  # end-to-end version of the headline: a few percent of channels removed, odd widths
            fw = max(near, key=lambda f: grid_ratio[f])
            print(f"  uniform f={fw:.2f} ({100 * (1 - fw):.0f}% of channels removed): {grid_ratio[fw]:.2f}x the "
                  f"unpruned latency", flush=True)
        meets = [f for f in grid if stats[f"uniform f={f:.2f}"].median_ms <= budget]
        chosen: dict[str, str] = {}
        if meets:
            chosen["uniform@latency"] = f"uniform f={max(meets):.2f}"
        if aware_w is not None:
            chosen["latency-aware"] = "latency-aware"
        if snap_f is not None:
            chosen["frontier-uniform"] = "frontier-uniform"
        ref = "frontier-uniform" if snap_f is not None else ("latency-aware" if aware_w is not None else None)
        if ref is not None:  # FLOPs-proportional widths with the same MACs as the latency-aware model
            lo, hi = 1, 100  # largest percent f with MACs <= the reference's (+2%); MACs grow with f
            while lo < hi:
                mid = (lo + hi + 1) // 2
                if profile(pruned(uniform_widths(table.channels, mid / 100)), (x1,)).macs <= macs[ref] * 1.02:
                    lo = mid
                else:
                    hi = mid - 1
            fm = lo / 100
            models[f"uniform f={fm:.2f}"] = pruned(uniform_widths(table.channels, fm))
            variants[f"uniform f={fm:.2f}"] = uniform_widths(table.channels, fm)
            macs[f"uniform f={fm:.2f}"] = profile(models[f"uniform f={fm:.2f}"], (x1,)).macs
            chosen["uniform@MACs"] = f"uniform f={fm:.2f}"
        # final interleaved timing of the chosen variants (more repeats) + same fine-tune
        sel = {"unpruned": models["unpruned"], **{k_: models[v] for k_, v in chosen.items()}}
        with tempfile.TemporaryDirectory() as tmp:
            calls = {name: latency.ort_callable(export_onnx(m, xb, Path(tmp) / f"s{i}.onnx", dynamic_batch=False),
                                                xb, threads=th) for i, (name, m) in enumerate(sel.items())}
            final = latency.compare(calls, repeats=2 * reps + 1, warmup=2, pause_s=0.1, threads=th,
                                    min_sample_s=0.05)
        rows: dict[str, Any] = {}
        for name, m in sel.items():
            row: dict[str, Any] = {"variant": chosen.get(name, name), "widths": variants[chosen.get(name, name)],
                                   "macs_ratio": macs[chosen.get(name, name)] / base_macs,
                                   "ort_ms": final[name].median_ms,
                                   "ort_ratio": final[name].median_ms / final["unpruned"].median_ms,
                                   "predicted_ms": lm.predict(table, {g_: w for g_, w in
                                                                      variants[chosen.get(name, name)].items()})
                                   if all(w in table.entries[g_] for g_, w in
                                          variants[chosen.get(name, name)].items()) else None,
                                   "contaminated": final[name].contaminated}
            wkey = tuple(sorted(row["widths"].items()))
            if name == "unpruned":
                row["acc_after_ft"] = base_acc
            elif wkey in ft_cache:  # same widths at another thread count: same (deterministic) fine-tune
                row.update(ft_cache[wkey])
            else:
                mm = copy.deepcopy(m).train()
                acc0 = top1(mm.eval(), test_set)
                tf = time.time()
                distill(mm, base, ft_set, kd, progress=False)
                ft_cache[wkey] = {"acc_before_ft": acc0, "ft_s": time.time() - tf,
                                  "acc_after_ft": top1(mm.eval(), test_set)}
                row.update(ft_cache[wkey])
            rows[name] = row
            print(f"  {name:16s} {row['variant']:16s} MACs {row['macs_ratio']:6.1%} ORT {row['ort_ms']:7.2f} ms "
                  f"(x{row['ort_ratio']:.3f})  top-1 {row['acc_after_ft']:.4f}", flush=True)
        res.update({
            "budget_fraction": args.budget, "budget_predicted_ms": budget_pred, "full_predicted_ms": full_pred,
            "grid_measured_ms": {n: s.median_ms for n, s in stats.items()},
            "grid_macs_ratio": {n: v / base_macs for n, v in macs.items()},
            "grid_full_ms": full_ms, "budget_measured_ms": budget,
            "grid_ratio_to_unpruned": {f"{f:.2f}": r for f, r in grid_ratio.items()},
            "aware_choice": None if aware_w is None else {"widths": aware_w, "predicted_ms": choice.predicted_ms},
            "aware_measured_in_grid_ms": stats["latency-aware"].median_ms if aware_w is not None else None,
            "frontier_uniform_f": snap_f,
            "rows": rows,
        })
        per_threads[str(th)] = res

    fit_png = out_path.with_name(f"latency_model_fit{suffix}.png")
    plot_fits(fits, fit_png)

    print(f"\nresnet-fmnist, ORT FP32 batch 64, budget {args.budget:.0%} of the measured unpruned latency; "
          f"1-epoch KD on {n_ft} images, test n={n_test} (unpruned {base_acc:.4f})")
    print(f"{'threads':>7s} {'variant':16s} {'widths':44s} {'MACs':>6s} {'ORT ratio':>9s} {'top-1':>7s}")
    for th_name, res in per_threads.items():
        for name, r in res["rows"].items():
            ws = "/".join(str(w) for w in r["widths"].values())
            print(f"{th_name:>7s} {name:16s} {ws:44s} {r['macs_ratio']:6.1%} {r['ort_ratio']:9.3f} "
                  f"{r['acc_after_ft']:7.4f}")
    out = {
        "benchmark": "latency_model", "quick": q, "threads": thread_counts, "step": step, "k": k, "repeats": reps,
        "sweeps": sweeps, "per_threads": per_threads,
        "fine_tune": {"method": "HintonKD T=4 alpha=0.9, 1 epoch", "n_train": n_ft, "batch_size": 64, "lr": 0.01},
        "n_test": n_test, "unpruned_acc": base_acc,
        "plots": [sweep_png.name, fit_png.name],
        "latency_note": "measured on a possibly shared machine; rerun `python -m benchmarks.latency_model` on a "
                        "quiet machine for the published figures (ratios from interleaved runs only)",
        "environment": latency.environment(), "wall_s": time.time() - t0,
    }
    atomic_write_json(out_path, out)
    print(f"wrote {out_path} ({time.time() - t0:.0f} s)")
    return out


if __name__ == "__main__":
    main()
