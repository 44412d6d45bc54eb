"""The delta rule's prep with the chunk's scores and inverse held in registers (chunks of 16 or 32 tokens).

Writes what :func:`seqedge.kernels.delta_prep_triton.prep` writes (qt, kt, A, w, u0, b_C and optionally
``(I + M)^-1``), from one program per (chunk, batch*head) that keeps the chunk as 16-row blocks: the scores of each
block pair accumulate over the key columns in registers, the diagonal blocks of ``(I + M)`` are inverted in
registers by forward substitution and the block below by one product, and w and u0 are formed block by block. No
float32 scratch passes through global memory (the other prep writes M there, reloads it row by row in its
substitution and writes its inverse back).

Decays per key (g ``[B, T, H, dk]``) or per head (``[B, T, H, 1]``, broadcast over the key columns). Exponents are
referenced so no factor that survives the mask grows past exp(40) for g >= -5: a diagonal block's scores to its
middle row, the block below the diagonal's to the last row of the block above (both of its factors are then at
most 1 for g <= 0).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .delta_prep_triton import prep_outputs


@triton.jit
def _rows(ptr, base, t0, T, H, W, cols, i: tl.constexpr, GW: tl.constexpr, BD: tl.constexpr):
    """Rows ``t0 + 16 i ..`` of a ``[B, T, H, W]`` tensor at the columns ``cols`` (float32, zero past T); with
    ``GW == 1`` the tensor has one column, broadcast over ``cols``."""
    r = tl.arange(0, 16)
    rows = t0 + i * 16 + r
    m = rows < T
    if GW == 1:
        x = tl.load(ptr + base + rows.to(tl.int64) * H, mask=m, other=0.0).to(tl.float32)
        return x[:, None] + tl.zeros([16, BD], dtype=tl.float32)
    return tl.load(ptr + base + rows[:, None].to(tl.int64) * (H * W) + cols[None, :], mask=m[:, None],
                   other=0.0).to(tl.float32)


@triton.jit
def _store_rows(ptr, base, t0, T, H, W, cols, x, i: tl.constexpr):
    """Store x ``[16, len(cols)]`` at rows ``t0 + 16 i ..`` of a ``[B, T, H, W]`` tensor (rows past T skipped)."""
    r = tl.arange(0, 16)
    rows = t0 + i * 16 + r
    tl.store(ptr + base + rows[:, None].to(tl.int64) * (H * W) + cols[None, :], x.to(ptr.dtype.element_ty),
             mask=(rows < T)[:, None])


@triton.jit
def _store_block(out, i: tl.constexpr, j: tl.constexpr, blk, C: tl.constexpr):
    """Block (i, j) of the row-major ``[C, C]`` matrix at out, in out's dtype."""
    r = tl.arange(0, 16)
    tl.store(out + (i * 16 + r)[:, None] * C + (j * 16 + r)[None, :], blk.to(out.dtype.element_ty))


@triton.jit
def _middle_row(b):
    """Row 8 of a ``[16, n]`` block."""
    r = tl.arange(0, 16)
    return tl.sum(tl.where(r[:, None] == 8, b, 0.0), axis=0)


@triton.jit
def _diagonal_inverse(m):
    """``(I + m)^-1`` of one strictly lower 16x16 block in registers, by forward substitution (rows 0 and 1 of
    ``-m`` are already final)."""
    r = tl.arange(0, 16)
    x = -m
    for j in range(2, 16):
        row = tl.where(r < j, -tl.sum(tl.where(r[:, None] == j, m, 0.0), axis=0), 0.0)
        row += tl.sum(row[:, None] * x, axis=0)
        x = tl.where(r[:, None] == j, row[None, :], x)
    return x + tl.where(r[:, None] == r[None, :], 1.0, 0.0)


@triton.jit
def _delta_prep_regs_kernel(q, k, v, g, beta, qt, kt, A, w, u0, decay, inverse, T, H, NC, scale,
                            DK: tl.constexpr, DV: tl.constexpr, GK: tl.constexpr, C: tl.constexpr,
                            BD: tl.constexpr, PREC: tl.constexpr, WITH_INVERSE: tl.constexpr):
    """One chunk of C = 16 or 32 tokens (one or two 16-row blocks): qt, kt, w ``[B, T, H, DK]`` and u0
    ``[B, T, H, DV]`` in k's dtype, A ``[B*H, NC, C, C]`` in k's dtype, b_C ``[B*H, NC, DK]`` float32, and with
    WITH_INVERSE ``(I + M)^-1`` ``[B*H, NC, C, C]`` float32."""
    i_c = tl.program_id(0)
    i_bh = tl.program_id(1)
    i_b = i_bh // H
    i_h = i_bh % H
    DT = k.dtype.element_ty
    TWO: tl.constexpr = C == 32
    r = tl.arange(0, 16)
    rd = tl.arange(0, BD)
    t0 = i_c * C
    idx = i_bh.to(tl.int64) * NC + i_c
    k_base = i_b.to(tl.int64) * T * H * DK + i_h * DK
    v_base = i_b.to(tl.int64) * T * H * DV + i_h * DV
    g_base = i_b.to(tl.int64) * T * H * GK + i_h * GK
    be_base = i_b.to(tl.int64) * T * H + i_h
    be0 = tl.load(beta + be_base + (t0 + r).to(tl.int64) * H, mask=t0 + r < T, other=0.0).to(tl.float32)
    be1 = tl.load(beta + be_base + (t0 + 16 + r).to(tl.int64) * H, mask=t0 + 16 + r < T, other=0.0).to(tl.float32)
    z = tl.zeros([16, 16], dtype=tl.float32)
    m00 = z
    m10 = z
    m11 = z
    a00 = z
    a10 = z
    a11 = z
    for d0 in tl.range(0, DK, BD, num_stages=1):
        cols = d0 + rd
        g0 = _rows(g, g_base, t0, T, H, GK, cols, 0, GK, BD)
        b0 = tl.cumsum(g0, axis=0)
        s0 = tl.sum(g0, axis=0)                                                  # b0's last row
        q0 = _rows(q, k_base, t0, T, H, DK, cols, 0, DK, BD) * scale
        k0 = _rows(k, k_base, t0, T, H, DK, cols, 0, DK, BD)
        ref = _middle_row(b0)
        left = tl.exp(tl.minimum(b0 - ref[None, :], 40.0))
        right = tl.trans((k0 * tl.exp(tl.minimum(ref[None, :] - b0, 40.0))).to(DT))
        m00 += tl.dot((k0 * left).to(DT), right, input_precision=PREC)
        a00 += tl.dot((q0 * left).to(DT), right, input_precision=PREC)
        last = s0
        if TWO:
            g1 = _rows(g, g_base, t0, T, H, GK, cols, 1, GK, BD)
            b1 = s0[None, :] + tl.cumsum(g1, axis=0)
            last = s0 + tl.sum(g1, axis=0)
            q1 = _rows(q, k_base, t0, T, H, DK, cols, 1, DK, BD) * scale
            k1 = _rows(k, k_base, t0, T, H, DK, cols, 1, DK, BD)
            ref = _middle_row(b1)
            left = tl.exp(tl.minimum(b1 - ref[None, :], 40.0))
            right = tl.trans((k1 * tl.exp(tl.minimum(ref[None, :] - b1, 40.0))).to(DT))
            m11 += tl.dot((k1 * left).to(DT), right, input_precision=PREC)
            a11 += tl.dot((q1 * left).to(DT), right, input_precision=PREC)
            left = tl.exp(tl.minimum(b1 - s0[None, :], 40.0))
            right = tl.trans((k0 * tl.exp(tl.minimum(s0[None, :] - b0, 40.0))).to(DT))
            m10 += tl.dot((k1 * left).to(DT), right, input_precision=PREC)
            a10 += tl.dot((q1 * left).to(DT), right, input_precision=PREC)
            _store_rows(qt, k_base, t0, T, H, DK, cols, q1 * tl.exp(b1), 1)
            _store_rows(kt, k_base, t0, T, H, DK, cols, k1 * be1[:, None] * tl.exp(last[None, :] - b1), 1)
        _store_rows(qt, k_base, t0, T, H, DK, cols, q0 * tl.exp(b0), 0)
        _store_rows(kt, k_base, t0, T, H, DK, cols, k0 * be0[:, None] * tl.exp(last[None, :] - b0), 0)
        tl.store(decay + idx * DK + cols, last)
    strict = r[:, None] > r[None, :]
    causal = r[:, None] >= r[None, :]
    a_out = A + idx * C * C
    m00 = tl.where(strict, m00 * be0[None, :], 0.0)
    _store_block(a_out, 0, 0, tl.where(causal, a00 * be0[None, :], 0.0), C)
    x0 = _diagonal_inverse(m00)
    x1 = x0                     # x1, y10 stand in for the blocks a chunk of 16 lacks (never stored or used)
    y10 = x0
    if TWO:
        m11 = tl.where(strict, m11 * be1[None, :], 0.0)
        _store_block(a_out, 1, 0, a10 * be0[None, :], C)
        _store_block(a_out, 1, 1, tl.where(causal, a11 * be1[None, :], 0.0), C)
        _store_block(a_out, 0, 1, z, C)
        x1 = _diagonal_inverse(m11)
        y10 = -tl.dot(x1, tl.dot(m10 * be0[None, :], x0, input_precision="ieee"), input_precision="ieee")
    if WITH_INVERSE:
        inv_out = inverse + idx * C * C
        _store_block(inv_out, 0, 0, x0, C)
        if TWO:
            _store_block(inv_out, 1, 0, y10, C)
            _store_block(inv_out, 1, 1, x1, C)
            _store_block(inv_out, 0, 1, z, C)
    for d0 in tl.range(0, DK, BD, num_stages=1):
        cols = d0 + rd
        g0 = _rows(g, g_base, t0, T, H, GK, cols, 0, GK, BD)
        b0 = tl.cumsum(g0, axis=0)
        ke0 = _rows(k, k_base, t0, T, H, DK, cols, 0, DK, BD) * tl.exp(b0)
        _store_rows(w, k_base, t0, T, H, DK, cols, tl.dot(x0, ke0, input_precision=PREC), 0)
        if TWO:
            g1 = _rows(g, g_base, t0, T, H, GK, cols, 1, GK, BD)
            ke1 = _rows(k, k_base, t0, T, H, DK, cols, 1, DK, BD) * tl.exp(
                tl.sum(g0, axis=0)[None, :] + tl.cumsum(g1, axis=0))
            _store_rows(w, k_base, t0, T, H, DK, cols,
                        tl.dot(y10, ke0, input_precision=PREC) + tl.dot(x1, ke1, input_precision=PREC), 1)
    for e0 in tl.range(0, DV, BD, num_stages=1):
        cols = e0 + rd
        v0 = _rows(v, v_base, t0, T, H, DV, cols, 0, DV, BD)
        _store_rows(u0, v_base, t0, T, H, DV, cols, tl.dot(x0, v0, input_precision=PREC), 0)
        if TWO:
            v1 = _rows(v, v_base, t0, T, H, DV, cols, 1, DV, BD)
            _store_rows(u0, v_base, t0, T, H, DV, cols,
                        tl.dot(y10, v0, input_precision=PREC) + tl.dot(x1, v1, input_precision=PREC), 1)


def prep(q, k, v, g, beta, scale: float, chunk: int, block_k: int, num_warps: int, precision: str,
         with_inverse: bool = False) -> tuple[torch.Tensor, ...]:
    """:func:`seqedge.kernels.delta_prep_triton.prep`'s outputs from :func:`_delta_prep_regs_kernel` (chunk 16
    or 32): ``(qt, kt, A, w, u0, decay)``, and with ``with_inverse`` ``(I + M)^-1`` ``[B*H, NC, C, C]`` float32."""
    if chunk not in (16, 32):
        raise ValueError(f"the register prep takes chunks of 16 or 32 tokens, got {chunk}")
    B, T, H, DK = q.shape
    DV = v.shape[-1]
    qt, kt, A, w, u0, decay, inverse = prep_outputs(k, v, chunk, with_inverse)
    nc = A.shape[1]
    _delta_prep_regs_kernel[(nc, B * H)](q, k, v, g, beta, qt, kt, A, w, u0, decay,
                                         inverse if with_inverse else decay, T, H, nc, scale,
                                         DK=DK, DV=DV, GK=g.shape[-1], C=chunk, BD=min(block_k, DK, DV),
                                         PREC=precision, WITH_INVERSE=with_inverse, num_warps=num_warps)
    return (qt, kt, A, w, u0, decay, inverse) if with_inverse else (qt, kt, A, w, u0, decay)
