"""Graph capture with shape propagation and clear errors.

:func:`capture` turns an ``nn.Module`` into a :class:`torch.fx.GraphModule`. It first tries
``torch.export.export(..., strict=False)`` (an ATen-level graph), then falls back to
``torch.fx.symbolic_trace`` (a module-level graph with ``call_module`` nodes). When both fail it raises
:class:`~torchslim.core.errors.CaptureError` naming the failing op / source line and the module path
where it happened, and says which stages work without a captured graph.

Example::

    >>> import torch
    >>> from torchslim.core.graph import capture
    >>> g = capture(torch.nn.Sequential(torch.nn.Linear(4, 2)), (torch.randn(1, 4),), strategy="fx")
    >>> g.strategy, [tuple(s) for s in g.output_shapes()]
    ('fx', [(1, 2)])
"""

from __future__ import annotations

import traceback
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.fx
from torch import nn

from torchslim.core.errors import CaptureError

Strategy = Literal["auto", "export", "fx"]

#: Stages that work on plain modules and never need a captured graph.
STAGES_WITHOUT_CAPTURE = (
    "unstructured/magnitude pruning, quantization of Linear/Conv modules (module swap), "
    "distillation, fine-tuning, low-rank decomposition of individual layers"
)


@dataclass
class CapturedGraph:
    """A captured graph plus per-node shapes and module ownership.

    Attributes:
        graph_module: the ``torch.fx.GraphModule`` (for ``"export"`` the ATen graph of the exported
            program, whose parameters are placeholders; for ``"fx"`` a module-level graph).
        strategy: which capture worked: ``"export"`` or ``"fx"``.
        model: the original model.
        exported_program: the ``torch.export.ExportedProgram`` when ``strategy == "export"``.
        attempts: ``(strategy, error message)`` of the strategies that failed before this one.
    """

    graph_module: torch.fx.GraphModule
    strategy: Literal["export", "fx"]
    model: nn.Module
    exported_program: Any = None
    attempts: list[tuple[str, str]] = field(default_factory=list)

    @property
    def graph(self) -> torch.fx.Graph:
        return self.graph_module.graph

    @property
    def nodes(self) -> list[torch.fx.Node]:
        return list(self.graph.nodes)

    def node(self, name: str) -> torch.fx.Node:
        """The node called ``name`` (``KeyError`` listing a few names if absent)."""
        for n in self.graph.nodes:
            if n.name == name:
                return n
        raise KeyError(f"no node named {name!r}; some nodes: {[n.name for n in self.nodes][:10]}")

    def shape_of(self, node: torch.fx.Node) -> torch.Size | None:
        """Output shape of ``node`` from shape propagation (``None`` for non-tensor outputs)."""
        meta = _tensor_meta(node)
        return None if meta is None else meta[0]

    def dtype_of(self, node: torch.fx.Node) -> torch.dtype | None:
        """Output dtype of ``node`` (``None`` for non-tensor outputs)."""
        meta = _tensor_meta(node)
        return None if meta is None else meta[1]

    def module_path(self, node: torch.fx.Node) -> str | None:
        """Dotted path of the module that owns ``node`` (``""`` = the root model, ``None`` = unknown).

        For FX ``call_module`` nodes this is the target; for other FX nodes it is the module whose forward
        created the node (recorded during tracing); for export graphs the innermost ``nn_module_stack``.
        """
        if node.op == "call_module":
            return str(node.target)
        stack = node.meta.get("nn_module_stack")
        if stack:
            path, _ = list(stack.values())[-1]
            return _clean_export_path(str(path))
        if "torchslim_module_path" in node.meta:
            return str(node.meta["torchslim_module_path"])
        return None

    def output_shapes(self) -> list[torch.Size]:
        """Shapes of the graph outputs (flattened)."""
        out = next(n for n in self.graph.nodes if n.op == "output")
        shapes = []
        for a in _flatten_args(out.args):
            if isinstance(a, torch.fx.Node):
                s = self.shape_of(a)
                if s is not None:
                    shapes.append(s)
        return shapes

    def describe(self) -> str:
        """One line per node: name, op, target, owning module, shape."""
        lines = []
        for n in self.graph.nodes:
            shape = self.shape_of(n)
            lines.append(f"{n.name:24s} {n.op:14s} {str(n.target)[:40]:40s} {self.module_path(n)!s:20s} "
                         f"{tuple(shape) if shape is not None else '-'}")
        return "\n".join(lines)


def capture(model: nn.Module, example_inputs: tuple[Any, ...], *, strategy: Strategy = "auto") -> CapturedGraph:
    """Capture ``model`` as an FX graph with per-node shapes.

    Args:
        model: the module to capture (not modified).
        example_inputs: a tuple of example positional inputs, e.g. ``(torch.randn(1, 3, 32, 32),)``.
        strategy: ``"auto"`` (torch.export non-strict, then FX), ``"export"`` or ``"fx"`` only.

    Raises:
        CaptureError: every strategy failed; the message names the failing op / source line, the
            module path, and the stages that do not need capture.
    """
    if strategy not in ("auto", "export", "fx"):
        raise CaptureError(f"unknown capture strategy {strategy!r}; use 'auto', 'export' or 'fx'")
    if not isinstance(example_inputs, tuple):
        raise CaptureError(
            f"example_inputs must be a tuple of positional inputs, got {type(example_inputs).__name__}; "
            "wrap a single tensor as (x,)"
        )
    order: list[Literal["export", "fx"]] = ["export", "fx"] if strategy == "auto" else [strategy]
    failures: list[tuple[str, BaseException, str | None]] = []
    for strat in order:
        try:
            if strat == "export":
                cg = _capture_export(model, example_inputs)
            else:
                cg = _capture_fx(model, example_inputs)
        except _Failure as f:
            failures.append((strat, f.error, f.module_path))
            continue
        cg.attempts = [(s, _first_line(e)) for s, e, _ in failures]
        return cg
    raise CaptureError(_format_failure(model, failures))


# ---- strategies -------------------------------------------------------------------------------------


class _Failure(Exception):
    def __init__(self, error: BaseException, module_path: str | None) -> None:
        super().__init__(str(error))
        self.error = error
        self.module_path = module_path


def _capture_export(model: nn.Module, example_inputs: tuple[Any, ...]) -> CapturedGraph:
    stack: list[str] = []
    handles = []
    failed_at: list[str] = []
    for name, mod in model.named_modules():
        def pre(_m: nn.Module, _a: Any, _name: str = name) -> None:
            stack.append(_name)

        def post(_m: nn.Module, _a: Any, _o: Any) -> None:
            if stack:
                stack.pop()

        handles.append(mod.register_forward_pre_hook(pre))
        handles.append(mod.register_forward_hook(post))
    try:
        ep = torch.export.export(model, example_inputs, strict=False)
    except Exception as e:  # noqa: BLE001 - any failure means "try the next strategy"
        failed_at.append(stack[-1] if stack else "")
        raise _Failure(e, failed_at[0]) from e
    finally:
        for h in handles:
            h.remove()
    gm = ep.graph_module
    return CapturedGraph(graph_module=gm, strategy="export", model=model, exported_program=ep)


class _PathTracer(torch.fx.Tracer):
    """FX tracer that remembers which module's forward is running (for errors and node ownership)."""

    def __init__(self) -> None:
        super().__init__()
        self.path_stack: list[str] = [""]
        self.failed_path: str | None = None

    def call_module(self, m: nn.Module, forward: Any, args: Any, kwargs: Any) -> Any:
        path = self.path_of_module(m)
        self.path_stack.append(path)
        try:
            return super().call_module(m, forward, args, kwargs)
        except Exception:
            if self.failed_path is None:  # innermost module where the failure happened
                self.failed_path = path
            raise
        finally:
            self.path_stack.pop()

    def create_node(self, *args: Any, **kwargs: Any) -> torch.fx.Node:
        node = super().create_node(*args, **kwargs)
        node.meta["torchslim_module_path"] = self.path_stack[-1]
        return node


def _capture_fx(model: nn.Module, example_inputs: tuple[Any, ...]) -> CapturedGraph:
    from torch.fx.passes.shape_prop import ShapeProp

    tracer = _PathTracer()
    try:
        graph = tracer.trace(model)
    except Exception as e:  # noqa: BLE001
        raise _Failure(e, tracer.failed_path or tracer.path_stack[-1]) from e
    name = type(model).__name__
    gm = torch.fx.GraphModule(tracer.root, graph, name)
    # Shape propagation runs the model once: in eval mode, so BatchNorm running stats are not updated.
    modes = {m: m.training for m in model.modules()}
    try:
        gm.eval()
        model.eval()
        with torch.no_grad():
            ShapeProp(gm).propagate(*example_inputs)
    except Exception as e:  # noqa: BLE001
        raise _Failure(e, None) from e
    finally:
        for m, t in modes.items():
            m.training = t
        gm.training = model.training
    return CapturedGraph(graph_module=gm, strategy="fx", model=model)


# ---- helpers ----------------------------------------------------------------------------------------


def _tensor_meta(node: torch.fx.Node) -> tuple[torch.Size, torch.dtype] | None:
    tm = node.meta.get("tensor_meta")
    if tm is not None and hasattr(tm, "shape"):
        return torch.Size(tm.shape), tm.dtype
    val = node.meta.get("val")
    if isinstance(val, torch.Tensor):
        return torch.Size(val.shape), val.dtype
    return None


def _clean_export_path(path: str) -> str:
    # strict export names look like "L__self___layer1_0"; non-strict gives dotted paths already.
    if path.startswith("L__self__"):
        path = path[len("L__self__"):].lstrip("_")
    return path


def _flatten_args(args: Any) -> Iterator[Any]:
    if isinstance(args, (list, tuple)):
        for a in args:
            yield from _flatten_args(a)
    elif isinstance(args, dict):
        for a in args.values():
            yield from _flatten_args(a)
    else:
        yield args


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}"


def _user_frame(e: BaseException) -> traceback.FrameSummary | None:
    """The innermost traceback frame outside torch itself (the user's failing line)."""
    frames = traceback.extract_tb(e.__traceback__)
    user = [f for f in frames if "/torch/" not in f.filename.replace("\\", "/") and "torchslim/core/graph" not in
            f.filename.replace("\\", "/")]
    return user[-1] if user else (frames[-1] if frames else None)


def _describe_op(e: BaseException) -> str:
    msg = str(e)
    if "control flow" in msg or "data-dependent" in msg or "GuardOnDataDependent" in type(e).__name__:
        kind = "data-dependent Python control flow / tensor-to-Python conversion"
    else:
        kind = type(e).__name__
    frame = _user_frame(e)
    if frame is not None:
        return f"`{(frame.line or '').strip()}` in {frame.name}() at {frame.filename}:{frame.lineno} ({kind})"
    return kind


def _format_failure(model: nn.Module, failures: list[tuple[str, BaseException, str | None]]) -> str:
    lines = [f"could not capture a graph of {type(model).__name__}:"]
    for strat, err, path in failures:
        where = "the root model" if not path else f"module '{path}'"
        if path:
            try:
                where += f" ({type(model.get_submodule(path)).__name__})"
            except AttributeError:
                pass
        label = "torch.export (non-strict)" if strat == "export" else "torch.fx.symbolic_trace"
        lines.append(f"  - {label} failed at op {_describe_op(err)} inside {where}: {_first_line(err)}")
    lines.append(
        "Fix: make that code traceable (e.g. replace `if tensor...:` with torch.where, or move it out of "
        "forward), or exclude that module from graph-based stages. Stages that do not need capture: "
        + STAGES_WITHOUT_CAPTURE
        + "."
    )
    return "\n".join(lines)


def run_with_hooks(
    model: nn.Module,
    example_inputs: tuple[Any, ...],
    hooks: Iterable[tuple[nn.Module, Callable[..., Any]]],
) -> None:
    """One eval-mode, no-grad forward pass of ``model`` with forward ``hooks`` (``(module, hook)`` pairs) attached.

    The hooks are removed and the model's train/eval mode restored afterwards, also when the forward pass (or a
    hook) raises. Use it to record shapes, call order or activations without editing the model.

    Example:
        >>> seen = []
        >>> m = nn.Sequential(nn.Linear(2, 3), nn.ReLU())
        >>> run_with_hooks(m, (torch.zeros(1, 2),), [(m[0], lambda mod, args, out: seen.append(tuple(out.shape)))])
        >>> seen
        [(1, 3)]
    """
    handles = [mod.register_forward_hook(fn) for mod, fn in hooks]
    was = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(*example_inputs)
    finally:
        model.train(was)
        for h in handles:
            h.remove()
