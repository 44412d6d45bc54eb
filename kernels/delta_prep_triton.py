"""Triton prep of the delta rule's chunked scan: every chunk's state-independent operands, all chunks in parallel.

With ``b`` the cumulative log-gates inside a chunk of C tokens and ``kb = beta k``, one program per (chunk,
batch*head) writes (see :mod:`seqedge.kernels.delta_scan_triton` for how the scan uses them)

    qt = scale q exp(b),   kt = kb exp(b_C - b),   A[t, s] = <scale q_t, kb_s exp(b_t - b_s)>  (s <= t),
    w = (I + M)^-1 (k exp(b)),   u0 = (I + M)^-1 v,   M[t, s] = <k_t, kb_s exp(b_t - b_s)>  (s < t),   b_C.

Per-key gates (``GK == DK``): the scores A and M are built one 16x16 block at a time from 16-row tiles, with
exponents referenced to the key block's middle, so no factor that survives the causal mask exceeds exp(40) for
g >= -5; the cumulative log-gates pass through a float32 scratch so the tiles can be loaded row block by row block.
One gate per head (``GK == 1``, Gated DeltaNet): the exponent is a per-row scalar, so the scores are plain
products ``<q_t, k_s>`` of the raw inputs, scaled afterwards in float32 by ``scale beta_s exp(b_t - b_s)``
(an exponent <= 0 under the mask).

``(I + M)^-1``: forward substitution on the 16-row diagonal blocks, all blocks in the same steps (exact
arithmetic for a unit lower-triangular matrix), merged with 16x16 float32 products in registers (DESIGN §1; no
powers of M). M passes through a float32 scratch buffer so the blocks can be loaded as tiles; the inverse replaces
M there.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def block_ptrs(ptr, i: tl.constexpr, j: tl.constexpr, C: tl.constexpr):
    """Pointers of the 16x16 block (i, j) of the row-major ``[C, C]`` matrix at ptr."""
    r = tl.arange(0, 16)
    return ptr + (i * 16 + r)[:, None] * C + (j * 16 + r)[None, :]


@triton.jit
def _per_key_scores(q, k, beta, bs, A, M, k_base, be_base, t0, T, H, scale,
                    DK: tl.constexpr, BD: tl.constexpr, C: tl.constexpr, PREC: tl.constexpr):
    """A (k's dtype) and M (float32) of one chunk with a gate per key, 16x16 block by block: block (i, j), j <= i,
    is ``(x_i exp(b_i - r_j)) (kb_j exp(r_j - b_j))^T`` over the key columns, x = scale q for A and k for M, with
    r_j the cumulative log-gates at key block j's middle row; blocks above the diagonal are zero.
    ``bs [C, DK]`` float32: the chunk's cumulative log-gates."""
    DT = k.dtype.element_ty
    r = tl.arange(0, 16)
    rd = tl.arange(0, BD)
    NB: tl.constexpr = C // 16
    for i in tl.static_range(NB):
        rows_i = t0 + i * 16 + r
        for j in tl.static_range(i + 1):
            rows_j = t0 + j * 16 + r
            be_j = tl.load(beta + be_base + rows_j.to(tl.int64) * H, mask=rows_j < T, other=0.0).to(tl.float32)
            acc_a = tl.zeros([16, 16], dtype=tl.float32)
            acc_m = tl.zeros([16, 16], dtype=tl.float32)
            for d0 in tl.range(0, DK, BD, num_stages=1):
                cols = d0 + rd
                off_i = k_base + rows_i[:, None].to(tl.int64) * (H * DK) + cols[None, :]
                off_j = k_base + rows_j[:, None].to(tl.int64) * (H * DK) + cols[None, :]
                ref = tl.load(bs + (j * 16 + 8) * DK + cols)                                   # [BD]
                x = tl.exp(tl.minimum(tl.load(bs + (i * 16 + r)[:, None] * DK + cols[None, :]) - ref[None, :],
                                      40.0))
                y = tl.load(k + off_j, mask=(rows_j < T)[:, None], other=0.0).to(tl.float32) * tl.exp(
                    tl.minimum(ref[None, :] - tl.load(bs + (j * 16 + r)[:, None] * DK + cols[None, :]), 40.0))
                y = tl.trans(y.to(DT))
                q_i = tl.load(q + off_i, mask=(rows_i < T)[:, None], other=0.0).to(tl.float32)
                k_i = tl.load(k + off_i, mask=(rows_i < T)[:, None], other=0.0).to(tl.float32)
                acc_a += tl.dot((q_i * x).to(DT), y, input_precision=PREC)
                acc_m += tl.dot((k_i * x).to(DT), y, input_precision=PREC)
            acc_a = acc_a * (scale * be_j)[None, :]
            acc_m = acc_m * be_j[None, :]
            if i == j:
                acc_a = tl.where(r[:, None] >= r[None, :], acc_a, 0.0)
                acc_m = tl.where(r[:, None] > r[None, :], acc_m, 0.0)
            tl.store(block_ptrs(A, i, j, C), acc_a.to(DT))
            tl.store(block_ptrs(M, i, j, C), acc_m)
        for j in tl.static_range(i + 1, NB):
            tl.store(block_ptrs(A, i, j, C), tl.zeros([16, 16], dtype=DT))
            tl.store(block_ptrs(M, i, j, C), tl.zeros([16, 16], dtype=tl.float32))


@triton.jit
def _substitution_step(x, ptr, i: tl.constexpr, j, C: tl.constexpr):
    """Row j of the diagonal block i's inverse minus I, by forward substitution: ``-M[j, :j] - M[j, :j] X``, from
    the rows of x above j (final) and row j of M at ptr."""
    r = tl.arange(0, 16)
    row = tl.where(r < j, -tl.load(ptr + (i * 16 + j) * C + i * 16 + r), 0.0)
    row += tl.sum(row[:, None] * x, axis=0)
    return tl.where(r[:, None] == j, row[None, :], x)


@triton.jit
def _mm(a, b):
    """A float32 product of two 16x16 blocks."""
    return tl.dot(a, b, input_precision="ieee")


@triton.jit
def blocks_below_diagonal(x0, x1, x2, x3, m10, m20, m21, m30, m31, m32, NB: tl.constexpr):
    """The blocks of ``(I + M)^-1`` below its diagonal, ``X_ij = -X_ii sum_{j <= m < i} M_im X_mj``, from its
    diagonal blocks x_i and M's blocks m_ij, for NB = 1, 2 or 4 diagonal blocks: ``(y10, y20, y21, y30, y31,
    y32)``; the blocks a smaller NB lacks (and the arguments it passes for them) are never read."""
    y10, y20, y21, y30, y31, y32 = x0, x0, x0, x0, x0, x0
    if NB >= 2:
        y10 = -_mm(x1, _mm(m10, x0))
    if NB == 4:
        y21 = -_mm(x2, _mm(m21, x1))
        y32 = -_mm(x3, _mm(m32, x2))
        y20 = -_mm(x2, _mm(m20, x0) + _mm(m21, y10))
        y31 = -_mm(x3, _mm(m31, x1) + _mm(m32, y21))
        y30 = -_mm(x3, _mm(m30, x0) + _mm(m31, y10) + _mm(m32, y20))
    return y10, y20, y21, y30, y31, y32


@triton.jit
def store_lower_blocks(ptr, x0, x1, x2, x3, y10, y20, y21, y30, y31, y32, C: tl.constexpr):
    """The 16x16 blocks on and below the diagonal of the row-major ``[C, C]`` matrix at ptr, in ptr's dtype:
    diagonal x_i, below y_ij (those a chunk of C lacks are not stored)."""
    NB: tl.constexpr = C // 16
    dt = ptr.dtype.element_ty
    tl.store(block_ptrs(ptr, 0, 0, C), x0.to(dt))
    if NB >= 2:
        tl.store(block_ptrs(ptr, 1, 0, C), y10.to(dt))
        tl.store(block_ptrs(ptr, 1, 1, C), x1.to(dt))
    if NB == 4:
        tl.store(block_ptrs(ptr, 2, 0, C), y20.to(dt))
        tl.store(block_ptrs(ptr, 2, 1, C), y21.to(dt))
        tl.store(block_ptrs(ptr, 2, 2, C), x2.to(dt))
        tl.store(block_ptrs(ptr, 3, 0, C), y30.to(dt))
        tl.store(block_ptrs(ptr, 3, 1, C), y31.to(dt))
        tl.store(block_ptrs(ptr, 3, 2, C), y32.to(dt))
        tl.store(block_ptrs(ptr, 3, 3, C), x3.to(dt))


@triton.jit
def _unit_lower_inverse(ptr, C: tl.constexpr):
    """In place: the strictly lower-triangular float32 ``[C, C]`` matrix M at ptr (C = 16, 32 or 64) becomes
    ``(I + M)^-1``.

    The diagonal 16x16 blocks by forward substitution, all of them in the same 14 steps (the steps of one block
    are a chain; the blocks are independent, so interleaving them shortens the program's critical path by the
    number of blocks); then the blocks below the diagonal, ``X_ij = -X_ii sum_{j <= m < i} M_im X_mj``, in
    registers. Only the result is written back (one barrier before, so no thread overwrites M while another still
    reads it, and one after, so the caller reads the inverse)."""
    r = tl.arange(0, 16)
    NB: tl.constexpr = C // 16
    eye = tl.where(r[:, None] == r[None, :], 1.0, 0.0)
    x0 = -tl.load(block_ptrs(ptr, 0, 0, C))                             # strict part of rows 0 and 1 is final
    x1 = x0                     # x1.., y.. stand in for blocks a chunk of 16 or 32 does not have (never stored)
    x2 = x0
    x3 = x0
    if NB >= 2:
        x1 = -tl.load(block_ptrs(ptr, 1, 1, C))
    if NB == 4:
        x2 = -tl.load(block_ptrs(ptr, 2, 2, C))
        x3 = -tl.load(block_ptrs(ptr, 3, 3, C))
    for j in range(2, 16):
        x0 = _substitution_step(x0, ptr, 0, j, C)
        if NB >= 2:
            x1 = _substitution_step(x1, ptr, 1, j, C)
        if NB == 4:
            x2 = _substitution_step(x2, ptr, 2, j, C)
            x3 = _substitution_step(x3, ptr, 3, j, C)
    x0 += eye
    x1 += eye
    x2 += eye
    x3 += eye
    m10, m20, m21, m30, m31, m32 = x0, x0, x0, x0, x0, x0          # stand-ins, as above
    if NB >= 2:
        m10 = tl.load(block_ptrs(ptr, 1, 0, C))
    if NB == 4:
        m20 = tl.load(block_ptrs(ptr, 2, 0, C))
        m21 = tl.load(block_ptrs(ptr, 2, 1, C))
        m30 = tl.load(block_ptrs(ptr, 3, 0, C))
        m31 = tl.load(block_ptrs(ptr, 3, 1, C))
        m32 = tl.load(block_ptrs(ptr, 3, 2, C))
    y10, y20, y21, y30, y31, y32 = blocks_below_diagonal(x0, x1, x2, x3, m10, m20, m21, m30, m31, m32, NB)
    tl.debug_barrier()
    store_lower_blocks(ptr, x0, x1, x2, x3, y10, y20, y21, y30, y31, y32, C)
    tl.debug_barrier()


@triton.jit
def _delta_prep_kernel(q, k, v, g, beta, qt, kt, A, w, u0, decay, scratch, b_scratch, T, H, NC, scale,
                       DK: tl.constexpr, DV: tl.constexpr, GK: tl.constexpr, C: tl.constexpr,
                       BD: tl.constexpr, PREC: tl.constexpr, LOW: tl.constexpr):
    """One chunk's state-independent operands (module docstring): qt, kt, w ``[B, T, H, DK]`` and u0
    ``[B, T, H, DV]`` in k's dtype, A ``[B*H, NC, C, C]`` in k's dtype, b_C ``[B*H, NC, DK]`` float32;
    ``scratch [B*H, NC, C, C]`` float32 holds M, then its inverse; with a gate per key ``b_scratch
    [B*H, NC, C, DK]`` float32 holds the cumulative log-gates (unused with a gate per head). LOW: w and u0 from
    the inverse and ``k exp(b)`` rounded to k's dtype (float32 accumulation), else from float32 operands."""
    i_c = tl.program_id(0)
    i_bh = tl.program_id(1)
    i_b = i_bh // H
    i_h = i_bh % H
    DT = k.dtype.element_ty
    OPD = DT if LOW else tl.float32                          # operands of the dots forming w and u0
    PER_HEAD: tl.constexpr = GK == 1
    rc = tl.arange(0, C)
    rd = tl.arange(0, BD)
    k_base = i_b.to(tl.int64) * T * H * DK + i_h * DK
    v_base = i_b.to(tl.int64) * T * H * DV + i_h * DV
    g_base = i_b.to(tl.int64) * T * H * GK + i_h * GK
    be_base = i_b.to(tl.int64) * T * H + i_h
    t0 = i_c * C
    rows = t0 + rc
    m = rows < T
    idx = i_bh.to(tl.int64) * NC + i_c
    sp = scratch + idx * C * C
    bs = b_scratch + idx * C * DK
    a_ptr = A + idx * C * C
    b_beta = tl.load(beta + be_base + rows.to(tl.int64) * H, mask=m, other=0.0).to(tl.float32)
    if PER_HEAD:
        b_h = tl.cumsum(tl.load(g + g_base + rows.to(tl.int64) * (H * GK), mask=m, other=0.0).to(tl.float32),
                        axis=0)                                                             # [C]
        last_h = tl.sum(tl.where(rc == C - 1, b_h, 0.0), axis=0)
        acc_a = tl.zeros([C, C], dtype=tl.float32)
        acc_m = tl.zeros([C, C], dtype=tl.float32)
        for d0 in tl.range(0, DK, BD, num_stages=1):
            off = k_base + rows[:, None].to(tl.int64) * (H * DK) + (d0 + rd)[None, :]
            q_raw = tl.load(q + off, mask=m[:, None], other=0.0)
            k_raw = tl.load(k + off, mask=m[:, None], other=0.0)
            acc_a += tl.dot(q_raw, tl.trans(k_raw), input_precision=PREC)
            acc_m += tl.dot(k_raw, tl.trans(k_raw), input_precision=PREC)
            b_k = k_raw.to(tl.float32)
            tl.store(qt + off, (q_raw.to(tl.float32) * (scale * tl.exp(b_h))[:, None]).to(DT), mask=m[:, None])
            tl.store(kt + off, (b_k * (b_beta * tl.exp(last_h - b_h))[:, None]).to(DT), mask=m[:, None])
            tl.store(decay + idx * DK + d0 + rd, tl.zeros([BD], dtype=tl.float32) + last_h)
        fac = tl.exp(tl.where(rc[:, None] >= rc[None, :], b_h[:, None] - b_h[None, :], 0.0)) * b_beta[None, :]
        acc_a = tl.where(rc[:, None] >= rc[None, :], acc_a * fac * scale, 0.0)
        acc_m = tl.where(rc[:, None] > rc[None, :], acc_m * fac, 0.0)
        tl.store(a_ptr + rc[:, None] * C + rc[None, :], acc_a.to(DT))
        tl.store(sp + rc[:, None] * C + rc[None, :], acc_m)
    else:
        for d0 in tl.range(0, DK, BD, num_stages=1):
            off = k_base + rows[:, None].to(tl.int64) * (H * DK) + (d0 + rd)[None, :]
            off_g = g_base + rows[:, None].to(tl.int64) * (H * GK) + (d0 + rd)[None, :]
            b_q = tl.load(q + off, mask=m[:, None], other=0.0).to(tl.float32) * scale
            b_k = tl.load(k + off, mask=m[:, None], other=0.0).to(tl.float32)
            b_b = tl.cumsum(tl.load(g + off_g, mask=m[:, None], other=0.0).to(tl.float32), axis=0)   # [C, BD]
            b_last = tl.sum(tl.where(rc[:, None] == C - 1, b_b, 0.0), axis=0)                        # [BD]
            tl.store(qt + off, (b_q * tl.exp(b_b)).to(DT), mask=m[:, None])
            tl.store(kt + off, (b_k * b_beta[:, None] * tl.exp(b_last[None, :] - b_b)).to(DT), mask=m[:, None])
            tl.store(decay + idx * DK + d0 + rd, b_last)
            tl.store(bs + rc[:, None] * DK + (d0 + rd)[None, :], b_b)
        tl.debug_barrier()
        _per_key_scores(q, k, beta, bs, a_ptr, sp, k_base, be_base, t0, T, H, scale, DK, BD, C, PREC)
    tl.debug_barrier()
    _unit_lower_inverse(sp, C)
    inv = tl.load(sp + rc[:, None] * C + rc[None, :]).to(OPD)                          # [C, C] (I + M)^-1
    for d0 in tl.range(0, DK, BD, num_stages=1):
        off = k_base + rows[:, None].to(tl.int64) * (H * DK) + (d0 + rd)[None, :]
        b_k = tl.load(k + off, mask=m[:, None], other=0.0).to(tl.float32)
        if PER_HEAD:
            b_k = b_k * tl.exp(b_h)[:, None]
        else:
            b_k = b_k * tl.exp(tl.load(bs + rc[:, None] * DK + (d0 + rd)[None, :]))
        tl.store(w + off, tl.dot(inv, b_k.to(OPD), input_precision=PREC).to(DT), mask=m[:, None])
    for e0 in tl.range(0, DV, BD, num_stages=1):
        off_v = v_base + rows[:, None].to(tl.int64) * (H * DV) + (e0 + rd)[None, :]
        b_v = tl.load(v + off_v, mask=m[:, None], other=0.0).to(OPD)
        tl.store(u0 + off_v, tl.dot(inv, b_v, input_precision=PREC).to(DT), mask=m[:, None])


def prep_outputs(k, v, chunk: int, inverse: bool = True) -> tuple[torch.Tensor | None, ...]:
    """The prep's output buffers for every chunk of ``chunk`` tokens: ``(qt, kt, A, w, u0, decay)`` (qt, kt, w
    like k, u0 like v, A ``[B*H, NC, C, C]`` in k's dtype, decay ``[B*H, NC, dk]`` float32) and, with
    ``inverse``, a ``[B*H, NC, C, C]`` float32 buffer for the inverse (else None)."""
    B, T, H, DK = k.shape
    nc = triton.cdiv(T, chunk)
    qt, kt, w = (torch.empty_like(k) for _ in range(3))
    A = torch.empty(B * H, nc, chunk, chunk, dtype=k.dtype, device=k.device)
    decay = torch.empty(B * H, nc, DK, dtype=torch.float32, device=k.device)
    inv = torch.empty(B * H, nc, chunk, chunk, dtype=torch.float32, device=k.device) if inverse else None
    return qt, kt, A, w, torch.empty_like(v), decay, inv


def prep(q, k, v, g, beta, scale: float, chunk: int, block_k: int, num_warps: int, precision: str,
         with_inverse: bool = False, low_dots: bool = False) -> tuple[torch.Tensor, ...]:
    """Launch :func:`_delta_prep_kernel`: ``(qt, kt, A, w, u0, decay)`` for every chunk of C = ``chunk`` tokens,
    and with ``with_inverse`` also ``(I + M)^-1`` ``[B*H, NC, C, C]`` float32 (the backward's). ``low_dots``: w
    and u0 from operands in k's dtype (the kernel's LOW; no change for float32 inputs).

    q, k ``[B, T, H, dk]``, v ``[B, T, H, dv]``, g ``[B, T, H, dk]`` or ``[B, T, H, 1]``, beta ``[B, T, H]``,
    contiguous. ``block_k``: key and value columns per step (bounds the registers)."""
    B, T, H, DK = q.shape
    DV = v.shape[-1]
    qt, kt, A, w, u0, decay, scratch = prep_outputs(k, v, chunk)       # scratch: M, then its inverse
    nc = A.shape[1]
    per_key = g.shape[-1] != 1
    b_scratch = torch.empty(B * H, nc, chunk, DK if per_key else 1, dtype=torch.float32, device=k.device)
    _delta_prep_kernel[(nc, B * H)](q, k, v, g, beta, qt, kt, A, w, u0, decay, scratch, b_scratch, T, H, nc, scale,
                                    DK=DK, DV=DV, GK=g.shape[-1], C=chunk, BD=min(block_k, DK, DV),
                                    PREC=precision, LOW=low_dots, num_warps=num_warps)
    return (qt, kt, A, w, u0, decay, scratch) if with_inverse else (qt, kt, A, w, u0, decay)
