"""Triton forward and backward of the delta rule's chunked scan (DESIGN §1), the CUDA path of
``seqedge::chunk_scan_delta``.

Imported only on the CUDA path (imports triton at top level). With ``b`` the cumulative log-gates inside a chunk of
C tokens (per key column, or one per head broadcast over the keys), ``kb = beta k`` and, for s < t,
``M[t, s] = <k_t, kb_s exp(b_t - b_s)>``, the chunked form reads (as :func:`seqedge.scan.chunked_scan`)

    T = (I + M)^-1,  w = T (k exp(b)),  u0 = T v                                 (chunk-local)
    u = u0 - w S,   o = qt S + A u,   S' = diag(exp b_C) S + kt^T u              (sequential in the chunks)

with ``qt = scale q exp(b)``, ``kt = kb exp(b_C - b)`` and ``A[t, s] = <scale q_t, kb_s exp(b_t - b_s)>``, s <= t.

Launches:
1. ``_delta_prep_kernel`` (every chunk in parallel, :mod:`seqedge.kernels.delta_prep_triton`): qt, kt, A, w, u0
   and b_C, with a blocked inverse of (I + M); per-key and per-head gates have their own score paths.
2. ``_delta_scan_kernel`` (one program per (batch*head, value block), the chunks in order): the state block
   ``S [dk, BV]`` stays in float32 registers. Value columns are independent under the delta rule (u's column j
   needs only S's column j), so the value dim splits across programs; the sequence does not (a chunk's state map
   is a full dk x dk matrix, unlike the gated rule's diagonal one). Fused (``split_o`` off): four dots per chunk,
   o included. Split: only the two dots of the recurrence (``u = u0 - w S``, ``S' = .. + kt^T u``) stay
   sequential; the kernel writes the state entering every chunk and u in the inputs' dtype (the values the fused
   dots would read), and ``_delta_out_kernel`` forms ``o = qt S + A u`` for all chunks in parallel. With a float32
   ``states``/``u`` buffer the same writes serve the backward.
3. Backward: ``_delta_dstate_kernel`` walks the chunks in reverse, ``du = A^T do + kt dS'``,
   ``dS = diag(exp b_C) dS' + qt^T do - w^T du``; then every chunk in parallel, the chunk-local gradients to q, k,
   v, g, beta (:mod:`seqedge.kernels.delta_bwd_local_triton`).

Long sequences run in pieces of whole chunks (:data:`seqedge.kernels.delta_operands.PIECE` tokens): the prep's
operands then take memory for one piece, not the sequence, the state passes from piece to piece (and is kept for
the backward), and the scans run on a high-priority side stream beside the next piece's prep.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from . import delta_operands
from .chunk_scan_triton import dot_precision, fastest
from .delta_prep_regs_triton import prep as prep_regs
from .delta_prep_triton import prep as prep_chunks


@dataclass(frozen=True)
class DeltaConfig:
    """One launch configuration: chunk length, value block and warps of the scan, warps and key block of the prep,
    and whether o is formed in the sequential scan (``split_o`` False) or by a parallel launch off the scans'
    chain (beside the next piece's scan)."""

    chunk: int
    block_v: int
    num_warps: int = 4
    num_stages: int = 2         # stages of the scans' loads, 16-bit inputs
    wide_stages: int = 2        # the same for float32 inputs, whose tiles take twice the shared memory (three
                                # stages do not fit at chunk 64 with dk = 128)
    prep_warps: int = 4
    prep_block_k: int = 32      # key columns per step of the prep (bounds its registers)
    split_o: bool = False
    register_prep: bool = False  # the prep of :mod:`~seqedge.kernels.delta_prep_regs_triton`
    prep_low_dots: bool = False  # the prep forms w and u0 from operands in the inputs' dtype (float32 accumulation),
                                 # as it forms the scores; else from float32 operands (TF32 dots for 16-bit inputs)

    def __post_init__(self) -> None:
        if self.chunk not in (16, 32, 64):
            raise ValueError(f"chunk must be 16, 32 or 64, got {self.chunk}")
        if self.block_v < 16 or self.block_v & (self.block_v - 1):
            raise ValueError(f"block_v must be a power of two >= 16, got {self.block_v}")
        if self.prep_block_k < 16 or self.prep_block_k & (self.prep_block_k - 1):
            raise ValueError(f"prep_block_k must be a power of two >= 16, got {self.prep_block_k}")

    def timed_for(self, per_head: bool) -> bool:
        """Whether :func:`pick_config` times this config for these gates. The register prep is timed for gates
        per key only: with one gate per head the other prep's plain products were the faster prep where both ran
        on a card (``benchmarks/results/delta_prep_regs_probe.json``)."""
        return not (per_head and self.register_prep)

    def stages(self, dtype: torch.dtype) -> int:
        """Pipeline stages of the scans' loads for inputs of ``dtype``."""
        return self.num_stages if dtype.itemsize <= 2 else self.wide_stages


# Every entry is run and checked by tests/test_kernels_delta_gpu.py, not only the one picked. The first is used
# while a CUDA graph is captured (nothing can be timed then); the backward has its own (delta_scan_bwd.BWD_CONFIG).
# Three stages (16-bit inputs): the scan waits on its loads (w, kt, qt, A, u0 of a chunk do not depend on the state),
# so loading two chunks ahead instead of one shortens every step of the sequential chain. A fourth stage does not
# fit in shared memory at chunk 64 and gains nothing at chunk 32; float32 inputs keep two (``wide_stages``). Value
# block 64 leaves the most multiprocessors to the next piece's prep running beside the scan; key block 64 is the
# faster prep with one gate per head. With a gate per key the prep is the forward's longest launch; its register
# form runs on one warp (its forward substitution then reduces 16-wide rows within the warp; four warps made it
# slower than the scratch prep, two in between). The picked configs' preps form w and u0 from operands in the
# inputs' dtype (``prep_low_dots``), as fla's w/u recompute does: the same forward with float32 operands (TF32
# dots, twice the operand registers) was 2-3% slower (benchmarks/results/delta_fwd_configs.json).
DELTA_CONFIGS: tuple[DeltaConfig, ...] = (
    DeltaConfig(chunk=32, block_v=32, num_stages=3),
    DeltaConfig(chunk=64, block_v=16, num_stages=3),
    DeltaConfig(chunk=32, block_v=16, num_stages=3),
    DeltaConfig(chunk=64, block_v=64, num_stages=3, prep_block_k=64, prep_low_dots=True),
    DeltaConfig(chunk=32, block_v=64, num_stages=3),
    DeltaConfig(chunk=32, block_v=64, num_stages=3, register_prep=True, prep_warps=1, prep_low_dots=True),
    DeltaConfig(chunk=32, block_v=16, num_stages=3, register_prep=True, prep_warps=1, prep_low_dots=True),
)
# Candidates: checked by the GPU tests like DELTA_CONFIGS, never picked; one joins DELTA_CONFIGS once the GPU suite
# has run in full with it and a card has timed it.
# o off the scans' chain: Nsight Compute found the sequential scans with o inside at about 1.8x fla's state pass,
# which forms o afterwards for all chunks in parallel (benchmarks/results/delta_fwd_ncu.md). The split scan writes
# the state entering every chunk and u, and o of each piece runs beside the next piece's scan (the split configs
# excluded above were timed with o after the scan on the scans' stream, still on the chain).
PENDING_CONFIGS: tuple[DeltaConfig, ...] = (
    DeltaConfig(chunk=64, block_v=64, num_stages=3, prep_block_k=64, prep_low_dots=True, split_o=True),
    DeltaConfig(chunk=32, block_v=32, num_stages=3, split_o=True, prep_low_dots=True),
    DeltaConfig(chunk=32, block_v=64, num_stages=3, register_prep=True, prep_warps=1, prep_low_dots=True,
                split_o=True),
    # the chunk-64 prep on eight warps: 12 bytes of spills a thread against 588 on four (compiled offline, one gate
    # per head, key block 64), at one program per multiprocessor
    DeltaConfig(chunk=64, block_v=64, num_stages=3, prep_block_k=64, prep_warps=8, prep_low_dots=True),
)
# Configs taken out, with why (docs/excluded-kernel-configs.md, "Delta rule", has the measurements). Kept so that
# sweeps can still time them and none is re-added without its reason.
EXCLUDED_CONFIGS: dict[DeltaConfig, str] = {
    DeltaConfig(chunk=64, block_v=32):
        "bf16 only: wrong results, NaN and an illegal memory access (float32 passed every forward test); the same "
        "chunk-64 bf16 failure the gated kernel records (chunk_scan_triton.EXCLUDED_CONFIGS)",
    DeltaConfig(chunk=64, block_v=16, split_o=True):
        "a wrong final state (its o agreed), and slower than o in the scan",
    DeltaConfig(chunk=32, block_v=16, split_o=True): "slower than o in the scan",
    DeltaConfig(chunk=64, block_v=64, num_warps=8, split_o=True):
        "slower, and the gated kernel's illegal-access tile shape (chunk_scan_triton.EXCLUDED_CONFIGS)",
    DeltaConfig(chunk=64, block_v=64, num_warps=8): "slower scan than 4 warps at value block 16",
    DeltaConfig(chunk=32, block_v=32): "slower scan than the same config with num_stages 3 (loads one chunk ahead)",
    DeltaConfig(chunk=64, block_v=16): "slower scan than the same config with num_stages 3 (loads one chunk ahead)",
    DeltaConfig(chunk=32, block_v=16): "slower scan than the same config with num_stages 3 (loads one chunk ahead)",
    DeltaConfig(chunk=32, block_v=64, num_stages=3, register_prep=True):
        "the register prep on four warps: slower than the scratch prep (docs/excluded-kernel-configs.md)",
    DeltaConfig(chunk=32, block_v=64, num_stages=3, register_prep=True, prep_warps=2):
        "the register prep on two warps: slower than on one (docs/excluded-kernel-configs.md)",
    DeltaConfig(chunk=64, block_v=16, num_stages=3, register_prep=True, prep_warps=4, prep_block_k=16):
        "the register prep at chunk 64: slower than at chunk 32 on every warp count and key block, and than the "
        "scratch prep at chunk 64 on four warps (docs/excluded-kernel-configs.md)",
    DeltaConfig(chunk=64, block_v=16, num_stages=4): "out of resources at launch: the scan's stages need more shared "
                                                     "memory than a Hopper block has (also at block_v 32 and 64)",
    DeltaConfig(chunk=64, block_v=64, num_stages=3, prep_block_k=64):
        "w and u0 from float32 operands: slower than from the inputs' dtype (docs/excluded-kernel-configs.md)",
    DeltaConfig(chunk=32, block_v=64, num_stages=3, register_prep=True, prep_warps=1):
        "w and u0 from float32 operands: slower than from the inputs' dtype (docs/excluded-kernel-configs.md)",
    DeltaConfig(chunk=32, block_v=32, num_stages=3, register_prep=True, prep_warps=1):
        "the register prep at value block 32: slower than at 64 and 16 (docs/excluded-kernel-configs.md)",
}

@triton.jit
def _delta_scan_kernel(qt, kt, A, w, u0, decay, o, s0, s_final, states, u_out, T, H, NC,
                       DK: tl.constexpr, DV: tl.constexpr, BV: tl.constexpr, C: tl.constexpr,
                       HAS_INIT: tl.constexpr, WRITE_O: tl.constexpr, STORE: tl.constexpr,
                       PREC: tl.constexpr):
    """The chunks in order for one (batch*head, value block): the final state; with WRITE_O the output o; with
    STORE the state entering each chunk (``states [B*H, NC, DK, DV]``) and u (``u_out`` ``[B, T, H, DV]``), in
    their buffers' dtypes."""
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
        b_kt = tl.load(kt + off_k, mask=m[:, None], other=0.0)
        b_last = tl.load(decay + idx * DK + rk)
        if STORE:
            tl.store(states + idx * DK * DV + st_off, S.to(states.dtype.element_ty))
        s_dt = S.to(DT)
        b_u -= tl.dot(b_w, s_dt, input_precision=PREC)                                   # [C, BV]
        if STORE:
            tl.store(u_out + off_v, b_u.to(u_out.dtype.element_ty), mask=m[:, None])
        if WRITE_O:
            b_qt = tl.load(qt + off_k, mask=m[:, None], other=0.0)
            b_a = tl.load(A + idx * C * C + rc[:, None] * C + rc[None, :])
            acc = tl.dot(b_qt, s_dt, input_precision=PREC) + tl.dot(b_a, b_u.to(DT), input_precision=PREC)
            tl.store(o + off_v, acc.to(o.dtype.element_ty), mask=m[:, None])
        S = tl.exp(b_last)[:, None] * S + tl.dot(tl.trans(b_kt), b_u.to(DT), input_precision=PREC)
    tl.store(s_final + i_bh.to(tl.int64) * DK * DV + st_off, S)


@triton.jit
def _delta_out_kernel(qt, A, states, u, o, T, H, NC, DK: tl.constexpr, DV: tl.constexpr, BV: tl.constexpr,
                      C: tl.constexpr, PREC: tl.constexpr):
    """``o = qt S + A u`` for one (chunk, batch*head, value block), from the split scan's ``states`` and u."""
    i_c = tl.program_id(0)
    i_bh = tl.program_id(1)
    i_v = tl.program_id(2)
    i_b = i_bh // H
    i_h = i_bh % H
    rk = tl.arange(0, DK)
    rv = i_v * BV + tl.arange(0, BV)
    rc = tl.arange(0, C)
    rows = i_c * C + rc
    m = rows < T
    idx = i_bh.to(tl.int64) * NC + i_c
    off_k = i_b.to(tl.int64) * T * H * DK + i_h * DK + rows[:, None].to(tl.int64) * (H * DK) + rk[None, :]
    off_v = i_b.to(tl.int64) * T * H * DV + i_h * DV + rows[:, None].to(tl.int64) * (H * DV) + rv[None, :]
    b_qt = tl.load(qt + off_k, mask=m[:, None], other=0.0)
    b_s = tl.load(states + idx * DK * DV + rk[:, None] * DV + rv[None, :])
    b_a = tl.load(A + idx * C * C + rc[:, None] * C + rc[None, :])
    b_u = tl.load(u + off_v, mask=m[:, None], other=0.0)
    acc = tl.dot(b_qt, b_s, input_precision=PREC) + tl.dot(b_a, b_u, input_precision=PREC)
    tl.store(o + off_v, acc.to(o.dtype.element_ty), mask=m[:, None])


@triton.jit
def _delta_dstate_kernel(qt, kt, A, w, decay, do, d_final, dstates, du, d_init, T, H, NC,
                         DK: tl.constexpr, DV: tl.constexpr, BV: tl.constexpr, C: tl.constexpr,
                         PREC: tl.constexpr):
    """The chunks in reverse for one (batch*head, value block): ``dstates[n]`` the gradient of the state leaving
    chunk n, ``du`` (like v), both in their buffers' dtypes, and the gradient of the state entering the first
    chunk (float32)."""
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
        tl.store(dstates + idx * DK * DV + st_off, dS.to(dstates.dtype.element_ty))
        b_du = tl.dot(tl.trans(b_a), b_do, input_precision=PREC) + tl.dot(b_kt, dS.to(DT), input_precision=PREC)
        tl.store(du + off_v, b_du.to(du.dtype.element_ty), mask=m[:, None])
        dS = (tl.exp(b_last)[:, None] * dS + tl.dot(tl.trans(b_qt), b_do, input_precision=PREC)
              - tl.dot(tl.trans(b_w), b_du.to(DT), input_precision=PREC))
    tl.store(d_init + i_bh.to(tl.int64) * DK * DV + st_off, dS)


def prep(q, k, v, g, beta, scale: float, config: DeltaConfig, with_inverse: bool = False) -> tuple[torch.Tensor,
                                                                                                    ...]:
    """:func:`seqedge.kernels.delta_prep_triton.prep` with ``config``'s chunk, key block and warps:
    ``(qt, kt, A, w, u0, decay)`` for every chunk (and the inverse with ``with_inverse``). g is
    ``[B, T, H, dk]`` or ``[B, T, H, 1]``."""
    make = prep_regs if config.register_prep else prep_chunks
    return make(q, k, v, g, beta, scale, config.chunk, config.prep_block_k, config.prep_warps, dot_precision(q.dtype),
                with_inverse, low_dots=config.prep_low_dots)


def split_buffers(ops: tuple) -> tuple[torch.Tensor, torch.Tensor]:
    """The split scan's ``(states, u)`` for one piece's prep ``ops``, in the inputs' dtype: the state entering
    every chunk ``[B*H, NC, dk, dv]`` and u like u0."""
    qt, u0, A = ops[0], ops[4], ops[2]
    B, _, H, DK = qt.shape
    return torch.empty(B * H, A.shape[1], DK, u0.shape[-1], dtype=qt.dtype, device=qt.device), torch.empty_like(u0)


def scan_piece(ops: tuple, o, init, final, config: DeltaConfig, store: tuple | None = None,
               defer_o: bool = False) -> tuple | None:
    """Launch :func:`_delta_scan_kernel` over one piece's prep ``ops``: writes ``final``, o unless it is None,
    and with ``store`` = (states, u) those (the backward passes float32 buffers). With ``config.split_o`` and an
    o, the scan writes the states and u in the inputs' dtype (into ``store`` where given) and
    :func:`out_piece` forms o, right after it, or with ``defer_o`` not at all: then the caller launches it (the
    forward does beside the next piece's scan) and gets ``(states, u)``."""
    qt, kt, A, w, u0, decay = ops
    B, T, H, DK = qt.shape
    DV = u0.shape[-1]
    NC = A.shape[1]
    BV = min(config.block_v, DV)
    split = o is not None and config.split_o
    if split and store is None:
        store = split_buffers(ops)
    states, u = store if store is not None else (final, final)
    fused_o = o is not None and not split
    _delta_scan_kernel[(B * H, DV // BV)](
        qt, kt, A, w, u0, decay, o if fused_o else final, init if init is not None else final, final,
        states, u, T, H, NC, DK=DK, DV=DV, BV=BV, C=config.chunk, HAS_INIT=init is not None,
        WRITE_O=fused_o, STORE=store is not None, PREC=dot_precision(qt.dtype), num_warps=config.num_warps,
        num_stages=config.stages(qt.dtype))
    if split and defer_o:
        return store
    if split:
        out_piece(ops, store, o, config)
    return None


def out_piece(ops: tuple, store: tuple, o, config: DeltaConfig) -> None:
    """Launch :func:`_delta_out_kernel`: ``o = qt S + A u`` for every chunk of one piece in parallel, from the
    split scan's ``store`` = (states, u)."""
    qt, A = ops[0], ops[2]
    B, T, H, DK = qt.shape
    DV = o.shape[-1]
    bo = min(64, DV)
    _delta_out_kernel[(A.shape[1], B * H, DV // bo)](qt, A, *store, o, T, H, A.shape[1], DK=DK, DV=DV, BV=bo,
                                                     C=config.chunk, PREC=dot_precision(qt.dtype), num_warps=4)


_SIDE: dict[tuple[int, int], torch.cuda.Stream] = {}
# The scans' stream: the scans keep only B*H*dv/block_v programs busy, and the parallel launches beside them (the
# next piece's prep; in the backward the chunk-local gradients) fill the rest of the card. At the higher priority
# the scans' blocks are scheduled before the parallel launch's waiting ones, so the sequential chain is not held up.
SCAN_PRIORITY = -1
# Scans the forward's host may run ahead of: it waits for the scan this many pieces back before it queues the next
# prep, so at most PREP_LOOKAHEAD + 1 pieces' preps are alive; more than one hides the host's launch time of a prep
# (its slices and launch) when a piece's scan is short (per-head gates, chunk 64).
PREP_LOOKAHEAD = 2


def side_stream(device: torch.device, priority: int = 0) -> torch.cuda.Stream:
    """One side stream per device and priority (0: the default; negative: blocks from it are scheduled first),
    shared by the forward and the backward."""
    index = device.index if device.index is not None else torch.cuda.current_device()
    if (index, priority) not in _SIDE:
        _SIDE[index, priority] = torch.cuda.Stream(device, priority=priority)
    return _SIDE[index, priority]


def on_stream(stream):
    """``torch.cuda.stream(stream)``, or nothing for None (one stream: graph capture, the interpreter)."""
    return torch.cuda.stream(stream) if stream is not None else contextlib.nullcontext()


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
                                            num_warps=config.num_warps, num_stages=config.stages(qt.dtype))


def delta_scan_fwd(q, k, v, g, beta, initial_state, scale: float, config: DeltaConfig,
                   out: tuple[torch.Tensor, torch.Tensor] | None = None, piece: int | None = None,
                   entering: torch.Tensor | None = None):
    """The forward with one explicit ``config``: o ``[B, T, H, dv]`` in q's dtype and the final state
    ``[B, H, dk, dv]`` float32 (``out``: optional buffers to write into). Contiguous inputs. ``piece``: tokens per
    piece (default :data:`~seqedge.kernels.delta_operands.PIECE`); ``entering``: an optional float32
    ``[P, B, H, dk, dv]`` buffer (P pieces after the first) for the state entering each of those pieces.

    With several pieces the scans run on a high-priority side stream (:data:`SCAN_PRIORITY`) and each next
    piece's prep (parallel over chunks) on the caller's stream beside the scan of the piece before; at most
    :data:`PREP_LOOKAHEAD` + 1 pieces' preps are alive. Not while a CUDA graph is captured (one stream then), nor
    in Triton's interpreter. With ``config.split_o`` each piece's o is formed on the caller's stream after the
    next piece's prep, beside the next piece's scan (one stream: in the same order).
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
    piece = piece or delta_operands.PIECE
    starts = list(range(0, T, piece))
    assert entering is None or entering.shape[0] == len(starts) - 1, "one saved state per piece after the first"
    make = lambda t0: prep(*(x[:, t0:t0 + piece].contiguous() for x in (q, k, v, g, beta)), scale, config)
    main = torch.cuda.current_stream(q.device) if q.is_cuda else None      # CPU tensors: Triton's interpreter
    scans = None
    if main is not None and len(starts) > 1 and not torch.cuda.is_current_stream_capturing():
        scans = side_stream(q.device, SCAN_PRIORITY)
    # split o: each piece's o is launched on the caller's stream after the next piece's prep, so it runs beside
    # the next scan instead of on the scans' chain; the scans then wait for their prep alone (an event), not for
    # everything queued on the caller's stream
    defer = config.split_o and len(starts) > 1
    state, ops, scanned = initial_state, make(0), []
    ready = recorded(main) if scans is not None and defer else None
    store = split_buffers(ops) if defer else None
    for i, t0 in enumerate(starts):
        if scans is not None:
            if defer:
                scans.wait_event(ready)              # this piece's prep; the outputs' buffers came before it
            else:
                scans.wait_stream(main)              # this piece's prep, the inputs and the outputs' buffers
        o_piece = o[:, t0:t0 + piece]
        with on_stream(scans):
            last = i == len(starts) - 1
            dst = final if last else (entering[i] if entering is not None else torch.empty_like(final))
            if defer:
                scan_piece(ops, o_piece, state, dst, config, store=store, defer_o=True)
            else:
                _write_into(o_piece, lambda buf: scan_piece(ops, buf, state, dst, config))
        state = dst
        if scans is not None:
            for t in (*ops, *(store or ())):
                t.record_stream(scans)               # made on the caller's stream, read on the scans' one
            scanned.append(recorded(scans))
            if i >= PREP_LOOKAHEAD:
                scanned[i - PREP_LOOKAHEAD].synchronize()   # bounds the preps alive: the host runs ahead
        done = (ops, store, o_piece) if defer else None
        if i + 1 < len(starts):
            ops = make(starts[i + 1])
            if defer:
                ready = recorded(main) if scans is not None else None
                store = split_buffers(ops)           # after the event: its memory's earlier users came before it
        if done is not None:
            if scans is not None:
                main.wait_event(scanned[-1])
            done_ops, done_store, done_o = done
            _write_into(done_o, lambda buf: out_piece(done_ops, done_store, buf, config))
    if scans is not None:
        main.wait_stream(scans)
    return o, final


def recorded(stream) -> torch.cuda.Event:
    """An event recorded on ``stream`` now (the forward's and backward's scans and launches beside them)."""
    event = torch.cuda.Event()
    event.record(stream)
    return event


def _write_into(o_piece: torch.Tensor, write) -> None:
    """``write(buf)`` with ``buf`` ``o_piece`` itself where it is contiguous, else a contiguous buffer copied into
    it after (a piece of o of several batch rows is a strided slice of the whole)."""
    buf = o_piece if o_piece.is_contiguous() else torch.empty_like(o_piece)
    write(buf)
    if buf is not o_piece:
        o_piece.copy_(buf)


_PICKED: dict[tuple, DeltaConfig] = {}


def shape_key(q: torch.Tensor, v: torch.Tensor, g: torch.Tensor) -> tuple:
    """The shape class a timed pick is kept for: head sizes, dtype, gate kind (one per head: ``g``'s last extent
    is 1), batch*heads and the length's bit length up to one piece."""
    B, T, H, DK = q.shape
    return DK, v.shape[-1], q.dtype, g.shape[-1] == 1, B * H, min(T, delta_operands.PIECE).bit_length()


def pick_config(q, k, v, g, beta, initial_state, scale: float) -> DeltaConfig:
    """The fastest of :data:`DELTA_CONFIGS` for this shape class (timed once per class; see ``fastest``)."""
    per_head = g.shape[-1] == 1
    return fastest(tuple(c for c in DELTA_CONFIGS if c.timed_for(per_head)), shape_key(q, v, g), _PICKED,
                   lambda cfg: delta_scan_fwd(q, k, v, g, beta, initial_state, scale, cfg), warmup=5, rep=20)
