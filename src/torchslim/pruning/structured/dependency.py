"""Channel dependency groups from a captured FX graph.

Every tensor in the graph carries a *channel space*: the set of layers whose channel indices must stay
aligned with that tensor's channel dimension. Walking the graph in order, a Conv2d/Linear starts a new
space (it is a *producer*) and *consumes* its input's space; BatchNorm and depthwise convs are
*pass-throughs* sharing one space between input and output; element-wise ops and pooling keep the space;
a residual ``add`` (or any element-wise op of two tensors) *unions* its inputs' spaces, so every producer
feeding the sum keeps the same indices; ``flatten`` keeps the space but widens each channel to ``H*W``
features for the following Linear. ``torch.cat`` along the channel dim makes a *segmented* value: each
input keeps its own space, and a layer reading the concatenation joins every input's group as a
segment member (:class:`~torchslim.pruning.structured.handlers.SegmentHandler`) that slices only its
channel range, offsets tracked; ``cat`` along another dim unions the inputs' spaces. LayerNorm (last
dim) and GroupNorm (one group, or one channel per group) are pass-throughs. Grouped convolutions
(``1 < groups < channels``) block their groups, with the reason reported. Spaces reaching the model's inputs or outputs are fixed. Any op this
module does not understand *blocks* the spaces it touches: those groups are left intact and reported.

Example::

    >>> import torch
    >>> from torch import nn
    >>> from torchslim.pruning.structured.dependency import build_groups
    >>> m = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 4, 3))
    >>> [g.name for g in build_groups(m, (torch.randn(1, 3, 8, 8),)) if g.prunable]
    ['0']
"""

from __future__ import annotations

import operator
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import torch
import torch.fx
import torch.nn.functional as F
from torch import nn

from torchslim.core.graph import CapturedGraph, capture
from torchslim.pruning.structured.handlers import (
    ChannelHandler,
    SegmentHandler,
    SegmentLayout,
    handler_for,
    unsupported_reason,
)

Role = Literal["out", "in", "through"]


@dataclass(frozen=True)
class Member:
    """One layer's stake in a group: ``out`` (producer), ``in`` (consumer) or ``through`` (pass-through).

    ``expand`` > 1 for a Linear consuming a flattened ``[C, H, W]`` map: channel ``c`` is features
    ``c*expand .. c*expand + expand - 1``.
    """

    path: str
    role: Role
    handler: ChannelHandler = field(compare=False)
    expand: int = 1

    def __str__(self) -> str:
        return f"{self.path}:{self.role}" + (f"x{self.expand}" if self.expand != 1 else "")


@dataclass
class ChannelGroup:
    """Layers whose channels are coupled and must be pruned with the same indices."""

    producers: list[Member] = field(default_factory=list)
    passthrough: list[Member] = field(default_factory=list)
    consumers: list[Member] = field(default_factory=list)
    #: ``(module path, op, reason)`` for ops that touch this group and are not understood.
    blocked: list[tuple[str, str, str]] = field(default_factory=list)
    #: why the group is fixed (``"model input"``, ``"model output"``) or ``None``.
    fixed: str | None = None
    channels: int = 0

    @property
    def name(self) -> str:
        return self.producers[0].path if self.producers else "<no producer>"

    @property
    def members(self) -> list[Member]:
        return [*self.producers, *self.passthrough, *self.consumers]

    @property
    def prunable(self) -> bool:
        return bool(self.producers) and self.fixed is None and not self.blocked and self.channels > 0


#: channel dim of a tensor whose space is fixed (model input) or blocked: any consumer may read it.
ANY = -1


@dataclass
class _Val:
    space: int
    dim: int  # channel dimension of the tensor, or ANY
    expand: int = 1
    #: for a channel concatenation: ``(space, channels)`` of each input in order (``space`` is then a
    #: placeholder with no members).
    segments: tuple[tuple[int, int], ...] | None = None

    def spaces(self) -> list[int]:
        return [s for s, _ in self.segments] if self.segments else [self.space]


class _Spaces:
    """Union-find of channel spaces with the group data merged at the roots."""

    def __init__(self) -> None:
        self.parent: list[int] = []
        self.data: list[ChannelGroup] = []

    def new(self) -> int:
        self.parent.append(len(self.parent))
        self.data.append(ChannelGroup())
        return len(self.parent) - 1

    def find(self, i: int) -> int:
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def get(self, i: int) -> ChannelGroup:
        return self.data[self.find(i)]

    def union(self, a: int, b: int) -> int:
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return ra
        ga, gb = self.data[ra], self.data[rb]
        ga.producers += gb.producers
        ga.passthrough += gb.passthrough
        ga.consumers += gb.consumers
        ga.blocked += gb.blocked
        ga.fixed = ga.fixed or gb.fixed
        self.parent[rb] = ra
        return ra

    def roots(self) -> list[int]:
        return [i for i in range(len(self.parent)) if self.parent[i] == i]


_ELEMENTWISE_MODULES: tuple[type[nn.Module], ...] = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.GELU, nn.SiLU, nn.Hardswish, nn.Hardsigmoid, nn.Sigmoid, nn.Tanh,
    nn.ELU, nn.Mish, nn.Identity, nn.Dropout, nn.Dropout2d, nn.Softplus, nn.Hardtanh,
)
_POOL_MODULES: tuple[type[nn.Module], ...] = (
    nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d,
    nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d, nn.AdaptiveMaxPool2d,
)
_UNARY_FUNCS: set[Any] = {
    torch.relu, torch.relu_, F.relu, F.relu6, F.leaky_relu, F.gelu, F.silu, F.hardswish, F.hardsigmoid,
    torch.sigmoid, F.sigmoid, torch.tanh, F.tanh, F.dropout, F.elu, F.mish, F.hardtanh, torch.clamp,
    F.max_pool2d, F.avg_pool2d, F.adaptive_avg_pool2d, F.adaptive_max_pool2d, F.max_pool1d, F.avg_pool1d,
    torch.clone,
}
_UNARY_METHODS = {
    "relu", "relu_", "sigmoid", "sigmoid_", "tanh", "contiguous", "clone", "detach", "clamp", "clamp_",
    "float", "to",
}
_BINARY_FUNCS: set[Any] = {
    operator.add, operator.iadd, operator.sub, operator.isub, operator.mul, operator.imul, operator.truediv,
    torch.add, torch.sub, torch.mul, torch.div,
}
_BINARY_METHODS = {"add", "add_", "sub", "sub_", "mul", "mul_", "div", "div_"}
_FLATTEN_FUNCS: set[Any] = {torch.flatten}
_RESHAPE_METHODS = {"flatten", "view", "reshape"}
_REDUCE_FUNCS: set[Any] = {torch.mean, torch.sum, torch.amax}
_REDUCE_METHODS = {"mean", "sum", "amax"}
_CAT_FUNCS: set[Any] = {torch.cat, torch.concat, torch.concatenate}
_HARMLESS_FUNCS: set[Any] = {getattr, len}
_HARMLESS_METHODS = {"size", "dim"}


def build_groups(model: nn.Module, example_inputs: tuple[Any, ...],
                 captured: CapturedGraph | None = None) -> list[ChannelGroup]:
    """Dependency groups of ``model`` (captured with FX), in graph order of their first producer.

    Groups with ``prunable == False`` are fixed (model input/output), blocked by an op that is not
    understood (see ``blocked``), or have no producer.
    """
    cg = captured if captured is not None else capture(model, example_inputs, strategy="fx")
    if cg.strategy != "fx":
        raise ValueError("build_groups needs an FX capture (call_module nodes); use capture(..., strategy='fx')")
    return _Analyzer(model, cg).run()


class _Analyzer:
    def __init__(self, model: nn.Module, cg: CapturedGraph) -> None:
        self.model = model
        self.cg = cg
        self.sp = _Spaces()
        self.vals: dict[torch.fx.Node, _Val | None] = {}
        calls: dict[str, int] = {}
        for n in cg.graph.nodes:
            if n.op == "call_module":
                calls[str(n.target)] = calls.get(str(n.target), 0) + 1
        self.multi_call = {k for k, v in calls.items() if v > 1}

    # -- helpers -------------------------------------------------------------------------------
    def _shape(self, node: Any) -> torch.Size | None:
        return self.cg.shape_of(node) if isinstance(node, torch.fx.Node) else None

    def _tensor_args(self, node: torch.fx.Node) -> list[torch.fx.Node]:
        out: list[torch.fx.Node] = []
        for a in _flat(node.args) + _flat(node.kwargs):
            if isinstance(a, torch.fx.Node) and self.vals.get(a) is not None:
                out.append(a)
        return out

    def _where(self, node: torch.fx.Node) -> str:
        return self.cg.module_path(node) or ""

    def _op_name(self, node: torch.fx.Node) -> str:
        if node.op == "call_module":
            return type(self.model.get_submodule(str(node.target))).__name__
        if node.op == "call_method":
            return f"Tensor.{node.target}"
        t = node.target
        return getattr(t, "__name__", str(t))

    def _block(self, node: torch.fx.Node, reason: str) -> None:
        entry = (self._where(node), self._op_name(node), reason)
        for a in self._tensor_args(node):
            v = self.vals[a]
            assert v is not None
            for sp in v.spaces():
                g = self.sp.get(sp)
                if entry not in g.blocked:
                    g.blocked.append(entry)
        if self._shape(node) is not None:
            s = self.sp.new()
            self.sp.get(s).blocked.append(entry)
            self.vals[node] = _Val(s, ANY)
        else:
            self.vals[node] = None

    def _new_space(self, channels: int) -> int:
        s = self.sp.new()
        self.sp.get(s).channels = channels
        return s

    # -- walk ----------------------------------------------------------------------------------
    def run(self) -> list[ChannelGroup]:
        for node in self.cg.graph.nodes:
            try:
                self._visit(node)
            except Exception as e:  # noqa: BLE001 - never crash deep inside: block and report instead
                self._block(node, f"internal analysis error: {type(e).__name__}: {e}")
        pos = {str(n.target): i for i, n in enumerate(self.cg.graph.nodes) if n.op == "call_module"}
        groups = [self.sp.data[r] for r in self.sp.roots() if self.sp.data[r].producers]
        for g in groups:
            for lst in (g.producers, g.passthrough, g.consumers):
                lst.sort(key=lambda m: pos.get(m.path, 0))
            self._check_channels(g)
        groups.sort(key=lambda g: pos.get(g.producers[0].path, 0))
        return groups

    def _visit(self, node: torch.fx.Node) -> None:
        shape = self._shape(node)
        if node.op == "placeholder":
            if shape is not None and len(shape) >= 2:
                s = self._new_space(int(shape[1]))
                self.sp.get(s).fixed = "model input"
                self.vals[node] = _Val(s, ANY)
            else:
                self.vals[node] = None
        elif node.op == "get_attr":
            if shape is not None:
                s = self.sp.new()
                self.sp.get(s).blocked.append((str(node.target), "get_attr",
                                               "raw parameter/buffer used in forward cannot be sliced"))
                self.vals[node] = _Val(s, ANY)
            else:
                self.vals[node] = None
        elif node.op == "output":
            for a in self._tensor_args(node):
                v = self.vals[a]
                assert v is not None
                for sp in v.spaces():
                    g = self.sp.get(sp)
                    g.fixed = g.fixed or "model output"
        elif node.op == "call_module":
            self._visit_module(node)
        elif node.op in ("call_function", "call_method"):
            self._visit_function(node)
        else:
            self._block(node, f"unsupported node kind {node.op}")

    def _input_val(self, node: torch.fx.Node) -> tuple[torch.fx.Node, _Val] | None:
        tensors = self._tensor_args(node)
        if len(tensors) != 1:
            return None
        v = self.vals[tensors[0]]
        assert v is not None
        return tensors[0], v

    def _visit_module(self, node: torch.fx.Node) -> None:
        path = str(node.target)
        mod = self.model.get_submodule(path)
        if path in self.multi_call:
            self._block(node, "module is called more than once in forward (shared weights)")
            return
        handler = handler_for(mod)
        inp = self._input_val(node)
        if handler is not None:
            if inp is None:
                self._block(node, "expected exactly one tensor input")
                return
            src, v = inp
            in_shape = self._shape(src)
            assert in_shape is not None
            is_linear = isinstance(mod, nn.Linear)
            last = handler.channels_last
            want_dim = len(in_shape) - 1 if last else 1
            if v.dim not in (want_dim, ANY) or (v.expand != 1 and not is_linear):
                self._block(node, f"channel dim of the input is {v.dim}, layer expects {want_dim}")
                return
            if v.segments:
                self._segmented_module(node, path, handler, v, last)
                return
            if handler.passthrough:
                self.sp.get(v.space).passthrough.append(Member(path, "through", handler))
                self.vals[node] = _Val(v.space, v.dim)
                return
            self.sp.get(v.space).consumers.append(Member(path, "in", handler, v.expand))
            out_shape = self._shape(node)
            assert out_shape is not None
            s = self._new_space(handler.out_channels(mod))
            self.sp.get(s).producers.append(Member(path, "out", handler))
            self.vals[node] = _Val(s, len(out_shape) - 1 if last else 1)
            return
        if isinstance(mod, _ELEMENTWISE_MODULES + _POOL_MODULES):
            if inp is None:
                self._block(node, "expected exactly one tensor input")
                return
            self.vals[node] = inp[1] if inp[1].expand == 1 or isinstance(mod, _ELEMENTWISE_MODULES) else None
            if self.vals[node] is None:
                self._block(node, "pooling a flattened tensor")
            return
        if isinstance(mod, nn.Flatten):
            if inp is None:
                self._block(node, "expected exactly one tensor input")
                return
            self._flatten(node, inp[0], inp[1])
            return
        self._block(node, unsupported_reason(mod))

    def _segmented_module(self, node: torch.fx.Node, path: str, handler: ChannelHandler, v: _Val,
                          last: bool) -> None:
        """A layer reading a channel concatenation: one segment member in each input's group."""
        assert v.segments is not None
        layout = SegmentLayout([n * v.expand for _, n in v.segments])
        role: Role = "through" if handler.passthrough else "in"
        for i, (sp, _) in enumerate(v.segments):
            m = Member(path, role, SegmentHandler(handler, layout, i), 1 if handler.passthrough else v.expand)
            g = self.sp.get(sp)
            (g.passthrough if handler.passthrough else g.consumers).append(m)
        if handler.passthrough:
            self.vals[node] = v
            return
        out_shape = self._shape(node)
        assert out_shape is not None
        mod = self.model.get_submodule(path)
        s = self._new_space(handler.out_channels(mod))
        self.sp.get(s).producers.append(Member(path, "out", handler))
        self.vals[node] = _Val(s, len(out_shape) - 1 if last else 1)

    def _visit_function(self, node: torch.fx.Node) -> None:
        t = node.target
        is_m = node.op == "call_method"
        if (not is_m and t in _HARMLESS_FUNCS) or (is_m and t in _HARMLESS_METHODS):
            self.vals[node] = None
            return
        tensors = self._tensor_args(node)
        if not tensors:
            if self._shape(node) is None:
                self.vals[node] = None  # arithmetic on sizes etc.
            else:  # a tensor made from nothing we track (torch.zeros(...), item of an unknown tuple)
                s = self.sp.new()
                self.sp.get(s).blocked.append((self._where(node), self._op_name(node),
                                               "tensor from an untracked source"))
                self.vals[node] = _Val(s, ANY)
            return
        if (not is_m and t in _UNARY_FUNCS) or (is_m and t in _UNARY_METHODS):
            if len(tensors) != 1 or tensors[0] is not node.args[0]:
                self._block(node, "unary op with extra tensor arguments")
                return
            v = self.vals[tensors[0]]
            assert v is not None
            if v.expand != 1 and node.target not in (torch.relu, F.relu, "relu", "contiguous", "clone"):
                self._block(node, "op on a flattened tensor")
                return
            self.vals[node] = v
            return
        if (not is_m and t in _BINARY_FUNCS) or (is_m and t in _BINARY_METHODS):
            self._binary(node, tensors)
            return
        if (not is_m and t in _FLATTEN_FUNCS) or (is_m and t in _RESHAPE_METHODS):
            v = self.vals[tensors[0]]
            assert v is not None
            if len(tensors) != 1 or tensors[0] is not node.args[0]:
                self._block(node, "reshape with tensor arguments")
                return
            self._flatten(node, tensors[0], v)
            return
        if (not is_m and t in _REDUCE_FUNCS) or (is_m and t in _REDUCE_METHODS):
            self._reduce(node, tensors)
            return
        if not is_m and t in _CAT_FUNCS:
            self._cat(node, tensors)
            return
        self._block(node, "op not understood by channel pruning")

    def _binary(self, node: torch.fx.Node, tensors: list[torch.fx.Node]) -> None:
        out_shape = self._shape(node)
        if out_shape is None or len(tensors) > 2:
            self._block(node, "element-wise op with unexpected inputs")
            return
        vals = [self.vals[a] for a in tensors]
        if any(v is not None and v.segments for v in vals):
            self._binary_segments(node, tensors)
            return
        shapes = [self._shape(a) for a in tensors]
        full = []
        for a, v, s in zip(tensors, vals, shapes, strict=True):
            assert v is not None and s is not None
            if v.expand != 1 or len(s) != len(out_shape):
                if s.numel() == 1:
                    continue  # a scalar tensor broadcast everywhere
                self._block(node, "element-wise op with broadcasting across the channel dim")
                return
            if v.dim == ANY:
                if tuple(s) != tuple(out_shape):
                    self._block(node, "element-wise op broadcasting a fixed/unknown tensor")
                    return
                full.append((a, v))
            elif s[v.dim] == out_shape[v.dim]:
                full.append((a, v))
            elif s[v.dim] != 1:
                self._block(node, "element-wise op with mismatched channel dims")
                return
        if not full:
            self._block(node, "element-wise op with broadcasting across the channel dim")
            return
        dims = {v.dim for _, v in full} - {ANY}
        if len(dims) > 1:
            self._block(node, "element-wise op mixing channel dims")
            return
        root = full[0][1].space
        for _, v in full[1:]:
            root = self.sp.union(root, v.space)
        self.vals[node] = _Val(root, dims.pop() if dims else ANY)

    def _binary_segments(self, node: torch.fx.Node, tensors: list[torch.fx.Node]) -> None:
        """Element-wise op on concatenations: allowed when both are identically segmented (union per
        segment) or the other operand is a scalar."""
        out_shape = self._shape(node)
        seg_vals: list[_Val] = []
        for a in tensors:
            v, s = self.vals[a], self._shape(a)
            assert v is not None and s is not None and out_shape is not None
            if v.segments and tuple(s) == tuple(out_shape):
                seg_vals.append(v)
            elif s.numel() != 1:
                self._block(node, "element-wise op mixing a concatenation with another tensor")
                return
        first = seg_vals[0]
        assert first.segments is not None
        for v in seg_vals[1:]:
            assert v.segments is not None
            if [n for _, n in v.segments] != [n for _, n in first.segments] or v.dim != first.dim \
                    or v.expand != first.expand:
                self._block(node, "element-wise op on differently segmented concatenations")
                return
        segs = list(first.segments)
        for v in seg_vals[1:]:
            assert v.segments is not None
            segs = [(self.sp.union(a, b), n) for (a, n), (b, _) in zip(segs, v.segments, strict=True)]
        self.vals[node] = replace(first, segments=tuple(segs))

    def _cat(self, node: torch.fx.Node, tensors: list[torch.fx.Node]) -> None:
        """``torch.cat``: along the channel dim -> a segmented value; along another dim -> union."""
        out_shape = self._shape(node)
        seq = node.args[0] if node.args else node.kwargs.get("tensors")
        dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)
        if out_shape is None or not isinstance(seq, (list, tuple)) or not isinstance(dim, int) \
                or len(seq) != len(tensors) or any(a is not b for a, b in zip(seq, tensors, strict=True)):
            self._block(node, "concatenation with non-constant dim or untracked inputs")
            return
        nd = len(out_shape)
        dim %= nd
        vals: list[_Val] = []
        for a in tensors:
            v, s = self.vals[a], self._shape(a)
            assert v is not None
            if s is None or len(s) != nd or v.expand != 1:
                self._block(node, "concatenation of flattened or differently shaped tensors")
                return
            vals.append(v)
        chan = {v.dim for v in vals} - {ANY}
        if chan == {dim} or not chan and dim == 1:
            segs: list[tuple[int, int]] = []
            for a, v in zip(tensors, vals, strict=True):
                if v.segments:
                    segs += v.segments
                else:
                    s = self._shape(a)
                    assert s is not None
                    segs.append((v.space, int(s[dim])))
            self.vals[node] = _Val(self.sp.new(), dim, 1, tuple(segs))
            return
        if len(chan) == 1 and dim not in chan and not any(v.segments for v in vals):
            root = vals[0].space
            for v in vals[1:]:
                root = self.sp.union(root, v.space)
            self.vals[node] = _Val(root, chan.pop())
            return
        self._block(node, f"concatenation along dim {dim} of tensors whose channel dims are {sorted(chan)}")

    def _flatten(self, node: torch.fx.Node, src: torch.fx.Node, v: _Val) -> None:
        in_shape, out_shape = self._shape(src), self._shape(node)
        if in_shape is None or out_shape is None:
            self._block(node, "unknown shapes")
            return
        if v.dim == 1 and len(out_shape) == 2 and out_shape[0] == in_shape[0] and len(in_shape) >= 2:
            per = 1
            for d in in_shape[2:]:
                per *= int(d)
            if int(out_shape[1]) == int(in_shape[1]) * per:
                self.vals[node] = replace(v, dim=1, expand=v.expand * per)
                return
        if tuple(out_shape) == tuple(in_shape):
            self.vals[node] = v
            return
        if v.dim == ANY and not v.segments:  # a fixed or blocked space: nothing to keep aligned
            self.vals[node] = _Val(v.space, ANY)
            return
        self._block(node, f"reshape {tuple(in_shape)} -> {tuple(out_shape)} moves the channel dim")

    def _reduce(self, node: torch.fx.Node, tensors: list[torch.fx.Node]) -> None:
        src = tensors[0]
        v = self.vals[src]
        in_shape, out_shape = self._shape(src), self._shape(node)
        assert v is not None
        if len(tensors) != 1 or src is not node.args[0] or in_shape is None or out_shape is None or v.expand != 1:
            self._block(node, "reduction with unexpected inputs")
            return
        if v.dim == ANY and not v.segments:
            self.vals[node] = _Val(v.space, ANY)
            return
        dims = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
        if dims is None:
            self._block(node, "reduction over all dims")
            return
        if not isinstance(dims, (int, list, tuple)):
            self._block(node, "reduction with non-constant dims")
            return
        dl = [dims] if isinstance(dims, int) else [int(d) for d in dims]  # type: ignore[arg-type]
        nd = len(in_shape)
        norm = sorted({d % nd for d in dl})
        if v.dim in norm:
            self._block(node, "reduction over the channel dim")
            return
        keep = bool(node.kwargs.get("keepdim", node.args[2] if len(node.args) > 2 else False))
        new_dim = v.dim if keep else v.dim - sum(1 for d in norm if d < v.dim)
        self.vals[node] = replace(v, dim=new_dim)

    # -- checks ----------------------------------------------------------------------------------
    def _check_channels(self, g: ChannelGroup) -> None:
        counts = {m.handler.out_channels(self.model.get_submodule(m.path)) for m in g.producers}
        counts |= {m.handler.out_channels(self.model.get_submodule(m.path)) for m in g.passthrough}
        for m in g.consumers:
            n = m.handler.in_channels(self.model.get_submodule(m.path))
            if n % m.expand:
                counts.add(-1)
            counts.add(n // m.expand)
        if len(counts) != 1:
            g.blocked.append((g.name, "channel count", f"members disagree on the channel count: {sorted(counts)}"))
            g.channels = 0
        else:
            g.channels = counts.pop()


def _flat(x: Any) -> list[Any]:
    if isinstance(x, (list, tuple)):
        return [y for a in x for y in _flat(a)]
    if isinstance(x, dict):
        return [y for a in x.values() for y in _flat(a)]
    return [x]
