"""Triton kernel of the delta rule's chunk-local gradients: from the chunk states and their gradients to
dq, dk, dv, dg, dbeta, every chunk and key block in parallel (the CUDA backward's part after its two recurrences).

Per chunk (notation of :mod:`seqedge.kernels.delta_prep_triton`; ``S`` the state entering the chunk, ``dS'`` the
gradient of the state leaving it, u and du from the recurrences, ``Tm = (I + M)^-1``, ``x = scale q``):

    dqt = do S^T,  dkt = u dS'^T,  dKd = -Tm^T du S^T,  dA = tril(do u^T),  db_C = exp(b_C) rowsum(S * dS')
    dv = Tm^T du,  dM = -strict_tril(dv u^T)

(``dM = -strict_tril(dKd w^T + dv u0^T)`` with ``w = Tm Kd``, ``u0 = Tm v``; the scan's ``u = u0 - w S`` folds it
into one product over the values, so dA, dM and dv need no key column), then the chain through
``qt = x exp(b)``, ``kt = kb exp(b_C - b)``, ``Kd = k exp(b)``, ``kb = beta k`` and the decayed scores
``A = D(x, kb)``, ``M = D(k, kb)`` with ``D(X, Y)[t, s] = sum_d X[t, d] Y[s, d] exp(b[t, d] - b[s, d])``, whose
gradients are decayed products again:

    dX[t] = sum_s G[t, s] Y[s] exp(b_t - b_s),   dY[s] = sum_t G[t, s] X[t] exp(b_t - b_s),
    db[t] += X[t] dX[t] - Y[t] dY[t],

formed 16x16 block by block with exponents referenced to the key block's middle row (as the prep, so no factor
that survives the causal mask exceeds exp(40) for g >= -5); dg is the reverse running sum of db within the chunk.
With one gate per head the decay is a scalar per pair of rows, so the same gradients are whole-chunk products of
the masked, decayed ``[C, C]`` matrices.

Everything after dA, dM and dv is independent per key column, so one program owns one chunk and one block of key
columns (each program forms the chunk's dA and dM itself: three small dots over the values, cheaper than a launch
and a round trip), with no loop over the key blocks: many short programs. The kernel still spills registers
(``benchmarks/probes/delta_local_registers.py``), but more programs in flight hide the spills' latency. With a gate
per key, per-program float32 scratch holds b, dA, dM, dkb, db and the partial sums of dq and dk between the phases
(:func:`_through_scratch`); barriers order the program's own stores and loads. With one gate per head the
whole-chunk products let a program keep all its terms in registers through every phase
(:func:`_per_head_in_registers`: no scratch, no barriers), which also lets a chunk of 64 pay. Taking its products
over the values in two passes, with the decayed products between them, keeps fewer terms alive (half the spills,
or none at key and value block 32) but was slower at every launch tried, reading do, u and du twice and x, k and Tm
again (``benchmarks/results/delta_bwd_two_pass.json``). The key-summed parts (dbeta, and dg for a gate per head)
leave as float32 partials per key block, summed by the host. Dots take the workspace's dtype straight (bf16 products
are exact in float32, the same as TF32 of bf16 values); float32 operands formed here use ``PREC``, or with ``LOW``
(per head) are rounded to the workspace's dtype first, as fla's kernels round theirs: half the operand registers
and staging and bf16's tensor-core rate, for gradients within bf16's precision of the float32 operands'
(``benchmarks/results/delta_kernels.md``). What still holds the kernel is loading: its value loop loads each tile
just before the dots that read it (``benchmarks/results/delta_bwd_ncu.md``).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _blk16(ptr, i: tl.constexpr, j: tl.constexpr, C: tl.constexpr):
    r = tl.arange(0, 16)
    return ptr + (i * 16 + r)[:, None] * C + (j * 16 + r)[None, :]


@triton.jit
def _tile(ptr, base, rows, cols, stride, T):
    """A float32 ``[len(rows), len(cols)]`` tile of a ``[B, T, H, d]`` tensor (rows past T read as zero)."""
    off = base + rows[:, None].to(tl.int64) * stride + cols[None, :]
    return tl.load(ptr + off, mask=(rows < T)[:, None], other=0.0).to(tl.float32)


@triton.jit
def _raw_tile(ptr, base, rows, cols, stride, T):
    """As :func:`_tile`, in the tensor's own dtype (a dot operand)."""
    off = base + rows[:, None].to(tl.int64) * stride + cols[None, :]
    return tl.load(ptr + off, mask=(rows < T)[:, None], other=0.0)


@triton.jit
def _dot(a, b, PREC: tl.constexpr):
    """``a @ b`` in float32: operands of one dtype as they are, else both as float32."""
    if a.dtype == b.dtype:
        return tl.dot(a, b, input_precision=PREC)
    else:
        return tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision=PREC)


@triton.jit
def _sc(ptr, rows, BD: tl.constexpr):
    """``[len(rows), BD]`` pointers into a program's ``[C, BD]`` scratch block."""
    return ptr + rows[:, None] * BD + tl.arange(0, BD)[None, :]


@triton.jit
def _value_products(do, u, du, states, dstates, inv, dv, v_base, vo_base, idx, t0, d0, i_k, T, H,
                    DK: tl.constexpr, DV: tl.constexpr, C: tl.constexpr, BD: tl.constexpr, BV: tl.constexpr,
                    PREC: tl.constexpr, LOW: tl.constexpr):
    """The products over the values for one chunk and key block: dA (lower triangle) and dM (strictly lower)
    ``[C, C]``, ``do S^T``, ``u dS'^T``, ``du S^T`` ``[C, BD]``, ``rowsum(S * dS')`` ``[BD]``, all float32, and
    Tm (float32, or with ``LOW`` the workspace's dtype, as dv's and dM's dots then take it); dv (the output)
    written by the first key block's program."""
    rc = tl.arange(0, C)
    rows = t0 + rc
    cols = d0 + tl.arange(0, BD)
    rmask = (rows < T)[:, None]
    b_tm = tl.load(inv + idx * C * C + rc[:, None] * C + rc[None, :]).to(                # [C, C] Tm
        du.dtype.element_ty if LOW else tl.float32)
    # the products over the values, a block of BV value columns at a time (bounds the dots' operand registers)
    d_a = tl.zeros([C, C], dtype=tl.float32)
    d_m = tl.zeros([C, C], dtype=tl.float32)
    d_qt = tl.zeros([C, BD], dtype=tl.float32)                       # do S^T
    d_kt = tl.zeros([C, BD], dtype=tl.float32)                       # u dS'^T
    d_us = tl.zeros([C, BD], dtype=tl.float32)                       # du S^T
    s_ds = tl.zeros([BD], dtype=tl.float32)                          # rowsum(S * dS')
    for v0 in tl.range(0, DV, BV, num_stages=1):
        rv = v0 + tl.arange(0, BV)
        b_do = _raw_tile(do, v_base, rows, rv, H * DV, T)                               # [C, BV]
        b_u = _raw_tile(u, v_base, rows, rv, H * DV, T)
        b_du = _raw_tile(du, v_base, rows, rv, H * DV, T)
        s_off = idx * DK * DV + cols[:, None] * DV + rv[None, :]                        # a [BD, BV] state block
        s_blk = tl.load(states + s_off)
        ds_blk = tl.load(dstates + s_off)
        d_a += _dot(b_do, tl.trans(b_u), PREC)
        b_dv = _dot(tl.trans(b_tm), b_du, PREC)                                         # [C, BV]
        if i_k == 0:
            tl.store(dv + vo_base + rows[:, None].to(tl.int64) * (H * DV) + rv[None, :],
                     b_dv.to(dv.dtype.element_ty), mask=rmask)
        d_m -= _dot(b_dv.to(b_tm.dtype), tl.trans(b_u), PREC)
        d_qt += _dot(b_do, tl.trans(s_blk), PREC)
        d_kt += _dot(b_u, tl.trans(ds_blk), PREC)
        d_us += _dot(b_du, tl.trans(s_blk), PREC)
        s_ds += tl.sum(s_blk.to(tl.float32) * ds_blk.to(tl.float32), axis=1)
    d_a = tl.where(rc[:, None] >= rc[None, :], d_a, 0.0)
    d_m = tl.where(rc[:, None] > rc[None, :], d_m, 0.0)
    return d_a, d_m, d_qt, d_kt, d_us, s_ds, b_tm


@triton.jit
def _direct_phase(q, k, g, beta, do, u, du, states, dstates, inv, dv, sc_b, sc_dkb, sc_db, sc_dq, sc_dk, sc_g,
                  k_base, v_base, vo_base, be_base, idx, t0, d0, i_k, T, H, scale,
                  DK: tl.constexpr, DV: tl.constexpr, C: tl.constexpr, BD: tl.constexpr, BV: tl.constexpr,
                  PREC: tl.constexpr):
    """A gate per key: dA and dM to scratch, dv (the output, from the first key block's program), and for this
    key block the direct terms of dq, dk (float32 partial sums), dkb and db (through qt, kt, Kd and b_C); b to
    scratch."""
    rc = tl.arange(0, C)
    rows = t0 + rc
    cols = d0 + tl.arange(0, BD)
    rmask = (rows < T)[:, None]
    d_a, d_m, d_qt, d_kt, d_us, s_ds, b_tm = _value_products(do, u, du, states, dstates, inv, dv, v_base, vo_base,
                                                             idx, t0, d0, i_k, T, H, DK, DV, C, BD, BV, PREC,
                                                             False)
    tl.store(sc_g + rc[:, None] * C + rc[None, :], d_a)
    tl.store(sc_g + C * C + rc[:, None] * C + rc[None, :], d_m)
    b_b = tl.cumsum(tl.load(g + k_base + rows[:, None].to(tl.int64) * (H * DK) + cols[None, :],   # g as k
                            mask=rmask, other=0.0).to(tl.float32), axis=0)              # [C, BD]
    b_last = tl.sum(tl.where(rc[:, None] == C - 1, b_b, 0.0), axis=0)                  # [BD] b_C
    e_b = tl.exp(b_b)
    # through qt = x exp(b): dqt = do S^T
    x = _tile(q, k_base, rows, cols, H * DK, T) * scale
    tl.store(_sc(sc_dq, rc, BD), d_qt * e_b * scale)
    d_b = d_qt * x * e_b
    # through kt = kb exp(b_C - b) and b_C
    b_k = _tile(k, k_base, rows, cols, H * DK, T)
    b_beta = tl.load(beta + be_base + rows.to(tl.int64) * H, mask=rows < T, other=0.0).to(tl.float32)
    e_kt = tl.exp(b_last[None, :] - b_b)
    kt = b_k * b_beta[:, None] * e_kt
    d_last = tl.exp(b_last) * s_ds + tl.sum(d_kt * kt, axis=0)                          # [BD]
    d_b = d_b - d_kt * kt + tl.where(rc[:, None] == C - 1, d_last[None, :], 0.0)
    tl.store(_sc(sc_dkb, rc, BD), d_kt * e_kt)
    # through w = Tm Kd, Kd = k exp(b)
    d_kd = -tl.dot(tl.trans(b_tm), d_us, input_precision=PREC) * e_b                  # [C, BD]
    tl.store(_sc(sc_dk, rc, BD), d_kd)
    tl.store(_sc(sc_db, rc, BD), d_b + d_kd * b_k)
    tl.store(_sc(sc_b, rc, BD), b_b)


@triton.jit
def _decayed_phase(q, k, beta, dq_out, sc_b, sc_dkb, sc_db, sc_dq, sc_dk, sc_g, k_base, ko_base, be_base, t0, d0,
                   T, H, scale, DK: tl.constexpr, C: tl.constexpr, BD: tl.constexpr, PREC: tl.constexpr):
    """The decayed products' gradients on this key block: dX of A (dq's last term: dq written) and of M (into
    dk's partial sum) row block by row block, then dY of both (into dkb) column block by column block; their
    terms of db."""
    r = tl.arange(0, 16)
    cols = d0 + tl.arange(0, BD)
    NB: tl.constexpr = C // 16
    for i in tl.static_range(NB):
        rows_i = t0 + i * 16 + r
        b_i = tl.load(_sc(sc_b, i * 16 + r, BD))
        dx_a = tl.zeros([16, BD], dtype=tl.float32)
        dx_m = tl.zeros([16, BD], dtype=tl.float32)
        for j in tl.static_range(i + 1):
            rows_j = t0 + j * 16 + r
            ref = tl.load(sc_b + (j * 16 + 8) * BD + tl.arange(0, BD))
            be_j = tl.load(beta + be_base + rows_j.to(tl.int64) * H, mask=rows_j < T, other=0.0).to(tl.float32)
            y = _tile(k, k_base, rows_j, cols, H * DK, T) * be_j[:, None] * tl.exp(
                tl.minimum(ref[None, :] - tl.load(_sc(sc_b, j * 16 + r, BD)), 40.0))
            xf = tl.exp(tl.minimum(b_i - ref[None, :], 40.0))
            dx_a += xf * tl.dot(tl.load(_blk16(sc_g, i, j, C)), y, input_precision=PREC)
            dx_m += xf * tl.dot(tl.load(_blk16(sc_g + C * C, i, j, C)), y, input_precision=PREC)
        x_i = _tile(q, k_base, rows_i, cols, H * DK, T) * scale
        k_i = _tile(k, k_base, rows_i, cols, H * DK, T)
        off = ko_base + rows_i[:, None].to(tl.int64) * (H * DK) + cols[None, :]
        tl.store(dq_out + off, (tl.load(_sc(sc_dq, i * 16 + r, BD)) + dx_a * scale).to(dq_out.dtype.element_ty),
                 mask=(rows_i < T)[:, None])
        p_dk = _sc(sc_dk, i * 16 + r, BD)
        tl.store(p_dk, tl.load(p_dk) + dx_m)
        p_db = _sc(sc_db, i * 16 + r, BD)
        tl.store(p_db, tl.load(p_db) + x_i * dx_a + k_i * dx_m)
    tl.debug_barrier()
    for j in tl.static_range(NB):
        rows_j = t0 + j * 16 + r
        ref = tl.load(sc_b + (j * 16 + 8) * BD + tl.arange(0, BD))
        yf = tl.exp(tl.minimum(ref[None, :] - tl.load(_sc(sc_b, j * 16 + r, BD)), 40.0))
        dy = tl.zeros([16, BD], dtype=tl.float32)
        for i in tl.static_range(j, NB):
            rows_i = t0 + i * 16 + r
            xf = tl.exp(tl.minimum(tl.load(_sc(sc_b, i * 16 + r, BD)) - ref[None, :], 40.0))
            x_i = _tile(q, k_base, rows_i, cols, H * DK, T) * (scale * xf)
            k_i = _tile(k, k_base, rows_i, cols, H * DK, T) * xf
            dy += tl.dot(tl.trans(tl.load(_blk16(sc_g, i, j, C))), x_i, input_precision=PREC)
            dy += tl.dot(tl.trans(tl.load(_blk16(sc_g + C * C, i, j, C))), k_i, input_precision=PREC)
        dy = dy * yf
        be_j = tl.load(beta + be_base + rows_j.to(tl.int64) * H, mask=rows_j < T, other=0.0).to(tl.float32)
        kb_j = _tile(k, k_base, rows_j, cols, H * DK, T) * be_j[:, None]
        p_dkb = _sc(sc_dkb, j * 16 + r, BD)
        p_db = _sc(sc_db, j * 16 + r, BD)
        tl.store(p_dkb, tl.load(p_dkb) + dy)
        tl.store(p_db, tl.load(p_db) - kb_j * dy)
    tl.debug_barrier()


@triton.jit
def _per_head_in_registers(q, k, g, beta, do, u, du, states, dstates, inv, dq, dk, dv, part, k_base, v_base,
                           ko_base, vo_base, be_base, idx, t0, d0, i_k, T, H, scale, bth,
                           DK: tl.constexpr, DV: tl.constexpr, C: tl.constexpr, BD: tl.constexpr,
                           BV: tl.constexpr, NKB: tl.constexpr, PREC: tl.constexpr, LOW: tl.constexpr):
    """One gate per head, the whole chunk-local backward of this chunk and key block in registers: the direct
    terms, then the decayed products' gradients as whole-chunk products (the decay between rows t >= s is the
    scalar ``exp(b_t - b_s)``, so with ``GA = dA * decay`` and ``GM = dM * decay``, ``dX = G Y`` and
    ``dY = G^T X``), then dq, dk and dbeta's and dg's partial sums. ``LOW``: the dots whose operands are formed
    here (Tm's, GA's, GM's, dv's, kb's) take them rounded to the workspace's dtype, as the dots over the values
    take theirs, accumulating in float32."""
    rc = tl.arange(0, C)
    rows = t0 + rc
    cols = d0 + tl.arange(0, BD)
    rmask = (rows < T)[:, None]
    d_a, d_m, d_qt, d_kt, d_us, s_ds, b_tm = _value_products(do, u, du, states, dstates, inv, dv, v_base, vo_base,
                                                             idx, t0, d0, i_k, T, H, DK, DV, C, BD, BV, PREC,
                                                             LOW)
    b = tl.cumsum(tl.load(g + be_base + rows.to(tl.int64) * H, mask=rows < T, other=0.0).to(tl.float32),
                  axis=0)                                                            # g laid out as beta
    b_last = tl.sum(tl.where(rc == C - 1, b, 0.0), axis=0)                              # b_C
    e_b = tl.exp(b)[:, None]
    e_kt = tl.exp(b_last - b)[:, None]
    x = _tile(q, k_base, rows, cols, H * DK, T) * scale
    b_k = _tile(k, k_base, rows, cols, H * DK, T)
    b_beta = tl.load(beta + be_base + rows.to(tl.int64) * H, mask=rows < T, other=0.0).to(tl.float32)
    kb = b_k * b_beta[:, None]
    kt = kb * e_kt
    # the direct terms: through qt = x exp(b), kt = kb exp(b_C - b) and b_C, w = Tm Kd with Kd = k exp(b)
    d_b = d_qt * x * e_b
    d_last = tl.exp(b_last) * s_ds + tl.sum(d_kt * kt, axis=0)                          # [BD]
    d_b = d_b - d_kt * kt + tl.where(rc[:, None] == C - 1, d_last[None, :], 0.0)
    d_kd = -_dot(tl.trans(b_tm), d_us.to(b_tm.dtype), PREC) * e_b                      # [C, BD]
    d_b = d_b + d_kd * b_k
    # the decayed scores: decay exp(b_t - b_s) for t >= s, a scalar per pair of rows
    decay = tl.exp(tl.where(rc[:, None] >= rc[None, :], b[:, None] - b[None, :], float("-inf")))   # [C, C]
    ga = d_a * decay
    gm = d_m * decay
    if LOW:
        lo = b_tm.dtype
        ga_lo, gm_lo, kb_lo = ga.to(lo), gm.to(lo), kb.to(lo)
        dx_a = _dot(ga_lo, kb_lo, PREC)
        dx_m = _dot(gm_lo, kb_lo, PREC)
        q_lo = _raw_tile(q, k_base, rows, cols, H * DK, T).to(lo)          # q itself: x = scale q is not exact
        dy = _dot(tl.trans(ga_lo), q_lo, PREC) * scale + _dot(tl.trans(gm_lo), b_k.to(lo), PREC)
    else:
        dx_a = tl.dot(ga, kb, input_precision=PREC)
        dx_m = tl.dot(gm, kb, input_precision=PREC)
        dy = tl.dot(tl.trans(ga), x, input_precision=PREC) + tl.dot(tl.trans(gm), b_k, input_precision=PREC)
    d_b = d_b + x * dx_a + b_k * dx_m - kb * dy
    dkb = d_kt * e_kt + dy
    tl.store(dq + ko_base + rows[:, None].to(tl.int64) * (H * DK) + cols[None, :],
             ((d_qt * e_b + dx_a) * scale).to(dq.dtype.element_ty), mask=rmask)
    tl.store(dk + ko_base + rows[:, None].to(tl.int64) * (H * DK) + cols[None, :],
             (d_kd + dx_m + dkb * b_beta[:, None]).to(dk.dtype.element_ty), mask=rmask)
    p_rows = part + i_k * bth + be_base + rows.to(tl.int64) * H
    tl.store(p_rows, tl.sum(dkb * b_k, axis=1), mask=rows < T)                         # dbeta's partial sum
    tl.store(p_rows + NKB * bth, tl.cumsum(tl.sum(d_b, axis=1), axis=0, reverse=True), mask=rows < T)


@triton.jit
def _through_scratch(q, k, g, beta, do, u, du, states, dstates, inv, dq, dk, dv, dg, part, scratch, k_base, v_base,
                     ko_base, vo_base, be_base, idx, t0, d0, i_k, T, H, scale, bth, DK: tl.constexpr,
                     DV: tl.constexpr, C: tl.constexpr, BD: tl.constexpr, BV: tl.constexpr, NKB: tl.constexpr,
                     PREC: tl.constexpr):
    """A gate per key, the chunk-local backward of this chunk and key block in phases through the program's float32
    scratch: :func:`_direct_phase`, :func:`_decayed_phase`, then dk, dbeta's sum and dg."""
    rc = tl.arange(0, C)
    rows = t0 + rc
    cols = d0 + tl.arange(0, BD)
    sc_b = scratch + (idx * NKB + i_k) * (5 * C * BD + 2 * C * C)
    sc_dkb = sc_b + C * BD
    sc_db = sc_dkb + C * BD
    sc_dq = sc_db + C * BD
    sc_dk = sc_dq + C * BD
    sc_g = sc_dk + C * BD
    _direct_phase(q, k, g, beta, do, u, du, states, dstates, inv, dv, sc_b, sc_dkb, sc_db, sc_dq, sc_dk, sc_g,
                  k_base, v_base, vo_base, be_base, idx, t0, d0, i_k, T, H, scale, DK, DV, C, BD, BV, PREC)
    tl.debug_barrier()
    _decayed_phase(q, k, beta, dq, sc_b, sc_dkb, sc_db, sc_dq, sc_dk, sc_g, k_base, ko_base, be_base, t0, d0, T, H,
                   scale, DK, C, BD, PREC)
    rmask = (rows < T)[:, None]
    b_beta = tl.load(beta + be_base + rows.to(tl.int64) * H, mask=rows < T, other=0.0).to(tl.float32)
    dkb = tl.load(_sc(sc_dkb, rc, BD))
    b_k = _tile(k, k_base, rows, cols, H * DK, T)
    out = ko_base + rows[:, None].to(tl.int64) * (H * DK) + cols[None, :]            # dk's, and dg's (as k)
    tl.store(dk + out, (tl.load(_sc(sc_dk, rc, BD)) + dkb * b_beta[:, None]).to(dk.dtype.element_ty), mask=rmask)
    tl.store(part + i_k * bth + be_base + rows.to(tl.int64) * H, tl.sum(dkb * b_k, axis=1),
             mask=rows < T)                                                                # dbeta's partial sum
    tl.store(dg + out, tl.cumsum(tl.load(_sc(sc_db, rc, BD)), axis=0, reverse=True).to(dg.dtype.element_ty),
             mask=rmask)


@triton.jit
def _delta_local_grad_kernel(q, k, g, beta, do, u, du, states, dstates, inv, dq, dk, dv, dg, part, scratch,
                             T, T_OUT, H, NC, scale, DK: tl.constexpr, DV: tl.constexpr, GK: tl.constexpr,
                             C: tl.constexpr, BD: tl.constexpr, BV: tl.constexpr, PREC: tl.constexpr,
                             LOW: tl.constexpr):
    """One chunk's dq, dk, dg (a gate per key) on one key block, and dv, in their buffers' dtypes, into gradients
    of the whole sequence (``T_OUT`` rows per batch, the piece's first row at the pointers); dbeta's and (a gate
    per head) dg's partial sums over this key block into ``part [1 or 2, DK / BD, B, T, H]`` float32. A gate per
    key goes through ``scratch [B*H, NC, DK / BD, 5 C BD + 2 C C]`` float32, the piece's workspace
    (:func:`_through_scratch`); one per head stays in registers (:func:`_per_head_in_registers`)."""
    i_c = tl.program_id(0)
    i_bh = tl.program_id(1)
    i_k = tl.program_id(2)
    NKB: tl.constexpr = DK // BD
    i_b = i_bh // H
    i_h = i_bh % H
    d0 = i_k * BD
    k_base = i_b.to(tl.int64) * T * H * DK + i_h * DK
    v_base = i_b.to(tl.int64) * T * H * DV + i_h * DV
    be_base = i_b.to(tl.int64) * T * H + i_h
    ko_base = i_b.to(tl.int64) * T_OUT * H * DK + i_h * DK          # the outputs: rows of the whole sequence
    vo_base = i_b.to(tl.int64) * T_OUT * H * DV + i_h * DV
    t0 = i_c * C
    idx = i_bh.to(tl.int64) * NC + i_c
    bth = tl.num_programs(1).to(tl.int64) * T                      # B*T*H: one key block's partials
    if GK == 1:
        _per_head_in_registers(q, k, g, beta, do, u, du, states, dstates, inv, dq, dk, dv, part, k_base, v_base,
                               ko_base, vo_base, be_base, idx, t0, d0, i_k, T, H, scale, bth, DK, DV, C,
                               BD, BV, NKB, PREC, LOW)
    else:
        _through_scratch(q, k, g, beta, do, u, du, states, dstates, inv, dq, dk, dv, dg, part, scratch, k_base,
                         v_base, ko_base, vo_base, be_base, idx, t0, d0, i_k, T, H, scale, bth, DK, DV, C, BD, BV,
                         NKB, PREC)


def local_grads(q, k, v, g, beta, do, u, du, states, dstates, inv, scale: float, chunk: int, block_k: int,
                block_v: int, num_warps: int, precision: str, out: tuple[torch.Tensor, ...],
                low_dots: bool = False) -> None:
    """Launch :func:`_delta_local_grad_kernel` over one piece: writes (dq, dk, dv, dg, dbeta) into ``out``, views
    of the whole sequence's gradients shaped as (q, k, v, g, beta) of the piece (``grad[:, t0:t0 + T]``), in any
    dtype.

    q, k ``[B, T, H, dk]``, v, do ``[B, T, H, dv]``, g ``[B, T, H, dk]`` or ``[B, T, H, 1]``, beta ``[B, T, H]``;
    u, du ``[B, T, H, dv]``; states (entering each chunk), dstates (gradient of the state leaving it)
    ``[B*H, NC, dk, dv]`` (these four float32 or the inputs' dtype); inv ``[B*H, NC, C, C]`` float32 (the prep's
    inverse). One program per chunk, batch*head and block of ``block_k`` key columns (a divisor of dk), its
    products over the values ``block_v`` columns at a time. ``low_dots`` (a gate per head only): the dots of
    operands formed in the kernel take them in the workspace's dtype (:func:`_per_head_in_registers`).
    """
    B, T, H, DK = q.shape
    DV = v.shape[-1]
    t_out = out[0].stride(0) // (H * DK) if B > 1 else T
    for x, ref in zip(out, (q, k, v, g, beta)):
        assert x.shape == ref.shape and x.stride()[1:] == ref.stride()[1:] and (B == 1 or x.stride(0) ==
                                                                                   t_out * ref.stride(1)), \
            "gradient views: rows of a contiguous [B, T_out, ...] tensor"
    nc = triton.cdiv(T, chunk)
    bd = min(block_k, DK)
    nkb = DK // bd
    f32 = dict(dtype=torch.float32, device=q.device)
    per_head = g.shape[-1] == 1
    part = torch.empty(1 + per_head, nkb, B, T, H, **f32)     # dbeta's (and a per-head gate's) sums
    scratch = torch.empty(1 if per_head else B * H * nc * nkb * (5 * chunk * bd + 2 * chunk * chunk), **f32)
    dq, dk, dv, dg, dbeta = out
    _delta_local_grad_kernel[(nc, B * H, nkb)](q, k, g, beta, do, u, du, states, dstates, inv, dq, dk, dv, dg,
                                               part, scratch, T, t_out, H, nc, scale, DK=DK, DV=DV,
                                               GK=g.shape[-1], C=chunk, BD=bd, BV=min(block_v, DV),
                                               PREC=precision, LOW=low_dots and per_head, num_warps=num_warps)
    dbeta.copy_(part[0].sum(0))
    if per_head:
        dg.copy_(part[1].sum(0).unsqueeze(-1))
