"""TensorRT runtime: runs ``step.engine``/``chunk.engine`` of a tensorrt variant on a supported NVIDIA GPU.

An engine loads only with the library that built it (``Variant.info["api"]``: full TensorRT or TensorRT for RTX)
and, for TensorRT for RTX, only on compute capability 8.0/8.6/8.9/12.x. Anywhere else ``check_available`` /
``open`` raise RuntimeUnavailable saying what is missing and what would run the artifact.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from seqedge.artifact import Manifest, Variant
from seqedge.tensorrt_api import RTX, RTX_COMPUTE_CAPABILITIES, TensorRTAPI, load_api

from . import cuda_driver
from .base import RuntimeUnavailable

RTX_GPUS = "an RTX-class GPU (compute capability 8.0, 8.6, 8.9 or 12.x: e.g. A100, RTX 3090/4090/5090)"


def _rtx_supported(cc: tuple[int, int]) -> bool:
    return cc in RTX_COMPUTE_CAPABILITIES or cc[0] == 12


def gpu_or_reason(flavor: str) -> cuda_driver.GpuInfo:
    """The GPU an engine of ``flavor`` would run on, or RuntimeUnavailable saying why none can."""
    try:
        gpu = cuda_driver.probe()
    except cuda_driver.CudaError as err:
        raise RuntimeUnavailable(f"the tensorrt runtime needs an NVIDIA GPU and none is usable here ({err}); "
                                 + (f"TensorRT for RTX engines run on {RTX_GPUS}" if flavor == RTX else
                                    "run it on a machine with an NVIDIA GPU and full TensorRT")
                                 + "; on this machine use runtime='onnxruntime'") from None
    if flavor == RTX and not _rtx_supported(gpu.compute_capability):
        major, minor = gpu.compute_capability
        raise RuntimeUnavailable(f"{gpu.name} has compute capability {major}.{minor}, which TensorRT for RTX "
                                 f"engines do not run on; they need {RTX_GPUS}. On this GPU, install full "
                                 "TensorRT and re-export the tensorrt target, or use runtime='onnxruntime' "
                                 "(CUDA provider)")
    return gpu


class TensorRTRuntime:
    runtime = "tensorrt"
    target = "tensorrt"

    def check_available(self) -> None:
        try:
            api = load_api()
        except ImportError as err:
            raise ImportError(f"the tensorrt runtime needs TensorRT: {err}") from None
        gpu_or_reason(api.flavor)

    def open(self, manifest: Manifest, variant: Variant, **options: Any) -> "TensorRTBackend":
        flavor = variant.info.get("api", RTX)
        try:
            api = load_api(flavor)
        except ImportError as err:
            raise RuntimeUnavailable(f"{variant.name} was built with {flavor}, which is not importable here: "
                                     f"{err}") from None
        gpu = gpu_or_reason(flavor)
        if options:
            raise ValueError(f"the tensorrt runtime takes no options, got {sorted(options)}")
        return TensorRTBackend(api, gpu, manifest, variant)


class _Engine:
    """One deserialized engine with its execution context and device buffers (grown as needed)."""

    def __init__(self, api: TensorRTAPI, runtime: Any, data: bytes, name: str) -> None:
        trt = api.trt
        self.engine = runtime.deserialize_cuda_engine(data)
        if self.engine is None:
            raise RuntimeUnavailable(f"{api.flavor} could not load {name} on this GPU (built by another version, "
                                     "or for other GPUs); re-export the tensorrt target here")
        self.context = self.engine.create_execution_context()
        self.names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.inputs = [n for n in self.names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.outputs = [n for n in self.names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        self.dtypes = {n: np.dtype(trt.nptype(self.engine.get_tensor_dtype(n))) for n in self.names}
        self.buffers: dict[str, cuda_driver.DeviceBuffer] = {}

    def _buffer(self, name: str, nbytes: int) -> cuda_driver.DeviceBuffer:
        buf = self.buffers.get(name)
        if buf is None or buf.nbytes < nbytes:
            buf = self.buffers[name] = cuda_driver.DeviceBuffer(nbytes)
            self.context.set_tensor_address(name, buf.ptr.value)
        return buf

    def run(self, feeds: dict[str, np.ndarray], stream: cuda_driver.Stream) -> dict[str, np.ndarray]:
        for name in self.inputs:
            array = np.ascontiguousarray(feeds[name], dtype=self.dtypes[name])
            self.context.set_input_shape(name, array.shape)
            self._buffer(name, array.nbytes).upload(array)
        shapes = {n: tuple(self.context.get_tensor_shape(n)) for n in self.outputs}
        for name in self.outputs:
            self._buffer(name, int(np.prod(shapes[name])) * self.dtypes[name].itemsize)
        if not self.context.execute_async_v3(stream.handle.value or 0):
            raise RuntimeError("TensorRT execute_async_v3 failed")
        stream.synchronize()
        return {n: self.buffers[n].download(shapes[n], self.dtypes[n]) for n in self.outputs}


class TensorRTBackend:
    runtime = "tensorrt"
    target = "tensorrt"

    def __init__(self, api: TensorRTAPI, gpu: cuda_driver.GpuInfo, manifest: Manifest, variant: Variant) -> None:
        cuda_driver.activate(gpu.index)
        self.api, self.gpu, self.variant = api, gpu, variant
        self.max_batch = int(variant.info.get("batch", {}).get("max", 1))
        self.state_names = [s.name for s in manifest.state_specs]
        self._runtime = api.trt.Runtime(api.trt.Logger(api.trt.Logger.WARNING))
        self.engines = {entry: _Engine(api, self._runtime, manifest.path(variant, entry).read_bytes(), entry)
                        for entry in ("step", "chunk")}
        self.stream = cuda_driver.Stream()

    def run(self, entry: str, tokens: np.ndarray, state: list[np.ndarray]) -> tuple[np.ndarray, list[np.ndarray]]:
        batch = tokens.shape[0]
        if not 1 <= batch <= self.max_batch:
            raise ValueError(f"the tensorrt engines of {self.variant.name} take batch 1..{self.max_batch}, got "
                             f"{batch}; re-export with a larger profile or split the batch")
        feeds = {"tokens": tokens, **dict(zip(self.state_names, state))}
        out = self.engines[entry].run(feeds, self.stream)
        return out["logits"].astype(np.float32, copy=False), [out[f"new_{n}"] for n in self.state_names]

    def describe(self) -> dict[str, Any]:
        return {**self.api.describe(), "device": self.gpu.name, "compute_capability": self.gpu.sm}
