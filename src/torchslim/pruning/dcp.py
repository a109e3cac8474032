"""Discrimination-aware channel pruning (DCP; Zhuang et al., TPAMI version, arXiv 2001.01050).

DCP keeps the input channels of a layer that matter for BOTH reconstructing the unpruned network's output
of that layer and for classifying from the features right after it:

1. **Discrimination-aware losses.** An auxiliary classifier (BatchNorm -> ReLU -> global average pool ->
   Linear) is attached to the output of every layer whose input channels are pruned; the network and the
   auxiliary classifiers are fine-tuned together with ``CE(final) + sum_p CE(aux_p)`` (``aux_train``).
   That fine-tuned network is the reference ("baseline") for reconstruction.
2. **Greedy channel selection, layer by layer (shallow to deep).** For layer ``l`` with weight ``W``
   (``[out, in, ...]``) the loss is
   ``L(W) = MSE(layer_l(x_pruned; W), layer_l(x_baseline; W_b)) + aux_weight * CE(aux_l(layer_l(x_pruned; W)), y)``
   on calibration samples, where ``x_pruned`` is the layer's input in the network pruned so far. Starting
   from the empty set ``A`` (all input weights masked to 0), repeat: compute ``G = dL/dW`` at the masked
   weights, add the unselected input channel ``j`` with the largest ``||G[:, j]||_F``, then optimise the
   weights of the selected channels (and the bias) for ``steps_per_channel`` SGD steps. After the last
   addition the selected weights get ``final_steps`` more steps.
3. **Stopping condition.** ``stop="fixed"``: stop at ``n_keep(C, ratio)`` channels (the sparsity constraint
   ``||W||_{2,0} <= kappa``). ``stop="adaptive"`` (the TPAMI paper's adaptive condition): stop as soon as
   adding a channel lowers the loss by no more than ``tol`` times the loss with no channel,
   ``(L_{t-1} - L_t) / L_0 <= tol``; that last channel is redundant and is dropped. The width is then
   chosen by the data (capped by ``n_keep(C, ratio)``).
4. **Physical removal.** The unselected channels are removed from the producers of the group and from the
   consumer (:func:`prune_selected_`, exactly these indices; the masked network and the pruned network
   compute the same function).

``aux_weight=0`` gives the reconstruction-only variant (ThiNet-like greedy selection + weight
re-optimisation) used as a baseline. Layers handled: every prunable dependency group whose channels are
read by exactly ONE Conv2d (``groups=1``) or Linear (chains such as VGG-style CNNs, the first conv of each
ResNet block); other groups (residual streams read by several layers, depthwise convs) are left intact
and listed in ``DCPResult.skipped``. Not implemented: DKP (kernel-level pruning).

Example::

    >>> import torch
    >>> from torch import nn
    >>> from torch.utils.data import TensorDataset
    >>> from torchslim.pruning.dcp import DCPConfig, dcp_prune_
    >>> from torchslim.train import TrainConfig
    >>> torch.manual_seed(0) and None
    >>> m = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
    ...                   nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
    ...                   nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 3))
    >>> data = TensorDataset(torch.randn(64, 1, 6, 6), torch.randint(0, 3, (64,)))
    >>> cfg = DCPConfig(ratio=0.5, aux_train=TrainConfig(epochs=1, batch_size=32), final_steps=5)
    >>> r = dcp_prune_(m, cfg, data, (torch.randn(1, 1, 6, 6),))
    >>> m[0].out_channels, m[3].out_channels, r.widths
    (4, 4, {'0': 4, '3': 4})
"""

from __future__ import annotations

import copy
import fnmatch
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn
from torch.func import functional_call
from torch.utils.data import Dataset

from torchslim.core.config import Config
from torchslim.core.errors import ConfigError
from torchslim.core.graph import run_with_hooks
from torchslim.pruning.api import ChannelPrune, PruneResult, prune_
from torchslim.pruning.importance import n_keep
from torchslim.train import TrainConfig, Trainer

__all__ = [
    "DCPConfig",
    "DCPResult",
    "LayerSelection",
    "adaptive_stop",
    "dcp_layers",
    "dcp_prune_",
    "dcp_select_",
    "greedy_pick",
    "prune_selected_",
    "select_channels_",
]


# ------------------------------------------------------------------------------------------------------
# removal of explicitly selected channels (shared with NPN)
# ------------------------------------------------------------------------------------------------------

def prune_selected_(model: nn.Module, example_inputs: tuple[Any, ...], keep: dict[str, torch.Tensor],
                    ) -> PruneResult:
    """Physically remove every channel NOT listed in ``keep[group name]`` (in place; groups not in ``keep``
    are left intact). A thin wrapper of :func:`~torchslim.pruning.prune_` with ``keep=``.

    Raises:
        PruneError: a group name is unknown, an index list is empty, out of range or repeated.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> m = nn.Sequential(nn.Conv2d(1, 4, 1), nn.ReLU(), nn.Conv2d(4, 2, 1))
        >>> _ = prune_selected_(m, (torch.randn(1, 1, 3, 3),), {"0": torch.tensor([1, 3])})
        >>> m[0].out_channels, m[2].in_channels
        (2, 2)
    """
    return prune_(model, ChannelPrune(ratio=0.0), example_inputs, keep=keep)


# ------------------------------------------------------------------------------------------------------
# config / result
# ------------------------------------------------------------------------------------------------------


class DCPConfig(Config):
    """Discrimination-aware channel pruning.

    Attributes:
        ratio: fraction of each layer's input channels removed (``stop="fixed"``), or the most that may be
            kept is ``n_keep(C, ratio)`` (``stop="adaptive"``; 0 = no cap), in [0, 1).
        stop: ``"fixed"`` (stop at ``n_keep(C, ratio)`` channels) or ``"adaptive"`` (relative loss decrease).
        tol: ``epsilon`` of the adaptive condition ``(L_{t-1} - L_t) / L_0 <= tol``.
        aux_weight: weight ``lambda`` of the auxiliary cross-entropy (0: reconstruction only).
        steps_per_channel: SGD steps on the selected weights after each added channel.
        final_steps: SGD steps on the selected weights after the selection.
        lr: learning rate of those steps (SGD, momentum 0.9).
        calib_samples: training samples used for the selection (the first ones of the data set).
        batch_size: mini-batch of the selection's SGD steps.
        aux_train: fine-tuning of the network with the auxiliary losses before the selection.
        aux_backbone: fine-tune the network too (True, as in the paper) or only the auxiliary heads.
        min_channels: never keep fewer channels per layer.
        include: glob patterns on module paths; if given, only groups with a producer matching one.
        exclude: glob patterns on module paths; groups with a member matching one are left intact.
    """

    type_name: ClassVar[str] = "dcp"

    ratio: float = Field(default=0.5, ge=0.0, lt=1.0)
    stop: Literal["fixed", "adaptive"] = "fixed"
    tol: float = Field(default=0.01, ge=0.0)
    aux_weight: float = Field(default=1.0, ge=0.0)
    steps_per_channel: int = Field(default=3, ge=0)
    final_steps: int = Field(default=40, ge=0)
    lr: float = Field(default=0.01, gt=0.0)
    calib_samples: int = Field(default=512, ge=1)
    batch_size: int = Field(default=128, ge=1)
    aux_train: TrainConfig = Field(default_factory=lambda: TrainConfig(epochs=2, batch_size=64, lr=0.01,
                                                                       schedule="cosine"))
    aux_backbone: bool = True
    min_channels: int = Field(default=1, ge=1)
    include: list[str] = Field(default_factory=list)
    exclude: list[str] = Field(default_factory=list)


@dataclass
class LayerSelection:
    """Greedy selection of one layer: ``order`` (channels in the order they were added, the dropped
    redundant one of the adaptive rule excluded), ``losses`` (``L_0`` with no channel, then the loss after
    each addition, the dropped one included), ``first_grad_norms`` (``||dL/dW[:, j]||_F`` at ``A = {}``)
    and ``stopped`` (``"fixed"``, ``"adaptive"`` or ``"all"``)."""

    order: list[int]
    losses: list[float]
    first_grad_norms: torch.Tensor
    stopped: str

    @property
    def keep(self) -> torch.Tensor:
        """Selected channel indices, ascending."""
        return torch.tensor(sorted(self.order), dtype=torch.long)


@dataclass
class DCPResult:
    """What :func:`dcp_select_` / :func:`dcp_prune_` did: ``keep`` and ``widths`` per pruned group,
    ``layers`` (group -> consumer path -> :class:`LayerSelection`), ``skipped`` (group, reason) and the
    physical removal ``prune`` (``None`` after :func:`dcp_select_`)."""

    keep: dict[str, torch.Tensor] = field(default_factory=dict)
    widths: dict[str, int] = field(default_factory=dict)
    layers: dict[str, tuple[str, LayerSelection]] = field(default_factory=dict)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    aux_heads: dict[str, nn.Module] = field(default_factory=dict)
    prune: PruneResult | None = None


# ------------------------------------------------------------------------------------------------------
# per-layer mechanics
# ------------------------------------------------------------------------------------------------------


def greedy_pick(grad: torch.Tensor, selected: torch.Tensor) -> int:
    """The unselected input channel (dim 1 of ``grad``) with the largest Frobenius norm of ``grad[:, j]``.

    Ties go to the lower index. ``selected`` is a boolean mask over the input channels.

    Raises:
        ValueError: every channel is already selected.

    Example:
        >>> import torch
        >>> g = torch.tensor([[1.0, 0.0, 3.0], [0.0, 2.0, 0.0]])
        >>> greedy_pick(g, torch.tensor([False, False, False])), greedy_pick(g, torch.tensor([False, False, True]))
        (2, 1)
    """
    if bool(selected.all()):
        raise ValueError("greedy_pick: every channel is already selected")
    norms = grad.detach().transpose(0, 1).reshape(grad.shape[1], -1).norm(dim=1).to(torch.float64)
    norms = norms.masked_fill(selected.to(norms.device), -1.0)
    best = float(norms.max())
    return int(torch.nonzero(norms == best)[0])


def adaptive_stop(losses: Sequence[float], tol: float) -> bool:
    """The adaptive stopping condition: ``(L_{t-1} - L_t) / L_0 <= tol``.

    ``losses[0]`` is the loss with no channel selected, ``losses[-1]`` the loss after the latest addition.
    Needs at least two entries (False otherwise). ``L_0 <= 0`` stops (nothing left to explain).

    Example:
        >>> adaptive_stop([10.0, 4.0, 3.95], tol=0.01), adaptive_stop([10.0, 4.0, 3.0], tol=0.01)
        (True, False)
    """
    if len(losses) < 2:
        return False
    if losses[0] <= 0:
        return True
    return (losses[-2] - losses[-1]) / losses[0] <= tol


def _layer_loss(layer: nn.Module, params: dict[str, torch.Tensor], x: torch.Tensor, y_ref: torch.Tensor,
                labels: torch.Tensor, aux: nn.Module | None, aux_weight: float) -> torch.Tensor:
    out = functional_call(layer, params, (x,))
    loss = F.mse_loss(out, y_ref)
    if aux is not None and aux_weight > 0:
        loss = loss + aux_weight * F.cross_entropy(aux(out), labels)
    return loss


def select_channels_(
    layer: nn.Module,
    x: torch.Tensor,
    y_ref: torch.Tensor,
    labels: torch.Tensor,
    aux: nn.Module | None,
    config: DCPConfig,
    max_keep: int,
) -> LayerSelection:
    """Greedy DCP selection of ``layer``'s input channels (in place: the layer's weight ends with the
    optimised values on the selected input channels and zeros elsewhere; the bias is optimised too).

    Args:
        layer: a Conv2d (``groups=1``) or Linear.
        x: the layer's inputs in the network pruned so far, ``[N, C, ...]``.
        y_ref: the unpruned reference network's outputs of this layer on the same samples.
        labels: class labels of the samples (for the auxiliary loss).
        aux: the auxiliary classifier on the layer's output (``None``: reconstruction only).
        config: a :class:`DCPConfig` (``stop``, ``tol``, ``aux_weight``, steps, ``lr``, ``batch_size``,
            ``min_channels``).
        max_keep: the most channels to select (the sparsity constraint).

    Example:
        >>> import torch
        >>> from torch import nn
        >>> lin = nn.Linear(3, 1, bias=False)
        >>> x = torch.randn(64, 3)
        >>> sel = select_channels_(lin, x, 5 * x[:, 1:2], torch.zeros(64, dtype=torch.long), None,
        ...                        DCPConfig(final_steps=0, steps_per_channel=0), max_keep=1)
        >>> sel.order
        [1]
    """
    if isinstance(layer, nn.Conv2d) and layer.groups != 1:
        raise ConfigError(f"DCP: grouped/depthwise conv (groups={layer.groups}) is not supported")
    if not isinstance(layer, (nn.Conv2d, nn.Linear)):
        raise ConfigError(f"DCP: layer must be Conv2d or Linear, got {type(layer).__name__}")
    c = int(x.shape[1])
    max_keep = max(1, min(int(max_keep), c))
    w0 = layer.weight.detach().clone()
    bias0 = layer.bias.detach().clone() if layer.bias is not None else None
    shape = [1, c] + [1] * (w0.dim() - 2)
    selected = torch.zeros(c, dtype=torch.bool)
    n = x.shape[0]
    aux_w = config.aux_weight
    if aux is not None:
        aux.eval()
        for p in aux.parameters():
            p.requires_grad_(False)

    w = w0.clone().requires_grad_(True)
    b = bias0.clone().requires_grad_(True) if bias0 is not None else None
    # plain SGD with momentum 0.9, written out (a torch.optim optimizer costs seconds to build the first time)
    opt_params = [t for t in (w, b) if t is not None]
    velocity = [torch.zeros_like(t) for t in opt_params]
    gen = torch.Generator().manual_seed(0)

    def params(weight: torch.Tensor) -> dict[str, torch.Tensor]:
        d = {"weight": weight}
        if b is not None:
            d["bias"] = b
        return d

    def full_loss_and_grad() -> tuple[float, torch.Tensor]:
        w_eff = (w.detach() * selected.view(shape).to(w.dtype)).requires_grad_(True)
        total = 0.0
        grad = torch.zeros_like(w_eff)
        for i in range(0, n, config.batch_size):
            sl = slice(i, i + config.batch_size)
            loss = _layer_loss(layer, params(w_eff), x[sl], y_ref[sl], labels[sl], aux, aux_w)
            frac = min(config.batch_size, n - i) / n
            (g,) = torch.autograd.grad(loss * frac, w_eff)
            grad += g
            total += float(loss.detach()) * frac
        return total, grad

    def optimise(steps: int) -> None:
        mask = selected.view(shape).to(w.dtype)
        for _ in range(steps):
            idx = torch.randint(0, n, (min(config.batch_size, n),), generator=gen)
            loss = _layer_loss(layer, params(w * mask), x[idx], y_ref[idx], labels[idx], aux, aux_w)
            grads = torch.autograd.grad(loss, opt_params)
            with torch.no_grad():
                for t, v, g in zip(opt_params, velocity, grads, strict=True):
                    v.mul_(0.9).add_(g)
                    t.sub_(config.lr * v)

    loss0, grad = full_loss_and_grad()
    first = grad.transpose(0, 1).reshape(c, -1).norm(dim=1).to(torch.float64)
    losses = [loss0]
    order: list[int] = []
    stopped = "all"
    while len(order) < c:
        j = greedy_pick(grad, selected)
        selected[j] = True
        order.append(j)
        optimise(config.steps_per_channel)
        loss_t, grad = full_loss_and_grad()
        losses.append(loss_t)
        if config.stop == "adaptive" and len(order) > config.min_channels and adaptive_stop(losses, config.tol):
            selected[order.pop()] = False  # the redundant channel that barely lowered the loss
            stopped = "adaptive"
            break
        if len(order) >= max_keep:
            stopped = "fixed" if len(order) < c else "all"
            break
    optimise(config.final_steps)
    with torch.no_grad():
        layer.weight.copy_(w.detach() * selected.view(shape).to(w.dtype))
        if layer.bias is not None and b is not None:
            layer.bias.copy_(b.detach())
    return LayerSelection(order=order, losses=losses, first_grad_norms=first, stopped=stopped)


# ------------------------------------------------------------------------------------------------------
# network level
# ------------------------------------------------------------------------------------------------------


def _forward_order(model: nn.Module, example_inputs: tuple[Any, ...]) -> dict[str, int]:
    order: dict[str, int] = {}
    hooks = []
    for path, mod in model.named_modules():
        if path:
            def hook(m: nn.Module, a: Any, o: Any, p: str = path) -> None:
                order.setdefault(p, len(order))

            hooks.append((mod, hook))
    run_with_hooks(model, example_inputs, hooks)
    return order


def dcp_layers(model: nn.Module, example_inputs: tuple[Any, ...], config: DCPConfig,
               ) -> tuple[list[tuple[Any, str]], list[tuple[str, str]]]:
    """The groups DCP prunes, as ``(group, consumer path)`` in forward order, and ``(group, reason)`` for the
    prunable groups it leaves intact (several consumers, depthwise consumer, include/exclude).

    Example:
        >>> import torch
        >>> from torch import nn
        >>> m = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Conv2d(4, 2, 3))
        >>> [(g.name, c) for g, c in dcp_layers(m, (torch.randn(1, 1, 8, 8),), DCPConfig())[0]]
        [('0', '2')]
    """
    from torchslim.pruning.structured.dependency import build_groups

    order = _forward_order(model, example_inputs)
    chosen: list[tuple[Any, str]] = []
    skipped: list[tuple[str, str]] = []
    for g in build_groups(model, example_inputs):
        if not g.prunable:
            continue
        if config.include and not any(fnmatch.fnmatchcase(m.path, p) for m in g.producers for p in config.include):
            skipped.append((g.name, "not matched by include"))
            continue
        if config.exclude and any(fnmatch.fnmatchcase(m.path, p) for m in g.members for p in config.exclude):
            skipped.append((g.name, "matched by exclude"))
            continue
        cons = [m for m in g.consumers if m.role == "in"]
        if len(cons) != 1:
            skipped.append((g.name, f"read by {len(cons)} layers (DCP needs exactly one)"))
            continue
        mod = model.get_submodule(cons[0].path)
        if cons[0].expand != 1 or not isinstance(mod, (nn.Conv2d, nn.Linear)) \
                or (isinstance(mod, nn.Conv2d) and mod.groups != 1):
            skipped.append((g.name, f"consumer {cons[0].path} is not a plain Conv2d/Linear"))
            continue
        chosen.append((g, cons[0].path))
    chosen.sort(key=lambda gc: order.get(gc[1], 1 << 30))
    return chosen, skipped


def _aux_head(layer: nn.Module, num_classes: int) -> nn.Module:
    if isinstance(layer, nn.Conv2d):
        c = layer.out_channels
        return nn.Sequential(nn.BatchNorm2d(c), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                             nn.Linear(c, num_classes))
    assert isinstance(layer, nn.Linear)
    if layer.out_features == num_classes:
        return nn.Identity()  # the classifier itself: its CE is the final loss
    return nn.Sequential(nn.ReLU(), nn.Linear(layer.out_features, num_classes))


class _AuxNet(nn.Module):
    def __init__(self, model: nn.Module, heads: dict[str, nn.Module]) -> None:
        super().__init__()
        self.model = model
        self.heads = nn.ModuleDict({k.replace(".", "__"): v for k, v in heads.items()})


def _calib(data: Dataset[Any], n: int) -> tuple[torch.Tensor, torch.Tensor]:
    size = len(data)  # type: ignore[arg-type]
    if size == 0:
        raise ConfigError("DCP: the data set is empty")
    items = [data[i] for i in range(min(n, size))]
    if not isinstance(items[0], (tuple, list)) or len(items[0]) < 2:
        raise ConfigError("DCP: the data set must yield (x, y) pairs (labels feed the auxiliary losses)")
    return torch.stack([it[0] for it in items]), torch.stack([torch.as_tensor(it[1]) for it in items])


def _outputs(model: nn.Module, path: str, x: torch.Tensor, batch: int, mode: str) -> torch.Tensor:
    from torchslim.distillation.taps import Taps

    outs = []
    with Taps(model, [path], mode=mode) as taps, torch.no_grad():  # type: ignore[arg-type]
        for i in range(0, len(x), batch):
            taps.clear()
            model(x[i:i + batch])
            outs.append(taps[path].detach())
    return torch.cat(outs)


def dcp_select_(model: nn.Module, config: DCPConfig, data: Dataset[Any], example_inputs: tuple[Any, ...],
                *, progress: bool = False) -> DCPResult:
    """Aux-loss fine-tuning then greedy DCP selection of every eligible layer (in place, NO removal: the
    unselected input weights of each consumer are zero, so removing them with :func:`prune_selected_`
    does not change the function).

    Args:
        model: a trained classifier (its output is ``[N, num_classes]`` logits).
        config: a :class:`DCPConfig`.
        data: map-style ``(x, y)`` training set (aux fine-tuning; the first ``calib_samples`` for selection).
        example_inputs: tuple with one example batch (graph capture).
        progress: show the aux fine-tuning progress bar.

    Raises:
        ConfigError: bad config/data, or no layer DCP can prune.

    Example::

        r = dcp_select_(model, DCPConfig(ratio=0.5), train_set, (x[:1],))
        prune_selected_(model, (x[:1],), r.keep)
    """
    if not isinstance(config, DCPConfig):
        raise ConfigError(f"dcp_select_ expects a DCPConfig, got {type(config).__name__}")
    if not isinstance(example_inputs, tuple):
        raise ConfigError(f"example_inputs must be a tuple, got {type(example_inputs).__name__}; wrap as (x,)")
    layers, skipped = dcp_layers(model, example_inputs, config)
    if not layers:
        raise ConfigError(f"DCP: no prunable layer with a single plain Conv2d/Linear consumer; skipped: {skipped}")
    was = model.training
    model.eval()
    with torch.no_grad():
        out = model(*example_inputs)
    if not isinstance(out, torch.Tensor) or out.dim() != 2:
        raise ConfigError("DCP: the model must return [N, num_classes] logits")
    num_classes = int(out.shape[1])
    heads = {path: _aux_head(model.get_submodule(path), num_classes) for _, path in layers}

    # 1. fine-tune with the discrimination-aware (auxiliary) losses
    from torchslim.distillation.taps import Taps

    paths = [p for p, h in heads.items() if not isinstance(h, nn.Identity)]
    if config.aux_weight > 0 and paths:
        net = _AuxNet(model, {p: heads[p] for p in paths})
        frozen: list[nn.Parameter] = []
        if not config.aux_backbone:
            frozen = [p for p in model.parameters() if p.requires_grad]
            for p in frozen:
                p.requires_grad_(False)
        taps = Taps(model, paths)

        def step_fn(m: nn.Module, batch: Any) -> torch.Tensor:
            x, y = batch[0], batch[1]
            taps.clear()
            logits = net.model(x)
            loss = F.cross_entropy(logits, y)
            for p in paths:
                loss = loss + F.cross_entropy(net.heads[p.replace(".", "__")](taps[p]), y)
            return loss

        try:
            Trainer(net, config.aux_train, step_fn=step_fn, progress=progress).fit(data)
        finally:
            taps.remove()
            for p in frozen:
                p.requires_grad_(True)

    # 2. greedy selection, shallow to deep, against the fine-tuned reference
    model.eval()
    reference = copy.deepcopy(model).eval()
    xs, ys = _calib(data, config.calib_samples)
    res = DCPResult(skipped=skipped, aux_heads=heads)
    bs = max(config.batch_size, 256)
    for g, path in layers:
        layer = model.get_submodule(path)
        x_in = _outputs(model, path, xs, bs, "input")
        y_ref = _outputs(reference, path, xs, bs, "output")
        k = g.channels if config.stop == "adaptive" and config.ratio == 0 else n_keep(g.channels, config.ratio)
        if k < config.min_channels:
            k = min(config.min_channels, g.channels)
        head = heads[path]
        sel = select_channels_(layer, x_in, y_ref, ys, head if config.aux_weight > 0 else None, config, k)
        res.layers[g.name] = (path, sel)
        res.keep[g.name] = sel.keep
        res.widths[g.name] = len(sel.order)
    model.train(was)
    return res


def dcp_prune_(model: nn.Module, config: DCPConfig, data: Dataset[Any], example_inputs: tuple[Any, ...],
               *, progress: bool = False) -> DCPResult:
    """DCP selection (:func:`dcp_select_`) then physical removal of the unselected channels (in place).

    Returns the :class:`DCPResult` with ``prune`` set. See the module docstring for the algorithm.

    Example::

        r = dcp_prune_(model, DCPConfig(ratio=0.5), train_set, (x[:1],))
        r.widths   # kept channels per group
    """
    res = dcp_select_(model, config, data, example_inputs, progress=progress)
    res.prune = prune_selected_(model, example_inputs, res.keep)
    return res
