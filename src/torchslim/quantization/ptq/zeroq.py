"""ZeroQ (Cai et al., CVPR 2020): data-free quantisation from BatchNorm statistics.

* :func:`distill_data` -- *distilled data*: start from Gaussian inputs ``x_r`` and minimise
  ``sum_i ||mu~_i(x_r) - mu_i||^2 + ||sigma~_i(x_r) - sigma_i||^2`` over every BatchNorm layer ``i``, where
  ``mu~_i, sigma~_i`` are the per-channel batch mean/std of the BN input and ``mu_i, sigma_i`` the stored
  running statistics (model in eval mode; Adam on the inputs only).
* :func:`layer_sensitivity` -- ``Omega_i(k) = KL(M(x) || M with only layer i's weights at k bits)``,
  averaged over the inputs ``x`` (real or distilled), on the BN-folded model.
* :func:`mixed_precision` -- per-layer weight bit widths minimising ``sum_i Omega_i(k_i)`` under a weight
  size budget (bits), by the exact Pareto-frontier dynamic program :func:`torchslim.search.solvers.pareto_dp`.
* :func:`quantize_lowbit` / :func:`set_bits` -- W``k``A``m`` simulation for any bit widths, built on the
  W8A8 engine (:func:`torchslim.quantization.static.quantize_static`): its observers are re-converted at
  the requested activation width and its weight wrappers re-quantised at the requested weight widths.

Example::

    from torchslim import zoo
    from torchslim.quantization.ptq.zeroq import distill_data, layer_sensitivity, mixed_precision, quantize_lowbit
    model = zoo.load("resnet-fmnist").eval()
    xd = distill_data(model, num_samples=64, input_shape=(1, 28, 28), iterations=200)
    q8 = quantize_lowbit(model, xd, weight_bits=8, act_bits=8)          # calibrated on distilled data only
    sens = layer_sensitivity(model, xd, bits=(2, 4, 8))
    bits = mixed_precision(sens, model, budget_bits=4.0)                # {layer: bits}, avg <= 4 bits/weight
    qmp = quantize_lowbit(model, xd, weight_bits=bits, act_bits=8)
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from torchslim.core.errors import ConfigError
from torchslim.quantization.fold import fold_batchnorm
from torchslim.quantization.primitives import choose_qparams, fake_quantize, qrange
from torchslim.quantization.static import (
    ActFakeQuant,
    QuantizedModel,
    StaticPTQ,
    WeightQuantWrapper,
    quantize_static,
)

__all__ = [
    "distill_data",
    "layer_sensitivity",
    "mixed_precision",
    "quantizable_layers",
    "quantize_lowbit",
    "quantize_weight",
    "set_bits",
]

_LAYERS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


def distill_data(
    model: nn.Module,
    num_samples: int = 64,
    input_shape: Sequence[int] = (1, 28, 28),
    iterations: int = 500,
    lr: float = 0.5,
    batch_size: int = 32,
    seed: int = 0,
) -> Tensor:
    """ZeroQ distilled data: ``num_samples`` inputs whose BatchNorm batch statistics match the stored ones.

    Each batch starts from ``N(0, 1)`` noise and runs ``iterations`` Adam steps (learning rate ``lr``) on the
    BN-statistics loss; the model is put in eval mode and its parameters are not changed. Raises
    :class:`ConfigError` when the model has no BatchNorm layer (nothing to match).
    """
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not bns:
        raise ConfigError(
            "distill_data: the model has no BatchNorm layer, so there are no statistics to distil from; "
            "calibrate on real samples instead"
        )
    if num_samples <= 0 or iterations < 0 or batch_size <= 0:
        raise ConfigError(
            f"distill_data: need num_samples > 0, iterations >= 0, batch_size > 0; got {num_samples}, "
            f"{iterations}, {batch_size}"
        )
    was_training = model.training
    model.eval()
    stats: list[Tensor] = []

    def hook(mod: nn.Module, inputs: tuple[Tensor, ...]) -> None:
        x = inputs[0]
        dims = [d for d in range(x.dim()) if d != 1]
        mean = x.mean(dim=dims)
        std = torch.sqrt(x.var(dim=dims, unbiased=False) + mod.eps)  # type: ignore[operator]
        rm, rv = mod.running_mean, mod.running_var
        assert isinstance(rm, Tensor) and isinstance(rv, Tensor)
        stats.append((mean - rm).pow(2).sum() + (std - torch.sqrt(rv + mod.eps)).pow(2).sum())  # type: ignore[operator]

    handles = [bn.register_forward_pre_hook(hook) for bn in bns]
    gen = torch.Generator().manual_seed(seed)
    out: list[Tensor] = []
    req = [p.requires_grad for p in model.parameters()]
    try:
        for p in model.parameters():
            p.requires_grad_(False)
        done = 0
        while done < num_samples:
            n = min(batch_size, num_samples - done)
            x = torch.randn((n, *input_shape), generator=gen).requires_grad_(True)
            opt = torch.optim.Adam([x], lr=lr)
            for _ in range(iterations):
                stats.clear()
                opt.zero_grad(set_to_none=True)
                model(x)
                loss = torch.stack(stats).sum()
                loss.backward()
                opt.step()
            out.append(x.detach().clone())
            done += n
    finally:
        for h in handles:
            h.remove()
        for p, r in zip(model.parameters(), req, strict=True):
            p.requires_grad_(r)
        model.train(was_training)
    return torch.cat(out)


def quantize_weight(w: Tensor, bits: int) -> Tensor:
    """Symmetric, narrow-range, per-output-channel fake quantisation of a weight to ``bits`` (>= 2)."""
    if bits < 2:
        raise ConfigError(f"weight bits must be >= 2 (symmetric narrow range), got {bits}")
    flat = w.detach().reshape(w.shape[0], -1)
    s, z = choose_qparams(flat.min(dim=1).values, flat.max(dim=1).values, bits, True, True, True)
    qmin, qmax = qrange(bits, True, True)
    return fake_quantize(w.detach(), s, z, qmin, qmax, axis=0)


def quantizable_layers(model: nn.Module) -> dict[str, nn.Module]:
    """``{path: Conv/Linear}`` of the BN-folded model, in graph order (the layers ZeroQ assigns bits to)."""
    folded = fold_batchnorm(model)
    return {n: m for n, m in folded.named_modules() if isinstance(m, _LAYERS)}


def _batches(x: Tensor, batch_size: int) -> Iterable[Tensor]:
    return x.split(batch_size)


@torch.no_grad()
def layer_sensitivity(
    model: nn.Module, inputs: Tensor, bits: Sequence[int] = (2, 4, 8), batch_size: int = 256
) -> dict[str, dict[int, float]]:
    """ZeroQ sensitivity ``{layer: {k: Omega_i(k)}}``: mean ``KL(softmax M(x) || softmax M_i^k(x))`` over
    ``inputs``, where ``M_i^k`` has only layer ``i``'s (BN-folded) weights quantised to ``k`` bits
    (per-channel symmetric) and everything else in float. The model must output logits ``[N, C]``."""
    if inputs.numel() == 0:
        raise ConfigError("layer_sensitivity: inputs are empty; pass real or distilled samples")
    folded = fold_batchnorm(model).eval()
    ref = [F.log_softmax(folded(xb), dim=-1) for xb in _batches(inputs, batch_size)]
    if ref[0].dim() != 2:
        raise ConfigError(f"layer_sensitivity: expected logits [N, C], got shape {tuple(ref[0].shape)}")
    out: dict[str, dict[int, float]] = {}
    for name, layer in folded.named_modules():
        if not isinstance(layer, _LAYERS):
            continue
        w0 = layer.weight.detach().clone()
        out[name] = {}
        for k in bits:
            layer.weight.copy_(quantize_weight(w0, k))
            total = 0.0
            for xb, lp in zip(_batches(inputs, batch_size), ref, strict=True):
                lq = F.log_softmax(folded(xb), dim=-1)
                total += float(F.kl_div(lq, lp, log_target=True, reduction="sum"))
            out[name][k] = total / inputs.shape[0]
        layer.weight.copy_(w0)
    return out


def mixed_precision(
    sensitivity: Mapping[str, Mapping[int, float]], model: nn.Module, budget_bits: float
) -> dict[str, int]:
    """Per-layer weight bits minimising ``sum Omega_i(k_i)`` with total weight bits
    ``<= budget_bits * (number of weights)`` (the size of a uniform ``budget_bits`` model), exactly, by
    :func:`~torchslim.search.solvers.pareto_dp`."""
    from torchslim.search.solvers import pareto_dp

    layers = quantizable_layers(model)
    missing = [n for n in layers if n not in sensitivity]
    if missing:
        raise ConfigError(f"mixed_precision: no sensitivity for layers {missing}; run layer_sensitivity first")
    names = list(layers)
    numel = {n: int(layers[n].weight.numel()) for n in names}  # type: ignore[operator]
    options = [sorted(sensitivity[n]) for n in names]
    costs = [[float(sensitivity[n][k]) for k in opts] for n, opts in zip(names, options, strict=True)]
    sizes = [[numel[n] * k for k in opts] for n, opts in zip(names, options, strict=True)]
    budget = int(budget_bits * sum(numel.values()))
    picks = pareto_dp(costs, sizes, budget)
    return {n: opts[j] for n, opts, j in zip(names, options, picks, strict=True)}


def set_bits(q: QuantizedModel, weight_bits: int | Mapping[str, int] = 8, act_bits: int = 8) -> QuantizedModel:
    """A copy of ``q`` simulating ``weight_bits`` (one width, or ``{layer path: bits}``; unnamed layers stay
    at 8) and ``act_bits`` activations, re-using ``q``'s calibration observers (their range choice is redone
    for the new width, which matters for the histogram calibrators)."""
    if act_bits < 2 or act_bits > 8:
        raise ConfigError(f"act_bits must be in [2, 8], got {act_bits}")
    new = copy.deepcopy(q)
    mods = dict(new.sim.named_modules())
    if isinstance(weight_bits, Mapping):
        unknown = [n for n in weight_bits if not isinstance(mods.get(n), WeightQuantWrapper)]
        if unknown:
            known = [n for n, m in mods.items() if isinstance(m, WeightQuantWrapper)]
            raise ConfigError(f"set_bits: {unknown} are not quantised layers (known: {known})")
    for name, m in mods.items():
        if isinstance(m, WeightQuantWrapper):
            b = weight_bits.get(name, 8) if isinstance(weight_bits, Mapping) else weight_bits
            if not 2 <= b <= 8:
                raise ConfigError(f"weight bits of {name} must be in [2, 8], got {b}")
            m.bits = int(b)
            m.update_qparams()
    for m in mods.values():
        if isinstance(m, ActFakeQuant):
            m.bits = act_bits
            m.qmin, m.qmax = qrange(act_bits, m.signed)
            if m.shares is None:
                m.convert()
    for m in mods.values():
        if isinstance(m, ActFakeQuant) and m.shares is not None:
            src = mods[m.shares]
            assert isinstance(src, ActFakeQuant)
            m.scale.copy_(src.scale)
            m.zero_point.copy_(src.zero_point)
    return new


def quantize_lowbit(
    model: nn.Module,
    calib: Tensor,
    weight_bits: int | Mapping[str, int] = 8,
    act_bits: int = 8,
    calibrator: str = "minmax",
) -> QuantizedModel:
    """Static PTQ simulation at any weight/activation widths (2..8): W8A8 :func:`quantize_static` on
    ``calib`` (all of it, per-channel weights, no reduce-range), then :func:`set_bits`."""
    config = StaticPTQ(
        calibrator=calibrator,  # type: ignore[arg-type]
        num_calibration=calib.shape[0],
        reduce_range=False,
    )
    q = quantize_static(model, config, calib, progress=False)
    return set_bits(q, weight_bits, act_bits)
