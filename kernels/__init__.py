"""GPU custom ops (Triton) for the chunked scan and the fused decode step, with CPU fallbacks.

    >>> import torch
    >>> from seqedge.kernels import chunk_scan
    >>> B, T, H, dk, dv = 1, 100, 2, 64, 64
    >>> q, k = torch.randn(B, T, H, dk), torch.randn(B, T, H, dk)
    >>> v, g = torch.randn(B, T, H, dv), -5 * torch.rand(B, T, H, dk)
    >>> o, state = chunk_scan(q, k, v, g, torch.rand(B, T, H), output_final_state=True)   # CPU: chunked form
    >>> o.shape, state.shape
    (torch.Size([1, 100, 2, 64]), torch.Size([1, 2, 64, 64]))

Importing this package imports neither triton nor CUDA (tests/test_kernels_cpu.py checks it); the Triton modules
(:mod:`seqedge.kernels.chunk_scan_triton`, :mod:`seqedge.kernels.step_scan_triton`) load on the first CUDA call.
The backward of :func:`chunk_scan` is Triton too (:mod:`seqedge.kernels.chunk_scan_bwd_triton`).
Whole-model decode: :class:`seqedge.kernels.decode_graph.GraphDecoder` (the model's step in one CUDA graph) and
``seqedge.kernels.FusedDecoder`` (:mod:`seqedge.kernels.decode_fused`: ~5 Triton launches per layer in one graph;
loaded, with triton, on first access).
"""

from __future__ import annotations

import torch

from seqedge.scan import check_scan_inputs, check_step_inputs

from . import delta_ops, ops

__all__ = ["chunk_scan", "delta_scan", "step_scan"]   # FusedDecoder is left out: a star import must not import triton


def __getattr__(name: str):
    """``seqedge.kernels.FusedDecoder``, imported on first access (its module imports triton)."""
    if name == "FusedDecoder":
        from .decode_fused import FusedDecoder

        return FusedDecoder
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def chunk_scan(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    beta: torch.Tensor,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = False,
    scale: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The gated scan ``S_t = diag(exp g_t) S_{t-1} + beta_t k_t^T v_t``, ``o_t = scale q_t S_t`` as a custom op.

    Args: q, k ``[B, T, H, dk]`` and v ``[B, T, H, dv]`` (all float32 or all bfloat16 on CUDA); g ``[B, T, H, dk]``
    log forget gates in [-5, 0]; beta ``[B, T, H]``; initial_state ``[B, H, dk, dv]`` float32 or None (zeros);
    scale defaults to dk ** -0.5. Any T, B, H; on CUDA dk and dv are powers of two in [16, 256].
    Returns o ``[B, T, H, dv]`` in q's dtype and, if ``output_final_state``, the final state ``[B, H, dk, dv]``
    float32 (else None). Differentiable in every input, initial_state included; works under torch.compile.
    """
    check_scan_inputs(q, k, v, g, beta, "gated", initial_state)
    scale = q.shape[-1] ** -0.5 if scale is None else float(scale)
    if ops.calls_cuda_directly(q, k, v, g, beta, initial_state):
        o, final = ops.chunk_scan_gated_cuda(q, k, v, g, beta, initial_state, scale)
    else:
        o, final = ops.chunk_scan_gated(q, k, v, g, beta, initial_state, scale)
    return o, (final if output_final_state else None)


def delta_scan(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    beta: torch.Tensor,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = False,
    scale: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The delta rule ``S_t = D_t S_{t-1} + beta_t k_t^T (v_t - k_t D_t S_{t-1})``, ``D_t = diag(exp g_t)``,
    ``o_t = scale q_t S_t``, as the custom op ``seqedge::chunk_scan_delta``.

    Args: q, k ``[B, T, H, dk]`` (L2-normalised keys keep the rule stable) and v ``[B, T, H, dv]``, all float32 or
    all bfloat16 on CUDA; g log forget gates in [-5, 0], ``[B, T, H, dk]`` (one per key: the ``delta`` rule, as
    KDA) or ``[B, T, H]`` / ``[B, T, H, 1]`` (one per head: Gated DeltaNet); beta ``[B, T, H]``; initial_state
    ``[B, H, dk, dv]`` float32 or None (zeros); scale defaults to dk ** -0.5. On CUDA dk and dv are powers of two
    in [16, 256]. Returns o ``[B, T, H, dv]`` in q's dtype and, if ``output_final_state``, the final state
    ``[B, H, dk, dv]`` float32 (else None). Differentiable in every input; works under torch.compile.
    """
    gate = g.unsqueeze(-1) if g.dim() == 3 else g
    if gate.dim() != 4 or gate.shape[-1] not in (1, q.shape[-1]):
        raise ValueError(f"g must be [B, T, H, dk], [B, T, H, 1] or [B, T, H], got shape {tuple(g.shape)}")
    check_scan_inputs(q, k, v, gate.expand(*gate.shape[:-1], q.shape[-1]), beta, "delta", initial_state)
    scale = q.shape[-1] ** -0.5 if scale is None else float(scale)
    if ops.calls_cuda_directly(q, k, v, gate, beta, initial_state):
        o, final, _ = delta_ops.chunk_scan_delta_cuda(q, k, v, gate, beta, initial_state, scale)
    else:
        o, final, _ = delta_ops.chunk_scan_delta(q, k, v, gate, beta, initial_state, scale)
    return o, (final if output_final_state else None)


def step_scan(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    beta: torch.Tensor,
    state: torch.Tensor,
    *,
    rule: str,
    scale: float | None = None,
) -> torch.Tensor:
    """One decode step of either rule, updating ``state`` in place (same address before and after).

    Args: q, k, g ``[B, H, dk]``; v ``[B, H, dv]``; beta ``[B, H]``; state ``[B, H, dk, dv]`` float32,
    contiguous. Returns o ``[B, H, dv]`` float32. Same math as :func:`seqedge.scan.recurrent_step`.
    """
    dk = check_step_inputs(q, k, v, g, beta, rule, state)[2]
    scale = dk ** -0.5 if scale is None else float(scale)
    return ops.step_scan_op(q, k, v, g, beta, state, rule == "delta", scale)
