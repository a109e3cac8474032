"""SmoothQuant-style activation smoothing for transformer ``nn.Linear`` layers.

SmoothQuant (Xiao et al., 2023) moves quantisation difficulty from activations to weights with a
per-input-channel scale. For a Linear ``y = x W^T + b`` (``W [N, K]``) and calibration activations ``X``:

    s_j = max|X_j|^alpha / max|W_{:, j}|^(1 - alpha),      x' = x / s,      W'_{:, j} = W_{:, j} * s_j

so ``x' W'^T = x W^T`` exactly, while the few outlier input channels of ``x`` (LayerNorm outputs in
transformers have channels 10-100x larger than the rest) are shrunk and a per-tensor activation range
fits the remaining channels much better. Linears that read the same tensor (Q, K, V) share one ``s``
(the weight maximum is taken over the whole group).

The ``1 / s`` has to be applied to the activations somewhere:

* folded into the module that produced them (a ``LayerNorm``'s weight and bias, or the output rows of a
  preceding ``Linear``): free at run time. Producers are found automatically (the Linear's input is the
  very tensor a LayerNorm / Linear returned) or given in ``fold_into`` (e.g. attention ``value`` ->
  attention output ``dense``: the context is a per-channel linear function of V). Every fold is checked
  on a calibration batch and undone if it changes the float function (post-LN BERT: the LayerNorm output
  is also the residual, so folding 1/s into it is *not* exact);
* otherwise applied explicitly: the Linear becomes a :class:`SmoothLinear` that multiplies its input by
  ``1 / s`` (one elementwise ``Mul`` per input tensor in the exported graph; shared by the group).

:func:`~torchslim.quantization.dynamic.quantize_dynamic` keeps the ``1 / s`` of a :class:`SmoothLinear`
in front of its quantiser, so smoothing then quantising is the usual pipeline.

Example::

    import torch
    from transformers import BertConfig, BertModel
    from torchslim.quantization.smooth import SmoothQuant, smooth_quant
    bert = BertModel(BertConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                intermediate_size=128, vocab_size=100, attn_implementation="eager")).eval()
    ids = torch.randint(0, 100, (4, 16)); mask = torch.ones_like(ids)
    res = smooth_quant(bert, [(ids, mask)], SmoothQuant(alpha=0.5))
    print(res.folded, res.explicit)            # where each group's 1/s went
    print((res.model(ids, mask).last_hidden_state - bert(ids, mask).last_hidden_state).abs().max())
"""

from __future__ import annotations

import copy
import fnmatch
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Annotated, Any, ClassVar

import torch
from pydantic import Field
from torch import Tensor, nn

from torchslim.core.config import Config
from torchslim.core.errors import ConfigError

__all__ = [
    "SmoothLinear",
    "SmoothQuant",
    "SmoothResult",
    "collect_input_absmax",
    "smooth_quant",
    "smoothing_scales",
    "bert_fold_map",
]


class SmoothQuant(Config):
    """SmoothQuant smoothing (``type: smooth_quant`` in a recipe).

    Fields:
        alpha: migration strength in ``(0, 1)``: ``s_j = max|X_j|^alpha / max|W_j|^(1-alpha)``; 0.5 is
            the paper's default, larger moves more difficulty into the weights.
        fold: fold ``1/s`` into the producing LayerNorm / Linear when that is exact (checked); ``False``
            always uses explicit :class:`SmoothLinear` scaling.
        fold_into: extra ``{consumer Linear path: producer Linear path}`` folds that hooks cannot see
            (e.g. from :func:`bert_fold_map`).
        exclude: globs of Linear paths left unsmoothed.
        tolerance: largest allowed change of the model output (max abs, relative to the output's max
            abs) for a fold to be kept.
    """

    type_name: ClassVar[str] = "smooth_quant"

    alpha: Annotated[float, Field(gt=0.0, lt=1.0)] = 0.5
    fold: bool = True
    fold_into: dict[str, str] = {}
    exclude: list[str] = []
    tolerance: Annotated[float, Field(gt=0.0)] = 1e-5


class SmoothLinear(nn.Linear):
    """``nn.Linear`` whose input is multiplied by ``input_scale [K]`` (= ``1 / s``) first.

    Example::

        lin = SmoothLinear(4, 2); lin.input_scale.fill_(0.5)
        y = lin(torch.ones(1, 4))      # == F.linear(0.5 * ones, lin.weight, lin.bias)
    """

    input_scale: Tensor

    def __init__(self, in_features: int, out_features: int, bias: bool = True) -> None:
        super().__init__(in_features, out_features, bias=bias)
        self.register_buffer("input_scale", torch.ones(in_features))

    @classmethod
    def from_linear(cls, linear: nn.Linear, input_scale: Tensor) -> SmoothLinear:
        """A :class:`SmoothLinear` with ``linear``'s parameters (shared, not copied) and ``input_scale``."""
        new = cls(linear.in_features, linear.out_features, bias=linear.bias is not None)
        new.weight = linear.weight
        new.bias = linear.bias
        scale = input_scale if not input_scale.requires_grad else input_scale.detach()
        new.input_scale = scale.to(linear.weight.dtype)  # the same tensor for a whole group
        return new

    def forward(self, x: Tensor) -> Tensor:
        return nn.functional.linear(x * self.input_scale, self.weight, self.bias)


# ------------------------------------------------------------------------------------------ calibration
def _call(model: nn.Module, batch: Any) -> Any:
    if isinstance(batch, Tensor):
        return model(batch)
    if isinstance(batch, (tuple, list)):
        return model(*batch)
    if isinstance(batch, dict):
        return model(**batch)
    raise ConfigError(
        f"calibration batches must be tensors, tuples of tensors or dicts, got {type(batch).__name__}"
    )


def _first_tensor(out: Any) -> Tensor:
    from torchslim.quantization.dynamic import _first_tensor as first

    return first(out)


@dataclass
class _Calibration:
    absmax: dict[str, Tensor]  # Linear path -> per-input-channel max |x| over all batches
    groups: list[list[str]]  # Linears that read the same tensor
    producer: dict[str, str]  # group head path -> module whose output that tensor was


def collect_input_absmax(model: nn.Module, batches: Iterable[Any]) -> dict[str, Tensor]:
    """Per-input-channel ``max |x|`` of every ``nn.Linear`` input over ``batches`` (one pass, no grad).

    Example::

        stats = collect_input_absmax(nn.Sequential(nn.Linear(3, 2)), [torch.tensor([[1., -5., 2.]])])
        stats["0"]   # tensor([1., 5., 2.])
    """
    return _calibrate(model, batches).absmax


def _calibrate(model: nn.Module, batches: Iterable[Any]) -> _Calibration:
    linears = {n: m for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    if not linears:
        raise ConfigError("SmoothQuant found no nn.Linear in the model; it only smooths Linear inputs.")
    absmax: dict[str, Tensor] = {}
    first_inputs: dict[str, Tensor] = {}
    outputs: list[tuple[str, Tensor]] = []
    state = {"first": True}
    hooks = []

    def lin_hook(name: str) -> Any:
        def hook(_m: nn.Module, args: tuple[Any, ...], _out: Any) -> None:
            x = args[0].detach()
            if not torch.isfinite(x).all():
                raise ConfigError(f"calibration input of {name!r} contains NaN or inf; check the data.")
            cur = x.abs().reshape(-1, x.shape[-1]).amax(dim=0).float()
            absmax[name] = torch.maximum(absmax[name], cur) if name in absmax else cur
            if state["first"]:
                first_inputs[name] = args[0]

        return hook

    def out_hook(name: str) -> Any:
        def hook(_m: nn.Module, _args: tuple[Any, ...], out: Any) -> None:
            if state["first"] and isinstance(out, Tensor):
                outputs.append((name, out))

        return hook

    for name, m in model.named_modules():
        if isinstance(m, nn.Linear):
            hooks.append(m.register_forward_hook(lin_hook(name)))
        if isinstance(m, (nn.Linear, nn.LayerNorm)):
            hooks.append(m.register_forward_hook(out_hook(name)))
    n = 0
    try:
        with torch.no_grad():
            for batch in batches:
                _call(model, batch)
                state["first"] = False
                n += 1
    finally:
        for h in hooks:
            h.remove()
    if n == 0:
        raise ConfigError("SmoothQuant needs at least one calibration batch; got an empty iterable.")
    # group Linears that read the very same tensor object (kept alive in first_inputs, so ids are unique)
    groups: list[list[str]] = []
    producer: dict[str, str] = {}
    seen: dict[int, int] = {}
    for name in linears:
        if name not in first_inputs:
            continue  # not used in the forward pass
        key = id(first_inputs[name])
        if key in seen:
            groups[seen[key]].append(name)
        else:
            seen[key] = len(groups)
            groups.append([name])
            for pname, out in outputs:
                if out is first_inputs[name]:
                    producer[name] = pname
                    break
    return _Calibration(absmax, groups, producer)


def smoothing_scales(act_absmax: Tensor, weights: Sequence[Tensor], alpha: float) -> Tensor:
    """``s_j = max|X_j|^alpha / max_over_weights |W_{:, j}|^(1 - alpha)`` (1 where either max is 0).

    Example::

        smoothing_scales(torch.tensor([4.0, 1.0]), [torch.tensor([[1.0, 1.0]])], 0.5)   # tensor([2., 1.])
    """
    if not 0.0 < alpha < 1.0:
        raise ConfigError(f"alpha must be in (0, 1), got {alpha}")
    wmax = torch.stack([w.detach().abs().amax(dim=0).float() for w in weights]).amax(dim=0)
    a = act_absmax.float()
    if a.shape != wmax.shape:
        raise ConfigError(f"activation stats have {a.shape[0]} channels but weights have {wmax.shape[0]}")
    s = a.pow(alpha) / wmax.pow(1.0 - alpha)
    ok = (a > 0) & (wmax > 0) & torch.isfinite(s)
    return torch.where(ok, s, torch.ones_like(s)).clamp(1e-5, 1e5)


def bert_fold_map(model: nn.Module) -> dict[str, str]:
    """``{"...attention.output.dense": "...attention.self.value"}`` for every BERT-style layer in ``model``.

    The attention context is ``softmax(QK^T) V`` per head, a per-channel linear function of V's output, so
    the ``1/s`` of the attention output projection folds exactly into V's rows.

    Example::

        bert_fold_map(bert)   # {'encoder.layer.0.attention.output.dense': 'encoder.layer.0.attention.self.value', ...}
    """
    names = {n for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    out: dict[str, str] = {}
    for n in names:
        if n.endswith("attention.output.dense"):
            v = n[: -len("output.dense")] + "self.value"
            if v in names:
                out[n] = v
    return out


# --------------------------------------------------------------------------------------------- driver
def _head(batch: Any, n: int) -> Any:
    if isinstance(batch, Tensor):
        return batch[:n]
    if isinstance(batch, (tuple, list)):
        return type(batch)(_head(b, n) for b in batch)
    if isinstance(batch, dict):
        return {k: _head(v, n) for k, v in batch.items()}
    return batch


@dataclass
class SmoothResult:
    """Result of :func:`smooth_quant`.

    Attributes: ``model`` (a smoothed copy, same float function), ``scales`` (``s`` per smoothed Linear
    path), ``folded`` (``{group head: producer}`` where ``1/s`` was folded), ``explicit`` (group heads
    that became :class:`SmoothLinear`), ``groups`` (Linears sharing one input), ``act_absmax`` (the
    calibration statistics), ``max_change`` (max abs change of the output on the check batch).
    """

    model: nn.Module
    scales: dict[str, Tensor]
    folded: dict[str, str]
    explicit: list[str]
    groups: list[list[str]]
    act_absmax: dict[str, Tensor]
    max_change: float = 0.0
    rejected_folds: dict[str, str] = field(default_factory=dict)


def _fold_into(module: nn.Module, inv: Tensor) -> None:
    with torch.no_grad():
        if isinstance(module, nn.LayerNorm):
            if module.weight is None:
                raise ConfigError("cannot fold a smoothing scale into a LayerNorm without affine weight")
            module.weight.mul_(inv)
            if module.bias is not None:
                module.bias.mul_(inv)
        elif isinstance(module, nn.Linear):
            module.weight.mul_(inv.reshape(-1, 1))
            if module.bias is not None:
                module.bias.mul_(inv)
        else:
            raise ConfigError(f"cannot fold a smoothing scale into a {type(module).__name__}")


def _set(model: nn.Module, path: str, new: nn.Module) -> None:
    parent_name, _, attr = path.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, attr, new)


def smooth_quant(
    model: nn.Module, batches: Sequence[Any], config: SmoothQuant | None = None
) -> SmoothResult:
    """Smooth every ``nn.Linear`` input of a copy of ``model`` (SmoothQuant); the float function is kept.

    Args:
        model: the float model (not modified).
        batches: calibration batches (each a tensor, a tuple of tensors or a dict of keyword tensors);
            real data, a few hundred samples is plenty. The first batch is also the fold check batch.
        config: :class:`SmoothQuant` (default ``alpha=0.5``).

    Raises:
        ConfigError: no batches, NaN/inf activations, no Linear, bad config.
    """
    config = config or SmoothQuant()
    if not isinstance(config, SmoothQuant):
        raise ConfigError(f"smooth_quant needs a SmoothQuant config, got {type(config).__name__}.")
    batches = list(batches)
    if not batches:
        raise ConfigError("SmoothQuant needs at least one calibration batch; got an empty list.")
    sm = copy.deepcopy(model).eval()
    cal = _calibrate(sm, batches)
    check = _head(batches[0], 4)  # a few samples are enough to see a fold that changes the function
    with torch.no_grad():
        ref = _first_tensor(_call(sm, check)).float()
    tol = config.tolerance * max(float(ref.abs().max()), 1e-12)

    def change() -> float:
        with torch.no_grad():
            return float((_first_tensor(_call(sm, check)).float() - ref).abs().max())

    modules = dict(sm.named_modules())
    scales: dict[str, Tensor] = {}
    folded: dict[str, str] = {}
    rejected: dict[str, str] = {}
    explicit: list[str] = []
    for group in cal.groups:
        group = [n for n in group if not any(fnmatch.fnmatch(n, p) for p in config.exclude)]
        if not group:
            continue
        head = group[0]
        lins = [modules[n] for n in group]
        s = smoothing_scales(cal.absmax[head], [lin.weight for lin in lins], config.alpha)  # type: ignore[misc]
        with torch.no_grad():
            for lin in lins:
                lin.weight.mul_(s.to(lin.weight.dtype))  # type: ignore[operator]
        for n in group:
            scales[n] = s
        inv = 1.0 / s
        prod = cal.producer.get(head)
        for n in group:
            prod = config.fold_into.get(n, prod)
        done = False
        if config.fold and prod is not None and isinstance(modules.get(prod), (nn.LayerNorm, nn.Linear)):
            pm = modules[prod]
            saved = {k: v.detach().clone() for k, v in pm.named_parameters(recurse=False)}
            _fold_into(pm, inv.to(pm.weight.dtype))
            if change() <= tol:
                folded[head] = prod
                done = True
            else:  # e.g. a post-LN residual reads the same LayerNorm output: undo
                with torch.no_grad():
                    for k, v in pm.named_parameters(recurse=False):
                        v.copy_(saved[k])
                rejected[head] = prod
        if not done:
            shared = inv.to(lins[0].weight.dtype).contiguous()  # one tensor: one Mul in the exported graph
            for n, lin in zip(group, lins, strict=True):
                _set(sm, n, SmoothLinear.from_linear(lin, shared))  # type: ignore[arg-type]
            explicit.append(head)
            modules = dict(sm.named_modules())
    final = change()
    if final > max(tol, 1e-4 * max(float(ref.abs().max()), 1e-12)):
        raise RuntimeError(f"SmoothQuant changed the float output by {final:.3g}; please report this bug.")
    return SmoothResult(sm, scales, folded, explicit, cal.groups, cal.absmax, final, rejected)
