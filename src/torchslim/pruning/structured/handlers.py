"""Per-op channel handlers: stateless objects that physically slice one layer type.

A handler knows how to remove output channels (``prune_out``) and input channels (``prune_in``) of one
module type. Both return a NEW module holding only the kept indices (weights, biases and buffers copied);
the caller swaps it into the model. ``idx`` is a 1-D ``LongTensor`` of the channel indices to KEEP, in
ascending order.

Handlers also cover ``nn.LayerNorm`` (1-D ``normalized_shape``, channels in the LAST dim) and
``nn.GroupNorm`` with ``num_groups == 1`` or ``num_groups == num_channels`` as pass-throughs, and
:class:`SegmentHandler` wraps any handler for a layer that reads a channel *concatenation*: it slices only
its segment of the layer's channels. Grouped convolutions with ``1 < groups < channels`` have no handler
(their groups are left intact and reported, see :func:`unsupported_reason`).

Add a handler for a new layer type by subclassing :class:`ChannelHandler` and registering an instance in
:data:`HANDLERS` (keyed by module class; resolution walks the MRO).
"""

from __future__ import annotations

import uuid

import torch
from torch import nn


class ChannelHandler:
    """Base handler. ``passthrough`` handlers share one channel space between input and output
    (BatchNorm, depthwise conv): for them ``prune_in`` and ``prune_out`` are the same operation."""

    passthrough: bool = False
    #: the layer's channel dim is the last one (Linear, LayerNorm) rather than dim 1 (conv, BN).
    channels_last: bool = False

    def out_channels(self, module: nn.Module) -> int:
        raise NotImplementedError

    def in_channels(self, module: nn.Module) -> int:
        raise NotImplementedError

    def prune_out(self, module: nn.Module, idx: torch.Tensor) -> nn.Module:
        raise NotImplementedError

    def prune_in(self, module: nn.Module, idx: torch.Tensor) -> nn.Module:
        raise NotImplementedError

    def importance(self, module: nn.Module, p: float) -> torch.Tensor:
        """Per-output-channel ``p``-norm of the module's filters (``p`` = 1 or 2)."""
        raise NotImplementedError


def _param(t: torch.Tensor | None, like: torch.Tensor | None) -> nn.Parameter | None:
    if t is None:
        return None
    req = like.requires_grad if like is not None else True
    return nn.Parameter(t.detach().clone(), requires_grad=req)


class ConvHandler(ChannelHandler):
    """``nn.Conv2d`` (also Conv1d/Conv3d) with ``groups == 1``."""

    def out_channels(self, module: nn.Module) -> int:
        assert isinstance(module, nn.modules.conv._ConvNd)
        return module.out_channels

    def in_channels(self, module: nn.Module) -> int:
        assert isinstance(module, nn.modules.conv._ConvNd)
        return module.in_channels

    def _rebuild(self, m: nn.modules.conv._ConvNd, weight: torch.Tensor, bias: torch.Tensor | None,
                 in_ch: int, out_ch: int, groups: int) -> nn.Module:
        new = type(m)(  # type: ignore[call-arg]
            in_ch, out_ch, m.kernel_size, stride=m.stride, padding=m.padding,  # type: ignore[arg-type]
            dilation=m.dilation, groups=groups, bias=bias is not None, padding_mode=m.padding_mode,
            device=weight.device, dtype=weight.dtype,
        )
        new.weight = _param(weight, m.weight)  # type: ignore[assignment,arg-type]
        if bias is not None:
            new.bias = _param(bias, m.bias)  # type: ignore[assignment,arg-type]
        new.train(m.training)
        return new

    def prune_out(self, module: nn.Module, idx: torch.Tensor) -> nn.Module:
        assert isinstance(module, nn.modules.conv._ConvNd) and module.groups == 1
        idx = idx.to(module.weight.device)
        w = module.weight.detach().index_select(0, idx)
        b = None if module.bias is None else module.bias.detach().index_select(0, idx)
        return self._rebuild(module, w, b, module.in_channels, len(idx), 1)

    def prune_in(self, module: nn.Module, idx: torch.Tensor) -> nn.Module:
        assert isinstance(module, nn.modules.conv._ConvNd) and module.groups == 1
        idx = idx.to(module.weight.device)
        w = module.weight.detach().index_select(1, idx)
        b = None if module.bias is None else module.bias.detach()
        return self._rebuild(module, w, b, len(idx), module.out_channels, 1)

    def importance(self, module: nn.Module, p: float) -> torch.Tensor:
        assert isinstance(module, nn.modules.conv._ConvNd)
        return module.weight.detach().flatten(1).norm(p=p, dim=1)


class DepthwiseConvHandler(ConvHandler):
    """Depthwise conv (``groups == in_channels == out_channels``): channels pass through unchanged."""

    passthrough = True

    def prune_out(self, module: nn.Module, idx: torch.Tensor) -> nn.Module:
        assert isinstance(module, nn.modules.conv._ConvNd)
        idx = idx.to(module.weight.device)
        w = module.weight.detach().index_select(0, idx)
        b = None if module.bias is None else module.bias.detach().index_select(0, idx)
        n = len(idx)
        return self._rebuild(module, w, b, n, n, n)

    prune_in = prune_out


class ConvTransposeHandler(ChannelHandler):
    """``nn.ConvTranspose1d/2d/3d`` with ``groups == 1`` (weight layout ``[in, out, *k]``)."""

    def out_channels(self, module: nn.Module) -> int:
        assert isinstance(module, nn.modules.conv._ConvTransposeNd)
        return module.out_channels

    def in_channels(self, module: nn.Module) -> int:
        assert isinstance(module, nn.modules.conv._ConvTransposeNd)
        return module.in_channels

    def _rebuild(self, m: nn.modules.conv._ConvTransposeNd, w: torch.Tensor, b: torch.Tensor | None) -> nn.Module:
        new = type(m)(  # type: ignore[call-arg]
            w.shape[0], w.shape[1], m.kernel_size, stride=m.stride, padding=m.padding,  # type: ignore[arg-type]
            output_padding=m.output_padding, groups=1, bias=b is not None, dilation=m.dilation,
            padding_mode=m.padding_mode, device=w.device, dtype=w.dtype,
        )
        new.weight = _param(w, m.weight)  # type: ignore[assignment,arg-type]
        if b is not None:
            new.bias = _param(b, m.bias)  # type: ignore[assignment,arg-type]
        new.train(m.training)
        return new

    def prune_out(self, module: nn.Module, idx: torch.Tensor) -> nn.Module:
        assert isinstance(module, nn.modules.conv._ConvTransposeNd) and module.groups == 1
        idx = idx.to(module.weight.device)
        b = None if module.bias is None else module.bias.detach().index_select(0, idx)
        return self._rebuild(module, module.weight.detach().index_select(1, idx), b)

    def prune_in(self, module: nn.Module, idx: torch.Tensor) -> nn.Module:
        assert isinstance(module, nn.modules.conv._ConvTransposeNd) and module.groups == 1
        idx = idx.to(module.weight.device)
        b = None if module.bias is None else module.bias.detach()
        return self._rebuild(module, module.weight.detach().index_select(0, idx), b)

    def importance(self, module: nn.Module, p: float) -> torch.Tensor:
        assert isinstance(module, nn.modules.conv._ConvTransposeNd)
        return module.weight.detach().transpose(0, 1).flatten(1).norm(p=p, dim=1)


class BatchNormHandler(ChannelHandler):
    """``nn.BatchNorm1d/2d/3d``: a pass-through sharing the producer's channel indices."""

    passthrough = True

    def out_channels(self, module: nn.Module) -> int:
        assert isinstance(module, nn.modules.batchnorm._BatchNorm)
        return module.num_features

    in_channels = out_channels

    def prune_out(self, module: nn.Module, idx: torch.Tensor) -> nn.Module:
        assert isinstance(module, nn.modules.batchnorm._BatchNorm)
        ref = module.weight if module.weight is not None else module.running_mean
        assert ref is not None
        idx = idx.to(ref.device)
        new = type(module)(
            len(idx), eps=module.eps, momentum=module.momentum, affine=module.affine,
            track_running_stats=module.track_running_stats, device=ref.device, dtype=ref.dtype,
        )
        if module.affine:
            new.weight = _param(module.weight.detach().index_select(0, idx), module.weight)  # type: ignore[assignment,arg-type]
            new.bias = _param(module.bias.detach().index_select(0, idx), module.bias)  # type: ignore[assignment,arg-type]
        if module.track_running_stats and module.running_mean is not None:
            assert module.running_var is not None and new.running_mean is not None
            new.running_mean.copy_(module.running_mean.index_select(0, idx))
            assert new.running_var is not None
            new.running_var.copy_(module.running_var.index_select(0, idx))
            if module.num_batches_tracked is not None and new.num_batches_tracked is not None:
                new.num_batches_tracked.copy_(module.num_batches_tracked)
        new.train(module.training)
        return new

    prune_in = prune_out


class LinearHandler(ChannelHandler):
    """``nn.Linear``: output features are channels; input features are consumed channels."""

    channels_last = True

    def out_channels(self, module: nn.Module) -> int:
        assert isinstance(module, nn.Linear)
        return module.out_features

    def in_channels(self, module: nn.Module) -> int:
        assert isinstance(module, nn.Linear)
        return module.in_features

    def _rebuild(self, m: nn.Linear, w: torch.Tensor, b: torch.Tensor | None) -> nn.Module:
        new = nn.Linear(w.shape[1], w.shape[0], bias=b is not None, device=w.device, dtype=w.dtype)
        new.weight = _param(w, m.weight)  # type: ignore[assignment,arg-type]
        if b is not None:
            new.bias = _param(b, m.bias)  # type: ignore[assignment,arg-type]
        new.train(m.training)
        return new

    def prune_out(self, module: nn.Module, idx: torch.Tensor) -> nn.Module:
        assert isinstance(module, nn.Linear)
        idx = idx.to(module.weight.device)
        b = None if module.bias is None else module.bias.detach().index_select(0, idx)
        return self._rebuild(module, module.weight.detach().index_select(0, idx), b)

    def prune_in(self, module: nn.Module, idx: torch.Tensor) -> nn.Module:
        assert isinstance(module, nn.Linear)
        idx = idx.to(module.weight.device)
        b = None if module.bias is None else module.bias.detach()
        return self._rebuild(module, module.weight.detach().index_select(1, idx), b)

    def importance(self, module: nn.Module, p: float) -> torch.Tensor:
        assert isinstance(module, nn.Linear)
        return module.weight.detach().norm(p=p, dim=1)


class LayerNormHandler(ChannelHandler):
    """``nn.LayerNorm`` over one (last) dim: a pass-through slicing ``weight``/``bias``.

    Note: the normalisation statistics are taken over the kept features only, so unlike BatchNorm the
    result is not bit-identical even when the removed features were exactly zero.
    """

    passthrough = True
    channels_last = True

    def out_channels(self, module: nn.Module) -> int:
        assert isinstance(module, nn.LayerNorm)
        return int(module.normalized_shape[-1])

    in_channels = out_channels

    def prune_out(self, module: nn.Module, idx: torch.Tensor) -> nn.Module:
        assert isinstance(module, nn.LayerNorm)
        ref = module.weight if module.weight is not None else None
        dev = ref.device if ref is not None else idx.device
        idx = idx.to(dev)
        new = nn.LayerNorm(len(idx), eps=module.eps, elementwise_affine=module.elementwise_affine,
                           bias=module.bias is not None, device=dev,
                           dtype=ref.dtype if ref is not None else None)
        if module.weight is not None:
            new.weight = _param(module.weight.detach().index_select(0, idx), module.weight)  # type: ignore[assignment,arg-type]
        if module.bias is not None:
            new.bias = _param(module.bias.detach().index_select(0, idx), module.bias)  # type: ignore[assignment,arg-type]
        new.train(module.training)
        return new

    prune_in = prune_out


class GroupNormHandler(ChannelHandler):
    """``nn.GroupNorm`` with one group (layer-norm-like) or one channel per group (instance-norm-like).

    With ``num_groups == num_channels`` every channel is normalised on its own, so pruning is exact; with
    one group the statistics are over the kept channels only.
    """

    passthrough = True

    def out_channels(self, module: nn.Module) -> int:
        assert isinstance(module, nn.GroupNorm)
        return module.num_channels

    in_channels = out_channels

    def prune_out(self, module: nn.Module, idx: torch.Tensor) -> nn.Module:
        assert isinstance(module, nn.GroupNorm)
        per_channel = module.num_groups == module.num_channels
        ref = module.weight
        dev = ref.device if ref is not None else idx.device
        idx = idx.to(dev)
        n = len(idx)
        new = nn.GroupNorm(n if per_channel else 1, n, eps=module.eps, affine=module.affine, device=dev,
                           dtype=ref.dtype if ref is not None else None)
        if module.affine:
            new.weight = _param(module.weight.detach().index_select(0, idx), module.weight)  # type: ignore[assignment,arg-type]
            new.bias = _param(module.bias.detach().index_select(0, idx), module.bias)  # type: ignore[assignment,arg-type]
        new.train(module.training)
        return new

    prune_in = prune_out


_SEGMENT_ATTR = "_torchslim_segments"


class SegmentLayout:
    """Segment lengths of one layer's concatenated channel input, as found by one analysis.

    The current lengths are stored ON the layer (``module._torchslim_segments[token]``) each time a
    segment is sliced, so copies of the layer (and the layer in the model) each carry their own state.
    """

    def __init__(self, lengths: list[int]) -> None:
        self.initial = list(lengths)
        self.token = uuid.uuid4().hex  # unique across processes (layers may be pickled with their table)

    def lengths(self, module: nn.Module) -> list[int]:
        table = getattr(module, _SEGMENT_ATTR, {})
        return list(table.get(self.token, self.initial))

    def record(self, module: nn.Module, lengths: list[int]) -> None:
        table = dict(getattr(module, _SEGMENT_ATTR, {}))
        table[self.token] = list(lengths)
        object.__setattr__(module, _SEGMENT_ATTR, table)


class SegmentHandler(ChannelHandler):
    """Slices segment ``index`` of a layer whose channel input is a concatenation (``torch.cat``).

    ``idx`` holds kept indices LOCAL to the segment; the channels of the other segments are kept, at
    their current offsets. Lengths are in the layer's own channel units (features for a Linear reading a
    flattened map).
    """

    def __init__(self, base: ChannelHandler, layout: SegmentLayout, index: int) -> None:
        self.base = base
        self.layout = layout
        self.index = index
        self.passthrough = base.passthrough
        self.channels_last = base.channels_last

    def in_channels(self, module: nn.Module) -> int:
        return self.layout.lengths(module)[self.index]

    out_channels = in_channels

    def _full(self, module: nn.Module, idx: torch.Tensor) -> tuple[torch.Tensor, list[int]]:
        lengths = self.layout.lengths(module)
        total = self.base.in_channels(module)
        if sum(lengths) != total:
            raise RuntimeError(f"segment layout {lengths} does not match the layer's {total} channels; "
                               "rebuild the dependency groups (build_groups) after changing the model")
        off = sum(lengths[: self.index])
        n = lengths[self.index]
        idx = idx.to(torch.long).cpu()
        full = torch.cat([torch.arange(off), idx + off, torch.arange(off + n, total)])
        new_lengths = list(lengths)
        new_lengths[self.index] = len(idx)
        return full, new_lengths

    def prune_in(self, module: nn.Module, idx: torch.Tensor) -> nn.Module:
        full, lengths = self._full(module, idx)
        new = self.base.prune_in(module, full)
        self.layout.record(new, lengths)
        return new

    def prune_out(self, module: nn.Module, idx: torch.Tensor) -> nn.Module:
        full, lengths = self._full(module, idx)
        new = self.base.prune_out(module, full)
        self.layout.record(new, lengths)
        return new

    def importance(self, module: nn.Module, p: float) -> torch.Tensor:
        lengths = self.layout.lengths(module)
        off = sum(lengths[: self.index])
        return self.base.importance(module, p)[off: off + lengths[self.index]]


CONV = ConvHandler()
DEPTHWISE = DepthwiseConvHandler()
CONV_TRANSPOSE = ConvTransposeHandler()
BATCHNORM = BatchNormHandler()
LINEAR = LinearHandler()
LAYERNORM = LayerNormHandler()
GROUPNORM = GroupNormHandler()


_CONV_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_CONVT_TYPES = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
_BN_TYPES = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def handler_for(module: nn.Module) -> ChannelHandler | None:
    """The handler for ``module``, or ``None`` if its channels cannot be sliced (yet).

    Only the exact torch classes are handled: a user subclass may have a different constructor or
    forward, so it is left intact (and reported) rather than replaced by a plain layer.
    """
    t = type(module)
    if t in _CONV_TYPES:
        assert isinstance(module, nn.modules.conv._ConvNd)
        if module.groups == 1:
            return CONV
        if module.groups == module.in_channels == module.out_channels:
            return DEPTHWISE
        return None
    if t in _CONVT_TYPES:
        assert isinstance(module, nn.modules.conv._ConvTransposeNd)
        return CONV_TRANSPOSE if module.groups == 1 else None
    if t in _BN_TYPES:
        return BATCHNORM
    if t is nn.Linear:
        return LINEAR
    if t is nn.LayerNorm:
        assert isinstance(module, nn.LayerNorm)
        return LAYERNORM if len(module.normalized_shape) == 1 else None
    if t is nn.GroupNorm:
        assert isinstance(module, nn.GroupNorm)
        return GROUPNORM if module.num_groups in (1, module.num_channels) else None
    return None


def unsupported_reason(module: nn.Module) -> str:
    """Why :func:`handler_for` has no handler for ``module`` (for reports)."""
    t = type(module)
    if t in _CONV_TYPES or t in _CONVT_TYPES:
        assert isinstance(module, nn.modules.conv._ConvNd)
        return (f"grouped convolution (groups={module.groups}, {module.in_channels} -> {module.out_channels} "
                "channels): whole-group pruning is not implemented, so its input and output groups are left "
                "intact")
    if t is nn.LayerNorm:
        return "LayerNorm over more than one dim: only a 1-D normalized_shape is sliced"
    if t is nn.GroupNorm:
        assert isinstance(module, nn.GroupNorm)
        return (f"GroupNorm with {module.num_groups} groups of {module.num_channels} channels: only "
                "num_groups == 1 or num_groups == num_channels can be sliced")
    return f"no channel handler for {t.__name__} (leaving its groups intact)"
