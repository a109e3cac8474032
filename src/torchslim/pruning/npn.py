"""Network Pruning Network (NPN; Verma, Singh, Namboodiri, Rai, WACV 2020, arXiv 2001.05545).

A *pruner* network with the target's architecture reads the same input as the target and, through a
multi-output head, emits one sigmoid gate per target filter. The gates scale the target's feature maps
(filter ``j`` of layer ``l`` is multiplied by ``g_{l,j}(x)``), and the pruner is trained with the task loss of
the gated target plus a sparsity penalty on the gates:

``loss = CE(target(x; gates = pruner(x)), y) + sparsity * mean over filters and samples of gates``

(the gates are positive, so the mean is their L1 norm divided by their number). Pruning is then one-shot:
a filter whose gate, averaged over the training data, is below ``threshold`` is removed; the per-layer
ratios are not set by hand but come out of the learned gates. The gated-off filters are physically
removed (:func:`torchslim.pruning.dcp.prune_selected_`) and the pruned target is fine-tuned as usual.

Here a "filter" is a channel of a prunable dependency group that is followed by a ReLU (conv -> BN -> ReLU,
found by :func:`torchslim.pruning.adp.relu_groups`); the gate multiplies that ReLU's output, so a gate of
exactly 0 makes the channel invisible to every consumer and removing it does not change the function.
The pruner is a copy of the target whose last Linear layer's INPUT (the penultimate features) feeds the
gate head ``Linear(features, number of filters)``; the head's bias starts at ``gate_init`` (logit) so every
gate starts open. ``train_target=False`` (default) trains the pruner only, on the frozen pretrained target.
Composition with KD and int8 quantisation runs as a recipe: examples/recipes/npn_kd_int8.yaml, docs/npn-compose.md.

Example::

    >>> import torch
    >>> from torch import nn
    >>> from torch.utils.data import TensorDataset
    >>> from torchslim.pruning.npn import NPNConfig, npn_prune_
    >>> from torchslim.train import TrainConfig
    >>> torch.manual_seed(0) and None
    >>> m = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
    ...                   nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
    ...                   nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 3))
    >>> data = TensorDataset(torch.randn(64, 1, 6, 6), torch.randint(0, 3, (64,)))
    >>> r = npn_prune_(m, NPNConfig(sparsity=5.0, train=TrainConfig(epochs=2, batch_size=32)), data,
    ...                (torch.randn(1, 1, 6, 6),))
    >>> m[0].out_channels == r.widths["0"] and m[3].out_channels == r.widths["3"]
    True
"""

from __future__ import annotations

import copy
import fnmatch
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn
from torch.utils.data import Dataset

from torchslim.core.config import Config
from torchslim.core.errors import ConfigError
from torchslim.pruning.api import PruneResult
from torchslim.train import TrainConfig, Trainer

__all__ = [
    "GateLayout",
    "GatedTarget",
    "NPNConfig",
    "NPNResult",
    "PrunerNet",
    "gate_keep",
    "gate_layout",
    "macs_gate_weights",
    "mean_gates",
    "npn_prune_",
    "npn_train",
    "sparsity_loss",
]


class NPNConfig(Config):
    """Network Pruning Network.

    Attributes:
        sparsity: weight ``lambda`` of the gate sparsity penalty (larger: more filters removed).
        threshold: a filter is kept when its mean gate over the data is at least this, in (0, 1).
        gate_init: initial logit of every gate (``sigmoid(2) = 0.88``: all filters start open).
        train: the pruner's training run (AdamW by default: its step size does not depend on the scale of
            the penalty gradient, which is ``sparsity / number of gates`` per gate).
        train_target: also train the target's weights (False: only the pruner learns).
        gate_samples: training samples averaged for the one-shot keep decision (the first ones).
        min_channels: every gated group keeps at least this many filters (highest mean gates).
        round_to: the kept count of every group is rounded *up* to a multiple of this (the next highest
            mean gates are kept), capped at the group's width; runtimes' fast kernels want multiples of 8/16,
            and odd learned widths can make the pruned model no faster in ORT (docs/npn-compose.md).
        penalty: ``"uniform"`` (every gate weighs the same: the plain sparsity on the gates) or ``"macs"`` (each gate weighted
            by the MACs its filter's removal saves, :func:`torchslim.pruning.knapsack.channel_costs`,
            normalised to mean 1; an extension, not in the paper).
        include: glob patterns on module paths; if given, only groups with a producer matching one are gated.
        exclude: glob patterns on module paths; groups with a member matching one are not gated.
    """

    type_name: ClassVar[str] = "npn"

    sparsity: float = Field(default=1.0, ge=0.0)
    threshold: float = Field(default=0.5, gt=0.0, lt=1.0)
    gate_init: float = 2.0
    train: TrainConfig = Field(default_factory=lambda: TrainConfig(epochs=3, batch_size=64, lr=0.01,
                                                                   optimizer="adamw", weight_decay=0.0,
                                                                   schedule="cosine"))
    train_target: bool = False
    gate_samples: int = Field(default=2048, ge=1)
    min_channels: int = Field(default=1, ge=1)
    round_to: int = Field(default=1, ge=1)
    penalty: Literal["uniform", "macs"] = "uniform"
    include: list[str] = Field(default_factory=list)
    exclude: list[str] = Field(default_factory=list)


@dataclass(frozen=True)
class GateLayout:
    """Which gates scale which feature maps: ``groups[i] = (group name, ReLU paths, channels)``; the gates
    of group ``i`` are ``gates[:, offsets[i] : offsets[i] + channels]``."""

    groups: tuple[tuple[str, tuple[str, ...], int], ...]

    @property
    def total(self) -> int:
        """Number of gates (gated filters)."""
        return sum(c for _, _, c in self.groups)

    @property
    def offsets(self) -> list[int]:
        """Start index of each group's gates."""
        out, o = [], 0
        for _, _, c in self.groups:
            out.append(o)
            o += c
        return out

    def split(self, gates: torch.Tensor) -> dict[str, torch.Tensor]:
        """Group name -> its gates (last dim sliced)."""
        return {name: gates[..., o:o + c] for (name, _, c), o in zip(self.groups, self.offsets, strict=True)}


def gate_layout(model: nn.Module, example_inputs: tuple[Any, ...], config: NPNConfig | None = None,
                ) -> GateLayout:
    """The gated filters of ``model``: every prunable group measured by a ReLU (see
    :func:`torchslim.pruning.adp.relu_groups`), filtered by ``config.include/exclude``.

    Raises:
        ConfigError: no group can be gated.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> m = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Conv2d(4, 2, 3))
        >>> gate_layout(m, (torch.randn(1, 1, 8, 8),)).groups
        (('0', ('1',), 4),)
    """
    from torchslim.pruning.adp import relu_groups
    from torchslim.pruning.structured.dependency import build_groups

    cfg = config or NPNConfig()
    relus = relu_groups(model, example_inputs)
    out = []
    for g in build_groups(model, example_inputs):
        if not g.prunable or g.name not in relus:
            continue
        if cfg.include and not any(fnmatch.fnmatchcase(m.path, p) for m in g.producers for p in cfg.include):
            continue
        if cfg.exclude and any(fnmatch.fnmatchcase(m.path, p) for m in g.members for p in cfg.exclude):
            continue
        out.append((g.name, tuple(relus[g.name]), g.channels))
    if not out:
        raise ConfigError("NPN: no prunable channel group is followed by a ReLU; nothing to gate")
    return GateLayout(tuple(out))


class GatedTarget(nn.Module):
    """The target with its gated feature maps multiplied by gates: ``forward(x, gates)`` with gates of shape
    ``[N, layout.total]`` (per sample) or ``[layout.total]`` (shared). The target is not modified (forward
    hooks on its ReLUs, installed only during this module's forward or a :meth:`gated` block).

    Example:
        >>> import torch
        >>> from torch import nn
        >>> m = nn.Sequential(nn.Conv2d(1, 2, 1), nn.ReLU(), nn.Flatten(), nn.Linear(2, 1))
        >>> gt = GatedTarget(m, gate_layout(m, (torch.randn(1, 1, 1, 1),)))
        >>> x = torch.randn(3, 1, 1, 1)
        >>> bool(torch.allclose(gt(x, torch.ones(2)), m(x)))
        True
    """

    def __init__(self, target: nn.Module, layout: GateLayout) -> None:
        super().__init__()
        self.target = target
        self.layout = layout
        self._gates: dict[str, torch.Tensor] | None = None
        for _, relus, _ in layout.groups:
            for rp in relus:
                target.get_submodule(rp)  # fail early on a bad path

    def _hook(self, name: str) -> Any:
        def hook(mod: nn.Module, args: Any, out: torch.Tensor) -> torch.Tensor | None:
            if self._gates is None:
                return None
            g = self._gates[name]
            if g.dim() == 1:
                g = g.unsqueeze(0)
            return out * g.reshape(g.shape[0], g.shape[1], *([1] * (out.dim() - 2)))

        return hook

    @contextmanager
    def gated(self, gates: torch.Tensor) -> Iterator[None]:
        """Within the block, plain calls of the target are gated by ``gates``."""
        if gates.shape[-1] != self.layout.total:
            raise ConfigError(f"GatedTarget: expected {self.layout.total} gates, got shape {tuple(gates.shape)}")
        self._gates = self.layout.split(gates)
        handles = [self.target.get_submodule(rp).register_forward_hook(self._hook(name))
                   for name, relus, _ in self.layout.groups for rp in relus]
        try:
            yield
        finally:
            self._gates = None
            for h in handles:
                h.remove()

    def forward(self, x: torch.Tensor, gates: torch.Tensor) -> torch.Tensor:
        with self.gated(gates):
            return self.target(x)


def _last_linear(model: nn.Module) -> str:
    names = [p for p, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not names:
        raise ConfigError("NPN: the pruner needs a Linear classifier in the target (its input = features)")
    return names[-1]


class PrunerNet(nn.Module):
    """A copy of the target architecture whose penultimate features (the input of its last Linear) feed a
    gate head: ``forward(x) = sigmoid(head(features(x)))``, shape ``[N, n_gates]``.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> m = nn.Sequential(nn.Flatten(), nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
        >>> PrunerNet(m, n_gates=5)(torch.randn(2, 4)).shape
        torch.Size([2, 5])
    """

    def __init__(self, target: nn.Module, n_gates: int, gate_init: float = 2.0) -> None:
        super().__init__()
        self.backbone = copy.deepcopy(target)
        path = _last_linear(self.backbone)
        last = self.backbone.get_submodule(path)
        assert isinstance(last, nn.Linear)
        self.head = nn.Linear(last.in_features, n_gates)
        with torch.no_grad():
            self.head.weight.mul_(0.1)
            self.head.bias.fill_(gate_init)
        self._feat: torch.Tensor | None = None

        def hook(mod: nn.Module, args: Any) -> None:
            self._feat = args[0]

        last.register_forward_pre_hook(hook)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._feat = None
        self.backbone(x)
        assert self._feat is not None, "the pruner backbone's last Linear did not run"
        return torch.sigmoid(self.head(self._feat.flatten(1)))


def sparsity_loss(gates: torch.Tensor, weight: float, gate_weights: torch.Tensor | None = None) -> torch.Tensor:
    """``weight * mean(gates)`` over samples and filters (the L1 norm of the positive gates / their count);
    with ``gate_weights`` (one per filter) ``weight * mean(gates * gate_weights)``.

    Example:
        >>> import torch
        >>> float(sparsity_loss(torch.tensor([[0.5, 1.0], [0.0, 0.5]]), 2.0))
        1.0
    """
    if gate_weights is not None:
        return weight * (gates * gate_weights.to(gates.dtype)).mean()
    return weight * gates.mean()


def macs_gate_weights(model: nn.Module, layout: GateLayout, example_inputs: tuple[Any, ...]) -> torch.Tensor:
    """Per-gate weights proportional to the MACs removing that filter saves (mean 1 over the gates)."""
    from torchslim.pruning.knapsack import channel_costs
    from torchslim.pruning.structured.dependency import build_groups

    groups = {g.name: g for g in build_groups(model, example_inputs)}
    costs = channel_costs(model, [groups[n] for n, _, _ in layout.groups], example_inputs)
    w = torch.cat([torch.full((c,), float(costs[n])) for n, _, c in layout.groups])
    return w / w.mean() if float(w.mean()) > 0 else torch.ones_like(w)


def gate_keep(mean_gates: dict[str, torch.Tensor], threshold: float, min_channels: int = 1,
              round_to: int = 1) -> dict[str, torch.Tensor]:
    """Kept filters per group: mean gate ``>= threshold``; at least ``min_channels`` (the highest gates);
    the count rounded up to a multiple of ``round_to`` (capped at the group's width).

    Example:
        >>> import torch
        >>> gate_keep({"a": torch.tensor([0.9, 0.1, 0.6]), "b": torch.tensor([0.2, 0.3])}, 0.5)
        {'a': tensor([0, 2]), 'b': tensor([1])}
        >>> gate_keep({"a": torch.tensor([0.9, 0.1, 0.6, 0.3])}, 0.8, round_to=2)
        {'a': tensor([0, 2])}
    """
    from torchslim.pruning.importance import top_channels

    out = {}
    for name, g in mean_gates.items():
        k = max(int((g >= threshold).sum()), min(min_channels, g.numel()))
        k = min(-(-k // round_to) * round_to, g.numel())
        out[name] = top_channels(g.to(torch.float64), k)
    return out


@dataclass
class NPNResult:
    """What :func:`npn_train` / :func:`npn_prune_` did: ``mean_gates`` (group -> mean gate per filter over
    ``gate_samples``), ``keep`` / ``widths`` (one-shot decision), ``ratios`` (kept fraction per group, learned),
    ``layout``, ``pruner`` and ``prune`` (the physical removal, ``None`` after :func:`npn_train`)."""

    layout: GateLayout
    pruner: PrunerNet
    mean_gates: dict[str, torch.Tensor] = field(default_factory=dict)
    keep: dict[str, torch.Tensor] = field(default_factory=dict)
    widths: dict[str, int] = field(default_factory=dict)
    ratios: dict[str, float] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)
    prune: PruneResult | None = None


class _Pair(nn.Module):
    def __init__(self, pruner: PrunerNet, gated: GatedTarget) -> None:
        super().__init__()
        self.pruner = pruner
        self.gated = gated


def npn_train(target: nn.Module, config: NPNConfig, data: Dataset[Any], example_inputs: tuple[Any, ...],
              *, progress: bool = False) -> NPNResult:
    """Train a pruner for ``target`` (task loss of the gated target + ``sparsity`` * mean gate) and decide
    which filters to keep (mean gate over the first ``gate_samples`` training samples >= ``threshold``).
    The target is not pruned here (its weights change only with ``train_target=True``).

    Example::

        res = npn_train(model, NPNConfig(sparsity=2.0), train_set, (x[:1],))
        res.ratios   # learned kept fraction per layer
    """
    if not isinstance(config, NPNConfig):
        raise ConfigError(f"npn_train expects an NPNConfig, got {type(config).__name__}")
    if not isinstance(example_inputs, tuple):
        raise ConfigError(f"example_inputs must be a tuple, got {type(example_inputs).__name__}; wrap as (x,)")
    layout = gate_layout(target, example_inputs, config)
    pruner = PrunerNet(target, layout.total, config.gate_init)
    gated = GatedTarget(target, layout)
    pair = _Pair(pruner, gated)
    frozen = [] if config.train_target else [p for p in target.parameters() if p.requires_grad]
    for p in frozen:
        p.requires_grad_(False)
    hist: list[dict[str, Any]] = []
    gw = macs_gate_weights(target, layout, example_inputs) if config.penalty == "macs" else None

    def step_fn(m: nn.Module, batch: Any) -> torch.Tensor:
        x, y = batch[0], batch[1]
        if not config.train_target:
            target.eval()  # frozen target: BN uses its running statistics
        g = pair.pruner(x)
        return F.cross_entropy(pair.gated(x, g), y) + sparsity_loss(g, config.sparsity, gw)

    class _Log:
        def on_epoch_end(self, trainer: Trainer, epoch: int, logs: dict[str, Any]) -> None:
            hist.append({"epoch": epoch, **{k: v for k, v in logs.items() if isinstance(v, (int, float))}})

    try:
        Trainer(pair, config.train, step_fn=step_fn, callbacks=[_Log()], progress=progress).fit(data)
    finally:
        for p in frozen:
            p.requires_grad_(True)
    res = NPNResult(layout=layout, pruner=pruner, history=hist)
    res.mean_gates = mean_gates(pruner, layout, data, config.gate_samples)
    res.keep = gate_keep(res.mean_gates, config.threshold, config.min_channels, config.round_to)
    res.widths = {n: int(k.numel()) for n, k in res.keep.items()}
    res.ratios = {n: res.widths[n] / c for n, _, c in layout.groups}
    target.eval()
    return res


def mean_gates(pruner: PrunerNet, layout: GateLayout, data: Dataset[Any], samples: int = 2048,
               batch_size: int = 256) -> dict[str, torch.Tensor]:
    """Group -> per-filter gate averaged over the first ``samples`` items of ``data`` (pruner in eval mode)."""
    n = min(samples, len(data))  # type: ignore[arg-type]
    if n == 0:
        raise ConfigError("NPN: the data set is empty")
    was = pruner.training
    pruner.eval()
    total = torch.zeros(layout.total, dtype=torch.float64)
    with torch.no_grad():
        for i in range(0, n, batch_size):
            xs = torch.stack([data[j][0] for j in range(i, min(i + batch_size, n))])
            total += pruner(xs).to(torch.float64).sum(0)
    pruner.train(was)
    return {k: v.clone() for k, v in layout.split(total / n).items()}


def npn_prune_(target: nn.Module, config: NPNConfig, data: Dataset[Any], example_inputs: tuple[Any, ...],
               *, progress: bool = False) -> NPNResult:
    """Train the pruner (:func:`npn_train`), then physically remove the gated-off filters of ``target``
    (in place, one shot). Fine-tune the result as usual afterwards.

    Example::

        r = npn_prune_(model, NPNConfig(sparsity=2.0), train_set, (x[:1],))
        r.widths, r.prune.params_after
    """
    from torchslim.pruning.dcp import prune_selected_

    res = npn_train(target, config, data, example_inputs, progress=progress)
    res.prune = prune_selected_(target, example_inputs, res.keep)
    return res
