"""The ONNX libraries the onnx targets and graph passes import lazily, with the exact install when missing."""

from __future__ import annotations

from typing import Any

INSTALL_HINT = "pip install 'seqedge[onnx]'  (onnx, onnxruntime, onnxscript)"


def require_onnx_library(module: str) -> Any:
    """Import ``module`` (onnx, onnxruntime, onnxscript or a submodule), or raise ImportError with the install."""
    try:
        return __import__(module, fromlist=["_"])
    except ImportError as err:
        raise ImportError(f"the onnx target needs {module.split('.')[0]}, which is not installed ({err}); "
                          f"run: {INSTALL_HINT}") from None
