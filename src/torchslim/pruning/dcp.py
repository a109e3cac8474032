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
   ``||W||_{2,0} <= kappa``). ``stop="adaptive"``: stop as soon as adding a channel lowers the loss by no
   more than ``tol`` times the loss with no channel, ``|L_{t-1} - L_t| / L_0 <= tol``; that last channel
   is redundant and is dropped. The width is then chosen by the data (capped by ``n_keep(C, ratio)``).
   See :func:`adaptive_stop` for what could and could not be checked against the paper.
4. **Physical removal.** The unselected channels are removed from the producers of the group and from the
   consumer (:func:`prune_selected_`, exactly these indices; the masked network and the pruned network
   compute the same function).

``aux_weight=0`` gives the reconstruction-only variant (ThiNet-like greedy selection + weight
re-optimisation) used as a baseline. Groups handled: every prunable dependency group whose channels are
read only by plain Conv2d (``groups=1``) / Linear layers. A group read by ONE layer (VGG-style chains, the
first conv of each ResNet block) is selected as above. A group read by SEVERAL layers (a ResNet's residual
stream: the next block's first conv and its projection shortcut, or the classifier) gets ONE shared channel
subset (:func:`select_shared_channels_`): ``L = sum_k MSE_k + aux_weight * mean_k CE_k`` over its
consumers ``k`` (each with its own auxiliary head), the greedy step adds the channel with the largest
``sqrt(sum_k ||dL/dW_k[:, j]||_F^2)`` (the gradient norm of the summed loss over every weight that reads
channel ``j``), then every consumer's selected weights are optimised. Groups are processed in the forward
order of their first consumer. ``multi_consumer=False`` leaves such groups intact. Groups with a depthwise
or flatten-expanded consumer are left intact and listed in ``DCPResult.skipped``.

**DKP** (discrimination-aware kernel pruning, the TPAMI extension): :func:`dkp_select_` / :func:`dkp_prune_`
run the same auxiliary fine-tuning and the same greedy loop (one helper, ``_greedy_select_``) with kernels
as units: a kernel is the ``kh x kw`` slice ``W[o, j]`` of a ``groups=1`` Conv2d, picked by
``||dL/dW[o, j]||_F`` (:func:`greedy_pick_kernels`). Shapes do not change, so every ``groups=1`` conv is
eligible, including convs reading residual streams. The result is a kernel-sparse weight kept sparse during
fine-tuning by a parametrization mask (:func:`apply_kernel_masks_`); :func:`kernel_sparse_macs` gives the
MACs a kernel-skipping implementation would run. Dense PyTorch/ORT convolutions get NO speed-up from it.
``kernels_per_step`` > 1 (the default picks ``ceil(k / 32)`` per iteration) is an efficiency shortcut;
``kernels_per_step=1`` is the one-at-a-time greedy.

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
    "DKPConfig",
    "DKPResult",
    "LayerSelection",
    "adaptive_stop",
    "apply_kernel_masks_",
    "dcp_layers",
    "dcp_prune_",
    "dcp_select_",
    "dkp_layers",
    "dkp_prune_",
    "dkp_select_",
    "greedy_pick",
    "greedy_pick_kernels",
    "kernel_sparse_macs",
    "prune_selected_",
    "remove_kernel_masks_",
    "select_channels_",
    "select_kernels_",
    "select_shared_channels_",
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


class _DiscriminationAware(Config):
    """The settings DCP and DKP share (documented on :class:`DCPConfig` and :class:`DKPConfig`)."""

    ratio: float = Field(default=0.5, ge=0.0, lt=1.0)
    stop: Literal["fixed", "adaptive"] = "fixed"
    tol: float = Field(default=0.01, ge=0.0)
    aux_weight: float = Field(default=1.0, ge=0.0)
    final_steps: int = Field(default=40, ge=0)
    lr: float = Field(default=0.01, gt=0.0)
    calib_samples: int = Field(default=512, ge=1)
    batch_size: int = Field(default=128, ge=1)
    aux_train: TrainConfig = Field(default_factory=lambda: TrainConfig(epochs=2, batch_size=64, lr=0.01,
                                                                       schedule="cosine"))
    aux_backbone: bool = True
    include: list[str] = Field(default_factory=list)
    exclude: list[str] = Field(default_factory=list)


class DCPConfig(_DiscriminationAware):
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
        multi_consumer: also select the channels of groups read by several layers (residual streams:
            one shared subset, summed reconstruction losses, see :func:`select_shared_channels_`); False
            leaves them intact (listed in ``DCPResult.skipped``).
        include: glob patterns on module paths; if given, only groups with a producer matching one.
        exclude: glob patterns on module paths; groups with a member matching one are left intact.
    """

    type_name: ClassVar[str] = "dcp"

    steps_per_channel: int = Field(default=3, ge=0)
    min_channels: int = Field(default=1, ge=1)
    multi_consumer: bool = True


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
    ``layers`` (group -> (consumer paths, :class:`LayerSelection`); several paths for a group read by
    several layers), ``skipped`` (group, reason) and the physical removal ``prune`` (``None`` after
    :func:`dcp_select_`)."""

    keep: dict[str, torch.Tensor] = field(default_factory=dict)
    widths: dict[str, int] = field(default_factory=dict)
    layers: dict[str, tuple[tuple[str, ...], LayerSelection]] = field(default_factory=dict)
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
    return _top_unselected(_unit_norms(grad, "channel"), selected, 1)[0]


def adaptive_stop(losses: Sequence[float], tol: float) -> bool:
    """The adaptive stopping condition: ``|L_{t-1} - L_t| / L_0 <= tol`` (stop when the latest addition
    lowered the loss by at most ``tol`` times the loss with nothing selected).

    ``losses[0]`` is the loss with no unit selected, ``losses[-1]`` the loss after the latest addition.
    Needs at least two entries (False otherwise). ``L_0 <= 0`` stops (nothing left to explain). One
    deliberate difference from the absolute-value form: a loss that goes UP by more than ``tol * L_0``
    also stops here (the signed decrease is compared), since that addition did not help.

    Source: the relative-decrease condition of the DCP paper's stopping rule ("stopping conditions" of
    the greedy algorithm, Zhuang et al. NeurIPS 2018 / arXiv 1810.11809, extended in the TPAMI version
    arXiv 2001.01050). The TPAMI full text (its section and equation numbers, and whether its "new
    adaptive stopping condition" differs from this form) could NOT be retrieved with the tools available
    here; the formula is the one we recall from the paper, not re-checked against the text.

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


def _unit_norms(grad: torch.Tensor, unit: Literal["channel", "kernel"]) -> torch.Tensor:
    """Frobenius norm of ``grad`` per selection unit, flat: per input channel (``grad[:, j]``) or per kernel
    (``grad[o, j]``, flat index ``o * C_in + j``)."""
    g = grad.detach()
    if unit == "channel":
        return g.transpose(0, 1).reshape(g.shape[1], -1).norm(dim=1).to(torch.float64)
    return g.reshape(g.shape[0] * g.shape[1], -1).norm(dim=1).to(torch.float64)


def _top_unselected(norms: torch.Tensor, selected: torch.Tensor, k: int) -> list[int]:
    """The ``k`` unselected units with the largest norms (ties: lower index first)."""
    masked = norms.masked_fill(selected.to(norms.device), -1.0)
    k = min(k, int((~selected).sum()))
    if k == 1:
        best = float(masked.max())
        return [int(torch.nonzero(masked == best)[0])]
    order = torch.sort(masked, descending=True, stable=True).indices
    return [int(i) for i in order[:k]]


def greedy_pick_kernels(grad: torch.Tensor, selected: torch.Tensor, k: int = 1) -> list[tuple[int, int]]:
    """DKP's greedy step: the ``k`` unselected kernels ``(output filter o, input channel j)`` with the largest
    Frobenius norm of ``grad[o, j]`` (a ``kh x kw`` slice of a conv weight gradient), largest first; ties go
    to the lower flat index ``o * C_in + j``. ``selected`` is a boolean ``[out, in]`` mask.

    Raises:
        ValueError: every kernel is already selected, or ``k < 1``.

    Example:
        >>> import torch
        >>> g = torch.zeros(2, 2, 1, 1)
        >>> g[0, 1], g[1, 0], g[1, 1] = 3.0, 5.0, 4.0
        >>> greedy_pick_kernels(g, torch.zeros(2, 2, dtype=torch.bool), k=2)
        [(1, 0), (1, 1)]
    """
    if grad.dim() < 2:
        raise ValueError(f"greedy_pick_kernels: grad must be [out, in, ...], got shape {tuple(grad.shape)}")
    if k < 1:
        raise ValueError(f"greedy_pick_kernels: k must be >= 1, got {k}")
    if bool(selected.all()):
        raise ValueError("greedy_pick_kernels: every kernel is already selected")
    c_in = int(grad.shape[1])
    flat = _top_unselected(_unit_norms(grad, "kernel"), selected.reshape(-1), k)
    return [(i // c_in, i % c_in) for i in flat]


def _greedy_select_(
    layers: Sequence[nn.Conv2d | nn.Linear], xs: Sequence[torch.Tensor], y_refs: Sequence[torch.Tensor],
    labels: torch.Tensor, auxes: Sequence[nn.Module | None], *,
    unit: Literal["channel", "kernel"], max_keep: int, per_step: int, steps: int, final_steps: int, lr: float,
    batch_size: int, stop: str, tol: float, aux_weight: float, min_units: int,
) -> LayerSelection:
    """The greedy loop shared by DCP (units = input channels) and DKP (units = kernels): from ``A = {}``,
    add the ``per_step`` unselected units with the largest ``||dL/dW_unit||_F``, optimise the selected weights
    for ``steps`` SGD steps, stop at ``max_keep`` units or by :func:`adaptive_stop`; ``final_steps`` more
    steps at the end. Writes the masked optimised weight (and bias) into each layer.

    Several ``layers`` (channel units only) share ONE input-channel subset (the consumers of a group with
    several readers): ``L = sum_k MSE_k + aux_weight * mean_k CE_k`` (mean over the consumers that have an
    auxiliary head) and a channel's score is the Frobenius norm of ``dL/dW`` over ALL its input weights,
    ``sqrt(sum_k ||dL/dW_k[:, j]||_F^2)``. With one layer this is exactly the single-layer DCP loss."""
    n_layers = len(layers)
    if n_layers == 0 or not (len(xs) == len(y_refs) == len(auxes) == n_layers):
        raise ValueError(f"_greedy_select_: need as many inputs/references/heads as layers ({n_layers})")
    if unit == "kernel" and n_layers != 1:
        raise ValueError("_greedy_select_: kernel units need exactly one layer")
    w0s = [lay.weight.detach().clone() for lay in layers]
    if unit == "channel":
        total = int(xs[0].shape[1])
        bad = [i for i, x in enumerate(xs) if int(x.shape[1]) != total or int(w0s[i].shape[1]) != total]
        if bad:
            raise ConfigError(f"DCP: the consumers of one group must read the same {total} channels; "
                              f"consumer(s) {bad} read {[int(xs[i].shape[1]) for i in bad]}")
        shapes = [[1, total] + [1] * (w.dim() - 2) for w in w0s]
    else:
        total = int(w0s[0].shape[0] * w0s[0].shape[1])
        shapes = [[int(w0s[0].shape[0]), int(w0s[0].shape[1])] + [1] * (w0s[0].dim() - 2)]
    max_keep = max(1, min(int(max_keep), total))
    per_step = max(1, int(per_step))
    selected = torch.zeros(total, dtype=torch.bool)
    n = int(xs[0].shape[0])
    if any(int(x.shape[0]) != n for x in xs):
        raise ValueError("_greedy_select_: every consumer needs the same calibration samples")
    n_aux = sum(1 for a in auxes if a is not None)
    ce_weight = aux_weight / n_aux if n_aux else 0.0
    for aux in auxes:
        if aux is not None:
            aux.eval()
            for p in aux.parameters():
                p.requires_grad_(False)

    ws = [w0.clone().requires_grad_(True) for w0 in w0s]
    bs = [lay.bias.detach().clone().requires_grad_(True) if lay.bias is not None else None for lay in layers]
    # plain SGD with momentum 0.9, written out (a torch.optim optimizer costs seconds to build the first time)
    opt_params = [t for pair in zip(ws, bs, strict=True) for t in pair if t is not None]
    velocity = [torch.zeros_like(t) for t in opt_params]
    gen = torch.Generator().manual_seed(0)

    def params(k: int, weight: torch.Tensor) -> dict[str, torch.Tensor]:
        d = {"weight": weight}
        b = bs[k]
        if b is not None:
            d["bias"] = b
        return d

    def mask(k: int) -> torch.Tensor:
        return selected.view(shapes[k]).to(ws[k].dtype)

    def loss_of(weights: Sequence[torch.Tensor], sl: Any) -> torch.Tensor:
        loss = _layer_loss(layers[0], params(0, weights[0]), xs[0][sl], y_refs[0][sl], labels[sl], auxes[0],
                           ce_weight)
        for k in range(1, n_layers):
            loss = loss + _layer_loss(layers[k], params(k, weights[k]), xs[k][sl], y_refs[k][sl], labels[sl],
                                      auxes[k], ce_weight)
        return loss

    def full_loss_and_grad() -> tuple[float, list[torch.Tensor]]:
        w_eff = [(ws[k].detach() * mask(k)).requires_grad_(True) for k in range(n_layers)]
        total_loss = 0.0
        grads = [torch.zeros_like(w) for w in w_eff]
        for i in range(0, n, batch_size):
            sl = slice(i, i + batch_size)
            loss = loss_of(w_eff, sl)
            frac = min(batch_size, n - i) / n
            for acc, g in zip(grads, torch.autograd.grad(loss * frac, w_eff), strict=True):
                acc += g
            total_loss += float(loss.detach()) * frac
        return total_loss, grads

    def scores(grads: list[torch.Tensor]) -> torch.Tensor:
        if n_layers == 1:
            return _unit_norms(grads[0], unit)
        return torch.stack([_unit_norms(g, unit) for g in grads]).pow(2).sum(dim=0).sqrt()

    def optimise(n_steps: int) -> None:
        masks = [mask(k) for k in range(n_layers)]
        for _ in range(n_steps):
            idx = torch.randint(0, n, (min(batch_size, n),), generator=gen)
            loss = loss_of([ws[k] * masks[k] for k in range(n_layers)], idx)
            grads = torch.autograd.grad(loss, opt_params)
            with torch.no_grad():
                for t, v, g in zip(opt_params, velocity, grads, strict=True):
                    v.mul_(0.9).add_(g)
                    t.sub_(lr * v)

    loss0, grad = full_loss_and_grad()
    first = scores(grad)
    losses = [loss0]
    order: list[int] = []
    stopped = "all"
    while len(order) < total:
        picks = _top_unselected(scores(grad), selected, min(per_step, max_keep - len(order)))
        for j in picks:
            selected[j] = True
        order.extend(picks)
        optimise(steps)
        loss_t, grad = full_loss_and_grad()
        losses.append(loss_t)
        if stop == "adaptive" and len(order) > min_units and adaptive_stop(losses, tol):
            for _ in picks:  # the redundant unit(s) that barely lowered the loss
                selected[order.pop()] = False
            stopped = "adaptive"
            break
        if len(order) >= max_keep:
            stopped = "fixed" if len(order) < total else "all"
            break
    optimise(final_steps)
    with torch.no_grad():
        for k, lay in enumerate(layers):
            lay.weight.copy_(ws[k].detach() * mask(k))
            b = bs[k]
            if lay.bias is not None and b is not None:
                lay.bias.copy_(b.detach())
    return LayerSelection(order=order, losses=losses, first_grad_norms=first, stopped=stopped)


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
    return select_shared_channels_([layer], [x], [y_ref], labels, [aux], config, max_keep)


def select_shared_channels_(
    layers: Sequence[nn.Module],
    xs: Sequence[torch.Tensor],
    y_refs: Sequence[torch.Tensor],
    labels: torch.Tensor,
    auxes: Sequence[nn.Module | None],
    config: DCPConfig,
    max_keep: int,
) -> LayerSelection:
    """Greedy DCP selection of ONE input-channel subset shared by several consumer layers (the readers of a
    residual stream: the next block's first conv and its shortcut, or the classifier), in place: every
    layer's weight ends with the optimised values on the selected input channels and zeros elsewhere.

    The loss is the sum of the per-consumer reconstruction errors plus the mean of their auxiliary losses,
    ``L = sum_k MSE(layer_k(x_k; W_k), y_ref_k) + aux_weight * mean_k CE(aux_k(layer_k(x_k; W_k)), y)``;
    the greedy step adds the channel ``j`` with the largest norm of the gradient of ``L`` with respect to
    all weights that read it, ``sqrt(sum_k ||dL/dW_k[:, j]||_F^2)`` (the single-layer criterion applied to
    the concatenated weights). Then the selected weights of every consumer are optimised (SGD on ``L``).
    With one layer this is :func:`select_channels_` (same loss, same picks, same weights).

    Args:
        layers: Conv2d (``groups=1``) / Linear consumers that all read the same ``C`` channels.
        xs: each layer's inputs in the network pruned so far (same samples, ``[N, C, ...]``).
        y_refs: each layer's outputs in the unpruned reference network.
        labels: class labels of the samples.
        auxes: each layer's auxiliary classifier (``None``: no auxiliary term for that layer).
        config: a :class:`DCPConfig`.
        max_keep: the most channels to select.

    Raises:
        ConfigError: a layer is not a plain Conv2d/Linear, or the layers read different channel counts.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> a, b = nn.Linear(3, 1, bias=False), nn.Linear(3, 1, bias=False)
        >>> x = torch.randn(64, 3)
        >>> sel = select_shared_channels_([a, b], [x, x], [x[:, :1], 2 * x[:, 2:]], torch.zeros(64, dtype=torch.long),
        ...                               [None, None], DCPConfig(final_steps=0, steps_per_channel=0), max_keep=1)
        >>> sel.order  # channel 2 explains the larger target (2 x[:, 2]) of the two consumers
        [2]
    """
    if len(layers) == 0:
        raise ConfigError("DCP: select_shared_channels_ needs at least one consumer layer")
    for layer in layers:
        if isinstance(layer, nn.Conv2d) and layer.groups != 1:
            raise ConfigError(f"DCP: grouped/depthwise conv (groups={layer.groups}) is not supported")
        if not isinstance(layer, (nn.Conv2d, nn.Linear)):
            raise ConfigError(f"DCP: layer must be Conv2d or Linear, got {type(layer).__name__}")
    plain = [layer for layer in layers if isinstance(layer, (nn.Conv2d, nn.Linear))]
    return _greedy_select_(plain, xs, y_refs, labels, auxes, unit="channel", max_keep=max_keep, per_step=1,
                           steps=config.steps_per_channel, final_steps=config.final_steps, lr=config.lr,
                           batch_size=config.batch_size, stop=config.stop, tol=config.tol,
                           aux_weight=config.aux_weight, min_units=config.min_channels)


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
               ) -> tuple[list[tuple[Any, tuple[str, ...]]], list[tuple[str, str]]]:
    """The groups DCP prunes, as ``(group, consumer paths)`` (consumers in forward order; several for a
    residual stream), groups sorted by their first consumer in forward order (shallow to deep), and
    ``(group, reason)`` for the prunable groups it leaves intact (a consumer that is not a plain
    Conv2d/Linear, several consumers with ``multi_consumer=False``, include/exclude).

    Example:
        >>> import torch
        >>> from torch import nn
        >>> m = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Conv2d(4, 2, 3))
        >>> [(g.name, c) for g, c in dcp_layers(m, (torch.randn(1, 1, 8, 8),), DCPConfig())[0]]
        [('0', ('2',))]
    """
    from torchslim.pruning.structured.dependency import build_groups

    order = _forward_order(model, example_inputs)
    last = 1 << 30
    chosen: list[tuple[Any, tuple[str, ...]]] = []
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
        cons = sorted((m for m in g.consumers if m.role == "in"), key=lambda m: order.get(m.path, last))
        if not cons:
            skipped.append((g.name, "read by no Conv2d/Linear layer"))
            continue
        if len(cons) > 1 and not config.multi_consumer:
            skipped.append((g.name, f"read by {len(cons)} layers (multi_consumer=False)"))
            continue
        bad = None
        for c in cons:
            mod = model.get_submodule(c.path)
            if c.expand != 1 or not isinstance(mod, (nn.Conv2d, nn.Linear)) \
                    or (isinstance(mod, nn.Conv2d) and mod.groups != 1):
                bad = c.path
                break
        if bad is not None:
            skipped.append((g.name, f"consumer {bad} is not a plain Conv2d/Linear"))
            continue
        chosen.append((g, tuple(c.path for c in cons)))
    chosen.sort(key=lambda gc: order.get(gc[1][0], last))
    return chosen, skipped


def _num_classes(model: nn.Module, example_inputs: tuple[Any, ...], who: str) -> int:
    """The class count of the model's logits (one no-grad forward); the auxiliary heads predict these classes."""
    with torch.no_grad():
        out = model(*example_inputs)
    if not isinstance(out, torch.Tensor) or out.dim() != 2:
        raise ConfigError(f"{who}: the model must return [N, num_classes] logits")
    return int(out.shape[1])


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


def _aux_finetune(model: nn.Module, heads: dict[str, nn.Module], aux_weight: float, aux_train: TrainConfig,
                  aux_backbone: bool, data: Dataset[Any], progress: bool) -> None:
    """Fine-tune ``model`` (or only the heads, ``aux_backbone=False``) with ``CE(final) + sum_p CE(aux_p)``
    (shared by DCP and DKP). Heads that are ``nn.Identity`` (the classifier itself) add nothing."""
    from torchslim.distillation.taps import Taps

    paths = [p for p, h in heads.items() if not isinstance(h, nn.Identity)]
    if aux_weight <= 0 or not paths:
        return
    net = _AuxNet(model, {p: heads[p] for p in paths})
    frozen: list[nn.Parameter] = []
    if not aux_backbone:
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
        Trainer(net, aux_train, step_fn=step_fn, progress=progress).fit(data)
    finally:
        taps.remove()
        for p in frozen:
            p.requires_grad_(True)


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
        raise ConfigError(f"DCP: no prunable group read only by plain Conv2d/Linear layers; skipped: {skipped}")
    was = model.training
    model.eval()
    num_classes = _num_classes(model, example_inputs, "DCP")
    heads = {path: _aux_head(model.get_submodule(path), num_classes) for _, paths in layers for path in paths}

    # 1. fine-tune with the discrimination-aware (auxiliary) losses
    _aux_finetune(model, heads, config.aux_weight, config.aux_train, config.aux_backbone, data, progress)

    # 2. greedy selection, shallow to deep, against the fine-tuned reference
    model.eval()
    reference = copy.deepcopy(model).eval()
    xs, ys = _calib(data, config.calib_samples)
    res = DCPResult(skipped=skipped, aux_heads=heads)
    bs = max(config.batch_size, 256)
    for g, paths in layers:
        x_in = [_outputs(model, path, xs, bs, "input") for path in paths]
        y_ref = [_outputs(reference, path, xs, bs, "output") for path in paths]
        k = g.channels if config.stop == "adaptive" and config.ratio == 0 else n_keep(g.channels, config.ratio)
        if k < config.min_channels:
            k = min(config.min_channels, g.channels)
        auxes = [heads[path] if config.aux_weight > 0 else None for path in paths]
        sel = select_shared_channels_([model.get_submodule(p) for p in paths], x_in, y_ref, ys, auxes, config, k)
        res.layers[g.name] = (paths, sel)
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


# ------------------------------------------------------------------------------------------------------
# DKP: discrimination-aware KERNEL pruning
# ------------------------------------------------------------------------------------------------------


class DKPConfig(_DiscriminationAware):
    """Discrimination-aware kernel pruning (DKP, TPAMI version of DCP): the same losses and greedy loop as
    :class:`DCPConfig`, but the units are kernels (one ``kh x kw`` slice ``W[o, j]`` of a Conv2d weight).

    Attributes:
        ratio: fraction of each conv's kernels (``out * in``) removed (``stop="fixed"``), or the cap
            ``n_keep(out * in, ratio)`` on the kept ones (``stop="adaptive"``; 0 = no cap), in [0, 1).
        layer_ratios: per-layer override of ``ratio`` (module path -> ratio), e.g. to match another
            method's per-layer kernel counts.
        stop: ``"fixed"`` or ``"adaptive"`` (see :func:`adaptive_stop`).
        tol: ``epsilon`` of the adaptive condition.
        aux_weight: weight of the auxiliary cross-entropy (0: reconstruction only).
        kernels_per_step: kernels added per greedy iteration. 1 is the paper's one-at-a-time greedy; 0
            (default) = ``ceil(max_keep / max_rounds)`` so that a layer takes at most ``max_rounds``
            iterations (an efficiency shortcut: a 64x64 conv has 4,096 kernels).
        max_rounds: greedy iterations per layer when ``kernels_per_step = 0``.
        steps_per_pick: SGD steps on the selected weights after each greedy iteration.
        final_steps: SGD steps on the selected weights after the selection.
        lr: learning rate of those steps (SGD, momentum 0.9).
        calib_samples: training samples used for the selection (the first ones of the data set).
        batch_size: mini-batch of the selection's SGD steps.
        aux_train: fine-tuning of the network with the auxiliary losses before the selection.
        aux_backbone: fine-tune the network too (True) or only the auxiliary heads.
        min_kernels: never keep fewer kernels per layer.
        include: glob patterns on module paths; if given, only convs matching one.
        exclude: glob patterns on module paths; convs matching one are left dense.
    """

    type_name: ClassVar[str] = "dkp"

    layer_ratios: dict[str, float] = Field(default_factory=dict)
    kernels_per_step: int = Field(default=0, ge=0)
    max_rounds: int = Field(default=32, ge=1)
    steps_per_pick: int = Field(default=3, ge=0)
    min_kernels: int = Field(default=1, ge=1)


@dataclass
class DKPResult:
    """What :func:`dkp_select_` / :func:`dkp_prune_` did: ``masks`` (conv path -> boolean ``[out, in]``,
    True = kernel kept), ``layers`` (conv path -> :class:`LayerSelection`; ``order`` holds flat kernel
    indices ``o * in + j``), ``skipped`` (path, reason) and the auxiliary heads."""

    masks: dict[str, torch.Tensor] = field(default_factory=dict)
    layers: dict[str, LayerSelection] = field(default_factory=dict)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    aux_heads: dict[str, nn.Module] = field(default_factory=dict)

    @property
    def kernel_sparsity(self) -> float:
        """Fraction of the pruned convs' kernels that are zero (0 when nothing was selected)."""
        total = sum(m.numel() for m in self.masks.values())
        return 1.0 - sum(int(m.sum()) for m in self.masks.values()) / total if total else 0.0


def select_kernels_(
    layer: nn.Conv2d,
    x: torch.Tensor,
    y_ref: torch.Tensor,
    labels: torch.Tensor,
    aux: nn.Module | None,
    config: DKPConfig,
    max_keep: int,
) -> LayerSelection:
    """Greedy DKP selection of ``layer``'s kernels (in place: the weight ends with the optimised values on
    the selected kernels and zeros elsewhere; the bias is optimised too). Same loss as
    :func:`select_channels_`; each iteration adds the unselected kernel(s) with the largest
    ``||dL/dW[o, j]||_F`` (:func:`greedy_pick_kernels`).

    Args:
        layer: a Conv2d with ``groups=1``.
        x, y_ref, labels, aux: as in :func:`select_channels_`.
        config: a :class:`DKPConfig`.
        max_keep: the most kernels to select.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> conv = nn.Conv2d(2, 2, 1, bias=False)
        >>> x = torch.randn(64, 2, 3, 3)
        >>> y = torch.stack([3 * x[:, 1], torch.zeros_like(x[:, 0])], 1)  # only kernel (0, 1) matters
        >>> sel = select_kernels_(conv, x, y, torch.zeros(64, dtype=torch.long), None,
        ...                       DKPConfig(final_steps=0, steps_per_pick=0, kernels_per_step=1), max_keep=1)
        >>> sel.order, int((conv.weight != 0).sum())
        ([1], 1)
    """
    if not isinstance(layer, nn.Conv2d) or layer.groups != 1:
        raise ConfigError(f"DKP: layer must be a Conv2d with groups=1, got {layer!r}; kernels of grouped or "
                          "depthwise convs are not selected")
    max_keep = max(1, min(int(max_keep), layer.out_channels * layer.in_channels))
    per_step = config.kernels_per_step or -(-max_keep // config.max_rounds)
    return _greedy_select_([layer], [x], [y_ref], labels, [aux], unit="kernel", max_keep=max_keep, per_step=per_step,
                           steps=config.steps_per_pick, final_steps=config.final_steps, lr=config.lr,
                           batch_size=config.batch_size, stop=config.stop, tol=config.tol,
                           aux_weight=config.aux_weight, min_units=config.min_kernels)


def dkp_layers(model: nn.Module, config: DKPConfig) -> tuple[list[str], list[tuple[str, str]]]:
    """The convs DKP prunes (every ``Conv2d`` with ``groups=1`` and more than one kernel, include/exclude
    applied), in module order, and ``(path, reason)`` for the convs it leaves dense. Kernel pruning does
    not change any shape, so convs that read residual streams (several consumers) are handled too.

    Example:
        >>> from torch import nn
        >>> m = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3, groups=4), nn.Conv2d(4, 2, 1))
        >>> dkp_layers(m, DKPConfig())
        (['0', '3'], [('2', 'grouped/depthwise conv (groups=4)')])
    """
    chosen: list[str] = []
    skipped: list[tuple[str, str]] = []
    for path, mod in model.named_modules():
        if not isinstance(mod, nn.Conv2d):
            continue
        if mod.groups != 1:
            skipped.append((path, f"grouped/depthwise conv (groups={mod.groups})"))
        elif mod.in_channels * mod.out_channels < 2:
            skipped.append((path, "a single kernel"))
        elif config.include and not any(fnmatch.fnmatchcase(path, p) for p in config.include):
            skipped.append((path, "not matched by include"))
        elif config.exclude and any(fnmatch.fnmatchcase(path, p) for p in config.exclude):
            skipped.append((path, "matched by exclude"))
        else:
            chosen.append(path)
    return chosen, skipped


def dkp_select_(model: nn.Module, config: DKPConfig, data: Dataset[Any], example_inputs: tuple[Any, ...],
                *, progress: bool = False) -> DKPResult:
    """Aux-loss fine-tuning then greedy DKP kernel selection of every eligible conv, shallow to deep (in
    place: the unselected kernels are zero; NO mask is installed, see :func:`dkp_prune_`).

    Args:
        model: a trained classifier (its output is ``[N, num_classes]`` logits).
        config: a :class:`DKPConfig`.
        data: map-style ``(x, y)`` training set (aux fine-tuning; the first ``calib_samples`` for selection).
        example_inputs: tuple with one example batch (forward order, number of classes).
        progress: show the aux fine-tuning progress bar.

    Raises:
        ConfigError: bad config/data, an unknown path in ``layer_ratios``, or no conv DKP can prune.

    Example::

        r = dkp_select_(model, DKPConfig(ratio=0.75), train_set, (x[:1],))
        r.kernel_sparsity   # ~0.75
    """
    if not isinstance(config, DKPConfig):
        raise ConfigError(f"dkp_select_ expects a DKPConfig, got {type(config).__name__}")
    if not isinstance(example_inputs, tuple):
        raise ConfigError(f"example_inputs must be a tuple, got {type(example_inputs).__name__}; wrap as (x,)")
    layers, skipped = dkp_layers(model, config)
    unknown = sorted(set(config.layer_ratios) - set(layers))
    if unknown:
        raise ConfigError(f"DKP: layer_ratios names {unknown}, which are not prunable convs; prunable: {layers}")
    bad = {k: v for k, v in config.layer_ratios.items() if not 0.0 <= v < 1.0}
    if bad:
        raise ConfigError(f"DKP: layer_ratios must be in [0, 1), got {bad}")
    if not layers:
        raise ConfigError(f"DKP: no Conv2d with groups=1 to prune; skipped: {skipped}")
    was = model.training
    model.eval()
    num_classes = _num_classes(model, example_inputs, "DKP")
    order = _forward_order(model, example_inputs)
    layers.sort(key=lambda p: order.get(p, 1 << 30))
    heads = {path: _aux_head(model.get_submodule(path), num_classes) for path in layers}
    _aux_finetune(model, heads, config.aux_weight, config.aux_train, config.aux_backbone, data, progress)

    model.eval()
    reference = copy.deepcopy(model).eval()
    xs, ys = _calib(data, config.calib_samples)
    res = DKPResult(skipped=skipped, aux_heads=heads)
    bs = max(config.batch_size, 256)
    for path in layers:
        layer = model.get_submodule(path)
        assert isinstance(layer, nn.Conv2d)
        total = layer.out_channels * layer.in_channels
        ratio = config.layer_ratios.get(path, config.ratio)
        k = total if config.stop == "adaptive" and ratio == 0 else n_keep(total, ratio)
        k = max(k, min(config.min_kernels, total))
        x_in = _outputs(model, path, xs, bs, "input")
        y_ref = _outputs(reference, path, xs, bs, "output")
        sel = select_kernels_(layer, x_in, y_ref, ys, heads[path] if config.aux_weight > 0 else None, config, k)
        mask = torch.zeros(total, dtype=torch.bool)
        mask[sel.order] = True
        res.layers[path] = sel
        res.masks[path] = mask.view(layer.out_channels, layer.in_channels)
    model.train(was)
    return res


class _KernelMask(nn.Module):
    """Parametrization ``weight = original * mask[:, :, None, None]``: the gradient of a masked kernel is
    exactly 0, so it stays 0 under SGD, momentum, weight decay and Adam."""

    def __init__(self, mask: torch.Tensor) -> None:
        super().__init__()
        self.mask: torch.Tensor
        self.register_buffer("mask", mask, persistent=False)

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        shape = [int(d) for d in self.mask.shape] + [1] * (w.dim() - 2)
        return w * self.mask.to(w.dtype).view(shape)


def apply_kernel_masks_(model: nn.Module, masks: dict[str, torch.Tensor]) -> None:
    """Install a persistent kernel mask on each conv (a ``torch.nn.utils.parametrize`` parametrization):
    masked kernels are zero in every forward and get zero gradient, so fine-tuning keeps them at zero.
    State-dict keys of a masked conv become ``<path>.parametrizations.weight.original``; call
    :func:`remove_kernel_masks_` before export or saving for a plain model.

    Raises:
        ConfigError: a path is not a Conv2d, or a mask is not boolean ``[out, in]``.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> m = nn.Sequential(nn.Conv2d(2, 2, 1))
        >>> apply_kernel_masks_(m, {"0": torch.tensor([[True, False], [False, True]])})
        >>> int((m[0].weight == 0).sum())
        2
        >>> remove_kernel_masks_(m)
    """
    from torch.nn.utils import parametrize

    for path, mask in masks.items():
        mod = model.get_submodule(path)
        if not isinstance(mod, nn.Conv2d):
            raise ConfigError(f"kernel mask on {path!r}: not a Conv2d ({type(mod).__name__})")
        if mask.dtype != torch.bool or tuple(mask.shape) != (mod.out_channels, mod.in_channels // mod.groups):
            raise ConfigError(f"kernel mask on {path!r}: expected a bool tensor of shape "
                              f"{(mod.out_channels, mod.in_channels // mod.groups)}, got {mask.dtype} "
                              f"{tuple(mask.shape)}")
        if parametrize.is_parametrized(mod, "weight"):
            parametrize.remove_parametrizations(mod, "weight", leave_parametrized=True)
        with torch.no_grad():
            mod.weight.mul_(mask.to(mod.weight.dtype).view(*mask.shape, 1, 1))
        parametrize.register_parametrization(mod, "weight", _KernelMask(mask.clone()))


def remove_kernel_masks_(model: nn.Module) -> None:
    """Remove the masks of :func:`apply_kernel_masks_` (the weights keep their zeros; plain state dict).

    Example:
        >>> from torch import nn
        >>> remove_kernel_masks_(nn.Sequential(nn.Conv2d(1, 1, 1)))  # no mask: no-op
    """
    from torch.nn.utils import parametrize

    for mod in model.modules():
        if isinstance(mod, nn.Conv2d) and parametrize.is_parametrized(mod, "weight"):
            plist = mod.parametrizations["weight"]  # type: ignore[index]
            if any(isinstance(p, _KernelMask) for p in plist):
                parametrize.remove_parametrizations(mod, "weight", leave_parametrized=True)


def kernel_sparse_macs(model: nn.Module, example_inputs: tuple[Any, ...]) -> tuple[int, int]:
    """``(dense MACs, kernel-sparse MACs)`` of one forward: the second counts a ``groups=1`` conv at
    ``nonzero kernels / (out * in)`` of its dense MACs (what an implementation that skips zero kernels
    would execute; the dense PyTorch/ORT kernels execute the first).

    Example:
        >>> import torch
        >>> from torch import nn
        >>> m = nn.Sequential(nn.Conv2d(2, 2, 3, padding=1, bias=False))
        >>> with torch.no_grad():
        ...     m[0].weight[0, 1] = 0
        >>> kernel_sparse_macs(m, (torch.randn(1, 2, 4, 4),))  # 2*2*9*16 dense, 3/4 of it sparse
        (576, 432)
    """
    from torchslim.core.cost import profile

    rep = profile(model, example_inputs)
    sparse = rep.macs
    for lc in rep.layers:
        if not lc.name:
            continue
        mod = model.get_submodule(lc.name)
        if isinstance(mod, nn.Conv2d) and mod.groups == 1 and lc.macs:
            w = mod.weight.detach()
            nz = int((w.reshape(w.shape[0] * w.shape[1], -1).abs().sum(dim=1) > 0).sum())
            sparse -= lc.macs - lc.macs * nz // (w.shape[0] * w.shape[1])
    return int(rep.macs), int(sparse)


def dkp_prune_(model: nn.Module, config: DKPConfig, data: Dataset[Any], example_inputs: tuple[Any, ...],
               *, progress: bool = False) -> DKPResult:
    """DKP selection (:func:`dkp_select_`) then persistent kernel masks (:func:`apply_kernel_masks_`), so
    that any fine-tuning afterwards keeps the removed kernels at zero. Shapes do not change: a dense
    runtime gets no speed-up from kernel sparsity (see :func:`kernel_sparse_macs` for the MACs a
    kernel-sparse implementation would save).

    Example::

        r = dkp_prune_(model, DKPConfig(ratio=0.75), train_set, (x[:1],))
        Trainer(model, TrainConfig(epochs=3)).fit(train_set)   # masked kernels stay 0
        remove_kernel_masks_(model)
    """
    res = dkp_select_(model, config, data, example_inputs, progress=progress)
    apply_kernel_masks_(model, res.masks)
    return res
