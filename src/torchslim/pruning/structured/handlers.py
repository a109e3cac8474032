"""Per-op channel handlers: stateless objects that physically slice one layer type.

A handler knows how to remove output channels (``prune_out``) and input channels (``prune_in``) of one
module type. Both return a NEW module holding only the kept indices (weights, biases and buffers copied);
the caller swaps it into the model. ``idx`` is a 1-D ``LongTensor`` of the channel indices to KEEP, in
ascending order.

Add a handler for a new layer type by subclassing :class:`ChannelHandler` and registering an instance in
:data:`HANDLERS` (keyed by module class; resolution walks the MRO).
"""

from __future__ import annotations

import torch
from torch import nn


class ChannelHandler:
    """Base handler. ``passthrough`` handlers share one channel space between input and output
    (BatchNorm, depthwise conv): for them ``prune_in`` and ``prune_out`` are the same operation."""

    passthrough: bool = False

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


CONV = ConvHandler()
DEPTHWISE = DepthwiseConvHandler()
BATCHNORM = BatchNormHandler()
LINEAR = LinearHandler()


_CONV_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
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
    if t in _BN_TYPES:
        return BATCHNORM
    if t is nn.Linear:
        return LINEAR
    return None
