"""``export.packed_table``: a quantized graph's embedding reads the rows of its packed tied head. On small graphs
(tables in whole blocks and padded to a block, 8-bit heads and 4-bit heads with their searched scales and zero
points) the rewrite drops the float32 table, gathers exactly the head's dequantized rows and leaves the head's
logits bit for bit as they were; a table under the size floor, or one the head does not pack, is left alone. An
int8 or int4-all export of a tied model with a large enough table runs the embedding from the head's blocks and
keeps its parity budget."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from _artifacts import tiny_model
from onnx import TensorProto, helper, numpy_helper

from seqedge.export import int4_blockwise, int8_blocks
from seqedge.export.packed_table import MIN_TABLE_BYTES, gather_from_packed_head


def _graph(table: np.ndarray, packed: np.ndarray, scales: np.ndarray, zero_points: np.ndarray | None = None,
           group: int = int8_blocks.BLOCK) -> onnx.ModelProto:
    """tokens [B] -> Unsqueeze -> Gather(table) -> embedded [B, 1, K]; x [B, 1, K] -> MatMulNBits -> logits: 8 bits
    without ``zero_points``, 4 bits in blocks of ``group`` with them."""
    V, K = table.shape
    bits = 8 if zero_points is None else 4
    head_inputs = ["x", "B", "scales"] + ([] if zero_points is None else ["zero_points"])
    nodes = [helper.make_node("Unsqueeze", ["tokens", "axis1"], ["ids"]),
             helper.make_node("Gather", ["table", "ids"], ["embedded"]),
             helper.make_node("MatMulNBits", head_inputs, ["logits"], domain="com.microsoft", bits=bits,
                              block_size=group, K=K, N=V, accuracy_level=4)]
    weights = [numpy_helper.from_array(table, "table"), numpy_helper.from_array(packed, "B"),
               numpy_helper.from_array(scales, "scales"), numpy_helper.from_array(np.array([1], np.int64), "axis1")]
    if zero_points is not None:
        weights.append(numpy_helper.from_array(zero_points, "zero_points"))
    graph = helper.make_graph(
        nodes, "packed",
        [helper.make_tensor_value_info("tokens", TensorProto.INT64, ["B"]),
         helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", 1, K])],
        [helper.make_tensor_value_info("embedded", TensorProto.FLOAT, ["B", 1, K]),
         helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["B", 1, V])], weights)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid("com.microsoft", 1)])


def _int4_head(table: np.ndarray, group: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The table's transpose packed as the int4 export packs a head: searched scales and zero points."""
    weight = np.ascontiguousarray(table.T)
    return int4_blockwise.pack(weight, *int4_blockwise.search(weight, group), group)


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


@pytest.mark.parametrize("K, group", [(256, 32), (200, 32), (96, 64)])     # whole, padded, an odd block count
def test_the_embedding_gathers_the_int4_heads_rows(K, group):
    V = MIN_TABLE_BYTES // (4 * K) + 5
    rng = np.random.default_rng(K + group)
    table = rng.standard_normal((V, K)).astype(np.float32)
    table[3, :7] *= 40                                         # outliers the search clips
    packed, scales, zero_points = _int4_head(table, group)
    model = _graph(table, packed, scales, zero_points, group)
    feeds = {"tokens": np.array([0, 3, V - 1, 3]), "x": rng.standard_normal((4, 1, K)).astype(np.float32)}
    before = _run(model, feeds)
    rewritten = gather_from_packed_head(model)
    onnx.checker.check_model(rewritten, full_check=True)
    assert "table" not in {t.name for t in rewritten.graph.initializer}
    gathers = [n for n in rewritten.graph.node if n.op_type == "GatherBlockQuantized"]
    assert len(gathers) == 1 and gathers[0].input[0] == "B" and len(gathers[0].input) == 4
    embedded, logits = _run(rewritten, feeds)
    np.testing.assert_array_equal(logits, before[1])
    rows = int4_blockwise.dequantize(packed, scales, zero_points, K).T[feeds["tokens"]]
    np.testing.assert_array_equal(embedded[:, 0], rows)


def test_a_small_or_foreign_table_is_left_alone():
    rng = np.random.default_rng(1)
    small = rng.standard_normal((64, 128)).astype(np.float32)
    model = _graph(small, *int8_blocks.pack(np.ascontiguousarray(small.T)))
    assert gather_from_packed_head(model).SerializeToString() == _graph(
        small, *int8_blocks.pack(np.ascontiguousarray(small.T))).SerializeToString()
    V = MIN_TABLE_BYTES // (4 * 128) + 1
    table = rng.standard_normal((V, 128)).astype(np.float32)
    other = table + np.float32(0.5)                            # the head packs another matrix
    for model in (_graph(table, *int8_blocks.pack(np.ascontiguousarray(other.T))),
                  _graph(table, *_int4_head(other, 32), 32)):
        before = model.SerializeToString()
        assert gather_from_packed_head(model).SerializeToString() == before
    # 4 bits: the head's own scales and zero points code this table to other bytes than the head's (one code off)
    packed, scales, zero_points = _int4_head(table, 32)
    nudged = table.copy()
    nudged[V // 2, 5] += 2 * scales.reshape(V, -1)[V // 2, 0]
    model = _graph(nudged, packed, scales, zero_points, 32)
    before = model.SerializeToString()
    assert gather_from_packed_head(model).SerializeToString() == before


@pytest.mark.parametrize("recipe, tag", [("int8-dynamic", "int8"), ("int4-all", "int4")])
def test_a_quantized_export_embeds_from_the_heads_blocks(tmp_path, recipe, tag):
    from seqedge.artifact import read_manifest
    from seqedge.evaluate.export_check import export_verified
    from seqedge.runtimes import load

    vocab = MIN_TABLE_BYTES // (4 * 32) + 64                 # hidden 32: a table just over the floor
    model = tiny_model("gated", vocab_size=vocab)
    assert model.head is None and model.config.hidden_size == 32
    export_verified(model, tmp_path / "art", ["onnx-ort"], [recipe], progress=False)
    manifest = read_manifest(tmp_path / "art")
    variant = manifest.variant("onnx-ort", tag)
    for entry in ("step", "chunk"):
        graph = onnx.load(str(manifest.path(variant, entry)))
        assert "GatherBlockQuantized" in {n.op_type for n in graph.graph.node}, entry
        assert not any(list(t.dims) == [vocab, 32] and t.data_type == TensorProto.FLOAT
                       for t in graph.graph.initializer), entry
    parity = json.loads((tmp_path / "art" / "manifest.json").read_text())["parity"][f"onnx-ort/{tag}"]
    assert parity["passed"] and parity["top1"] >= 0.9, parity
    session = load(tmp_path / "art", "onnxruntime-fused", quantization=tag)
    tokens = np.random.default_rng(0).integers(0, vocab, (2, 20))
    logits, _ = session.prefill(tokens, session.init_state(2))
    assert np.isfinite(logits).all()
