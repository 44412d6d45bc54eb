"""Triton kernel of the delta rule's chunk-local gradients: from the chunk states and their gradients to
dq, dk, dv, dg, dbeta, every chunk in parallel (the CUDA backward's part after its two recurrences).

Per chunk (notation of :mod:`seqedge.kernels.delta_prep_triton`; ``S`` the state entering the chunk, ``dS'`` the
gradient of the state leaving it, u and du from the recurrences, ``Tm = (I + M)^-1``, ``x = scale q``):

    dqt = do S^T,  dkt = u dS'^T,  dw = -du S^T,  dA = tril(do u^T),  db_C = exp(b_C) rowsum(S * dS')
    dv = Tm^T du,  dKd = Tm^T dw,  dM = -strict_tril(dKd w^T + dv u0^T)                      (w = Tm Kd, u0 = Tm v)

then the chain through ``qt = x exp(b)``, ``kt = kb exp(b_C - b)``, ``Kd = k exp(b)``, ``kb = beta k`` and the
decayed scores ``A = D(x, kb)``, ``M = D(k, kb)`` with ``D(X, Y)[t, s] = sum_d X[t, d] Y[s, d] exp(b[t, d] -
b[s, d])``, whose gradients are decayed products again:

    dX[t] = sum_s G[t, s] Y[s] exp(b_t - b_s),   dY[s] = sum_t G[t, s] X[t] exp(b_t - b_s),
    db[t] += X[t] dX[t] - Y[t] dY[t],

formed 16x16 block by block with exponents referenced to the key block's middle row (as the prep, so no factor
that survives the causal mask exceeds exp(40) for g >= -5); dg is the reverse running sum of db within the chunk
(summed over the keys for a gate per head). Per-chunk float32 scratch holds b, dA, dM, dkb and db between phases,
and float32 piece buffers the partial sums of dq and dk; each gradient is written once, in its output's dtype,
straight into the whole sequence's gradient. Barriers order the program's own stores and loads.
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
def _add_tile(ptr, base, rows, cols, stride, T, x):
    off = base + rows[:, None].to(tl.int64) * stride + cols[None, :]
    m = (rows < T)[:, None]
    tl.store(ptr + off, tl.load(ptr + off, mask=m, other=0.0) + x, mask=m)


@triton.jit
def _add_tile_to(src, base, dst, dst_base, rows, cols, stride, T, x):
    """``dst = src + x`` on one tile: the last term of a gradient whose partial sum is in float32 ``src``, written in
    ``dst``'s dtype (``dst_base``: the tile's batch and head in the output)."""
    off = rows[:, None].to(tl.int64) * stride + cols[None, :]
    m = (rows < T)[:, None]
    y = tl.load(src + base + off, mask=m, other=0.0) + x
    tl.store(dst + dst_base + off, y.to(dst.dtype.element_ty), mask=m)


@triton.jit
def _vtile(ptr, base, rows, stride, T, DV: tl.constexpr):
    """All DV columns of ``rows`` of a ``[B, T, H, DV]`` tensor, float32."""
    return _tile(ptr, base, rows, tl.arange(0, DV), stride, T)


@triton.jit
def _direct_phase(q, k, v, g, beta, do, u, du, states, dstates, inv, w, u0, dq, dk, dv, sc_b, sc_dkb, sc_db,
                  sc_g, k_base, v_base, vo_base, g_base, be_base, idx, t0, T, H, scale,
                  DK: tl.constexpr, DV: tl.constexpr, GK: tl.constexpr, C: tl.constexpr, BD: tl.constexpr,
                  PREC: tl.constexpr):
    """dv (the output), dA, dM and the direct terms of dq, dk (float32 partial sums), dkb, db (through qt, kt, Kd
    and b_C); b to scratch.

    Three passes over the key blocks, one per ``[C, DV]`` operand (do, u, du): holding all three across one loop
    spilled registers. db accumulates in scratch between the passes."""
    rc = tl.arange(0, C)
    rows = t0 + rc
    rd = tl.arange(0, BD)
    rmask = (rows < T)[:, None]
    GSEL: tl.constexpr = GK // DK       # 1: a gate per key column; 0: one per head, broadcast over the keys
    st = states + idx * DK * DV
    dst = dstates + idx * DK * DV
    s_off = rd[:, None] * DV + tl.arange(0, DV)[None, :]                               # a [BD, DV] state block
    b_do = _vtile(do, v_base, rows, H * DV, T, DV)                                       # [C, DV]
    d_a = tl.dot(b_do, tl.trans(_vtile(u, v_base, rows, H * DV, T, DV)), input_precision=PREC)
    tl.store(sc_g + rc[:, None] * C + rc[None, :], tl.where(rc[:, None] >= rc[None, :], d_a, 0.0))
    for d0 in tl.range(0, DK, BD, num_stages=1):                   # through qt = x exp(b): dqt = do S^T
        cols = d0 + rd
        sc = rc[:, None] * DK + cols[None, :]
        b_b = tl.cumsum(tl.load(g + g_base + rows[:, None].to(tl.int64) * (H * GK) + cols[None, :] * GSEL,
                                mask=rmask, other=0.0).to(tl.float32), axis=0)          # [C, BD]
        e_b = tl.exp(b_b)
        s_blk = tl.load(st + d0 * DV + s_off).to(tl.float32)                              # [BD, DV]
        d_qt = tl.dot(b_do, tl.trans(s_blk), input_precision=PREC)                        # [C, BD]
        x = _tile(q, k_base, rows, cols, H * DK, T) * scale
        tl.store(dq + k_base + rows[:, None].to(tl.int64) * (H * DK) + cols[None, :], d_qt * e_b * scale,
                 mask=rmask)
        tl.store(sc_b + sc, b_b)
        tl.store(sc_db + sc, d_qt * x * e_b)
    tl.debug_barrier()
    b_u = _vtile(u, v_base, rows, H * DV, T, DV)
    b_beta = tl.load(beta + be_base + rows.to(tl.int64) * H, mask=rows < T, other=0.0).to(tl.float32)
    for d0 in tl.range(0, DK, BD, num_stages=1):                   # through kt = kb exp(b_C - b) and b_C
        cols = d0 + rd
        sc = rc[:, None] * DK + cols[None, :]
        ds_blk = tl.load(dst + d0 * DV + s_off).to(tl.float32)                          # [BD, DV]
        b_b = tl.load(sc_b + sc)
        b_last = tl.load(sc_b + (C - 1) * DK + cols)                                     # [BD]
        d_kt = tl.dot(b_u, tl.trans(ds_blk), input_precision=PREC)
        e_kt = tl.exp(b_last[None, :] - b_b)
        kt = _tile(k, k_base, rows, cols, H * DK, T) * b_beta[:, None] * e_kt
        d_last = (tl.exp(b_last) * tl.sum(tl.load(st + d0 * DV + s_off).to(tl.float32) * ds_blk, axis=1)
                  + tl.sum(d_kt * kt, axis=0))                                            # [BD]
        d_b = tl.load(sc_db + sc) - d_kt * kt + tl.where(rc[:, None] == C - 1, d_last[None, :], 0.0)
        tl.store(sc_dkb + sc, d_kt * e_kt)
        tl.store(sc_db + sc, d_b)
    tl.debug_barrier()
    b_tm = tl.load(inv + idx * C * C + rc[:, None] * C + rc[None, :])                   # [C, C] Tm
    b_du = _vtile(du, v_base, rows, H * DV, T, DV)
    b_dv = tl.dot(tl.trans(b_tm), b_du, input_precision=PREC)                             # [C, DV]
    tl.store(dv + vo_base + rows[:, None].to(tl.int64) * (H * DV) + tl.arange(0, DV)[None, :],
             b_dv.to(dv.dtype.element_ty), mask=rmask)
    d_m = -tl.dot(b_dv, tl.trans(_vtile(u0, v_base, rows, H * DV, T, DV)), input_precision=PREC)
    for d0 in tl.range(0, DK, BD, num_stages=1):                   # through w = Tm Kd, Kd = k exp(b)
        cols = d0 + rd
        sc = rc[:, None] * DK + cols[None, :]
        s_blk = tl.load(st + d0 * DV + s_off).to(tl.float32)
        d_kd = -tl.dot(tl.trans(b_tm), tl.dot(b_du, tl.trans(s_blk), input_precision=PREC),
                       input_precision=PREC)                                              # [C, BD]
        d_m -= tl.dot(d_kd, tl.trans(_tile(w, k_base, rows, cols, H * DK, T)), input_precision=PREC)
        d_kd = d_kd * tl.exp(tl.load(sc_b + sc))
        tl.store(dk + k_base + rows[:, None].to(tl.int64) * (H * DK) + cols[None, :], d_kd, mask=rmask)
        tl.store(sc_db + sc, tl.load(sc_db + sc) + d_kd * _tile(k, k_base, rows, cols, H * DK, T))
    tl.store(sc_g + C * C + rc[:, None] * C + rc[None, :], tl.where(rc[:, None] > rc[None, :], d_m, 0.0))


@triton.jit
def _decayed_phase(q, k, beta, dq, dk, dq_out, sc_b, sc_dkb, sc_db, sc_g, k_base, ko_base, be_base, t0, T, H, scale,
                   DK: tl.constexpr, C: tl.constexpr, BD: tl.constexpr, PREC: tl.constexpr):
    """The decayed products' gradients: dX of A (dq's last term: into ``dq_out``) and of M (into dk) row block by
    row block, then dY of both (into dkb) key block by key block; their terms of db."""
    r = tl.arange(0, 16)
    rd = tl.arange(0, BD)
    NB: tl.constexpr = C // 16
    for d0 in tl.range(0, DK, BD, num_stages=1):
        cols = d0 + rd
        for i in tl.static_range(NB):
            rows_i = t0 + i * 16 + r
            b_i = tl.load(sc_b + (i * 16 + r)[:, None] * DK + cols[None, :])
            dx_a = tl.zeros([16, BD], dtype=tl.float32)
            dx_m = tl.zeros([16, BD], dtype=tl.float32)
            for j in tl.static_range(i + 1):
                rows_j = t0 + j * 16 + r
                ref = tl.load(sc_b + (j * 16 + 8) * DK + cols)
                be_j = tl.load(beta + be_base + rows_j.to(tl.int64) * H, mask=rows_j < T, other=0.0).to(tl.float32)
                y = _tile(k, k_base, rows_j, cols, H * DK, T) * be_j[:, None] * tl.exp(
                    tl.minimum(ref[None, :] - tl.load(sc_b + (j * 16 + r)[:, None] * DK + cols[None, :]), 40.0))
                xf = tl.exp(tl.minimum(b_i - ref[None, :], 40.0))
                dx_a += xf * tl.dot(tl.load(_blk16(sc_g, i, j, C)), y, input_precision=PREC)
                dx_m += xf * tl.dot(tl.load(_blk16(sc_g + C * C, i, j, C)), y, input_precision=PREC)
            x_i = _tile(q, k_base, rows_i, cols, H * DK, T) * scale
            k_i = _tile(k, k_base, rows_i, cols, H * DK, T)
            _add_tile_to(dq, k_base, dq_out, ko_base, rows_i, cols, H * DK, T, dx_a * scale)
            _add_tile(dk, k_base, rows_i, cols, H * DK, T, dx_m)
            p_db = sc_db + (i * 16 + r)[:, None] * DK + cols[None, :]
            tl.store(p_db, tl.load(p_db) + x_i * dx_a + k_i * dx_m)
        tl.debug_barrier()
        for j in tl.static_range(NB):
            rows_j = t0 + j * 16 + r
            ref = tl.load(sc_b + (j * 16 + 8) * DK + cols)
            yf = tl.exp(tl.minimum(ref[None, :] - tl.load(sc_b + (j * 16 + r)[:, None] * DK + cols[None, :]), 40.0))
            dy = tl.zeros([16, BD], dtype=tl.float32)
            for i in tl.static_range(j, NB):
                rows_i = t0 + i * 16 + r
                xf = tl.exp(tl.minimum(tl.load(sc_b + (i * 16 + r)[:, None] * DK + cols[None, :]) - ref[None, :],
                                       40.0))
                x_i = _tile(q, k_base, rows_i, cols, H * DK, T) * (scale * xf)
                k_i = _tile(k, k_base, rows_i, cols, H * DK, T) * xf
                dy += tl.dot(tl.trans(tl.load(_blk16(sc_g, i, j, C))), x_i, input_precision=PREC)
                dy += tl.dot(tl.trans(tl.load(_blk16(sc_g + C * C, i, j, C))), k_i, input_precision=PREC)
            dy = dy * yf
            be_j = tl.load(beta + be_base + rows_j.to(tl.int64) * H, mask=rows_j < T, other=0.0).to(tl.float32)
            kb_j = _tile(k, k_base, rows_j, cols, H * DK, T) * be_j[:, None]
            p_dkb = sc_dkb + (j * 16 + r)[:, None] * DK + cols[None, :]
            p_db = sc_db + (j * 16 + r)[:, None] * DK + cols[None, :]
            tl.store(p_dkb, tl.load(p_dkb) + dy)
            tl.store(p_db, tl.load(p_db) - kb_j * dy)
        tl.debug_barrier()


@triton.jit
def _delta_local_grad_kernel(q, k, v, g, beta, do, u, du, states, dstates, inv, w, u0,
                             dq_acc, dk_acc, dq, dk, dv, dg, dbeta, scratch, T, T_OUT, H, NC, scale,
                             DK: tl.constexpr, DV: tl.constexpr, GK: tl.constexpr, C: tl.constexpr,
                             BD: tl.constexpr, PREC: tl.constexpr):
    """One chunk's dq, dk, dv, dg and dbeta, in their buffers' dtypes, into gradients of the whole sequence
    (``T_OUT`` rows per batch, the piece's first row at the pointers); ``dq_acc``, ``dk_acc`` float32
    ``[B, T, H, DK]`` and ``scratch [B*H, NC, 3 C DK + 2 C C]`` float32, the piece's workspace."""
    i_c = tl.program_id(0)
    i_bh = tl.program_id(1)
    i_b = i_bh // H
    i_h = i_bh % H
    rc = tl.arange(0, C)
    rd = tl.arange(0, BD)
    k_base = i_b.to(tl.int64) * T * H * DK + i_h * DK
    v_base = i_b.to(tl.int64) * T * H * DV + i_h * DV
    g_base = i_b.to(tl.int64) * T * H * GK + i_h * GK
    be_base = i_b.to(tl.int64) * T * H + i_h
    ko_base = i_b.to(tl.int64) * T_OUT * H * DK + i_h * DK          # the outputs: rows of the whole sequence
    vo_base = i_b.to(tl.int64) * T_OUT * H * DV + i_h * DV
    go_base = i_b.to(tl.int64) * T_OUT * H * GK + i_h * GK
    beo_base = i_b.to(tl.int64) * T_OUT * H + i_h
    t0 = i_c * C
    rows = t0 + rc
    idx = i_bh.to(tl.int64) * NC + i_c
    sc_b = scratch + idx * (3 * C * DK + 2 * C * C)
    sc_dkb = sc_b + C * DK
    sc_db = sc_dkb + C * DK
    sc_g = sc_db + C * DK
    _direct_phase(q, k, v, g, beta, do, u, du, states, dstates, inv, w, u0, dq_acc, dk_acc, dv, sc_b, sc_dkb,
                  sc_db, sc_g, k_base, v_base, vo_base, g_base, be_base, idx, t0, T, H, scale, DK, DV, GK, C, BD,
                  PREC)
    tl.debug_barrier()
    _decayed_phase(q, k, beta, dq_acc, dk_acc, dq, sc_b, sc_dkb, sc_db, sc_g, k_base, ko_base, be_base, t0, T, H,
                   scale, DK, C, BD, PREC)
    b_beta = tl.load(beta + be_base + rows.to(tl.int64) * H, mask=rows < T, other=0.0).to(tl.float32)
    d_beta = tl.zeros([C], dtype=tl.float32)
    dg_head = tl.zeros([C], dtype=tl.float32)
    for d0 in tl.range(0, DK, BD, num_stages=1):
        cols = d0 + rd
        sc = rc[:, None] * DK + cols[None, :]
        dkb = tl.load(sc_dkb + sc)
        b_k = _tile(k, k_base, rows, cols, H * DK, T)
        d_beta += tl.sum(dkb * b_k, axis=1)
        _add_tile_to(dk_acc, k_base, dk, ko_base, rows, cols, H * DK, T, dkb * b_beta[:, None])
        d_b = tl.load(sc_db + sc)
        if GK == 1:
            dg_head += tl.sum(d_b, axis=1)
        else:
            tl.store(dg + go_base + rows[:, None].to(tl.int64) * (H * GK) + cols[None, :],
                     tl.cumsum(d_b, axis=0, reverse=True).to(dg.dtype.element_ty), mask=(rows < T)[:, None])
    if GK == 1:
        tl.store(dg + go_base + rows.to(tl.int64) * (H * GK),
                 tl.cumsum(dg_head, axis=0, reverse=True).to(dg.dtype.element_ty), mask=rows < T)
    tl.store(dbeta + beo_base + rows.to(tl.int64) * H, d_beta.to(dbeta.dtype.element_ty), mask=rows < T)


def local_grads(q, k, v, g, beta, do, u, du, states, dstates, inv, w, u0, scale: float, chunk: int,
                block_k: int, num_warps: int, precision: str, out: tuple[torch.Tensor, ...]) -> None:
    """Launch :func:`_delta_local_grad_kernel` over one piece: writes (dq, dk, dv, dg, dbeta) into ``out``, views
    of the whole sequence's gradients shaped as (q, k, v, g, beta) of the piece (``grad[:, t0:t0 + T]``), in any
    dtype.

    q, k ``[B, T, H, dk]``, v, do ``[B, T, H, dv]``, g ``[B, T, H, dk]`` or ``[B, T, H, 1]``, beta ``[B, T, H]``;
    u, du ``[B, T, H, dv]``; states (entering each chunk), dstates (gradient of the state leaving it)
    ``[B*H, NC, dk, dv]`` (these four float32 or the inputs' dtype, read as float32); inv ``[B*H, NC, C, C]``
    float32 (the prep's inverse), w and u0 the prep's.
    """
    B, T, H, DK = q.shape
    DV = v.shape[-1]
    t_out = out[0].stride(0) // (H * DK) if B > 1 else T
    for x, ref in zip(out, (q, k, v, g, beta)):
        assert x.shape == ref.shape and x.stride()[1:] == ref.stride()[1:] and (B == 1 or x.stride(0) ==
                                                                                   t_out * ref.stride(1)), \
            "gradient views: rows of a contiguous [B, T_out, ...] tensor"
    nc = triton.cdiv(T, chunk)
    f32 = dict(dtype=torch.float32, device=q.device)
    dq_acc, dk_acc = torch.empty(B, T, H, DK, **f32), torch.empty(B, T, H, DK, **f32)
    scratch = torch.empty(B * H, nc, 3 * chunk * DK + 2 * chunk * chunk, **f32)
    _delta_local_grad_kernel[(nc, B * H)](q, k, v, g, beta, do, u, du, states, dstates, inv, w, u0,
                                          dq_acc, dk_acc, *out, scratch, T, t_out, H, nc, scale, DK=DK, DV=DV,
                                          GK=g.shape[-1], C=chunk, BD=min(block_k, DK), PREC=precision,
                                          num_warps=num_warps)
