"""A tied vocabulary head reads the embedding table itself, not a transposed copy of it.

Tracing ``logits = x @ embed.weight.T`` folds the transpose into a second initializer, ``[K, V]`` beside the
embedding's ``[V, K]``, so a float graph stores its largest matrix twice (Mamba2-130M in float32: 154 MB of 640).
The rewrite makes the head read the table the ``Gather`` reads:

- the step's head, ``MatMul(x [B, 1, K], W)`` then ``Gather`` of its one position on axis 1 (float16 graphs
  ``Cast`` in between), becomes the ``Gather`` on ``x`` then ``Gemm(x, table, transB=1)`` and the same casts: as
  many nodes, and ``Gemm`` takes the table as it is;
- any other head (the chunk's ``MatMul(x [B, R, K], W)``) reads ``Transpose(table)``, which runtimes fold at load
  (ONNX Runtime, TensorRT) into the same packed matrix they made of ``W``.

A head matches only where ``W`` equals the table's transpose exactly, so an untied head, or a quantized one
(packed apart from the table on purpose), is left alone.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .onnx_library import require_onnx_library


def _tables(graph: Any, inits: dict[str, Any]) -> dict[tuple[int, ...], list[str]]:
    """2-D initializers that a ``Gather`` reads as its data, by shape."""
    found: dict[tuple[int, ...], list[str]] = {}
    for node in graph.node:
        if node.op_type == "Gather" and node.input[0] in inits and len(inits[node.input[0]].dims) == 2:
            names = found.setdefault(tuple(int(d) for d in inits[node.input[0]].dims), [])
            if node.input[0] not in names:
                names.append(node.input[0])
    return found


def _one_position(node: Any, inits: dict[str, Any]) -> bool:
    """Whether ``node`` is a ``Gather`` of one position (a scalar index) on axis 1."""
    if node.op_type != "Gather" or node.input[1] not in inits or len(inits[node.input[1]].dims) != 0:
        return False
    axis = next((a.i for a in node.attribute if a.name == "axis"), 0)
    return axis == 1


def _casts_then_position(graph: Any, head: Any, inits: dict[str, Any], outputs: set[str]) -> tuple[list[Any], Any]:
    """The ``Cast`` nodes (each the only reader of the one before) from ``head`` to a ``Gather`` of one position,
    and that ``Gather``; ``([], None)`` where the head's output goes anywhere else."""
    casts: list[Any] = []
    value = head.output[0]
    while value not in outputs:
        readers = [n for n in graph.node if value in n.input]
        if len(readers) != 1:
            break
        if _one_position(readers[0], inits):
            return casts, readers[0]
        if readers[0].op_type != "Cast":
            break
        casts.append(readers[0])
        value = readers[0].output[0]
    return [], None


def tie_head_to_table(model: Any) -> Any:
    """Rewrite the ``onnx.ModelProto`` ``model`` in place (see the module docstring) and return it."""
    onnx = require_onnx_library("onnx")
    helper, numpy_helper = onnx.helper, require_onnx_library("onnx.numpy_helper")
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    tables = _tables(graph, inits)
    outputs = {o.name for o in graph.output}
    replaced: set[str] = set()
    for head in list(graph.node):
        if head.op_type != "MatMul" or head.input[1] not in inits or len(inits[head.input[1]].dims) != 2:
            continue
        # only a weight of a table's transposed shape is read into memory (a real model's are hundreds of MB)
        shape = tuple(int(d) for d in inits[head.input[1]].dims)[::-1]
        if shape not in tables:
            continue
        weight = numpy_helper.to_array(inits[head.input[1]])
        table = next((t for t in tables[shape] if inits[t].data_type == inits[head.input[1]].data_type
                      and np.array_equal(numpy_helper.to_array(inits[t]).T, weight)), None)
        if table is None:
            continue
        replaced.add(head.input[1])
        casts, pick = _casts_then_position(graph, head, inits, outputs)
        if pick is not None:
            # the one position first, then the head on it: Gather(x) -> Gemm -> the same Casts -> the same output
            at = list(graph.node).index(head)
            position = f"{head.input[0]}_position"
            chain = [f"{node.output[0]}_tied" for node in (head, *casts)][:len(casts)] + [pick.output[0]]
            new = [helper.make_node("Gather", [head.input[0], pick.input[1]], [position],
                                    name=f"{head.name or 'head'}/position", axis=1),
                   helper.make_node("Gemm", [position, table], [chain[0]], name=f"{head.name or 'head'}/tied",
                                    transB=1)]
            new += [helper.make_node("Cast", [chain[i]], [chain[i + 1]], name=f"{c.name or 'cast'}/tied",
                                     to=next(x.i for x in c.attribute if x.name == "to"))
                    for i, c in enumerate(casts)]
            for node in (head, *casts, pick):
                graph.node.remove(node)
            for offset, node in enumerate(new):
                graph.node.insert(at + offset, node)
        else:
            transposed = f"{table}_transposed"
            if not any(transposed in n.output for n in graph.node):
                graph.node.insert(list(graph.node).index(head), helper.make_node(
                    "Transpose", [table], [transposed], name=f"{table}/transposed", perm=[1, 0]))
            head.input[1] = transposed
    if replaced:
        read = {name for node in graph.node for name in node.input}
        for tensor in [t for t in graph.initializer if t.name in replaced and t.name not in read]:
            graph.initializer.remove(tensor)
        produced = {out for node in graph.node for out in node.output} | {i.name for i in graph.input}
        kept = [v for v in graph.value_info if v.name in produced]
        del graph.value_info[:]
        graph.value_info.extend(kept)
    return model
