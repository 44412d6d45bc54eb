"""Graph clean-up of the exported ONNX graphs: maintained optimisers first, then small named rewrites.

Each pass takes and returns an ``onnx.ModelProto`` and keeps the graph's inputs, outputs and values (up to float
rounding); :func:`clean` runs them in order:

0. :func:`type_matmul_nbits`: the element type of each ``MatMulNBits`` output written out (ONNX's type inference
   does not know ONNX Runtime's ops, and without a type downstream the same-type casts stay and the RMSNorm rules
   do not match).
1. :func:`library_optimize`: onnxscript's optimizer (constant folding, dead-code removal, its default rewrite rules:
   same-type casts and no-op reshapes/expands removed, reshape chains collapsed).
2. :func:`drop_unsqueeze_before_reshape`: an Unsqueeze whose only reader is a Reshape to a constant shape goes
   (the exporter writes ``reshape(unsqueeze(reshape(x)))`` around the fused scan), then the optimizer again.
3. :func:`fuse_rms_norm`: RMSNorm as one op through onnxscript's fusion rules, after :func:`canonical_rms_form`
   spells the traced form the way those rules expect (``1 / x`` as ``Reciprocal``, ReduceMean's default
   ``noop_with_empty_axes`` written out). ``portable`` graphs move to opset 23 and get ``RMSNormalization`` (ONNX
   Runtime and TensorRT-RTX's parser run it); ``ort`` graphs get ONNX Runtime's ``SimplifiedLayerNormalization``.
4. :func:`merge_shared_matmuls`: the MatMuls that read the same input with constant weights become one MatMul on
   the concatenated weights and a ``Split`` (one kernel call per layer instead of four).
"""

from __future__ import annotations

from collections import Counter, defaultdict
from typing import Any, Callable, Hashable

FLAVOURS = ("portable", "ort")
RMS_OPSET = 23          # the first opset with RMSNormalization


def _onnx():
    from .onnx_library import require_onnx_library

    return require_onnx_library("onnx")


def library_optimize(model: Any) -> Any:
    """onnxscript's optimizer on ``model`` (constant folding, unused nodes, its default rewrite rules)."""
    from .onnx_library import require_onnx_library

    ir = require_onnx_library("onnx_ir")
    optimizer = require_onnx_library("onnxscript.optimizer")
    graph = ir.from_proto(model)
    optimizer.optimize_ir(graph)
    return ir.to_proto(graph)


def type_matmul_nbits(model: Any) -> Any:
    """Declare the element type of every ``com.microsoft::MatMulNBits`` output that has none: its ``scales``
    initializer's (the op's type constraint T1 binds A, scales and Y)."""
    onnx = _onnx()
    graph = model.graph
    typed = {v.name for v in list(graph.value_info) + list(graph.input) + list(graph.output)}
    dtypes = {t.name: t.data_type for t in graph.initializer}
    for node in graph.node:
        if node.op_type == "MatMulNBits" and node.output[0] not in typed and node.input[2] in dtypes:
            graph.value_info.append(onnx.helper.make_tensor_value_info(node.output[0], dtypes[node.input[2]], None))
    return model


def canonical_rms_form(model: Any) -> Any:
    """``Div(1, x)`` -> ``Reciprocal(x)`` and ReduceMean's default ``noop_with_empty_axes=0`` written out: the
    forms onnxscript's RMSNorm rules match (the TorchScript exporter writes ``rsqrt`` as ``1 / Sqrt``)."""
    onnx = _onnx()
    from onnx import numpy_helper

    consts = {t.name: t for t in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "ReduceMean" and not any(a.name == "noop_with_empty_axes" for a in node.attribute):
            node.attribute.append(onnx.helper.make_attribute("noop_with_empty_axes", 0))
        if node.op_type == "Div" and node.input[0] in consts:
            one = numpy_helper.to_array(consts[node.input[0]])
            if one.size == 1 and float(one.reshape(())) == 1.0:
                divisor = node.input[1]
                del node.input[:]
                node.input.append(divisor)
                node.op_type = "Reciprocal"
    return model


def fuse_rms_norm(model: Any, flavour: str) -> Any:
    """Every RMSNorm as one op: ``RMSNormalization`` (opset 23) for ``portable``, ONNX Runtime's
    ``SimplifiedLayerNormalization`` for ``ort`` (:data:`FLAVOURS`)."""
    if flavour not in FLAVOURS:
        raise ValueError(f"flavour must be one of {list(FLAVOURS)}, got {flavour!r}")
    from .onnx_library import require_onnx_library

    ir = require_onnx_library("onnx_ir")
    model = canonical_rms_form(model)
    if flavour == "portable":
        graph = ir.from_proto(model)
        # onnxscript's converter works on the IR in place; where it has no adapter it hands the ONNX C API the
        # graph without its weights. The C API converter alone would serialise and copy a real-size model's
        # weights several times (the portable export's peak memory).
        require_onnx_library("onnxscript.version_converter").convert_version(graph, RMS_OPSET, fallback=True)
        require_onnx_library("onnxscript.rewriter.onnx_fusions").fuse(graph)
    else:
        graph = ir.from_proto(model)
        fusions = require_onnx_library("onnxscript.rewriter.ort_fusions.rms_normalization")
        fusions.fuse_rms_normalization(graph)
    require_onnx_library("onnxscript.optimizer").remove_unused_nodes(graph)
    return ir.to_proto(graph)


def _shape_without_unsqueeze(shape: Any, axes: Any) -> Any:
    """The Reshape target that gives the same result when the Unsqueeze (non-negative ``axes``) before it goes,
    or None: a 0 entry copies the input's dimension at its position, which is 1 on an unsqueezed axis and the
    same dimension only before the first of them."""
    out = shape.copy()
    first = min(axes)
    for i, value in enumerate(shape):
        if value == 0 and i in axes:
            out[i] = 1
        elif value == 0 and i > first:
            return None
    return out


def drop_unsqueeze_before_reshape(model: Any) -> Any:
    """``Reshape(Unsqueeze(x), shape)`` -> ``Reshape(x, shape')`` for constant axes and shape, the Unsqueeze read
    by that Reshape only (:func:`_shape_without_unsqueeze` gives ``shape'``); the Reshape chains this leaves are
    collapsed by :func:`library_optimize`."""
    from onnx import numpy_helper

    consts = {t.name: t for t in model.graph.initializer}
    producers = {o: n for n in model.graph.node for o in n.output}
    uses = Counter(name for node in model.graph.node for name in node.input)
    uses.update(o.name for o in model.graph.output)
    for node in list(model.graph.node):
        source = producers.get(node.input[0]) if node.op_type == "Reshape" else None
        if source is None or source.op_type != "Unsqueeze" or uses[source.output[0]] != 1 \
                or node.input[1] not in consts or len(source.input) < 2 or source.input[1] not in consts \
                or any(a.name == "allowzero" and a.i for a in node.attribute):
            continue
        axes = [int(a) for a in numpy_helper.to_array(consts[source.input[1]]).ravel()]
        if min(axes) < 0:
            continue
        shape = _shape_without_unsqueeze(numpy_helper.to_array(consts[node.input[1]]), axes)
        if shape is None:
            continue
        name = f"{node.input[1]}_without_unsqueeze"
        if name not in consts:
            consts[name] = numpy_helper.from_array(shape, name)
            model.graph.initializer.append(consts[name])
        node.input[0], node.input[1] = source.input[0], name
        model.graph.node.remove(source)
    return model


def merge_shared_matmuls(model: Any, kind: Callable[[str], Hashable] | None = None) -> Any:
    """MatMuls reading the same input with constant 2-D weights of one dtype -> one MatMul on the weights
    concatenated along N, then a ``Split`` into the original outputs (same names, same values).

    ``kind`` (weight initializer name -> a key, or None to leave that MatMul alone) keeps weights of different
    kinds apart: the int4 export merges before packing, and only weights its policy packs alike."""
    import numpy as np
    from onnx import helper, numpy_helper

    graph = model.graph
    consts = {t.name: t for t in graph.initializer}
    groups: dict[tuple[str, int, Hashable], list[Any]] = defaultdict(list)
    for node in graph.node:
        if node.op_type == "MatMul" and node.input[1] in consts and len(consts[node.input[1]].dims) == 2:
            key = True if kind is None else kind(node.input[1])
            if key is not None:
                groups[(node.input[0], consts[node.input[1]].data_type, key)].append(node)
    uses = Counter(name for node in graph.node for name in node.input)
    merged: dict[int, list[Any]] = {}          # id(first MatMul of a group) -> nodes replacing the group
    dropped: set[int] = set()
    for (source, _, _), nodes in groups.items():
        nodes = [n for n in nodes if uses[n.input[1]] == 1]      # a weight used elsewhere stays where it is
        if len(nodes) < 2:
            continue
        weights = [numpy_helper.to_array(consts[n.input[1]]) for n in nodes]
        if len({w.shape[0] for w in weights}) != 1:
            continue
        name = f"{nodes[0].name or nodes[0].output[0]}_merged"
        graph.initializer.append(numpy_helper.from_array(np.concatenate(weights, axis=1), f"{name}.weight"))
        graph.initializer.append(numpy_helper.from_array(np.array([w.shape[1] for w in weights], np.int64),
                                                         f"{name}.split"))
        merged[id(nodes[0])] = [
            helper.make_node("MatMul", [source, f"{name}.weight"], [f"{name}.out"], name=name),
            helper.make_node("Split", [f"{name}.out", f"{name}.split"], [n.output[0] for n in nodes], axis=-1,
                             name=f"{name}.split"),
        ]
        dropped.update(id(n) for n in nodes)
        for n in nodes:
            graph.initializer.remove(consts[n.input[1]])
    if not merged:
        return model
    nodes = []
    for node in graph.node:
        nodes.extend(merged.get(id(node), []))
        if id(node) not in dropped:
            nodes.append(node)
    del graph.node[:]
    graph.node.extend(nodes)
    return model


def clean(model: Any, flavour: str) -> Any:
    """The passes of this module in order (see the module docstring). One pass's result replaces the last, so a
    large graph's weights are held about twice at most, not once per pass."""
    for apply in (type_matmul_nbits, library_optimize, drop_unsqueeze_before_reshape, library_optimize,
                  lambda m: fuse_rms_norm(m, flavour), merge_shared_matmuls):
        model = apply(model)
    return model


def node_counts(model: Any, layers: int) -> dict[str, Any]:
    """Node count of ``model``'s graph, in total, per op type and per layer (``total / layers``)."""
    ops = Counter(n.op_type for n in model.graph.node)
    total = sum(ops.values())
    return {"total": total, "per_layer": round(total / max(layers, 1), 1), "op_types": dict(ops.most_common())}
