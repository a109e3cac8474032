"""APQNN: automatic filter pruning of quantised networks (Guerra, Zhuang, Reid, Drummond 2020, arXiv 2002.00523).

Three parts, as in the paper:

1. **A low-precision network trained with the straight-through estimator** (STE): :class:`QConv2d` holds
   latent float weights and convolves with their quantised values -- ``"binary"`` (BinaryNet ``sign(w)``,
   1 bit) or ``"dorefa"`` (DoReFa-Net ``k``-bit weights ``2*q_k(tanh(w) / (2 max|tanh(w)|) + 1/2) - 1``);
   :class:`QAct` quantises activations (``sign`` with the clipped-identity STE, or DoReFa ``q_k(clip(x, 0, 1))``).
   :func:`quant_cnn` builds the digits CNN with a full-precision first convolution and classifier, as usual
   for BNNs and DoReFa nets.
2. **A redundancy criterion for discrete filters.** Magnitude criteria are useless here: every binary filter
   of a layer has the same L1 norm. A filter is redundant when another filter of the layer computes (almost)
   the same thing, i.e. their quantised weights (nearly) coincide. :func:`redundancy_scores` ranks the filters
   of a layer by greedy elimination: repeatedly drop the filter whose nearest remaining neighbour is closest
   (normalised L1 distance between quantised filters = the Hamming distance for binary filters), ties broken by
   the smaller total distance to the others (the filter nearest the layer's geometric median is the most
   replaceable), then by the higher index. Exact duplicates therefore go first, and only one copy of each.
   The score of a filter is its elimination rank (higher = kept longer). It is registered as the importance
   criterion ``"apqnn_redundancy"`` (for plain float models it scores ``sign(w)``, the filters a BNN deploys).
   *Caveat*: only the abstract of the paper ("an effective pruning strategy for selecting redundant
   low-precision filters") could be checked here; this duplicate/nearest-neighbour rule is our reading.
3. **Per-layer pruning ratios by Bayesian optimisation** under a model-size budget counted in bits
   (:func:`size_bits`: quantised weights at their bit width, every other parameter at 32 bits).
   :func:`search_ratios` lets an optuna sampler (``"gp"``: Gaussian-process BO, the paper's surrogate;
   ``"tpe"``; ``"random"`` as the baseline) propose a direction ``x`` in ``[0, 1]^G`` (one coordinate per
   prunable group); the ratios ``t * max_ratio * x / max(x)`` are scaled by the smallest ``t`` whose pruned
   size fits the budget (bisection), so EVERY candidate sits at the budget and candidates differ only in how
   they share the cut. A direction that cannot reach the budget is infeasible (objective -1). The objective
   is the validation accuracy after pruning by the redundancy criterion, re-estimating the BatchNorm
   statistics and ``proxy_steps`` SGD steps, minus ``size_weight * size / size_before``.

Fine-tuning afterwards uses :class:`torchslim.train.Trainer` (the latent float weights keep training).

Example::

    >>> import torch
    >>> from torchslim.pruning.apqnn import quant_cnn, prune_quantized_, size_bits
    >>> m = quant_cnn((8, 16, 16), precision="binary")
    >>> x = (torch.randn(1, 1, 8, 8),)
    >>> before = size_bits(m)
    >>> r = prune_quantized_(m, x, widths={"3": 8})
    >>> m[3].out_channels, m[4].num_features, m[6].in_channels, size_bits(m) < before
    (8, 8, 8, True)
"""

from __future__ import annotations

import copy
import math
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from torchslim.core.config import Config
from torchslim.core.errors import ConfigError
from torchslim.pruning.api import ChannelPrune, PruneError, PruneResult, prune_
from torchslim.pruning.importance import n_keep, top_channels
from torchslim.pruning.structured.importance import ScoreContext
from torchslim.quantization.primitives import fake_quantize

if TYPE_CHECKING:
    from torchslim.pruning.structured.dependency import ChannelGroup

__all__ = [
    "APQNNSearch",
    "Precision",
    "QAct",
    "QConv2d",
    "SearchResult",
    "apqnn_scores",
    "filter_distances",
    "float_twin",
    "prune_quantized_",
    "quant_cnn",
    "redundancy_keep",
    "redundancy_scores",
    "search_ratios",
    "size_bits",
    "uniform_widths",
    "widths_for_direction",
]

Precision = Literal["binary", "dorefa"]


# ----------------------------------------------------------------------------------------------- quantisers
class _SignSTE(torch.autograd.Function):
    """``sign(x)`` (with sign(0) = +1) forward; gradient passed where ``|x| <= 1`` (clipped identity)."""

    @staticmethod
    def forward(ctx: Any, x: Tensor) -> Tensor:
        ctx.save_for_backward(x)
        return torch.where(x >= 0, torch.ones_like(x), -torch.ones_like(x))

    @staticmethod
    def backward(ctx: Any, g: Tensor) -> Tensor:
        (x,) = ctx.saved_tensors
        return g * (x.abs() <= 1).to(g.dtype)


def binarize(x: Tensor) -> Tensor:
    """``sign(x)`` in {-1, +1} (0 maps to +1) with the clipped straight-through gradient.

    >>> binarize(torch.tensor([-0.3, 0.0, 2.0])).tolist()
    [-1.0, 1.0, 1.0]
    """
    out: Tensor = _SignSTE.apply(x)
    return out


def _quantize_unit(x: Tensor, bits: int) -> Tensor:
    """``round(x * (2^k - 1)) / (2^k - 1)`` on [0, 1] with the STE (DoReFa's ``quantize_k``)."""
    levels = 2**bits - 1
    return fake_quantize(x, 1.0 / levels, 0, 0, levels)


def dorefa_weight(w: Tensor, bits: int) -> Tensor:
    """DoReFa-Net ``bits``-bit weights: ``2 * quantize_k(tanh(w) / (2 max|tanh(w)|) + 1/2) - 1`` in [-1, 1].

    >>> sorted({round(v, 4) for v in dorefa_weight(torch.linspace(-2, 2, 9), 2).tolist()})
    [-1.0, -0.3333, 0.3333, 1.0]
    """
    t = torch.tanh(w)
    t = t / (2 * t.abs().max().clamp_min(1e-12)) + 0.5
    return 2 * _quantize_unit(t, bits) - 1


class QConv2d(nn.Conv2d):
    """A Conv2d whose forward uses quantised weights (latent float weights train through the STE).

    Args (beyond :class:`torch.nn.Conv2d`'s): ``precision`` (``"binary"`` or ``"dorefa"``) and ``bits``
    (1 for binary; 2..8 for DoReFa).

    >>> c = QConv2d(2, 3, 3, precision="binary")
    >>> sorted(set(c.quantized_weight().flatten().tolist()))
    [-1.0, 1.0]
    """

    def __init__(self, *args: Any, precision: Precision = "binary", bits: int = 1, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        _check_precision(precision, bits)
        self.precision: Precision = precision
        self.bits = 1 if precision == "binary" else int(bits)

    def quantized_weight(self) -> Tensor:
        """The weights the layer computes with (differentiable through the STE)."""
        if self.precision == "binary":
            return binarize(self.weight)
        return dorefa_weight(self.weight, self.bits)

    def forward(self, x: Tensor) -> Tensor:
        return self._conv_forward(x, self.quantized_weight(), self.bias)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, precision={self.precision}, bits={self.bits}"


class QAct(nn.Module):
    """Activation quantiser: ``sign`` (binary, STE) or DoReFa ``quantize_k(clip(x, 0, 1))``.

    >>> QAct("dorefa", 2)(torch.tensor([-1.0, 0.2, 0.5, 3.0])).tolist()
    [0.0, 0.3333333432674408, 0.6666666865348816, 1.0]
    """

    def __init__(self, precision: Precision = "binary", bits: int = 1) -> None:
        super().__init__()
        _check_precision(precision, bits)
        self.precision: Precision = precision
        self.bits = 1 if precision == "binary" else int(bits)

    def forward(self, x: Tensor) -> Tensor:
        if self.precision == "binary":
            return binarize(x)
        return _quantize_unit(torch.clamp(x, 0.0, 1.0), self.bits)

    def extra_repr(self) -> str:
        return f"precision={self.precision}, bits={self.bits}"


def _check_precision(precision: str, bits: int) -> None:
    if precision not in ("binary", "dorefa"):
        raise ConfigError(f"precision must be 'binary' or 'dorefa', got {precision!r}")
    if precision == "dorefa" and not 2 <= int(bits) <= 8:
        raise ConfigError(f"DoReFa bits must be in [2, 8], got {bits}; use precision='binary' for 1 bit")


def quant_cnn(widths: tuple[int, int, int] = (32, 64, 64), precision: Precision = "binary", bits: int = 1,
              in_channels: int = 1, num_classes: int = 10) -> nn.Sequential:
    """Digits CNN: full-precision conv3x3 stem, two quantised conv3x3 stride 2, each + BN + :class:`QAct`;
    average pool; full-precision Linear. Module indices: convs ``0, 3, 6``, BNs ``1, 4, 7``, Linear ``11``.

    >>> quant_cnn((4, 8, 8))(torch.randn(2, 1, 8, 8)).shape
    torch.Size([2, 10])
    """
    a, b, c = widths
    return nn.Sequential(
        nn.Conv2d(in_channels, a, 3, padding=1, bias=False), nn.BatchNorm2d(a), QAct(precision, bits),
        QConv2d(a, b, 3, stride=2, padding=1, bias=False, precision=precision, bits=bits), nn.BatchNorm2d(b),
        QAct(precision, bits),
        QConv2d(b, c, 3, stride=2, padding=1, bias=False, precision=precision, bits=bits), nn.BatchNorm2d(c),
        QAct(precision, bits),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, num_classes),
    )


# ------------------------------------------------------------------------------------------- size in bits
def size_bits(model: nn.Module, float_bits: int = 32) -> int:
    """Model size in bits: each :class:`QConv2d` weight element at its ``bits``, every other parameter
    element (full-precision layers, biases, BatchNorm affine) at ``float_bits``. Buffers (BN running
    statistics, foldable into the affine) are not counted. Shared parameters count once.

    >>> size_bits(nn.Sequential(QConv2d(2, 4, 3, bias=False), nn.BatchNorm2d(4)))  # 72 x 1 + 8 x 32
    328
    """
    seen: set[int] = set()
    total = 0
    for mod in model.modules():
        for name, p in mod.named_parameters(recurse=False):
            if id(p) in seen:
                continue
            seen.add(id(p))
            bits = mod.bits if isinstance(mod, QConv2d) and name == "weight" else float_bits
            total += int(bits) * p.numel()
    return total


# ------------------------------------------------------------------------------------ redundancy criterion
def filter_distances(weights: Tensor) -> Tensor:
    """Pairwise normalised L1 distances between the filters (rows along dim 0) of one layer:
    ``mean|w_i - w_j| / (max(w) - min(w))``, in [0, 1]. For binary filters this is the fraction of differing
    weights (Hamming distance / filter size). A constant layer gives all zeros.

    >>> filter_distances(torch.tensor([[1., -1.], [1., 1.], [1., -1.]])).tolist()
    [[0.0, 0.5, 0.0], [0.5, 0.0, 0.5], [0.0, 0.5, 0.0]]
    """
    if weights.dim() < 1 or weights.shape[0] < 1:
        raise ValueError(f"expected filters stacked along dim 0, got shape {tuple(weights.shape)}")
    w = weights.detach().reshape(weights.shape[0], -1).to(torch.float64)
    span = float(w.max() - w.min())
    d = torch.cdist(w, w, p=1) / w.shape[1]
    return d / span if span > 0 else torch.zeros_like(d)


def redundancy_scores(weights: Sequence[Tensor]) -> Tensor:
    """Redundancy ranking of the ``C`` channels of a group from its producers' (quantised) filters.

    ``weights``: one ``[C, ...]`` tensor per producer; their :func:`filter_distances` are summed. Greedy
    elimination: repeatedly remove the channel whose nearest remaining neighbour is closest; ties by the
    smaller total distance to the remaining channels, then the higher index. Score = elimination rank
    (0 = removed first = most redundant; ``C - 1`` = the last survivor), as float64, so that
    ``top_channels(scores, k)`` keeps the ``k`` least redundant channels.

    >>> w = torch.tensor([[1., 1., -1.], [-1., 1., 1.], [1., 1., -1.], [1., -1., -1.]])
    >>> redundancy_scores([w]).tolist()   # channel 2 duplicates channel 0: removed first
    [1.0, 3.0, 0.0, 2.0]
    """
    if not weights:
        raise ValueError("redundancy_scores needs at least one producer weight tensor")
    c = int(weights[0].shape[0])
    for w in weights:
        if int(w.shape[0]) != c:
            raise ValueError(f"producers disagree on the channel count: {[int(x.shape[0]) for x in weights]}")
    d = sum((filter_distances(w) for w in weights), torch.zeros(c, c, dtype=torch.float64))
    alive = list(range(c))
    scores = torch.empty(c, dtype=torch.float64)
    for rank in range(c - 1):
        sub = d[alive][:, alive]
        off = sub + torch.diag(torch.full((len(alive),), math.inf, dtype=torch.float64))
        nearest = off.min(dim=1).values
        total = sub.sum(dim=1)
        j = min(range(len(alive)), key=lambda i: (float(nearest[i]), float(total[i]), -alive[i]))
        scores[alive[j]] = float(rank)
        del alive[j]
    scores[alive[0]] = float(c - 1)
    return scores


def _effective_weight(mod: nn.Module) -> Tensor:
    if isinstance(mod, QConv2d):
        return mod.quantized_weight().detach()
    w = getattr(mod, "weight", None)
    if not isinstance(w, Tensor):
        raise PruneError(f"apqnn_redundancy: producer {type(mod).__name__} has no weight tensor")
    return torch.where(w.detach() >= 0, 1.0, -1.0)


def apqnn_scores(model: nn.Module, groups: Sequence[ChannelGroup], ctx: ScoreContext) -> list[Tensor]:
    """Registered criterion ``"apqnn_redundancy"``: :func:`redundancy_scores` of each group's producers'
    quantised filters (a :class:`QConv2d`'s own quantiser; ``sign(w)`` for a plain float layer)."""
    out = []
    for g in groups:
        ws = []
        for m in g.producers:
            mod = model.get_submodule(m.path)
            w = _effective_weight(mod)
            if isinstance(mod, nn.Linear | nn.modules.conv._ConvNd) and w.shape[0] != g.channels:
                raise PruneError(f"apqnn_redundancy: producer {m.path} has {w.shape[0]} filters, group {g.name} "
                                 f"has {g.channels} channels (grouped producers are not supported)")
            ws.append(w)
        out.append(redundancy_scores(ws))
    return out


# ------------------------------------------------------------------------------- pruning quantised models
def float_twin(model: nn.Module) -> tuple[nn.Module, dict[str, nn.Module]]:
    """A deep copy of ``model`` in which every :class:`QConv2d` is a plain ``nn.Conv2d`` (same weights) and
    every :class:`QAct` an ``nn.Identity``, so that the dependency tracer understands it. Returns the twin and
    ``{path: original quantised module}`` to restore afterwards."""
    twin = copy.deepcopy(model)
    originals: dict[str, nn.Module] = {}
    for path, mod in list(twin.named_modules()):
        if isinstance(mod, QConv2d):
            conv = nn.Conv2d(mod.in_channels, mod.out_channels, mod.kernel_size, mod.stride,  # type: ignore[arg-type]
                             mod.padding, mod.dilation, mod.groups, mod.bias is not None,  # type: ignore[arg-type]
                             mod.padding_mode)
            conv.load_state_dict(mod.state_dict())
            originals[path] = mod
            twin.set_submodule(path, conv)
        elif isinstance(mod, QAct):
            originals[path] = mod
            twin.set_submodule(path, nn.Identity())
    return twin, originals


def _restore(twin: nn.Module, originals: dict[str, nn.Module]) -> None:
    for path, orig in originals.items():
        cur = twin.get_submodule(path)
        if isinstance(orig, QConv2d):
            assert isinstance(cur, nn.Conv2d)
            q = QConv2d(cur.in_channels, cur.out_channels, cur.kernel_size, cur.stride,  # type: ignore[arg-type]
                        cur.padding, cur.dilation, cur.groups, cur.bias is not None,  # type: ignore[arg-type]
                        cur.padding_mode, precision=orig.precision, bits=orig.bits)
            q.load_state_dict(cur.state_dict())
            q.train(orig.training)
            twin.set_submodule(path, q)
        else:
            twin.set_submodule(path, orig)


def redundancy_keep(model: nn.Module, example_inputs: tuple[Any, ...], widths: dict[str, int],
                    ) -> dict[str, Tensor]:
    """Channels to keep (ascending indices) per group name: the ``widths[name]`` least redundant ones by
    :func:`redundancy_scores` of the group's producers' quantised filters (``model`` may hold QConv2d)."""
    from torchslim.pruning.structured.dependency import build_groups

    twin, originals = float_twin(model)
    groups = {g.name: g for g in build_groups(twin, example_inputs) if g.prunable}
    keep: dict[str, Tensor] = {}
    for name, w in widths.items():
        if name not in groups:
            raise PruneError(f"widths: {name!r} is not a prunable group; prunable groups: {sorted(groups)}")
        g = groups[name]
        if not 1 <= int(w) <= g.channels:
            raise PruneError(f"widths[{name!r}] = {w} must be in [1, {g.channels}]")
        ws = [_effective_weight(originals.get(m.path, model.get_submodule(m.path))) for m in g.producers]
        keep[name] = top_channels(redundancy_scores(ws), int(w))
    return keep


def prune_quantized_(model: nn.Module, example_inputs: tuple[Any, ...], widths: dict[str, int] | None = None,
                     keep: dict[str, Any] | None = None) -> PruneResult:
    """Physically remove filters of a (possibly) quantised model in place, keeping coupled layers aligned.

    ``widths``: channels kept per group name (chosen by :func:`redundancy_keep`); ``keep``: explicit indices
    (override ``widths``). Groups named in neither are left intact. The model is pruned through its
    :func:`float_twin` with :func:`torchslim.pruning.prune_`, then its quantised modules are restored with the
    smaller shapes; top-level children of ``model`` are replaced.

    Raises:
        PruneError: unknown group, bad width / indices (nothing is modified).
    """
    if not isinstance(example_inputs, tuple):
        raise PruneError(f"example_inputs must be a tuple, got {type(example_inputs).__name__}; wrap as (x,)")
    chosen: dict[str, Any] = dict(redundancy_keep(model, example_inputs, widths) if widths else {})
    chosen.update(keep or {})
    twin, originals = float_twin(model)
    result = prune_(twin, ChannelPrune(ratio=0.0), example_inputs, keep=chosen or None)
    _restore(twin, originals)
    for name, child in twin.named_children():
        setattr(model, name, child)
    result.model = model
    return result


# ------------------------------------------------------------------------------- Bayesian ratio search
class APQNNSearch(Config):
    """Per-layer pruning ratios of a quantised model found by black-box search under a size budget.

    Attributes:
        size_ratio: budget as a fraction of the unpruned :func:`size_bits`, in (0, 1).
        n_trials: objective evaluations (the same for every sampler).
        sampler: ``"gp"`` (Gaussian-process BO, optuna ``GPSampler``: the paper's surrogate, sample-efficient
            on a few continuous dimensions), ``"tpe"`` (optuna ``TPESampler``) or ``"random"``.
        n_startup_trials: random trials before the GP / TPE model is used.
        max_ratio: the largest pruning ratio of one group, in (0, 1).
        proxy_steps: SGD steps on the training batches after pruning, before validation (0: BN re-estimation
            only).
        proxy_lr: learning rate of those steps.
        bn_batches: training batches used to re-estimate BatchNorm statistics after pruning.
        size_weight: objective = accuracy - ``size_weight`` * size / size_before.
        seed: seeds the sampler and the proxy training.
    """

    type_name: ClassVar[str] = "apqnn_search"

    size_ratio: float = Field(gt=0.0, lt=1.0)
    n_trials: int = Field(default=30, ge=1)
    sampler: Literal["gp", "tpe", "random"] = "gp"
    n_startup_trials: int = Field(default=8, ge=1)
    max_ratio: float = Field(default=0.9, gt=0.0, lt=1.0)
    proxy_steps: int = Field(default=0, ge=0)
    proxy_lr: float = Field(default=0.01, gt=0.0)
    bn_batches: int = Field(default=4, ge=0)
    size_weight: float = Field(default=0.0, ge=0.0)
    seed: int = Field(default=0, ge=0)


@dataclass
class SearchResult:
    """What :func:`search_ratios` found.

    Attributes:
        widths: best kept channels per group name.
        ratios: best pruning ratio per group name (``1 - width / channels``).
        value: objective of the best trial.
        size_bits: pruned size of the best trial; ``budget_bits`` the budget; ``size_before`` unpruned size.
        trials: per trial ``{"number", "direction", "widths", "size_bits", "value", "feasible"}``.
    """

    widths: dict[str, int]
    ratios: dict[str, float]
    value: float
    size_bits: int
    budget_bits: int
    size_before: int
    trials: list[dict[str, Any]] = field(default_factory=list)


class _SizeModel:
    """Exact :func:`size_bits` of the model pruned to given widths, without tracing it again: the groups are
    built once; for a width assignment every member module is sliced by its handler (as :func:`prune_` does)
    and the bits of the touched modules are recounted. Cached per width tuple. Assumes the pruned members do
    not share parameters with other modules."""

    def __init__(self, model: nn.Module, example_inputs: tuple[Any, ...]) -> None:
        from torchslim.pruning.structured.dependency import build_groups

        self.twin, self.originals = float_twin(model)
        self.groups = {g.name: g for g in build_groups(self.twin, example_inputs) if g.prunable}
        self.channels = {n: g.channels for n, g in self.groups.items()}
        self.size0 = size_bits(model)
        self._cache: dict[tuple[int, ...], int] = {}

    def _local_bits(self, path: str, mod: nn.Module) -> int:
        orig = self.originals.get(path)
        qbits = orig.bits if isinstance(orig, QConv2d) else None
        return sum((qbits if qbits is not None and n == "weight" else 32) * p.numel()
                   for n, p in mod.named_parameters(recurse=False))

    def size(self, widths: dict[str, int]) -> int:
        key = tuple(int(widths[n]) for n in self.channels)
        if key not in self._cache:
            mods: dict[str, nn.Module] = {}
            for name, w in widths.items():
                g = self.groups[name]
                if int(w) >= g.channels:
                    continue
                chosen = torch.arange(int(w))
                for m in g.members:
                    idx = chosen
                    if m.expand != 1:
                        idx = (chosen[:, None] * m.expand + torch.arange(m.expand)[None, :]).reshape(-1)
                    mod = mods.get(m.path, self.twin.get_submodule(m.path))
                    with torch.no_grad():
                        mods[m.path] = m.handler.prune_in(mod, idx) if m.role == "in" else m.handler.prune_out(mod,
                                                                                                              idx)
            delta = sum(self._local_bits(p, new) - self._local_bits(p, self.twin.get_submodule(p))
                        for p, new in mods.items())
            self._cache[key] = self.size0 + delta
        return self._cache[key]


def widths_for_direction(sizes: _SizeModel, direction: Sequence[float], budget: int, max_ratio: float,
                         iters: int = 30) -> dict[str, int] | None:
    """Widths ``n_keep(C_g, t * max_ratio * x_g / max(x))`` for the smallest ``t`` in [0, 1] whose size fits
    ``budget`` (bisection); ``None`` if even ``t = 1`` does not fit."""
    names = list(sizes.channels)
    if len(direction) != len(names):
        raise ValueError(f"direction has {len(direction)} entries for {len(names)} groups {names}")
    peak = max(float(v) for v in direction)
    x = [float(v) / peak if peak > 0 else 0.0 for v in direction]

    def at(t: float) -> dict[str, int]:
        return {n: n_keep(sizes.channels[n], min(max_ratio, t * max_ratio * xv)) for n, xv in zip(names, x,
                                                                                                   strict=True)}

    if sizes.size(at(1.0)) > budget:
        return None
    lo, hi = 0.0, 1.0
    if sizes.size(at(0.0)) <= budget:
        return at(0.0)
    for _ in range(iters):
        mid = (lo + hi) / 2
        if sizes.size(at(mid)) <= budget:
            hi = mid
        else:
            lo = mid
    return at(hi)


def uniform_widths(model: nn.Module, example_inputs: tuple[Any, ...], size_ratio: float,
                   max_ratio: float = 0.95) -> dict[str, int]:
    """The same pruning ratio in every group, the smallest one whose :func:`size_bits` fits
    ``size_ratio * size_bits(model)``.

    Raises:
        PruneError: the budget cannot be reached with ratios up to ``max_ratio``.
    """
    sizes = _SizeModel(model, example_inputs)
    budget = int(size_ratio * size_bits(model))
    w = widths_for_direction(sizes, [1.0] * len(sizes.channels), budget, max_ratio)
    if w is None:
        raise PruneError(f"uniform pruning cannot reach {size_ratio:.0%} of the size with ratios <= {max_ratio}; "
                         f"raise size_ratio or max_ratio")
    return w


def _bn_recalibrate(model: nn.Module, batches: Sequence[tuple[Tensor, Tensor]]) -> None:
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not bns or not batches:
        return
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative average over the batches
    model.train()
    with torch.no_grad():
        for x, _ in batches:
            model(x)
    for bn in bns:
        bn.momentum = 0.1


def _accuracy(model: nn.Module, data: Sequence[tuple[Tensor, Tensor]]) -> float:
    model.eval()
    right = n = 0
    with torch.no_grad():
        for x, y in data:
            right += int((model(x).argmax(1) == y).sum())
            n += int(y.numel())
    return right / max(n, 1)


def _as_pairs(data: Iterable[Any], what: str) -> list[tuple[Tensor, Tensor]]:
    out = []
    for b in data:
        if not (isinstance(b, (tuple, list)) and len(b) >= 2):
            raise PruneError(f"{what}: every batch must be an (x, y) pair, got {type(b).__name__}")
        out.append((b[0], b[1]))
    if not out:
        raise PruneError(f"{what} is empty: pass at least one (x, y) batch")
    return out


def search_ratios(model: nn.Module, config: APQNNSearch, example_inputs: tuple[Any, ...],
                  train_batches: Iterable[Any], val_batches: Iterable[Any],
                  callback: Callable[[dict[str, Any]], None] | None = None) -> SearchResult:
    """Search per-group pruning ratios of ``model`` (not modified) at ``config.size_ratio`` of its size.

    Every candidate is pruned by the redundancy criterion to widths at the budget (see the module doc),
    BN statistics are re-estimated on ``bn_batches`` of ``train_batches``, ``proxy_steps`` SGD steps are
    taken, and the objective is the accuracy on ``val_batches`` (minus the size term). The result's size is
    always within the budget.

    Raises:
        ConfigError: ``config`` is not an :class:`APQNNSearch`.
        PruneError: no trial found a feasible width assignment (raise ``max_ratio`` or ``size_ratio``), or
            the batches are malformed.
    """
    import optuna

    if not isinstance(config, APQNNSearch):
        raise ConfigError(f"search_ratios expects an APQNNSearch config, got {type(config).__name__}")
    train = _as_pairs(train_batches, "train_batches")
    val = _as_pairs(val_batches, "val_batches")
    sizes = _SizeModel(model, example_inputs)
    if not sizes.channels:
        raise PruneError("search_ratios: the model has no prunable channel group")
    size0 = size_bits(model)
    budget = int(config.size_ratio * size0)
    names = list(sizes.channels)
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # per-trial INFO lines and the greenlet notice
    sampler: optuna.samplers.BaseSampler
    if config.sampler == "gp":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            sampler = optuna.samplers.GPSampler(seed=config.seed, n_startup_trials=config.n_startup_trials,
                                                deterministic_objective=True)
    elif config.sampler == "tpe":
        sampler = optuna.samplers.TPESampler(seed=config.seed, n_startup_trials=config.n_startup_trials)
    else:
        sampler = optuna.samplers.RandomSampler(seed=config.seed)
    study = optuna.create_study(direction="maximize", sampler=sampler)
    records: list[dict[str, Any]] = []

    def objective(trial: optuna.trial.Trial) -> float:
        direction = [trial.suggest_float(f"x{i}", 0.0, 1.0) for i in range(len(names))]
        widths = widths_for_direction(sizes, direction, budget, config.max_ratio)
        rec: dict[str, Any] = {"number": trial.number, "direction": direction, "widths": widths,
                               "size_bits": None, "value": -1.0, "feasible": widths is not None}
        if widths is not None:
            m = copy.deepcopy(model)
            prune_quantized_(m, example_inputs, widths={n: w for n, w in widths.items()
                                                        if w < sizes.channels[n]})
            _bn_recalibrate(m, train[: config.bn_batches])
            if config.proxy_steps:
                torch.manual_seed(config.seed * 100_003 + trial.number)
                opt = torch.optim.SGD(m.parameters(), lr=config.proxy_lr, momentum=0.9)
                m.train()
                for s in range(config.proxy_steps):
                    x, y = train[s % len(train)]
                    opt.zero_grad()
                    F.cross_entropy(m(x), y).backward()
                    opt.step()
            rec["size_bits"] = size_bits(m)
            rec["value"] = _accuracy(m, val) - config.size_weight * rec["size_bits"] / size0
        records.append(rec)
        if callback is not None:
            callback(rec)
        return float(rec["value"])

    try:
        study.optimize(objective, n_trials=config.n_trials)
    finally:
        optuna.logging.set_verbosity(verbosity)
    feasible = [r for r in records if r["feasible"]]
    if not feasible:
        raise PruneError(f"search_ratios: none of {config.n_trials} trials reached the budget "
                         f"({config.size_ratio:.0%} of {size0} bits); raise max_ratio or size_ratio")
    best = max(feasible, key=lambda r: (r["value"], -r["number"]))
    widths = dict(best["widths"])
    return SearchResult(widths=widths, ratios={n: 1 - widths[n] / sizes.channels[n] for n in names},
                        value=float(best["value"]), size_bits=int(best["size_bits"]), budget_bits=budget,
                        size_before=size0, trials=records)
