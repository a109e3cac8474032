"""Hyper / hypo neuron pruning and selective neuron adaptation (Mitra & Franco 2020, arXiv 2001.01755).

On **unlabelled target-domain data**, the activation statistics of the fully connected (FC) layers of a
trained model show *hyper* neurons (active for almost every input) and *hypo* neurons (almost never
active). The paper removes them to improve out-of-domain generalisation, or adapts only those neurons
first (unsupervised), then fine-tunes the whole network.

* :func:`activation_frequency`: per FC neuron, the fraction of target samples where its ReLU output is
  non-zero (the Linear output is > 0).
* :func:`classify_neurons` (thresholds) and :func:`top_hyper_hypo` (top-k of each kind).
* :func:`remove_neurons_`: physical removal of FC neurons (rows of the layer, columns of every consumer,
  via the dependency-group handlers); optionally the removed neurons' mean activation on the target data is
  folded into the consumers' bias, so a hypo neuron's removal is (almost) exact and a hyper neuron is
  replaced by its mean.
* :func:`adapt_neurons`: unsupervised adaptation on target data, updating only the chosen neurons (their
  incoming weights and bias) or whole layers (``neurons=None``); the loss is the prediction entropy or
  cross-entropy against the unadapted model's own predictions (pseudo-labels, ``AdaptConfig.loss``);
  BatchNorm running statistics stay frozen so that only the selected parameters change.
* :func:`finetune_network`: the same unsupervised loss on every parameter (blind full-network adaptation),
  and :func:`adapt_then_finetune`: selective neuron adaptation first, then full-network fine-tuning (the
  paper's proposed order).

Checked against: the abstract of arXiv 2001.01755 only (its full text could not be read here), so the
exact hyper/hypo statistics and thresholds, the adaptation loss and the fine-tuning schedule of the paper
are this module's choices, not the paper's: "hyper" = active (ReLU output > 0) on at least ``hyper`` of the
target samples, "hypo" = on at most ``hypo``, or the top-k of each; the unsupervised losses above.

Example::

    >>> import torch
    >>> from torch import nn
    >>> from torchslim.pruning.hyperhypo import activation_frequency, classify_neurons
    >>> m = nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 2))
    >>> with torch.no_grad():
    ...     _ = m[0].weight.copy_(torch.tensor([[1., 0.], [0., 0.], [0., 1.]]))
    ...     _ = m[0].bias.copy_(torch.tensor([10., -1., 0.]))
    >>> f = activation_frequency(m, [torch.randn(100, 2)], layers=["0"])
    >>> classify_neurons(f, hyper=0.95, hypo=0.05)["0"]
    {'hyper': [0], 'hypo': [1]}
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn
from torch.utils.data import Dataset

from torchslim.core.config import Config
from torchslim.core.errors import ConfigError
from torchslim.pruning.api import PruneError
from torchslim.train import TrainConfig, Trainer

__all__ = [
    "AdaptConfig",
    "activation_frequency",
    "adapt_neurons",
    "adapt_then_finetune",
    "finetune_network",
    "classify_neurons",
    "fc_layers",
    "mean_activations",
    "remove_neurons_",
    "top_hyper_hypo",
]


def fc_layers(model: nn.Module) -> list[str]:
    """Paths of the hidden Linear layers (every ``nn.Linear`` but the last one, which gives the outputs).

    Example:
        >>> fc_layers(nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2)))
        ['0']
    """
    names = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    return names[:-1]


def _inputs(data: Iterable[Any]) -> Iterable[torch.Tensor]:
    for b in data:
        yield b[0] if isinstance(b, (tuple, list)) else b


def activation_frequency(
    model: nn.Module, data: Iterable[Any], layers: list[str] | None = None,
) -> dict[str, torch.Tensor]:
    """Fraction of samples on which each neuron of each FC layer is active (Linear output > 0), float64.

    Labels in ``data`` are ignored (unsupervised). ``layers``: Linear module paths (default :func:`fc_layers`).
    The Linear output must be 2-D ``[N, features]``.

    Raises:
        PruneError: a path is not a Linear layer, or the data is empty.
    """
    layers = fc_layers(model) if layers is None else layers
    counts: dict[str, torch.Tensor] = {}
    total = 0
    handles = []
    for p in layers:
        mod = model.get_submodule(p)
        if not isinstance(mod, nn.Linear):
            raise PruneError(f"activation_frequency: {p!r} is a {type(mod).__name__}, not nn.Linear; FC layers of "
                             f"this model: {fc_layers(model)}")

        def hook(m: nn.Module, args: Any, y: torch.Tensor, p_: str = p) -> None:
            a = (y.detach() > 0).to(torch.float64).reshape(-1, y.shape[-1]).sum(0)
            counts[p_] = counts[p_] + a if p_ in counts else a

        handles.append(mod.register_forward_hook(hook))
    was = model.training
    try:
        model.eval()
        with torch.no_grad():
            for x in _inputs(data):
                model(x)
                total += x.shape[0]
    finally:
        model.train(was)
        for h in handles:
            h.remove()
    if total == 0:
        raise PruneError("activation_frequency: the data is empty; pass at least one batch of target inputs")
    return {p: c / total for p, c in counts.items()}


def classify_neurons(freq: dict[str, torch.Tensor], hyper: float = 0.95, hypo: float = 0.05,
                     ) -> dict[str, dict[str, list[int]]]:
    """Hyper (frequency >= ``hyper``) and hypo (frequency <= ``hypo``) neurons of each layer.

    Example:
        >>> classify_neurons({"fc": torch.tensor([1.0, 0.5, 0.0, 0.97])})
        {'fc': {'hyper': [0, 3], 'hypo': [2]}}
    """
    if not 0.0 <= hypo < hyper <= 1.0:
        raise ConfigError(f"classify_neurons: need 0 <= hypo < hyper <= 1, got hypo={hypo}, hyper={hyper}")
    return {p: {"hyper": [i for i, v in enumerate(f.tolist()) if v >= hyper],
                "hypo": [i for i, v in enumerate(f.tolist()) if v <= hypo]} for p, f in freq.items()}


def top_hyper_hypo(freq: dict[str, torch.Tensor], k_hyper: int, k_hypo: int) -> dict[str, list[int]]:
    """The ``k_hyper`` most and ``k_hypo`` least frequently active neurons of each layer (sorted indices).

    Example:
        >>> top_hyper_hypo({"fc": torch.tensor([0.9, 0.1, 0.5, 0.0, 1.0])}, 1, 2)
        {'fc': [1, 3, 4]}
    """
    out: dict[str, list[int]] = {}
    for p, f in freq.items():
        if k_hyper + k_hypo >= f.numel():
            raise PruneError(f"top_hyper_hypo: {k_hyper}+{k_hypo} neurons asked from {p!r} with {f.numel()}; "
                             "at least one must stay")
        order = torch.argsort(f, stable=True)
        pick = set(order[:k_hypo].tolist()) | set(order[f.numel() - k_hyper:].tolist() if k_hyper else [])
        out[p] = sorted(pick)
    return out



def remove_neurons_(
    model: nn.Module,
    remove: dict[str, list[int]],
    example_inputs: tuple[Any, ...],
    mean_activation: dict[str, torch.Tensor] | None = None,
) -> dict[str, int]:
    """Physically remove FC neurons in place: ``remove`` maps a Linear path to the output indices to drop.

    The layer loses those rows (weights, bias), every consumer of its dependency group loses the matching
    input columns. With ``mean_activation`` (layer path -> mean post-ReLU activation per neuron on the
    target data, e.g. from :func:`mean_activations`) each consumer's bias absorbs
    ``W[:, removed] @ mean[removed]``, i.e. the removed neurons are replaced by their average output.
    Returns the new width of each layer.

    Raises:
        PruneError: a path is not a prunable Linear, or every neuron of a layer would go.
    """
    from torchslim.pruning.structured.dependency import build_groups

    groups = build_groups(model, example_inputs)
    out: dict[str, int] = {}
    with torch.no_grad():
        for path, idx in remove.items():
            mod = model.get_submodule(path)
            if not isinstance(mod, nn.Linear):
                raise PruneError(f"remove_neurons_: {path!r} is a {type(mod).__name__}, not nn.Linear")
            g = next((g for g in groups if any(m.path == path and m.role == "out" for m in g.producers)), None)
            if g is None or not g.prunable or g.fixed or g.blocked:
                raise PruneError(f"remove_neurons_: the outputs of {path!r} cannot be pruned (model output, or "
                                 "an op the dependency graph does not understand)")
            drop = sorted(set(int(i) for i in idx))
            if any(not 0 <= i < mod.out_features for i in drop):
                raise PruneError(f"remove_neurons_: index out of range for {path!r} ({mod.out_features} neurons)")
            keep = torch.tensor([i for i in range(mod.out_features) if i not in set(drop)], dtype=torch.long)
            if keep.numel() == 0:
                raise PruneError(f"remove_neurons_: all {mod.out_features} neurons of {path!r} would be removed")
            for m in g.members:
                sub = model.get_submodule(m.path)
                if m.role == "in" and mean_activation is not None and path in mean_activation and drop \
                        and isinstance(sub, nn.Linear) and m.expand == 1:
                    shift = sub.weight[:, drop] @ mean_activation[path][drop].to(sub.weight.dtype)
                    if sub.bias is None:
                        sub.bias = nn.Parameter(shift.clone())
                    else:
                        sub.bias.add_(shift)
                k = keep
                if m.expand != 1:
                    k = (keep[:, None] * m.expand + torch.arange(m.expand)[None, :]).reshape(-1)
                new = m.handler.prune_in(sub, k) if m.role == "in" else m.handler.prune_out(sub, k)
                model.set_submodule(m.path, new)
            out[path] = int(keep.numel())
    return out


def mean_activations(model: nn.Module, data: Iterable[Any], layers: list[str]) -> dict[str, torch.Tensor]:
    """Mean of ``relu(Linear output)`` per neuron over ``data`` (inputs only), model in eval mode."""
    sums: dict[str, torch.Tensor] = {}
    total = 0
    handles = [model.get_submodule(p).register_forward_hook(
        lambda m, a, y, p_=p: sums.__setitem__(p_, sums.get(p_, 0) + y.detach().clamp_min(0).sum(0)))
        for p in layers]
    was = model.training
    try:
        model.eval()
        with torch.no_grad():
            for x in _inputs(data):
                model(x)
                total += x.shape[0]
    finally:
        model.train(was)
        for h in handles:
            h.remove()
    return {p: s / max(total, 1) for p, s in sums.items()}


class AdaptConfig(Config):
    """Unsupervised adaptation on unlabelled target inputs.

    Attributes:
        train: the optimisation run (labels in the data are ignored; ``weight_decay`` is forced to 0 so that
            parameters outside the selection do not move).
        loss: ``"entropy"`` (mean prediction entropy) or ``"pseudo_label"`` (cross-entropy against the
            argmax predictions of the model *before* adaptation, computed once).
        freeze_bn_stats: keep BatchNorm running statistics fixed during the run (BatchNorm layers in eval
            mode), so that only the selected parameters change.
    """

    type_name: ClassVar[str] = "hyperhypo_adapt"

    train: TrainConfig = Field(default_factory=lambda: TrainConfig(epochs=1, lr=0.01, schedule="constant"))
    loss: Literal["entropy", "pseudo_label"] = "entropy"
    freeze_bn_stats: bool = True


def _entropy_step(model: nn.Module, batch: Any) -> torch.Tensor:
    x = batch[0] if isinstance(batch, (tuple, list)) else batch
    logp = F.log_softmax(model(x), dim=1)
    return -(logp.exp() * logp).sum(1).mean()


def _pseudo_step(model: nn.Module, batch: Any) -> torch.Tensor:
    x, y = batch[0], batch[-1]
    return F.cross_entropy(model(x), y)


class _Hooks:
    """Removes gradient hooks at the end of the run and keeps BatchNorm in eval mode during it."""

    def __init__(self, hooks: list[Any], freeze_bn: bool) -> None:
        self.hooks = hooks
        self.freeze_bn = freeze_bn

    def on_train_start(self, trainer: Trainer) -> None:
        if self.freeze_bn:
            for m in trainer.model.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()

    def on_train_end(self, trainer: Trainer) -> None:
        for h in self.hooks:
            h.remove()


def _target_set(model: nn.Module, data: Dataset[Any], loss: str, batch_size: int) -> Dataset[Any]:
    """Inputs of ``data`` (labels dropped), with the model's own argmax predictions for ``pseudo_label``."""
    from torch.utils.data import DataLoader, TensorDataset

    xs = [b[0] if isinstance(b, (tuple, list)) else b for b in DataLoader(data, batch_size=batch_size)]
    if not xs:
        raise PruneError("adaptation: the target data is empty")
    x = torch.cat(xs)
    if loss != "pseudo_label":
        return TensorDataset(x)
    was = model.training
    model.eval()
    with torch.no_grad():
        y = torch.cat([model(x[i:i + batch_size]).argmax(1) for i in range(0, len(x), batch_size)])
    model.train(was)
    return TensorDataset(x, y)


def _run(model: nn.Module, data: Dataset[Any], config: AdaptConfig, hooks: list[Any]) -> None:
    target = _target_set(model, data, config.loss, config.train.batch_size)
    cfg = config.train.model_copy(update={"weight_decay": 0.0})
    step = _pseudo_step if config.loss == "pseudo_label" else _entropy_step
    was = model.training
    Trainer(model, cfg, step_fn=step, callbacks=[_Hooks(hooks, config.freeze_bn_stats)], progress=False).fit(target)
    model.train(was)


def adapt_neurons(
    model: nn.Module,
    data: Dataset[Any],
    config: AdaptConfig,
    neurons: dict[str, list[int]] | None = None,
    layers: list[str] | None = None,
) -> None:
    """Adapt ``model`` in place to unlabelled target ``data`` with the unsupervised loss of ``config``.

    Only the incoming weights and bias of the given ``neurons`` (Linear path -> output indices) move;
    ``neurons=None`` adapts the whole ``layers`` (default :func:`fc_layers`), i.e. blind layer adaptation.
    Every other parameter is frozen for the run (``requires_grad`` restored afterwards).

    Raises:
        ConfigError: ``config`` is not an :class:`AdaptConfig`.
        PruneError: a path is not ``nn.Linear``, or the data is empty.

    Example::

        freq = activation_frequency(model, target_batches)
        adapt_neurons(model, target_set, AdaptConfig(), neurons=top_hyper_hypo(freq, 8, 8))
    """
    if not isinstance(config, AdaptConfig):
        raise ConfigError(f"adapt_neurons expects an AdaptConfig, got {type(config).__name__}")
    layers = (list(neurons) if neurons is not None else fc_layers(model)) if layers is None else layers
    saved = {n: p.requires_grad for n, p in model.named_parameters()}
    hooks = []
    try:
        for p in model.parameters():
            p.requires_grad_(False)
        for path in layers:
            mod = model.get_submodule(path)
            if not isinstance(mod, nn.Linear):
                raise PruneError(f"adapt_neurons: {path!r} is not nn.Linear")
            params = [mod.weight] + ([mod.bias] if mod.bias is not None else [])
            for prm in params:
                prm.requires_grad_(True)
                if neurons is not None:
                    mask = torch.zeros(prm.shape[0], dtype=prm.dtype)
                    mask[list(neurons.get(path, []))] = 1.0
                    mask = mask.reshape(-1, *([1] * (prm.dim() - 1)))
                    hooks.append(prm.register_hook(lambda g, m=mask: g * m))
        _run(model, data, config, hooks)
    finally:
        for h in hooks:
            h.remove()
        for n, p in model.named_parameters():
            p.requires_grad_(saved.get(n, True))


def finetune_network(model: nn.Module, data: Dataset[Any], config: AdaptConfig) -> None:
    """Unsupervised fine-tuning of every trainable parameter of ``model`` (``requires_grad``) on target
    ``data`` (blind full-network adaptation; same losses as :func:`adapt_neurons`).

    Example::

        finetune_network(model, TensorDataset(target_x), AdaptConfig(loss="pseudo_label"))
    """
    if not isinstance(config, AdaptConfig):
        raise ConfigError(f"finetune_network expects an AdaptConfig, got {type(config).__name__}")
    _run(model, data, config, [])


def adapt_then_finetune(
    model: nn.Module,
    data: Dataset[Any],
    neurons: dict[str, list[int]],
    adapt: AdaptConfig,
    finetune: AdaptConfig,
) -> None:
    """The paper's order: adapt only the selected (hyper/hypo) ``neurons`` first (``adapt``), then fine-tune
    the whole network (``finetune``), both unsupervised on the target ``data``. With ``"pseudo_label"``
    each stage labels the data with the model as it is at the start of that stage.

    Example::

        pick = top_hyper_hypo(activation_frequency(model, batches), 8, 8)
        adapt_then_finetune(model, target_set, pick, AdaptConfig(), AdaptConfig())
    """
    adapt_neurons(model, data, adapt, neurons=neurons)
    finetune_network(model, data, finetune)
