"""The Triton kernels of :class:`seqedge.kernels.decode_fused.FusedDecoder` (its docstring gives the launch
sequence): the RMSNorm + GEMV of a layer's input projection with the causal conv step in its epilogue, the mixer
step per (batch, head, value block), the output GEMV with the output norm and gate in its prologue and the
residual add in its epilogue, and their batched (tensor-core) forms for batches of ``batch_tile`` rows and more.
Every activation read and every write comes after ``gdc_wait`` (programmatic dependent launch)."""

from __future__ import annotations

import triton
import triton.language as tl
from triton.language.extra.cuda import gdc_launch_dependents, gdc_wait


@triton.jit
def norm_gemv_kernel(x, tok, xres, norm_w, w, out, bias, tail, conv_w, N, K, C, eps,
                      EMBED: tl.constexpr, HAS_BIAS: tl.constexpr, CONV: tl.constexpr, CONV_BIAS: tl.constexpr,
                      SWIGLU: tl.constexpr, KW: tl.constexpr, KP: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr,
                      PDL: tl.constexpr):
    """out[b, n] = epilogue(sum_k w[n, k] * RMSNorm(x[b])[k]) for rows n of this program, batch row b.

    x [B, K] float32 (or, if EMBED, the embedding table [V, K], row tok[b], copied to xres [B, K]); w [N, K]
    ([2N, K] if SWIGLU: gate rows, then up rows); out [B, N] float32. BK >= K: the whole row in one tile, so every
    weight load is issued at once, before the wait for the previous kernel (PDL). Epilogue: rows < C (CONV) are
    the conv channels: SiLU(conv over tail [B, C, KW-1] and the new value (+ bias if CONV_BIAS)), tail shifted in
    place; others + bias (HAS_BIAS); SWIGLU: silu(gate) * up.
    """
    if PDL:
        gdc_launch_dependents()
    pid_n = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    rn = pid_n * BN + tl.arange(0, BN)                                      # [BN] output rows
    nmask = rn < N
    rk = tl.arange(0, BK)
    kmask = rk < K
    wmask = nmask[:, None] & kmask[None, :]
    # weights first: they do not depend on the previous kernel
    wt = tl.load(w + rn[:, None] * K + rk[None, :], mask=wmask, other=0.0)
    if SWIGLU:
        wu = tl.load(w + (rn + N)[:, None] * K + rk[None, :], mask=wmask, other=0.0)
    nw = tl.load(norm_w + rk, mask=kmask, other=0.0).to(tl.float32)
    if CONV:
        cmask = rn < C
        rj = tl.arange(0, KP)
        tmask = cmask[:, None] & (rj < KW - 1)[None, :]
        cw = tl.load(conv_w + rn[:, None] * KW + rj[None, :], mask=tmask, other=0.0).to(tl.float32)
        cw_last = tl.load(conv_w + rn * KW + KW - 1, mask=cmask, other=0.0).to(tl.float32)
    if PDL:
        gdc_wait()                                                          # the previous kernel's writes
    if EMBED:
        xrow = x + tl.load(tok + b).to(tl.int64) * K
    else:
        xrow = x + b * K
    xv = tl.load(xrow + rk, mask=kmask, other=0.0).to(tl.float32)          # [BK]
    if EMBED:
        tl.store(xres + b * K + rk, xv, mask=kmask & (pid_n == 0))
    rstd = 1.0 / tl.sqrt(tl.sum(xv * xv, 0) / K + eps)
    xn = (xv * rstd * nw)[None, :]
    y = tl.sum(wt.to(tl.float32) * xn, 1)                                  # [BN]
    if SWIGLU:
        y = y * tl.sigmoid(y) * tl.sum(wu.to(tl.float32) * xn, 1)
    if HAS_BIAS:
        bv = tl.load(bias + rn, mask=nmask, other=0.0)
        if CONV_BIAS:                                                       # the conv's bias goes in after it
            y += tl.where(rn < C, 0.0, bv)
        else:
            y += bv
    if CONV:
        tptr = tail + b * C * (KW - 1) + rn[:, None] * (KW - 1) + rj[None, :]   # [BN, KP] of tail [B, C, KW-1]
        t_old = tl.load(tptr, mask=tmask, other=0.0)
        t_next = tl.load(tptr + 1, mask=cmask[:, None] & (rj < KW - 2)[None, :], other=0.0)
        z = tl.sum(t_old * cw, 1) + cw_last * y
        if CONV_BIAS:
            z += bv
        tl.debug_barrier()                                                  # all tail reads before any write
        tl.store(tptr, tl.where(rj[None, :] == KW - 2, y[:, None], t_next), mask=tmask)
        y = tl.where(cmask, z * tl.sigmoid(z), y)
    tl.store(out + b * N + rn, y, mask=nmask)


@triton.jit
def _log1p_exp_neg_abs(x):
    """log(1 + exp(-|x|)), accurate in float32 where exp(-|x|) is tiny (log(1 + e) would round to 0 there)."""
    e = tl.exp(-tl.abs(x))
    return tl.where(e < 1e-4, e * (1.0 - 0.5 * e), tl.log(1.0 + e))


@triton.jit
def mixer_kernel(proj, up_w, up_b, a_log, skip, og_w, og_b, og_out, state, o, NP, R, gate_off, beta_off, og_off,
                  OGR, scale, gate_mul,
                  H: tl.constexpr, KH: tl.constexpr, DK: tl.constexpr, DV: tl.constexpr, BV: tl.constexpr,
                  RP: tl.constexpr, OGRP: tl.constexpr, DELTA: tl.constexpr, QK_NORM: tl.constexpr,
                  GATE: tl.constexpr, BETA: tl.constexpr, HAS_SKIP: tl.constexpr, PDL: tl.constexpr):
    """One (batch * head, value block): gates from proj [B, NP] (q | k | v | gate input | beta | out gate input),
    the step of recurrent_step on state [B, H, DK, DV] in place, o [B, H * DV] = read-out (+ skip * v).

    q and k come from key head h // (H / KH). QK_NORM: 0 none, 1 x / max(|x|, 1e-6), 2 x * rsqrt(|x|^2 + 1e-6).
    GATE (log forget gate g): 0 gate_mul * sigmoid(z), 1 logsigmoid(z) * gate_mul, 2 -exp(a_log[h]) * softplus(z),
    with z = up_w @ (R gate-input columns) + up_b per key dim; 3 -exp(a_log[h]) * softplus(dt) per head, dt the
    head's gate-input column (its bias already added). BETA: 0 sigmoid(column beta_off + h), 1 the softplus step of
    GATE 3, 2 one. OGR > 0: the low-rank output gate og_w [H * DV, OGR] @ (OGR columns at og_off) + og_b, written
    to og_out [B, H * DV] for the output kernel.
    """
    if PDL:
        gdc_launch_dependents()
    i_bh = tl.program_id(0).to(tl.int64)
    b = i_bh // H
    h = i_bh % H
    kh = h // (H // KH)
    rk = tl.arange(0, DK)
    rv = tl.program_id(1) * BV + tl.arange(0, BV)
    rr = tl.arange(0, RP)
    if GATE < 3:
        wu = tl.load(up_w + (h * DK + rk)[:, None] * R + rr[None, :], mask=(rr < R)[None, :], other=0.0)
        bu = tl.load(up_b + h * DK + rk).to(tl.float32)
    if GATE >= 2:
        a = -tl.exp(tl.load(a_log + h).to(tl.float32))
    if HAS_SKIP:
        sk = tl.load(skip + h * DV + rv).to(tl.float32)
    if OGRP > 0:
        ro = tl.arange(0, OGRP)
        wo = tl.load(og_w + (h * DV + rv)[:, None] * OGR + ro[None, :], mask=(ro < OGR)[None, :], other=0.0)
        bo = tl.load(og_b + h * DV + rv).to(tl.float32)
    if PDL:
        gdc_wait()
    row = proj + b * NP
    q = tl.load(row + kh * DK + rk)                                         # [DK] after conv + SiLU
    k = tl.load(row + KH * DK + kh * DK + rk)
    v = tl.load(row + 2 * KH * DK + h * DV + rv)                            # [BV]
    if QK_NORM == 1:
        q = q / tl.maximum(tl.sqrt(tl.sum(q * q, 0)), 1e-6)
        k = k / tl.maximum(tl.sqrt(tl.sum(k * k, 0)), 1e-6)
    elif QK_NORM == 2:
        q = q / tl.sqrt(tl.sum(q * q, 0) + 1e-6)
        k = k / tl.sqrt(tl.sum(k * k, 0) + 1e-6)
    ptr = state + i_bh * DK * DV + rk[:, None] * DV + rv[None, :]
    if GATE < 3:
        d = tl.load(row + gate_off + rr, mask=rr < R, other=0.0)           # [RP] gate input (low rank)
        z = tl.sum(wu.to(tl.float32) * d[None, :], 1) + bu                  # [DK]
        if GATE == 0:
            g = gate_mul * tl.sigmoid(z)
        elif GATE == 1:
            g = (tl.minimum(z, 0.0) - _log1p_exp_neg_abs(z)) * gate_mul
        else:
            g = a * (tl.maximum(z, 0.0) + _log1p_exp_neg_abs(z))
        S = tl.load(ptr) * tl.exp(g)[:, None]                               # [DK, BV] decayed
    else:
        dt = tl.load(row + gate_off + h)
        dt = tl.maximum(dt, 0.0) + _log1p_exp_neg_abs(dt)                   # softplus: the head's step
        S = tl.load(ptr) * tl.exp(a * dt)
    if BETA == 0:
        beta = tl.sigmoid(tl.load(row + beta_off + h))
    elif BETA == 1:
        beta = dt
    else:
        beta = 1.0
    if DELTA:
        u = v - tl.sum(k[:, None] * S, 0)                                   # overwrite what k held
    else:
        u = v
    S = S + (beta * k)[:, None] * u[None, :]
    tl.store(ptr, S)
    out = tl.sum((q * scale)[:, None] * S, 0)
    if HAS_SKIP:
        out += sk * v
    tl.store(o + b * (H * DV) + h * DV + rv, out)
    if OGRP > 0:
        d2 = tl.load(row + og_off + ro, mask=ro < OGR, other=0.0)
        tl.store(og_out + b * (H * DV) + h * DV + rv, tl.sum(wo.to(tl.float32) * d2[None, :], 1) + bo)


@triton.jit
def _out_norm_weight(norm_w, col, cmask, rd, W: tl.constexpr, GM: tl.constexpr, NW_FULL: tl.constexpr):
    """The output norm's weight for the columns col [R, W]: one per channel (NW_FULL), else one group's (GM rows
    of W), shared by every group; for GM = 1 a row [1, W] that broadcasts."""
    if NW_FULL:
        nw = tl.load(norm_w + col, mask=cmask, other=0.0).to(tl.float32)
    elif GM > 1:
        nw = tl.load(norm_w + col % (GM * W), mask=cmask, other=0.0).to(tl.float32)
    else:
        nw = tl.load(norm_w + rd).to(tl.float32)[None, :]
    return nw


@triton.jit
def _gate_act(gt, OG_SIGMOID: tl.constexpr):
    """The output gate's activation: sigmoid or SiLU."""
    if OG_SIGMOID:
        act = tl.sigmoid(gt)
    else:
        act = gt * tl.sigmoid(gt)
    return act


@triton.jit
def _out_prologue(a, gt, nw, eps, HP: tl.constexpr, W: tl.constexpr, GM: tl.constexpr, GATE_FIRST: tl.constexpr,
                  OG_SIGMOID: tl.constexpr):
    """The mixer output a [HP, W] (rows of W channels) before out_proj: RMSNorm over groups of GM rows, times
    nw (_out_norm_weight), and the output gate gt [HP, W] through _gate_act; the gate multiplies before the norm
    if GATE_FIRST (gated RMSNorm), after it otherwise."""
    act = _gate_act(gt, OG_SIGMOID)
    if GATE_FIRST:
        a = a * act
    ss = tl.sum(a * a, 1)                                                   # [HP]
    if GM > 1:                                                              # summed over each row's group
        rh = tl.arange(0, HP)
        ss = tl.sum(tl.where((rh[:, None] // GM) == (rh[None, :] // GM), ss[None, :], 0.0), 1)
    a = a / tl.sqrt(ss / (GM * W) + eps)[:, None] * nw
    if not GATE_FIRST:
        a = a * act
    return a


@triton.jit
def gemv_residual_kernel(inp, gate, norm_w, w, x, N, K, NP, gate_off, eps,
                          HEAD_NORM: tl.constexpr, H: tl.constexpr, HP: tl.constexpr, DV: tl.constexpr,
                          GM: tl.constexpr, NW_FULL: tl.constexpr, GATE_FIRST: tl.constexpr,
                          OG_SIGMOID: tl.constexpr, BN: tl.constexpr, PDL: tl.constexpr):
    """x[b, n] += sum_k w[n, k] * a[b, k], w [N, K], x [B, N] float32, K = H * DV, read as [H, DV] (HP >= H,
    DV powers of two): a = inp [B, K] or, if HEAD_NORM, _out_prologue of it with the gate at
    gate[b, gate_off + k] (row stride NP)."""
    if PDL:
        gdc_launch_dependents()
    pid_n = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    rn = pid_n * BN + tl.arange(0, BN)
    nmask = rn < N
    rh = tl.arange(0, HP)
    rd = tl.arange(0, DV)
    col = rh[:, None] * DV + rd[None, :]                                    # [HP, DV] column index
    cmask = (rh < H)[:, None] & (rd < DV)[None, :]
    wt = tl.load(w + rn[:, None, None] * K + col[None, :, :], mask=nmask[:, None, None] & cmask[None, :, :],
                 other=0.0)                                                 # [BN, HP, DV], before the wait
    if HEAD_NORM:
        nw = _out_norm_weight(norm_w, col, cmask, rd, DV, GM, NW_FULL)
    if PDL:
        gdc_wait()
    a = tl.load(inp + b * K + col, mask=cmask, other=0.0)                  # [HP, DV]
    if HEAD_NORM:
        gt = tl.load(gate + b * NP + gate_off + col, mask=cmask, other=0.0)
        a = _out_prologue(a, gt, nw, eps, HP, DV, GM, GATE_FIRST, OG_SIGMOID)
    y = tl.sum(tl.sum(wt.to(tl.float32) * a[None, :, :], 2), 1)            # [BN]
    xp = x + b * N + rn
    tl.store(xp, tl.load(xp, mask=nmask, other=0.0) + y, mask=nmask)


@triton.jit
def _dot_rows(a, wk, SPLIT: tl.constexpr):
    """a [BB, BK] float32 @ wk [BN, BK]^T -> [BB, BN] float32. SPLIT (bf16 weights): on tensor cores, a as the sum
    of its bf16 rounding and the bf16 rounding of the rest (relative error ~2^-16, float32-grade); else exact
    float32 products."""
    if SPLIT:
        hi = a.to(tl.bfloat16)
        lo = (a - hi.to(tl.float32)).to(tl.bfloat16)
        wt = tl.trans(wk)
        return tl.dot(hi, wt) + tl.dot(lo, wt)
    else:
        return tl.dot(a, tl.trans(wk.to(tl.float32)), input_precision="ieee")


@triton.jit
def _gemm_tile(B, N, BB: tl.constexpr, BN: tl.constexpr):
    """This program's tile of a batched kernel (grid: output row blocks x batch row blocks): the batch rows
    ``rb`` [BB] (int64) and output rows ``rn`` [BN], each with its in-bounds mask."""
    rb = tl.program_id(1).to(tl.int64) * BB + tl.arange(0, BB)
    rn = tl.program_id(0) * BN + tl.arange(0, BN)
    return rb, rb < B, rn, rn < N


@triton.jit
def norm_gemm_kernel(x, tok, xres, norm_w, w, out, bias, tail, conv_w, N, K, C, B, eps,
                      EMBED: tl.constexpr, HAS_BIAS: tl.constexpr, CONV: tl.constexpr, CONV_BIAS: tl.constexpr,
                      SWIGLU: tl.constexpr,
                      KW: tl.constexpr, KP: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, BB: tl.constexpr,
                      SPLIT: tl.constexpr, PDL: tl.constexpr):
    """norm_gemv_kernel's math for BB batch rows at once (batches of 16 rows and more): each weight tile is read
    once for all of them and multiplied as a matrix product (on tensor cores for bf16 weights), walking the input
    BK columns at a time."""
    if PDL:
        gdc_launch_dependents()
        gdc_wait()
    rb, bmask, rn, nmask = _gemm_tile(B, N, BB, BN)
    if EMBED:
        xrow = x + tl.load(tok + rb, mask=bmask, other=0).to(tl.int64) * K
    else:
        xrow = x + rb * K
    ss = tl.zeros([BB], dtype=tl.float32)
    for k0 in range(0, K, BK):
        rk = k0 + tl.arange(0, BK)
        xmask = bmask[:, None] & (rk < K)[None, :]
        xv = tl.load(xrow[:, None] + rk[None, :], mask=xmask, other=0.0).to(tl.float32)
        if EMBED:
            tl.store(xres + rb[:, None] * K + rk[None, :], xv, mask=xmask & (tl.program_id(0) == 0))
        ss += tl.sum(xv * xv, 1)
    rstd = 1.0 / tl.sqrt(ss / K + eps)
    y = tl.zeros([BB, BN], dtype=tl.float32)
    if SWIGLU:
        yu = tl.zeros([BB, BN], dtype=tl.float32)
    for k0 in range(0, K, BK):
        rk = k0 + tl.arange(0, BK)
        kmask = rk < K
        xv = tl.load(xrow[:, None] + rk[None, :], mask=bmask[:, None] & kmask[None, :], other=0.0).to(tl.float32)
        xn = xv * rstd[:, None] * tl.load(norm_w + rk, mask=kmask, other=0.0).to(tl.float32)[None, :]
        wmask = nmask[:, None] & kmask[None, :]
        y += _dot_rows(xn, tl.load(w + rn[:, None] * K + rk[None, :], mask=wmask, other=0.0), SPLIT)
        if SWIGLU:
            yu += _dot_rows(xn, tl.load(w + (rn + N)[:, None] * K + rk[None, :], mask=wmask, other=0.0), SPLIT)
    if SWIGLU:
        y = y * tl.sigmoid(y) * yu
    if HAS_BIAS:
        bv = tl.load(bias + rn, mask=nmask, other=0.0)
        if CONV_BIAS:
            y += tl.where(rn < C, 0.0, bv)[None, :]
        else:
            y += bv[None, :]
    if CONV:
        cmask = rn < C
        rj = tl.arange(0, KP)
        cw = tl.load(conv_w + rn[:, None] * KW + rj[None, :], mask=cmask[:, None] & (rj < KW - 1)[None, :],
                     other=0.0).to(tl.float32)
        cw_last = tl.load(conv_w + rn * KW + KW - 1, mask=cmask, other=0.0).to(tl.float32)
        # tail [B, C, KW-1] as [BB, BN, KP]
        tptr = tail + rb[:, None, None] * (C * (KW - 1)) + rn[None, :, None] * (KW - 1) + rj[None, None, :]
        tmask = bmask[:, None, None] & cmask[None, :, None] & (rj < KW - 1)[None, None, :]
        t_old = tl.load(tptr, mask=tmask, other=0.0)
        t_next = tl.load(tptr + 1, mask=tmask & (rj < KW - 2)[None, None, :], other=0.0)
        z = tl.sum(t_old * cw[None, :, :], 2) + cw_last[None, :] * y
        if CONV_BIAS:
            z += bv[None, :]
        tl.debug_barrier()                                                  # all tail reads before any write
        tl.store(tptr, tl.where((rj == KW - 2)[None, None, :], y[:, :, None], t_next), mask=tmask)
        y = tl.where(cmask[None, :], z * tl.sigmoid(z), y)
    tl.store(out + rb[:, None] * N + rn[None, :], y, mask=bmask[:, None] & nmask[None, :])


@triton.jit
def gemm_residual_kernel(inp, gate, norm_w, w, x, N, K, NP, gate_off, B, eps,
                          HEAD_NORM: tl.constexpr, H: tl.constexpr, DV: tl.constexpr, GM: tl.constexpr,
                          NW_FULL: tl.constexpr, GATE_FIRST: tl.constexpr, OG_SIGMOID: tl.constexpr,
                          BN: tl.constexpr, BB: tl.constexpr, SPLIT: tl.constexpr, PDL: tl.constexpr):
    """gemv_residual_kernel's math for BB batch rows at once, as norm_gemm_kernel, one row of DV columns at a
    time (a norm group of GM > 1 rows takes a first pass for its sum of squares)."""
    if PDL:
        gdc_launch_dependents()
        gdc_wait()
    rb, bmask, rn, nmask = _gemm_tile(B, N, BB, BN)
    rd = tl.arange(0, DV)
    if HEAD_NORM and GM == 1 and not NW_FULL:
        nw = tl.load(norm_w + rd).to(tl.float32)
    y = tl.zeros([BB, BN], dtype=tl.float32)
    for grp in range(H // GM):
        if HEAD_NORM and GM > 1:
            ss = tl.zeros([BB], dtype=tl.float32)
            for m in range(GM):
                col = (grp * GM + m) * DV + rd
                a = tl.load(inp + rb[:, None] * K + col[None, :], mask=bmask[:, None], other=0.0)
                if GATE_FIRST:
                    gt = tl.load(gate + rb[:, None] * NP + gate_off + col[None, :], mask=bmask[:, None], other=0.0)
                    a = a * _gate_act(gt, OG_SIGMOID)
                ss += tl.sum(a * a, 1)
            rstd = 1.0 / tl.sqrt(ss / (GM * DV) + eps)
        for m in range(GM):
            col = (grp * GM + m) * DV + rd
            a = tl.load(inp + rb[:, None] * K + col[None, :], mask=bmask[:, None], other=0.0)   # [BB, DV]
            if HEAD_NORM:
                gt = tl.load(gate + rb[:, None] * NP + gate_off + col[None, :], mask=bmask[:, None], other=0.0)
                act = _gate_act(gt, OG_SIGMOID)
                if GATE_FIRST:
                    a = a * act
                if GM == 1:
                    rstd = 1.0 / tl.sqrt(tl.sum(a * a, 1) / DV + eps)
                if NW_FULL:
                    nw = tl.load(norm_w + col).to(tl.float32)
                elif GM > 1:
                    nw = tl.load(norm_w + m * DV + rd).to(tl.float32)
                a = a * rstd[:, None] * nw[None, :]
                if not GATE_FIRST:
                    a = a * act
            y += _dot_rows(a, tl.load(w + rn[:, None] * K + col[None, :], mask=nmask[:, None], other=0.0), SPLIT)
    xmask = bmask[:, None] & nmask[None, :]
    xp = x + rb[:, None] * N + rn[None, :]
    tl.store(xp, tl.load(xp, mask=xmask, other=0.0) + y, mask=xmask)
