"""``onnx-ort`` target: the ONNX graphs of the ``onnx`` target with every layer's scan as ONNX Runtime's fused
``com.microsoft::LinearAttention`` (see :mod:`seqedge.export.ort_fused`). Runs only in ONNX Runtime >= 1.32
(runtime ``onnxruntime-fused``); quantization as in the ``onnx`` target, whose graphs stay standard-ops only
for TensorRT and every other ONNX consumer.
"""

from __future__ import annotations

from pathlib import Path

from .onnx_target import INSTALL_HINT, OnnxTarget, finalize_graph, require_onnx_library
from .ort_fused import MIN_ONNXRUNTIME, ORT_FUSED_OPS


class OnnxOrtTarget(OnnxTarget):
    """``<root>/onnx-ort/<tag>/{step,chunk}.onnx``: same inputs, outputs and quantization as ``onnx``."""

    name = "onnx-ort"
    install_hint = INSTALL_HINT
    flavour = "ort"

    def __init__(self) -> None:
        super().__init__(exporter="torchscript")     # the fused op comes from a symbolic: TorchScript exporter

    def check_available(self) -> None:
        super().check_available()
        ort = require_onnx_library("onnxruntime")
        version = tuple(int(p) for p in ort.__version__.split(".")[:2])
        if version < MIN_ONNXRUNTIME:
            raise ImportError(f"the onnx-ort target needs onnxruntime >= {'.'.join(map(str, MIN_ONNXRUNTIME))} "
                              f"(com.microsoft::LinearAttention), found {ort.__version__}; run: "
                              f"pip install -U 'onnxruntime>=1.32'")

    def _trace(self, model, entry: str, path: Path, *, half: bool, clean: bool = True) -> None:
        super()._trace(model.with_ops(ORT_FUSED_OPS), entry, path, half=half, clean=clean)

    def _finalize(self, path: Path) -> None:
        """The graph holds ONNX Runtime's own ops (``SimplifiedLayerNormalization`` in the default domain, which
        ``onnx.checker`` rejects): the check is that ONNX Runtime's CPU provider loads it."""
        finalize_graph(path, check=False)
        ort = require_onnx_library("onnxruntime")
        options = ort.SessionOptions()
        options.log_severity_level = 3
        # a load check: every op resolves to a CPU kernel. Without graph rewrites and weight pre-packing it holds
        # the weights once (a real-size model's export stays within its memory budget)
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        options.add_session_config_entry("session.disable_prepacking", "1")
        ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
