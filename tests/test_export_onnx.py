"""ONNX target: graph contract (names, dynamic batch, opset, checker), quantized packings, parity budgets."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from _artifacts import RULES, SCHEMES, onnx_artifact, reference, tiny_model

import seqedge
from seqedge.artifact import CHUNK_LOGITS_FROM, read_manifest
from seqedge.export.head_rows import ROWS_DIM
from seqedge.evaluate.parity import BUDGETS, check_session, text_tokens
from seqedge.export.entry_points import entry_module, example_inputs

TOKENS = 1024


@pytest.fixture(params=RULES)
def rule(request):
    return request.param


@pytest.fixture
def artifact(tmp_path_factory, rule):
    return onnx_artifact(tmp_path_factory, rule)


def _graph(artifact, tag, entry):
    return onnx.load(str(artifact / "onnx" / tag / f"{entry}.onnx"))


@pytest.mark.parametrize("tag", ["fp32", "fp16", "int8", "int4"])
def test_graph_contract(artifact, tag):
    """Named I/O in manifest order, symbolic batch on dim 0, float32 state/logits I/O, opset >= 18, checker clean;
    the chunk graph's one extra input, ``logits_from``, has an initializer of [0] (every row: a runner that does
    not feed it gets the manifest's chunk), and its logits' rows are symbolic."""
    manifest = read_manifest(artifact)
    for entry in ("step", "chunk"):
        model = _graph(artifact, tag, entry)
        onnx.checker.check_model(model, full_check=True)
        opset = {o.domain: o.version for o in model.opset_import}
        assert opset.get("", opset.get("ai.onnx")) >= 18
        expected = manifest.data["entry_points"][entry]
        inputs = list(model.graph.input)
        if entry == "chunk":
            extra = inputs.pop()
            default = {t.name: t for t in model.graph.initializer}[CHUNK_LOGITS_FROM]
            assert extra.name == CHUNK_LOGITS_FROM and onnx.numpy_helper.to_array(default).tolist() == [0]
        for values, spec in ((inputs, expected["inputs"]), (model.graph.output, expected["outputs"])):
            assert [v.name for v in values] == [s["name"] for s in spec]
            for v, s in zip(values, spec):
                dims = v.type.tensor_type.shape.dim
                assert dims[0].dim_param == "batch"
                if entry == "chunk" and v.name == "logits":
                    assert dims[1].dim_param == ROWS_DIM and dims[2].dim_value == s["shape"][2]
                else:
                    assert [d.dim_value for d in dims[1:]] == s["shape"][1:]
                want = onnx.TensorProto.INT64 if s["dtype"] == "int64" else onnx.TensorProto.FLOAT
                assert v.type.tensor_type.elem_type == want


@pytest.mark.parametrize("tag", ["fp32", "fp16", "int8", "int4"])
def test_chunk_head_on_chosen_rows(artifact, tag):
    """``logits_from`` -1 and 5: the head on those rows only, equal to the same rows of the full chunk (the
    same head on fewer rows: float rounding at most), and the new state unchanged, on a carried random state."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(artifact / "onnx" / tag / "chunk.onnx"), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_overridable_initializers()] == [CHUNK_LOGITS_FROM]
    gen = np.random.default_rng(3)
    feeds = {i.name: 0.1 * gen.standard_normal([3 if isinstance(d, str) else d for d in i.shape], np.float32)
             for i in session.get_inputs() if i.name != "tokens"}
    feeds["tokens"] = gen.integers(0, 256, (3, session.get_inputs()[0].shape[1]), dtype=np.int64)
    full = session.run(None, feeds)
    for start in (-1, 5):
        rows = session.run(None, {**feeds, CHUNK_LOGITS_FROM: np.array([start], np.int64)})
        assert rows[0].shape == full[0][:, start:].shape
        np.testing.assert_allclose(rows[0], full[0][:, start:], rtol=0, atol=1e-5 * np.abs(full[0]).max())
        for a, b in zip(rows[1:], full[1:]):
            np.testing.assert_array_equal(a, b)


def test_quantized_packings(artifact, rule):
    """fp16 holds float16 weights; int8 runs MatMulNBits with 8 bits in blocks of 128 and int8 activations in both
    entry points; int4 MatMulNBits with 4 bits and the recipe's group, int8 activations in the step and float32 in
    the chunk of a model this narrow; the norms after packed matmuls are still one op."""
    ops = {tag: [n for n in _graph(artifact, tag, "step").graph.node] for tag in ("fp32", "fp16", "int8", "int4")}
    fp16_init = _graph(artifact, "fp16", "step").graph.initializer
    assert sum(t.data_type == onnx.TensorProto.FLOAT16 for t in fp16_init) >= 4
    assert not any(n.op_type == "MatMulNBits" for n in ops["fp32"])
    int8 = [n for n in ops["int8"] if n.op_type == "MatMulNBits"]
    assert len(int8) >= 4 and "MatMul" not in {n.op_type for n in ops["int8"]}
    for entry in ("step", "chunk"):
        for node in (n for n in _graph(artifact, "int8", entry).graph.node if n.op_type == "MatMulNBits"):
            attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
            assert attrs["bits"] == 8 and attrs["block_size"] == 128 and attrs["accuracy_level"] == 4
    _check_int8_numbers(artifact, int8)
    nbits = [n for n in ops["int4"] if n.op_type == "MatMulNBits"]
    assert len(nbits) >= 4
    for node in nbits:
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        assert attrs["bits"] == 4 and attrs["block_size"] == 32 and attrs["accuracy_level"] == 4
    chunk = [n for n in _graph(artifact, "int4", "chunk").graph.node if n.op_type == "MatMulNBits"]
    assert chunk and not any(a.name == "accuracy_level" for n in chunk for a in n.attribute)
    assert "Pow" not in {n.op_type for n in ops["int4"]} and "RMSNormalization" in {n.op_type for n in ops["int4"]}
    _check_int4_numbers(artifact, nbits)
    sizes = {v.tag: sum(f["bytes"] for f in v.files.values()) for v in read_manifest(artifact).variants
             if v.target == "onnx"}
    assert sizes["fp16"] < sizes["fp32"]
    # int4 packs only the MLP (the recipe's int4 policy; test_export_int4_policy.py): it saves most of the MLP's
    # float32 bytes (4-bit weights + a float scale and a 4-bit zero point per 32: ~5.1 of 32 bits), no more
    from seqedge.export.quantization import QuantizationRecipe, int4_selection

    model = tiny_model(rule)
    selected, _ = int4_selection(model, QuantizationRecipe("int4"))
    mlp_bytes = 4 * sum(model.get_submodule(n).weight.numel() for n in selected)   # once: step and chunk share
    assert 0.75 * mlp_bytes < sizes["fp32"] - sizes["int4"] < mlp_bytes


def _float_weight(graph, name: str) -> np.ndarray:
    """The float32 weight of the MatMul called ``name`` in ``graph``; for the tied head, which reads the embedding
    table itself (export/tied_head.py: a ``Gemm`` called ``name + "/tied"``), the table transposed."""
    from onnx import numpy_helper

    nodes = {n.name: n for n in graph.node}
    weights = {t.name: t for t in graph.initializer}
    node = nodes.get(name) or nodes[f"{name}/tied"]
    weight = numpy_helper.to_array(weights[node.input[1]])
    return weight if node.op_type == "MatMul" else weight.T


def _check_int8_numbers(artifact, nbits):
    """Each 8-bit MatMulNBits holds int8_blocks.pack of its float32 weight, with no zero points (symmetric)."""
    from onnx import numpy_helper

    from seqedge.export import int8_blocks

    fp32 = _graph(artifact, "fp32", "step").graph
    int8_inits = {t.name: t for t in _graph(artifact, "int8", "step").graph.initializer}
    for node in nbits:
        assert len(node.input) == 3
        w = _float_weight(fp32, node.name.removesuffix("_Q8"))
        for name, array in zip(node.input[1:], int8_blocks.pack(w)):
            np.testing.assert_array_equal(numpy_helper.to_array(int8_inits[name]), array, err_msg=name)


def _check_int4_numbers(artifact, nbits):
    """Each MatMulNBits holds int4_blockwise.search's blocks of its float32 weight, with uint8 (integer) zero
    points: ONNX Runtime's CPU runs those on its fast kernels, float ones (HQQ's) it does not."""
    from onnx import numpy_helper

    from seqedge.export import int4_blockwise

    fp32 = _graph(artifact, "fp32", "step").graph
    int4_inits = {t.name: t for t in _graph(artifact, "int4", "step").graph.initializer}
    for node in nbits:
        assert len(node.input) == 4 and int4_inits[node.input[3]].data_type == onnx.TensorProto.UINT8
        w = _float_weight(fp32, node.name.removesuffix("_Q4"))
        want = int4_blockwise.pack(w, *int4_blockwise.search(w, 32), 32)
        for name, array in zip(node.input[1:4], want):
            np.testing.assert_array_equal(numpy_helper.to_array(int4_inits[name]), array, err_msg=name)


@pytest.mark.parametrize("entry", ["step", "chunk"])
def test_dynamic_batch_matches_torch(artifact, rule, entry):
    """Batch 3 through onnxruntime == the float32 torch entry point, per output (logits and every state)."""
    import onnxruntime as ort

    model = tiny_model(rule)
    args = example_inputs(model, entry, batch_size=3, seed=7)
    sess = ort.InferenceSession(str(artifact / "onnx" / "fp32" / f"{entry}.onnx"), providers=["CPUExecutionProvider"])
    got = sess.run(None, {i.name: a.numpy() for i, a in zip(sess.get_inputs(), args)})
    with torch.no_grad():
        want = entry_module(model, entry)(*args)
    for g, w in zip(got, want):
        assert g.shape == tuple(w.shape)
        np.testing.assert_allclose(g, w.numpy(), atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("scheme", SCHEMES)
def test_onnxruntime_parity_budget(artifact, scheme):
    """1,024 tokens of real text (512 prefill + 512 steps) vs the float64 reference, at the parity budgets.

    What is tested, honestly: the tiny model is random, and its tied embeddings make the top-1 prediction mostly
    "the current byte", a peaked margin that quantization rarely flips; so for int8/int4 the top-1 and bpb
    budgets are weak evidence here, and we also bound KL and the SQNR of the logits. The bpb budget on real
    weights needs the bundled model (slow test in the bench/parity suite once it lands).
    """
    tag = "fp32" if scheme == "none" else scheme
    session = seqedge.load(artifact, "onnxruntime", quantization=scheme)
    tokens = text_tokens(TOKENS)
    report = check_session(session, tokens, prefill=TOKENS // 2, reference=reference(artifact, tokens, TOKENS // 2))
    assert report.passed, report.failures
    if tag == "fp32":
        assert report.max_abs <= BUDGETS["fp32"].max_abs and report.state_rel_err < 1e-4
    else:
        min_sqnr = {"fp16": 40.0, "int8": 25.0, "int4": 12.0}[tag]
        assert report.sqnr_db > min_sqnr and report.kl < 1e-3, (report.sqnr_db, report.kl)
    # the error does not grow along the stream: a broken state write-back would make the last window worse
    assert report.last["max_abs"] <= 3 * report.first["max_abs"] + 1e-6


def test_export_is_deterministic(tmp_path, artifact, rule):
    """The same model exported twice gives byte-identical ONNX files (fp32 and int4)."""
    from seqedge.export.api import export_model

    again = export_model(tiny_model(rule), tmp_path / "again", ["onnx"], ["none", "int4"], progress=False)
    first = read_manifest(artifact)
    for tag in ("fp32", "int4"):
        a, b = first.variant("onnx", tag), again.variant("onnx", tag)
        assert {k: f["sha256"] for k, f in a.files.items()} == {k: f["sha256"] for k, f in b.files.items()}


def test_export_is_quiet(tmp_path, capfd, recwarn):
    """No warnings or library chatter while exporting with progress off."""
    from seqedge.export.api import export_model

    export_model(tiny_model("gated", seed=3), tmp_path / "q", ["onnx"], ["none", "int8"], progress=False)
    out, err = capfd.readouterr()
    assert out == "" and "Warning" not in err and "warn" not in err.lower(), err[:500]
    assert not [w for w in recwarn if "onnx" in str(w.filename) or "torch" in str(w.filename)]


def test_int4_chunk_of_a_wide_model_runs_int8_activations_like_its_step(tmp_path):
    """From 512 wide on the int4 chunk takes int8 activations too (level 4, as the step), per row as the step
    quantizes them: a chunk of tokens then agrees with the same tokens as steps about as closely as float32 does,
    and with the float64 reference as the step does."""
    from seqedge.export.api import export_model
    from seqedge.export.onnx_target import INT4_CHUNK_LEVEL4_MIN_WIDTH, int4_accuracy_level

    assert int4_accuracy_level("step", 32) == 4 and int4_accuracy_level("chunk", 32) is None
    assert int4_accuracy_level("chunk", INT4_CHUNK_LEVEL4_MIN_WIDTH) == 4
    model = tiny_model("gated", num_layers=1, hidden_size=INT4_CHUNK_LEVEL4_MIN_WIDTH, num_heads=8, head_k_dim=64,
                       head_v_dim=64)
    art = tmp_path / "wide"
    export_model(model, art, ["onnx"], ["int4-all"], progress=False)
    chunk = [n for n in _graph(art, "int4", "chunk").graph.node if n.op_type == "MatMulNBits"]
    assert chunk and all(onnx.helper.get_attribute_value(a) == 4 for n in chunk for a in n.attribute
                         if a.name == "accuracy_level")
    assert all(any(a.name == "accuracy_level" for a in n.attribute) for n in chunk)
    session = seqedge.load(art, "onnxruntime", quantization="int4")
    tokens = text_tokens(2 * session.chunk_size)[None]
    by_chunks, chunk_state = session.prefill(tokens, session.init_state(1))
    state, rows = session.init_state(1), []
    for t in range(tokens.shape[1]):
        logits, state = session.step(tokens[:, t], state)
        rows.append(logits)
    by_steps = np.stack(rows, axis=1)
    scale = np.abs(by_steps).max()
    np.testing.assert_allclose(by_chunks, by_steps, atol=1e-4 * scale, rtol=0)     # a float32 chunk: ~1e-2
    for a, b in zip(chunk_state.numpy(), state.numpy()):
        np.testing.assert_allclose(a, b, atol=1e-4 * np.abs(b).max(), rtol=0)
