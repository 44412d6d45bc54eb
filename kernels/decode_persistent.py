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
def _tile(pid, tiles, nt, BN: tl.constexpr):
    """This program's tile of a stage (at most one: the host sizes tiles so): (active, batch row, first-tile flag,
    rows). An idle program (pid >= tiles) gets tile pid % tiles, so its prefetch reads valid weights."""
    t = pid % tiles
    n = t % nt
    return pid < tiles, tl.cast(t // nt, tl.int64), n == 0, n * BN + tl.arange(0, BN)


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
    scan states [L, B, H, DK, DV]. Each program has at most one tile per stage. Every stage first issues the loads
    of the next stage's weights (the next layer's for the last stage), then waits at the barrier, then computes
    with the weights loaded one stage earlier: weight traffic overlaps a whole stage, not only the wait.
    STAGE = -1 runs every stage, each after a grid barrier (SYNC; ``sync`` is the barrier's memory, see
    :func:`grid_sync`); STAGE = 0..4 computes only that stage of each layer, and HEAD_STAGE only the logits (one
    launch per stage, no barrier: for Triton's interpreter)."""
    pid = tl.program_id(0)
    NV = H * DV
    NT_IN = tl.cdiv(N_IN, BN_IN)
    NT_OUT = tl.cdiv(D, BN_OUT)
    NT_MLP = tl.cdiv(F, BN_MLP)
    NT_DOWN = tl.cdiv(D, BN_DOWN)
    NT_HEAD = tl.cdiv(V, BN_HEAD)
    NVB = DV // BV
    rk = tl.arange(0, DK)
    base = 0
    if SYNC:
        if BARRIER == 1:
            base = tl.load(sync + pid, cache_modifier=".cg")     # this program's barrier count so far
    # this program's tile of each stage (the same in every layer)
    a_in, b_in_row, first_in, rn_in = _tile(pid, B * NT_IN, NT_IN, BN_IN)
    a_out, b_out, _f1, rn_out = _tile(pid, B * NT_OUT, NT_OUT, BN_OUT)
    a_mlp, b_mlp, _f2, rn_mlp = _tile(pid, B * NT_MLP, NT_MLP, BN_MLP)
    a_dn, b_dn, _f3, rn_dn = _tile(pid, B * NT_DOWN, NT_DOWN, BN_DOWN)
    t_mx = pid % (B * H * NVB)
    a_mx = pid < B * H * NVB
    i_bh = tl.cast(t_mx // NVB, tl.int64)
    h = i_bh % H
    rv = (t_mx % NVB) * BV + tl.arange(0, BV)
    li0 = tl.cast(layer_lo, tl.int64)
    # weight loads are skipped (constexpr) where STAGE says that stage does not run: the interpreter runs one
    # stage per launch, and every skipped load there is time saved
    if STAGE < 0 or STAGE == 0:
        wi, wi_u, nwi, cwi, cwi_last = norm_gemv_load(w_in + li0 * N_IN * D, attn_norm + li0 * D,
                                                      conv_w + li0 * C * KW, rn_in, N_IN, D, C, True, False, KW, KP,
                                                      BN_IN, BK)
    for layer in range(layer_lo, layer_hi):
        li = tl.cast(layer, tl.int64)
        epoch = base + (layer - layer_lo) * 5             # barrier count after stage 0 of this layer
        # stage 0: RMSNorm + [qkv; gate_down; beta; out_gate], conv step -> proj. Prefetch: the mixer's tile.
        sptr = scans + li * B * H * DK * DV + i_bh * DK * DV + rk[:, None] * DV + rv[None, :]
        if STAGE < 0 or STAGE == 1:
            wu, bu, sk = mixer_load(up_w + li * H * DK * R, up_b + li * H * DK, skip + li * NV, h, rv, R, DK, DV, RP)
            S = tl.load(sptr)         # only this tile touches it, and the previous token's launch has completed
        if SYNC:
            if layer > layer_lo:                          # the launch's first stage waits for nothing
                grid_sync(sync, epoch, BARRIER, FP)
        if STAGE < 0 or STAGE == 0:
            if a_in:
                tail = tails + li * B * C * (KW - 1)
                if layer == 0:
                    xrow = embed + tl.load(tok + b_in_row).to(tl.int64) * D
                    norm_gemv_apply(xrow, x, first_in, proj, b_in, tail, b_in_row, rn_in, wi, wi_u, nwi, cwi,
                                    cwi_last, N_IN, D, C, eps, True, True, True, False, KW, KP, BK)
                else:
                    norm_gemv_apply(x + b_in_row * D, x, first_in, proj, b_in + li * N_IN, tail, b_in_row, rn_in,
                                    wi, wi_u, nwi, cwi, cwi_last, N_IN, D, C, eps, False, True, True, False, KW, KP,
                                    BK)
        # stage 1: gates, state update and read-out -> o. Prefetch: out_proj's tile.
        if STAGE < 0 or STAGE == 2:
            wo, nwo = gemv_residual_load(w_out + li * D * NV, out_norm + li * DV, rn_out, D, NV, True, H, HP, DV)
        if SYNC:
            grid_sync(sync, epoch + 1, BARRIER, FP)
        if STAGE < 0 or STAGE == 1:
            if a_mx:
                mixer_apply(proj, o, sptr, S, i_bh // H, h, rv, wu, bu, sk, N_IN, C, R, scale, g_min, H, DK, DV,
                            RP, DELTA)
        # stage 2: per-head norm * SiLU(out_gate) @ out_proj^T -> x +=. Prefetch: the SwiGLU gate/up tile.
        if STAGE < 0 or STAGE == 3:
            wm, wm_u, nwm, _c, _cl = norm_gemv_load(w_mlp + li * 2 * F * D, mlp_norm + li * D, conv_w, rn_mlp, F, D,
                                                    0, False, True, 1, 1, BN_MLP, BK)
        if SYNC:
            grid_sync(sync, epoch + 2, BARRIER, FP)
        if STAGE < 0 or STAGE == 2:
            if a_out:
                gemv_residual_apply(o, proj, x, b_out, rn_out, wo, nwo, D, NV, N_IN, C + R + H, eps, True, H, HP, DV)
        # stage 3: RMSNorm + SwiGLU -> hidden. Prefetch: down's tile.
        if STAGE < 0 or STAGE == 4:
            wd, _n = gemv_residual_load(w_down + li * D * F, w_down, rn_dn, D, F, False, HF, HFP, DVF)
        if SYNC:
            grid_sync(sync, epoch + 3, BARRIER, FP)
        if STAGE < 0 or STAGE == 3:
            if a_mlp:
                norm_gemv_apply(x + b_mlp * D, x, False, hidden, x, x, b_mlp, rn_mlp, wm, wm_u, nwm, _c, _cl, F, D,
                                0, eps, False, False, False, True, 1, 1, BK)
        # stage 4: @ down^T -> x +=. Prefetch: the next layer's input tile (none after the last layer).
        if STAGE < 0 or STAGE == 0:
            nxt = tl.minimum(li + 1, layer_hi - 1)
            rn_nxt = tl.where(layer + 1 < layer_hi, rn_in, rn_in + N_IN)   # past the last layer: all masked
            wi, wi_u, nwi, cwi, cwi_last = norm_gemv_load(w_in + nxt * N_IN * D, attn_norm + nxt * D,
                                                          conv_w + nxt * C * KW, rn_nxt, N_IN, D, C, True, False, KW,
                                                          KP, BN_IN, BK)
        if SYNC:
            grid_sync(sync, epoch + 4, BARRIER, FP)
        if STAGE < 0 or STAGE == 4:
            if a_dn:
                gemv_residual_apply(hidden, hidden, x, b_dn, rn_dn, wd, _n, D, F, 0, 0, eps, False, HF, HFP, DVF)
    # final RMSNorm @ head^T -> logits
    a_hd, b_hd, _f4, rn_hd = _tile(pid, B * NT_HEAD, NT_HEAD, BN_HEAD)
    if STAGE < 0 or STAGE == 5:
        wh, _u, nwh, _c2, _cl2 = norm_gemv_load(head, final_norm, conv_w, rn_hd, V, D, 0, False, False, 1, 1, BN_HEAD,
                                                BK)
    if SYNC:
        grid_sync(sync, base + (layer_hi - layer_lo) * 5, BARRIER, FP)
    if STAGE < 0 or STAGE == 5:
        if a_hd:
            norm_gemv_apply(x + b_hd * D, x, False, logits, x, x, b_hd, rn_hd, wh, _u, nwh, _c2, _cl2, V, D, 0, eps,
                            False, False, False, False, 1, 1, BK)


def persistent_block_n(rows: int, width: int, batch: int, programs: int, max_tile: int) -> int | None:
    """Output rows per tile (a power of two >= 2): the fewest that give every program at most one tile
    (``batch * ceil(rows / bn) <= programs``); None if that needs more than ``max_tile`` weight elements per tile
    (``width`` per row): the persistent kernel does not take the shape."""
    bn = 2
    while batch * triton.cdiv(rows, bn) > programs:
        bn *= 2
    return bn if bn * width <= max_tile or bn == 2 else None


def persistent_block_v(batch: int, heads: int, dv: int, programs: int) -> int | None:
    """Value columns per mixer tile (a power of two in [2, dv]): the fewest that give every program at most one;
    None if even whole rows (dv) give more tiles than programs."""
    bv = 2
    while batch * heads * (dv // bv) > programs and bv < dv:
        bv *= 2
    return bv if batch * heads * (dv // bv) <= programs else None


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
