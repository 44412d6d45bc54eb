"""The interface every runtime backend implements, and the registry of runtimes (a plain dict, lazy)."""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np

from seqedge.artifact import Manifest, Variant
from seqedge.registry import instantiate


class RuntimeUnavailable(RuntimeError):
    """The runtime cannot run here (library missing, wrong OS, no supported GPU); the message says what would."""


class Backend(Protocol):
    """Runs one entry point of one variant on numpy data. The Session adds validation and the API on top.

    ``run("step", tokens[B] int64, state)``      -> (logits[B, V] float32, new_state)
    ``run("chunk", tokens[B, C] int64, state)``  -> (logits[B, C, V] float32, new_state)
    ``run("chunk_last", tokens[B, C] int64, state)`` -> (logits[B, 1, V] float32, new_state): the chunk with the
    head on the last position only, where ``entries`` lists it (a backend without ``entries`` runs step and chunk)
    State tensors come in manifest order: float32 numpy arrays, or the tensors this backend returned itself (the
    Session hands a state it sealed back as it was: ExecuTorch's new states are its torch output tensors). A
    backend may keep device buffers between calls (e.g. IOBinding) but must accept any valid state it is given.
    """

    runtime: str
    target: str          # which artifact target it runs ("torch", "onnx", "executorch", "coreml", "tensorrt")

    def run(self, entry: str, tokens: np.ndarray, state: list[np.ndarray]) -> tuple[np.ndarray, list[np.ndarray]]:
        ...

    def describe(self) -> dict[str, Any]:
        """Provider/device details for reports (e.g. ORT providers, TensorRT device)."""
        ...


class BackendFactory(Protocol):
    runtime: str
    target: str

    def check_available(self) -> None:
        """Raise ImportError (exact pip install) or RuntimeUnavailable (what would run it) when it cannot run."""

    def open(self, manifest: Manifest, variant: Variant, **options: Any) -> Backend:
        ...


# runtime name -> "module:FactoryClass"
RUNTIMES: dict[str, str] = {
    "torch": "seqedge.runtimes.torch_runtime:TorchRuntime",
    "onnxruntime": "seqedge.runtimes.onnxruntime_runtime:OnnxRuntimeRuntime",
    "onnxruntime-fused": "seqedge.runtimes.onnxruntime_runtime:OnnxRuntimeFusedRuntime",
    "executorch": "seqedge.runtimes.executorch_runtime:ExecuTorchRuntime",
    "coreml": "seqedge.runtimes.coreml_runtime:CoreMLRuntime",
    "tensorrt": "seqedge.runtimes.tensorrt_runtime:TensorRTRuntime",
    "cuda": "seqedge.runtimes.cuda_runtime:CudaRuntime",
}


def get_runtime(name: str) -> BackendFactory:
    return instantiate(RUNTIMES, name, "runtime")
