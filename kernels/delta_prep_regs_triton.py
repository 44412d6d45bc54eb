"""The delta rule's prep with the chunk's scores and inverse held in registers (chunks of 16, 32 or 64 tokens).

Writes what :func:`seqedge.kernels.delta_prep_triton.prep` writes (qt, kt, A, w, u0, b_C and optionally
``(I + M)^-1``), from one program per (chunk, batch*head) that keeps the chunk as one, two or four 16-row blocks:
the scores of each block pair accumulate over the key columns in registers, the diagonal blocks of ``(I + M)`` are
inverted in registers by forward substitution and the blocks below them by block substitution (16x16 products),
and w and u0 are formed block by block. No float32 scratch passes through global memory (the other prep writes M
there, reloads it row by row in its substitution and writes its inverse back).

Decays per key (g ``[B, T, H, dk]``): exponents are referenced so no factor that survives the mask grows past
exp(40) for g >= -5: a diagonal block's scores to its middle row, a block below the diagonal to the last row of the
key block it pairs with (both of its factors are then at most 1 for g <= 0). One decay per head (``[B, T, H, 1]``):
the exponent is a per-row scalar, so the scores are plain products of the raw q and k, scaled afterwards by
``exp(b_t - b_s)`` (at most 1 under the mask), as the other prep does.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .delta_prep_triton import block_ptrs, blocks_below_diagonal, prep_outputs, store_lower_blocks

CHUNKS = (16, 32, 64)


@triton.jit
def _rows(ptr, base, t0, T, H, W, cols, i: tl.constexpr):
    """Rows ``t0 + 16 i ..`` of a ``[B, T, H, W]`` tensor at the columns ``cols`` (float32, zero past T)."""
    rows = t0 + i * 16 + tl.arange(0, 16)
    return tl.load(ptr + base + rows[:, None].to(tl.int64) * (H * W) + cols[None, :], mask=(rows < T)[:, None],
                   other=0.0).to(tl.float32)


@triton.jit
def _store_rows(ptr, base, t0, T, H, W, cols, x, i: tl.constexpr):
    """Store x ``[16, len(cols)]`` at rows ``t0 + 16 i ..`` of a ``[B, T, H, W]`` tensor (rows past T skipped)."""
    rows = t0 + i * 16 + tl.arange(0, 16)
    tl.store(ptr + base + rows[:, None].to(tl.int64) * (H * W) + cols[None, :], x.to(ptr.dtype.element_ty),
             mask=(rows < T)[:, None])


@triton.jit
def _vector(ptr, base, t0, T, H, i: tl.constexpr):
    """Rows ``t0 + 16 i ..`` of a ``[B, T, H]`` (or ``[B, T, H, 1]``) tensor as a float32 ``[16]`` (zero past T)."""
    rows = t0 + i * 16 + tl.arange(0, 16)
    return tl.load(ptr + base + rows.to(tl.int64) * H, mask=rows < T, other=0.0).to(tl.float32)


@triton.jit
def _key_gates(g, base, t0, T, H, DK, cols, i: tl.constexpr, start):
    """Per-key decays: block i's cumulative log-gates from the chunk's start ``[16, len(cols)]`` and their last
    row (``start`` is the previous block's)."""
    gi = _rows(g, base, t0, T, H, DK, cols, i)
    return start[None, :] + tl.cumsum(gi, axis=0), start + tl.sum(gi, axis=0)


@triton.jit
def _head_gates(g, base, t0, T, H, i: tl.constexpr, start):
    """Per-head decays: block i's cumulative log-gates from the chunk's start ``[16]`` and their last value."""
    gi = _vector(g, base, t0, T, H, i)
    return start + tl.cumsum(gi, axis=0), start + tl.sum(gi, axis=0)


@triton.jit
def _gates(g, k_base, t0, T, H, DK, cols, i: tl.constexpr, start, hb_i, he_i, PER_HEAD: tl.constexpr):
    """Block i's cumulative log-gates ``[16, len(cols)]`` and their last row ``[len(cols)]``: per key from the
    columns of g (``start``: the previous block's last row), per head the block's ``hb_i`` and ``he_i``
    broadcast over the columns."""
    if PER_HEAD:
        return hb_i[:, None] + tl.zeros_like(start)[None, :], he_i + tl.zeros_like(start)
    return _key_gates(g, k_base, t0, T, H, DK, cols, i, start)


@triton.jit
def _block(q, k, g, k_base, t0, T, H, DK, cols, i: tl.constexpr, start, hb_i, he_i, PER_HEAD: tl.constexpr):
    """Block i at these key columns: ``(q_i, k_i, b_i, end_i)`` (:func:`_rows`, :func:`_gates`)."""
    b_i, e_i = _gates(g, k_base, t0, T, H, DK, cols, i, start, hb_i, he_i, PER_HEAD)
    return _rows(q, k_base, t0, T, H, DK, cols, i), _rows(k, k_base, t0, T, H, DK, cols, i), b_i, e_i


@triton.jit
def _dot(x, y, PREC: tl.constexpr, OPD: tl.constexpr):
    """A block of the inverse (float32) times 16 rows of k or v (float32), both taken as OPD."""
    return tl.dot(x.to(OPD), y.to(OPD), input_precision=PREC)


@triton.jit
def _middle_row(b):
    """Row 8 of a ``[16, n]`` block."""
    r = tl.arange(0, 16)
    return tl.sum(tl.where(r[:, None] == 8, b, 0.0), axis=0)


@triton.jit
def _accumulate(q_i, k_i, left, right, m, a, PREC: tl.constexpr):
    """``m += (k_i left) right`` and ``a += (q_i left) right``: one block pair's products over these key columns
    (right: the key block, transposed, in the inputs' dtype)."""
    m += tl.dot((k_i * left).to(right.dtype), right, input_precision=PREC)
    a += tl.dot((q_i * left).to(right.dtype), right, input_precision=PREC)
    return m, a


@triton.jit
def _diagonal_pair(q_i, k_i, b_i, m, a, dt: tl.constexpr, PER_HEAD: tl.constexpr, PREC: tl.constexpr):
    """Block (i, i)'s products: with decays per key, exponents referenced to the block's middle row."""
    if PER_HEAD:
        return _accumulate(q_i, k_i, 1.0, tl.trans(k_i.to(dt)), m, a, PREC)
    ref = _middle_row(b_i)
    right = tl.trans((k_i * tl.exp(tl.minimum(ref[None, :] - b_i, 40.0))).to(dt))
    return _accumulate(q_i, k_i, tl.exp(tl.minimum(b_i - ref[None, :], 40.0)), right, m, a, PREC)


@triton.jit
def _right(k_j, b_j, end_j, dt: tl.constexpr, PER_HEAD: tl.constexpr):
    """Key block j's side of its pairs with the blocks below it: ``(k_j exp(end_j - b_j))^T`` (factors <= 1)
    with decays per key, the raw ``k_j^T`` per head."""
    if PER_HEAD:
        return tl.trans(k_j.to(dt))
    return tl.trans((k_j * tl.exp(end_j[None, :] - b_j)).to(dt))


@triton.jit
def _pair(q_i, k_i, b_i, end_j, right_j, m, a, PER_HEAD: tl.constexpr, PREC: tl.constexpr):
    """Block (i, j)'s products, i > j: ``exp(b_i - end_j) <= 1`` (block i's rows come after block j's last)."""
    if PER_HEAD:
        return _accumulate(q_i, k_i, 1.0, right_j, m, a, PREC)
    return _accumulate(q_i, k_i, tl.exp(b_i - end_j[None, :]), right_j, m, a, PREC)


@triton.jit
def _store_qk(qt, kt, base, t0, T, H, DK, cols, q_i, k_i, b_i, be_i, last, scale, i: tl.constexpr):
    """Block i's ``qt = scale q exp(b)`` and ``kt = beta k exp(b_C - b)``."""
    _store_rows(qt, base, t0, T, H, DK, cols, q_i * scale * tl.exp(b_i), i)
    _store_rows(kt, base, t0, T, H, DK, cols, k_i * be_i[:, None] * tl.exp(last[None, :] - b_i), i)


@triton.jit
def _finish(m, a, be_j, hb_i, hb_j, scale, DIAGONAL: tl.constexpr, PER_HEAD: tl.constexpr):
    """Block (i, j)'s M and A from its products: columns times beta_s, A times scale; per head times
    ``exp(b_t - b_s)``; a diagonal block masked (M strictly, A causally)."""
    r = tl.arange(0, 16)
    f = be_j[None, :] + tl.zeros([16, 16], dtype=tl.float32)
    if PER_HEAD:
        f = f * tl.exp(tl.minimum(hb_i[:, None] - hb_j[None, :], 0.0))
    m = m * f
    a = a * f * scale
    if DIAGONAL:
        m = tl.where(r[:, None] > r[None, :], m, 0.0)
        a = tl.where(r[:, None] >= r[None, :], a, 0.0)
    return m, a


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
def _store_inverse_times(ptr, base, t0, T, H, W, cols, x00, x10, x11, x20, x21, x22, x30, x31, x32, x33,
                         y0, y1, y2, y3, NB: tl.constexpr, PREC: tl.constexpr, OPD: tl.constexpr):
    """``(I + M)^-1 y`` block row by block row (x: the inverse's blocks, y: the chunk's 16-row blocks of k exp(b)
    or v at these columns), stored at rows ``t0 ..`` of a ``[B, T, H, W]`` tensor."""
    _store_rows(ptr, base, t0, T, H, W, cols, _dot(x00, y0, PREC, OPD), 0)
    if NB >= 2:
        _store_rows(ptr, base, t0, T, H, W, cols, _dot(x10, y0, PREC, OPD) + _dot(x11, y1, PREC, OPD), 1)
    if NB == 4:
        _store_rows(ptr, base, t0, T, H, W, cols,
                    _dot(x20, y0, PREC, OPD) + _dot(x21, y1, PREC, OPD) + _dot(x22, y2, PREC, OPD), 2)
        _store_rows(ptr, base, t0, T, H, W, cols,
                    _dot(x30, y0, PREC, OPD) + _dot(x31, y1, PREC, OPD) + _dot(x32, y2, PREC, OPD)
                    + _dot(x33, y3, PREC, OPD), 3)


@triton.jit
def _delta_prep_regs_kernel(q, k, v, g, beta, qt, kt, A, w, u0, decay, inverse, T, H, NC, scale,
                            DK: tl.constexpr, DV: tl.constexpr, PER_HEAD: tl.constexpr, C: tl.constexpr,
                            BD: tl.constexpr, PREC: tl.constexpr, WITH_INVERSE: tl.constexpr,
                            LOW: tl.constexpr):
    """One chunk of C = 16, 32 or 64 tokens (NB = 1, 2 or 4 blocks of 16 rows): qt, kt, w ``[B, T, H, DK]`` and
    u0 ``[B, T, H, DV]`` in k's dtype, A ``[B*H, NC, C, C]`` in k's dtype, b_C ``[B*H, NC, DK]`` float32, and with
    WITH_INVERSE ``(I + M)^-1`` ``[B*H, NC, C, C]`` float32. Block (i, j) of M is ``m{i}{j}``, of A ``a{i}{j}``, of
    the inverse ``x{i}{j}``; the names of blocks a shorter chunk lacks are bound to zeros and never stored. LOW: w
    and u0 from the inverse's blocks and k exp(b) rounded to k's dtype (float32 accumulation)."""
    i_c = tl.program_id(0)
    i_bh = tl.program_id(1)
    i_b = i_bh // H
    i_h = i_bh % H
    dt: tl.constexpr = k.dtype.element_ty
    OPD: tl.constexpr = dt if LOW else tl.float32             # operands of the dots forming w and u0
    NB: tl.constexpr = C // 16
    rd = tl.arange(0, BD)
    t0 = i_c * C
    idx = i_bh.to(tl.int64) * NC + i_c
    k_base = i_b.to(tl.int64) * T * H * DK + i_h * DK
    v_base = i_b.to(tl.int64) * T * H * DV + i_h * DV
    h_base = i_b.to(tl.int64) * T * H + i_h                # beta, and g with one decay per head
    z = tl.zeros([16, 16], dtype=tl.float32)
    zd = tl.zeros([BD], dtype=tl.float32)
    zv = tl.zeros([16], dtype=tl.float32)
    be0 = _vector(beta, h_base, t0, T, H, 0)
    be1, be2, be3 = zv, zv, zv
    if NB >= 2:
        be1 = _vector(beta, h_base, t0, T, H, 1)
    if NB == 4:
        be2 = _vector(beta, h_base, t0, T, H, 2)
        be3 = _vector(beta, h_base, t0, T, H, 3)
    # per head: the cumulative log-gates of every block (and where each ends), once; per key they are formed per
    # column block in the loop
    hb0, hb1, hb2, hb3 = zv, zv, zv, zv
    he0, he1, he2, he3 = 0.0, 0.0, 0.0, 0.0
    if PER_HEAD:
        hb0, he0 = _head_gates(g, h_base, t0, T, H, 0, 0.0)
        if NB >= 2:
            hb1, he1 = _head_gates(g, h_base, t0, T, H, 1, he0)
        if NB == 4:
            hb2, he2 = _head_gates(g, h_base, t0, T, H, 2, he1)
            hb3, he3 = _head_gates(g, h_base, t0, T, H, 3, he2)
    m00, m10, m11, m20, m21, m22, m30, m31, m32, m33 = z, z, z, z, z, z, z, z, z, z
    a00, a10, a11, a20, a21, a22, a30, a31, a32, a33 = z, z, z, z, z, z, z, z, z, z
    for d0 in tl.range(0, DK, BD, num_stages=1):
        cols = d0 + rd
        q0, k0, b0, e0 = _block(q, k, g, k_base, t0, T, H, DK, cols, 0, zd, hb0, he0, PER_HEAD)
        m00, a00 = _diagonal_pair(q0, k0, b0, m00, a00, dt, PER_HEAD, PREC)
        last = e0
        if NB >= 2:
            q1, k1, b1, e1 = _block(q, k, g, k_base, t0, T, H, DK, cols, 1, e0, hb1, he1, PER_HEAD)
            right0 = _right(k0, b0, e0, dt, PER_HEAD)
            m11, a11 = _diagonal_pair(q1, k1, b1, m11, a11, dt, PER_HEAD, PREC)
            m10, a10 = _pair(q1, k1, b1, e0, right0, m10, a10, PER_HEAD, PREC)
            last = e1
            if NB == 4:
                q2, k2, b2, e2 = _block(q, k, g, k_base, t0, T, H, DK, cols, 2, e1, hb2, he2, PER_HEAD)
                right1 = _right(k1, b1, e1, dt, PER_HEAD)
                m22, a22 = _diagonal_pair(q2, k2, b2, m22, a22, dt, PER_HEAD, PREC)
                m20, a20 = _pair(q2, k2, b2, e0, right0, m20, a20, PER_HEAD, PREC)
                m21, a21 = _pair(q2, k2, b2, e1, right1, m21, a21, PER_HEAD, PREC)
                q3, k3, b3, e3 = _block(q, k, g, k_base, t0, T, H, DK, cols, 3, e2, hb3, he3, PER_HEAD)
                right2 = _right(k2, b2, e2, dt, PER_HEAD)
                m33, a33 = _diagonal_pair(q3, k3, b3, m33, a33, dt, PER_HEAD, PREC)
                m30, a30 = _pair(q3, k3, b3, e0, right0, m30, a30, PER_HEAD, PREC)
                m31, a31 = _pair(q3, k3, b3, e1, right1, m31, a31, PER_HEAD, PREC)
                m32, a32 = _pair(q3, k3, b3, e2, right2, m32, a32, PER_HEAD, PREC)
                last = e3
                _store_qk(qt, kt, k_base, t0, T, H, DK, cols, q2, k2, b2, be2, last, scale, 2)
                _store_qk(qt, kt, k_base, t0, T, H, DK, cols, q3, k3, b3, be3, last, scale, 3)
            _store_qk(qt, kt, k_base, t0, T, H, DK, cols, q1, k1, b1, be1, last, scale, 1)
        _store_qk(qt, kt, k_base, t0, T, H, DK, cols, q0, k0, b0, be0, last, scale, 0)
        tl.store(decay + idx * DK + cols, last)
    # M and A from the products, A stored (zero above the diagonal); the inverse's diagonal blocks by forward
    # substitution, those below by block substitution
    m00, a00 = _finish(m00, a00, be0, hb0, hb0, scale, True, PER_HEAD)
    if NB >= 2:
        m10, a10 = _finish(m10, a10, be0, hb1, hb0, scale, False, PER_HEAD)
        m11, a11 = _finish(m11, a11, be1, hb1, hb1, scale, True, PER_HEAD)
    if NB == 4:
        m20, a20 = _finish(m20, a20, be0, hb2, hb0, scale, False, PER_HEAD)
        m21, a21 = _finish(m21, a21, be1, hb2, hb1, scale, False, PER_HEAD)
        m22, a22 = _finish(m22, a22, be2, hb2, hb2, scale, True, PER_HEAD)
        m30, a30 = _finish(m30, a30, be0, hb3, hb0, scale, False, PER_HEAD)
        m31, a31 = _finish(m31, a31, be1, hb3, hb1, scale, False, PER_HEAD)
        m32, a32 = _finish(m32, a32, be2, hb3, hb2, scale, False, PER_HEAD)
        m33, a33 = _finish(m33, a33, be3, hb3, hb3, scale, True, PER_HEAD)
    a_out = A + idx * C * C
    for i in tl.static_range(NB):
        for j in tl.static_range(i + 1, NB):
            tl.store(block_ptrs(a_out, i, j, C), z.to(dt))
    store_lower_blocks(a_out, a00, a11, a22, a33, a10, a20, a21, a30, a31, a32, C)
    x00 = _diagonal_inverse(m00)
    x11, x22, x33 = z, z, z
    if NB >= 2:
        x11 = _diagonal_inverse(m11)
    if NB == 4:
        x22 = _diagonal_inverse(m22)
        x33 = _diagonal_inverse(m33)
    x10, x20, x21, x30, x31, x32 = blocks_below_diagonal(x00, x11, x22, x33, m10, m20, m21, m30, m31, m32, NB)
    if WITH_INVERSE:
        inv = inverse + idx * C * C
        for i in tl.static_range(NB):
            for j in tl.static_range(i + 1, NB):
                tl.store(block_ptrs(inv, i, j, C), z)
        store_lower_blocks(inv, x00, x11, x22, x33, x10, x20, x21, x30, x31, x32, C)
    # w = (I + M)^-1 (k exp(b)) and u0 = (I + M)^-1 v; the blocks a shorter chunk lacks stand in as block 0's
    for d0 in tl.range(0, DK, BD, num_stages=1):
        cols = d0 + rd
        b0, e0 = _gates(g, k_base, t0, T, H, DK, cols, 0, zd, hb0, he0, PER_HEAD)
        y0 = _rows(k, k_base, t0, T, H, DK, cols, 0) * tl.exp(b0)
        y1, y2, y3 = y0, y0, y0
        if NB >= 2:
            b1, e1 = _gates(g, k_base, t0, T, H, DK, cols, 1, e0, hb1, he1, PER_HEAD)
            y1 = _rows(k, k_base, t0, T, H, DK, cols, 1) * tl.exp(b1)
        if NB == 4:
            b2, e2 = _gates(g, k_base, t0, T, H, DK, cols, 2, e1, hb2, he2, PER_HEAD)
            y2 = _rows(k, k_base, t0, T, H, DK, cols, 2) * tl.exp(b2)
            b3, e3 = _gates(g, k_base, t0, T, H, DK, cols, 3, e2, hb3, he3, PER_HEAD)
            y3 = _rows(k, k_base, t0, T, H, DK, cols, 3) * tl.exp(b3)
        _store_inverse_times(w, k_base, t0, T, H, DK, cols, x00, x10, x11, x20, x21, x22, x30, x31, x32, x33,
                             y0, y1, y2, y3, NB, PREC, OPD)
    for c0 in tl.range(0, DV, BD, num_stages=1):
        cols = c0 + rd
        y0 = _rows(v, v_base, t0, T, H, DV, cols, 0)
        y1, y2, y3 = y0, y0, y0
        if NB >= 2:
            y1 = _rows(v, v_base, t0, T, H, DV, cols, 1)
        if NB == 4:
            y2 = _rows(v, v_base, t0, T, H, DV, cols, 2)
            y3 = _rows(v, v_base, t0, T, H, DV, cols, 3)
        _store_inverse_times(u0, v_base, t0, T, H, DV, cols, x00, x10, x11, x20, x21, x22, x30, x31, x32, x33,
                             y0, y1, y2, y3, NB, PREC, OPD)


def prep(q, k, v, g, beta, scale: float, chunk: int, block_k: int, num_warps: int, precision: str,
         with_inverse: bool = False, low_dots: bool = False) -> tuple[torch.Tensor, ...]:
    """:func:`seqedge.kernels.delta_prep_triton.prep`'s outputs from :func:`_delta_prep_regs_kernel` (chunk 16,
    32 or 64): ``(qt, kt, A, w, u0, decay)``, and with ``with_inverse`` ``(I + M)^-1`` ``[B*H, NC, C, C]``
    float32."""
    if chunk not in CHUNKS:
        raise ValueError(f"the register prep takes chunks of {', '.join(map(str, CHUNKS))} tokens, got {chunk}")
    B, T, H, DK = q.shape
    DV = v.shape[-1]
    qt, kt, A, w, u0, decay, inverse = prep_outputs(k, v, chunk, with_inverse)
    nc = A.shape[1]
    _delta_prep_regs_kernel[(nc, B * H)](q, k, v, g, beta, qt, kt, A, w, u0, decay,
                                         inverse if with_inverse else decay, T, H, nc, scale,
                                         DK=DK, DV=DV, PER_HEAD=g.shape[-1] == 1, C=chunk,
                                         BD=min(block_k, DK, DV), PREC=precision, WITH_INVERSE=with_inverse,
                                         LOW=low_dots, num_warps=num_warps)
    return (qt, kt, A, w, u0, decay, inverse) if with_inverse else (qt, kt, A, w, u0, decay)
