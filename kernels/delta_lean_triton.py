"""Triton forward of the delta rule with one gate per head, o formed beside the sequential chain.

The same chunked form as :mod:`seqedge.kernels.delta_scan_triton` (b the cumulative log-gates inside a chunk of C
tokens, one per head; ``T = (I + M)^-1``, ``M[t, s] = beta_s <k_t, k_s> exp(b_t - b_s)`` for s < t), split so
that the sequential chain carries only the recurrence:

1. The prep (every chunk in parallel, two launches): ``_lean_solve_kernel`` b and ``T`` (M built 16x16 block
   by block and inverted in registers, on few warps), ``_lean_products_kernel`` ``w = T (k exp(b))`` and
   ``u0 = T v`` (products in the inputs' dtype). Nothing else is written (no gated q or k, no scores A): with a
   gate per head those are per-row factors the later launches apply to q, k and their products.
2. ``_lean_chain_kernel`` (one program per (batch*head, value block), the chunks in order): ``u = u0 - w S``,
   ``S' = exp(b_C) S + k^T (u f)`` with ``f = beta exp(b_C - b)``, two products a chunk; it writes the state
   entering every chunk and u, in the inputs' dtype (the values the products read).
3. ``_lean_out_kernel`` (every chunk in parallel): ``o = scale exp(b) (q S) + A u`` with the scores
   ``A[t, s] = scale beta_s <q_t, k_s> exp(b_t - b_s)`` (s <= t) built from q and k.

The forward (:func:`seqedge.kernels.delta_scan_triton.delta_scan_fwd`) runs a piece's o launch beside the next
piece's chain, so the chain's critical path is its two products per chunk.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl



@triton.jit
def _block_gates(g, beta, gates, be_base, t0, offset, T, H, i: tl.constexpr):
    """16-row block i of a chunk: its cumulative log-gates (``offset`` + the running sum inside the block,
    stored to ``gates``), beta, and the block's log-gate sum (the next block's offset)."""
    r = tl.arange(0, 16)
    rows = t0 + i * 16 + r
    m = rows < T
    b_g = tl.load(g + be_base + rows.to(tl.int64) * H, mask=m, other=0.0).to(tl.float32)
    b_b = offset + tl.cumsum(b_g, axis=0)
    tl.store(gates + i * 16 + r, b_b)
    b_be = tl.load(beta + be_base + rows.to(tl.int64) * H, mask=m, other=0.0).to(tl.float32)
    return b_b, b_be, offset + tl.sum(b_g, axis=0)


@triton.jit
def _scaled(acc, b_i, b_j, be_j, diagonal: tl.constexpr):
    """A 16x16 block of M from its raw products ``<k_t, k_s>``: ``beta_s exp(b_t - b_s)``, strictly lower on
    the diagonal."""
    r = tl.arange(0, 16)
    keep = (r[:, None] > r[None, :]) if diagonal else (r[:, None] >= 0)
    return tl.where(keep, acc * tl.exp(tl.where(keep, b_i[:, None] - b_j[None, :], 0.0)) * be_j[None, :], 0.0)


@triton.jit
def _diagonal_inverse(m):
    """``(I + m)^-1`` of one strictly lower 16x16 block in registers, by forward substitution (rows 0 and 1
    of ``-m`` are already final)."""
    r = tl.arange(0, 16)
    x = -m
    for j in range(2, 16):
        row = tl.where(r < j, -tl.sum(tl.where(r[:, None] == j, m, 0.0), axis=0), 0.0)
        row += tl.sum(row[:, None] * x, axis=0)
        x = tl.where(r[:, None] == j, row[None, :], x)
    return x + tl.where(r[:, None] == r[None, :], 1.0, 0.0)


@triton.jit
def _store_block(out, i: tl.constexpr, j: tl.constexpr, blk, C: tl.constexpr):
    """Block (i, j) of the row-major ``[C, C]`` matrix at out, in out's dtype."""
    r = tl.arange(0, 16)
    tl.store(out + (i * 16 + r)[:, None] * C + (j * 16 + r)[None, :], blk.to(out.dtype.element_ty))


@triton.jit
def _lean_solve_kernel(k, g, beta, gates, ainv, T, H, NC, DK: tl.constexpr, C: tl.constexpr, BK: tl.constexpr,
                       PREC: tl.constexpr):
    """One chunk (C = 16, 32 or 64: one to four 16-row blocks): b ``gates [B*H, NC, C]`` float32 and
    ``(I + M)^-1`` ``ainv [B*H, NC, C, C]`` in k's dtype. M is built 16x16 block by block and inverted in
    registers: the diagonal blocks by forward substitution, those below by ``X_ij = -X_ii sum_m M_im X_mj``."""
    i_c = tl.program_id(0)
    i_bh = tl.program_id(1)
    i_b = i_bh // H
    i_h = i_bh % H
    NB: tl.constexpr = C // 16
    r = tl.arange(0, 16)
    rd = tl.arange(0, BK)
    t0 = i_c * C
    idx = i_bh.to(tl.int64) * NC + i_c
    be_base = i_b.to(tl.int64) * T * H + i_h
    k_base = i_b.to(tl.int64) * T * H * DK + i_h * DK
    gp = gates + idx * C
    b0, be0, s = _block_gates(g, beta, gp, be_base, t0, 0.0, T, H, 0)
    b1 = b0                     # b1.., be1.., a10.. stand in for blocks a short chunk lacks (never stored)
    be1 = be0
    b2 = b0
    be2 = be0
    b3 = b0
    be3 = be0
    if NB >= 2:
        b1, be1, s = _block_gates(g, beta, gp, be_base, t0, s, T, H, 1)
    if NB == 4:
        b2, be2, s = _block_gates(g, beta, gp, be_base, t0, s, T, H, 2)
        b3, be3, s = _block_gates(g, beta, gp, be_base, t0, s, T, H, 3)
    z = tl.zeros([16, 16], dtype=tl.float32)
    a00 = z
    a10 = z
    a11 = z
    a20 = z
    a21 = z
    a22 = z
    a30 = z
    a31 = z
    a32 = z
    a33 = z
    for d0 in tl.range(0, DK, BK, num_stages=1):
        cols = (d0 + rd)[None, :]
        k0 = tl.load(k + k_base + (t0 + r)[:, None].to(tl.int64) * (H * DK) + cols, mask=(t0 + r < T)[:, None],
                     other=0.0)
        a00 = tl.dot(k0, tl.trans(k0), a00, input_precision=PREC)
        if NB >= 2:
            k1 = tl.load(k + k_base + (t0 + 16 + r)[:, None].to(tl.int64) * (H * DK) + cols,
                         mask=(t0 + 16 + r < T)[:, None], other=0.0)
            a10 = tl.dot(k1, tl.trans(k0), a10, input_precision=PREC)
            a11 = tl.dot(k1, tl.trans(k1), a11, input_precision=PREC)
        if NB == 4:
            k2 = tl.load(k + k_base + (t0 + 32 + r)[:, None].to(tl.int64) * (H * DK) + cols,
                         mask=(t0 + 32 + r < T)[:, None], other=0.0)
            k3 = tl.load(k + k_base + (t0 + 48 + r)[:, None].to(tl.int64) * (H * DK) + cols,
                         mask=(t0 + 48 + r < T)[:, None], other=0.0)
            a20 = tl.dot(k2, tl.trans(k0), a20, input_precision=PREC)
            a21 = tl.dot(k2, tl.trans(k1), a21, input_precision=PREC)
            a22 = tl.dot(k2, tl.trans(k2), a22, input_precision=PREC)
            a30 = tl.dot(k3, tl.trans(k0), a30, input_precision=PREC)
            a31 = tl.dot(k3, tl.trans(k1), a31, input_precision=PREC)
            a32 = tl.dot(k3, tl.trans(k2), a32, input_precision=PREC)
            a33 = tl.dot(k3, tl.trans(k3), a33, input_precision=PREC)
    out = ainv + idx * C * C
    x0 = _diagonal_inverse(_scaled(a00, b0, b0, be0, True))
    _store_block(out, 0, 0, x0, C)
    x1 = x0
    y10 = x0
    if NB >= 2:
        m10 = _scaled(a10, b1, b0, be0, False)
        x1 = _diagonal_inverse(_scaled(a11, b1, b1, be1, True))
        y10 = -tl.dot(x1, tl.dot(m10, x0, input_precision=PREC), input_precision=PREC)
        _store_block(out, 1, 0, y10, C)
        _store_block(out, 1, 1, x1, C)
        _store_block(out, 0, 1, z, C)
    if NB == 4:
        m20 = _scaled(a20, b2, b0, be0, False)
        m21 = _scaled(a21, b2, b1, be1, False)
        m30 = _scaled(a30, b3, b0, be0, False)
        m31 = _scaled(a31, b3, b1, be1, False)
        m32 = _scaled(a32, b3, b2, be2, False)
        x2 = _diagonal_inverse(_scaled(a22, b2, b2, be2, True))
        x3 = _diagonal_inverse(_scaled(a33, b3, b3, be3, True))
        y21 = -tl.dot(x2, tl.dot(m21, x1, input_precision=PREC), input_precision=PREC)
        y32 = -tl.dot(x3, tl.dot(m32, x2, input_precision=PREC), input_precision=PREC)
        y20 = -tl.dot(x2, tl.dot(m20, x0, input_precision=PREC) + tl.dot(m21, y10, input_precision=PREC),
                      input_precision=PREC)
        y31 = -tl.dot(x3, tl.dot(m31, x1, input_precision=PREC) + tl.dot(m32, y21, input_precision=PREC),
                      input_precision=PREC)
        y30 = -tl.dot(x3, tl.dot(m30, x0, input_precision=PREC) + tl.dot(m31, y10, input_precision=PREC)
                      + tl.dot(m32, y20, input_precision=PREC), input_precision=PREC)
        _store_block(out, 2, 0, y20, C)
        _store_block(out, 2, 1, y21, C)
        _store_block(out, 2, 2, x2, C)
        _store_block(out, 3, 0, y30, C)
        _store_block(out, 3, 1, y31, C)
        _store_block(out, 3, 2, y32, C)
        _store_block(out, 3, 3, x3, C)
        _store_block(out, 0, 2, z, C)
        _store_block(out, 0, 3, z, C)
        _store_block(out, 1, 2, z, C)
        _store_block(out, 1, 3, z, C)
        _store_block(out, 2, 3, z, C)


@triton.jit
def _lean_products_kernel(k, v, gates, ainv, w, u0, T, H, NC, DK: tl.constexpr, DV: tl.constexpr,
                          C: tl.constexpr, BD: tl.constexpr, PREC: tl.constexpr):
    """One chunk's ``w = (I + M)^-1 (k exp(b))`` (program axis 2 = 0) or ``u0 = (I + M)^-1 v`` (= 1), products
    in k's dtype."""
    i_c = tl.program_id(0)
    i_bh = tl.program_id(1)
    i_b = i_bh // H
    i_h = i_bh % H
    DT = k.dtype.element_ty
    rc = tl.arange(0, C)
    rd = tl.arange(0, BD)
    rows = i_c * C + rc
    m = rows < T
    idx = i_bh.to(tl.int64) * NC + i_c
    inv = tl.load(ainv + idx * C * C + rc[:, None] * C + rc[None, :])
    if tl.program_id(2) == 0:
        k_base = i_b.to(tl.int64) * T * H * DK + i_h * DK
        b_e = tl.exp(tl.load(gates + idx * C + rc))
        for d0 in tl.range(0, DK, BD, num_stages=1):
            off = k_base + rows[:, None].to(tl.int64) * (H * DK) + (d0 + rd)[None, :]
            b_k = (tl.load(k + off, mask=m[:, None], other=0.0).to(tl.float32) * b_e[:, None]).to(DT)
            tl.store(w + off, tl.dot(inv, b_k, input_precision=PREC).to(DT), mask=m[:, None])
    else:
        v_base = i_b.to(tl.int64) * T * H * DV + i_h * DV
        for e0 in tl.range(0, DV, BD, num_stages=1):
            off_v = v_base + rows[:, None].to(tl.int64) * (H * DV) + (e0 + rd)[None, :]
            b_v = tl.load(v + off_v, mask=m[:, None], other=0.0)
            tl.store(u0 + off_v, tl.dot(inv, b_v, input_precision=PREC).to(DT), mask=m[:, None])


@triton.jit
def _lean_chain_kernel(k, beta, w, u0, gates, s0, s_final, states, u_out, T, H, NC,
                       DK: tl.constexpr, DV: tl.constexpr, BV: tl.constexpr, C: tl.constexpr,
                       HAS_INIT: tl.constexpr, PREC: tl.constexpr):
    """The chunks in order for one (batch*head, value block): the state entering each chunk ``states
    [B*H, NC, DK, DV]``, u (like v) and the final state (float32)."""
    i_bh = tl.program_id(0)
    i_v = tl.program_id(1)
    i_b = i_bh // H
    i_h = i_bh % H
    DT = k.dtype.element_ty
    rk = tl.arange(0, DK)
    rv = i_v * BV + tl.arange(0, BV)
    rc = tl.arange(0, C)
    k_base = i_b.to(tl.int64) * T * H * DK + i_h * DK
    v_base = i_b.to(tl.int64) * T * H * DV + i_h * DV
    be_base = i_b.to(tl.int64) * T * H + i_h
    st_off = rk[:, None] * DV + rv[None, :]
    S = tl.zeros([DK, BV], dtype=tl.float32)
    if HAS_INIT:
        S = tl.load(s0 + i_bh.to(tl.int64) * DK * DV + st_off)
    for i_c in range(0, NC):
        rows = i_c * C + rc
        m = rows < T
        idx = i_bh.to(tl.int64) * NC + i_c
        off_k = k_base + rows[:, None].to(tl.int64) * (H * DK) + rk[None, :]
        off_v = v_base + rows[:, None].to(tl.int64) * (H * DV) + rv[None, :]
        b_w = tl.load(w + off_k, mask=m[:, None], other=0.0)
        b_k = tl.load(k + off_k, mask=m[:, None], other=0.0)
        b_u = tl.load(u0 + off_v, mask=m[:, None], other=0.0).to(tl.float32)
        b_g = tl.load(gates + idx * C + rc)
        b_last = tl.load(gates + idx * C + C - 1)
        b_f = tl.load(beta + be_base + rows.to(tl.int64) * H, mask=m, other=0.0).to(tl.float32) * tl.exp(
            b_last - b_g)
        tl.store(states + idx * DK * DV + st_off, S.to(states.dtype.element_ty))
        b_u -= tl.dot(b_w, S.to(DT), input_precision=PREC)                                # [C, BV]
        tl.store(u_out + off_v, b_u.to(u_out.dtype.element_ty), mask=m[:, None])
        S = tl.exp(b_last) * S + tl.dot(tl.trans(b_k), (b_u * b_f[:, None]).to(DT), input_precision=PREC)
    tl.store(s_final + i_bh.to(tl.int64) * DK * DV + st_off, S)


@triton.jit
def _lean_out_kernel(q, k, beta, gates, states, u, o, T, H, NC, scale, DK: tl.constexpr, DV: tl.constexpr,
                     BV: tl.constexpr, C: tl.constexpr, PREC: tl.constexpr):
    """``o = scale exp(b) (q S) + A u`` for one (chunk, batch*head, value block)."""
    i_c = tl.program_id(0)
    i_bh = tl.program_id(1)
    i_v = tl.program_id(2)
    i_b = i_bh // H
    i_h = i_bh % H
    DT = k.dtype.element_ty
    rk = tl.arange(0, DK)
    rv = i_v * BV + tl.arange(0, BV)
    rc = tl.arange(0, C)
    rows = i_c * C + rc
    m = rows < T
    idx = i_bh.to(tl.int64) * NC + i_c
    off_k = i_b.to(tl.int64) * T * H * DK + i_h * DK + rows[:, None].to(tl.int64) * (H * DK) + rk[None, :]
    off_v = i_b.to(tl.int64) * T * H * DV + i_h * DV + rows[:, None].to(tl.int64) * (H * DV) + rv[None, :]
    b_q = tl.load(q + off_k, mask=m[:, None], other=0.0)
    b_k = tl.load(k + off_k, mask=m[:, None], other=0.0)
    b_g = tl.load(gates + idx * C + rc)
    b_beta = tl.load(beta + i_b.to(tl.int64) * T * H + i_h + rows.to(tl.int64) * H, mask=m, other=0.0).to(
        tl.float32)
    causal = rc[:, None] >= rc[None, :]
    scores = tl.dot(b_q, tl.trans(b_k), input_precision=PREC)                           # [C, C]
    a = tl.where(causal, scores * tl.exp(tl.where(causal, b_g[:, None] - b_g[None, :], 0.0))
                 * (scale * b_beta)[None, :], 0.0)
    b_s = tl.load(states + idx * DK * DV + rk[:, None] * DV + rv[None, :])
    b_u = tl.load(u + off_v, mask=m[:, None], other=0.0)
    acc = tl.dot(b_q, b_s, input_precision=PREC) * (scale * tl.exp(b_g))[:, None]
    acc += tl.dot(a.to(DT), b_u, input_precision=PREC)
    tl.store(o + off_v, acc.to(o.dtype.element_ty), mask=m[:, None])


def prep(q, k, v, g, beta, chunk: int, block_k: int, num_warps: int, solve_warps: int,
         precision: str) -> tuple[torch.Tensor, ...]:
    """Launch the prep over one piece (the solve, then the products): ``(q, k, beta, w, u0, gates)``, what the
    chain and the o launch read. q, k ``[B, T, H, dk]``, v ``[B, T, H, dv]``, g ``[B, T, H, 1]``, beta
    ``[B, T, H]``, contiguous; ``block_k`` key columns per step of the solve, ``solve_warps`` its warps,
    ``num_warps`` the products'."""
    B, T, H, DK = k.shape
    DV = v.shape[-1]
    nc = triton.cdiv(T, chunk)
    w, u0 = torch.empty_like(k), torch.empty_like(v)
    gates = torch.empty(B * H, nc, chunk, dtype=torch.float32, device=k.device)
    ainv = torch.empty(B * H, nc, chunk, chunk, dtype=k.dtype, device=k.device)
    _lean_solve_kernel[(nc, B * H)](k, g, beta, gates, ainv, T, H, nc, DK=DK, C=chunk, BK=min(block_k, DK),
                                    PREC=precision, num_warps=solve_warps)
    _lean_products_kernel[(nc, B * H, 2)](k, v, gates, ainv, w, u0, T, H, nc, DK=DK, DV=DV, C=chunk,
                                          BD=min(64, DK, DV), PREC=precision, num_warps=num_warps)
    return q, k, beta, w, u0, gates


def chain(ops: tuple, init, final, block_v: int, num_warps: int, num_stages: int,
          precision: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Launch :func:`_lean_chain_kernel` over one piece's :func:`prep` output from the state ``init`` (None: zero):
    writes ``final`` and returns ``(states, u)`` for :func:`out`."""
    q, k, beta, w, u0, gates = ops
    B, T, H, DK = k.shape
    DV = u0.shape[-1]
    NC = gates.shape[1]
    BV = min(block_v, DV)
    states = torch.empty(B * H, NC, DK, DV, dtype=k.dtype, device=k.device)
    u = torch.empty_like(u0)
    _lean_chain_kernel[(B * H, DV // BV)](k, beta, w, u0, gates, init if init is not None else final, final,
                                          states, u, T, H, NC, DK=DK, DV=DV, BV=BV, C=gates.shape[2],
                                          HAS_INIT=init is not None, PREC=precision, num_warps=num_warps,
                                          num_stages=num_stages)
    return states, u


def out(ops: tuple, chained: tuple, o, scale: float, block_v: int, num_warps: int, precision: str) -> None:
    """Launch :func:`_lean_out_kernel`: o ``[B, T, H, dv]`` (contiguous) of one piece from its :func:`prep`
    output and :func:`chain`'s ``(states, u)``; ``block_v`` value columns per program (each program builds the
    chunk's scores q k^T, so a wide block builds them once)."""
    q, k, beta, _, _, gates = ops
    states, u = chained
    B, T, H, DK = k.shape
    DV = u.shape[-1]
    NC, C = gates.shape[1], gates.shape[2]
    bo = min(block_v, DV)
    _lean_out_kernel[(NC, B * H, DV // bo)](q, k, beta, gates, states, u, o, T, H, NC, scale, DK=DK, DV=DV, BV=bo,
                                            C=C, PREC=precision, num_warps=num_warps)
