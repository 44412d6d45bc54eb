"""The CUDA backward of the delta rule's chunked scan, all Triton (see :mod:`seqedge.kernels.delta_scan_triton`'s
docstring).

First the state entering every piece: the forward's saved ones, else a re-scan (forward in time, the final states
only). Then per piece, last piece first:
the prep (with its inverse); the states entering every chunk and u (forward in time); the state gradients and du
(backward in time); then, every chunk in parallel, the chunk-local gradients to q, k, v, g, beta
(:mod:`seqedge.kernels.delta_bwd_local_triton`). The scans keep only B*H*dv/block_v programs busy, so the preps
and scans run on a high-priority side stream and the chunk-local gradients of one piece (and, in the first pass,
the next piece's prep) fill the card beside them on the caller's stream. Memory: two pieces' workspace, whatever
the length. Autograd of :func:`seqedge.kernels.delta_operands.chunk_operands` is the reference the interpreter
checks compare the chunk-local kernel with.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from . import delta_operands
from .chunk_scan_triton import dot_precision, fastest
from .delta_bwd_local_triton import local_grads
from .delta_scan_triton import (
    SCAN_PRIORITY,
    DeltaConfig,
    dstate_piece,
    on_stream,
    prep,
    recorded,
    scan_piece,
    shape_key,
    side_stream,
)

# The backward's launches, picked by timing each at B=1, H=16, dk=dv=128, bf16
# (benchmarks/probes/delta_bwd_profile.py): the two scans want the most programs (block_v 16); the chunk-local
# kernel (one program per chunk and key block, its products over the values block by block) is latency-bound:
# 64 key columns and four warps left the whole backward fastest beside the scans (more, smaller programs took
# multiprocessors from the scans), its products over the values 64 columns at a time (fewer, larger dots than 32:
# 6-8% less time for the whole backward, either gate kind). With a gate per key, chunk 64 makes the scans faster
# but the whole backward slower (the chunk-local kernel's 16x16 decayed blocks grow with the chunk's square). Three
# stages load the forward-order scan's chunks two ahead (as the forward's configs); the reverse scan neither gains
# nor loses.
BWD_CONFIG = DeltaConfig(chunk=32, block_v=16, num_stages=3)
LOCAL_WARPS = 4
LOCAL_BLOCK_K = 64
LOCAL_BLOCK_V = 64


@dataclass(frozen=True)
class BwdLaunch:
    """One way to run the backward: the prep's and scans' config, the chunk-local kernel's key block, value block
    and warps, and (a gate per head) whether its dots take operands formed in the kernel in the workspace's dtype
    (``local_low_dots``, :func:`~seqedge.kernels.delta_bwd_local_triton.local_grads`)."""

    config: DeltaConfig = BWD_CONFIG
    local_block_k: int = LOCAL_BLOCK_K
    local_warps: int = LOCAL_WARPS
    local_block_v: int = LOCAL_BLOCK_V
    local_low_dots: bool = False


# With a gate per head the chunk-local kernel keeps a chunk's terms in registers (no scratch), and there a chunk of
# 64 (half the scans' sequential steps) made the whole backward fastest (benchmarks/probes/delta_bwd_profile.py
# --configs); which launch wins is timed once per shape class (as the forward's configs), the first being what a
# CUDA graph capture gets. That chunk-64 launch rounds the operands its chunk-local kernel forms to the inputs'
# dtype before their dots (local_low_dots; float32 inputs keep float32), which the whole per-head backward runs
# faster with than with float32 operands at the same blocks (benchmarks/results/delta_kernels.md).
_C64 = DeltaConfig(chunk=64, block_v=16, num_stages=3)
BWD_LAUNCHES = {False: (BwdLaunch(),),
                True: (BwdLaunch(_C64, local_warps=8, local_low_dots=True), BwdLaunch(),
                       BwdLaunch(local_block_k=128, local_warps=8))}
# Candidates: checked by the GPU tests like BWD_LAUNCHES, timed by benchmarks/probes/delta_bwd_profile.py
# --configs, never picked; one joins BWD_LAUNCHES once a card has run the GPU tests with it and timed it.
PENDING_BWD_LAUNCHES: dict[bool, tuple[BwdLaunch, ...]] = {False: (), True: ()}
_PICKED_BWD: dict = {}


def _entering_states(q, k, v, g, beta, initial_state, starts: list[int], piece: int, scale: float,
                     config: DeltaConfig, scans) -> list:
    """The state entering each piece (``initial_state`` first, which may be None); with a ``scans`` stream the
    scans run there and the next piece's prep beside them on the caller's stream."""
    B, T, H, DK = q.shape
    DV = v.shape[-1]
    make = lambda t0: prep(*(x[:, t0:t0 + piece].contiguous() for x in (q, k, v, g, beta)), scale, config)
    main = torch.cuda.current_stream(q.device) if scans is not None else None
    entering, scanned = [initial_state], []
    ops = make(starts[0]) if len(starts) > 1 else None
    for i in range(len(starts) - 1):
        if scans is not None:
            scans.wait_stream(main)                  # this piece's prep (and the inputs) are ready
        with on_stream(scans):
            leaving = torch.empty(B, H, DK, DV, dtype=torch.float32, device=q.device)
            scan_piece(ops, None, entering[-1], leaving, config)
        entering.append(leaving)
        if scans is not None:
            for t in ops:
                t.record_stream(scans)               # made on the caller's stream, read on the scans' one
            scanned.append(recorded(scans))
            if i >= 1:
                scanned[i - 1].synchronize()         # two preps alive at most
        if i + 2 < len(starts):                      # the leaving state of the next piece is needed too
            ops = make(starts[i + 1])
    if scans is not None:
        main.wait_stream(scans)
    return entering


def workspace_dtype(q: torch.Tensor) -> torch.dtype:
    """The dtype of the chunk states, their gradients, u and du handed from the scans to the chunk-local kernel: the
    inputs' (bf16 inputs: the scans' dots read the state in bf16 already; float32 stays exact). Halves the
    chunk-local kernel's largest loads and the backward's workspace for bf16."""
    return q.dtype


def _piece_recurrences(q, k, v, g, beta, s_in, do, d_out, scale: float, config: DeltaConfig):
    """One contiguous piece's prep and its two scans: the chunk-local kernel's operands ``(u, du, states, dstates,
    inv)`` (the first four in :func:`workspace_dtype`) and the gradient of ``s_in``."""
    B, T, H, DK = q.shape
    DV = v.shape[-1]
    qt, kt, A, w, u0, decay, inv = prep(q, k, v, g, beta, scale, config, with_inverse=True)
    ops = (qt, kt, A, w, u0, decay)
    nc = A.shape[1]
    f32 = dict(dtype=torch.float32, device=q.device)
    states = torch.empty(B * H, nc, DK, DV, dtype=workspace_dtype(q), device=q.device)
    u = torch.empty(B, T, H, DV, dtype=states.dtype, device=q.device)
    scan_piece(ops, None, s_in, torch.empty(B, H, DK, DV, **f32), config, store=(states, u))
    dstates, du, d_in = torch.empty_like(states), torch.empty_like(u), torch.empty(B, H, DK, DV, **f32)
    dstate_piece(ops, do, d_out, dstates, du, d_in, config)
    return (u, du, states, dstates, inv), d_in


def delta_scan_bwd(q, k, v, g, beta, initial_state, do, dfinal, scale: float, launch: BwdLaunch = BwdLaunch(),
                   piece: int | None = None, entering: torch.Tensor | None = None) -> tuple[torch.Tensor, ...]:
    """(dq, dk, dv, dg, dbeta, dinitial_state) for contiguous CUDA inputs under ``launch``; the gradients in the
    inputs' dtypes, the initial state's float32. ``piece``: tokens per piece (default
    :data:`~seqedge.kernels.delta_operands.PIECE`, rounded down to whole chunks); ``entering``: the forward's
    float32 ``[P, B, H, dk, dv]`` states entering the pieces after the first (its ``piece`` must be the same), else
    they are re-scanned. The side stream is used except while a CUDA graph is captured and in Triton's interpreter
    (CPU tensors)."""
    config = launch.config
    T = q.shape[1]
    piece = max((piece or delta_operands.PIECE) // config.chunk, 1) * config.chunk
    starts = list(range(0, T, piece)) or [0]
    assert entering is None or entering.shape[0] == len(starts) - 1, "the forward's pieces are the backward's"
    scans = None
    if q.is_cuda and not torch.cuda.is_current_stream_capturing():
        scans = side_stream(q.device, SCAN_PRIORITY)
    main = torch.cuda.current_stream(q.device) if scans is not None else None
    if entering is not None:
        entering = [initial_state, *entering.unbind(0)]
    else:
        with torch.no_grad():
            entering = _entering_states(q, k, v, g, beta, initial_state, starts, piece, scale, config, scans)
    outs = [torch.empty_like(x) for x in (q, k, v, g, beta)]
    d_state = dfinal.float().contiguous()
    done = []                                        # per piece: its chunk-local gradients written
    if scans is not None:
        scans.wait_stream(main)                      # dfinal and do are ready
    for n, (t0, s_in) in enumerate(zip(reversed(starts), reversed(entering))):
        if scans is not None and n >= 2:
            done[n - 2].synchronize()                # two pieces' workspace at most: its memory is free again
        sl = slice(t0, t0 + piece)
        with on_stream(scans):
            xs = [x[:, sl].contiguous() for x in (q, k, v, g, beta, do)]
            piece_ops, d_state = _piece_recurrences(*xs[:5], s_in, xs[5], d_state, scale, config)
        if scans is not None:
            main.wait_stream(scans)
            for t in (*xs, *piece_ops):
                t.record_stream(main)                # made on the scans' stream, read on this one
        local_grads(*xs, *piece_ops, scale, config.chunk, launch.local_block_k, launch.local_block_v,
                    launch.local_warps, dot_precision(q.dtype), out=[x[:, sl] for x in outs],
                    low_dots=launch.local_low_dots)
        if scans is not None:
            done.append(recorded(main))
    if scans is not None:
        d_state.record_stream(main)
    return (*outs, d_state)


def pick_launch(q, k, v, g, beta, initial_state, do, dfinal, scale: float,
                entering: torch.Tensor | None) -> BwdLaunch:
    """The fastest of :data:`BWD_LAUNCHES` for these gates and this shape class (timed once per class)."""
    return fastest(BWD_LAUNCHES[g.shape[-1] == 1], shape_key(q, v, g), _PICKED_BWD,
                   lambda c: delta_scan_bwd(q, k, v, g, beta, initial_state, do, dfinal, scale, c,
                                            entering=entering),
                   warmup=5, rep=20)
