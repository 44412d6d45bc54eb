"""torch.library registration of the delta rule's chunk scan: custom ops with a fake implementation and autograd.

``seqedge::chunk_scan_delta``      forward: Triton on CUDA (:mod:`seqedge.kernels.delta_scan_triton`), the chunked
    PyTorch form on every other device. Besides o and the final state it returns the state entering each piece of
    :data:`~seqedge.kernels.delta_operands.PIECE` tokens after the first, which autograd saves for the backward.
``seqedge::chunk_scan_delta_bwd``  backward: on CUDA the Triton recurrences and chunk-local gradients from those
    saved states (:mod:`seqedge.kernels.delta_scan_bwd`); elsewhere the chunked form recomputed segment by segment
    and differentiated by autograd (:func:`seqedge.kernels.ops.recompute_backward`), the reference.
g is ``[B, T, H, dk]`` (a gate per key, the native ``delta`` rule) or ``[B, T, H, 1]`` (one per head, Gated
DeltaNet). Importing this module imports neither triton nor CUDA.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from seqedge.scan import chunked_scan

from . import delta_operands
from .delta_operands import expand_gate
from .ops import state_dtype, check_cuda_inputs, recompute_backward


@torch.library.custom_op("seqedge::chunk_scan_delta", mutates_args=())
def chunk_scan_delta(q: Tensor, k: Tensor, v: Tensor, g: Tensor, beta: Tensor, initial_state: Optional[Tensor],
                     scale: float) -> tuple[Tensor, Tensor, Tensor]:
    """Default (non-CUDA) implementation: the chunked PyTorch form, piece by piece. o in q's dtype; the final state
    and the states entering the pieces after the first ``[P, B, H, dk, dv]`` float32 (float64 for float64 q)."""
    B, T, H, dk = q.shape
    sdt = state_dtype(q)
    outs, entering, state = [], [], initial_state
    for t0 in range(0, max(T, 1), delta_operands.PIECE):
        sl = slice(t0, t0 + delta_operands.PIECE)
        o, state = chunked_scan(q[:, sl], k[:, sl], v[:, sl], expand_gate(g[:, sl], dk), beta[:, sl], rule="delta",
                                scale=scale, initial_state=state)
        state = state.to(sdt)
        outs.append(o.to(q.dtype))
        if t0 + delta_operands.PIECE < T:
            entering.append(state)
    saved = torch.stack(entering) if entering else q.new_empty(0, B, H, dk, v.shape[-1], dtype=sdt)
    return torch.cat(outs, dim=1).contiguous(), state.contiguous(), saved


@chunk_scan_delta.register_kernel("cuda")
def chunk_scan_delta_cuda(q, k, v, g, beta, initial_state, scale):
    """CUDA implementation: the Triton forward with the fastest config for the shape."""
    from .delta_scan_triton import delta_scan_fwd, pick_config

    check_cuda_inputs("delta scan", q, k, v)
    q, k, v, g, beta = (x.contiguous() for x in (q, k, v, g, beta))
    init = None if initial_state is None else initial_state.float().contiguous()
    config = pick_config(q, k, v, g, beta, init, scale)
    B, T, H, dk = q.shape
    saved = torch.empty(delta_operands.piece_count(T), B, H, dk, v.shape[-1], dtype=torch.float32, device=q.device)
    o, final = delta_scan_fwd(q, k, v, g, beta, init, scale, config, entering=saved)
    return o, final, saved


@chunk_scan_delta.register_fake
def _chunk_scan_delta_fake(q, k, v, g, beta, initial_state, scale):
    B, T, H, dk = q.shape
    dv = v.shape[-1]
    return (q.new_empty(B, T, H, dv), q.new_empty(B, H, dk, dv, dtype=state_dtype(q)),
            q.new_empty(delta_operands.piece_count(T), B, H, dk, dv, dtype=state_dtype(q)))


@torch.library.custom_op("seqedge::chunk_scan_delta_bwd", mutates_args=())
def chunk_scan_delta_bwd(q: Tensor, k: Tensor, v: Tensor, g: Tensor, beta: Tensor, initial_state: Optional[Tensor],
                         entering: Tensor, do: Tensor, dfinal: Tensor, scale: float) -> tuple[Tensor, Tensor, Tensor,
                                                                                              Tensor, Tensor, Tensor]:
    """Gradients (dq, dk, dv, dg, dbeta, dinitial_state); ``entering`` the forward's saved piece states. Default
    (non-CUDA) implementation: the reference, which recomputes its own."""
    forward = lambda *args: chunk_scan_delta(*args)[:2]
    return recompute_backward("delta", forward, q, k, v, g, beta, initial_state, do, dfinal, scale)


@chunk_scan_delta_bwd.register_kernel("cuda")
def _chunk_scan_delta_bwd_cuda(q, k, v, g, beta, initial_state, entering, do, dfinal, scale):
    from . import delta_scan_bwd as bwd

    check_cuda_inputs("delta scan", q, k, v)
    q, k, v, g, beta = (x.contiguous() for x in (q, k, v, g, beta))
    init = None if initial_state is None else initial_state.float().contiguous()
    if q.shape[1] == 0:
        return (*(torch.zeros_like(x) for x in (q, k, v, g, beta)), dfinal.float().clone())
    do, entering = do.to(q.dtype).contiguous(), entering.float()
    launch = bwd.pick_launch(q, k, v, g, beta, init, do, dfinal, scale, entering)
    return bwd.delta_scan_bwd(q, k, v, g, beta, init, do, dfinal, scale, launch, entering=entering)


@chunk_scan_delta_bwd.register_fake
def _chunk_scan_delta_bwd_fake(q, k, v, g, beta, initial_state, entering, do, dfinal, scale):
    B, H, dk, dv = dfinal.shape
    return (*(torch.empty_like(x) for x in (q, k, v, g, beta)), q.new_empty(B, H, dk, dv, dtype=state_dtype(q)))


def _setup_context(ctx, inputs, output):
    q, k, v, g, beta, initial_state, scale = inputs
    ctx.mark_non_differentiable(output[2])
    ctx.save_for_backward(q, k, v, g, beta, initial_state, output[2])
    ctx.scale = scale
    ctx.has_init = initial_state is not None


def _backward(ctx, do, dfinal, _dentering):
    q, k, v, g, beta, initial_state, entering = ctx.saved_tensors
    B, T, H, dk = q.shape
    dv = v.shape[-1]
    if do is None:
        do = torch.zeros(B, T, H, dv, dtype=q.dtype, device=q.device)
    if dfinal is None:
        dfinal = torch.zeros(B, H, dk, dv, dtype=state_dtype(q), device=q.device)
    dq, dk_, dv_, dg, dbeta, ds0 = chunk_scan_delta_bwd(q, k, v, g, beta, initial_state, entering, do, dfinal,
                                                        ctx.scale)
    return dq, dk_, dv_, dg, dbeta, (ds0.to(initial_state.dtype) if ctx.has_init else None), None


chunk_scan_delta.register_autograd(_backward, setup_context=_setup_context)
