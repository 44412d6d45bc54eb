"""The fused decoder's three tile computations, each split at the point where it must wait for earlier work.

A decode step is a chain of stages (kernels/decode_fused.py); each stage's tile first loads what does not depend
on the previous stage (its weights), then waits, then reads activations and computes. The wait differs by caller:
``gdc_wait`` in the per-stage kernels of :class:`~seqedge.kernels.decode_fused.FusedDecoder` (programmatic
dependent launch), a grid barrier in the persistent kernel (kernels/decode_persistent.py). So every tile here is a
``*_load`` (before the wait) and an ``*_apply`` (after it), and both callers share the math.

Activations are read with ``cache_modifier=".cg"`` (L2 only): in the persistent kernel other programs of the same
launch wrote them, and an SM's L1 is not coherent with those writes.
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def norm_gemv_load(w, norm_w, conv_w, rn, N, K, C, CONV: tl.constexpr, SWIGLU: tl.constexpr, KW: tl.constexpr,
                   KP: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr):
    """The weights of rows ``rn`` [BN] of an RMSNorm + GEMV (``w`` [N, K], [2N, K] if SWIGLU: gate rows, then up
    rows): (wt, wu, nw, cw, cw_last): weight tiles [BN, BK] (wu = wt unless SWIGLU), the norm weight [BK] and, if
    CONV, the conv weights of rows < C ([BN, KP] for the tail, [BN] for the new value; zeros otherwise)."""
    nmask = rn < N
    rk = tl.arange(0, BK)
    kmask = rk < K
    wmask = nmask[:, None] & kmask[None, :]
    wt = tl.load(w + rn[:, None] * K + rk[None, :], mask=wmask, other=0.0)
    wu = wt
    if SWIGLU:
        wu = tl.load(w + (rn + N)[:, None] * K + rk[None, :], mask=wmask, other=0.0)
    nw = tl.load(norm_w + rk, mask=kmask, other=0.0).to(tl.float32)
    cw = tl.zeros([BN, KP], dtype=tl.float32)
    cw_last = tl.zeros([BN], dtype=tl.float32)
    if CONV:
        cmask = rn < C
        rj = tl.arange(0, KP)
        cw = tl.load(conv_w + rn[:, None] * KW + rj[None, :], mask=cmask[:, None] & (rj < KW - 1)[None, :],
                     other=0.0).to(tl.float32)
        cw_last = tl.load(conv_w + rn * KW + KW - 1, mask=cmask, other=0.0).to(tl.float32)
    return wt, wu, nw, cw, cw_last


@triton.jit
def norm_gemv_apply(xrow, xres, store_x, out, bias, tail, b, rn, wt, wu, nw, cw, cw_last, N, K, C, eps,
                    EMBED: tl.constexpr, HAS_BIAS: tl.constexpr, CONV: tl.constexpr, SWIGLU: tl.constexpr, KW: tl.constexpr,
                    KP: tl.constexpr, BK: tl.constexpr):
    """out[b, rn] = epilogue(w[rn] . RMSNorm(xrow[:K])) with the tiles of :func:`norm_gemv_load`.

    ``xrow``: batch row b of the input (float32 activations; if EMBED, an embedding row in the model's dtype,
    which the program with ``store_x`` also writes to ``xres[b]``: layer 0 starts the residual stream). Epilogue: rows < C
    (CONV) are the conv channels: SiLU(conv over tail [B, C, KW-1] and the new value), the tail shifted in place;
    the others + bias (HAS_BIAS); SWIGLU: silu(gate) * up."""
    nmask = rn < N
    rk = tl.arange(0, BK)
    kmask = rk < K
    xv = tl.load(xrow + rk, mask=kmask, other=0.0, cache_modifier=".cg").to(tl.float32)     # [BK]
    if EMBED:
        tl.store(xres + b * K + rk, xv, mask=kmask & store_x)
    rstd = 1.0 / tl.sqrt(tl.sum(xv * xv, 0) / K + eps)
    xn = (xv * rstd * nw)[None, :]
    y = tl.sum(wt.to(tl.float32) * xn, 1)                                  # [BN]
    if SWIGLU:
        y = y * tl.sigmoid(y) * tl.sum(wu.to(tl.float32) * xn, 1)
    if HAS_BIAS:
        y += tl.load(bias + rn, mask=nmask, other=0.0)
    if CONV:
        cmask = rn < C
        rj = tl.arange(0, KP)
        tmask = cmask[:, None] & (rj < KW - 1)[None, :]
        tptr = tail + b * C * (KW - 1) + rn[:, None] * (KW - 1) + rj[None, :]   # [BN, KP] of tail [B, C, KW-1]
        t_old = tl.load(tptr, mask=tmask, other=0.0, cache_modifier=".cg")
        t_next = tl.load(tptr + 1, mask=cmask[:, None] & (rj < KW - 2)[None, :], other=0.0, cache_modifier=".cg")
        z = tl.sum(t_old * cw, 1) + cw_last * y
        tl.debug_barrier()                                                  # all tail reads before any write
        tl.store(tptr, tl.where(rj[None, :] == KW - 2, y[:, None], t_next), mask=tmask)
        y = tl.where(cmask, z * tl.sigmoid(z), y)
    tl.store(out + b * N + rn, y, mask=nmask)


@triton.jit
def mixer_load(up_w, up_b, skip, h, rv, R, DK: tl.constexpr, DV: tl.constexpr, RP: tl.constexpr):
    """Head h's weights for value columns ``rv``: gate_up rows [DK, RP], its bias [DK], the skip [BV]."""
    rk = tl.arange(0, DK)
    rr = tl.arange(0, RP)
    wu = tl.load(up_w + (h * DK + rk)[:, None] * R + rr[None, :], mask=(rr < R)[None, :], other=0.0)
    bu = tl.load(up_b + h * DK + rk).to(tl.float32)
    sk = tl.load(skip + h * DV + rv).to(tl.float32)
    return wu, bu, sk


@triton.jit
def mixer_apply(proj, o, state_ptr, S, b, h, rv, wu, bu, sk, NP, C, R, scale, g_min, H: tl.constexpr,
                DK: tl.constexpr, DV: tl.constexpr, RP: tl.constexpr, DELTA: tl.constexpr):
    """One (batch b, head h, value columns rv) of the step: gates from proj [B, NP] (q | k | v | gate_down | beta |
    out_gate), the update of recurrent_step on S [DK, BV] (loaded from ``state_ptr``; the result is stored back
    there), o [B, H * DV] = read-out + skip * v."""
    rk = tl.arange(0, DK)
    rr = tl.arange(0, RP)
    row = proj + b * NP
    q = tl.load(row + h * DK + rk, cache_modifier=".cg")                   # [DK] after conv + SiLU
    k = tl.load(row + H * DK + h * DK + rk, cache_modifier=".cg")
    v = tl.load(row + 2 * H * DK + h * DV + rv, cache_modifier=".cg")      # [BV]
    if DELTA:
        q = q / tl.maximum(tl.sqrt(tl.sum(q * q, 0)), 1e-6)
        k = k / tl.maximum(tl.sqrt(tl.sum(k * k, 0)), 1e-6)
    d = tl.load(row + C + rr, mask=rr < R, other=0.0, cache_modifier=".cg")    # [RP] gate_down output
    g = g_min * tl.sigmoid(tl.sum(wu.to(tl.float32) * d[None, :], 1) + bu)    # [DK] log forget gate
    beta = tl.sigmoid(tl.load(row + C + R + h, cache_modifier=".cg"))
    S = S * tl.exp(g)[:, None]                                              # [DK, BV] decayed
    if DELTA:
        u = v - tl.sum(k[:, None] * S, 0)                                   # overwrite what k held
    else:
        u = v
    S = S + (beta * k)[:, None] * u[None, :]
    tl.store(state_ptr, S)
    out = tl.sum((q * scale)[:, None] * S, 0) + sk * v
    tl.store(o + b * (H * DV) + h * DV + rv, out)


@triton.jit
def gemv_residual_load(w, norm_w, rn, N, K, HEAD_NORM: tl.constexpr, H: tl.constexpr, HP: tl.constexpr,
                       DV: tl.constexpr):
    """Rows ``rn`` [BN] of ``w`` [N, K], K = H * DV, as a [BN, HP, DV] tile; and the per-head norm weight [DV]."""
    rh = tl.arange(0, HP)
    rd = tl.arange(0, DV)
    col = rh[:, None] * DV + rd[None, :]                                    # [HP, DV] column index
    cmask = (rh < H)[:, None] & (rd < DV)[None, :]
    wt = tl.load(w + rn[:, None, None] * K + col[None, :, :],
                 mask=(rn < N)[:, None, None] & cmask[None, :, :], other=0.0)
    nw = tl.zeros([DV], dtype=tl.float32)
    if HEAD_NORM:
        nw = tl.load(norm_w + rd).to(tl.float32)
    return wt, nw


@triton.jit
def gemv_residual_apply(inp, gate, x, b, rn, wt, nw, N, K, NP, gate_off, eps, HEAD_NORM: tl.constexpr,
                        H: tl.constexpr, HP: tl.constexpr, DV: tl.constexpr):
    """x[b, rn] += w[rn] . a[b] with the tile of :func:`gemv_residual_load`: a = inp [B, K] or, if HEAD_NORM,
    RMSNorm over each head's DV values of inp, times the norm weight, times SiLU(gate[b, gate_off + k])."""
    nmask = rn < N
    rh = tl.arange(0, HP)
    rd = tl.arange(0, DV)
    col = rh[:, None] * DV + rd[None, :]
    cmask = (rh < H)[:, None] & (rd < DV)[None, :]
    a = tl.load(inp + b * K + col, mask=cmask, other=0.0, cache_modifier=".cg")      # [HP, DV]
    if HEAD_NORM:
        gt = tl.load(gate + b * NP + gate_off + col, mask=cmask, other=0.0, cache_modifier=".cg")
        a = a / tl.sqrt(tl.sum(a * a, 1) / DV + eps)[:, None] * nw[None, :]
        a = a * gt * tl.sigmoid(gt)
    y = tl.sum(tl.sum(wt.to(tl.float32) * a[None, :, :], 2), 1)            # [BN]
    xp = x + b * N + rn
    tl.store(xp, tl.load(xp, mask=nmask, other=0.0, cache_modifier=".cg") + y, mask=nmask)
