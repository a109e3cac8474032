"""Bias correction (DFQ, Nagel et al. 2019): remove the mean output shift caused by weight quantisation.

Quantising a layer's weight ``W`` to ``W~ = W + eps`` shifts its output by ``eps @ E[x]`` on average, a
systematic error that accumulates through the network (large at 4 bits). Bias correction subtracts it:
``b <- b - eps @ E[x]`` with ``E[x]`` the per-input-channel mean of the layer input (for a convolution,
``eps`` summed over the kernel window; borders are ignored).

``E[x]`` comes from data (:func:`input_means_from_data`, "empirical" bias correction) or, data-free, from
the BatchNorm before the layer (:func:`input_means_from_bn`): when the input is ``relu(BN(z))`` it is the
mean of a clipped normal with the BN's shift ``beta`` and scale ``|gamma|``,
``E[relu(N(mu, s^2))] = mu Phi(mu / s) + s phi(mu / s)`` (:func:`clipped_normal_mean`).

Example::

    from torchslim.quantization.ptq.bias_correction import correct_bias, input_means_from_bn
    from torchslim.quantization.ptq.zeroq import quantize_lowbit
    q4 = quantize_lowbit(model, calib, weight_bits=4, act_bits=8)
    q4_bc = correct_bias(q4, input_means_from_bn(model))             # data-free DFQ bias correction
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping

import torch
import torch.fx as fx
from torch import Tensor, nn

from torchslim.core.errors import ConfigError
from torchslim.quantization.static import QuantizedModel, WeightQuantWrapper

__all__ = [
    "clipped_normal_mean",
    "correct_bias",
    "expected_output_shift",
    "input_means_from_bn",
    "input_means_from_data",
]


def clipped_normal_mean(mu: Tensor, sigma: Tensor) -> Tensor:
    """``E[max(0, z)]`` for ``z ~ N(mu, sigma^2)`` (elementwise): ``mu Phi(mu/sigma) + sigma phi(mu/sigma)``;
    ``sigma == 0`` gives ``max(mu, 0)``."""
    mu = mu.to(torch.float64)
    sigma = sigma.to(torch.float64).abs()
    safe = sigma.clamp(min=1e-12)
    t = mu / safe
    cdf = 0.5 * (1.0 + torch.erf(t / math.sqrt(2.0)))
    pdf = torch.exp(-0.5 * t * t) / math.sqrt(2.0 * math.pi)
    out = mu * cdf + safe * pdf
    return torch.where(sigma > 0, out, mu.clamp(min=0.0)).to(torch.float32)


def expected_output_shift(layer: nn.Module, weight_error: Tensor, input_mean: Tensor) -> Tensor:
    """``eps @ E[x]`` per output channel for a Conv (dense or depthwise) or Linear ``layer``."""
    e = weight_error.detach().to(torch.float64)
    m = input_mean.detach().to(torch.float64).reshape(-1)
    if isinstance(layer, nn.Linear):
        if e.shape[1] != m.numel():
            raise ConfigError(f"input mean has {m.numel()} channels, the layer takes {e.shape[1]}")
        return (e @ m).to(torch.float32)
    if isinstance(layer, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
        summed = e.reshape(e.shape[0], e.shape[1], -1).sum(dim=2)  # [out, in/groups]
        groups = layer.groups
        if m.numel() != layer.in_channels:
            raise ConfigError(f"input mean has {m.numel()} channels, the layer takes {layer.in_channels}")
        out_per_g, in_per_g = layer.out_channels // groups, layer.in_channels // groups
        shift = torch.empty(layer.out_channels, dtype=torch.float64)
        for g in range(groups):
            rows = slice(g * out_per_g, (g + 1) * out_per_g)
            shift[rows] = summed[rows] @ m[g * in_per_g : (g + 1) * in_per_g]
        return shift.to(torch.float32)
    raise ConfigError(f"bias correction supports Conv/Linear layers, got {type(layer).__name__}")


@torch.no_grad()
def input_means_from_data(q: QuantizedModel, inputs: Tensor, batch_size: int = 256) -> dict[str, Tensor]:
    """Empirical ``{layer path: per-channel mean of its input}`` from running ``q.float_model`` on ``inputs``."""
    if inputs.numel() == 0:
        raise ConfigError("input_means_from_data: inputs are empty")
    wrappers = [n for n, m in q.sim.named_modules() if isinstance(m, WeightQuantWrapper)]
    modules = dict(q.float_model.named_modules())
    sums: dict[str, Tensor] = {}
    handles = []
    for name in wrappers:
        mod = modules.get(name)
        if mod is None:
            continue

        def hook(m: nn.Module, args: tuple[Tensor, ...], name: str = name) -> None:
            x = args[0].detach().to(torch.float64)
            dims = [d for d in range(x.dim()) if d != 1] if x.dim() > 2 else [0]
            per = x.mean(dim=[d for d in dims if d != 0]) if len(dims) > 1 else x
            sums[name] = sums.get(name, torch.zeros(x.shape[1], dtype=torch.float64)) + per.sum(dim=0)

        handles.append(mod.register_forward_pre_hook(hook))
    try:
        for xb in inputs.split(batch_size):
            q.float_model(xb)
    finally:
        for h in handles:
            h.remove()
    return {n: (s / inputs.shape[0]).to(torch.float32) for n, s in sums.items()}


def input_means_from_bn(model: nn.Module) -> dict[str, Tensor]:
    """Data-free ``{layer path: E[input]}`` for every Conv/Linear whose input is ``relu(BatchNorm(...))`` in
    ``model`` (not folded), from the BN's ``beta`` and ``|gamma|`` (:func:`clipped_normal_mean`). Layers fed
    otherwise (the model input, residual sums) are absent: they are left uncorrected."""
    gm = fx.symbolic_trace(model)
    modules = dict(gm.named_modules())
    out: dict[str, Tensor] = {}

    def is_relu(n: object) -> bool:
        if not isinstance(n, fx.Node):
            return False
        if n.op == "call_module":
            return type(modules.get(str(n.target))) is nn.ReLU
        return n.op == "call_function" and n.target in (torch.relu, torch.nn.functional.relu)

    for node in gm.graph.nodes:
        if node.op != "call_module":
            continue
        layer = modules.get(str(node.target))
        if not isinstance(layer, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)):
            continue
        src = node.args[0]
        if not is_relu(src):
            continue
        bn_node = src.args[0]
        if not (isinstance(bn_node, fx.Node) and bn_node.op == "call_module"):
            continue
        bn = modules.get(str(bn_node.target))
        if isinstance(bn, nn.modules.batchnorm._BatchNorm) and bn.weight is not None and bn.bias is not None:
            out[str(node.target)] = clipped_normal_mean(bn.bias.detach(), bn.weight.detach())
    return out


@torch.no_grad()
def correct_bias(q: QuantizedModel, input_means: Mapping[str, Tensor]) -> QuantizedModel:
    """A copy of ``q`` whose quantised layers named in ``input_means`` have ``b <- b - (W~ - W) @ E[x]``."""
    new = copy.deepcopy(q)
    mods = dict(new.sim.named_modules())
    unknown = [n for n in input_means if not isinstance(mods.get(n), WeightQuantWrapper)]
    if unknown:
        raise ConfigError(f"correct_bias: {unknown} are not quantised layers of this model")
    for name, mean in input_means.items():
        wrapper = mods[name]
        assert isinstance(wrapper, WeightQuantWrapper)
        layer = wrapper.module
        err = wrapper.quantized_weight().detach() - layer.weight.detach()
        shift = expected_output_shift(layer, err, mean)
        if layer.bias is None:
            layer.bias = nn.Parameter(-shift)
        else:
            layer.bias.sub_(shift)
    return new
