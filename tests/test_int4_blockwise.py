"""int4_blockwise (the onnx target's int4 numbers) against its references.

Chain: ``rtn`` + ``pack`` == onnxruntime's asymmetric round-to-nearest, byte for byte (so the layout is
MatMulNBits'); ``dequantize`` == what ONNX Runtime's MatMulNBits multiplies by; ``search`` never loses to ``rtn``
on any block, and ``block_error`` is the error of the packed weight.
"""

from __future__ import annotations

import numpy as np
import pytest

from _matmul_nbits import onnxruntime_packed, random_weight

from seqedge.export import int4_blockwise as ib

onnx = pytest.importorskip("onnx", reason="the MatMulNBits references need onnx: pip install 'seqedge[onnx]'")
ort = pytest.importorskip("onnxruntime", reason="the MatMulNBits references need onnxruntime: "
                                                "pip install 'seqedge[onnx]'")

SHAPES = [(192, 48), (96, 20), (100, 12), (512, 8)]       # K a multiple of the group, and one with a partial block


def _ort_rtn(w: np.ndarray, group: int):
    """onnxruntime's MatMulNBits model and its (B, scales, zero_points) for ``w``, asymmetric round-to-nearest."""
    from onnx import numpy_helper

    model = onnxruntime_packed(w, block_size=group, is_symmetric=False)
    init = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    return model, (init["W_Q4"], init["W_scales"], init["W_zero_points"])


@pytest.mark.parametrize("group", [16, 32, 64, 128])
@pytest.mark.parametrize("shape", SHAPES)
def test_rtn_pack_is_onnxruntimes_bytes(shape, group):
    w = random_weight(shape, seed=group)
    w[: group, 0] = 0.0                                    # an all-zero block: scale 0, zero point 0
    w[: group, 1] = np.abs(w[: group, 1])                  # a block without negatives: its range is widened to 0
    _, want = _ort_rtn(w, group)
    got = ib.pack(w, *ib.rtn(w, group), group)
    for name, g, x in zip(("B", "scales", "zero_points"), got, want):
        assert g.dtype == x.dtype and g.shape == x.shape, name
        np.testing.assert_array_equal(g, x, err_msg=name)


@pytest.mark.parametrize("group", [16, 32])
@pytest.mark.parametrize("shape", SHAPES)
def test_dequantize_is_what_matmulnbits_multiplies_by(shape, group):
    """Our arrays (search's blocks) in onnxruntime's MatMulNBits graph: ORT's output == x @ dequantize(...)."""
    from onnx import numpy_helper

    w = random_weight(shape, seed=1)
    model, _ = _ort_rtn(w, group)
    arrays = ib.pack(w, *ib.search(w, group), group)
    init = {t.name: t for t in model.graph.initializer}
    for name, array in zip(("W_Q4", "W_scales", "W_zero_points"), arrays):
        init[name].CopyFrom(numpy_helper.from_array(array, name))
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(2).standard_normal((5, shape[0])).astype(np.float32)
    w_hat = ib.dequantize(*arrays, shape[0])
    assert w_hat.shape == w.shape
    np.testing.assert_allclose(sess.run(None, {"x": x})[0], x.astype(np.float64) @ w_hat, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("group", [16, 32, 64])
@pytest.mark.parametrize("shape", SHAPES)
def test_search_never_loses_to_rtn(shape, group):
    w = random_weight(shape, seed=3)
    w[:, 2] = 0.0                                          # all-zero blocks stay exact (no NaN from a zero scale)
    wb = ib.blocks(w, group)
    valid = np.arange(wb.shape[1] * group) < shape[0]
    scale, zero = ib.search(w, group)
    assert scale.dtype == np.float32 and scale.shape == wb.shape[:2] and np.all(np.isfinite(scale))
    assert np.array_equal(zero, np.rint(zero)) and zero.min() >= 0 and zero.max() <= 15
    err = ib.block_error(wb, scale, zero, valid)
    err_rtn = ib.block_error(wb, *ib.rtn(w, group), valid)
    assert np.all(err <= err_rtn)
    assert err.sum() < 0.97 * err_rtn.sum()                # and it is a real gain on weights with outliers
    assert np.all(err[2] == 0)
    # block_error is the error of the packed weight
    w_hat = ib.dequantize(*ib.pack(w, scale, zero, group), shape[0])
    np.testing.assert_allclose(((w_hat.astype(np.float64) - w) ** 2).sum(), err.sum(), rtol=1e-5)


@pytest.mark.parametrize("slab", [1, 100, 1000])
def test_search_does_not_depend_on_the_slab_size(slab):
    """Blocks are searched slab by slab of columns: any slab size gives the whole-weight search's numbers."""
    w = random_weight((70, 33), seed=5)
    whole = ib.search(w, 16, slab=10**9)
    for got, want in zip(ib.search(w, 16, slab=slab), whole):
        np.testing.assert_array_equal(got, want)
