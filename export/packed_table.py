"""A quantized graph's embedding rows read from its packed tied head, not from a float32 table kept beside it.

The int8 and int4 exports pack a tied head into ``MatMulNBits`` blocks (:mod:`int8_blocks`,
:mod:`int4_blockwise`) but the ``Gather`` that embeds the tokens still reads the float32 table, so the graph holds
the table twice, once at four or eight times the size of the other (Mamba2-130M: 154 MB of float32 beside its
39 MB of 8-bit or 22 MB of 4-bit head). ONNX Runtime's ``com.microsoft::GatherBlockQuantized`` gathers rows of
the same blocks and dequantizes them: the rewrite makes the embedding read the head's ``B [V, kb, blob]`` as it
is (two codes a byte at 4 bits, low nibble first, as both operators store them), with its scales, and at 4 bits
its zero points, again as ``[V, kb, 1]`` (small copies), and merges each row's blocks back to ``kb * block``
columns (a ``Slice`` drops a last block's padding). The embedding then carries the head's rounding, the same
blocks the head already computes with.

A ``Gather`` is rewritten only where its table is what an 8-bit or 4-bit ``MatMulNBits`` of the graph packs, where
its indices' rank is known (a graph input, or one ``Unsqueeze`` of one), and where the table is at least
:data:`MIN_TABLE_BYTES`. What "packs" means: at 8 bits the table packs (:func:`int8_blocks.pack`) to exactly the
head's bytes and scales; at 4 bits, where the int4 search chose each block's scale and zero point, the table
coded with the head's own scales and zero points (:func:`int4_blockwise.pack`) gives exactly the head's bytes,
so the head is that table's quantization. The size floor: the rewrite adds a node or two (the merge, the
``Slice``), which a model with a table smaller than that (the bundled byte model's is 0.2 MB), whose step is
bound by per-node cost, would pay for more than the bytes save. Anything else is left alone. Unlike ``Gather``,
the operator answers an index out of range with a row of zeros rather than an error (it reads no memory out of
bounds): seqedge's sessions (Python's ``Session``, the web runner's) check token ids before every call.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from . import int4_blockwise, int8_blocks
from .onnx_library import require_onnx_library

MIN_TABLE_BYTES = 1 << 20


@dataclass(frozen=True)
class _Blocks:
    """What ``GatherBlockQuantized`` reads of a head that packs the table: the head's ``B`` (an initializer's
    name), its scales and (4 bits) zero points as ``[V, kb, 1]`` arrays, its bits and block size."""

    data: str
    scales: np.ndarray
    zero_points: np.ndarray | None
    bits: int
    block: int


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


def _heads(graph: Any, inits: dict[str, Any]) -> dict[tuple[Any, Any], list[Any]]:
    """``(N, K)`` -> the ``MatMulNBits`` of that shape whose weights are initializers, in the layouts the exports
    write: 8 bits in blocks of :data:`int8_blocks.BLOCK` without zero points, or 4 bits with zero points."""
    heads: dict[tuple[Any, Any], list[Any]] = {}
    for node in graph.node:
        attrs = _attrs(node) if node.op_type == "MatMulNBits" and node.domain == "com.microsoft" else {}
        eight = attrs.get("bits") == 8 and attrs.get("block_size") == int8_blocks.BLOCK and len(node.input) == 3
        four = attrs.get("bits") == 4 and len(node.input) == 4
        if (eight or four) and all(name in inits for name in node.input[1:]):
            heads.setdefault((attrs.get("N"), attrs.get("K")), []).append(node)
    return heads


def _packs(head: Any, weight: np.ndarray, inits: dict[str, Any]) -> _Blocks | None:
    """The blocks of ``head`` if it packs ``weight [K, V]`` (the table's transpose; see the module docstring),
    else ``None``."""
    to_array = require_onnx_library("onnx.numpy_helper").to_array
    attrs = _attrs(head)
    B, scales = to_array(inits[head.input[1]]), to_array(inits[head.input[2]])
    if B.ndim != 3 or scales.size != B.shape[0] * B.shape[1]:
        return None
    V, kb = B.shape[:2]
    scales = scales.reshape(V, kb)
    if attrs["bits"] == 8:
        packed, own = int8_blocks.pack(weight)
        if np.array_equal(packed, B) and np.array_equal(own, scales):
            return _Blocks(head.input[1], scales.reshape(V, kb, 1), None, 8, int8_blocks.BLOCK)
        return None
    group = int(attrs["block_size"])
    zero_points = to_array(inits[head.input[3]])
    if zero_points.dtype != np.uint8 or zero_points.size != V * -(-kb // 2) or B.shape[2] * 2 != group:
        return None
    zeros = np.stack([zero_points & 15, zero_points >> 4], -1).reshape(V, -1)[:, :kb]
    packed, _, own_zero_points = int4_blockwise.pack(weight, scales, zeros, group)
    if np.array_equal(packed, B) and np.array_equal(own_zero_points.reshape(-1), zero_points.reshape(-1)):
        return _Blocks(head.input[1], scales.reshape(V, kb, 1), zeros.reshape(V, kb, 1).astype(np.uint8), 4, group)
    return None


def gather_from_packed_head(model: Any, min_table_bytes: int = MIN_TABLE_BYTES) -> Any:
    """Rewrite the ``onnx.ModelProto`` ``model`` in place (see the module docstring) and return it; tables under
    ``min_table_bytes`` are left alone."""
    onnx = require_onnx_library("onnx")
    helper, numpy_helper = onnx.helper, require_onnx_library("onnx.numpy_helper")
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    heads = _heads(graph, inits)
    replaced: set[str] = set()
    for gather in [n for n in graph.node if n.op_type == "Gather" and n.input[0] in inits]:
        table = inits[gather.input[0]]
        rank = _indices_rank(graph, gather.input[1])
        if (table.data_type != onnx.TensorProto.FLOAT or len(table.dims) != 2 or rank is None
                or _attrs(gather).get("axis", 0) != 0 or 4 * int(np.prod(table.dims)) < min_table_bytes):
            continue
        V, K = (int(d) for d in table.dims)
        candidates = heads.get((V, K), [])
        if not candidates:
            continue
        weight = np.ascontiguousarray(numpy_helper.to_array(table).T)
        found = next((b for b in (_packs(h, weight, inits) for h in candidates) if b is not None), None)
        if found is None:
            continue
        kb = found.scales.shape[1]
        stem = gather.output[0]
        names = {"scales": f"{found.data}_row_scales", "zero_points": f"{found.data}_row_zero_points",
                 "shape": f"{stem}_merge", "rows": f"{stem}_blocks",
                 "merged": f"{stem}_merged" if kb * found.block != K else stem}
        for key, array in (("scales", found.scales), ("zero_points", found.zero_points)):
            if array is not None and names[key] not in inits:
                tensor = numpy_helper.from_array(array, names[key])
                graph.initializer.append(tensor)
                inits[tensor.name] = tensor
        graph.initializer.append(numpy_helper.from_array(np.array([0] * rank + [-1], np.int64), names["shape"]))
        inputs = [found.data, gather.input[1], names["scales"]]
        inputs += [names["zero_points"]] if found.zero_points is not None else []
        new = [helper.make_node("GatherBlockQuantized", inputs, [names["rows"]],
                                name=f"{gather.name or 'embed'}/packed", domain="com.microsoft", bits=found.bits,
                                block_size=found.block, gather_axis=0, quantize_axis=2),
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
