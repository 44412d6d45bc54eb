"""Triton backward of the gated chunked scan, the CUDA path of ``seqedge::chunk_scan_gated_bwd``.

Imported only on the CUDA path (imports triton at top level). With ``b`` the within-chunk cumulative log-gates,
``kt = beta * k`` and the scan ``S_t = diag(exp g_t) S_{t-1} + kt_t^T v_t``, ``o_t = scale q_t S_t``, five
launches give every gradient:

0. The forward's prepass (``chunk_scan_triton._chunk_prep_kernel``, all chunks in parallel): everything of a
   chunk that does not depend on the state, ``qt = scale q exp(b)``, ``kt exp(b_C - b)``, the masked intra-chunk
   scores ``A`` and the chunk's log-decay ``b_C``, in the inputs' dtype. The sequential kernels below then only
   load operands and do one dot per chunk (recomputing them per state block would repeat that
   work for every block).
1. ``_states_kernel`` (forward in time): the state entering each chunk, ``states[n]``, and the final state at
   ``states[N]``. Rows of S are independent under diagonal gates, so programs split both state dims.
2. ``_dstates_kernel`` (backward in time): ``dstates[n]``, the gradient of the loss with respect to the state
   leaving chunk n through everything after it: ``dS_{n-1} = diag(exp b_C) dS_n + scale sum_t (q_t exp b_t)^T do_t``,
   starting from the gradient of the final state; what is left at the start is the initial state's gradient.
3. ``_grads_qk_kernel`` and ``_grads_v_kernel`` (all chunks in parallel, split over key or value columns so the
   tiles fit in shared memory): inside a chunk, with ``P = do v^T``,
   ``dq = scale (exp(b) * do S_prev^T + sum_s P[t, s] kt_s exp(b_t - b_s))``,
   ``dkt = exp(b_C - b) * v dS^T + scale sum_t P[t, s] q_t exp(b_t - b_s)``,
   ``dv = A^T do + (kt exp(b_C - b)) dS``, and for the gates, since the loss sees b only through
   ``q exp(b)`` and ``kt exp(-b)``: ``dg_t = sum_{s >= t} (q_s dq_s - kt_s dkt_s) + rowsum(dS * S_end)``, the last
   term carrying everything after the chunk. Exponents inside a chunk are referenced to the middle of 16-token
   blocks, as in the forward (:mod:`seqedge.kernels.chunk_scan_triton`), so nothing overflows for g >= -5.

Chunk states are stored in the inputs' dtype (bf16 halves that traffic; float32 inputs keep float32 states):
``(N + 1) * dk * dv`` values per (batch, head) each for ``states`` and ``dstates``, with the prepass's operands
about 42 KB per token at B=1, H=16, head dims 128, bf16. :func:`chunk_scan_bwd_segmented` bounds that by taking
the sequence in pieces (``seqedge.kernels.ops`` does when it would pass a fraction of the card's memory).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from . import chunk_scan_triton as _fwd
from .chunk_scan_triton import fastest, shape_class

_SUB = tl.constexpr(16)


@dataclass(frozen=True)
class BwdConfig:
    """One launch configuration of the backward: chunk length, warps of the gradient kernel, state-kernel blocks."""

    chunk: int
    num_warps: int
    block_k: int = 32          # state kernels: rows and columns of the state per program
    block_v: int = 64
    grad_block_k: int = 64     # gradient kernels: key and value columns per program (bounds shared memory)
    grad_block_v: int = 64
    prep_warps: int = 2        # the prepass launch (the forward's _chunk_prep_kernel)

    def __post_init__(self) -> None:
        if self.chunk % 16 or self.chunk <= 0:
            raise ValueError(f"chunk must be a positive multiple of 16, got {self.chunk}")


# Short on purpose: every entry is run and checked by tests/test_kernels_gpu.py, not only the one picked.
# Fastest first (benchmarks/kernels_bwd_configs.py times them). Chunk 64 with 64-column blocks needs 233 KB of
# shared memory at float32, over Hopper's 227 KB; the other excluded shapes are in docs/excluded-kernel-configs.md.
BWD_CONFIGS: tuple[BwdConfig, ...] = (
    BwdConfig(chunk=32, num_warps=4, block_k=64, block_v=64),
    BwdConfig(chunk=32, num_warps=4),
)


@triton.jit
def _states_kernel(v, kt, decay, s0, states, seg_state, seg_decay, T, H, NC, NSEG, PER, SEG_CHUNKS, NSUM,
                   DK: tl.constexpr, DV: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, C: tl.constexpr,
                   HAS_INIT: tl.constexpr, SUMMARY: tl.constexpr, PREC: tl.constexpr):
    """One (batch*head, segment) x (key block, value block): forward in time over the segment's chunks.

    SUMMARY: from zero, the segment's local final state and total log-decay into slot ``i_s``. Otherwise: from
    the joined state entering the segment, write ``states[n]`` for each of its chunks (and ``states[NC]``).
    The decayed keys ``kt`` and the chunk decays come from the prepass.
    """
    i_bh = tl.program_id(0) // PER
    i_s = tl.program_id(0) % PER
    i_k = tl.program_id(1)
    i_v = tl.program_id(2)
    i_b = i_bh // H
    i_h = i_bh % H
    rk = i_k * BK + tl.arange(0, BK)
    rv = i_v * BV + tl.arange(0, BV)
    rc = tl.arange(0, C)
    qk_base = i_b.to(tl.int64) * T * H * DK + i_h * DK
    v_base = i_b.to(tl.int64) * T * H * DV + i_h * DV
    st_off = rk[:, None] * DV + rv[None, :]
    st_base = i_bh.to(tl.int64) * (NC + 1) * DK * DV
    S = tl.zeros([BK, BV], dtype=tl.float32)
    if not SUMMARY:
        if i_s > 0:
            S = tl.load(seg_state + (i_bh.to(tl.int64) * NSUM + i_s - 1) * DK * DV + st_off)
        elif HAS_INIT:
            S = tl.load(s0 + i_bh.to(tl.int64) * DK * DV + st_off).to(tl.float32)
    D_acc = tl.zeros([BK], dtype=tl.float32)
    n0 = i_s * SEG_CHUNKS
    for n in range(n0, tl.minimum(n0 + SEG_CHUNKS, NC)):
        if not SUMMARY:
            tl.store(states + st_base + n * DK * DV + st_off, S.to(states.dtype.element_ty))
        rows = n * C + rc
        m = rows < T
        off_k = qk_base + rows[:, None].to(tl.int64) * (H * DK) + rk[None, :]
        b_v = tl.load(v + v_base + rows[:, None].to(tl.int64) * (H * DV) + rv[None, :], mask=m[:, None], other=0.0)
        k_dec = tl.load(kt + off_k, mask=m[:, None], other=0.0)
        b_last = tl.load(decay + (i_bh.to(tl.int64) * NC + n) * DK + rk)
        D_acc += b_last
        S = tl.exp(b_last)[:, None] * S + tl.dot(tl.trans(k_dec), b_v, input_precision=PREC)
    if SUMMARY:
        idx = i_bh.to(tl.int64) * NSUM + i_s
        tl.store(seg_state + idx * DK * DV + st_off, S)
        if i_v == 0:
            tl.store(seg_decay + idx * DK + rk, D_acc)
    elif i_s == NSEG - 1:
        tl.store(states + st_base + NC * DK * DV + st_off, S.to(states.dtype.element_ty))


@triton.jit
def _dstates_kernel(qt, decay, do, dfinal, dstates, ds0, seg_state, seg_decay, T, H, NC, NSEG, PER, OFF, SEG_CHUNKS,
                    NSUM, DK: tl.constexpr, DV: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, C: tl.constexpr,
                    SUMMARY: tl.constexpr, PREC: tl.constexpr):
    """One (batch*head, segment) x (key block, value block): backward in time over the segment's chunks.

    SUMMARY (segments 1 and later): from zero, the segment's local gradient and total log-decay into slot
    ``i_s - 1``. Otherwise: from the gradient leaving the segment (joined, or the final state's for the last
    segment), write ``dstates[n]`` for each chunk; the first segment also writes the initial state's gradient.
    The decayed, scaled queries ``qt`` and the chunk decays come from the prepass.
    """
    i_bh = tl.program_id(0) // PER
    i_s = tl.program_id(0) % PER + OFF
    i_k = tl.program_id(1)
    i_v = tl.program_id(2)
    i_b = i_bh // H
    i_h = i_bh % H
    DT = qt.dtype.element_ty
    rk = i_k * BK + tl.arange(0, BK)
    rv = i_v * BV + tl.arange(0, BV)
    rc = tl.arange(0, C)
    qk_base = i_b.to(tl.int64) * T * H * DK + i_h * DK
    v_base = i_b.to(tl.int64) * T * H * DV + i_h * DV
    st_off = rk[:, None] * DV + rv[None, :]
    st_base = i_bh.to(tl.int64) * (NC + 1) * DK * DV
    dS = tl.zeros([BK, BV], dtype=tl.float32)
    if not SUMMARY:
        if i_s < NSEG - 1:
            dS = tl.load(seg_state + (i_bh.to(tl.int64) * NSUM + i_s) * DK * DV + st_off)
        else:
            dS = tl.load(dfinal + i_bh.to(tl.int64) * DK * DV + st_off).to(tl.float32)
    D_acc = tl.zeros([BK], dtype=tl.float32)
    n0 = i_s * SEG_CHUNKS
    n1 = tl.minimum(n0 + SEG_CHUNKS, NC)
    for i in range(0, n1 - n0):
        n = n1 - 1 - i
        if not SUMMARY:
            tl.store(dstates + st_base + n * DK * DV + st_off, dS.to(dstates.dtype.element_ty))
        rows = n * C + rc
        m = rows < T
        off_k = qk_base + rows[:, None].to(tl.int64) * (H * DK) + rk[None, :]
        b_do = tl.load(do + v_base + rows[:, None].to(tl.int64) * (H * DV) + rv[None, :], mask=m[:, None], other=0.0)
        q_dec = tl.load(qt + off_k, mask=m[:, None], other=0.0)
        b_last = tl.load(decay + (i_bh.to(tl.int64) * NC + n) * DK + rk)
        D_acc += b_last
        dS = tl.exp(b_last)[:, None] * dS + tl.dot(tl.trans(q_dec), b_do.to(DT), input_precision=PREC)
    if SUMMARY:
        idx = i_bh.to(tl.int64) * NSUM + i_s - 1
        tl.store(seg_state + idx * DK * DV + st_off, dS)
        if i_v == 0:
            tl.store(seg_decay + idx * DK + rk, D_acc)
    elif i_s == 0:
        tl.store(ds0 + i_bh.to(tl.int64) * DK * DV + st_off, dS)


@triton.jit
def _grads_qk_kernel(q, k, v, g, beta, do, states, dstates, dq, dk, dg, dbeta_part, T, H, NC, scale,
                     DK: tl.constexpr, DV: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, C: tl.constexpr,
                     PREC: tl.constexpr):
    """dq, dk, dg and this key block's share of dbeta, for one (batch*head, chunk, key block).

    The value columns are walked once, for the terms through the states and for ``P = do v^T``; the intra-chunk
    terms then take P whole, one 16-token block of keys (for dq) or queries (for dk) at a time, each with its
    exponents referenced to that block's middle.
    """
    i_bh = tl.program_id(0)
    i_n = tl.program_id(1)
    i_k = tl.program_id(2)
    i_b = i_bh // H
    i_h = i_bh % H
    DT = q.dtype.element_ty
    rk = i_k * BK + tl.arange(0, BK)
    rc = tl.arange(0, C)
    rv0 = tl.arange(0, BV)
    qk_base = i_b.to(tl.int64) * T * H * DK + i_h * DK
    v_base = i_b.to(tl.int64) * T * H * DV + i_h * DV
    be_base = i_b.to(tl.int64) * T * H + i_h
    st_base = i_bh.to(tl.int64) * (NC + 1) * DK * DV + i_n.to(tl.int64) * DK * DV

    t0 = i_n * C
    rows = t0 + rc
    m = rows < T
    off_k = qk_base + rows[:, None].to(tl.int64) * (H * DK) + rk[None, :]

    dq_acc = tl.zeros([C, BK], dtype=tl.float32)      # do S_prev^T, then the intra-chunk terms (all without scale)
    dkt_acc = tl.zeros([C, BK], dtype=tl.float32)     # v dS^T, then the intra-chunk terms
    carry = tl.zeros([BK], dtype=tl.float32)          # rowsum(dS * S_end): the gates' gradient from later tokens
    p = tl.zeros([C, C], dtype=tl.float32)            # P[t, s] = do_t . v_s
    for i_v in range(0, DV // BV):
        rv = i_v * BV + rv0
        off_v = v_base + rows[:, None].to(tl.int64) * (H * DV) + rv[None, :]
        st_off = rk[:, None] * DV + rv[None, :]
        b_v = tl.load(v + off_v, mask=m[:, None], other=0.0).to(DT)             # [C, BV]
        b_do = tl.load(do + off_v, mask=m[:, None], other=0.0).to(DT)           # [C, BV]
        S_prev = tl.load(states + st_base + st_off).to(DT)                      # [BK, BV]
        dS = tl.load(dstates + st_base + st_off)                                # [BK, BV]
        S_end = tl.load(states + st_base + DK * DV + st_off).to(tl.float32)
        carry += tl.sum(dS.to(tl.float32) * S_end, axis=1)
        p += tl.dot(b_do, tl.trans(b_v), input_precision=PREC)
        dq_acc += tl.dot(b_do, tl.trans(S_prev), input_precision=PREC)
        dkt_acc += tl.dot(b_v, tl.trans(dS.to(DT)), input_precision=PREC)

    b_g = tl.load(g + off_k, mask=m[:, None], other=0.0).to(tl.float32)
    b_b = tl.cumsum(b_g, axis=0)                                               # [C, BK]
    b_last = tl.sum(b_g, axis=0)                                               # [BK]
    b_beta = tl.load(beta + be_base + rows.to(tl.int64) * H, mask=m, other=0.0).to(tl.float32)
    b_q = tl.load(q + off_k, mask=m[:, None], other=0.0).to(tl.float32)
    b_k = tl.load(k + off_k, mask=m[:, None], other=0.0).to(tl.float32)
    kt = b_k * b_beta[:, None]
    dq_acc = tl.exp(b_b) * dq_acc
    dkt_acc = tl.exp(b_last[None, :] - b_b) * dkt_acc
    p_diag = tl.sum(tl.where(rc[:, None] == rc[None, :], p, 0.0), axis=1)     # do_t . v_t: its terms in dg cancel
    p_low = tl.where(rc[:, None] > rc[None, :], p, 0.0).to(DT)                 # strictly causal: t > s
    for j in tl.static_range(C // _SUB):
        in_j = (rc >= j * _SUB) & (rc < j * _SUB + _SUB)
        mid = tl.sum(tl.where(rc[:, None] == j * _SUB + _SUB // 2, b_b, 0.0), axis=0)   # [BK]
        # exp(b_t - mid) for t at or after block j and exp(mid - b_s) for s in it are at most exp(40) (g >= -5);
        # the clamps only keep the factors of rows the causal mask drops finite
        up = tl.exp(tl.minimum(b_b - mid[None, :], 40.0))
        down = tl.exp(tl.minimum(mid[None, :] - b_b, 40.0))
        kk_j = tl.where(in_j[:, None], kt * down, 0.0).to(DT)      # keys of block j
        qq_j = tl.where(in_j[:, None], b_q * up, 0.0).to(DT)       # queries of block j
        dq_acc += up * tl.dot(p_low, kk_j, input_precision=PREC)
        dkt_acc += scale * down * tl.dot(tl.trans(p_low), qq_j, input_precision=PREC)

    d_q = scale * dq_acc                                           # every term but the diagonal s = t
    d_b = b_q * d_q - kt * dkt_acc
    d_q += scale * p_diag[:, None] * kt
    dkt_acc += scale * p_diag[:, None] * b_q
    d_g = tl.sum(d_b, axis=0)[None, :] - tl.cumsum(d_b, axis=0) + d_b + carry[None, :]
    tl.store(dq + off_k, d_q.to(dq.dtype.element_ty), mask=m[:, None])
    tl.store(dk + off_k, (dkt_acc * b_beta[:, None]).to(dk.dtype.element_ty), mask=m[:, None])
    tl.store(dg + off_k, d_g.to(dg.dtype.element_ty), mask=m[:, None])
    part = i_k.to(tl.int64) * (tl.num_programs(0) // H) * T * H
    tl.store(dbeta_part + part + be_base + rows.to(tl.int64) * H, tl.sum(dkt_acc * b_k, axis=1), mask=m)


@triton.jit
def _grads_v_kernel(kt, A, do, dstates, dv, T, H, NC,
                    DK: tl.constexpr, DV: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, C: tl.constexpr,
                    PREC: tl.constexpr):
    """dv for one (batch*head, chunk, value block) from the prepass's scores and decayed keys:
    ``A^T do + kt dS``."""
    i_bh = tl.program_id(0)
    i_n = tl.program_id(1)
    i_v = tl.program_id(2)
    i_b = i_bh // H
    i_h = i_bh % H
    DT = kt.dtype.element_ty
    rc = tl.arange(0, C)
    rk0 = tl.arange(0, BK)
    rv = i_v * BV + tl.arange(0, BV)
    qk_base = i_b.to(tl.int64) * T * H * DK + i_h * DK
    v_base = i_b.to(tl.int64) * T * H * DV + i_h * DV
    st_base = i_bh.to(tl.int64) * (NC + 1) * DK * DV + i_n.to(tl.int64) * DK * DV
    idx = i_bh.to(tl.int64) * NC + i_n
    rows = i_n * C + rc
    m = rows < T
    off_v = v_base + rows[:, None].to(tl.int64) * (H * DV) + rv[None, :]
    b_do = tl.load(do + off_v, mask=m[:, None], other=0.0).to(DT)                     # [C, BV]
    b_a = tl.load(A + idx * C * C + rc[:, None] * C + rc[None, :])                     # [C(t), C(s)]
    acc = tl.dot(tl.trans(b_a), b_do, input_precision=PREC)                            # [C(s), BV]
    for i_k in range(0, DK // BK):
        rk = i_k * BK + rk0
        b_kt = tl.load(kt + qk_base + rows[:, None].to(tl.int64) * (H * DK) + rk[None, :], mask=m[:, None],
                       other=0.0)                                                      # [C, BK]
        dS = tl.load(dstates + st_base + rk[:, None] * DV + rv[None, :]).to(DT)        # [BK, BV]
        acc += tl.dot(b_kt, dS, input_precision=PREC)
    tl.store(dv + off_v, acc.to(dv.dtype.element_ty), mask=m[:, None])


def chunk_scan_bwd(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor, beta: torch.Tensor,
                   initial_state: torch.Tensor | None, do: torch.Tensor, dfinal: torch.Tensor, scale: float,
                   config: BwdConfig, out: tuple[torch.Tensor, ...] | None = None) -> tuple[torch.Tensor, ...]:
    """Gradients (dq, dk, dv, dg, dbeta, d_initial_state) of the gated scan, on contiguous CUDA tensors.

    q, k, v, do share one dtype (float32 or bfloat16); gradients come back in their inputs' dtypes and the
    initial state's gradient in float32. ``out``: contiguous buffers of those six to write into.
    """
    B, T, H, DK = q.shape
    DV = v.shape[-1]
    C = config.chunk
    NC = triton.cdiv(T, C)
    BK, BV = min(config.block_k, DK), min(config.block_v, DV)
    prec = _fwd.dot_precision(q.dtype)
    if out is None:
        out = (*(torch.empty_like(x) for x in (q, k, v, g, beta)),
               torch.empty(B, H, DK, DV, dtype=torch.float32, device=q.device))
    dq, dk, dv, dg, dbeta, ds0 = out
    if T == 0:
        for x in out[:5]:
            x.zero_()
        ds0.copy_(dfinal)
        return out
    states = torch.empty(B * H, NC + 1, DK, DV, dtype=q.dtype, device=q.device)
    dstates = torch.empty_like(states)
    s0 = initial_state if initial_state is not None else ds0     # dummy pointer when absent
    n_seg = _fwd._num_segments(B * H * (DK // BK) * (DV // BV), NC)
    seg_chunks = triton.cdiv(NC, n_seg)
    n_seg = triton.cdiv(NC, seg_chunks)
    nsum = max(n_seg - 1, 1)
    seg_state = torch.empty(B * H, nsum, DK, DV, dtype=torch.float32, device=q.device)
    seg_decay = torch.empty(B * H, nsum, DK, dtype=torch.float32, device=q.device)
    # qt = q*scale*exp(b), kt = beta k exp(b_C - b), the scores A and the chunk decays b_C
    qt, kt, A, decay = _fwd.prepass(q, k, g, beta, scale, C, config.prep_warps)
    blocks = dict(DK=DK, DV=DV, BK=BK, BV=BV, C=C, PREC=prec, num_warps=4)
    st_args = (v, kt, decay, s0, states, seg_state, seg_decay, T, H, NC, n_seg)
    ds_args = (qt, decay, do, dfinal, dstates, ds0, seg_state, seg_decay, T, H, NC, n_seg)
    has_init = initial_state is not None
    if n_seg > 1:
        _states_kernel[(B * H * (n_seg - 1), DK // BK, DV // BV)](
            *st_args, n_seg - 1, seg_chunks, nsum, HAS_INIT=has_init, SUMMARY=True, **blocks)
        _fwd.join_segments(seg_state, seg_decay, initial_state)
    _states_kernel[(B * H * n_seg, DK // BK, DV // BV)](
        *st_args, n_seg, seg_chunks, nsum, HAS_INIT=has_init, SUMMARY=False, **blocks)
    if n_seg > 1:      # seg_state is free again: the gradient's summaries of segments 1.. go to slots 0..
        _dstates_kernel[(B * H * (n_seg - 1), DK // BK, DV // BV)](
            *ds_args, n_seg - 1, 1, seg_chunks, nsum, SUMMARY=True, **blocks)
        _fwd.join_segments(seg_state, seg_decay, dfinal, reverse=True)
    _dstates_kernel[(B * H * n_seg, DK // BK, DV // BV)](
        *ds_args, n_seg, 0, seg_chunks, nsum, SUMMARY=False, **blocks)
    GK, GV = min(config.grad_block_k, DK), min(config.grad_block_v, DV)
    dbeta_part = torch.empty(DK // GK, B, T, H, dtype=torch.float32, device=q.device)
    _grads_qk_kernel[(B * H, NC, DK // GK)](q, k, v, g, beta, do, states, dstates, dq, dk, dg, dbeta_part, T, H, NC,
                                             scale, DK=DK, DV=DV, BK=GK, BV=GV, C=C, PREC=prec,
                                             num_warps=config.num_warps)
    _grads_v_kernel[(B * H, NC, DV // GV)](kt, A, do, dstates, dv, T, H, NC, DK=DK, DV=DV, BK=GK, BV=GV, C=C,
                                            PREC=prec, num_warps=config.num_warps)
    dbeta.copy_(dbeta_part.sum(0))
    return out


_PICKED: dict[tuple, BwdConfig] = {}


def pick_bwd_config(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor, beta: torch.Tensor,
                    initial_state: torch.Tensor | None, do: torch.Tensor, dfinal: torch.Tensor,
                    scale: float) -> BwdConfig:
    """The fastest of :data:`BWD_CONFIGS` for this shape class (see :func:`chunk_scan_triton.fastest`)."""
    return fastest(BWD_CONFIGS, shape_class(q, v), _PICKED,
                   lambda cfg: chunk_scan_bwd(q, k, v, g, beta, initial_state, do, dfinal, scale, cfg),
                   warmup=3, rep=10)


def chunk_scan_bwd_segmented(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor,
                             beta: torch.Tensor, initial_state: torch.Tensor | None, do: torch.Tensor,
                             dfinal: torch.Tensor, scale: float, seg_tokens: int, config: BwdConfig,
                             fwd_config: _fwd.ScanConfig) -> tuple[torch.Tensor, ...]:
    """:func:`chunk_scan_bwd` over the sequence in pieces of ``seg_tokens``, so the workspace is bounded by the
    piece, not by T (what one batch row at T=1M or so needs; batch rows are split first, see
    :func:`chunk_scan_bwd_pieces`).

    A forward pass (``fwd_config``) over every piece but the last gives the state entering each piece; the
    pieces' backwards then run last to first, each handing its initial state's gradient to the one before.
    Costs that extra forward and a copy of each piece (slices along T are not contiguous when B > 1).
    """
    starts = list(range(0, q.shape[1], seg_tokens))
    piece = lambda x, t0: x[:, t0:t0 + seg_tokens].contiguous()       # noqa: E731
    entering = [initial_state]
    for t0 in starts[:-1]:
        _, state = _fwd.chunk_scan_fwd(*(piece(x, t0) for x in (q, k, v, g, beta)), entering[-1], scale, fwd_config)
        entering.append(state)
    grads = [torch.empty_like(x) for x in (q, k, v, g, beta)]
    d_state = dfinal
    for t0, s_in in zip(reversed(starts), reversed(entering)):
        *got, d_state = chunk_scan_bwd(*(piece(x, t0) for x in (q, k, v, g, beta)), s_in, piece(do, t0), d_state,
                                       scale, config)
        for dst, src in zip(grads, got):
            dst[:, t0:t0 + seg_tokens] = src
    return (*grads, d_state)


def chunk_scan_bwd_pieces(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor, beta: torch.Tensor,
                          initial_state: torch.Tensor | None, do: torch.Tensor, dfinal: torch.Tensor, scale: float,
                          rows: int, piece_tokens: int, config: BwdConfig,
                          fwd_config: _fwd.ScanConfig | None) -> tuple[torch.Tensor, ...]:
    """:func:`chunk_scan_bwd` on ``rows`` batch rows at a time, each group's sequence in pieces of
    ``piece_tokens`` (:func:`chunk_scan_bwd_segmented`, which needs ``fwd_config``) when shorter than T.

    Batch rows are independent and a group of them is a contiguous view: splitting them costs nothing but
    launches, so it comes before splitting time (``seqedge.kernels.ops.backward_plan`` picks both).
    """
    B, T = q.shape[:2]
    if rows >= B and piece_tokens >= T:
        return chunk_scan_bwd(q, k, v, g, beta, initial_state, do, dfinal, scale, config)
    grads = (*(torch.empty_like(x) for x in (q, k, v, g, beta)),
             torch.empty(dfinal.shape, dtype=torch.float32, device=q.device))
    for b0 in range(0, B, rows):
        r = slice(b0, b0 + rows)
        ins = [x[r] for x in (q, k, v, g, beta)]
        init = None if initial_state is None else initial_state[r]
        if piece_tokens >= T:
            chunk_scan_bwd(*ins, init, do[r], dfinal[r], scale, config, out=tuple(x[r] for x in grads))
        else:
            got = chunk_scan_bwd_segmented(*ins, init, do[r], dfinal[r], scale, piece_tokens, config, fwd_config)
            for dst, src in zip(grads, got):
                dst[r] = src
    return grads
