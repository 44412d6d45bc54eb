"""Graph clean-up passes: each keeps the values of small seeded graphs, and the exported step graphs stay lean."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from _artifacts import tiny_model
from onnx import TensorProto, helper, numpy_helper
from seqedge.export import graph_passes

from seqedge.artifact import read_manifest

# nodes of the tiny test model's fp32 graphs after clean-up (2 layers; as exported, before ONNX Runtime's own
# optimiser): a graph that grows past these fails; lower them when a pass removes more
NODE_BUDGET = {("onnx", "step"): 109, ("onnx", "chunk"): 223, ("onnx-ort", "step"): 79, ("onnx-ort", "chunk"): 105}
# the onnx-ort chunk's conv is 16 plain nodes a layer, not CausalConvWithState and two transposes
# (export/ort_fused.py: faster over a chunk's rows, where a node's fixed cost is small beside its work)
# a chunk's budget includes the Slice in front of the head that picks its rows (export/head_rows.py) and the
# Transpose of the embedding table its tied head reads (export/tied_head.py; runtimes fold it at load)
# as traced (before clean-up): step 282, chunk 464 (onnx); step 282, chunk 228 (onnx-ort)


def _run(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL   # the graph as written
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


def _rms_graph(rng: np.random.Generator, dim: int = 12) -> onnx.ModelProto:
    """x -> Cast -> TorchScript's RMSNorm spelling (Pow, ReduceMean, Add, Sqrt, 1/x, Mul) -> Cast -> Mul(weight)."""
    inits = [numpy_helper.from_array(np.array(2.0, np.float32), "two"),
             numpy_helper.from_array(np.array([-1], np.int64), "axes"),
             numpy_helper.from_array(np.array(1e-6, np.float32), "eps"),
             numpy_helper.from_array(np.array(1.0, np.float32), "one"),
             numpy_helper.from_array(rng.standard_normal(dim).astype(np.float32), "weight")]
    nodes = [helper.make_node("Cast", ["x"], ["xf"], to=TensorProto.FLOAT),
             helper.make_node("Pow", ["xf", "two"], ["sq"]),
             helper.make_node("ReduceMean", ["sq", "axes"], ["ms"], keepdims=1),
             helper.make_node("Add", ["ms", "eps"], ["mse"]),
             helper.make_node("Sqrt", ["mse"], ["rms"]),
             helper.make_node("Div", ["one", "rms"], ["inv"]),
             helper.make_node("Mul", ["xf", "inv"], ["n"]),
             helper.make_node("Cast", ["n"], ["nc"], to=TensorProto.FLOAT),
             helper.make_node("Mul", ["nc", "weight"], ["y"])]
    graph = helper.make_graph(nodes, "rms", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", dim])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["b", dim])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def _projection_graph(rng: np.random.Generator, widths=(7, 3, 5), dim: int = 6) -> onnx.ModelProto:
    """Three MatMuls reading x (one with a bias Add), one reading another input, one sharing a weight."""
    inits = [numpy_helper.from_array(rng.standard_normal((dim, w)).astype(np.float32), f"w{i}")
             for i, w in enumerate(widths)]
    inits.append(numpy_helper.from_array(rng.standard_normal(widths[1]).astype(np.float32), "bias"))
    inits.append(numpy_helper.from_array(rng.standard_normal((dim, 4)).astype(np.float32), "shared"))
    nodes = [helper.make_node("MatMul", ["x", f"w{i}"], [f"y{i}"], name=f"mm{i}") for i in range(len(widths))]
    nodes += [helper.make_node("Add", ["y1", "bias"], ["y1b"]),
              helper.make_node("MatMul", ["z", "shared"], ["s0"], name="other_input"),
              helper.make_node("MatMul", ["x", "shared"], ["s1"], name="shared_weight")]
    outputs = ["y0", "y1b", "y2", "s0", "s1"]
    graph = helper.make_graph(
        nodes, "proj", [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["b", 2, dim]) for n in ("x", "z")],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["b", 2, None]) for n in outputs], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


@pytest.mark.parametrize("flavour, op", [("portable", "RMSNormalization"), ("ort", "SimplifiedLayerNormalization")])
def test_rms_norm_becomes_one_op_with_the_same_values(flavour, op):
    rng = np.random.default_rng(0)
    model = _rms_graph(rng)
    x = (rng.standard_normal((3, 12)) * 4).astype(np.float32)
    want = _run(model, {"x": x})[0]
    fused = graph_passes.on_proto(_rms_graph(np.random.default_rng(0)), graph_passes.library_optimize,
                                  lambda m: graph_passes.fuse_rms_norm(m, flavour))
    assert [n.op_type for n in fused.graph.node] == [op]
    np.testing.assert_allclose(_run(fused, {"x": x})[0], want, rtol=1e-5, atol=1e-6)


def test_library_optimize_drops_same_type_casts():
    model = graph_passes.on_proto(_rms_graph(np.random.default_rng(1)), graph_passes.library_optimize)
    assert not any(n.op_type == "Cast" for n in model.graph.node)


def test_merge_shared_matmuls_keeps_outputs_and_merges_only_safe_groups():
    rng = np.random.default_rng(2)
    feeds = {"x": rng.standard_normal((3, 2, 6)).astype(np.float32),
             "z": rng.standard_normal((3, 2, 6)).astype(np.float32)}
    want = _run(_projection_graph(np.random.default_rng(3)), feeds)
    merged = graph_passes.on_proto(_projection_graph(np.random.default_rng(3)), graph_passes.merge_shared_matmuls)
    onnx.checker.check_model(merged, full_check=True)
    names = [n.name for n in merged.graph.node if n.op_type == "MatMul"]
    # mm0..mm2 became one MatMul; the weight also read by another MatMul stays apart
    assert sorted(names) == ["mm0_merged", "other_input", "shared_weight"]
    # y1's bias is added once over the merged output (zeros for y0 and y2), before the Split
    adds = [n for n in merged.graph.node if n.op_type == "Add"]
    assert [(n.name, n.input[0]) for n in adds] == [("mm0_merged.add", "mm0_merged.out")]
    for got, ref in zip(_run(merged, feeds), want):
        np.testing.assert_allclose(got, ref, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("biased", [1, 2])
def test_merge_shared_matmuls_leaves_a_lone_bias_after_the_split(biased):
    """With ``lone_bias_after_split`` one biased part keeps its own Add, on the Split's output for it; two or more
    are added once before the Split, as without the option. Values as before either way."""
    rng = np.random.default_rng(2)
    feeds = {"x": rng.standard_normal((3, 2, 6)).astype(np.float32),
             "z": rng.standard_normal((3, 2, 6)).astype(np.float32)}
    graph = _projection_graph(np.random.default_rng(3))
    if biased == 2:                                         # y2 gets a bias as well
        graph.graph.initializer.append(numpy_helper.from_array(rng.standard_normal(5).astype(np.float32), "bias2"))
        graph.graph.node.append(helper.make_node("Add", ["y2", "bias2"], ["y2b"]))
        next(o for o in graph.graph.output if o.name == "y2").name = "y2b"
    want = _run(graph, feeds)
    merged = graph_passes.on_proto(graph, lambda m: graph_passes.merge_shared_matmuls(m, lone_bias_after_split=True))
    onnx.checker.check_model(merged, full_check=True)
    producers = {out: n for n in merged.graph.node for out in n.output}
    adds = [n for n in merged.graph.node if n.op_type == "Add"]
    assert len(adds) == 1
    if biased == 1:
        assert producers[adds[0].input[0]].op_type == "Split" and adds[0].output[0] == "y1b"
    else:
        assert adds[0].name == "mm0_merged.add" and producers[adds[0].output[0]] is adds[0]
        assert next(n for n in merged.graph.node if n.op_type == "Split").input[0] == adds[0].output[0]
    for got, ref in zip(_run(merged, feeds), want):
        np.testing.assert_allclose(got, ref, rtol=1e-6, atol=1e-6)


def test_merge_shared_matmuls_keeps_kinds_apart():
    """``kind`` splits a group: weights of one kind merge, another kind stays apart, None leaves a MatMul alone."""
    rng = np.random.default_rng(2)
    feeds = {"x": rng.standard_normal((3, 2, 6)).astype(np.float32),
             "z": rng.standard_normal((3, 2, 6)).astype(np.float32)}
    graph = _projection_graph(np.random.default_rng(3), widths=(7, 3, 5, 2))
    graph.graph.output.append(helper.make_tensor_value_info("y3", TensorProto.FLOAT, ["b", 2, None]))
    want = _run(graph, feeds)
    kinds = {"w0": "a", "w1": "b", "w2": "a", "w3": None}
    merged = graph_passes.on_proto(graph, lambda m: graph_passes.merge_shared_matmuls(m, kind=kinds.get))
    assert sorted(n.name for n in merged.graph.node if n.op_type == "MatMul") == \
        ["mm0_merged", "mm1", "mm3", "other_input", "shared_weight"]
    for got, ref in zip(_run(merged, feeds), want):
        np.testing.assert_allclose(got, ref, rtol=1e-6, atol=1e-6)


def test_merge_shared_matmuls_without_a_group_changes_nothing():
    model = _rms_graph(np.random.default_rng(4))
    before = graph_passes.on_proto(model).SerializeToString()          # the IR's round trip alone
    assert graph_passes.on_proto(model, graph_passes.merge_shared_matmuls).SerializeToString() == before


def _reshape_graph() -> onnx.ModelProto:
    """x [b, 2, 12]: a Reshape chain that ends where it began, one with a 0 entry, a Reshape of Softplus(x) to
    its own shape, one to a new shape, a graph output that is a Reshape, and a Reshape of the sum of two computed
    values to its own shape."""
    shape = lambda name, dims: numpy_helper.from_array(np.array(dims, np.int64), name)      # noqa: E731
    inits = [shape("s4", [-1, 2, 3, 4]), shape("s3", [-1, 2, 12]), shape("s0", [0, 0, 12]),
             shape("s6", [-1, 6, 4]), numpy_helper.from_array(np.linspace(-1, 1, 12, dtype=np.float32), "c")]
    nodes = [helper.make_node("Reshape", ["x", "s4"], ["r4"]),
             helper.make_node("Reshape", ["r4", "s3"], ["back"]),           # chain to x's own shape: both go
             helper.make_node("Mul", ["back", "c"], ["y0"]),
             helper.make_node("Reshape", ["r4", "s0"], ["zeros"]),          # a 0 entry: kept, and r4 with it
             helper.make_node("Softplus", ["x"], ["sp"]),
             helper.make_node("Reshape", ["sp", "s3"], ["same"]),           # its input's shape: goes
             helper.make_node("Add", ["same", "c"], ["y1"]),
             helper.make_node("Reshape", ["y1", "s6"], ["y2"]),             # a new shape: kept
             helper.make_node("Reshape", ["x", "s3"], ["y3"]),              # a graph output: kept
             helper.make_node("Add", ["same", "x"], ["sum"]),               # two computed inputs, one shape
             helper.make_node("Reshape", ["sum", "s3"], ["sum_same"]),      # its input's shape: goes
             helper.make_node("Mul", ["sum_same", "c"], ["y4"])]
    outputs = [helper.make_tensor_value_info("y0", TensorProto.FLOAT, ["b", 2, 12]),
               helper.make_tensor_value_info("zeros", TensorProto.FLOAT, ["b", 2, 12]),
               helper.make_tensor_value_info("y2", TensorProto.FLOAT, ["b", 6, 4]),
               helper.make_tensor_value_info("y3", TensorProto.FLOAT, ["b", 2, 12]),
               helper.make_tensor_value_info("y4", TensorProto.FLOAT, ["b", 2, 12])]
    graph = helper.make_graph(nodes, "reshapes", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                                                ["b", 2, 12])], outputs, inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def test_collapse_reshapes_keeps_values_and_drops_only_reshapes_that_change_nothing():
    x = np.random.default_rng(6).standard_normal((3, 2, 12)).astype(np.float32)
    want = _run(_reshape_graph(), {"x": x})
    lean = graph_passes.on_proto(_reshape_graph(), graph_passes.collapse_reshapes)
    onnx.checker.check_model(lean, full_check=True)
    kept = sorted(n.output[0] for n in lean.graph.node if n.op_type == "Reshape")
    assert kept == ["r4", "y2", "y3", "zeros"], kept
    for got, ref in zip(_run(lean, {"x": x}), want):
        np.testing.assert_array_equal(got, ref)


def test_fuse_rms_norm_rejects_an_unknown_flavour():
    with pytest.raises(ValueError, match="flavour"):
        graph_passes.on_proto(_rms_graph(np.random.default_rng(5)),
                              lambda m: graph_passes.fuse_rms_norm(m, "tensorrt"))


def test_exported_graphs_stay_within_their_node_budget(tmp_path):
    """The tiny model's step and chunk graphs, both flavours: node counts (recorded in the manifest) within
    NODE_BUDGET, RMSNorm as one op, the projections of each layer as one MatMul."""
    from seqedge.export.api import export_model

    export_model(tiny_model("gated"), tmp_path / "art", ["onnx", "onnx-ort"], ["none"], progress=False)
    manifest = read_manifest(tmp_path / "art")
    for target, norm in (("onnx", "RMSNormalization"), ("onnx-ort", "SimplifiedLayerNormalization")):
        variant = manifest.variant(target, "fp32")
        for entry in ("step", "chunk"):
            nodes = variant.info["nodes"][entry]
            assert nodes["total"] <= NODE_BUDGET[(target, entry)], (target, entry, nodes)
            assert nodes["op_types"][norm] == 2 * 3 + 1 and "Pow" not in nodes["op_types"]
            assert "Cast" not in nodes["op_types"] and "Constant" not in nodes["op_types"]
            if entry == "step":                                  # the conv's one token moves by reshapes
                assert "Transpose" not in nodes["op_types"], nodes["op_types"]
        graph = onnx.load(str(manifest.path(variant, "step")))
        merged = [n for n in graph.graph.node if n.op_type == "MatMul" and n.name.endswith("_merged")]
        assert len(merged) == 2                                  # one per layer: qkv, gate_down, beta, out_gate


# the bundled model's step graphs as benchmarks/results/step_overhead.md records them (fp32, as written)
BUNDLED_STEP_BUDGET = {"onnx": 213, "onnx-ort": 153}


def test_bundled_model_step_graphs_stay_within_their_recorded_count(tmp_path):
    """The bundled model's own step graphs (the ones the latency targets are set on) do not grow past the node
    counts the step benchmark recorded."""
    from seqedge.defaults import load_default
    from seqedge.export.api import export_model

    export_model(load_default(), tmp_path / "art", list(BUNDLED_STEP_BUDGET), ["none"], progress=False)
    manifest = read_manifest(tmp_path / "art")
    for target, budget in BUNDLED_STEP_BUDGET.items():
        nodes = manifest.variant(target, "fp32").info["nodes"]["step"]
        assert nodes["total"] <= budget, (target, nodes)


@pytest.mark.parametrize("recipe", ["int8-dynamic", "int4-all"])
def test_quantized_graphs_merge_projections_before_packing(tmp_path, recipe):
    """The projections reading one input are merged before quantization, so the packed graphs get one quantized
    MatMul for them per layer, as the float graphs do (the export's parity check covers the values)."""
    from seqedge.export.api import export_model

    export_model(tiny_model("gated"), tmp_path / "art", ["onnx"], [recipe], progress=False)
    manifest = read_manifest(tmp_path / "art")
    variant = manifest.variant("onnx", recipe.split("-")[0])
    graph = onnx.load(str(manifest.path(variant, "step")), load_external_data=False)
    packed = [n.name for n in graph.graph.node if n.op_type == "MatMulNBits"]
    assert "MatMul" not in {n.op_type for n in graph.graph.node}
    assert sum("_merged" in name for name in packed) == 2, packed       # one per layer


def test_drop_unsqueeze_before_reshape_keeps_values_and_copied_dims():
    """[B, 3, 4] -> Unsqueeze(1) -> Reshape [0, 0, -1] (0 copies a dim) becomes Reshape(x, [0, 1, -1]); a shape
    whose 0 copies a dimension the Unsqueeze moved is left alone."""
    def graph(shape):
        inits = [numpy_helper.from_array(np.array([1], np.int64), "axes"),
                 numpy_helper.from_array(np.array(shape, np.int64), "shape")]
        nodes = [helper.make_node("Unsqueeze", ["x", "axes"], ["u"]),
                 helper.make_node("Reshape", ["u", "shape"], ["y"])]
        g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", 3, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
        return helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)])

    x = np.random.default_rng(6).standard_normal((2, 3, 4)).astype(np.float32)
    for shape, dropped in (([0, 0, -1], True), ([0, 1, 12], True), ([0, 0, 0, 4], False)):
        want = _run(graph(shape), {"x": x})[0]
        rewritten = graph_passes.on_proto(graph(shape), graph_passes.drop_unsqueeze_before_reshape)
        assert [n.op_type for n in rewritten.graph.node] == (["Reshape"] if dropped else ["Unsqueeze", "Reshape"])
        np.testing.assert_array_equal(_run(rewritten, {"x": x})[0], want)


def test_norms_after_int4_matmuls_become_one_op_with_the_same_values():
    """A MatMulNBits (ONNX Runtime's op, unknown to ONNX's type inference) before the RMSNorm spelling: once
    type_matmul_nbits declares its output type, clean drops the same-type casts and fuses the norm, values kept."""
    from onnxruntime.quantization import matmul_nbits_quantizer as nbits

    rng = np.random.default_rng(11)
    rms = _rms_graph(rng, dim=16)
    weight = numpy_helper.from_array(rng.standard_normal((32, 16)).astype(np.float32), "w_in")
    rms.graph.initializer.append(weight)
    rms.graph.node.insert(0, helper.make_node("MatMul", ["h", "w_in"], ["x"], name="proj"))
    del rms.graph.input[:]
    rms.graph.input.append(helper.make_tensor_value_info("h", TensorProto.FLOAT, ["b", 32]))
    rms.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    config = nbits.DefaultWeightOnlyQuantConfig(block_size=16, is_symmetric=False, op_types_to_quantize=("MatMul",))
    quantizer = nbits.MatMulNBitsQuantizer(rms, algo_config=config)
    quantizer.process()
    packed = quantizer.model.model
    assert [n.op_type for n in packed.graph.node].count("MatMulNBits") == 1
    feeds = {"h": rng.standard_normal((3, 32)).astype(np.float32)}
    before = _run(packed, feeds)[0]
    untyped = onnx.ModelProto.FromString(packed.SerializeToString())
    untyped = graph_passes.on_proto(untyped, graph_passes.library_optimize,
                                    lambda m: graph_passes.fuse_rms_norm(m, "ort"))
    assert "Pow" in {n.op_type for n in untyped.graph.node}          # the other passes alone leave the norm
    cleaned = graph_passes.clean(packed, "ort")
    ops = [n.op_type for n in cleaned.graph.node]
    assert "SimplifiedLayerNormalization" in ops and "Pow" not in ops and "Cast" not in ops, ops
    np.testing.assert_allclose(_run(cleaned, feeds)[0], before, rtol=1e-5, atol=1e-6)


def test_weight_read_bytes_counts_one_row_of_a_gathered_table():
    """A table only Gather reads costs one row per call; one a MatMul also reads (a tied head) costs all of it;
    an initializer nothing reads costs nothing. Sizes come from dims, so external data need not be loaded."""
    table = numpy_helper.from_array(np.zeros((50, 8), np.float32), "table")
    tied = numpy_helper.from_array(np.zeros((8, 50), np.float32), "tied")
    head = numpy_helper.from_array(np.zeros((8, 30), np.float32), "head")
    unused = numpy_helper.from_array(np.zeros(1000, np.float32), "unused")
    nodes = [helper.make_node("Gather", ["table", "ids"], ["e"]),
             helper.make_node("Gather", ["tied", "ids2"], ["f"]),
             helper.make_node("MatMul", ["e", "tied"], ["g"]),
             helper.make_node("MatMul", ["e", "head"], ["h"])]
    graph = helper.make_graph(nodes, "reads", [helper.make_tensor_value_info(n, TensorProto.INT64, [1])
                                               for n in ("ids", "ids2")],
                              [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in "fgh"],
                              [table, tied, head, unused])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    assert graph_passes.weight_read_bytes(model) == 4 * (8 + 8 * 50 + 8 * 30)


def test_quantized_export_records_what_a_step_reads(tmp_path):
    """The int8 step reads its packed matrices and one row of the float32 embedding table: the recorded bytes
    (the floor's weight bytes) are below the shared weights file, which also holds the whole table."""
    from seqedge.evaluate.latency import step_weight_bytes
    from seqedge.export.api import export_model

    export_model(tiny_model("gated"), tmp_path / "art", ["onnx-ort"], ["none", "int8-dynamic"], progress=False)
    manifest = read_manifest(tmp_path / "art")
    for tag in ("fp32", "int8"):
        variant = manifest.variant("onnx-ort", tag)
        graph = onnx.load(str(manifest.path(variant, "step")), load_external_data=False)
        assert step_weight_bytes(variant) == variant.info["step_weight_bytes"] == \
            graph_passes.weight_read_bytes(graph)
    fp32, int8 = (manifest.variant("onnx-ort", t) for t in ("fp32", "int8"))
    table = int(np.prod(tiny_model("gated").embed.weight.shape)) * 4
    assert step_weight_bytes(int8) < int(int8.files["weights"]["bytes"]) - table // 2
    assert step_weight_bytes(fp32) >= table            # the tied float32 head reads the whole table
