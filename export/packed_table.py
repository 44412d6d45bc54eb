"""An int8 graph's embedding rows read from its packed tied head, not from a float32 table kept beside it.

The int8 export packs a tied head into ``MatMulNBits`` blocks (:mod:`int8_blocks`) but the ``Gather`` that embeds
the tokens still reads the float32 table, so the graph holds the table twice, once at four times the size of the
other (Mamba2-130M: 154 MB of float32 beside its 39 MB of 8-bit head). ONNX Runtime's
``com.microsoft::GatherBlockQuantized`` gathers rows of the same blocks and dequantizes them: the rewrite makes
the embedding read the head's ``B [V, kb, 128]`` (its scales again as ``[V, kb, 1]``, a small copy) and merges
each row's blocks back to ``kb * 128`` columns (a ``Slice`` drops a last block's padding). The embedding then
carries the head's rounding, the same 8-bit blocks the head already computes with.

A ``Gather`` is rewritten only where its table packs (:func:`int8_blocks.pack`) to exactly the bytes and scales of
an 8-bit ``MatMulNBits`` of the graph, where its indices' rank is known (a graph input, or one ``Unsqueeze`` of
one), and where the table is at least :data:`MIN_TABLE_BYTES`: the rewrite adds a node or two (the merge, the
``Slice``), which a model with a table smaller than that (the bundled byte model's is 0.2 MB), whose step is
bound by per-node cost, would pay for more than the bytes save. Anything else is left alone. Unlike ``Gather``,
the operator answers an index out of range with a row of zeros rather than an error (it reads no memory out of
bounds): seqedge's sessions (Python's ``Session``, the web runner's) check token ids before every call.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from . import int8_blocks
from .onnx_library import require_onnx_library

MIN_TABLE_BYTES = 1 << 20


def _attrs(node: Any) -> dict[str, Any]:
    helper = require_onnx_library("onnx").helper
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _indices_rank(graph: Any, name: str) -> int | None:
    """The rank of the value ``name``: a graph input's declared rank, or one more for an ``Unsqueeze`` of one on a
    single axis; ``None`` where neither."""
    inputs = {i.name: len(i.type.tensor_type.shape.dim) for i in graph.input}
    if name in inputs:
        return inputs[name]
    producer = next((n for n in graph.node if name in n.output), None)
    if producer is not None and producer.op_type == "Unsqueeze" and producer.input[0] in inputs:
        axes = [a for a in graph.initializer if len(producer.input) > 1 and a.name == producer.input[1]]
        if len(axes) == 1 and int(np.prod(axes[0].dims or [1])) == 1:
            return inputs[producer.input[0]] + 1
    return None


def gather_from_packed_head(model: Any) -> Any:
    """Rewrite the ``onnx.ModelProto`` ``model`` in place (see the module docstring) and return it."""
    onnx = require_onnx_library("onnx")
    helper, numpy_helper = onnx.helper, require_onnx_library("onnx.numpy_helper")
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    # (N, K) -> the 8-bit MatMulNBits of that shape without zero points whose weights are initializers
    heads: dict[tuple[Any, Any], list[Any]] = {}
    for node in graph.node:
        attrs = _attrs(node) if node.op_type == "MatMulNBits" and node.domain == "com.microsoft" else {}
        if (attrs.get("bits") == 8 and attrs.get("block_size") == int8_blocks.BLOCK and len(node.input) == 3
                and node.input[1] in inits and node.input[2] in inits):
            heads.setdefault((attrs.get("N"), attrs.get("K")), []).append(node)
    replaced: set[str] = set()
    for gather in [n for n in graph.node if n.op_type == "Gather" and n.input[0] in inits]:
        table = inits[gather.input[0]]
        rank = _indices_rank(graph, gather.input[1])
        if (table.data_type != onnx.TensorProto.FLOAT or len(table.dims) != 2 or rank is None
                or _attrs(gather).get("axis", 0) != 0 or 4 * int(np.prod(table.dims)) < MIN_TABLE_BYTES):
            continue
        V, K = (int(d) for d in table.dims)
        candidates = heads.get((V, K), [])
        if not candidates:
            continue
        packed, scales = int8_blocks.pack(np.ascontiguousarray(numpy_helper.to_array(table).T))
        head = next((h for h in candidates if np.array_equal(numpy_helper.to_array(inits[h.input[1]]), packed)
                     and np.array_equal(numpy_helper.to_array(inits[h.input[2]]).reshape(scales.shape), scales)),
                    None)
        if head is None:
            continue
        kb = packed.shape[1]
        stem = gather.output[0]
        names = {"scales": f"{head.input[2]}_rows", "shape": f"{stem}_merge", "rows": f"{stem}_blocks",
                 "merged": f"{stem}_merged" if kb * int8_blocks.BLOCK != K else stem}
        if names["scales"] not in inits:
            tensor = numpy_helper.from_array(scales.reshape(V, kb, 1), names["scales"])
            graph.initializer.append(tensor)
            inits[tensor.name] = tensor
        graph.initializer.append(numpy_helper.from_array(np.array([0] * rank + [-1], np.int64), names["shape"]))
        new = [helper.make_node("GatherBlockQuantized", [head.input[1], gather.input[1], names["scales"]],
                                [names["rows"]], name=f"{gather.name or 'embed'}/packed", domain="com.microsoft",
                                bits=8, block_size=int8_blocks.BLOCK, gather_axis=0, quantize_axis=2),
               helper.make_node("Reshape", [names["rows"], names["shape"]], [names["merged"]],
                                name=f"{gather.name or 'embed'}/merge")]
        if names["merged"] != stem:
            bounds = [(f"{stem}_starts", [0]), (f"{stem}_ends", [K]), (f"{stem}_axes", [-1])]
            graph.initializer.extend(numpy_helper.from_array(np.array(v, np.int64), n) for n, v in bounds)
            new.append(helper.make_node("Slice", [names["merged"], *(n for n, _ in bounds)], [stem],
                                        name=f"{gather.name or 'embed'}/columns"))
        at = list(graph.node).index(gather)
        graph.node.remove(gather)
        for offset, node in enumerate(new):
            graph.node.insert(at + offset, node)
        replaced.add(table.name)
    if replaced:
        read = {name for node in graph.node for name in node.input}
        for tensor in [t for t in graph.initializer if t.name in replaced and t.name not in read]:
            graph.initializer.remove(tensor)
    return model
