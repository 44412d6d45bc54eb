"""Triton forward of the gated chunked scan (DESIGN §1), the CUDA path of ``seqedge::chunk_scan_gated``.

Imported only on the CUDA path: this module imports triton at top level, so nothing on a CPU machine may import
it (``seqedge.kernels.ops`` imports it inside the CUDA implementation).

Design (one program per (batch*head, value block, segment)):
- The state block ``S [dk, BV]`` lives in registers in float32 for the whole segment; per chunk of C tokens the
  kernel loads q, k, v, g, beta once, takes the cumulative log-gates ``b`` in float32 and computes
  ``o = (q*exp(b)) S + A v`` and ``S <- diag(exp(b_C)) S + (beta k exp(b_C - b))^T v``. Only o and the final
  state reach memory: no per-chunk states, scores or cumulative gates are written.
- The intra-chunk scores ``A[t, s] = beta_s <q_t, k_s exp(b_t - b_s)>`` are built one 16-token column block at a
  time with exponents referenced to the middle of that block: ``exp(b_t - m) exp(m - b_s)``. With g >= -5 every
  factor that survives the causal mask is at most exp(40), so float32 and bf16 neither overflow nor lose terms,
  and every product is a tensor-core dot.
- When batch*heads*value-blocks is too small to fill the GPU, the sequence is split into segments: a first
  launch writes each segment's local final state (from zero) and its total log-decay; a short sequential launch
  over the segments turns those into the state entering each segment, ``S_{j+1} = exp(D_j) S_j + L_j`` (diagonal
  gates: joining is decay-and-add); the output launch of segment j starts from ``S_j``. That costs one extra read
  of k, v, g but gives B*H*NV*n_seg programs instead of B*H*NV. (Joining inside each output program instead
  would read every earlier summary: quadratic in the segments, about 2 GB at T=65,536, B=1, H=16, D=128 on 132
  multiprocessors, twice the bytes of q, k, v, g together.)
- Prepass configs (``ScanConfig.prepass``, the fastest at long T): everything of a chunk that does not depend on
  the state (the cumulative gates, ``q*exp(b)``, ``beta k exp(b_C - b)``, the intra-chunk scores and ``b_C``) is
  computed for all chunks in one parallel launch (``_chunk_prep_kernel``) and written in k's dtype, exactly the
  operands the fused loop rounds to before its dots; the sequential loops then only load them and do three dots
  per chunk. That removes the largest part of the sequential loop's work (benchmarks/kernels_fwd_configs.py
  compares the configs), for 2x q's size of extra memory (plus the scores, 1/4 of q's size at chunk 32).
Tail chunks are masked: missing tokens load g = 0, beta = 0, which leaves the state untouched, so any T is exact.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Any

import torch
import triton
import triton.language as tl

SUB = 16  # sub-chunk of the intra-chunk scores
_SUB = tl.constexpr(16)  # the same, for kernels (bounded gates keep exp inside 16 tokens in range)


@dataclass(frozen=True)
class ScanConfig:
    """One launch configuration of the forward kernel: chunk length, value block, warps, pipeline stages."""

    chunk: int
    block_v: int
    num_warps: int
    num_stages: int = 1
    prepass: bool = False     # the per-chunk, state-independent work in a parallel launch first (see below)
    prep_warps: int = 4       # warps of that launch
    prep_block_k: int = 0     # key columns per step of that launch (_chunk_prep_cols_kernel); 0: all at once

    def __post_init__(self) -> None:
        if self.chunk % SUB or self.chunk <= 0:
            raise ValueError(f"chunk must be a positive multiple of {SUB}, got {self.chunk}")
        if self.block_v < 16 or self.block_v & (self.block_v - 1):
            raise ValueError(f"block_v must be a power of two >= 16, got {self.block_v}")
        if self.prep_block_k and (self.prep_block_k < 16 or self.prep_block_k & (self.prep_block_k - 1)):
            raise ValueError(f"prep_block_k must be 0 or a power of two >= 16, got {self.prep_block_k}")


# Short on purpose: every entry is run and checked by tests/test_kernels_gpu.py, not only the one picked.
# Fastest first (benchmarks/kernels_fwd_configs.py times them; benchmarks/results/kernels_fwd_configs.md). The
# prepass entries run the state-independent work of every chunk in one parallel launch first (_chunk_prep_kernel),
# so the sequential loops only load its operands and do three dots per chunk: the same operands, rounded the same
# way, for 2x q's size of extra memory (qt, kt) plus the scores. The first entry is the one used while a CUDA graph
# is captured (nothing can be timed then). Chunk 32 and 4 warps won the launch-parameter sweep
# (benchmarks/probes/kernels_tune.py); chunk 64 is excluded below.
FWD_CONFIGS: tuple[ScanConfig, ...] = (
    ScanConfig(chunk=32, block_v=128, num_warps=4, num_stages=2, prepass=True, prep_warps=2),
    ScanConfig(chunk=32, block_v=128, num_warps=4, num_stages=2, prepass=True),
    ScanConfig(chunk=32, block_v=128, num_warps=4, num_stages=2),
    ScanConfig(chunk=32, block_v=64, num_warps=4, num_stages=2),
    ScanConfig(chunk=32, block_v=64, num_warps=4, num_stages=1),
)
# Candidates: checked by the same tests as FWD_CONFIGS, never picked; they join FWD_CONFIGS once the GPU suite
# has run in full with them.
PENDING_CONFIGS: tuple[ScanConfig, ...] = ()
# Configs taken out, with why (docs/excluded-kernel-configs.md has the measurements). Kept so that sweeps can still
# time them and none is re-added without its reason.
EXCLUDED_CONFIGS: dict[ScanConfig, str] = {
    ScanConfig(chunk=64, block_v=64, num_warps=8):
        "bf16, dk=128: wrong results with Hopper wgmma (correct without it) and an illegal memory access: a "
        "Triton-on-Hopper compiler problem",
    ScanConfig(chunk=64, block_v=32, num_warps=4):
        "one undiagnosed float32 failure (B=2 T=64 H=2 dk=128 dv=64)",
    ScanConfig(chunk=64, block_v=32, num_warps=8):
        "illegal memory access at bf16, dk=128 on Hopper; chunk 64 is out until that is understood",
    ScanConfig(chunk=32, block_v=128, num_warps=8):
        "correct, but slower than 4 warps with 2 stages",
    ScanConfig(chunk=32, block_v=128, num_warps=8, num_stages=2, prepass=True):
        "correct, but slower than 4 warps",
    ScanConfig(chunk=32, block_v=128, num_warps=4, num_stages=2, prepass=True, prep_warps=8):
        "correct, but its 8-warp prepass is slower than the 2-warp one",
    ScanConfig(chunk=32, block_v=128, num_warps=4, num_stages=2, prepass=True, prep_warps=4, prep_block_k=16):
        "the prepass 16 key columns at a time (_chunk_prep_cols_kernel): no spills and more resident warps, "
        "correct, but slower than the whole-row prepass",
}


@triton.jit
def _intra_scores(b_q, b_g, b_b, k, g, beta, qk_base, be_base, t0, T, H,
                  DK: tl.constexpr, C: tl.constexpr, PREC: tl.constexpr, COL: tl.constexpr):
    """The masked intra-chunk scores of 16-token column block COL, ``[C, 16]`` float32: rows are the chunk's
    queries ``b_q`` (scaled, float32; ``b_g`` their log-gates, ``b_b`` the cumulative ones), columns keys
    t0 + 16*COL + [0, 16), exponents referenced to the block's middle (every surviving factor is at most exp(40)
    with g >= -5)."""
    DT = k.dtype.element_ty
    rk = tl.arange(0, DK)
    rc = tl.arange(0, C)
    r16 = tl.arange(0, 16)
    rows_j = t0 + COL * _SUB + r16
    m_j = rows_j < T
    off_kj = qk_base + rows_j[:, None].to(tl.int64) * (H * DK) + rk[None, :]
    k_j = tl.load(k + off_kj, mask=m_j[:, None], other=0.0).to(tl.float32)    # [16, DK]
    g_j = tl.load(g + off_kj, mask=m_j[:, None], other=0.0).to(tl.float32)
    beta_j = tl.load(beta + be_base + rows_j.to(tl.int64) * H, mask=m_j, other=0.0).to(tl.float32)
    pre = tl.sum(tl.where(rc[:, None] < COL * _SUB, b_g, 0.0), axis=0)        # [DK]
    b_j = pre[None, :] + tl.cumsum(g_j, axis=0)                                # [16, DK]
    mid = tl.sum(tl.where(r16[:, None] == _SUB // 2, b_j, 0.0), axis=0)         # [DK]
    # rows before block j are masked below; the clamp only keeps their factor finite
    q_j = (b_q * tl.exp(tl.minimum(b_b - mid[None, :], 40.0))).to(DT)         # [C, DK]
    kk_j = (k_j * beta_j[:, None] * tl.exp(mid[None, :] - b_j)).to(DT)         # [16, DK]
    a = tl.dot(q_j, tl.trans(kk_j), input_precision=PREC)                       # [C, 16]
    return tl.where(rc[:, None] >= COL * _SUB + r16[None, :], a, 0.0)


@triton.jit
def _chunk_prep_kernel(q, k, g, beta, qt, kt, A, decay, T, H, NC, scale,
                       DK: tl.constexpr, C: tl.constexpr, PREC: tl.constexpr):
    """Everything of one chunk that does not depend on the state, for all chunks in parallel (prepass configs).

    Writes, in k's dtype (exactly the operands the fused kernel rounds to before its dots): ``qt = q*scale*exp(b)``
    and ``kt = beta k exp(b_C - b)`` ``[B, T, H, DK]``, the masked intra-chunk scores ``A [B*H, NC, C, C]``; and
    the chunk's total log-decay ``b_C`` ``[B*H, NC, DK]`` float32.
    """
    i_c = tl.program_id(0)
    i_bh = tl.program_id(1)
    i_b = i_bh // H
    i_h = i_bh % H
    DT = k.dtype.element_ty
    rk = tl.arange(0, DK)
    rc = tl.arange(0, C)
    r16 = tl.arange(0, 16)
    qk_base = i_b.to(tl.int64) * T * H * DK + i_h * DK
    be_base = i_b.to(tl.int64) * T * H + i_h
    t0 = i_c * C
    rows = t0 + rc
    m = rows < T
    off_k = qk_base + rows[:, None].to(tl.int64) * (H * DK) + rk[None, :]
    b_q = tl.load(q + off_k, mask=m[:, None], other=0.0).to(tl.float32) * scale
    b_k = tl.load(k + off_k, mask=m[:, None], other=0.0).to(tl.float32)
    b_g = tl.load(g + off_k, mask=m[:, None], other=0.0).to(tl.float32)
    b_beta = tl.load(beta + be_base + rows.to(tl.int64) * H, mask=m, other=0.0).to(tl.float32)
    b_b = tl.cumsum(b_g, axis=0)
    b_last = tl.sum(b_g, axis=0)
    tl.store(qt + off_k, (b_q * tl.exp(b_b)).to(DT), mask=m[:, None])
    tl.store(kt + off_k, (b_k * b_beta[:, None] * tl.exp(b_last[None, :] - b_b)).to(DT), mask=m[:, None])
    idx = i_bh.to(tl.int64) * NC + i_c
    tl.store(decay + idx * DK + rk, b_last)
    for j in tl.static_range(C // _SUB):
        a = _intra_scores(b_q, b_g, b_b, k, g, beta, qk_base, be_base, t0, T, H, DK, C, PREC, j)
        tl.store(A + idx * C * C + rc[:, None] * C + j * _SUB + r16[None, :], a.to(DT))


@triton.jit
def _chunk_prep_cols_kernel(q, k, g, beta, qt, kt, A, decay, T, H, NC, scale,
                            DK: tl.constexpr, C: tl.constexpr, BD: tl.constexpr, PREC: tl.constexpr):
    """:func:`_chunk_prep_kernel`'s outputs, BD of the DK columns at a time (every output but A is per column; A
    sums over columns). A program then holds [C, BD] tiles instead of four [C, DK] float32 ones: at DK=128 those
    take 255 registers per thread and spill at 2 and 4 warps (sm_90, ptxas), which caps how many programs share
    a multiprocessor.

    The scores of every 16-token key block j come from one dot: each query row is repeated once per key block,
    referenced to that block's middle (``q_i exp(min(b_i - mid_j, 40))``), against keys referenced to their own
    block's middle (``k_j beta_j exp(mid_j - b_j)``); each score keeps the repeat of its key's block. Same factors
    as :func:`_intra_scores`.
    """
    i_c = tl.program_id(0)
    i_bh = tl.program_id(1)
    i_b = i_bh // H
    i_h = i_bh % H
    DT = k.dtype.element_ty
    NJ: tl.constexpr = C // _SUB
    rc = tl.arange(0, C)
    rd = tl.arange(0, BD)
    rj = tl.arange(0, NJ)
    blk = rc // _SUB                                                        # [C] key block of each row
    qk_base = i_b.to(tl.int64) * T * H * DK + i_h * DK
    t0 = i_c * C
    rows = t0 + rc
    m = rows < T
    idx = i_bh.to(tl.int64) * NC + i_c
    b_beta = tl.load(beta + i_b.to(tl.int64) * T * H + i_h + rows.to(tl.int64) * H, mask=m, other=0.0).to(tl.float32)
    acc = tl.zeros([C, C], dtype=tl.float32)
    for d0 in tl.range(0, DK, BD, num_stages=1):
        off = qk_base + rows[:, None].to(tl.int64) * (H * DK) + (d0 + rd)[None, :]
        b_q = tl.load(q + off, mask=m[:, None], other=0.0).to(tl.float32) * scale
        b_k = tl.load(k + off, mask=m[:, None], other=0.0).to(tl.float32)
        b_b = tl.cumsum(tl.load(g + off, mask=m[:, None], other=0.0).to(tl.float32), axis=0)     # [C, BD]
        b_last = tl.sum(tl.where(rc[:, None] == C - 1, b_b, 0.0), axis=0)                        # [BD]
        tl.store(qt + off, (b_q * tl.exp(b_b)).to(DT), mask=m[:, None])
        tl.store(kt + off, (b_k * b_beta[:, None] * tl.exp(b_last[None, :] - b_b)).to(DT), mask=m[:, None])
        tl.store(decay + idx * DK + d0 + rd, b_last)
        mid = tl.sum(tl.where(rc[None, :, None] == (rj * _SUB + _SUB // 2)[:, None, None], b_b[None, :, :], 0.0),
                     axis=1)                                                                      # [NJ, BD]
        mid_own = tl.sum(tl.where(blk[:, None, None] == rj[None, :, None], mid[None, :, :], 0.0), axis=1)
        kk = (b_k * b_beta[:, None] * tl.exp(mid_own - b_b)).to(DT)                              # [C, BD]
        qs = b_q[:, None, :] * tl.exp(tl.minimum(b_b[:, None, :] - mid[None, :, :], 40.0))       # [C, NJ, BD]
        s = tl.dot(tl.reshape(qs.to(DT), [C * NJ, BD]), tl.trans(kk), input_precision=PREC)    # [C * NJ, C]
        s = tl.reshape(s, [C, NJ, C])
        acc += tl.sum(tl.where(rj[None, :, None] == blk[None, None, :], s, 0.0), axis=1)
    acc = tl.where(rc[:, None] >= rc[None, :], acc, 0.0)
    tl.store(A + idx * C * C + rc[:, None] * C + rc[None, :], acc.to(DT))


@triton.jit
def _chunk_fwd_kernel(
    q, k, v, g, beta, o, s0, seg_state, seg_decay, s_final, qt, kt, A, decay,
    T, H, NSUM, SEG_LEN, scale,
    DK: tl.constexpr, DV: tl.constexpr, BV: tl.constexpr, C: tl.constexpr,
    SUMMARY: tl.constexpr, HAS_INIT: tl.constexpr, PREC: tl.constexpr, PREP: tl.constexpr,
):
    i_bh = tl.program_id(0)
    i_v = tl.program_id(1)
    i_s = tl.program_id(2)
    i_b = i_bh // H
    i_h = i_bh % H
    DT = k.dtype.element_ty

    rk = tl.arange(0, DK)
    rv = i_v * BV + tl.arange(0, BV)
    rc = tl.arange(0, C)
    qk_base = i_b.to(tl.int64) * T * H * DK + i_h * DK          # q, k, g: [B, T, H, DK]
    v_base = i_b.to(tl.int64) * T * H * DV + i_h * DV           # v, o:    [B, T, H, DV]
    be_base = i_b.to(tl.int64) * T * H + i_h                     # beta:    [B, T, H]
    st_off = rk[:, None] * DV + rv[None, :]                       # [DK, BV] inside one [DK, DV] state
    NC = tl.cdiv(T, C)

    S = tl.zeros([DK, BV], dtype=tl.float32)
    if not SUMMARY:
        if i_s > 0:         # the state entering this segment, joined by _join_segments_kernel
            S = tl.load(seg_state + (i_bh.to(tl.int64) * NSUM + i_s - 1) * DK * DV + st_off)
        elif HAS_INIT:
            S = tl.load(s0 + i_bh.to(tl.int64) * DK * DV + st_off)
    D_acc = tl.zeros([DK], dtype=tl.float32)

    t_start = i_s * SEG_LEN
    t_end = tl.minimum(t_start + SEG_LEN, T)
    for t0 in range(t_start, t_end, C):
        rows = t0 + rc
        m = rows < T
        off_k = qk_base + rows[:, None].to(tl.int64) * (H * DK) + rk[None, :]
        off_v = v_base + rows[:, None].to(tl.int64) * (H * DV) + rv[None, :]
        b_v = tl.load(v + off_v, mask=m[:, None], other=0.0)                       # [C, BV]
        if PREP:            # the prepass wrote this chunk's operands: load them
            idx = i_bh.to(tl.int64) * NC + t0 // C
            k_dec = tl.load(kt + off_k, mask=m[:, None], other=0.0)                # [C, DK]
            b_last = tl.load(decay + idx * DK + rk)                                 # [DK]
        else:
            b_k = tl.load(k + off_k, mask=m[:, None], other=0.0)                   # [C, DK]
            b_g = tl.load(g + off_k, mask=m[:, None], other=0.0).to(tl.float32)   # [C, DK]
            b_beta = tl.load(beta + be_base + rows.to(tl.int64) * H, mask=m, other=0.0).to(tl.float32)
            b_b = tl.cumsum(b_g, axis=0)                                            # [C, DK] inclusive
            b_last = tl.sum(b_g, axis=0)                                            # [DK]
            k_dec = (b_k.to(tl.float32) * b_beta[:, None] * tl.exp(b_last[None, :] - b_b)).to(DT)

        if not SUMMARY:
            if PREP:
                b_qt = tl.load(qt + off_k, mask=m[:, None], other=0.0)
                acc = tl.dot(b_qt, S.to(DT), input_precision=PREC)                    # [C, BV]
                b_a = tl.load(A + idx * C * C + rc[:, None] * C + rc[None, :])          # [C, C]
                acc += tl.dot(b_a, b_v, input_precision=PREC)
            else:
                b_q = tl.load(q + off_k, mask=m[:, None], other=0.0).to(tl.float32) * scale
                acc = tl.dot((b_q * tl.exp(b_b)).to(DT), S.to(DT), input_precision=PREC)   # [C, BV]
                for j in tl.static_range(C // _SUB):
                    rows_j = t0 + j * _SUB + tl.arange(0, 16)
                    v_j = tl.load(v + v_base + rows_j[:, None].to(tl.int64) * (H * DV) + rv[None, :],
                                  mask=(rows_j < T)[:, None], other=0.0)                  # [16, BV]
                    a = _intra_scores(b_q, b_g, b_b, k, g, beta, qk_base, be_base, t0, T, H, DK, C, PREC, j)
                    acc += tl.dot(a.to(DT), v_j, input_precision=PREC)
            tl.store(o + off_v, acc.to(o.dtype.element_ty), mask=m[:, None])
        else:
            D_acc += b_last
        S = tl.exp(b_last)[:, None] * S + tl.dot(tl.trans(k_dec), b_v, input_precision=PREC)

    if SUMMARY:
        idx = i_bh.to(tl.int64) * NSUM + i_s
        tl.store(seg_state + idx * DK * DV + st_off, S)
        if i_v == 0:
            tl.store(seg_decay + idx * DK + rk, D_acc)
    elif i_s == tl.num_programs(2) - 1:
        tl.store(s_final + i_bh.to(tl.int64) * DK * DV + st_off, S)


@triton.jit
def _join_segments_kernel(seg_state, seg_decay, s_in, NSUM,
                          DK: tl.constexpr, DV: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
                          HAS_IN: tl.constexpr, REVERSE: tl.constexpr):
    """Turn per-segment summaries into the states entering each segment, in place.

    Slot i holds a segment's local state L (from zero) and its total log-decay D; walking the slots in order
    (backwards when REVERSE) from ``s_in`` (or zero), ``S <- exp(D) S + L`` and slot i receives S. One short
    sequential pass over the segments instead of every segment program re-joining all earlier summaries.
    """
    i_bh = tl.program_id(0)
    rk = tl.program_id(1) * BK + tl.arange(0, BK)
    rv = tl.program_id(2) * BV + tl.arange(0, BV)
    st_off = rk[:, None] * DV + rv[None, :]
    S = tl.zeros([BK, BV], dtype=tl.float32)
    if HAS_IN:
        S = tl.load(s_in + i_bh.to(tl.int64) * DK * DV + st_off).to(tl.float32)
    for i in range(0, NSUM):
        if REVERSE:
            j = NSUM - 1 - i
        else:
            j = i
        idx = i_bh.to(tl.int64) * NSUM + j
        D = tl.load(seg_decay + idx * DK + rk)
        S = tl.exp(D)[:, None] * S + tl.load(seg_state + idx * DK * DV + st_off)
        tl.store(seg_state + idx * DK * DV + st_off, S)


def join_segments(seg_state: torch.Tensor, seg_decay: torch.Tensor, s_in: torch.Tensor | None,
                  reverse: bool = False) -> None:
    """Launch :func:`_join_segments_kernel` on ``seg_state [BH, NSUM, DK, DV]``, ``seg_decay [BH, NSUM, DK]``."""
    BH, nsum, DK, DV = seg_state.shape
    BK, BV = min(32, DK), min(64, DV)
    _join_segments_kernel[(BH, DK // BK, DV // BV)](
        seg_state, seg_decay, s_in if s_in is not None else seg_state, nsum, DK=DK, DV=DV, BK=BK, BV=BV,
        HAS_IN=s_in is not None, REVERSE=reverse, num_warps=4)


PROGRAMS_PER_SM = 8     # the sequence is split into segments until about this many programs run per multiprocessor


def dot_precision(dtype: torch.dtype) -> str:
    """``input_precision`` of the kernels' dots: exact float32 products for float32 inputs (the fp32 tolerance
    ~1e-5 allows no TF32 rounding), TF32 for bf16 inputs, whose own rounding is far larger."""
    return "ieee" if dtype == torch.float32 else "tf32"


def prepass(q: torch.Tensor, k: torch.Tensor, g: torch.Tensor, beta: torch.Tensor, scale: float, chunk: int,
            num_warps: int, block_k: int = 0) -> tuple[torch.Tensor, ...]:
    """Launch :func:`_chunk_prep_kernel` (or, with ``block_k``, :func:`_chunk_prep_cols_kernel` on that many key
    columns at a time): ``(qt, kt, A, decay)`` for every chunk (the kernel's docstring says what each holds). The
    forward's prepass configs and the backward both start with it."""
    B, T, H, DK = q.shape
    n_chunks = triton.cdiv(T, chunk)
    qt, kt = torch.empty_like(k), torch.empty_like(k)
    A = torch.empty(B * H, n_chunks, chunk, chunk, dtype=k.dtype, device=q.device)
    decay = torch.empty(B * H, n_chunks, DK, dtype=torch.float32, device=q.device)
    args = (q, k, g, beta, qt, kt, A, decay, T, H, n_chunks, scale)
    prec = dot_precision(q.dtype)
    if block_k:
        _chunk_prep_cols_kernel[(n_chunks, B * H)](*args, DK=DK, C=chunk, BD=min(block_k, DK), PREC=prec,
                                                   num_warps=num_warps)
    else:
        _chunk_prep_kernel[(n_chunks, B * H)](*args, DK=DK, C=chunk, PREC=prec, num_warps=num_warps)
    return qt, kt, A, decay


@functools.cache
def _sm_count(device: int) -> int:
    return torch.cuda.get_device_properties(device).multi_processor_count


def _num_segments(programs: int, n_chunks: int) -> int:
    """Segments per sequence so that about PROGRAMS_PER_SM programs run per multiprocessor (>= 8 chunks each)."""
    sms = _sm_count(torch.cuda.current_device())
    want = math.ceil(PROGRAMS_PER_SM * sms / max(programs, 1))
    return max(1, min(want, n_chunks // 8))


def check_kernel_shapes(dk: int, dv: int) -> str | None:
    """Why the kernel cannot run these head dims, or None when it can."""
    if dk < 16 or dk > 256 or dk & (dk - 1):
        return f"head_k_dim must be a power of two in [16, 256] for the Triton kernel, got {dk}"
    if dv < 16 or dv > 256 or dv & (dv - 1):
        return f"head_v_dim must be a power of two in [16, 256] for the Triton kernel, got {dv}"
    return None


def chunk_scan_fwd(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor, beta: torch.Tensor,
    initial_state: torch.Tensor | None, scale: float, config: ScanConfig,
    out: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Launch the kernel with one explicit ``config``. Shapes as in :func:`seqedge.kernels.chunk_scan`.

    ``out``: optional (o, final) buffers to write into (the tests pass NaN-filled ones).

    Returns o ``[B, T, H, dv]`` in q's dtype and the final state ``[B, H, dk, dv]`` float32.
    """
    B, T, H, DK = q.shape
    DV = v.shape[-1]
    BV = min(config.block_v, DV)
    C = config.chunk
    if config.prepass and T > 0:          # first: the GPU starts while the host sets up the rest
        qt, kt, A, decay = prepass(q, k, g, beta, scale, C, config.prep_warps, config.prep_block_k)
    else:
        qt = kt = A = decay = q                                     # unused pointers
    if out is None:
        o = torch.empty(B, T, H, DV, dtype=q.dtype, device=q.device)
        final = torch.empty(B, H, DK, DV, dtype=torch.float32, device=q.device)
    else:
        o, final = out
    if T == 0:
        final.copy_(initial_state if initial_state is not None else torch.zeros_like(final))
        return o, final
    NV = DV // BV
    n_chunks = triton.cdiv(T, C)
    n_seg = _num_segments(B * H * NV, n_chunks)
    seg_len = triton.cdiv(n_chunks, n_seg) * C
    n_seg = triton.cdiv(T, seg_len)
    nsum = max(n_seg - 1, 1)
    seg_state = torch.empty(B * H, nsum, DK, DV, dtype=torch.float32, device=q.device)
    seg_decay = torch.empty(B * H, nsum, DK, dtype=torch.float32, device=q.device)
    s0 = initial_state if initial_state is not None else final      # dummy pointer when absent
    prec = dot_precision(q.dtype)
    common = dict(DK=DK, DV=DV, BV=BV, C=C, HAS_INIT=initial_state is not None, PREC=prec, PREP=config.prepass,
                  num_warps=config.num_warps, num_stages=config.num_stages)
    args = (q, k, v, g, beta, o, s0, seg_state, seg_decay, final, qt, kt, A, decay, T, H, nsum, seg_len, scale)
    if n_seg > 1:
        _chunk_fwd_kernel[(B * H, NV, n_seg - 1)](*args, SUMMARY=True, **common)
        join_segments(seg_state, seg_decay, initial_state)
    _chunk_fwd_kernel[(B * H, NV, n_seg)](*args, SUMMARY=False, **common)
    return o, final


_PICKED: dict[tuple, ScanConfig] = {}


def shape_class(q: torch.Tensor, v: torch.Tensor) -> tuple:
    """Inputs that share a class share a picked config: head dims, dtype, batch*heads and log2 of the length."""
    B, T, H, DK = q.shape
    return DK, v.shape[-1], q.dtype, B * H, max(T, 1).bit_length()


def fastest(configs: tuple, key: tuple, cache: dict, run, warmup: int, rep: int) -> Any:
    """The config of ``configs`` for which ``run(config)`` is fastest, timed once per ``key`` (median of events).

    While a CUDA graph is being captured nothing can be timed: the first config is used and not cached. A lone
    config is returned untimed.
    """
    if len(configs) == 1:
        return configs[0]
    if key in cache:
        return cache[key]
    if torch.cuda.is_current_stream_capturing():
        return configs[0]
    from triton.testing import do_bench

    times = {cfg: do_bench(lambda: run(cfg), warmup=warmup, rep=rep, return_mode="median") for cfg in configs}
    cache[key] = min(times, key=times.get)
    return cache[key]


def pick_config(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor, beta: torch.Tensor,
                initial_state: torch.Tensor | None, scale: float) -> ScanConfig:
    """The fastest of :data:`FWD_CONFIGS` for this shape class (see :func:`fastest`)."""
    return fastest(FWD_CONFIGS, shape_class(q, v), _PICKED,
                   lambda cfg: chunk_scan_fwd(q, k, v, g, beta, initial_state, scale, cfg), warmup=5, rep=20)
