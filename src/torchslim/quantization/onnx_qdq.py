"""ONNX post-processing of exported fake-quant models into deployable QDQ form, and ORT inspection.

The legacy exporter turns each fake-quant op into ``QuantizeLinear -> DequantizeLinear``; for weights
that leaves a float initializer behind a ``QuantizeLinear``. :func:`finalize_qdq` folds those into int8
initializers (``int8 W -> DequantizeLinear``), quantises Conv/Gemm biases to int32 with scale
``input_scale * weight_scale`` (what ORT's QLinearConv/QGemm expect) and turns scale/zero-point
``Constant`` nodes into initializers. :func:`ort_optimized_op_counts` loads a model in ONNX Runtime with
full optimisation and counts the op types of the graph ORT really runs.

Example::

    import onnx
    from torchslim.quantization.onnx_qdq import finalize_qdq, ort_optimized_op_counts
    onnx.save(finalize_qdq(onnx.load("raw_qdq.onnx")), "model.onnx")
    print(ort_optimized_op_counts("model.onnx"))     # {'QLinearConv': 7, 'QLinearAdd': 3, ...}
"""

from __future__ import annotations

import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np


def _round_half_even(x: np.ndarray) -> np.ndarray:
    return np.rint(x)  # numpy rounds half to even, like QuantizeLinear


def _bcast(p: np.ndarray, ndim: int, axis: int) -> np.ndarray:
    if p.ndim == 0 or p.size == 1:
        return p.reshape(())
    shape = [1] * ndim
    shape[axis] = -1
    return p.reshape(shape)


def finalize_qdq(model: Any) -> Any:
    """Return ``model`` (an ``onnx.ModelProto``, modified in place) in deployable QDQ form."""
    import onnx
    from onnx import helper, numpy_helper

    graph = model.graph
    inits: dict[str, np.ndarray] = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    # Constant nodes -> initializers
    consts: dict[str, np.ndarray] = {}
    keep = []
    for node in graph.node:
        if node.op_type == "Constant" and len(node.output) == 1:
            attr = {a.name: a for a in node.attribute}
            if "value" in attr:
                consts[node.output[0]] = numpy_helper.to_array(attr["value"].t)
                continue
        if node.op_type == "Identity" and node.input[0] in {**inits, **consts}:
            # the exporter de-duplicates equal initializers through Identity nodes: resolve them
            consts[node.output[0]] = {**inits, **consts}[node.input[0]]
            continue
        keep.append(node)
    del graph.node[:]
    graph.node.extend(keep)
    for name, arr in consts.items():
        graph.initializer.append(numpy_helper.from_array(arr, name))
        inits[name] = arr

    producers = {o: n for n in graph.node for o in n.output}
    consumers: dict[str, list[Any]] = {}
    for n in graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)

    def attr_int(node: Any, name: str, default: int) -> int:
        for a in node.attribute:
            if a.name == name:
                return int(a.i)
        return default

    remove: list[Any] = []
    # 1. weight QuantizeLinear(float initializer) -> int8 initializer
    for node in list(graph.node):
        if node.op_type != "QuantizeLinear" or node.input[0] not in inits:
            continue
        if node.input[1] not in inits or len(node.input) < 3 or node.input[2] not in inits:
            continue
        w = inits[node.input[0]].astype(np.float64)
        scale = inits[node.input[1]].astype(np.float64)
        zp = inits[node.input[2]]
        axis = attr_int(node, "axis", 1)
        axis = axis % max(w.ndim, 1)
        info = np.iinfo(zp.dtype)
        q = _round_half_even(w / _bcast(scale, w.ndim, axis)) + _bcast(zp.astype(np.float64), w.ndim, axis)
        q = np.clip(q, info.min, info.max).astype(zp.dtype)
        qname = node.input[0] + "_quantized"
        graph.initializer.append(numpy_helper.from_array(q, qname))
        inits[qname] = q
        for user in consumers.get(node.output[0], []):
            for k, name in enumerate(user.input):
                if name == node.output[0]:
                    user.input[k] = qname
        remove.append(node)
    for node in remove:
        graph.node.remove(node)

    # 2. float biases of Conv / Gemm -> int32 + DequantizeLinear
    producers = {o: n for n in graph.node for o in n.output}
    new_nodes: list[tuple[Any, Any]] = []
    for node in graph.node:
        if node.op_type not in ("Conv", "Gemm") or len(node.input) < 3 or node.input[2] not in inits:
            continue
        dq_x, dq_w = producers.get(node.input[0]), producers.get(node.input[1])
        if (
            dq_x is None
            or dq_w is None
            or dq_x.op_type != "DequantizeLinear"
            or dq_w.op_type != "DequantizeLinear"
        ):
            continue
        if dq_x.input[1] not in inits or dq_w.input[1] not in inits:
            continue
        sx = inits[dq_x.input[1]].astype(np.float64).reshape(())
        sw = inits[dq_w.input[1]].astype(np.float64).reshape(-1)
        b = inits[node.input[2]].astype(np.float64).reshape(-1)
        sb = sx * sw if sw.size > 1 else np.full_like(b, float(sx * sw[0]))
        qb = np.clip(_round_half_even(b / sb), -(2**31), 2**31 - 1).astype(np.int32)
        base = node.input[2]
        qb_name, sb_name, zb_name, out = (
            base + "_quantized",
            base + "_scale",
            base + "_zero_point",
            base + "_dq",
        )
        graph.initializer.append(numpy_helper.from_array(qb, qb_name))
        graph.initializer.append(numpy_helper.from_array(sb.astype(np.float32), sb_name))
        graph.initializer.append(numpy_helper.from_array(np.zeros_like(qb), zb_name))
        dq = helper.make_node(
            "DequantizeLinear", [qb_name, sb_name, zb_name], [out], name=base + "_DequantizeLinear", axis=0
        )
        node.input[2] = out
        new_nodes.append((node, dq))
    for node, dq in new_nodes:
        idx = list(graph.node).index(node)
        graph.node.insert(idx, dq)

    # 3. drop unused initializers (the float weights/biases)
    used = {i for n in graph.node for i in n.input} | {o.name for o in graph.output}
    keep_inits = [t for t in graph.initializer if t.name in used]
    del graph.initializer[:]
    graph.initializer.extend(keep_inits)
    for inp in list(graph.input):
        if inp.name not in used and inp.name in {t.name for t in keep_inits}:
            graph.input.remove(inp)
    onnx.checker.check_model(model)
    return model


def ort_optimized_op_counts(onnx_path: str | Path, level: str = "all") -> dict[str, int]:
    """Op-type counts of the graph ONNX Runtime actually executes after its optimisations.

    Uses ``SessionOptions.optimized_model_filepath``; ``level`` is ``"basic"``, ``"extended"`` or ``"all"``.
    """
    import onnx
    import onnxruntime as ort

    levels = {
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "optimized.onnx"
        opts = ort.SessionOptions()
        opts.graph_optimization_level = levels[level]
        opts.optimized_model_filepath = str(out)
        opts.intra_op_num_threads = 1
        ort.InferenceSession(str(onnx_path), opts, providers=["CPUExecutionProvider"])
        g = onnx.load(str(out)).graph
        return dict(Counter(n.op_type for n in g.node))
