"""The ``chunk`` graph's head on a choice of rows: an optional input ``logits_from`` (int64 ``[1]``).

A prompt before generation needs the last position's logits only, but the chunk graph runs the vocabulary head
on every position: for a 130M model with a 50K vocabulary the head is about a quarter of a chunk's arithmetic.
The rewrite slices the head's input to rows ``[logits_from:]`` of the chunk (a ``Slice`` on axis 1 in front of
the head's MatMul), so ``logits`` is ``[B, C - logits_from, V]``, or ``[B, 1, V]`` for ``logits_from = -1``.

``logits_from`` is an *overridable initializer*: a graph input that also has an initializer, ``[0]`` (every row).
A consumer that does not feed it (the native and browser runners, TensorRT's parser, which reads it as a weight)
gets the chunk graph as before; ONNX Runtime lists it under ``get_overridable_initializers``, not ``get_inputs``,
and never folds it into a constant. Nothing before the head changes, so the new state is the same either way.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from seqedge.artifact import CHUNK_LOGITS_FROM as LOGITS_FROM

from .onnx_library import require_onnx_library

ROWS_DIM = "logit_rows"             # the logits' axis 1 once the head reads a choice of rows
_HEAD_OPS = ("MatMul", "MatMulNBits")


def head_path(graph: Any) -> list[Any]:
    """The nodes from the vocabulary head to ``logits``: the MatMul (or packed ``MatMulNBits``) first, then any
    ``Cast`` after it (float16 graphs cast the logits to float32). RuntimeError when there is no such head."""
    producers = {out: node for node in graph.node for out in node.output}
    path = [producers.get("logits")]
    while path[0] is not None and path[0].op_type == "Cast":
        path.insert(0, producers.get(path[0].input[0]))
    if path[0] is None or path[0].op_type not in _HEAD_OPS:
        found = "nothing" if path[0] is None else path[0].op_type
        raise RuntimeError(f"the chunk graph's logits do not come from a head MatMul ({found} writes them): the "
                           "head's rows cannot be chosen")
    return path


def choose_head_rows(model: Any) -> Any:
    """Rewrite the ``onnx.ModelProto`` of a chunk graph in place (see the module docstring) and return it."""
    onnx = require_onnx_library("onnx")
    helper, numpy_helper = onnx.helper, require_onnx_library("onnx.numpy_helper")
    graph = model.graph
    path = head_path(graph)
    head = path[0]
    rows = f"{head.input[0]}_rows"
    ends, axes = f"{LOGITS_FROM}_ends", f"{LOGITS_FROM}_axes"
    graph.initializer.extend([numpy_helper.from_array(np.zeros(1, np.int64), LOGITS_FROM),
                              numpy_helper.from_array(np.array([np.iinfo(np.int64).max], np.int64), ends),
                              numpy_helper.from_array(np.ones(1, np.int64), axes)])
    graph.input.append(helper.make_tensor_value_info(LOGITS_FROM, onnx.TensorProto.INT64, [1]))
    graph.node.insert(list(graph.node).index(head),
                      helper.make_node("Slice", [head.input[0], LOGITS_FROM, ends, axes], [rows], name="/head/rows"))
    head.input[0] = rows
    # the shapes inferred for the head's outputs had C rows
    stale = {out for node in path for out in node.output}
    kept = [v for v in graph.value_info if v.name not in stale]
    del graph.value_info[:]
    graph.value_info.extend(kept)
    logits = next(o for o in graph.output if o.name == "logits")
    logits.type.tensor_type.shape.dim[1].dim_param = ROWS_DIM
    return model
