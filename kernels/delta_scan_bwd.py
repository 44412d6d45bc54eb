"""The CUDA backward of the delta rule's chunked scan, all Triton (see :mod:`seqedge.kernels.delta_scan_triton`'s
docstring).

Per piece of the sequence, last piece first: the prep (with its inverse); the states entering every chunk and u
(forward in time); the state gradients and du (backward in time); then, every chunk in parallel, the chunk-local
gradients to q, k, v, g, beta (:mod:`seqedge.kernels.delta_bwd_local_triton`). Memory: one piece's workspace,
whatever the length. Autograd of :func:`seqedge.kernels.delta_operands.chunk_operands` is the reference the
interpreter checks compare the chunk-local kernel with.
"""

from __future__ import annotations

import torch

from .chunk_scan_triton import dot_precision
from .delta_bwd_local_triton import local_grads
from .delta_scan_triton import DeltaConfig, dstate_piece, prep, scan_piece

BWD_PIECE = 8192    # tokens per piece of the backward (its float32 workspace: states and their gradients per chunk)
LOCAL_WARPS = 8     # the chunk-local gradient kernel holds several [C, dv] float32 tiles at once


def _piece_grads(q, k, v, g, beta, s_in, do, d_out, scale: float, config: DeltaConfig):
    """Gradients of one contiguous piece: (dq, dk, dv, dg, dbeta) float32 and the gradient of ``s_in``."""
    B, T, H, DK = q.shape
    DV = v.shape[-1]
    qt, kt, A, w, u0, decay, inv = prep(q, k, v, g, beta, scale, config, with_inverse=True)
    ops = (qt, kt, A, w, u0, decay)
    nc = A.shape[1]
    f32 = dict(dtype=torch.float32, device=q.device)
    states = torch.empty(B * H, nc, DK, DV, **f32)
    u = torch.empty(B, T, H, DV, **f32)
    scan_piece(ops, None, s_in, torch.empty(B, H, DK, DV, **f32), config, store=(states, u))
    dstates, du, d_in = torch.empty_like(states), torch.empty_like(u), torch.empty(B, H, DK, DV, **f32)
    dstate_piece(ops, do, d_out, dstates, du, d_in, config)
    grads = local_grads(q, k, v, g, beta, do, u, du, states, dstates, inv, w, u0, scale, config.chunk,
                        config.prep_block_k, LOCAL_WARPS, dot_precision(q.dtype))
    return grads, d_in


def delta_scan_bwd(q, k, v, g, beta, initial_state, do, dfinal, scale: float, config: DeltaConfig,
                   piece: int | None = None) -> tuple[torch.Tensor, ...]:
    """(dq, dk, dv, dg, dbeta, dinitial_state) for contiguous CUDA inputs; the gradients in the inputs' dtypes,
    the initial state's float32. ``piece``: tokens per piece (default :data:`BWD_PIECE`)."""
    B, T, H, DK = q.shape
    DV = v.shape[-1]
    piece = max((piece or BWD_PIECE) // config.chunk, 1) * config.chunk
    starts = list(range(0, T, piece)) or [0]
    entering = [initial_state]
    state = initial_state
    with torch.no_grad():
        for t0 in starts[:-1]:                     # the state entering each piece
            sl = slice(t0, t0 + piece)
            nxt = torch.empty(B, H, DK, DV, dtype=torch.float32, device=q.device)
            scan_piece(prep(*(x[:, sl].contiguous() for x in (q, k, v, g, beta)), scale, config), None, state,
                       nxt, config)
            entering.append(nxt)
            state = nxt
    outs = [torch.empty_like(x) for x in (q, k, v, g, beta)]
    d_state = dfinal.float().contiguous()
    for t0, s_in in zip(reversed(starts), reversed(entering)):
        sl = slice(t0, t0 + piece)
        xs = [x[:, sl].contiguous() for x in (q, k, v, g, beta, do)]
        grads, d_state = _piece_grads(*xs[:5], s_in, xs[5], d_state, scale, config)
        for dst, src in zip(outs, grads):
            dst[:, sl] = src.to(dst.dtype)
    return (*outs, d_state)
