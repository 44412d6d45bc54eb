"""The whole decode step as one persistent kernel: the fused decoder's stages separated by grid barriers.

At batch 1 the fused decoder (kernels/decode_fused.py) is bound by its chain of 5L + 1 dependent launches, about
2 us each even with programmatic dependent launch, while a stage streams well under 1 us of weights. Here one
launch of one program per SM runs every stage of every layer; between two stages each program waits at a grid
barrier (a counter in global memory) instead of the next launch. As in the per-stage kernels, each program loads
its weight tile for a stage before it waits, so the weights stream while the slowest program finishes the
previous stage. The stages and their math are the same tiles (kernels/decode_tiles.py).

A grid barrier needs every program resident at once: the grid is at most one program per SM, and the launch is
cooperative (``launch_cooperative_grid``), so the driver refuses a grid that cannot be co-resident instead of
letting it hang. Triton's CPU interpreter runs programs one after another and cannot wait at a barrier: there the
same kernel runs one stage per launch (``STAGE``, ``SYNC=False``), which checks every stage's tiles in CI.
"""

from __future__ import annotations

import triton
import triton.language as tl

from .decode_tiles import (gemv_residual_apply, gemv_residual_load, mixer_apply, mixer_load, norm_gemv_apply,
                           norm_gemv_load)

STAGES_PER_LAYER = 5
HEAD_STAGE = STAGES_PER_LAYER     # ``STAGE`` of the final norm + logits; -1 runs every stage with barriers


COUNTER, FLAGS = 0, 1               # grid barrier implementations (``BARRIER``), both tested and timed


@triton.jit
def grid_sync(sync, epoch, BARRIER: tl.constexpr, FP: tl.constexpr):
    """Wait until every program of the grid has reached this barrier, and see all their earlier writes.

    ``sync`` is int32 memory, zero before the first launch, that persists across launches; nothing resets it.
    COUNTER: ``sync[0]`` counts arrivals. Every program adds 1, except program 0, which adds 2^31 - (programs - 1),
    so the last arrival flips bit 31 and the low bits end where they started; one thread per program polls with
    acquire loads. FLAGS: ``sync[p]`` is program p's barrier count: each program writes ``epoch`` (its count after
    this barrier) to its own slot, with release semantics, then polls every slot (FP >= programs) with plain loads
    until none is behind, then fences (acquire). No atomic read-modify-write on a shared word."""
    tl.debug_barrier()                                   # this program's stores, before its release
    if BARRIER == 0:
        ptr = sync.to(tl.pointer_type(tl.uint32))
        one = tl.full([], 1, tl.uint32)
        n = tl.num_programs(0).to(tl.uint32)
        if tl.program_id(0) == 0:
            add = 0x80000000 - (n - one)
        else:
            add = one
        old = tl.atomic_add(ptr, add, sem="release", scope="gpu")
        cur = tl.atomic_add(ptr, one - one, sem="acquire", scope="gpu")      # lowered to one thread's ld.acquire
        while ((old ^ cur) & 0x80000000) == 0:
            cur = tl.atomic_add(ptr, one - one, sem="acquire", scope="gpu")
    else:
        tl.atomic_xchg(sync + tl.program_id(0), epoch, sem="release", scope="gpu")
        r = tl.arange(0, FP)
        mask = r < tl.num_programs(0)
        done = False
        while not done:
            seen = tl.load(sync + r, mask=mask, other=epoch, volatile=True)
            done = tl.min(seen - epoch, 0) >= 0            # wraps safely: counts differ by far less than 2^31
        tl.inline_asm_elementwise("fence.acq_rel.gpu;\n\tmov.u32 $0, $1;", "=r,r", [epoch], dtype=tl.int32,
                                  is_pure=False, pack=1)
    tl.debug_barrier()


@triton.jit
def _norm_gemv_stage(pid, nprog, sync, epoch, wait, x, tok, xres, norm_w, w, out, bias, tail, conv_w, B, N, K, C, eps,
                     EMBED: tl.constexpr, HAS_BIAS: tl.constexpr, CONV: tl.constexpr, SWIGLU: tl.constexpr,
                     KW: tl.constexpr, KP: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, SYNC: tl.constexpr,
                     BARRIER: tl.constexpr, FP: tl.constexpr):
    """RMSNorm + GEMV over tiles (batch row, BN output rows); the program's first tile's weights load before the
    barrier (if ``SYNC`` and ``wait``); further tiles, if the grid is smaller than the tiles, after it."""
    nt = tl.cdiv(N, BN)
    rn = (pid % nt) * BN + tl.arange(0, BN)
    wt, wu, nw, cw, cw_last = norm_gemv_load(w, norm_w, conv_w, rn, N, K, C, CONV, SWIGLU, KW, KP, BN, BK)
    if SYNC:
        if wait:
            grid_sync(sync, epoch, BARRIER, FP)
    for t in range(pid, B * nt, nprog):
        b = tl.cast(t // nt, tl.int64)
        n = t % nt
        if t != pid:
            rn = n * BN + tl.arange(0, BN)
            wt, wu, nw, cw, cw_last = norm_gemv_load(w, norm_w, conv_w, rn, N, K, C, CONV, SWIGLU, KW, KP, BN, BK)
        if EMBED:
            xrow = x + tl.load(tok + b).to(tl.int64) * K
        else:
            xrow = x + b * K
        norm_gemv_apply(xrow, xres, n == 0, out, bias, tail, b, rn, wt, wu, nw, cw, cw_last, N, K, C, eps,
                        EMBED, HAS_BIAS, CONV, SWIGLU, KW, KP, BK)


@triton.jit
def _mixer_stage(pid, nprog, sync, epoch, proj, up_w, up_b, skip, state, o, B, NP, C, R, scale, g_min, H: tl.constexpr,
                 DK: tl.constexpr, DV: tl.constexpr, BV: tl.constexpr, RP: tl.constexpr, DELTA: tl.constexpr,
                 SYNC: tl.constexpr, BARRIER: tl.constexpr, FP: tl.constexpr):
    """The mixer over tiles (batch row * head, BV value columns). The first tile's state block loads before the
    barrier too: only this tile touches it, and the previous token's launch has completed."""
    nv = DV // BV
    rk = tl.arange(0, DK)
    i_bh = (pid // nv).to(tl.int64)
    rv = (pid % nv) * BV + tl.arange(0, BV)
    wu, bu, sk = mixer_load(up_w, up_b, skip, i_bh % H, rv, R, DK, DV, RP)
    ptr = state + i_bh * DK * DV + rk[:, None] * DV + rv[None, :]
    S = tl.load(ptr, mask=(i_bh < B * H) & (rv < DV)[None, :], other=0.0)
    if SYNC:
        grid_sync(sync, epoch, BARRIER, FP)
    for t in range(pid, B * H * nv, nprog):
        if t != pid:
            i_bh = tl.cast(t // nv, tl.int64)
            rv = (t % nv) * BV + tl.arange(0, BV)
            wu, bu, sk = mixer_load(up_w, up_b, skip, i_bh % H, rv, R, DK, DV, RP)
            ptr = state + i_bh * DK * DV + rk[:, None] * DV + rv[None, :]
            S = tl.load(ptr)
        mixer_apply(proj, o, ptr, S, i_bh // H, i_bh % H, rv, wu, bu, sk, NP, C, R, scale, g_min, H, DK, DV, RP,
                    DELTA)


@triton.jit
def _gemv_residual_stage(pid, nprog, sync, epoch, inp, gate, norm_w, w, x, B, N, K, NP, gate_off, eps,
                         HEAD_NORM: tl.constexpr, H: tl.constexpr, HP: tl.constexpr, DV: tl.constexpr,
                         BN: tl.constexpr, SYNC: tl.constexpr, BARRIER: tl.constexpr, FP: tl.constexpr):
    """GEMV + residual add over tiles (batch row, BN output rows), first tile's weights before the barrier."""
    nt = tl.cdiv(N, BN)
    rn = (pid % nt) * BN + tl.arange(0, BN)
    wt, nw = gemv_residual_load(w, norm_w, rn, N, K, HEAD_NORM, H, HP, DV)
    if SYNC:
        grid_sync(sync, epoch, BARRIER, FP)
    for t in range(pid, B * nt, nprog):
        if t != pid:
            rn = (t % nt) * BN + tl.arange(0, BN)
            wt, nw = gemv_residual_load(w, norm_w, rn, N, K, HEAD_NORM, H, HP, DV)
        gemv_residual_apply(inp, gate, x, tl.cast(t // nt, tl.int64), rn, wt, nw, N, K, NP, gate_off, eps, HEAD_NORM,
                            H, HP, DV)


@triton.jit
def decode_step_kernel(tok, embed, x, proj, o, hidden, logits, sync,
                       attn_norm, w_in, b_in, conv_w, tails, up_w, up_b, skip, scans, out_norm, w_out, mlp_norm,
                       w_mlp, w_down, final_norm, head,
                       B, layer_lo, layer_hi, N_IN, D, C, R, F, V, eps, scale, g_min,
                       H: tl.constexpr, DK: tl.constexpr, DV: tl.constexpr, KW: tl.constexpr, KP: tl.constexpr,
                       RP: tl.constexpr, HP: tl.constexpr, HF: tl.constexpr, HFP: tl.constexpr, DVF: tl.constexpr,
                       BK: tl.constexpr, BN_IN: tl.constexpr, BN_OUT: tl.constexpr, BN_MLP: tl.constexpr,
                       BN_DOWN: tl.constexpr, BN_HEAD: tl.constexpr, BV: tl.constexpr, DELTA: tl.constexpr,
                       STAGE: tl.constexpr, SYNC: tl.constexpr, BARRIER: tl.constexpr, FP: tl.constexpr):
    """Layers [layer_lo, layer_hi) of one decode step, then the logits (the stages of FusedDecoder, same buffers).

    Per-layer weights are stacked on a leading layer axis ([L, ...]), as are the conv tails [L, B, C, KW-1] and
    scan states [L, B, H, DK, DV]. STAGE = -1 runs every stage, each after a grid barrier (SYNC; ``sync`` is the
    barrier's memory, see :func:`grid_sync`); STAGE = 0..4 runs only that stage of each layer, and HEAD_STAGE only
    the logits (one launch per stage, no barrier)."""
    pid = tl.program_id(0)
    nprog = tl.num_programs(0)
    NV = H * DV
    base = 0
    if SYNC:
        if BARRIER == 1:
            base = tl.load(sync + pid, cache_modifier=".cg")     # this program's barrier count so far
    for layer in range(layer_lo, layer_hi):
        li = tl.cast(layer, tl.int64)
        epoch = base + (layer - layer_lo) * 5             # barrier count after stage 0 of this layer
        if STAGE < 0 or STAGE == 0:       # RMSNorm + [qkv; gate_down; beta; out_gate], conv step: proj
            wait = layer > layer_lo                       # the launch's first stage waits for nothing
            if layer == 0:
                _norm_gemv_stage(pid, nprog, sync, epoch, wait, embed, tok, x, attn_norm, w_in, proj, b_in, tails,
                                 conv_w, B, N_IN, D, C, eps, True, True, True, False, KW, KP, BN_IN, BK, SYNC,
                                 BARRIER, FP)
            else:
                _norm_gemv_stage(pid, nprog, sync, epoch, wait, x, tok, x, attn_norm + li * D, w_in + li * N_IN * D,
                                 proj, b_in + li * N_IN, tails + li * B * C * (KW - 1), conv_w + li * C * KW,
                                 B, N_IN, D, C, eps, False, True, True, False, KW, KP, BN_IN, BK, SYNC, BARRIER, FP)
        if STAGE < 0 or STAGE == 1:       # gates, state update and read-out: o
            _mixer_stage(pid, nprog, sync, epoch + 1, proj, up_w + li * H * DK * R, up_b + li * H * DK,
                         skip + li * NV, scans + li * B * H * DK * DV, o, B, N_IN, C, R, scale, g_min, H, DK, DV, BV,
                         RP, DELTA, SYNC, BARRIER, FP)
        if STAGE < 0 or STAGE == 2:       # per-head norm * SiLU(out_gate) @ out_proj^T: x +=
            _gemv_residual_stage(pid, nprog, sync, epoch + 2, o, proj, out_norm + li * DV, w_out + li * D * NV, x,
                                 B, D, NV, N_IN, C + R + H, eps, True, H, HP, DV, BN_OUT, SYNC, BARRIER, FP)
        if STAGE < 0 or STAGE == 3:       # RMSNorm + SwiGLU gate/up: hidden
            _norm_gemv_stage(pid, nprog, sync, epoch + 3, True, x, tok, x, mlp_norm + li * D,
                             w_mlp + li * 2 * F * D, hidden, x, x, x, B, F, D, 0, eps, False, False, False, True, 1,
                             1, BN_MLP, BK, SYNC, BARRIER, FP)
        if STAGE < 0 or STAGE == 4:       # @ down^T: x +=
            _gemv_residual_stage(pid, nprog, sync, epoch + 4, hidden, hidden, hidden, w_down + li * D * F, x, B, D,
                                 F, 0, 0, eps, False, HF, HFP, DVF, BN_DOWN, SYNC, BARRIER, FP)
    if STAGE < 0 or STAGE == 5:           # final RMSNorm @ head^T: logits
        _norm_gemv_stage(pid, nprog, sync, base + (layer_hi - layer_lo) * 5, True, x, tok, x, final_norm, head,
                         logits, x, x, x, B, V, D, 0, eps, False, False, False, False, 1, 1, BN_HEAD, BK, SYNC,
                         BARRIER, FP)


def persistent_block_n(rows: int, width: int, batch: int, programs: int, max_tile: int) -> int:
    """Output rows per tile (a power of two >= 2): the fewest that give every program at most one tile
    (``batch * ceil(rows / bn) <= programs``), capped so a tile holds at most ``max_tile`` weight elements
    (``width`` per row); past the cap, programs take several tiles and only the first loads before the barrier."""
    bn = 2
    while batch * triton.cdiv(rows, bn) > programs and bn * 2 * width <= max_tile and bn < rows:
        bn *= 2
    return bn


def persistent_block_v(batch: int, heads: int, dv: int, programs: int) -> int:
    """Value columns per mixer tile (a power of two in [2, dv]): the fewest that give every program at most one."""
    bv = 2
    while batch * heads * (dv // bv) > programs and bv < dv:
        bv *= 2
    return bv


@triton.jit
def barrier_rounds_kernel(buf, errors, sync, ROUNDS: tl.constexpr, BARRIER: tl.constexpr, FP: tl.constexpr):
    """:func:`grid_sync` on its own, for its test and its benchmark: in each round every program writes the round
    number to ``buf[pid]``, waits, reads its neighbour's slot (which must hold this round's number), and waits
    again before the next write; ``errors[pid]`` counts mismatches. 2 * ROUNDS barriers per launch."""
    pid = tl.program_id(0)
    n = tl.num_programs(0)
    base = 0
    if BARRIER == 1:
        base = tl.load(sync + pid, cache_modifier=".cg")
    bad = 0
    for r in range(1, ROUNDS + 1):
        tl.store(buf + pid, r)
        grid_sync(sync, base + 2 * r - 1, BARRIER, FP)
        bad += (tl.load(buf + (pid + 1) % n, cache_modifier=".cg") != r).to(tl.int32)
        grid_sync(sync, base + 2 * r, BARRIER, FP)
    tl.store(errors + pid, bad)
