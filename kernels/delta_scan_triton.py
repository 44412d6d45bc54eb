"""Triton forward and backward of the delta rule's chunked scan (DESIGN §1), the CUDA path of
``seqedge::chunk_scan_delta``.

Imported only on the CUDA path (imports triton at top level). With ``b`` the cumulative log-gates inside a chunk of
C tokens (per key column, or one per head broadcast over the keys), ``kb = beta k`` and, for s < t,
``M[t, s] = <k_t, kb_s exp(b_t - b_s)>``, the chunked form reads (as :func:`seqedge.scan.chunked_scan`)

    T = (I + M)^-1,  w = T (k exp(b)),  u0 = T v                                 (chunk-local)
    u = u0 - w S,   o = qt S + A u,   S' = diag(exp b_C) S + kt^T u              (sequential in the chunks)

with ``qt = scale q exp(b)``, ``kt = kb exp(b_C - b)`` and ``A[t, s] = <scale q_t, kb_s exp(b_t - b_s)>``, s <= t.

Launches:
1. ``_delta_prep_kernel`` (every chunk in parallel): qt, kt, A, w, u0 and b_C. The scores A and M are built one
   16-token key block at a time with exponents referenced to that block's middle, as in the gated kernel, so no
   factor that survives the causal mask exceeds exp(40) for g >= -5. ``(I + M)^-1`` is forward substitution, one
   row at a time in float32 registers (exact arithmetic for a unit lower-triangular matrix; no powers of M).
2. ``_delta_scan_kernel`` (one program per (batch*head, value block), the chunks in order): the state block
   ``S [dk, BV]`` stays in float32 registers; per chunk four dots. Value columns are independent under the delta
   rule (u's column j needs only S's column j), so the value dim splits across programs; the sequence does not
   (a chunk's state map is a full dk x dk matrix, unlike the gated rule's diagonal one). With ``STORE`` it also
   writes the state entering every chunk and u, for the backward.
3. Backward: ``_delta_dstate_kernel`` walks the chunks in reverse, ``du = A^T do + kt dS'``,
   ``dS = diag(exp b_C) dS' + qt^T do - w^T du``; the chunk-local gradients of qt, kt, A, w, u0, b_C are batched
   matrix products, and their chain to q, k, v, g, beta is autograd through the chunked PyTorch operands
   (:func:`seqedge.kernels.delta_operands.chunk_operands`), all chunks of a piece at once.

Long sequences run in pieces of whole chunks (``PIECE`` tokens): the prep's operands then take memory for one
piece, not the sequence, the state passes from piece to piece, and the next piece's prep runs on a side stream
beside the current piece's scan.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from .chunk_scan_triton import dot_precision, fastest


@dataclass(frozen=True)
class DeltaConfig:
    """One launch configuration: chunk length, value block and warps of the scan, warps of the prep."""

    chunk: int
    block_v: int
    num_warps: int = 4
    num_stages: int = 2
    prep_warps: int = 4
    prep_block_k: int = 32      # key columns per step of the prep (bounds its registers)

    def __post_init__(self) -> None:
        if self.chunk not in (16, 32, 64):
            raise ValueError(f"chunk must be 16, 32 or 64, got {self.chunk}")
        if self.block_v < 16 or self.block_v & (self.block_v - 1):
            raise ValueError(f"block_v must be a power of two >= 16, got {self.block_v}")
        if self.prep_block_k < 16 or self.prep_block_k & (self.prep_block_k - 1):
            raise ValueError(f"prep_block_k must be a power of two >= 16, got {self.prep_block_k}")


# Every entry is run and checked by tests/test_kernels_delta_gpu.py, not only the one picked. The first is used
# while a CUDA graph is captured (nothing can be timed then) and by the backward.
DELTA_CONFIGS: tuple[DeltaConfig, ...] = (
    DeltaConfig(chunk=32, block_v=32),
    DeltaConfig(chunk=64, block_v=16),
    DeltaConfig(chunk=32, block_v=16),
    DeltaConfig(chunk=64, block_v=64, num_warps=8),
)
# Taken out by evidence from the GPU runs (H200, triton 3.6.0); kept so the finding is not lost:
EXCLUDED_CONFIGS: dict[DeltaConfig, str] = {
    DeltaConfig(chunk=64, block_v=32):
        "bf16 only: relative error 0.67 (B=2, T=64, dk=128, dv=64), NaN in the output (T=2051, dk=dv=128) and an "
        "illegal memory access (T=1, dk=dv=64, a gate per head); float32 passed every forward test. The same "
        "chunk-64 bf16 failure the gated kernel records (chunk_scan_triton.EXCLUDED_CONFIGS)",
}
PIECE = 8192    # tokens per piece of the sequence (a multiple of every chunk)


@triton.jit
def _scores_pair(b_q, b_k, b_b, k, g, beta, k_base, g_base, be_base, t0, T, H,
                 DK: tl.constexpr, GK: tl.constexpr, BD: tl.constexpr, d0, C: tl.constexpr,
                 PREC: tl.constexpr, COL: tl.constexpr):
    """Key block COL's part of ``A`` (rows ``b_q``) and ``M`` (rows ``b_k``) over key columns d0 + [0, BD):
    two ``[C, C]`` float32 tiles, zero outside the block's 16 columns, unmasked. ``b_b``: the chunk's cumulative
    log-gates ``[C, BD]``; exponents are referenced to the key block's middle."""
    DT = k.dtype.element_ty
    rc = tl.arange(0, C)
    rd = d0 + tl.arange(0, BD)
    rows = t0 + rc
    in_blk = (rc >= COL * 16) & (rc < COL * 16 + 16) & (rows < T)
    mid = tl.sum(tl.where(rc[:, None] == COL * 16 + 8, b_b, 0.0), axis=0)               # [BD]
    k_c = tl.load(k + k_base + rows[:, None].to(tl.int64) * (H * DK) + rd[None, :], mask=in_blk[:, None],
                  other=0.0).to(tl.float32)
    be_c = tl.load(beta + be_base + rows.to(tl.int64) * H, mask=in_blk, other=0.0).to(tl.float32)
    y = tl.where(in_blk[:, None], k_c * be_c[:, None] * tl.exp(tl.minimum(mid[None, :] - b_b, 40.0)), 0.0)
    x_scale = tl.exp(tl.minimum(b_b - mid[None, :], 40.0))           # rows before the block are masked later
    y = y.to(DT)
    a = tl.dot((b_q * x_scale).to(DT), tl.trans(y), input_precision=PREC)
    m = tl.dot((b_k * x_scale).to(DT), tl.trans(y), input_precision=PREC)
    return a, m


@triton.jit
def _delta_prep_kernel(q, k, v, g, beta, qt, kt, A, w, u0, decay, T, H, NC, scale,
                       DK: tl.constexpr, DV: tl.constexpr, GK: tl.constexpr, C: tl.constexpr,
                       BD: tl.constexpr, PREC: tl.constexpr):
    """One chunk's state-independent operands (module docstring): qt, kt, w ``[B, T, H, DK]`` and u0
    ``[B, T, H, DV]`` in k's dtype, A ``[B*H, NC, C, C]`` in k's dtype, b_C ``[B*H, NC, DK]`` float32."""
    i_c = tl.program_id(0)
    i_bh = tl.program_id(1)
    i_b = i_bh // H
    i_h = i_bh % H
    DT = k.dtype.element_ty
    GSEL: tl.constexpr = GK // DK       # 1: a gate per key column; 0: one per head, broadcast over the keys
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
    b_beta = tl.load(beta + be_base + rows.to(tl.int64) * H, mask=m, other=0.0).to(tl.float32)
    acc_a = tl.zeros([C, C], dtype=tl.float32)
    acc_m = tl.zeros([C, C], dtype=tl.float32)
    for d0 in tl.range(0, DK, BD, num_stages=1):
        off = k_base + rows[:, None].to(tl.int64) * (H * DK) + (d0 + rd)[None, :]
        off_g = g_base + rows[:, None].to(tl.int64) * (H * GK) + (d0 + rd)[None, :] * GSEL
        b_q = tl.load(q + off, mask=m[:, None], other=0.0).to(tl.float32) * scale
        b_k = tl.load(k + off, mask=m[:, None], other=0.0).to(tl.float32)
        b_b = tl.cumsum(tl.load(g + off_g, mask=m[:, None], other=0.0).to(tl.float32), axis=0)   # [C, BD]
        b_last = tl.sum(tl.where(rc[:, None] == C - 1, b_b, 0.0), axis=0)                        # [BD]
        tl.store(qt + off, (b_q * tl.exp(b_b)).to(DT), mask=m[:, None])
        tl.store(kt + off, (b_k * b_beta[:, None] * tl.exp(b_last[None, :] - b_b)).to(DT), mask=m[:, None])
        tl.store(decay + idx * DK + d0 + rd, b_last)
        for j in tl.static_range(C // 16):
            a, mm = _scores_pair(b_q, b_k, b_b, k, g, beta, k_base, g_base, be_base, t0, T, H,
                                 DK, GK, BD, d0, C, PREC, j)
            acc_a += a
            acc_m += mm
    acc_a = tl.where(rc[:, None] >= rc[None, :], acc_a, 0.0)
    acc_m = tl.where(rc[:, None] > rc[None, :], acc_m, 0.0)
    tl.store(A + idx * C * C + rc[:, None] * C + rc[None, :], acc_a.to(DT))
    # (I + M)^-1 by forward substitution: row i := e_i - M[i, :i] X[:i]; rows below i are still e_j then, and
    # M[i, j >= i] = 0, so one product with the whole X gives the row.
    inv = tl.where(rc[:, None] == rc[None, :], 1.0, 0.0)
    for i in range(1, C):
        m_i = tl.sum(tl.where(rc[:, None] == i, acc_m, 0.0), axis=0)                # [C] row i of M
        r_i = tl.sum(m_i[:, None] * inv, axis=0)                                     # [C] M[i, :] X
        inv = tl.where(rc[:, None] == i, inv - r_i[None, :], inv)
    for d0 in tl.range(0, DK, BD, num_stages=1):
        off = k_base + rows[:, None].to(tl.int64) * (H * DK) + (d0 + rd)[None, :]
        off_g = g_base + rows[:, None].to(tl.int64) * (H * GK) + (d0 + rd)[None, :] * GSEL
        b_k = tl.load(k + off, mask=m[:, None], other=0.0).to(tl.float32)
        b_b = tl.cumsum(tl.load(g + off_g, mask=m[:, None], other=0.0).to(tl.float32), axis=0)
        w_c = tl.dot(inv, b_k * tl.exp(b_b), input_precision=PREC)
        tl.store(w + off, w_c.to(DT), mask=m[:, None])
    for e0 in tl.range(0, DV, BD, num_stages=1):
        off_v = v_base + rows[:, None].to(tl.int64) * (H * DV) + (e0 + rd)[None, :]
        b_v = tl.load(v + off_v, mask=m[:, None], other=0.0).to(tl.float32)
        tl.store(u0 + off_v, tl.dot(inv, b_v, input_precision=PREC).to(DT), mask=m[:, None])


@triton.jit
def _delta_scan_kernel(qt, kt, A, w, u0, decay, o, s0, s_final, states, u_out, T, H, NC,
                       DK: tl.constexpr, DV: tl.constexpr, BV: tl.constexpr, C: tl.constexpr,
                       HAS_INIT: tl.constexpr, WRITE_O: tl.constexpr, STORE: tl.constexpr,
                       PREC: tl.constexpr):
    """The chunks in order for one (batch*head, value block): the final state; with WRITE_O the output o; with
    STORE the state entering each chunk (``states [B*H, NC, DK, DV]`` float32) and u (``u_out`` like v, float32)."""
    i_bh = tl.program_id(0)
    i_v = tl.program_id(1)
    i_b = i_bh // H
    i_h = i_bh % H
    DT = kt.dtype.element_ty
    rk = tl.arange(0, DK)
    rv = i_v * BV + tl.arange(0, BV)
    rc = tl.arange(0, C)
    k_base = i_b.to(tl.int64) * T * H * DK + i_h * DK
    v_base = i_b.to(tl.int64) * T * H * DV + i_h * DV
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
        b_u = tl.load(u0 + off_v, mask=m[:, None], other=0.0).to(tl.float32)
        b_qt = tl.load(qt + off_k, mask=m[:, None], other=0.0)
        b_kt = tl.load(kt + off_k, mask=m[:, None], other=0.0)
        b_a = tl.load(A + idx * C * C + rc[:, None] * C + rc[None, :])
        b_last = tl.load(decay + idx * DK + rk)
        if STORE:
            tl.store(states + idx * DK * DV + st_off, S)
        s_dt = S.to(DT)
        b_u -= tl.dot(b_w, s_dt, input_precision=PREC)                                   # [C, BV]
        if STORE:
            tl.store(u_out + off_v, b_u, mask=m[:, None])
        if WRITE_O:
            acc = tl.dot(b_qt, s_dt, input_precision=PREC) + tl.dot(b_a, b_u.to(DT), input_precision=PREC)
            tl.store(o + off_v, acc.to(o.dtype.element_ty), mask=m[:, None])
        S = tl.exp(b_last)[:, None] * S + tl.dot(tl.trans(b_kt), b_u.to(DT), input_precision=PREC)
    tl.store(s_final + i_bh.to(tl.int64) * DK * DV + st_off, S)


@triton.jit
def _delta_dstate_kernel(qt, kt, A, w, decay, do, d_final, dstates, du, d_init, T, H, NC,
                         DK: tl.constexpr, DV: tl.constexpr, BV: tl.constexpr, C: tl.constexpr,
                         PREC: tl.constexpr):
    """The chunks in reverse for one (batch*head, value block): ``dstates[n]`` the gradient of the state leaving
    chunk n (float32), ``du`` (like v, float32) and the gradient of the state entering the first chunk."""
    i_bh = tl.program_id(0)
    i_v = tl.program_id(1)
    i_b = i_bh // H
    i_h = i_bh % H
    DT = kt.dtype.element_ty
    rk = tl.arange(0, DK)
    rv = i_v * BV + tl.arange(0, BV)
    rc = tl.arange(0, C)
    k_base = i_b.to(tl.int64) * T * H * DK + i_h * DK
    v_base = i_b.to(tl.int64) * T * H * DV + i_h * DV
    st_off = rk[:, None] * DV + rv[None, :]
    dS = tl.load(d_final + i_bh.to(tl.int64) * DK * DV + st_off)
    for n in range(0, NC):
        i_c = NC - 1 - n
        rows = i_c * C + rc
        m = rows < T
        idx = i_bh.to(tl.int64) * NC + i_c
        off_k = k_base + rows[:, None].to(tl.int64) * (H * DK) + rk[None, :]
        off_v = v_base + rows[:, None].to(tl.int64) * (H * DV) + rv[None, :]
        b_do = tl.load(do + off_v, mask=m[:, None], other=0.0).to(DT)
        b_a = tl.load(A + idx * C * C + rc[:, None] * C + rc[None, :])
        b_kt = tl.load(kt + off_k, mask=m[:, None], other=0.0)
        b_qt = tl.load(qt + off_k, mask=m[:, None], other=0.0)
        b_w = tl.load(w + off_k, mask=m[:, None], other=0.0)
        b_last = tl.load(decay + idx * DK + rk)
        tl.store(dstates + idx * DK * DV + st_off, dS)
        b_du = tl.dot(tl.trans(b_a), b_do, input_precision=PREC) + tl.dot(b_kt, dS.to(DT), input_precision=PREC)
        tl.store(du + off_v, b_du, mask=m[:, None])
        dS = (tl.exp(b_last)[:, None] * dS + tl.dot(tl.trans(b_qt), b_do, input_precision=PREC)
              - tl.dot(tl.trans(b_w), b_du.to(DT), input_precision=PREC))
    tl.store(d_init + i_bh.to(tl.int64) * DK * DV + st_off, dS)


def prep(q, k, v, g, beta, scale: float, config: DeltaConfig) -> tuple[torch.Tensor, ...]:
    """Launch :func:`_delta_prep_kernel`: ``(qt, kt, A, w, u0, decay)`` for every chunk. g is ``[B, T, H, dk]``
    or ``[B, T, H, 1]``."""
    B, T, H, DK = q.shape
    DV = v.shape[-1]
    C = config.chunk
    nc = triton.cdiv(T, C)
    qt, kt, w = (torch.empty_like(k) for _ in range(3))
    u0 = torch.empty_like(v)
    A = torch.empty(B * H, nc, C, C, dtype=k.dtype, device=k.device)
    decay = torch.empty(B * H, nc, DK, dtype=torch.float32, device=k.device)
    bd = min(config.prep_block_k, DK, DV)
    _delta_prep_kernel[(nc, B * H)](q, k, v, g, beta, qt, kt, A, w, u0, decay, T, H, nc, scale, DK=DK, DV=DV,
                                    GK=g.shape[-1], C=C, BD=bd, PREC=dot_precision(q.dtype),
                                    num_warps=config.prep_warps)
    return qt, kt, A, w, u0, decay


def scan_piece(ops: tuple, o, init, final, config: DeltaConfig, store: tuple | None = None) -> None:
    """Launch :func:`_delta_scan_kernel` over one piece's prep ``ops``: writes ``final``, o unless it is None,
    and with ``store`` = (states, u) those."""
    qt, kt, A, w, u0, decay = ops
    B, T, H, DK = qt.shape
    DV = u0.shape[-1]
    BV = min(config.block_v, DV)
    states, u = store if store is not None else (final, final)
    _delta_scan_kernel[(B * H, DV // BV)](
        qt, kt, A, w, u0, decay, o if o is not None else final, init if init is not None else final, final,
        states, u, T, H, A.shape[1], DK=DK, DV=DV, BV=BV, C=config.chunk, HAS_INIT=init is not None,
        WRITE_O=o is not None, STORE=store is not None, PREC=dot_precision(qt.dtype), num_warps=config.num_warps,
        num_stages=config.num_stages)


_SIDE: dict[int, torch.cuda.Stream] = {}


def _side_stream(device: torch.device) -> torch.cuda.Stream:
    index = device.index if device.index is not None else torch.cuda.current_device()
    if index not in _SIDE:
        _SIDE[index] = torch.cuda.Stream(device)
    return _SIDE[index]


def dstate_piece(ops: tuple, do, d_out, dstates, du, d_in, config: DeltaConfig) -> None:
    """Launch :func:`_delta_dstate_kernel` over one piece's prep ``ops`` and output gradient ``do``, from the
    gradient ``d_out`` of the state leaving the piece: writes ``dstates``, ``du`` and ``d_in`` (the gradient of the
    state entering it)."""
    qt, kt, A, w, _, decay = ops
    B, T, H, DK = qt.shape
    DV = do.shape[-1]
    BV = min(config.block_v, DV)
    _delta_dstate_kernel[(B * H, DV // BV)](qt, kt, A, w, decay, do, d_out, dstates, du, d_in, T, H, A.shape[1],
                                            DK=DK, DV=DV, BV=BV, C=config.chunk, PREC=dot_precision(qt.dtype),
                                            num_warps=config.num_warps, num_stages=config.num_stages)


def delta_scan_fwd(q, k, v, g, beta, initial_state, scale: float, config: DeltaConfig,
                   out: tuple[torch.Tensor, torch.Tensor] | None = None, piece: int = PIECE):
    """The forward with one explicit ``config``: o ``[B, T, H, dv]`` in q's dtype and the final state
    ``[B, H, dk, dv]`` float32 (``out``: optional buffers to write into). Contiguous inputs.

    Pieces after the first are prepped on a side stream while the scan walks the piece before: the scan keeps only
    B*H*dv/block_v programs busy, so the prep (parallel over chunks) fills the rest of the card. Not while a CUDA
    graph is captured (one stream then), nor in Triton's interpreter.
    """
    B, T, H, DK = q.shape
    DV = v.shape[-1]
    if out is None:
        o = torch.empty(B, T, H, DV, dtype=q.dtype, device=q.device)
        final = torch.empty(B, H, DK, DV, dtype=torch.float32, device=q.device)
    else:
        o, final = out
    if T == 0:
        final.copy_(initial_state if initial_state is not None else torch.zeros_like(final))
        return o, final
    starts = list(range(0, T, piece))
    make = lambda t0: prep(*(x[:, t0:t0 + piece].contiguous() for x in (q, k, v, g, beta)), scale, config)
    main = torch.cuda.current_stream(q.device) if q.is_cuda else None      # CPU tensors: Triton's interpreter
    side = None
    if main is not None and len(starts) > 1 and not torch.cuda.is_current_stream_capturing():
        side = _side_stream(q.device)
        side.wait_stream(main)                       # the inputs are ready
    state, ops = initial_state, make(0)
    for i, t0 in enumerate(starts):
        nxt = None
        if i + 1 < len(starts) and side is not None:
            with torch.cuda.stream(side):
                nxt = make(starts[i + 1])
        dst = final if i == len(starts) - 1 else torch.empty_like(final)
        o_piece = o[:, t0:t0 + piece]
        o_buf = o_piece if o_piece.is_contiguous() else torch.empty_like(o_piece)
        scan_piece(ops, o_buf, state, dst, config)
        if o_buf is not o_piece:
            o_piece.copy_(o_buf)
        state = dst
        if i + 1 < len(starts):
            if side is not None:
                main.wait_stream(side)
                for t in nxt:
                    t.record_stream(main)            # made on the side stream, read on this one
                ops = nxt
            else:
                ops = make(starts[i + 1])
    return o, final


_PICKED: dict[tuple, DeltaConfig] = {}


def pick_config(q, k, v, g, beta, initial_state, scale: float) -> DeltaConfig:
    """The fastest of :data:`DELTA_CONFIGS` for this shape class (timed once per class; see ``fastest``)."""
    B, T, H, DK = q.shape
    key = (DK, v.shape[-1], q.dtype, g.shape[-1] == 1, B * H, min(T, PIECE).bit_length())
    return fastest(DELTA_CONFIGS, key, _PICKED,
                   lambda cfg: delta_scan_fwd(q, k, v, g, beta, initial_state, scale, cfg), warmup=5, rep=20)
