"""torch.library registration of the delta rule's chunk scan: custom ops with a fake implementation and autograd.

``seqedge::chunk_scan_delta``      forward: Triton on CUDA (:mod:`seqedge.kernels.delta_scan_triton`), the chunked
    PyTorch form on every other device.
``seqedge::chunk_scan_delta_bwd``  backward: on CUDA the Triton recurrences with autograd through the chunk-local
    operands (:mod:`seqedge.kernels.delta_scan_bwd`); elsewhere the chunked form recomputed segment by segment
    and differentiated by autograd (:func:`seqedge.kernels.ops.recompute_backward`), the reference.
g is ``[B, T, H, dk]`` (a gate per key, the native ``delta`` rule) or ``[B, T, H, 1]`` (one per head, Gated
DeltaNet). Importing this module imports neither triton nor CUDA.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from seqedge.scan import chunked_scan

from .delta_operands import expand_gate
from .ops import state_dtype, check_cuda_inputs, recompute_backward, register_scan_autograd


@torch.library.custom_op("seqedge::chunk_scan_delta", mutates_args=())
def chunk_scan_delta(q: Tensor, k: Tensor, v: Tensor, g: Tensor, beta: Tensor, initial_state: Optional[Tensor],
                     scale: float) -> tuple[Tensor, Tensor]:
    """Default (non-CUDA) implementation: the chunked PyTorch form. o in q's dtype, state float32/float64."""
    o, state = chunked_scan(q, k, v, expand_gate(g, q.shape[-1]), beta, rule="delta", scale=scale,
                            initial_state=initial_state)
    return o.to(q.dtype).contiguous(), state.to(state_dtype(q)).contiguous()


@chunk_scan_delta.register_kernel("cuda")
def chunk_scan_delta_cuda(q, k, v, g, beta, initial_state, scale):
    """CUDA implementation: the Triton forward with the fastest config for the shape."""
    from .delta_scan_triton import delta_scan_fwd, pick_config

    check_cuda_inputs("delta scan", q, k, v)
    q, k, v, g, beta = (x.contiguous() for x in (q, k, v, g, beta))
    init = None if initial_state is None else initial_state.float().contiguous()
    config = pick_config(q, k, v, g, beta, init, scale)
    return delta_scan_fwd(q, k, v, g, beta, init, scale, config)


@chunk_scan_delta.register_fake
def _chunk_scan_delta_fake(q, k, v, g, beta, initial_state, scale):
    B, T, H, dk = q.shape
    return q.new_empty(B, T, H, v.shape[-1]), q.new_empty(B, H, dk, v.shape[-1], dtype=state_dtype(q))


@torch.library.custom_op("seqedge::chunk_scan_delta_bwd", mutates_args=())
def chunk_scan_delta_bwd(q: Tensor, k: Tensor, v: Tensor, g: Tensor, beta: Tensor, initial_state: Optional[Tensor],
                         do: Tensor, dfinal: Tensor, scale: float) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor,
                                                                            Tensor]:
    """Gradients (dq, dk, dv, dg, dbeta, dinitial_state); default (non-CUDA) implementation: the reference."""
    return recompute_backward("delta", chunk_scan_delta, q, k, v, g, beta, initial_state, do, dfinal, scale)


@chunk_scan_delta_bwd.register_kernel("cuda")
def _chunk_scan_delta_bwd_cuda(q, k, v, g, beta, initial_state, do, dfinal, scale):
    from . import delta_scan_bwd as bwd

    check_cuda_inputs("delta scan", q, k, v)
    q, k, v, g, beta = (x.contiguous() for x in (q, k, v, g, beta))
    init = None if initial_state is None else initial_state.float().contiguous()
    if q.shape[1] == 0:
        return (*(torch.zeros_like(x) for x in (q, k, v, g, beta)), dfinal.float().clone())
    return bwd.delta_scan_bwd(q, k, v, g, beta, init, do.to(q.dtype).contiguous(), dfinal, scale, bwd.BWD_CONFIG)


@chunk_scan_delta_bwd.register_fake
def _chunk_scan_delta_bwd_fake(q, k, v, g, beta, initial_state, do, dfinal, scale):
    B, H, dk, dv = dfinal.shape
    return (*(torch.empty_like(x) for x in (q, k, v, g, beta)), q.new_empty(B, H, dk, dv, dtype=state_dtype(q)))


register_scan_autograd(chunk_scan_delta, chunk_scan_delta_bwd)
