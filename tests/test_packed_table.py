"""``export.packed_table``: an int8 graph's embedding reads the rows of its packed tied head. On small graphs (a
table two blocks wide and one padded to its block) the rewrite drops the float32 table, gathers exactly the
head's dequantized rows and leaves the head's logits bit for bit as they were; a table under the size floor, or
one the head does not pack, is left alone. An int8 export of a tied model with a large enough table runs the
embedding from the head's blocks and keeps the int8 parity budget."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from _artifacts import tiny_model
from onnx import TensorProto, helper, numpy_helper

from seqedge.export import int8_blocks
from seqedge.export.packed_table import MIN_TABLE_BYTES, gather_from_packed_head


def _graph(table: np.ndarray, packed: np.ndarray, scales: np.ndarray) -> onnx.ModelProto:
    """tokens [B] -> Unsqueeze -> Gather(table) -> embedded [B, 1, K]; x [B, 1, K] -> MatMulNBits -> logits."""
    V, K = table.shape
    nodes = [helper.make_node("Unsqueeze", ["tokens", "axis1"], ["ids"]),
             helper.make_node("Gather", ["table", "ids"], ["embedded"]),
             helper.make_node("MatMulNBits", ["x", "B", "scales"], ["logits"], domain="com.microsoft", bits=8,
                              block_size=int8_blocks.BLOCK, K=K, N=V, accuracy_level=4)]
    graph = helper.make_graph(
        nodes, "packed",
        [helper.make_tensor_value_info("tokens", TensorProto.INT64, ["B"]),
         helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", 1, K])],
        [helper.make_tensor_value_info("embedded", TensorProto.FLOAT, ["B", 1, K]),
         helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["B", 1, V])],
        [numpy_helper.from_array(table, "table"), numpy_helper.from_array(packed, "B"),
         numpy_helper.from_array(scales, "scales"), numpy_helper.from_array(np.array([1], np.int64), "axis1")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid("com.microsoft", 1)])


def _run(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)


@pytest.mark.parametrize("K", [256, 200])                 # whole blocks; the last block padded
def test_the_embedding_gathers_the_heads_rows(K):
    V = MIN_TABLE_BYTES // (4 * K) + 7
    rng = np.random.default_rng(K)
    table = rng.standard_normal((V, K)).astype(np.float32)
    packed, scales = int8_blocks.pack(np.ascontiguousarray(table.T))
    model = _graph(table, packed, scales)
    feeds = {"tokens": np.array([0, 5, V - 1, 5]), "x": rng.standard_normal((4, 1, K)).astype(np.float32)}
    before = _run(model, feeds)
    rewritten = gather_from_packed_head(model)
    onnx.checker.check_model(rewritten, full_check=True)
    assert "table" not in {t.name for t in rewritten.graph.initializer}
    assert "GatherBlockQuantized" in {n.op_type for n in rewritten.graph.node}
    embedded, logits = _run(rewritten, feeds)
    np.testing.assert_array_equal(logits, before[1])
    rows = int8_blocks.rounded(np.ascontiguousarray(table.T)).T[feeds["tokens"]]
    np.testing.assert_array_equal(embedded[:, 0], rows)
    assert np.abs(embedded - before[0]).max() <= np.abs(scales).max() / 2 + 1e-6


def test_a_small_or_foreign_table_is_left_alone():
    rng = np.random.default_rng(1)
    small = rng.standard_normal((64, 128)).astype(np.float32)
    model = _graph(small, *int8_blocks.pack(np.ascontiguousarray(small.T)))
    assert gather_from_packed_head(model).SerializeToString() == _graph(
        small, *int8_blocks.pack(np.ascontiguousarray(small.T))).SerializeToString()
    V = MIN_TABLE_BYTES // (4 * 128) + 1
    table = rng.standard_normal((V, 128)).astype(np.float32)
    other = table + np.float32(0.5)                            # the head packs another matrix
    model = _graph(table, *int8_blocks.pack(np.ascontiguousarray(other.T)))
    before = model.SerializeToString()
    assert gather_from_packed_head(model).SerializeToString() == before


def test_an_int8_export_embeds_from_the_heads_blocks(tmp_path):
    from seqedge.artifact import read_manifest
    from seqedge.evaluate.export_check import export_verified
    from seqedge.runtimes import load

    vocab = MIN_TABLE_BYTES // (4 * 32) + 64                 # hidden 32: a table just over the floor
    model = tiny_model("gated", vocab_size=vocab)
    assert model.head is None and model.config.hidden_size == 32
    export_verified(model, tmp_path / "art", ["onnx-ort"], ["int8-dynamic"], progress=False)
    manifest = read_manifest(tmp_path / "art")
    variant = manifest.variant("onnx-ort", "int8")
    for entry in ("step", "chunk"):
        graph = onnx.load(str(manifest.path(variant, entry)))
        assert "GatherBlockQuantized" in {n.op_type for n in graph.graph.node}, entry
        assert not any(list(t.dims) == [vocab, 32] and t.data_type == TensorProto.FLOAT
                       for t in graph.graph.initializer), entry
    parity = json.loads((tmp_path / "art" / "manifest.json").read_text())["parity"]["onnx-ort/int8"]
    assert parity["passed"] and parity["top1"] >= 0.9, parity
    session = load(tmp_path / "art", "onnxruntime-fused", quantization="int8")
    tokens = np.random.default_rng(0).integers(0, vocab, (2, 20))
    logits, _ = session.prefill(tokens, session.init_state(2))
    assert np.isfinite(logits).all()
