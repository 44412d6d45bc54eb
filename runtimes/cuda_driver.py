"""The few CUDA driver calls the TensorRT runtime needs, through ctypes on ``libcuda.so.1`` (no torch, no cuda-python).

``probe()`` says whether an NVIDIA GPU is usable and which compute capability it has; ``DeviceBuffer`` and
``Stream`` move numpy arrays to and from the GPU. TensorRT's CUDA runtime shares the device's primary context,
which :func:`activate` makes current.
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass

import numpy as np

_ATTR_CC_MAJOR, _ATTR_CC_MINOR = 75, 76
_lib: ctypes.CDLL | None = None


class CudaError(RuntimeError):
    pass


def _driver() -> ctypes.CDLL:
    global _lib
    if _lib is None:
        try:
            _lib = ctypes.CDLL("libcuda.so.1")
        except OSError as err:
            raise CudaError(f"no NVIDIA driver (libcuda.so.1 cannot be loaded: {err})") from None
    return _lib


def _check(result: int, what: str) -> None:
    if result != 0:
        name = ctypes.c_char_p()
        _driver().cuGetErrorName(result, ctypes.byref(name))
        raise CudaError(f"{what} failed: {name.value.decode() if name.value else result}")


@dataclass(frozen=True)
class GpuInfo:
    index: int
    name: str
    compute_capability: tuple[int, int]

    @property
    def sm(self) -> str:
        return f"sm{self.compute_capability[0]}{self.compute_capability[1]}"


def probe(index: int = 0) -> GpuInfo:
    """The GPU at ``index``; raises CudaError when there is no driver or no device."""
    lib = _driver()
    _check(lib.cuInit(0), "cuInit")
    count = ctypes.c_int()
    _check(lib.cuDeviceGetCount(ctypes.byref(count)), "cuDeviceGetCount")
    if count.value <= index:
        raise CudaError(f"no CUDA device {index} (the driver sees {count.value})")
    device = ctypes.c_int()
    _check(lib.cuDeviceGet(ctypes.byref(device), index), "cuDeviceGet")
    name = ctypes.create_string_buffer(256)
    _check(lib.cuDeviceGetName(name, 256, device), "cuDeviceGetName")
    major, minor = ctypes.c_int(), ctypes.c_int()
    _check(lib.cuDeviceGetAttribute(ctypes.byref(major), _ATTR_CC_MAJOR, device), "cuDeviceGetAttribute")
    _check(lib.cuDeviceGetAttribute(ctypes.byref(minor), _ATTR_CC_MINOR, device), "cuDeviceGetAttribute")
    return GpuInfo(index, name.value.decode(), (major.value, minor.value))


def activate(index: int = 0) -> None:
    """Make the primary context of device ``index`` current on this thread."""
    lib = _driver()
    _check(lib.cuInit(0), "cuInit")
    device, ctx = ctypes.c_int(), ctypes.c_void_p()
    _check(lib.cuDeviceGet(ctypes.byref(device), index), "cuDeviceGet")
    _check(lib.cuDevicePrimaryCtxRetain(ctypes.byref(ctx), device), "cuDevicePrimaryCtxRetain")
    _check(lib.cuCtxSetCurrent(ctx), "cuCtxSetCurrent")


class Stream:
    def __init__(self) -> None:
        self.handle = ctypes.c_void_p()
        _check(_driver().cuStreamCreate(ctypes.byref(self.handle), 0), "cuStreamCreate")

    def synchronize(self) -> None:
        _check(_driver().cuStreamSynchronize(self.handle), "cuStreamSynchronize")


class DeviceBuffer:
    """``nbytes`` of device memory (freed with the object)."""

    def __init__(self, nbytes: int) -> None:
        self.nbytes = max(int(nbytes), 1)
        self.ptr = ctypes.c_uint64()
        _check(_driver().cuMemAlloc_v2(ctypes.byref(self.ptr), ctypes.c_size_t(self.nbytes)), "cuMemAlloc")

    def upload(self, array: np.ndarray) -> None:
        array = np.ascontiguousarray(array)
        assert array.nbytes <= self.nbytes
        _check(_driver().cuMemcpyHtoD_v2(self.ptr, array.ctypes.data_as(ctypes.c_void_p),
                                         ctypes.c_size_t(array.nbytes)), "cuMemcpyHtoD")

    def download(self, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        out = np.empty(shape, dtype)
        assert out.nbytes <= self.nbytes
        _check(_driver().cuMemcpyDtoH_v2(out.ctypes.data_as(ctypes.c_void_p), self.ptr,
                                         ctypes.c_size_t(out.nbytes)), "cuMemcpyDtoH")
        return out

    def __del__(self) -> None:
        if getattr(self, "ptr", None) is not None and self.ptr.value and _lib is not None:
            _lib.cuMemFree_v2(self.ptr)
