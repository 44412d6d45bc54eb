"""int8_blocks (the onnx target's int8 numbers) against its references.

Chain: ``rounded`` is within half a step of the weight in every block (the step is the block's max |w| / 127);
``pack`` fits the layout onnxruntime's 8-bit symmetric quantizer writes; ``dequantize`` == what ONNX Runtime's
MatMulNBits multiplies by (float compute exactly, int8 activations within their own rounding); the export's
``_quantize_int8`` packs every constant MatMul (merged first) and leaves the others alone.
"""

from __future__ import annotations

import numpy as np
import pytest

from _matmul_nbits import onnxruntime_packed, random_weight

from seqedge.export import int8_blocks as i8

onnx = pytest.importorskip("onnx", reason="the MatMulNBits references need onnx: pip install 'seqedge[onnx]'")
ort = pytest.importorskip("onnxruntime", reason="the MatMulNBits references need onnxruntime: "
                                                "pip install 'seqedge[onnx]'")

SHAPES = [(256, 48), (200, 20), (96, 7), (1536, 16)]       # K a multiple of the block, shorter, and partial blocks


def _ort_model(w: np.ndarray, accuracy_level):
    """onnxruntime's 8-bit symmetric MatMulNBits model of ``x @ w`` (its own packing)."""
    return onnxruntime_packed(w, block_size=i8.BLOCK, is_symmetric=True, bits=8, accuracy_level=accuracy_level)


@pytest.mark.parametrize("shape", SHAPES)
def test_rounding_is_within_half_a_step_per_block(shape):
    w = random_weight(shape)
    w[:, 0] = 0.0                                          # an all-zero column: scale 0, codes 0
    q, scale = i8.quantize(w)
    assert q.dtype == np.int8 and np.abs(q.astype(int)).max() <= i8.LEVEL
    assert scale.shape == (shape[1], -(-shape[0] // i8.BLOCK)) and (scale[0] == 0).all()
    step = np.repeat(scale.T, i8.BLOCK, axis=0)[: shape[0]]
    err = np.abs(i8.rounded(w) - w)
    assert (err <= step / 2 * (1 + 1e-6) + 1e-12).all()
    assert (i8.rounded(w)[:, 0] == 0).all()


@pytest.mark.parametrize("shape", SHAPES)
def test_pack_fits_onnxruntimes_layout(shape):
    from onnx import numpy_helper

    w = random_weight(shape, seed=1)
    init = {t.name: numpy_helper.to_array(t) for t in _ort_model(w, None).graph.initializer}
    for got, want in zip(i8.pack(w), (init["W_Q8"], init["W_scales"])):
        assert got.dtype == want.dtype and got.shape == want.shape


@pytest.mark.parametrize("accuracy_level, rtol", [(None, 1e-5), (4, 2e-2)])
@pytest.mark.parametrize("shape", SHAPES)
def test_dequantize_is_what_matmulnbits_multiplies_by(shape, accuracy_level, rtol):
    """Our arrays in onnxruntime's MatMulNBits: ORT's output == x @ dequantize(...); with int8 activations
    (level 4) within the activations' rounding (about 1% of the output's scale)."""
    from onnx import numpy_helper

    w = random_weight(shape, seed=2)
    model = _ort_model(w, accuracy_level)
    arrays = i8.pack(w)
    init = {t.name: t for t in model.graph.initializer}
    for name, array in zip(("W_Q8", "W_scales"), arrays):
        init[name].CopyFrom(numpy_helper.from_array(array, name))
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(3).standard_normal((5, shape[0])).astype(np.float32)
    want = x.astype(np.float64) @ i8.dequantize(*arrays, shape[0])
    got = sess.run(None, {"x": x})[0]
    assert np.abs(got - want).max() <= rtol * np.abs(want).max()


def test_quantize_int8_packs_constant_matmuls_once_merged(tmp_path):
    """Two MatMuls reading one input merge into one 8-bit MatMulNBits (with i8.pack's arrays); a MatMul of two
    activations stays a MatMul; the graph computes the packed weights' outputs within int8 activations' error."""
    from onnx import TensorProto, helper, numpy_helper

    from seqedge.export.onnx_target import _quantize_int8

    rng = np.random.default_rng(4)
    wa, wb = random_weight((256, 24), seed=5), random_weight((256, 40), seed=6)
    nodes = [helper.make_node("MatMul", ["x", "Wa"], ["a"], name="mm_a"),
             helper.make_node("MatMul", ["x", "Wb"], ["b"], name="mm_b"),
             helper.make_node("MatMul", ["at", "b"], ["y"], name="mm_act"),
             helper.make_node("Transpose", ["a"], ["at"], perm=[1, 0])]
    graph = helper.make_graph([nodes[0], nodes[1], nodes[3], nodes[2]], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3, 256])],
                              [helper.make_tensor_value_info("a", TensorProto.FLOAT, [3, 24]),
                               helper.make_tensor_value_info("y", TensorProto.FLOAT, [24, 40])],
                              [numpy_helper.from_array(wa, "Wa"), numpy_helper.from_array(wb, "Wb")])
    source, dest = tmp_path / "f.onnx", tmp_path / "q.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), source)
    _quantize_int8(source, dest)
    model = onnx.load(str(dest))
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("MatMulNBits") == 1 and ops.count("MatMul") == 1
    packed = next(n for n in model.graph.node if n.op_type == "MatMulNBits")
    init = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    for got, want in zip((init[name] for name in packed.input[1:]), i8.pack(np.concatenate([wa, wb], 1))):
        np.testing.assert_array_equal(got, want)
    x = rng.standard_normal((3, 256)).astype(np.float32)
    a, y = ort.InferenceSession(str(dest), providers=["CPUExecutionProvider"]).run(None, {"x": x})
    want_a, want_b = x @ i8.rounded(wa), x @ i8.rounded(wb)      # the weights as packed; activations int8
    np.testing.assert_allclose(a, want_a, rtol=0, atol=2e-2 * np.abs(want_a).max())
    np.testing.assert_allclose(y, want_a.T @ want_b, rtol=0, atol=4e-2 * np.abs(want_a.T @ want_b).max())
