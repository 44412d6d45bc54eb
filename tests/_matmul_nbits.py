"""One-MatMul ONNX graphs and onnxruntime's own MatMulNBits packing of them: the references of the int4 and int8
block tests (test_int4_blockwise.py, test_int8_blocks.py)."""

from __future__ import annotations

import logging

import numpy as np


def random_weight(shape, seed=0, outliers=True) -> np.ndarray:
    """A float32 weight ``[K, N]`` of std 0.05, with (``outliers``) one in 200 weights 8x larger, as trained
    matrices have."""
    rng = np.random.default_rng(seed)
    w = rng.standard_normal(shape).astype(np.float32) * 0.05
    if outliers:
        w.flat[rng.integers(0, w.size, size=max(1, w.size // 200))] *= 8
    return w


def matmul_model(w: np.ndarray):
    """``y = x @ w`` with ``x [m, K]``, ``w [K, N]`` a float32 initializer ``W``, opset 18."""
    from onnx import TensorProto, helper, numpy_helper

    K, N = w.shape
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "W"], ["y"], name="mm")], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["m", K])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["m", N])],
                              [numpy_helper.from_array(w, "W")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def onnxruntime_packed(w: np.ndarray, **config):
    """:func:`matmul_model` of ``w`` after onnxruntime's MatMulNBits quantizer with
    ``DefaultWeightOnlyQuantConfig(**config)`` (the ModelProto)."""
    from onnxruntime.quantization import matmul_nbits_quantizer as nbits

    logging.getLogger("onnxruntime.quantization.matmul_nbits_quantizer").setLevel(logging.WARNING)
    quantizer = nbits.MatMulNBitsQuantizer(matmul_model(w), algo_config=nbits.DefaultWeightOnlyQuantConfig(**config))
    quantizer.process()
    return quantizer.model.model
