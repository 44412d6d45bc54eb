"""Which implementation runs the sequence scan, and telling the user once which one does.

- After :func:`use_triton_kernels` (opt-in, see below) and for CUDA tensors, gated rule, float32/bfloat16, head
  dims the kernel takes, not tracing for export: the Triton custom op ``seqedge::chunk_scan_gated``
  (:func:`seqedge.kernels.chunk_scan`).
- Anything else: the chunked PyTorch form (:func:`seqedge.scan.chunked_scan`). Export (torch.export, torch.jit
  tracing, ONNX export) always traces this plain form, so artifacts never contain the custom op.
Each path is announced once per process with a WARNING on the ``seqedge.scan`` logger, with the reason.

The Triton kernel is opt-in until its GPU test suite (tests/test_kernels_gpu.py) has passed in full on a GPU:
its recorded run (benchmarks/results/kernels_gpu_tests.md) covers only part of the cases, and a training run must
never rest on an unverified kernel by default.
"""

from __future__ import annotations

import logging

import torch

from .chunked import chunked_scan

logger = logging.getLogger("seqedge.scan")
_TOLD: set[str] = set()
_KERNEL_DTYPES = (torch.float32, torch.bfloat16)
_TRITON_ENABLED = False


def use_triton_kernels(enabled: bool = True) -> None:
    """Opt in (or out) of the Triton chunk-scan kernel for CUDA tensors in this process."""
    global _TRITON_ENABLED
    _TRITON_ENABLED = bool(enabled)


def _tracing_for_export() -> bool:
    onnx_export = getattr(torch.onnx, "is_in_onnx_export", lambda: False)()
    return torch.jit.is_tracing() or torch.compiler.is_exporting() or onnx_export


def _is_pow2(n: int) -> bool:
    return 16 <= n <= 256 and not n & (n - 1)


def scan_path(q: torch.Tensor, v: torch.Tensor, rule: str) -> tuple[str, str]:
    """``("triton" | "chunked", reason)`` for a scan over these inputs."""
    if _tracing_for_export():
        return "chunked", "tracing for export: the plain PyTorch form is traced"
    if not q.is_cuda:
        return "chunked", f"tensors on {q.device.type}: the Triton kernel needs CUDA"
    if not _TRITON_ENABLED:
        return "chunked", ("the Triton kernel is opt-in until its GPU tests pass in full: "
                           "seqedge.scan.dispatch.use_triton_kernels()")
    if rule != "gated":
        return "chunked", f"no GPU kernel for the {rule!r} rule yet"
    if q.dtype not in _KERNEL_DTYPES:
        return "chunked", f"the Triton kernel takes float32 or bfloat16, got {q.dtype}"
    if not (_is_pow2(q.shape[-1]) and _is_pow2(v.shape[-1])):
        return "chunked", f"head dims {q.shape[-1]}, {v.shape[-1]} are not powers of two in [16, 256]"
    return "triton", "CUDA tensors, gated rule"


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
) -> tuple[torch.Tensor, torch.Tensor]:
    """The scan over a sequence, shapes as in :func:`seqedge.scan.chunked_scan`.

    o is float32 on the chunked path and in q's dtype on the Triton path; the final state is float32.
    """
    path, reason = scan_path(q, v, rule)
    if not torch.compiler.is_compiling():
        _tell_once(path, reason)
    if path == "triton":
        from seqedge.kernels import chunk_scan

        return chunk_scan(q, k, v, g, beta, initial_state=initial_state, output_final_state=True)
    return chunked_scan(q, k, v, g, beta, rule=rule, initial_state=initial_state, chunk_size=chunk_size)
