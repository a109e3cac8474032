"""Cost model: parameters, MACs, BOPs and activation memory, per layer and in total.

:func:`profile` runs the model **once, eagerly** (so data-dependent Python control flow is fine) under a
:class:`~torch.utils._python_dispatch.TorchDispatchMode` that sees every ATen op, plus forward hooks on
every module that keep a stack of the modules currently running. Each multiply-accumulate op is counted
and attributed to the innermost module it ran in, whether it came from a module (``nn.Linear``,
``nn.Conv2d``) or from a functional call inside a ``forward`` (``torch.matmul``, ``@``, ``torch.bmm``,
``F.linear``, ``F.conv2d``, ``F.scaled_dot_product_attention``, ``torch.einsum``).

Conventions (stated once, used everywhere):

* **MACs** are multiply-accumulates of matrix products and convolutions: ``mm``/``addmm`` ``M*K*N``,
  ``bmm``/``baddbmm`` ``B*M*K*N``, ``mv`` ``M*N``, ``dot`` ``N``; convolution
  ``N * prod(out_spatial) * C_out * (C_in/groups) * prod(kernel)`` (transposed: ``N * prod(in_spatial) *
  prod(weight.shape)``); scaled-dot-product attention ``B*H*Lq*S*E + B*H*Lq*S*Ev`` (``QK^T`` and ``AV``;
  a causal mask is not discounted). Bias additions, normalisation, activations, softmax and other
  element-wise ops are not MACs. ``torch.utils.flop_counter.FlopCounterMode`` agrees (FLOPs = 2 * MACs)
  except that it misses the CPU attention kernel ``_scaled_dot_product_flash_attention_for_cpu``, which
  this module counts.
* **BOPs** (bit operations) of an op = MACs * bits(operand 1) * bits(operand 2): an op with a weight
  operand (a parameter or buffer of the model, including views of it such as ``weight.t()``) uses
  ``weight_bits * act_bits`` of the module it runs in; an activation-activation product (``QK^T``,
  ``AV``) uses ``act_bits * act_bits``.
* **params** counts each parameter tensor once (shared/tied weights once), attributed to the module that
  owns it (the first name under which ``named_parameters`` yields it).
* **activation_bytes** of a layer is the size of its output tensors at their dtype, summed over calls.
  The total ``activation_bytes`` sums the reported layers' outputs, skipping outputs that alias an input
  of the same call (in-place ReLU, ``Flatten`` views, eval-mode ``Dropout``), so memory is counted once.
* **peak_activation_bytes** is the peak of the storage bytes of live tensors during the eager forward:
  every tensor an op creates (and the example inputs) is tracked by its storage; a storage is live from the
  op that creates it until the last Python reference to a tensor on it is dropped. Parameters and buffers
  are excluded; temporaries inside a single kernel are not seen.

Example:
    >>> import torch
    >>> from torchslim.core.cost import profile
    >>> net = torch.nn.Sequential(torch.nn.Conv2d(1, 8, 3), torch.nn.ReLU(), torch.nn.Flatten(),
    ...                           torch.nn.Linear(8 * 26 * 26, 10))
    >>> rep = profile(net, (torch.randn(1, 1, 28, 28),))
    >>> rep.macs == 8 * 26 * 26 * 9 + 8 * 26 * 26 * 10
    True
"""

from __future__ import annotations

import fnmatch
import math
import weakref
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from torchslim.core.errors import ConfigError

__all__ = ["LayerCost", "CostReport", "profile", "op_macs"]

aten = torch.ops.aten

BitsSpec = int | Mapping[str, int]


# ----------------------------------------------------------------------------------------------------
# MAC formulas per ATen op
# ----------------------------------------------------------------------------------------------------


def _shape(t: Any) -> list[int]:
    return list(t.shape)


def _mm(args: tuple[Any, ...], kwargs: dict[str, Any]) -> int:
    a, b = _shape(args[0]), _shape(args[1])
    return a[0] * a[1] * b[1]


def _addmm(args: tuple[Any, ...], kwargs: dict[str, Any]) -> int:
    return _mm(args[1:3], kwargs)


def _bmm(args: tuple[Any, ...], kwargs: dict[str, Any]) -> int:
    a, b = _shape(args[0]), _shape(args[1])
    return a[0] * a[1] * a[2] * b[2]


def _baddbmm(args: tuple[Any, ...], kwargs: dict[str, Any]) -> int:
    return _bmm(args[1:3], kwargs)


def _mv(args: tuple[Any, ...], kwargs: dict[str, Any]) -> int:
    a = _shape(args[0])
    return a[0] * a[1]


def _addmv(args: tuple[Any, ...], kwargs: dict[str, Any]) -> int:
    return _mv(args[1:3], kwargs)


def _dot(args: tuple[Any, ...], kwargs: dict[str, Any]) -> int:
    return int(args[0].numel())


def _conv(args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> int:
    x, w = _shape(args[0]), _shape(args[1])
    transposed = bool(args[6]) if len(args) > 6 else bool(kwargs.get("transposed", False))
    batch = x[0] if len(x) == len(w) else 1  # unbatched conv input has one dim less than the weight
    if transposed:
        spatial = x[-(len(w) - 2) :] if len(w) > 2 else []
    else:
        spatial = _shape(out)[-(len(w) - 2) :] if len(w) > 2 else []
    return batch * math.prod(spatial) * math.prod(w)


def _slow_conv(args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> int:
    x, w = _shape(args[0]), _shape(args[1])
    batch = x[0] if len(x) == len(w) else 1
    return batch * math.prod(_shape(out)[-(len(w) - 2) :]) * math.prod(w)


def _sdpa(args: tuple[Any, ...], kwargs: dict[str, Any]) -> int:
    q, k, v = _shape(args[0]), _shape(args[1]), _shape(args[2])
    # q [..., Hq, Lq, E], k [..., Hkv, S, E], v [..., Hkv, S, Ev]; GQA broadcasts kv heads to Hq.
    lead = math.prod(q[:-2])
    lq, e = q[-2], q[-1]
    s, ev = k[-2], v[-1]
    return lead * lq * s * e + lead * lq * s * ev


_SIMPLE: dict[Any, Callable[[tuple[Any, ...], dict[str, Any]], int]] = {
    aten.mm: _mm,
    aten.addmm: _addmm,
    aten._addmm_activation: _addmm,
    aten.bmm: _bmm,
    aten.baddbmm: _baddbmm,
    aten.mv: _mv,
    aten.addmv: _addmv,
    aten.dot: _dot,
    aten.vdot: _dot,
    aten._scaled_dot_product_flash_attention_for_cpu: _sdpa,
    aten._scaled_dot_product_flash_attention: _sdpa,
    aten._scaled_dot_product_efficient_attention: _sdpa,
    aten._scaled_dot_product_cudnn_attention: _sdpa,
}
_WITH_OUT: dict[Any, Callable[[tuple[Any, ...], dict[str, Any], Any], int]] = {
    aten.convolution: _conv,
    aten._convolution: _conv,
    aten.convolution_overrideable: _conv,
    aten._slow_conv2d_forward: _slow_conv,
}
for _name in ("_scaled_dot_product_fused_attention_overrideable",):
    if hasattr(aten, _name):
        _SIMPLE[getattr(aten, _name)] = _sdpa

#: ops whose operands are both activations even when a weight is involved elsewhere (attention)
_ATTENTION_OPS = {
    aten._scaled_dot_product_flash_attention_for_cpu,
    aten._scaled_dot_product_flash_attention,
    aten._scaled_dot_product_efficient_attention,
    aten._scaled_dot_product_cudnn_attention,
}


def op_macs(func: Any, args: tuple[Any, ...], kwargs: dict[str, Any] | None, out: Any) -> int | None:
    """MACs of one ATen op call, or ``None`` when the op does no multiply-accumulates we count.

    ``func`` is an ``OpOverload`` (``torch.ops.aten.mm.default``) or its packet (``torch.ops.aten.mm``).

    Example:
        >>> import torch
        >>> a, b = torch.randn(2, 3), torch.randn(3, 4)
        >>> op_macs(torch.ops.aten.mm.default, (a, b), {}, a @ b)
        24
    """
    packet = getattr(func, "_overloadpacket", func)
    kwargs = kwargs or {}
    if packet in _SIMPLE:
        return int(_SIMPLE[packet](args, kwargs))
    if packet in _WITH_OUT:
        return int(_WITH_OUT[packet](args, kwargs, out[0] if isinstance(out, (tuple, list)) else out))
    return None


# ----------------------------------------------------------------------------------------------------
# Report types
# ----------------------------------------------------------------------------------------------------


@dataclass
class LayerCost:
    """Cost of one module (summed over its calls when it runs more than once).

    ``name`` is the module path (``""`` for the root model), ``type`` its class name, ``params`` the
    parameters it owns directly, ``macs``/``bops`` the ops that ran directly in it (not in a child module),
    ``activation_bytes`` the bytes of its outputs at their dtype, ``input_shape``/``output_shape`` the
    shapes of the first tensor input/output of its first call, ``calls`` how often it ran.
    """

    name: str
    type: str
    params: int = 0
    macs: int = 0
    bops: int = 0
    activation_bytes: int = 0
    input_shape: tuple[int, ...] | None = None
    output_shape: tuple[int, ...] | None = None
    calls: int = 0

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-serialisable dict."""
        return {
            "name": self.name,
            "type": self.type,
            "params": self.params,
            "macs": self.macs,
            "bops": self.bops,
            "activation_bytes": self.activation_bytes,
            "input_shape": list(self.input_shape) if self.input_shape is not None else None,
            "output_shape": list(self.output_shape) if self.output_shape is not None else None,
            "calls": self.calls,
        }


def _human(n: float, unit: str = "") -> str:
    for scale, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= scale:
            return f"{n / scale:.2f}{suffix}{unit}"
    return f"{int(n)}{unit}"


def _human_bytes(n: float) -> str:
    for scale, suffix in ((2**30, "GiB"), (2**20, "MiB"), (2**10, "KiB")):
        if abs(n) >= scale:
            return f"{n / scale:.2f} {suffix}"
    return f"{int(n)} B"


@dataclass
class CostReport:
    """Per-layer costs in execution order plus totals (see the module docstring for the conventions).

    ``params`` is the model's unique parameter count (equal to the sum over ``layers``), ``macs`` and
    ``bops`` the sums over layers, ``activation_bytes`` the sum of the layers' output bytes (outputs that
    alias an input of the same layer call counted zero times) and
    ``peak_activation_bytes`` the peak of live activation storage during the eager forward.
    """

    layers: list[LayerCost]
    params: int
    macs: int
    bops: int
    activation_bytes: int
    peak_activation_bytes: int
    weight_bits: BitsSpec = 32
    act_bits: BitsSpec = 32
    ops: dict[str, int] = field(default_factory=dict)

    def layer(self, name: str) -> LayerCost:
        """The :class:`LayerCost` of module path ``name``; ``KeyError`` listing known names if absent."""
        for lc in self.layers:
            if lc.name == name:
                return lc
        known = ", ".join(repr(lc.name) for lc in self.layers[:20])
        raise KeyError(f"no layer named {name!r} in this report; layers include: {known}")

    def macs_under(self, prefix: str) -> int:
        """Total MACs of the module ``prefix`` and everything below it (``""``: the whole model)."""
        return sum(lc.macs for lc in self.layers if _under(lc.name, prefix))

    def bops_under(self, prefix: str) -> int:
        """Total BOPs of the module ``prefix`` and everything below it."""
        return sum(lc.bops for lc in self.layers if _under(lc.name, prefix))

    def params_under(self, prefix: str) -> int:
        """Total parameters owned by the module ``prefix`` and everything below it."""
        return sum(lc.params for lc in self.layers if _under(lc.name, prefix))

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-serialisable dict: ``{"layers": [...], "params": ..., "macs": ..., ...}``."""
        return {
            "layers": [lc.to_dict() for lc in self.layers],
            "params": self.params,
            "macs": self.macs,
            "bops": self.bops,
            "activation_bytes": self.activation_bytes,
            "peak_activation_bytes": self.peak_activation_bytes,
            "weight_bits": dict(self.weight_bits) if isinstance(self.weight_bits, Mapping) else self.weight_bits,
            "act_bits": dict(self.act_bits) if isinstance(self.act_bits, Mapping) else self.act_bits,
            "ops": dict(self.ops),
        }

    def table(self, title: str | None = "Cost model") -> Any:
        """A :class:`rich.table.Table` with one row per layer and a total row (print it with rich)."""
        from rich.table import Table

        t = Table(title=title)
        for col in ("layer", "type", "output shape"):
            t.add_column(col)
        for col in ("params", "MACs", "BOPs", "activations"):
            t.add_column(col, justify="right")
        for lc in self.layers:
            t.add_row(
                lc.name or "<model>",
                lc.type,
                "x".join(str(d) for d in lc.output_shape) if lc.output_shape is not None else "-",
                _human(lc.params),
                _human(lc.macs),
                _human(lc.bops),
                _human_bytes(lc.activation_bytes),
            )
        t.add_section()
        t.add_row(
            "total",
            "",
            "",
            _human(self.params),
            _human(self.macs),
            _human(self.bops),
            f"{_human_bytes(self.activation_bytes)} (peak {_human_bytes(self.peak_activation_bytes)})",
        )
        return t


def _under(name: str, prefix: str) -> bool:
    return prefix == "" or name == prefix or name.startswith(prefix + ".")


# ----------------------------------------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------------------------------------


def _tensors(obj: Any, depth: int = 0) -> Iterator[torch.Tensor]:
    """Tensors inside nested tuples/lists/dicts (HF ``ModelOutput`` is a dict) and dataclass-like objects."""
    if depth > 8:
        return
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, Mapping):
        for v in obj.values():
            yield from _tensors(v, depth + 1)
    elif isinstance(obj, (tuple, list)):
        for v in obj:
            yield from _tensors(v, depth + 1)


def _check_bits(spec: BitsSpec, what: str, module_names: list[str]) -> None:
    def ok(v: Any) -> bool:
        return isinstance(v, int) and not isinstance(v, bool) and v >= 1

    if isinstance(spec, Mapping):
        for key, val in spec.items():
            if not isinstance(key, str):
                raise ConfigError(f"{what}: keys must be module paths or glob patterns (str), got {key!r}")
            if not ok(val):
                raise ConfigError(f"{what}[{key!r}]: bits must be a positive int, got {val!r}")
            if not any(fnmatch.fnmatchcase(n, key) for n in module_names):
                sample = ", ".join(repr(n) for n in module_names[1:9])
                raise ConfigError(
                    f"{what}[{key!r}] matches no module of the model; use a module path or glob pattern "
                    f"such as {sample}"
                )
    elif not ok(spec):
        raise ConfigError(f"{what}: must be a positive int or a dict of module path -> bits, got {spec!r}")


def _bits_for(spec: BitsSpec, name: str) -> int:
    """Bits for module ``name``: exact key, else the longest matching glob pattern, else 32."""
    if not isinstance(spec, Mapping):
        return int(spec)
    if name in spec:
        return int(spec[name])
    best: tuple[int, int] | None = None
    for key, val in spec.items():
        if fnmatch.fnmatchcase(name, key) and (best is None or len(key) > best[0]):
            best = (len(key), int(val))
    return best[1] if best is not None else 32


def _storage_key(t: torch.Tensor) -> int | None:
    try:
        st = t.untyped_storage()
    except (RuntimeError, NotImplementedError):
        return None
    ptr = st.data_ptr()
    return int(ptr) if ptr else None


class _Tracker(TorchDispatchMode):
    """Counts MACs per op and attributes them to the top of a module stack; tracks live activations."""

    def __init__(self, weight_storages: set[int], stack: list[str]) -> None:
        super().__init__()
        self.weight_storages = weight_storages
        self.stack = stack
        # per module name: list of (macs, is_weight_op)
        self.macs: dict[str, list[tuple[int, bool]]] = {}
        self.ops: dict[str, int] = {}
        self.live: dict[int, tuple[int, int]] = {}  # storage key -> (refcount, nbytes)
        self.cur = 0
        self.peak = 0

    # -- liveness ---------------------------------------------------------------------------------
    def track(self, t: torch.Tensor) -> None:
        if t.device.type == "meta" or t.numel() == 0:
            return
        key = _storage_key(t)
        if key is None or key in self.weight_storages:
            return
        if key in self.live:
            rc, nb = self.live[key]
            self.live[key] = (rc + 1, nb)
        else:
            nb = int(t.untyped_storage().nbytes())
            self.live[key] = (1, nb)
            self.cur += nb
            self.peak = max(self.peak, self.cur)
        weakref.finalize(t, self._release, key)

    def _release(self, key: int) -> None:
        entry = self.live.get(key)
        if entry is None:
            return
        rc, nb = entry
        if rc <= 1:
            del self.live[key]
            self.cur -= nb
        else:
            self.live[key] = (rc - 1, nb)

    # -- dispatch ---------------------------------------------------------------------------------
    def __torch_dispatch__(self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        packet = func._overloadpacket
        if packet not in _SIMPLE and packet not in _WITH_OUT:
            # matmul-like composites that reached us undecomposed: let them decompose into counted ops
            if packet in (aten.linear, aten.matmul, aten.einsum, aten.conv2d, aten.conv1d, aten.conv3d):
                r = func.decompose(*args, **kwargs)
                if r is not NotImplemented:
                    return r
        out = func(*args, **kwargs)
        macs = op_macs(func, args, kwargs, out)
        if macs:
            owner = self.stack[-1] if self.stack else ""
            is_weight = packet not in _ATTENTION_OPS and any(
                isinstance(a, torch.Tensor) and _storage_key(a) in self.weight_storages for a in args
            )
            self.macs.setdefault(owner, []).append((macs, is_weight))
            opname = str(packet).split(".")[-1]
            self.ops[opname] = self.ops.get(opname, 0) + macs
        for t in _tensors(out):
            self.track(t)
        return out


# ----------------------------------------------------------------------------------------------------
# profile
# ----------------------------------------------------------------------------------------------------


def profile(
    model: nn.Module,
    example_inputs: tuple[Any, ...],
    weight_bits: int | dict[str, int] = 32,
    act_bits: int | dict[str, int] = 32,
    example_kwargs: dict[str, Any] | None = None,
) -> CostReport:
    """Profile one eager forward of ``model(*example_inputs, **example_kwargs)``.

    Args:
        model: any ``nn.Module``. It runs in eval mode under ``torch.no_grad`` (so BatchNorm running
            statistics are not updated); its train/eval flags are restored afterwards.
        example_inputs: positional inputs as a tuple, e.g. ``(x,)``. A single tensor is accepted too.
        weight_bits: bits of the weights, one int for all layers or a dict from module path (or glob
            pattern, e.g. ``"encoder.*"``) to bits; unmatched modules use 32.
        act_bits: bits of the activations entering each layer, same forms as ``weight_bits``.
        example_kwargs: keyword inputs for the forward, if any.

    Returns:
        A :class:`CostReport`; layers are the modules that ran and are leaves, own parameters directly or
        ran MAC ops directly, in order of their first call.

    Raises:
        TypeError: ``model`` is not an ``nn.Module`` or ``example_inputs`` is not a tuple/tensor.
        ConfigError: a bits value is not a positive int, or a dict key matches no module.

    Example:
        >>> import torch
        >>> rep = profile(torch.nn.Linear(10, 20), (torch.randn(2, 5, 10),), weight_bits=8, act_bits=8)
        >>> rep.params, rep.macs, rep.bops
        (220, 2000, 128000)
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"profile() needs an nn.Module, got {type(model).__name__}")
    if isinstance(example_inputs, torch.Tensor):
        example_inputs = (example_inputs,)
    if not isinstance(example_inputs, tuple):
        raise TypeError(
            f"example_inputs must be a tuple of positional inputs, e.g. (x,), got {type(example_inputs).__name__}"
        )
    kwargs_in = dict(example_kwargs or {})

    names: dict[nn.Module, str] = {}
    for name, mod in model.named_modules():
        names.setdefault(mod, name)
    module_names = list(names.values())
    _check_bits(weight_bits, "weight_bits", module_names)
    _check_bits(act_bits, "act_bits", module_names)

    # parameter ownership (each tensor once, first owner)
    own_params: dict[str, int] = {}
    weight_storages: set[int] = set()
    for pname, p in model.named_parameters():
        owner = pname.rpartition(".")[0]
        own_params[owner] = own_params.get(owner, 0) + p.numel()
        key = _storage_key(p)
        if key is not None:
            weight_storages.add(key)
    for _bname, b in model.named_buffers():
        key = _storage_key(b)
        if key is not None:
            weight_storages.add(key)

    stack: list[str] = []
    layers: dict[str, LayerCost] = {}
    order: list[str] = []
    new_bytes: dict[str, int] = {}  # output bytes that do not alias an input of the same call
    tracker = _Tracker(weight_storages, stack)

    def pre_hook(name: str) -> Callable[..., None]:
        def hook(mod: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            stack.append(name)
            lc = layers.get(name)
            if lc is None:
                lc = layers[name] = LayerCost(name=name, type=type(mod).__name__, params=own_params.get(name, 0))
                order.append(name)
            lc.calls += 1
            if lc.input_shape is None:
                first = next(_tensors((args, kwargs)), None)
                if first is not None:
                    lc.input_shape = tuple(first.shape)

        return hook

    def post_hook(name: str) -> Callable[..., None]:
        def hook(mod: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> None:
            if stack and stack[-1] == name:
                stack.pop()
            lc = layers[name]
            outs = list(_tensors(out))
            lc.activation_bytes += sum(t.numel() * t.element_size() for t in outs)
            in_keys = {_storage_key(t) for t in _tensors((args, kwargs))}
            new_bytes[name] = new_bytes.get(name, 0) + sum(
                t.numel() * t.element_size() for t in outs if _storage_key(t) not in in_keys
            )
            if lc.output_shape is None and outs:
                lc.output_shape = tuple(outs[0].shape)

        return hook

    handles = []
    training = {m: m.training for m in names}
    try:
        for mod, name in names.items():
            handles.append(mod.register_forward_pre_hook(pre_hook(name), with_kwargs=True))
            handles.append(mod.register_forward_hook(post_hook(name), with_kwargs=True, always_call=True))
        model.eval()
        with torch.no_grad(), tracker:
            for t in _tensors((example_inputs, kwargs_in)):
                tracker.track(t)
            out = model(*example_inputs, **kwargs_in)
        del out
    finally:
        for h in handles:
            h.remove()
        for m, flag in training.items():
            m.train(flag)

    result: list[LayerCost] = []
    has_children = {name: any(True for _ in mod.children()) for mod, name in names.items()}
    for name in order:
        lc = layers[name]
        for macs, is_weight in tracker.macs.get(name, []):
            lc.macs += macs
            wb = _bits_for(weight_bits, name) if is_weight else _bits_for(act_bits, name)
            lc.bops += macs * wb * _bits_for(act_bits, name)
        if not has_children.get(name, False) or lc.params or lc.macs:
            result.append(lc)
    # parameters of modules that never ran still count towards the model's size
    for name, n in own_params.items():
        if name not in layers:
            mod = model.get_submodule(name) if name else model
            result.append(LayerCost(name=name, type=type(mod).__name__, params=n))

    return CostReport(
        layers=result,
        params=sum(lc.params for lc in result),
        macs=sum(lc.macs for lc in result),
        bops=sum(lc.bops for lc in result),
        activation_bytes=sum(new_bytes.get(lc.name, 0) for lc in result),
        peak_activation_bytes=tracker.peak,
        weight_bits=weight_bits,
        act_bits=act_bits,
        ops=dict(tracker.ops),
    )
