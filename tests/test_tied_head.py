"""``export.tied_head``: a tied vocabulary head reads the embedding table, not a transposed copy of it. On small
graphs of both head shapes (the step's one position, float32 and float16 with its Cast; the chunk's rows) the
rewrite keeps ONNX Runtime's outputs, drops the copy and adds no node to the step; an untied head is left alone.
On an export of a tied model, no graph holds the table twice."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from _artifacts import tiny_model
from onnx import TensorProto, helper, numpy_helper

from seqedge.export.tied_head import tie_head_to_table

V, K = 37, 12


def _graph(table: np.ndarray, weight: np.ndarray, *, rows: bool, half: bool = False) -> onnx.ModelProto:
    """tokens [B] -> embedding rows (the Gather that makes ``table`` a table); x [B, R or 1, K] -> head -> logits:
    ``[B, R, V]`` for ``rows``, else the one position ``[B, V]`` (``half``: the head in float16, logits cast)."""
    dtype = TensorProto.FLOAT16 if half else TensorProto.FLOAT
    nodes = [helper.make_node("Gather", ["table", "tokens"], ["embedded"]),
             helper.make_node("MatMul", ["x", "weight"], ["scores"])]
    last = "scores"
    if half:
        nodes.append(helper.make_node("Cast", ["scores"], ["scores32"], to=TensorProto.FLOAT))
        last = "scores32"
    if rows:
        nodes.append(helper.make_node("Identity", [last], ["logits"]))
    else:
        nodes.append(helper.make_node("Gather", [last, "zero"], ["logits"], axis=1))
    graph = helper.make_graph(
        nodes, "head",
        [helper.make_tensor_value_info("tokens", TensorProto.INT64, ["B"]),
         helper.make_tensor_value_info("x", dtype, ["B", "R" if rows else 1, K])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["B", "R", V] if rows else ["B", V]),
         helper.make_tensor_value_info("embedded", dtype, ["B", K])],
        [numpy_helper.from_array(table, "table"), numpy_helper.from_array(weight, "weight"),
         numpy_helper.from_array(np.array(0, np.int64), "zero")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def _run(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


@pytest.mark.parametrize("rows, half", [(False, False), (False, True), (True, False), (True, True)])
def test_the_head_reads_the_table_with_the_same_outputs(rows, half):
    rng = np.random.default_rng(3)
    dtype = np.float16 if half else np.float32
    table = rng.standard_normal((V, K)).astype(dtype)
    model = _graph(table, np.ascontiguousarray(table.T), rows=rows, half=half)
    onnx.checker.check_model(model, full_check=True)
    feeds = {"tokens": rng.integers(0, V, 3), "x": rng.standard_normal((3, 5 if rows else 1, K)).astype(dtype)}
    want, nodes = _run(model, feeds), len(model.graph.node)
    tied = tie_head_to_table(model)
    onnx.checker.check_model(tied, full_check=True)
    assert [t.name for t in tied.graph.initializer] == ["table", "zero"]
    ops = [n.op_type for n in tied.graph.node]
    if rows:
        assert "Transpose" in ops and len(ops) == nodes + 1
    else:
        assert "Gemm" in ops and "MatMul" not in ops and len(ops) == nodes
    for got, ref in zip(_run(tied, feeds), want):
        assert got.shape == ref.shape
        np.testing.assert_allclose(got, ref, rtol=1e-2 if half else 1e-5, atol=1e-2 if half else 1e-5)


def test_an_untied_head_is_left_alone():
    rng = np.random.default_rng(4)
    table = rng.standard_normal((V, K)).astype(np.float32)
    weight = np.ascontiguousarray(table.T)
    weight[3, 5] += 1e-3                     # one element off: not the table
    model = _graph(table, weight, rows=False)
    before = model.SerializeToString()
    assert tie_head_to_table(model).SerializeToString() == before


def test_an_export_of_a_tied_model_stores_the_table_once(tmp_path):
    from seqedge.artifact import read_manifest
    from seqedge.export.api import export_model

    model = tiny_model("gated")
    assert model.head is None, "the test needs a tied model"
    export_model(model, tmp_path / "art", ["onnx", "onnx-ort"], ["none", "fp16"], progress=False)
    manifest = read_manifest(tmp_path / "art")
    table = model.embed.weight.detach().numpy()
    for target in ("onnx", "onnx-ort"):
        for precision, dtype in (("fp32", np.float32), ("fp16", np.float16)):
            variant = manifest.variant(target, precision)
            for entry in ("step", "chunk"):
                graph = onnx.load(str(manifest.path(variant, entry)))
                matrices = [numpy_helper.to_array(t) for t in graph.graph.initializer if len(t.dims) == 2]
                assert sum(m.shape == table.shape for m in matrices) == 1, (target, precision, entry)
                assert not any(m.shape == table.T.shape and np.allclose(m, table.T.astype(dtype)) for m in matrices)
