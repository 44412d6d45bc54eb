"""The CUDA backward of the delta rule's chunked scan: Triton for the chunk recurrences, batched matrix products
and autograd for the chunk-local part (see :mod:`seqedge.kernels.delta_scan_triton`'s docstring).

Per piece of the sequence, last piece first: the prep; the states entering every chunk and u (forward in time);
the state gradients and du (backward in time); then, all chunks at once, the gradients of the prep's operands,
``dqt = do S^T``, ``dA = tril(do u^T)``, ``dkt = u dS'^T``, ``dw = -du S^T``, ``du0 = du``,
``db_C = exp(b_C) rowsum(S * dS')``, chained to q, k, v, g, beta by autograd through
:func:`seqedge.kernels.delta_operands.chunk_operands`. Memory: one piece's workspace, whatever the length.
"""

from __future__ import annotations

import torch

from .delta_operands import chunk_layout, chunk_operands
from .delta_scan_triton import DeltaConfig, dstate_piece, prep, scan_piece
from .ops import autograd_inside_op

BWD_PIECE = 8192    # tokens per piece of the backward (its float32 autograd workspace is a few times the piece)


def _piece_grads(q, k, v, g, beta, s_in, do, d_out, scale: float, config: DeltaConfig):
    """Gradients of one contiguous piece: (dq, dk, dv, dg, dbeta) float32 and the gradient of ``s_in``."""
    B, T, H, DK = q.shape
    DV = v.shape[-1]
    C = config.chunk
    ops = prep(q, k, v, g, beta, scale, config)
    nc = ops[2].shape[1]
    f32 = dict(dtype=torch.float32, device=q.device)
    states = torch.empty(B * H, nc, DK, DV, **f32)
    u = torch.empty(B, T, H, DV, **f32)
    scan_piece(ops, None, s_in, torch.empty(B, H, DK, DV, **f32), config, store=(states, u))
    dstates, du, d_in = torch.empty_like(states), torch.empty_like(u), torch.empty(B, H, DK, DV, **f32)
    dstate_piece(ops, do, d_out, dstates, du, d_in, config)
    decay = ops[5]
    del ops
    S = states.view(B, H, nc, DK, DV)
    dS = dstates.view(B, H, nc, DK, DV)
    do_c, u_c, du_c = (chunk_layout(x.float(), C) for x in (do, u, du))
    St = S.transpose(-1, -2)
    d_last = torch.exp(decay.view(B, H, nc, DK)) * (S * dS).sum(-1)
    cots = (do_c @ St, u_c @ dS.transpose(-1, -2), (do_c @ u_c.transpose(-1, -2)).tril(), -(du_c @ St), du_c,
            d_last)
    with autograd_inside_op():         # the custom op's dispatcher turned autograd off around this call
        ins = [x.detach().float().requires_grad_() for x in (q, k, v, g, beta)]
        outs = chunk_operands(*ins, scale=scale, chunk=C)
        grads = torch.autograd.grad(outs, ins, cots)
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
