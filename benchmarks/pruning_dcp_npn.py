"""DCP (discrimination-aware channel pruning) and NPN (network pruning network) on digits.

Run: ``python -m benchmarks.pruning_dcp_npn [--quick] [--threads N] [--part digits|resnet]``

Data: scikit-learn's 8x8 digits, the fixed 1,397 / 400 split of ``benchmarks.pruning_methods``. The target
is the digits CNN of that benchmark (32-64-64 channels, conv-BN-ReLU x3, pool, Linear) trained with
cross-entropy. Every accuracy is test top-1, mean over fine-tuning seeds; every pruned model gets the SAME
fine-tuning (epochs, LR, cosine schedule, data); only the seed changes.

Part 1, DCP (PAPERS #28), 50% of the channels of every layer (widths 16/32/32):

* ``dcp``: auxiliary-loss fine-tuning for ``aux_epochs``, then greedy selection by the gradient norm of
  (reconstruction MSE + auxiliary CE), weights of the kept channels re-optimised;
* ``recon_only``: the same greedy selection and re-optimisation with the auxiliary term off (ThiNet-like);
* ``l1``: L1-norm filter pruning (``ChannelPrune(ratio=0.5, importance="l1")``);
* ``dcp_adaptive``: DCP with the adaptive stopping rule instead of a fixed width (its own MACs);
* ``dkp``: discrimination-aware KERNEL pruning (same aux fine-tuning and losses; greedy selection of
  ``kh x kw`` kernels), at DCP's per-conv kernel counts (conv 0: 50%, convs 3 and 6: 75% of the kernels
  removed), i.e. the same kernel-sparse MACs; masks persist through fine-tuning;
* ``l1_kernel``: the kernels with the largest L1 norm at the same per-conv counts (magnitude baseline,
  pruned after the extra CE epochs like ``l1``).

Kernel sparsity is the fraction of the three convs' kernels (of the unpruned target) that are zero or
removed; ``kernel_sparse_macs`` counts a conv at its nonzero-kernel fraction (what a kernel-sparse
implementation would run). The dense and DKP models are timed in PyTorch at batch 64 (interleaved): a
dense runtime gets no speed-up from zero kernels.

To give every method the same training compute, ``recon_only`` and ``l1`` prune the target after
``aux_epochs`` more epochs of plain cross-entropy training (DCP spends them on the auxiliary fine-tuning).

Part 2, NPN (PAPERS #32): a sweep of the gate-sparsity weight lambda. For each lambda: pruner training on
the frozen target, one-shot removal of the filters whose mean gate < 0.5, fine-tuning; and uniform L1
pruning at matched MACs (the largest uniform ratio at or below NPN's MACs, by bisection) with the same
fine-tuning. Reported: MACs vs accuracy (monotone?), NPN - L1 at matched MACs, learned per-layer ratios.
The sweep is run twice: with the plain (uniform) gate penalty, and with each gate weighted by the MACs its
filter costs (``NPNConfig(penalty="macs")``, an extension that is not in the paper).

Latency only for the dense-vs-kernel-sparse check. Writes ``benchmarks/results/pruning_dcp_npn.json`` (``..._quick.json`` with --quick).

``--part resnet`` (run separately: ``python -m benchmarks.pruning_dcp_npn --part resnet [--quick]``): DCP on
the trained zoo ``resnet-fmnist`` (Fashion-MNIST, widths 32/64/128) at ~50% of the MACs INCLUDING the
residual streams (groups with several consumers get one shared channel subset, summed reconstruction
losses), vs uniform L1 filter pruning at the same MACs (the smallest uniform ratio at or below DCP's MACs),
both with the same short fine-tuning (1 epoch on a training subset, LR 0.01 cosine), and the reconstruction-only
selection (``aux_weight=0``, same streams). L1 and reconstruction-only prune the target after one CE epoch on
the same subset (the epoch DCP spends on its auxiliary fine-tuning). PyTorch latency at
batch 64 (interleaved; re-measure on a quiet machine). Writes ``benchmarks/results/pruning_dcp_npn_resnet.json``
(``..._resnet_quick.json``).
"""

from __future__ import annotations

import argparse
import copy
import time
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn
from torch.utils.data import TensorDataset

from benchmarks.pruning_methods import _mean, cnn, digits_split, uniform_l1_at

RESULTS = Path(__file__).resolve().parent / "results" / "pruning_dcp_npn.json"


def finetune_accs(m: nn.Module, train: TensorDataset, test: TensorDataset, seeds: list[int], ft: Any,
                  ) -> list[float]:
    """Test accuracy after fine-tuning a copy of ``m`` once per seed with the same schedule ``ft``."""
    from torchslim.bench.accuracy import top1
    from torchslim.train import Trainer

    accs = []
    for s in seeds:
        mm = copy.deepcopy(m)
        Trainer(mm, ft.model_copy(update={"seed": s}), progress=False).fit(train)
        accs.append(top1(mm.eval(), test))
    return accs


def _widths(m: nn.Module) -> list[int]:
    return [int(getattr(m.get_submodule(str(i)), "out_channels")) for i in (0, 3, 6)]  # noqa: B009


def part_dcp(base: nn.Module, train: TensorDataset, test: TensorDataset, seeds: list[int], aux_epochs: int,
             ft: Any) -> dict[str, Any]:
    from torchslim.bench.accuracy import top1
    from torchslim.core.cost import profile
    from torchslim.pruning import ChannelPrune, prune_
    from torchslim.pruning.dcp import (
        DCPConfig,
        DKPConfig,
        DKPResult,
        apply_kernel_masks_,
        dcp_prune_,
        dkp_prune_,
        kernel_sparse_macs,
    )
    from torchslim.train import TrainConfig, Trainer

    x1 = train.tensors[0][:1]
    extra = TrainConfig(epochs=aux_epochs, batch_size=64, lr=0.01, schedule="cosine", seed=0)
    base_plus = copy.deepcopy(base)
    Trainer(base_plus, extra, progress=False).fit(train)
    base_plus.eval()
    pruned: dict[str, tuple[nn.Module, float, Any]] = {}
    t = time.time()
    m = copy.deepcopy(base)
    r = dcp_prune_(m, DCPConfig(ratio=0.5, aux_weight=1.0, aux_train=extra), train, (x1,))
    pruned["dcp"] = (m, time.time() - t, r)
    t = time.time()
    m = copy.deepcopy(base_plus)
    r = dcp_prune_(m, DCPConfig(ratio=0.5, aux_weight=0.0), train, (x1,))
    pruned["recon_only"] = (m, time.time() - t, r)
    t = time.time()
    m = copy.deepcopy(base_plus)
    prune_(m, ChannelPrune(ratio=0.5, importance="l1"), (x1,))
    pruned["l1"] = (m, time.time() - t, None)
    t = time.time()
    m = copy.deepcopy(base)
    r = dcp_prune_(m, DCPConfig(ratio=0.0, stop="adaptive", tol=0.002, aux_weight=1.0, aux_train=extra),
                   train, (x1,))
    pruned["dcp_adaptive"] = (m, time.time() - t, r)
    # DKP (kernel level) and L1 kernel magnitude at DCP's per-conv kernel counts (matched kernel-sparse MACs)
    dcp_m = pruned["dcp"][0]
    ratios = {p: 1.0 - _kernels(dcp_m, p) / _kernels(base, p) for p in ("0", "3", "6")}
    t = time.time()
    m = copy.deepcopy(base)
    rk = dkp_prune_(m, DKPConfig(layer_ratios=ratios, aux_weight=1.0, aux_train=extra), train, (x1,))
    pruned["dkp"] = (m, time.time() - t, rk)
    t = time.time()
    m = copy.deepcopy(base_plus)
    apply_kernel_masks_(m, l1_kernel_masks(m, ratios))
    pruned["l1_kernel"] = (m, time.time() - t, None)
    out: dict[str, Any] = {"base_plus_acc": top1(base_plus, test), "rows": {}, "dkp_layer_ratios": ratios}
    for name, (m, secs, r) in pruned.items():
        m.eval()
        accs = finetune_accs(m, train, test, seeds, ft)
        dense, sparse = kernel_sparse_macs(m, (x1,))
        row: dict[str, Any] = {"macs": profile(m, (x1,)).macs, "kernel_sparse_macs": sparse, "widths": _widths(m),
                               "kernel_sparsity": 1.0 - sum(_nz_kernels(m, p) for p in ("0", "3", "6"))
                               / sum(_kernels(base, p) for p in ("0", "3", "6")),
                               "acc_before_ft": top1(m, test), "acc_ft": _mean(accs), "acc_ft_seeds": accs,
                               "select_s": secs}
        if isinstance(r, DKPResult):
            row["stopped"] = {p: sel.stopped for p, sel in r.layers.items()}
            row["loss_curve_first_layer"] = [round(v, 5) for v in next(iter(r.layers.values())).losses]
        elif r is not None:
            row["stopped"] = {g: sel.stopped for g, (_, sel) in r.layers.items()}
            row["loss_curve_first_layer"] = [round(v, 5) for v in next(iter(r.layers.values()))[1].losses]
        out["rows"][name] = row
    out["latency_dense_vs_kernel_sparse"] = _latency_dense_vs_sparse(base, pruned["dkp"][0], train.tensors[0][:64])
    return out


def _kernels(m: nn.Module, path: str) -> int:
    conv = m.get_submodule(path)
    assert isinstance(conv, nn.Conv2d)
    return conv.out_channels * conv.in_channels


def _nz_kernels(m: nn.Module, path: str) -> int:
    w = m.get_submodule(path).weight
    assert isinstance(w, torch.Tensor)
    return int((w.detach().abs().sum(dim=(2, 3)) > 0).sum())


def l1_kernel_masks(m: nn.Module, ratios: dict[str, float]) -> dict[str, torch.Tensor]:
    """Per conv, keep the ``n_keep(out * in, ratio)`` kernels with the largest L1 norm (magnitude baseline)."""
    from torchslim.pruning.importance import n_keep

    masks = {}
    for path, ratio in ratios.items():
        w = m.get_submodule(path).weight
        assert isinstance(w, torch.Tensor)
        norms = w.detach().abs().sum(dim=(2, 3)).reshape(-1)
        keep = torch.zeros_like(norms, dtype=torch.bool)
        keep[torch.topk(norms, n_keep(norms.numel(), ratio)).indices] = True
        masks[path] = keep.view(w.shape[0], w.shape[1])
    return masks


def _latency_dense_vs_sparse(base: nn.Module, dkp: nn.Module, x: torch.Tensor) -> dict[str, Any]:
    """PyTorch latency at batch 64 of the dense target vs the DKP model (same shapes, zero kernels),
    interleaved. Expect a ratio of ~1: a dense runtime does not skip zero kernels."""
    from torchslim.bench.latency import compare, torch_callable
    from torchslim.pruning.dcp import remove_kernel_masks_

    plain = copy.deepcopy(dkp).eval()
    remove_kernel_masks_(plain)
    st = compare({"dense": torch_callable(base.eval(), x), "dkp_kernel_sparse": torch_callable(plain, x)},
                 repeats=10, warmup=2)
    d, k = st["dense"].median_ms, st["dkp_kernel_sparse"].median_ms
    return {"batch": int(x.shape[0]), "dense_ms": d, "dkp_ms": k, "ratio_dkp_over_dense": k / d,
            "note": "measured on a busy machine; ratio from interleaved runs"}


def part_npn(base: nn.Module, train: TensorDataset, test: TensorDataset, seeds: list[int], lambdas: list[float],
             ft: Any, npn_epochs: int, penalty: Literal["uniform", "macs"] = "uniform") -> dict[str, Any]:
    from torchslim.bench.accuracy import top1
    from torchslim.core.cost import profile
    from torchslim.pruning.npn import NPNConfig, npn_prune_
    from torchslim.train import TrainConfig

    x1 = train.tensors[0][:1]
    rows: list[dict[str, Any]] = []
    for lam in lambdas:
        m = copy.deepcopy(base)
        t = time.time()
        cfg = NPNConfig(sparsity=lam, penalty=penalty, train=TrainConfig(epochs=npn_epochs, batch_size=64, lr=0.01, optimizer="adamw",
                                                        weight_decay=0.0, schedule="cosine", seed=0))
        r = npn_prune_(m, cfg, train, (x1,))
        secs = time.time() - t
        m.eval()
        macs = profile(m, (x1,)).macs
        acc = finetune_accs(m, train, test, seeds, ft)
        l1, ratio, _ = uniform_l1_at(base, macs, x1)
        l1_macs = profile(l1, (x1,)).macs
        l1_acc = finetune_accs(l1.eval(), train, test, seeds, ft)
        rows.append({
            "lambda": lam, "macs": macs, "widths": _widths(m), "ratios_kept": {k: round(v, 4) for k, v in r.ratios.items()},
            "acc_before_ft": top1(m, test), "acc_ft": _mean(acc), "acc_ft_seeds": acc, "train_s": secs,
            "l1_uniform_ratio": ratio, "l1_macs": l1_macs, "l1_widths": _widths(l1), "l1_acc_ft": _mean(l1_acc),
            "l1_acc_ft_seeds": l1_acc,
        })
    macs_seq = [int(r["macs"]) for r in rows]
    acc_seq = [float(r["acc_ft"]) for r in rows]
    return {
        "rows": rows,
        "macs_monotone": all(a >= b for a, b in zip(macs_seq, macs_seq[1:], strict=False)),
        "acc_monotone": all(a >= b for a, b in zip(acc_seq, acc_seq[1:], strict=False)),
        "npn_minus_l1": [float(r["acc_ft"]) - float(r["l1_acc_ft"]) for r in rows],
    }


RESNET_GROUPS = ("stem.0", "layer1.0.conv1", "layer2.0.conv1", "layer2.0.conv2", "layer3.0.conv1", "layer3.0.conv2",
                 "layer3.1.conv1")


def _resnet_widths(m: nn.Module) -> dict[str, int]:
    """Output channels of each dependency group's first producer (stream groups: stem.0, layer2.0.conv2,
    layer3.0.conv2; the others are the inner widths of the blocks)."""
    return {p: int(getattr(m.get_submodule(p), "out_channels")) for p in RESNET_GROUPS}  # noqa: B009


def part_resnet(quick: bool) -> dict[str, Any]:
    """DCP with residual-stream selection vs uniform L1 at the same MACs on the zoo resnet-fmnist."""
    from torchslim import zoo
    from torchslim.bench.accuracy import top1
    from torchslim.bench.latency import compare, torch_callable
    from torchslim.core.cost import profile
    from torchslim.data import fashion_mnist
    from torchslim.pruning.dcp import DCPConfig, dcp_prune_
    from torchslim.train import TrainConfig, Trainer

    n_train, n_test = (4000, 5000) if quick else (12000, 10000)
    seeds = [0] if quick else [0, 1]
    ratio = 0.3  # of every group's channels, streams included: ~50% of the MACs (MACs ~ width^2)
    tr, te = fashion_mnist("train", fallback=False), fashion_mnist("test", fallback=False)
    perm = torch.randperm(len(tr.labels), generator=torch.Generator().manual_seed(0))[:n_train]
    train = TensorDataset(tr.images[perm], tr.labels[perm])
    test = TensorDataset(te.images[:n_test], te.labels[:n_test])
    base = zoo.load("resnet-fmnist", progress=False).eval()
    torch.manual_seed(0)  # the auxiliary heads are initialised from the global generator
    x1 = train.tensors[0][:1]
    base_macs = profile(base, (x1,)).macs
    extra = TrainConfig(epochs=1, batch_size=128, lr=0.01, schedule="cosine", seed=0)
    ft = TrainConfig(epochs=1, batch_size=128, lr=0.01, schedule="cosine")
    cfg = DCPConfig(ratio=ratio, aux_weight=1.0, aux_train=extra, calib_samples=128 if quick else 256,
                    steps_per_channel=2 if quick else 3, final_steps=20 if quick else 40)
    out: dict[str, Any] = {"n_train_subset": n_train, "n_test": n_test, "seeds": seeds, "ratio": ratio,
                           "base_acc": top1(base, test), "base_macs": base_macs, "base_widths": _resnet_widths(base),
                           "dcp_config": cfg.to_dict(), "finetune": ft.to_dict(), "rows": {}}
    t = time.time()
    dcp_m = copy.deepcopy(base)
    r = dcp_prune_(dcp_m, cfg, train, (x1,))
    dcp_s = time.time() - t
    dcp_macs = profile(dcp_m, (x1,)).macs
    out["dcp_groups"] = {g: {"consumers": list(c), "kept": r.widths[g], "stopped": sel.stopped}
                         for g, (c, sel) in r.layers.items()}
    out["dcp_skipped"] = [list(s_) for s_ in r.skipped]
    t = time.time()
    base_plus = copy.deepcopy(base)
    Trainer(base_plus, extra, progress=False).fit(train)
    base_plus.eval()
    l1_m, l1_ratio, _ = uniform_l1_at(base_plus, dcp_macs, x1)
    l1_s = time.time() - t
    out["l1_uniform_ratio"] = l1_ratio
    t = time.time()
    rec_m = copy.deepcopy(base_plus)
    dcp_prune_(rec_m, cfg.model_copy(update={"aux_weight": 0.0}), train, (x1,))
    rec_s = time.time() - t
    for name, m, secs in (("dcp", dcp_m, dcp_s), ("recon_only", rec_m, rec_s), ("l1_uniform", l1_m, l1_s)):
        m.eval()
        accs = finetune_accs(m, train, test, seeds, ft)
        macs = profile(m, (x1,)).macs
        out["rows"][name] = {"macs": macs, "macs_ratio": macs / base_macs, "widths": _resnet_widths(m),
                             "acc_before_ft": top1(m, test), "acc_ft": _mean(accs), "acc_ft_seeds": accs,
                             "select_s": secs}
    xb = train.tensors[0][:64]
    st = compare({"base": torch_callable(base, xb), "dcp": torch_callable(dcp_m, xb),
                  "l1_uniform": torch_callable(l1_m, xb)}, repeats=10, warmup=2)  # same widths: same speed
    out["latency_torch_b64"] = {k: v.median_ms for k, v in st.items()}
    out["latency_note"] = "PyTorch, batch 64, interleaved, busy machine: re-measure on a quiet machine"
    return out


def print_resnet(o: dict[str, Any]) -> None:
    print(f"\nresnet-fmnist {o['base_widths']} (base {o['base_acc']:.4f} top-1 on {o['n_test']} test images, "
          f"{o['base_macs']:,} MACs); ratio {o['ratio']} of every group incl. residual streams; "
          f"fine-tuning 1 epoch on {o['n_train_subset']} images x {len(o['seeds'])} seed(s)")
    print(f"{'method':<12}{'MACs':>12}{'ratio':>7}{'no FT':>8}{'FT':>8}  widths")
    for name, r in o["rows"].items():
        print(f"{name:<12}{r['macs']:>12,}{r['macs_ratio']:>7.3f}{r['acc_before_ft']:>8.4f}{r['acc_ft']:>8.4f}  "
              f"{list(r['widths'].values())}")
    lat = o["latency_torch_b64"]
    print("PyTorch batch 64 (busy machine): " + ", ".join(f"{k} {v:.2f} ms" for k, v in lat.items()))
    print("DCP groups: " + "; ".join(f"{g} -> {v['consumers']}: {v['kept']}" for g, v in o["dcp_groups"].items()))


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer seeds, epochs and lambdas (< 4 min at 1 thread)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--part", choices=("digits", "resnet"), default="digits",
                    help="digits: DCP/DKP + NPN on the digits CNN (default); resnet: DCP with residual streams "
                         "on the zoo resnet-fmnist vs uniform L1")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.part == "resnet":
        from torchslim.core.io import atomic_write_json as _write

        t0 = time.time()
        res = part_resnet(args.quick)
        res.update({"quick": args.quick, "threads": args.threads, "wall_seconds": time.time() - t0})
        path = args.out or RESULTS.with_name("pruning_dcp_npn_resnet" + ("_quick" if args.quick else "") + ".json")
        _write(path, res)
        print_resnet(res)
        print(f"wall {res['wall_seconds']:.0f} s -> {path}")
        return res
    from torchslim.bench.accuracy import top1
    from torchslim.core.cost import profile
    from torchslim.core.io import atomic_write_json
    from torchslim.train import TrainConfig, Trainer

    t0 = time.time()
    train, test = digits_split()
    seeds = [0, 1] if args.quick else [0, 1, 2]
    epochs = 10 if args.quick else 20
    ft = TrainConfig(epochs=3 if args.quick else 5, batch_size=64, lr=0.01, schedule="cosine")
    lambdas = [0.05, 0.1, 0.2, 0.4] if args.quick else [0.025, 0.05, 0.1, 0.2, 0.4, 0.8]
    lambdas_macs = [0.1, 0.2, 0.4, 0.8] if args.quick else [0.1, 0.2, 0.4, 0.8, 1.6]
    torch.manual_seed(0)
    base = cnn((32, 64, 64))
    Trainer(base, TrainConfig(epochs=epochs, batch_size=64, lr=0.05, seed=0), progress=False).fit(train)
    base.eval()
    x1 = train.tensors[0][:1]
    out: dict[str, Any] = {"quick": args.quick, "threads": args.threads, "seeds": seeds,
                           "base_acc": top1(base, test), "base_macs": profile(base, (x1,)).macs,
                           "ft_epochs": ft.epochs, "train_epochs": epochs}
    t = time.time()
    out["dcp"] = part_dcp(base, train, test, seeds, aux_epochs=2, ft=ft)
    out["dcp"]["wall_s"] = time.time() - t
    print(f"dcp done ({out['dcp']['wall_s']:.0f} s)", flush=True)
    sweeps: list[tuple[str, Literal["uniform", "macs"], list[float]]] = [
        ("npn", "uniform", lambdas), ("npn_macs", "macs", lambdas_macs)]
    for key, pen, lams in sweeps:
        t = time.time()
        out[key] = part_npn(base, train, test, seeds, lams, ft, npn_epochs=3, penalty=pen)
        out[key]["wall_s"] = time.time() - t
        print(f"{key} done ({out[key]['wall_s']:.0f} s)", flush=True)
    out["wall_seconds"] = time.time() - t0
    if args.out is None:
        args.out = RESULTS.with_name("pruning_dcp_npn_quick.json") if args.quick else RESULTS
    atomic_write_json(args.out, out)

    print(f"\ndigits CNN 32-64-64: {out['base_acc']:.4f} top-1, {out['base_macs']:,} MACs; "
          f"fine-tuning {ft.epochs} epochs x {len(seeds)} seeds")
    d = out["dcp"]
    print(f"\nDCP at 50% channels (recon_only / l1 prune the target + 2 CE epochs: {d['base_plus_acc']:.4f})")
    print(f"{'method':<14}{'widths':>14}{'MACs':>10}{'sparse MACs':>12}{'kern.sp.':>9}{'no FT':>8}{'FT':>8}  seeds")
    for name, r in d["rows"].items():
        print(f"{name:<14}{str(r['widths']):>14}{r['macs']:>10,}{r['kernel_sparse_macs']:>12,}"
              f"{r['kernel_sparsity']:>9.3f}{r['acc_before_ft']:>8.4f}{r['acc_ft']:>8.4f}  "
              f"{[round(a, 4) for a in r['acc_ft_seeds']]}")
    lat = d["latency_dense_vs_kernel_sparse"]
    print(f"PyTorch batch {lat['batch']}: dense {lat['dense_ms']:.3f} ms, DKP (zero kernels, dense conv) "
          f"{lat['dkp_ms']:.3f} ms, ratio {lat['ratio_dkp_over_dense']:.2f}")
    for key, title in (("npn", "uniform gate penalty"), ("npn_macs", "MACs-weighted gate penalty (extension)")):
        n = out[key]
        print(f"\nNPN lambda sweep, {title}, vs uniform L1 at matched MACs (widths = learned per-layer counts)")
        print(f"{'lambda':>7}{'widths':>14}{'MACs':>10}{'no FT':>8}{'NPN FT':>8}{'L1 widths':>14}{'L1 MACs':>10}"
              f"{'L1 FT':>8}")
        for r in n["rows"]:
            print(f"{r['lambda']:>7}{str(r['widths']):>14}{r['macs']:>10,}{r['acc_before_ft']:>8.4f}"
                  f"{r['acc_ft']:>8.4f}{str(r['l1_widths']):>14}{r['l1_macs']:>10,}{r['l1_acc_ft']:>8.4f}")
        print(f"MACs monotone in lambda: {n['macs_monotone']}; accuracy monotone: {n['acc_monotone']}; "
              f"NPN - L1: {[round(v, 4) for v in n['npn_minus_l1']]}")
    print(f"wall {out['wall_seconds']:.0f} s -> {args.out}")
    return out


if __name__ == "__main__":
    main()
