"""Which implementation runs the sequence scan, and telling the user once which one does.

- For CUDA tensors, float32/bfloat16, head dims the kernels take, triton installed, not tracing for export: the
  Triton custom op ``seqedge::chunk_scan_gated`` (:func:`seqedge.kernels.chunk_scan`) for the gated rule,
  ``seqedge::chunk_scan_delta`` (:func:`seqedge.kernels.delta_scan`) for the delta rule, forward and backward.
  ``use_triton_kernels(False)`` turns them off for the process.
- Anything else: the chunked PyTorch form (:func:`seqedge.scan.chunked_scan`). Export (torch.export, torch.jit
  tracing, ONNX export) always traces this plain form, so artifacts never contain the custom op.
Each path is announced once per process with a WARNING on the ``seqedge.scan`` logger, with the reason.

The kernels are on by default because their GPU tests against float64 and against fla's kernels pass for the shipped
config lists: tests/test_kernels_gpu.py and tests/test_kernels_delta_gpu.py (benchmarks/results/gpu_tests.md).
"""

from __future__ import annotations

import functools
import importlib.util
import logging

import torch

from .chunked import chunked_scan

logger = logging.getLogger("seqedge.scan")
_TOLD: set[str] = set()
_KERNEL_DTYPES = (torch.float32, torch.bfloat16)
_TRITON_ENABLED = True


def use_triton_kernels(enabled: bool = True) -> None:
    """Turn the Triton chunk-scan kernel for CUDA tensors on (the default) or off in this process."""
    global _TRITON_ENABLED
    _TRITON_ENABLED = bool(enabled)


@functools.cache
def _triton_available() -> bool:
    return importlib.util.find_spec("triton") is not None


def _tracing_for_export() -> bool:
    onnx_export = getattr(torch.onnx, "is_in_onnx_export", lambda: False)()
    return torch.jit.is_tracing() or torch.compiler.is_exporting() or onnx_export


def _is_pow2(n: int) -> bool:
    return 16 <= n <= 256 and not n & (n - 1)


def scan_path(q: torch.Tensor, v: torch.Tensor, rule: str, bounded: bool = True) -> tuple[str, str]:
    """``("triton" | "chunked", reason)`` for a scan over these inputs."""
    if _tracing_for_export():
        return "chunked", "tracing for export: the plain PyTorch form is traced"
    if not q.is_cuda:
        return "chunked", f"tensors on {q.device.type}: the Triton kernel needs CUDA"
    if not _TRITON_ENABLED:
        return "chunked", "the Triton kernel was turned off with seqedge.scan.dispatch.use_triton_kernels(False)"
    if not _triton_available():
        return "chunked", "triton is not installed (pip install triton) for the GPU kernel"
    if not bounded:
        return "chunked", "the Triton kernel takes gates bounded by g_min (the sigmoid gate) only"
    if q.dtype not in _KERNEL_DTYPES:
        return "chunked", f"the Triton kernel takes float32 or bfloat16, got {q.dtype}"
    if not (_is_pow2(q.shape[-1]) and _is_pow2(v.shape[-1])):
        return "chunked", f"head dims {q.shape[-1]}, {v.shape[-1]} are not powers of two in [16, 256]"
    return "triton", f"CUDA tensors, {rule} rule"


def _tell_once(path: str, reason: str) -> None:
    key = f"{path}: {reason}"
    if key not in _TOLD:
        _TOLD.add(key)
        name = ("Triton chunk-scan kernel (seqedge.kernels)" if path == "triton"
                else "chunked PyTorch scan (seqedge.scan.chunked_scan)")
        logger.warning("seqedge: the sequence scan runs the %s (%s)", name, reason)


def sequence_scan(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    beta: torch.Tensor,
    *,
    rule: str,
    initial_state: torch.Tensor | None,
    chunk_size: int,
    scale: float | None = None,
    bounded: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The scan over a sequence, arguments as in :func:`seqedge.scan.chunked_scan`.

    o is float32 on the chunked path and in q's dtype on the Triton path; the final state is float32.
    """
    path, reason = scan_path(q, v, rule, bounded)
    if not torch.compiler.is_compiling():
        _tell_once(path, reason)
    if path == "triton":
        from seqedge.kernels import chunk_scan, delta_scan

        scan = delta_scan if rule == "delta" else chunk_scan
        return scan(q, k, v, g, beta, initial_state=initial_state, output_final_state=True, scale=scale)
    return chunked_scan(q, k, v, g, beta, rule=rule, scale=scale, initial_state=initial_state,
                        chunk_size=chunk_size, bounded=bounded)
