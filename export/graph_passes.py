"""Graph clean-up of the exported ONNX graphs: maintained optimisers first, then small named rewrites.

Each pass takes an ``onnx_ir.Model``, rewrites it in place and returns it, keeping the graph's inputs, outputs and
values (up to float rounding). :func:`clean` runs them in order on one IR of the graph (:func:`on_proto`: one
conversion from and to the ``onnx.ModelProto``, so a real-size graph's weights are not copied once per pass):

0. :func:`type_matmul_nbits`: the element type of each ``MatMulNBits`` output written out (ONNX's type inference
   does not know ONNX Runtime's ops, and without a type downstream the same-type casts stay and the RMSNorm rules
   do not match).
1. :func:`library_optimize`: onnxscript's optimizer (constant folding, dead-code removal, its default rewrite rules:
   same-type casts and no-op reshapes/expands removed, reshape chains collapsed).
2. :func:`drop_unsqueeze_before_reshape`: an Unsqueeze whose only reader is a Reshape to a constant shape goes
   (the exporter writes ``reshape(unsqueeze(reshape(x)))`` around the fused scan), then the optimizer again.
   :func:`collapse_reshapes`: chains of Reshapes to constant shapes become one, and a Reshape to the shape its
   input already has goes.
3. :func:`fuse_rms_norm`: RMSNorm as one op through onnxscript's fusion rules, after :func:`canonical_rms_form`
   spells the traced form the way those rules expect (``1 / x`` as ``Reciprocal``, ReduceMean's default
   ``noop_with_empty_axes`` written out). ``portable`` graphs move to opset 23 and get ``RMSNormalization`` (ONNX
   Runtime and TensorRT-RTX's parser run it); ``ort`` graphs get ONNX Runtime's ``SimplifiedLayerNormalization``.
   Then :func:`collapse_reshapes` again: shapes now pass through each norm as one op.
4. :func:`merge_shared_matmuls`: the MatMuls that read the same input with constant weights become one MatMul on
   the concatenated weights and a ``Split`` (one kernel call per layer instead of four); a bias that only one of
   them has is added after the Split, on its part alone.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Hashable
from typing import Any

FLAVOURS = ("portable", "ort")
RMS_OPSET = 23          # the first opset with RMSNormalization
_ONNX_DOMAINS = ("", "ai.onnx")


def _library(name: str) -> Any:
    from .onnx_library import require_onnx_library

    return require_onnx_library(name)


def on_proto(model: Any, *passes: Callable[[Any], Any]) -> Any:
    """``passes`` (each ``onnx_ir.Model`` -> the same, rewritten) on the ``onnx.ModelProto`` ``model``: converted
    to the IR once and back once. The tensors of the IR read the proto's bytes until a pass replaces them."""
    ir = _library("onnx_ir")
    ir_model = ir.from_proto(model)
    for apply in passes:
        ir_model = apply(ir_model)
    return ir.to_proto(ir_model)


def _const(value: Any) -> Any:
    """The array of an initializer ``value`` (None for anything else, and for a missing optional input)."""
    if value is None or not value.is_initializer() or value.const_value is None:
        return None
    return value.const_value.numpy()


def library_optimize(model: Any) -> Any:
    """onnxscript's optimizer on ``model`` (constant folding, unused nodes, its default rewrite rules)."""
    _library("onnxscript.optimizer").optimize_ir(model)
    return model


def type_matmul_nbits(model: Any) -> Any:
    """Declare the element type of every ``com.microsoft::MatMulNBits`` output that has none: its ``scales``
    initializer's (the op's type constraint T1 binds A, scales and Y)."""
    for node in model.graph:
        scales = node.inputs[2] if node.op_type == "MatMulNBits" and len(node.inputs) > 2 else None
        if scales is not None and scales.const_value is not None and node.outputs[0].dtype is None:
            node.outputs[0].dtype = scales.const_value.dtype
    return model


def canonical_rms_form(model: Any) -> Any:
    """``Div(1, x)`` -> ``Reciprocal(x)`` and ReduceMean's default ``noop_with_empty_axes=0`` written out: the
    forms onnxscript's RMSNorm rules match (the TorchScript exporter writes ``rsqrt`` as ``1 / Sqrt``)."""
    ir = _library("onnx_ir")
    for node in model.graph:
        if node.domain not in _ONNX_DOMAINS:
            continue
        if node.op_type == "ReduceMean" and "noop_with_empty_axes" not in node.attributes:
            node.attributes["noop_with_empty_axes"] = ir.AttrInt64("noop_with_empty_axes", 0)
        one = _const(node.inputs[0]) if node.op_type == "Div" else None
        if one is not None and one.size == 1 and float(one.reshape(())) == 1.0:
            divisor = node.inputs[1]
            node.replace_input_with(0, divisor)
            node.resize_inputs(1)
            node.op_type = "Reciprocal"
    return model


def fuse_rms_norm(model: Any, flavour: str) -> Any:
    """Every RMSNorm as one op: ``RMSNormalization`` (opset 23) for ``portable``, ONNX Runtime's
    ``SimplifiedLayerNormalization`` for ``ort`` (:data:`FLAVOURS`)."""
    if flavour not in FLAVOURS:
        raise ValueError(f"flavour must be one of {list(FLAVOURS)}, got {flavour!r}")
    model = canonical_rms_form(model)
    if flavour == "portable":
        # onnxscript's converter works on the IR in place; where it has no adapter it hands the ONNX C API the
        # graph without its weights. The C API converter alone would serialise and copy a real-size model's
        # weights several times (the portable export's peak memory).
        _library("onnxscript.version_converter").convert_version(model, RMS_OPSET, fallback=True)
        _library("onnxscript.rewriter.onnx_fusions").fuse(model)
    else:
        _library("onnxscript.rewriter.ort_fusions.rms_normalization").fuse_rms_normalization(model)
    _library("onnxscript.optimizer").remove_unused_nodes(model)
    return model


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


def _initializer(model: Any, name: str, array: Any) -> Any:
    """The graph's initializer ``name``, registered with ``array`` unless it already exists."""
    ir = _library("onnx_ir")
    found = model.graph.initializers.get(name)
    if found is None:
        found = ir.Value(name=name, const_value=ir.tensor(array, name=name))
        model.graph.register_initializer(found)
    return found


def drop_unsqueeze_before_reshape(model: Any) -> Any:
    """``Reshape(Unsqueeze(x), shape)`` -> ``Reshape(x, shape')`` for constant axes and shape, the Unsqueeze read
    by that Reshape only (:func:`_shape_without_unsqueeze` gives ``shape'``); the Reshape chains this leaves are
    collapsed by :func:`library_optimize`."""
    for node in list(model.graph):
        if node.op_type != "Reshape" or node.domain not in _ONNX_DOMAINS or node.inputs[0] is None:
            continue
        source = node.inputs[0].producer()
        if source is None or source.op_type != "Unsqueeze" or source.domain not in _ONNX_DOMAINS \
                or len(source.outputs[0].uses()) != 1 or source.outputs[0].is_graph_output() \
                or len(source.inputs) < 2:
            continue
        allowzero = node.attributes.get("allowzero")
        shape, axes = _const(node.inputs[1]), _const(source.inputs[1])
        if (allowzero is not None and allowzero.value) or shape is None or axes is None:
            continue
        axes = [int(a) for a in axes.ravel()]
        if min(axes) < 0:
            continue
        shape = _shape_without_unsqueeze(shape, axes)
        if shape is None:
            continue
        node.replace_input_with(1, _initializer(model, f"{node.inputs[1].name}_without_unsqueeze", shape))
        node.replace_input_with(0, source.inputs[0])
        model.graph.remove(source, safe=True)
    return model


def _reshape_target(node: Any) -> list[int] | None:
    """The constant target shape of a plain ONNX Reshape node (``allowzero`` unset or 0), or None."""
    if node.op_type != "Reshape" or node.domain not in _ONNX_DOMAINS or len(node.inputs) < 2 \
            or node.inputs[0] is None:
        return None
    allowzero = node.attributes.get("allowzero")
    shape = _const(node.inputs[1])
    if (allowzero is not None and allowzero.value) or shape is None:
        return None
    return [int(d) for d in shape.ravel()]


def _keeps_shape(source: Any, target: list[int]) -> bool:
    """Whether reshaping a value of ``source``'s (possibly symbolic) shape to ``target`` leaves it as it is: the
    same rank, and at every axis the same static extent, a 0 (copy the input's), or the one -1 (the rest fixes
    it to the input's extent)."""
    if source is None or len(source) != len(target) or target.count(-1) > 1:
        return False
    return all(t in (0, -1) or (isinstance(d, int) and d == t) for d, t in zip(source, target))


_SAME_SHAPE_OPS = ("Softplus", "Sigmoid", "Neg", "Exp", "Relu", "Cast", "QuickGelu", "SimplifiedLayerNormalization",
                   "RMSNormalization")


def _broadcast(shapes: list[Any]) -> Any:
    """The shape of an elementwise op over inputs of these shapes (None where one is unknown): per axis a static
    extent above 1 wins, a 1 takes the other's, two symbolic extents stay unknown (None)."""
    if any(s is None for s in shapes):
        return None
    rank = max(len(s) for s in shapes)
    out = []
    for axis in range(rank):
        dims = [s[axis - rank + len(s)] for s in shapes if axis - rank + len(s) >= 0]
        wide = {d for d in dims if isinstance(d, int) and d != 1}
        if len(wide) > 1:
            return None
        out.append(wide.pop() if wide else 1 if all(d == 1 for d in dims) else None)
    return out


def _rule_shape(node: Any, value: Any, shape: Callable[[Any], Any]) -> Any:
    """The shape of ``node``'s output ``value`` from its inputs' (``shape``), for the ops this module knows:
    ONNX Runtime's (``LinearAttention``'s packed output like its value input when the query/key heads are at
    most the value heads, ``CausalConvWithState`` like its input, ``MatMulNBits`` as its input with the last axis
    N), elementwise activations and the fused norm as their input, Split by constant sizes, Add/Mul by
    broadcasting, Reshape by a constant target; None where it cannot tell."""
    first = value is node.outputs[0]
    if node.op_type == "LinearAttention" and first:
        heads = [node.attributes.get(a) for a in ("q_num_heads", "kv_num_heads")]
        if None not in heads and heads[0].value <= heads[1].value:
            return shape(node.inputs[2])
    elif node.op_type == "CausalConvWithState" and first:
        return shape(node.inputs[0])
    elif node.op_type == "MatMulNBits" and node.attributes.get("N") is not None:
        source = shape(node.inputs[0])
        return None if source is None else [*source[:-1], node.attributes["N"].value]
    elif node.op_type in _SAME_SHAPE_OPS and first:
        return shape(node.inputs[0])
    elif node.op_type == "Split" and node.domain in _ONNX_DOMAINS and len(node.inputs) > 1 \
            and _const(node.inputs[1]) is not None:
        source = shape(node.inputs[0])
        axis = node.attributes["axis"].value if "axis" in node.attributes else 0
        if source is not None:
            out = list(source)
            out[axis] = int(_const(node.inputs[1])[list(node.outputs).index(value)])
            return out
    elif node.op_type in ("Add", "Mul") and node.domain in _ONNX_DOMAINS:
        return _broadcast([shape(x) for x in node.inputs])
    elif _reshape_target(node) is not None:
        target, source = _reshape_target(node), shape(node.inputs[0])
        if _keeps_shape(source, target):
            return source
        copied = [source[i] if t == 0 and source is not None and i < len(source) else t for i, t in
                  enumerate(target)]
        return [None if d in (0, -1) else d for d in copied]
    return None


def _shapes(graph: Any) -> Callable[[Any], Any]:
    """``value -> shape`` for every value of ``graph``, as far as it can be known: ONNX's shape inference where it
    looked, :func:`_rule_shape` carried forward node by node where it did not (ONNX Runtime's ops, and everything
    downstream of them: their outputs carry only named, unknown extents). Extents are ints, or anything else for
    one not known."""
    known: dict[int, Any] = {}

    def shape(value: Any) -> Any:
        if value is None:
            return None
        return known.get(id(value), value.shape)

    def static(dims: Any) -> int:
        return -1 if dims is None else sum(isinstance(d, int) for d in dims)

    for node in graph:
        for value in node.outputs:
            ruled = _rule_shape(node, value, shape)
            # the one that knows more extents: inference names those of ONNX Runtime's ops without knowing them
            known[id(value)] = ruled if static(ruled) > static(value.shape) else value.shape
    return shape


def collapse_reshapes(model: Any) -> Any:
    """``Reshape(Reshape(x, a), b)`` -> ``Reshape(x, b)`` when b has no 0 entry (the inner Reshape goes once no
    other node reads it), then a Reshape whose input already has the target shape goes (its readers read the
    input). The model's code reshapes packed heads to ``[B, T, H, d]`` and back around the fused scan and the
    skip, many of which leave their value as it was (their input's shape carried through ONNX Runtime's ops
    by :func:`_shapes`)."""
    graph = model.graph
    for node in list(graph):
        target = _reshape_target(node)
        source = node.inputs[0].producer() if target is not None else None
        if source is not None and 0 not in target and _reshape_target(source) is not None:
            node.replace_input_with(0, source.inputs[0])
            if not source.outputs[0].uses() and not source.outputs[0].is_graph_output():
                graph.remove(source, safe=True)
    shape = _shapes(graph)
    for node in list(graph):
        target = _reshape_target(node)
        out = node.outputs[0] if target is not None else None
        if out is None or out.is_graph_output() or not _keeps_shape(shape(node.inputs[0]), target):
            continue
        out.replace_all_uses_with(node.inputs[0])
        graph.remove(node, safe=True)
    return model


def _bias_add(matmul: Any, width: int, dtype: Any) -> tuple[Any, Any] | None:
    """(the ``Add``, its bias value) where the only reader of ``matmul``'s output (not a graph output) adds a
    constant 1-D bias of ``width`` elements and ``dtype``; else None."""
    out = matmul.outputs[0]
    if out.is_graph_output() or len(out.uses()) != 1:
        return None
    add = out.uses()[0][0]
    if add.op_type != "Add" or add.domain not in _ONNX_DOMAINS or len(add.inputs) != 2:
        return None
    bias = add.inputs[1] if add.inputs[0] is out else add.inputs[0]
    array = _const(bias)
    if array is None or array.shape != (width,) or array.dtype != dtype.numpy():
        return None
    return add, bias


def merge_shared_matmuls(model: Any, kind: Callable[[str], Hashable] | None = None, *,
                         lone_bias_after_split: bool = False) -> Any:
    """MatMuls reading the same input with constant 2-D weights of one dtype -> one MatMul on the weights
    concatenated along N, then a ``Split`` into the original outputs (same names, same values). Where some of them
    are read only by an ``Add`` of a constant bias over their N, the biases (zeros for the others) are added once
    before the Split: ONNX Runtime folds one bias over the whole output into the packed ``MatMulNBits``.

    ``kind`` (weight initializer name -> a key, or None to leave that MatMul alone) keeps weights of different
    kinds apart: the int4 export merges before packing, and only weights its policy packs alike.
    ``lone_bias_after_split``: where only one of the merged MatMuls has a bias, its ``Add`` stays after the Split on
    that part (as many nodes, and a float MatMul's output is not added to over its whole width: Mamba2's merged
    projection is 3,352 wide and only its 24 step sizes have a bias)."""
    import numpy as np

    ir = _library("onnx_ir")
    graph = model.graph
    groups: dict[tuple[int, Any, Hashable], list[Any]] = defaultdict(list)
    sources: dict[int, Any] = {}
    for node in graph:
        if node.op_type != "MatMul" or node.domain not in _ONNX_DOMAINS or node.inputs[0] is None:
            continue
        weight = node.inputs[1]
        if weight is None or not weight.is_initializer() or weight.const_value is None \
                or len(weight.const_value.shape) != 2:
            continue
        key = True if kind is None else kind(weight.name)
        if key is not None:
            sources[id(node.inputs[0])] = node.inputs[0]
            groups[(id(node.inputs[0]), weight.const_value.dtype, key)].append(node)
    for (source, _, _), nodes in groups.items():
        # a weight read elsewhere (or a graph output) stays where it is
        nodes = [n for n in nodes if len(n.inputs[1].uses()) == 1 and not n.inputs[1].is_graph_output()]
        if len(nodes) < 2:
            continue
        weights = [n.inputs[1].const_value.numpy() for n in nodes]
        if len({w.shape[0] for w in weights}) != 1:
            continue
        name = f"{nodes[0].name or nodes[0].outputs[0].name}_merged"
        weight = _initializer(model, f"{name}.weight", np.concatenate(weights, axis=1))
        sizes = _initializer(model, f"{name}.split", np.array([w.shape[1] for w in weights], np.int64))
        matmul = ir.node("MatMul", [sources[source], weight], name=name, outputs=[ir.Value(name=f"{name}.out")])
        dtype = weight.const_value.dtype
        matmul.outputs[0].dtype = dtype     # typed values only: the IR writes a value_info for each
        adds = [_bias_add(n, w.shape[1], dtype) for n, w in zip(nodes, weights)]
        if lone_bias_after_split and sum(a is not None for a in adds) == 1:
            adds = [None] * len(adds)                       # the Add reads the Split's output below
        merged = [matmul]
        if any(adds):
            bias = np.concatenate([_const(a[1]) if a else np.zeros(w.shape[1], dtype.numpy())
                                   for a, w in zip(adds, weights)])
            merged.append(ir.node("Add", [matmul.outputs[0], _initializer(model, f"{name}.bias", bias)],
                                  name=f"{name}.add", outputs=[ir.Value(name=f"{name}.biased")]))
            merged[-1].outputs[0].dtype = dtype
        split = ir.node("Split", [merged[-1].outputs[0], sizes], {"axis": -1}, name=f"{name}.split",
                        num_outputs=len(nodes))
        graph.insert_before(nodes[0], [*merged, split])
        for old, new, add in zip(nodes, split.outputs, adds):
            # the split output stands for the MatMul's output, or for its bias Add's
            last, old_weight = (add[0] if add else old), old.inputs[1]
            out_name = last.outputs[0].name
            new.type, new.shape = last.outputs[0].type, last.outputs[0].shape
            if new.type is None:
                new.dtype = dtype
            ir.convenience.replace_all_uses_with(last.outputs[0], new, replace_graph_outputs=True)
            if add:
                graph.remove(add[0], safe=True)
                if not add[1].uses() and add[1].is_initializer():
                    graph.initializers.pop(add[1].name)
            graph.remove(old, safe=True)
            new.name = out_name
            graph.initializers.pop(old_weight.name)
    return model


def clean(model: Any, flavour: str) -> Any:
    """The passes of this module in order (see the module docstring) on the ``onnx.ModelProto`` ``model``,
    through one IR of it (:func:`on_proto`); returns the cleaned ``onnx.ModelProto``."""
    return on_proto(model, type_matmul_nbits, library_optimize, drop_unsqueeze_before_reshape, collapse_reshapes,
                    library_optimize, lambda m: fuse_rms_norm(m, flavour), collapse_reshapes,
                    lambda m: merge_shared_matmuls(m, lone_bias_after_split=True))


def node_counts(model: Any, layers: int) -> dict[str, Any]:
    """Node count of the ``onnx.ModelProto`` ``model``'s graph, in total, per op type and per layer
    (``total / layers``)."""
    from collections import Counter

    ops = Counter(n.op_type for n in model.graph.node)
    total = sum(ops.values())
    return {"total": total, "per_layer": round(total / max(layers, 1), 1), "op_types": dict(ops.most_common())}


def _readers(model: Any) -> dict[str, list[tuple[Any, int]]]:
    """Every value name of ``model``'s graph -> the (node, input index) pairs that read it."""
    readers: dict[str, list[tuple[Any, int]]] = defaultdict(list)
    for node in model.graph.node:
        for i, name in enumerate(node.input):
            readers[name].append((node, i))
    return readers


def weight_read_bytes(model: Any) -> int:
    """Bytes of the ``onnx.ModelProto`` ``model``'s initializers one call reads at batch 1 (sizes from their dims:
    external data need not be loaded): each in full, but a table only Gather nodes index (an embedding) one row.
    A quantized graph packs its head apart from the embedding table it gathers from, so the table's size is not
    read per token; a tied float32 head reads the table whole, as a MatMul input."""
    import numpy as np

    readers = _readers(model)
    total = 0
    for tensor in model.graph.initializer:
        if tensor.name not in readers:
            continue
        dims = [int(d) for d in tensor.dims]
        size = int(np.prod(dims)) if dims else 1
        itemsize = _library("onnx.helper").tensor_dtype_to_np_dtype(tensor.data_type).itemsize
        if dims and {(node.op_type, i) for node, i in readers[tensor.name]} == {("Gather", 0)}:
            size //= max(dims[0], 1)
        total += size * itemsize
    return total


# ONNX Runtime's recurrent ops whose CPU kernels read their past state (input 3) once, before writing the present
# state (output 1): a step may bind both to one buffer. The runtime re-checks this against a plain run.
STATE_COPYING_OPS = {("com.microsoft", "LinearAttention"), ("com.microsoft", "CausalConvWithState")}


def in_place_states(model: Any) -> list[str]:
    """The state inputs of the ``onnx.ModelProto`` ``model`` (``state.i``) that one node of
    :data:`STATE_COPYING_OPS` reads, as its past state and nothing else reads, and whose own present-state output
    is the graph's ``new_state.i``: where a runtime may write the new state over the old one."""
    readers = _readers(model)
    outputs = {o.name for o in model.graph.output}
    found = []
    for graph_input in model.graph.input:
        name = graph_input.name
        uses = readers.get(name, [])
        if not name.startswith("state.") or len(uses) != 1:
            continue
        node, index = uses[0]
        if ((node.domain, node.op_type) in STATE_COPYING_OPS and index == 3 and len(node.output) > 1
                and node.output[1] == f"new_{name}" and node.output[1] in outputs):
            found.append(name)
    return found
