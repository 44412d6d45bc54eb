"""Fused whole-model decode: 5 Triton launches per layer (+1 for the logits), captured in one CUDA graph.

:class:`~seqedge.kernels.decode_graph.GraphDecoder` replays the model's own step, about 60 small kernels per
layer; inside a graph each costs ~1.5-3 us whatever its size, so batch-1 decode is launch-bound. This decoder
packs the weights once and runs the same math (DESIGN §1, ``model.step``) as a short fixed sequence of launches:

    per layer, with x the float32 residual stream [B, D]:
    1. _norm_gemv_kernel   RMSNorm(x) (attn_norm) @ [qkv; gate_down; beta; out_gate]^T; epilogue: the causal
                           conv step + SiLU on the q/k/v rows (conv tail updated in place), beta's bias.
                           Layer 0 reads x from the embedding table instead (and writes it to x).
    2. _mixer_kernel       per (batch, head, value block): L2 norm of q, k (delta), gate_up -> g, sigmoid -> beta,
                           the state update and read-out of recurrent_step in place, the skip term o + skip * v.
    3. _gemv_residual      prologue: per-head RMSNorm (out_norm) * SiLU(out_gate); @ out_proj^T; x += result.
    4. _norm_gemv_kernel   RMSNorm(x) (mlp_norm) @ gate_up^T, gate and up rows in the same program; silu(g) * u.
    5. _gemv_residual      @ down^T; x += result.
    after the last layer:  _norm_gemv_kernel  final RMSNorm(x) @ head^T (tied: the embedding) -> logits float32.

Weights stay in the model's dtype (bf16, fp16 or fp32) and every sum accumulates in float32; activations between
launches are float32 (the model rounds some to its dtype: results agree to that dtype's rounding).

Batch 1 is bound by the chain of dependent launches, not by bandwidth: each GEMV program holds its whole weight
tile (every input column) and, with programmatic dependent launch (sm 9.0+), loads it before waiting for the
previous kernel, which lets the next kernel stream its weights while the current one finishes. Every activation
read and every write comes after ``gdc_wait``, which returns once the previous kernel has completed (and, by
induction, every earlier one).

The GEMVs run one program per batch row and weight tile, so each batch row reads the weights again (from L2).
From ``FusedConfig.batch_tile`` rows on (16 by default), steps 1, 3, 4, 5 and the logits use _norm_gemm_kernel
and _gemm_residual_kernel instead: the same math for ``batch_tile`` batch rows per program, as matrix products.
With bf16 weights they run on tensor cores, the float32 activations entering as two bf16 parts, high and low
(a relative error of about 2^-16); other weight dtypes multiply in exact float32.

    >>> dec = FusedDecoder(model, batch_size=1)             # model on CUDA; weights are read here, once
    >>> dec.reset()                                          # zero state (or dec.reset(state))
    >>> logits = dec.step(torch.tensor([72], device="cuda"))   # [B, V] float32; a view of a static buffer

Imported only on the CUDA path (imports triton at top level). On CPU it runs only in Triton's interpreter
(TRITON_INTERPRET=1, ``capture=False``), which is how tests/decode_fused_interpret_check.py checks it in CI.
"""

from __future__ import annotations

import os
from typing import NamedTuple

import torch
import triton
import triton.language as tl
from triton.language.extra.cuda import gdc_launch_dependents, gdc_wait

from seqedge.config import NATIVE_MIXER

from .decode_graph import StaticDecoder


class FusedConfig(NamedTuple):
    """Launch parameters: value columns of the state per mixer program; weight elements per GEMV program; batch
    rows per program of the tensor-core kernels that batches of at least that many rows use instead of the
    GEMVs (0: never)."""

    block_v: int
    max_tile: int
    batch_tile: int = 16


# Every entry is checked by the tests (interpreter and GPU); the first is the default. No autotuning.
FUSED_CONFIGS: tuple[FusedConfig, ...] = (FusedConfig(block_v=32, max_tile=4096, batch_tile=16),
                                          FusedConfig(block_v=64, max_tile=8192, batch_tile=32))
GEMM_BLOCK_N = 64     # output rows per program of the batched (tensor-core) kernels (16 and 32 were slower: docs/excluded-kernel-configs.md)
GEMM_BLOCK_K = 64     # input columns per step of their loop over the input


def block_n(rows: int, width: int, programs: int, max_tile: int = FUSED_CONFIGS[0].max_tile) -> int:
    """Output rows per GEMV program: the largest power of two (>= 2) that still gives ``programs`` programs per
    batch row (about one per SM at batch 1) with at most ``max_tile`` weight elements (``width`` per row)."""
    bn = 2
    while bn * 2 * programs <= rows and bn * 2 * width <= max_tile:
        bn *= 2
    return bn


def pdl_supported(device: torch.device) -> bool:
    """Programmatic dependent launch (each kernel starts, and loads its weights, while the previous one finishes)
    needs sm 9.0 or newer."""
    return device.type == "cuda" and torch.cuda.get_device_capability(device) >= (9, 0)


@triton.jit
def _norm_gemv_kernel(x, tok, xres, norm_w, w, out, bias, tail, conv_w, N, K, C, eps,
                      EMBED: tl.constexpr, HAS_BIAS: tl.constexpr, CONV: tl.constexpr, SWIGLU: tl.constexpr,
                      KW: tl.constexpr, KP: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, PDL: tl.constexpr):
    """out[b, n] = epilogue(sum_k w[n, k] * RMSNorm(x[b])[k]) for rows n of this program, batch row b.

    x [B, K] float32 (or, if EMBED, the embedding table [V, K], row tok[b], copied to xres [B, K]); w [N, K]
    ([2N, K] if SWIGLU: gate rows, then up rows); out [B, N] float32. BK >= K: the whole row in one tile, so every
    weight load is issued at once, before the wait for the previous kernel (PDL). Epilogue: rows < C (CONV) are
    the conv channels: SiLU(conv over tail [B, C, KW-1] and the new value), tail shifted in place; others + bias
    (HAS_BIAS); SWIGLU: silu(gate) * up.
    """
    if PDL:
        gdc_launch_dependents()
    pid_n = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    rn = pid_n * BN + tl.arange(0, BN)                                      # [BN] output rows
    nmask = rn < N
    rk = tl.arange(0, BK)
    kmask = rk < K
    wmask = nmask[:, None] & kmask[None, :]
    # weights first: they do not depend on the previous kernel
    wt = tl.load(w + rn[:, None] * K + rk[None, :], mask=wmask, other=0.0)
    if SWIGLU:
        wu = tl.load(w + (rn + N)[:, None] * K + rk[None, :], mask=wmask, other=0.0)
    nw = tl.load(norm_w + rk, mask=kmask, other=0.0).to(tl.float32)
    if CONV:
        cmask = rn < C
        rj = tl.arange(0, KP)
        tmask = cmask[:, None] & (rj < KW - 1)[None, :]
        cw = tl.load(conv_w + rn[:, None] * KW + rj[None, :], mask=tmask, other=0.0).to(tl.float32)
        cw_last = tl.load(conv_w + rn * KW + KW - 1, mask=cmask, other=0.0).to(tl.float32)
    if PDL:
        gdc_wait()                                                          # the previous kernel's writes
    if EMBED:
        xrow = x + tl.load(tok + b).to(tl.int64) * K
    else:
        xrow = x + b * K
    xv = tl.load(xrow + rk, mask=kmask, other=0.0).to(tl.float32)          # [BK]
    if EMBED:
        tl.store(xres + b * K + rk, xv, mask=kmask & (pid_n == 0))
    rstd = 1.0 / tl.sqrt(tl.sum(xv * xv, 0) / K + eps)
    xn = (xv * rstd * nw)[None, :]
    y = tl.sum(wt.to(tl.float32) * xn, 1)                                  # [BN]
    if SWIGLU:
        y = y * tl.sigmoid(y) * tl.sum(wu.to(tl.float32) * xn, 1)
    if HAS_BIAS:
        y += tl.load(bias + rn, mask=nmask, other=0.0)
    if CONV:
        tptr = tail + b * C * (KW - 1) + rn[:, None] * (KW - 1) + rj[None, :]   # [BN, KP] of tail [B, C, KW-1]
        t_old = tl.load(tptr, mask=tmask, other=0.0)
        t_next = tl.load(tptr + 1, mask=cmask[:, None] & (rj < KW - 2)[None, :], other=0.0)
        z = tl.sum(t_old * cw, 1) + cw_last * y
        tl.debug_barrier()                                                  # all tail reads before any write
        tl.store(tptr, tl.where(rj[None, :] == KW - 2, y[:, None], t_next), mask=tmask)
        y = tl.where(cmask, z * tl.sigmoid(z), y)
    tl.store(out + b * N + rn, y, mask=nmask)


@triton.jit
def _mixer_kernel(proj, up_w, up_b, skip, state, o, NP, C, R, scale, g_min,
                  H: tl.constexpr, DK: tl.constexpr, DV: tl.constexpr, BV: tl.constexpr, RP: tl.constexpr,
                  DELTA: tl.constexpr, PDL: tl.constexpr):
    """One (batch * head, value block): gates from proj [B, NP] (q | k | v | gate_down | beta | out_gate),
    the step of recurrent_step on state [B, H, DK, DV] in place, o [B, H * DV] = read-out + skip * v."""
    if PDL:
        gdc_launch_dependents()
    i_bh = tl.program_id(0).to(tl.int64)
    b = i_bh // H
    h = i_bh % H
    rk = tl.arange(0, DK)
    rv = tl.program_id(1) * BV + tl.arange(0, BV)
    rr = tl.arange(0, RP)
    wu = tl.load(up_w + (h * DK + rk)[:, None] * R + rr[None, :], mask=(rr < R)[None, :], other=0.0)
    bu = tl.load(up_b + h * DK + rk).to(tl.float32)
    sk = tl.load(skip + h * DV + rv).to(tl.float32)
    if PDL:
        gdc_wait()
    row = proj + b * NP
    q = tl.load(row + h * DK + rk)                                          # [DK] after conv + SiLU
    k = tl.load(row + H * DK + h * DK + rk)
    v = tl.load(row + 2 * H * DK + h * DV + rv)                             # [BV]
    if DELTA:
        q = q / tl.maximum(tl.sqrt(tl.sum(q * q, 0)), 1e-6)
        k = k / tl.maximum(tl.sqrt(tl.sum(k * k, 0)), 1e-6)
    d = tl.load(row + C + rr, mask=rr < R, other=0.0)                       # [RP] gate_down output
    g = g_min * tl.sigmoid(tl.sum(wu.to(tl.float32) * d[None, :], 1) + bu)  # [DK] log forget gate
    beta = tl.sigmoid(tl.load(row + C + R + h))
    ptr = state + i_bh * DK * DV + rk[:, None] * DV + rv[None, :]
    S = tl.load(ptr) * tl.exp(g)[:, None]                                   # [DK, BV] decayed
    if DELTA:
        u = v - tl.sum(k[:, None] * S, 0)                                   # overwrite what k held
    else:
        u = v
    S = S + (beta * k)[:, None] * u[None, :]
    tl.store(ptr, S)
    out = tl.sum((q * scale)[:, None] * S, 0) + sk * v
    tl.store(o + b * (H * DV) + h * DV + rv, out)


@triton.jit
def _gemv_residual_kernel(inp, gate, norm_w, w, x, N, K, NP, gate_off, eps,
                          HEAD_NORM: tl.constexpr, H: tl.constexpr, HP: tl.constexpr, DV: tl.constexpr,
                          BN: tl.constexpr, PDL: tl.constexpr):
    """x[b, n] += sum_k w[n, k] * a[b, k], w [N, K], x [B, N] float32, K = H * DV, read as [H, DV] (HP >= H,
    DV powers of two): a = inp [B, K] or, if HEAD_NORM, RMSNorm over each head's DV values of inp, times norm_w,
    times SiLU(gate[b, gate_off + k])."""
    if PDL:
        gdc_launch_dependents()
    pid_n = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    rn = pid_n * BN + tl.arange(0, BN)
    nmask = rn < N
    rh = tl.arange(0, HP)
    rd = tl.arange(0, DV)
    col = rh[:, None] * DV + rd[None, :]                                    # [HP, DV] column index
    cmask = (rh < H)[:, None] & (rd < DV)[None, :]
    wt = tl.load(w + rn[:, None, None] * K + col[None, :, :], mask=nmask[:, None, None] & cmask[None, :, :],
                 other=0.0)                                                 # [BN, HP, DV], before the wait
    if HEAD_NORM:
        nw = tl.load(norm_w + rd).to(tl.float32)
    if PDL:
        gdc_wait()
    a = tl.load(inp + b * K + col, mask=cmask, other=0.0)                  # [HP, DV]
    if HEAD_NORM:
        gt = tl.load(gate + b * NP + gate_off + col, mask=cmask, other=0.0)
        a = a / tl.sqrt(tl.sum(a * a, 1) / DV + eps)[:, None] * nw[None, :]
        a = a * gt * tl.sigmoid(gt)
    y = tl.sum(tl.sum(wt.to(tl.float32) * a[None, :, :], 2), 1)            # [BN]
    xp = x + b * N + rn
    tl.store(xp, tl.load(xp, mask=nmask, other=0.0) + y, mask=nmask)


@triton.jit
def _dot_rows(a, wk, SPLIT: tl.constexpr):
    """a [BB, BK] float32 @ wk [BN, BK]^T -> [BB, BN] float32. SPLIT (bf16 weights): on tensor cores, a as the sum
    of its bf16 rounding and the bf16 rounding of the rest (relative error ~2^-16, float32-grade); else exact
    float32 products."""
    if SPLIT:
        hi = a.to(tl.bfloat16)
        lo = (a - hi.to(tl.float32)).to(tl.bfloat16)
        wt = tl.trans(wk)
        return tl.dot(hi, wt) + tl.dot(lo, wt)
    else:
        return tl.dot(a, tl.trans(wk.to(tl.float32)), input_precision="ieee")


@triton.jit
def _gemm_tile(B, N, BB: tl.constexpr, BN: tl.constexpr):
    """This program's tile of a batched kernel (grid: output row blocks x batch row blocks): the batch rows
    ``rb`` [BB] (int64) and output rows ``rn`` [BN], each with its in-bounds mask."""
    rb = tl.program_id(1).to(tl.int64) * BB + tl.arange(0, BB)
    rn = tl.program_id(0) * BN + tl.arange(0, BN)
    return rb, rb < B, rn, rn < N


@triton.jit
def _norm_gemm_kernel(x, tok, xres, norm_w, w, out, bias, tail, conv_w, N, K, C, B, eps,
                      EMBED: tl.constexpr, HAS_BIAS: tl.constexpr, CONV: tl.constexpr, SWIGLU: tl.constexpr,
                      KW: tl.constexpr, KP: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, BB: tl.constexpr,
                      SPLIT: tl.constexpr, PDL: tl.constexpr):
    """_norm_gemv_kernel's math for BB batch rows at once (batches of 16 rows and more): each weight tile is read
    once for all of them and multiplied as a matrix product (on tensor cores for bf16 weights), walking the input
    BK columns at a time."""
    if PDL:
        gdc_launch_dependents()
        gdc_wait()
    rb, bmask, rn, nmask = _gemm_tile(B, N, BB, BN)
    if EMBED:
        xrow = x + tl.load(tok + rb, mask=bmask, other=0).to(tl.int64) * K
    else:
        xrow = x + rb * K
    ss = tl.zeros([BB], dtype=tl.float32)
    for k0 in range(0, K, BK):
        rk = k0 + tl.arange(0, BK)
        xmask = bmask[:, None] & (rk < K)[None, :]
        xv = tl.load(xrow[:, None] + rk[None, :], mask=xmask, other=0.0).to(tl.float32)
        if EMBED:
            tl.store(xres + rb[:, None] * K + rk[None, :], xv, mask=xmask & (tl.program_id(0) == 0))
        ss += tl.sum(xv * xv, 1)
    rstd = 1.0 / tl.sqrt(ss / K + eps)
    y = tl.zeros([BB, BN], dtype=tl.float32)
    if SWIGLU:
        yu = tl.zeros([BB, BN], dtype=tl.float32)
    for k0 in range(0, K, BK):
        rk = k0 + tl.arange(0, BK)
        kmask = rk < K
        xv = tl.load(xrow[:, None] + rk[None, :], mask=bmask[:, None] & kmask[None, :], other=0.0).to(tl.float32)
        xn = xv * rstd[:, None] * tl.load(norm_w + rk, mask=kmask, other=0.0).to(tl.float32)[None, :]
        wmask = nmask[:, None] & kmask[None, :]
        y += _dot_rows(xn, tl.load(w + rn[:, None] * K + rk[None, :], mask=wmask, other=0.0), SPLIT)
        if SWIGLU:
            yu += _dot_rows(xn, tl.load(w + (rn + N)[:, None] * K + rk[None, :], mask=wmask, other=0.0), SPLIT)
    if SWIGLU:
        y = y * tl.sigmoid(y) * yu
    if HAS_BIAS:
        y += tl.load(bias + rn, mask=nmask, other=0.0)[None, :]
    if CONV:
        cmask = rn < C
        rj = tl.arange(0, KP)
        cw = tl.load(conv_w + rn[:, None] * KW + rj[None, :], mask=cmask[:, None] & (rj < KW - 1)[None, :],
                     other=0.0).to(tl.float32)
        cw_last = tl.load(conv_w + rn * KW + KW - 1, mask=cmask, other=0.0).to(tl.float32)
        # tail [B, C, KW-1] as [BB, BN, KP]
        tptr = tail + rb[:, None, None] * (C * (KW - 1)) + rn[None, :, None] * (KW - 1) + rj[None, None, :]
        tmask = bmask[:, None, None] & cmask[None, :, None] & (rj < KW - 1)[None, None, :]
        t_old = tl.load(tptr, mask=tmask, other=0.0)
        t_next = tl.load(tptr + 1, mask=tmask & (rj < KW - 2)[None, None, :], other=0.0)
        z = tl.sum(t_old * cw[None, :, :], 2) + cw_last[None, :] * y
        tl.debug_barrier()                                                  # all tail reads before any write
        tl.store(tptr, tl.where((rj == KW - 2)[None, None, :], y[:, :, None], t_next), mask=tmask)
        y = tl.where(cmask[None, :], z * tl.sigmoid(z), y)
    tl.store(out + rb[:, None] * N + rn[None, :], y, mask=bmask[:, None] & nmask[None, :])


@triton.jit
def _gemm_residual_kernel(inp, gate, norm_w, w, x, N, K, NP, gate_off, B, eps,
                          HEAD_NORM: tl.constexpr, H: tl.constexpr, DV: tl.constexpr, BN: tl.constexpr,
                          BB: tl.constexpr, SPLIT: tl.constexpr, PDL: tl.constexpr):
    """_gemv_residual_kernel's math for BB batch rows at once, as _norm_gemm_kernel, one head (DV columns) at a
    time."""
    if PDL:
        gdc_launch_dependents()
        gdc_wait()
    rb, bmask, rn, nmask = _gemm_tile(B, N, BB, BN)
    rd = tl.arange(0, DV)
    if HEAD_NORM:
        nw = tl.load(norm_w + rd).to(tl.float32)
    y = tl.zeros([BB, BN], dtype=tl.float32)
    for h in range(H):
        col = h * DV + rd
        a = tl.load(inp + rb[:, None] * K + col[None, :], mask=bmask[:, None], other=0.0)   # [BB, DV]
        if HEAD_NORM:
            gt = tl.load(gate + rb[:, None] * NP + gate_off + col[None, :], mask=bmask[:, None], other=0.0)
            a = a / tl.sqrt(tl.sum(a * a, 1) / DV + eps)[:, None] * nw[None, :]
            a = a * gt * tl.sigmoid(gt)
        y += _dot_rows(a, tl.load(w + rn[:, None] * K + col[None, :], mask=nmask[:, None], other=0.0), SPLIT)
    xmask = bmask[:, None] & nmask[None, :]
    xp = x + rb[:, None] * N + rn[None, :]
    tl.store(xp, tl.load(xp, mask=xmask, other=0.0) + y, mask=xmask)


def _warps(rows: int, width: int) -> int:
    """Warps of a GEMV program holding a [rows, width] weight tile."""
    return 8 if rows * width >= 8192 else 4


def _head_split(width: int) -> tuple[int, int]:
    """``width`` as (rows, cols) with cols the largest power of two <= 128 dividing it: a GEMV input of that width
    is loaded as one [rows, cols] tile (power-of-two tile shapes, masked rows)."""
    cols = 1
    while cols < 128 and width % (2 * cols) == 0:
        cols *= 2
    return width // cols, cols


class _Layer(NamedTuple):
    attn_norm: torch.Tensor   # [D]
    w_in: torch.Tensor        # [C + R + H + H*dv, D]: qkv, gate_down, beta, out_gate (packed copy)
    b_in: torch.Tensor        # [C + R + H + H*dv] float32: beta's bias, zeros elsewhere
    conv_w: torch.Tensor      # [C, K]
    up_w: torch.Tensor        # [H*dk, R]
    up_b: torch.Tensor        # [H*dk]
    skip: torch.Tensor        # [H*dv]
    out_norm: torch.Tensor    # [dv]
    w_out: torch.Tensor       # [D, H*dv]
    mlp_norm: torch.Tensor    # [D]
    w_mlp: torch.Tensor       # [2*F, D]: gate rows, then up rows
    w_down: torch.Tensor      # [D, F]


def _pack_layer(block) -> _Layer:
    a = block.attn
    c = lambda t: t.detach().contiguous()
    w_in = torch.cat([a.qkv.weight, a.gate_down.weight, a.beta.weight, a.out_gate.weight]).detach().contiguous()
    b_in = torch.zeros(w_in.shape[0], dtype=torch.float32, device=w_in.device)
    start = a.qkv.weight.shape[0] + a.gate_down.weight.shape[0]
    b_in[start:start + a.beta.weight.shape[0]] = a.beta.bias.detach().float()
    return _Layer(c(block.attn_norm.weight), w_in, b_in, c(a.conv.weight[:, 0, :]), c(a.gate_up.weight),
                  c(a.gate_up.bias), c(a.skip), c(a.out_norm.weight), c(a.out_proj.weight),
                  c(block.mlp_norm.weight), c(block.mlp.gate_up.weight), c(block.mlp.down.weight))


def _check_model(model, batch_size: int, capture: bool) -> None:
    c = model.config
    device, dtype = model.embed.weight.device, model.embed.weight.dtype
    if batch_size <= 0:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if c.mixer != NATIVE_MIXER:
        raise ValueError(f"FusedDecoder's kernels compute the native mixer only, this model sets other mixer parts "
                         f"({c.mixer}); use GraphDecoder for this model")
    for name in ("head_k_dim", "head_v_dim"):
        value = getattr(c, name)
        if value < 2 or value & (value - 1):
            raise ValueError(f"FusedDecoder needs {name} to be a power of two >= 2, got {value}; "
                             f"use GraphDecoder for this model")
    if dtype not in (torch.float32, torch.bfloat16, torch.float16):
        raise ValueError(f"FusedDecoder computes in float32 from float32/bfloat16/float16 weights, the model is "
                         f"{dtype}; use model.step for a float64 reference")
    if capture and device.type != "cuda":
        raise ValueError(f"FusedDecoder needs the model on a CUDA device, it is on {device}; call model.cuda() "
                         f"first, or use model.step on CPU")
    if device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
        raise ValueError(f"FusedDecoder on {device} runs only in Triton's interpreter (TRITON_INTERPRET=1, "
                         f"capture=False), for tests; use model.step on CPU")


class FusedDecoder(StaticDecoder):
    """Fused-kernel CUDA-graph decoder for a :class:`seqedge.model.SequentialAttentionModel` at a fixed batch size.

    Same interface as :class:`~seqedge.kernels.decode_graph.GraphDecoder`: ``reset``, ``step``, ``state`` and the
    static buffers ``states`` (per layer conv tail ``[B, C, K-1]``, scan state ``[B, H, dk, dv]``, float32),
    ``logits`` ``[B, V]`` float32 and ``graph``. The weights are read at construction: build a new decoder after
    changing them. ``capture=False`` skips the graph (``step`` then launches the kernels one by one, as
    the graph would hold; for Triton's interpreter). ``programs``: GEMV programs per batch row to aim for (default:
    the card's SM count); ``config`` one of :data:`FUSED_CONFIGS`; ``pdl``: programmatic dependent launch
    (default: on where the GPU has it, sm 9.0+), which lets each kernel load its weights while the previous one
    finishes.
    """

    def __init__(self, model, batch_size: int, warmup: int = 2, config: FusedConfig = FUSED_CONFIGS[0],
                 capture: bool = True, programs: int | None = None, pdl: bool | None = None) -> None:
        _check_model(model, batch_size, capture)
        bt = config.batch_tile
        if bt != 0 and (bt < 16 or bt & (bt - 1)):
            raise ValueError(f"FusedConfig.batch_tile must be 0 (off) or a power of two >= 16 (tensor-core tiles), "
                             f"got {bt}")
        c = self.cfg = model.config
        device = model.embed.weight.device
        self._static_buffers(model, batch_size, device)
        self.config = config
        if programs is None:
            programs = torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 8
        self.layers = [_pack_layer(block) for block in model.blocks]
        self.final_norm = model.norm.weight.detach().contiguous()
        self.embed = model.embed.weight.detach().contiguous()
        self.head = self.embed if model.head is None else model.head.weight.detach().contiguous()
        self.eps = c.norm_eps                                # every RMSNorm of the model uses it
        B, D, F = batch_size, c.hidden_size, c.mlp_hidden_size
        self.n_in = self.layers[0].w_in.shape[0]
        f32 = dict(dtype=torch.float32, device=device)
        self.x = torch.zeros(B, D, **f32)                                                  # residual stream
        self.proj = torch.zeros(B, self.n_in, **f32)                                       # step 1's output
        self.o = torch.zeros(B, c.value_size, **f32)                                       # mixer output
        self.hidden = torch.zeros(B, F, **f32)                                             # SwiGLU output
        pow2 = triton.next_power_of_2
        # GEMV tiles: inputs of width D as one [pow2(D)] row, the SwiGLU hidden F as [rows, cols] (_head_split)
        self._d_cols, self._f_split = pow2(D), _head_split(F)
        tile = lambda rows, width: block_n(rows, width, programs, config.max_tile)
        hp_o = pow2(c.num_heads) * c.head_v_dim
        self._bn = dict(inp=tile(self.n_in, self._d_cols), out=tile(D, hp_o), mlp=tile(F, 2 * self._d_cols),
                        down=tile(D, pow2(self._f_split[0]) * self._f_split[1]), head=tile(c.vocab_size, self._d_cols))
        self.pdl = pdl_supported(device) if pdl is None else pdl
        if self.pdl and not pdl_supported(device):
            raise ValueError(f"programmatic dependent launch needs a GPU of sm 9.0 or newer; {device} is not one")
        self._launch = dict(launch_pdl=True) if self.pdl else {}
        self._bv = min(config.block_v, c.head_v_dim)
        # batches of batch_tile rows or more: the tensor-core kernels (their dots need 16 columns a step at least)
        self._gemm = 0 < config.batch_tile <= B and min(c.head_v_dim, self._f_split[1]) >= 16
        self._split = model.embed.weight.dtype == torch.bfloat16
        self.launches_per_step = 5 * c.num_layers + 1       # kernel launches the graph replays per token
        self.logits = torch.zeros(B, c.vocab_size, **f32)                                  # [B, V] static output
        if capture:
            self._capture(warmup)

    @property
    def scratch(self) -> tuple[torch.Tensor, ...]:
        """Buffers every step rewrites before reading (tests poison them with NaN)."""
        return self.x, self.proj, self.o, self.hidden, self.logits

    def _norm_gemv(self, key: str, n: int, x, norm_w, w, out, bias=None, tail=None, conv_w=None,
                   embed: bool = False) -> None:
        """One launch of out = epilogue(RMSNorm(x) @ w^T) (n output rows): the conv step when ``tail`` is given,
        SwiGLU for ``key`` "mlp"; per batch row (GEMV) or, for batches of ``batch_tile`` rows or more, BB rows at
        a time on tensor cores."""
        c, B, D, K = self.cfg, self.batch_size, self.cfg.hidden_size, self.cfg.conv_kernel
        conv, swiglu = tail is not None, key == "mlp"
        args = (x, self.tokens, self.x, norm_w, w, out, self.x if bias is None else bias,
                self.x if tail is None else tail, self.x if conv_w is None else conv_w, n, D,
                c.conv_channels if conv else 0)
        flags = dict(EMBED=embed, HAS_BIAS=bias is not None, CONV=conv, SWIGLU=swiglu, KW=K if conv else 1,
                     KP=triton.next_power_of_2(K - 1) if conv else 1, PDL=self.pdl, **self._launch)
        if self._gemm:
            bt = self.config.batch_tile
            _norm_gemm_kernel[(triton.cdiv(n, GEMM_BLOCK_N), triton.cdiv(B, bt))](
                *args, B, self.eps, BN=GEMM_BLOCK_N, BK=GEMM_BLOCK_K, BB=bt, SPLIT=self._split, num_warps=4,
                **flags)
        else:
            bn = self._bn[key]
            _norm_gemv_kernel[(triton.cdiv(n, bn), B)](
                *args, self.eps, BN=bn, BK=self._d_cols, num_warps=_warps(bn, (1 + swiglu) * self._d_cols), **flags)

    def _gemv_residual(self, key: str, inp, w, heads: int, dv: int, out_norm=None) -> None:
        """One launch of x += a @ w^T, a = inp read as [heads, dv] per batch row or, with ``out_norm``, the
        mixer's per-head RMSNorm times SiLU(out_gate) of it; per batch row or BB rows at a time, as _norm_gemv."""
        c, B, D = self.cfg, self.batch_size, self.cfg.hidden_size
        args = (inp, self.proj if out_norm is not None else inp, inp if out_norm is None else out_norm, w, self.x,
                D, heads * dv, self.n_in, c.conv_channels + c.gate_rank + c.num_heads)
        flags = dict(HEAD_NORM=out_norm is not None, H=heads, DV=dv, PDL=self.pdl, **self._launch)
        if self._gemm:
            bt = self.config.batch_tile
            _gemm_residual_kernel[(triton.cdiv(D, GEMM_BLOCK_N), triton.cdiv(B, bt))](
                *args, B, self.eps, BN=GEMM_BLOCK_N, BB=bt, SPLIT=self._split, num_warps=4, **flags)
        else:
            bn, hp = self._bn[key], triton.next_power_of_2(heads)
            _gemv_residual_kernel[(triton.cdiv(D, bn), B)](
                *args, self.eps, HP=hp, BN=bn, num_warps=_warps(bn, hp * dv), **flags)

    def _body(self) -> torch.Tensor:
        """The launches of one step on the static buffers (what the graph holds): tokens -> logits ``[B, V]``."""
        c, B = self.cfg, self.batch_size
        H, DK, DV = c.num_heads, c.head_k_dim, c.head_v_dim
        for i, L in enumerate(self.layers):
            tail, S = self.states[2 * i], self.states[2 * i + 1]
            self._norm_gemv("inp", self.n_in, self.embed if i == 0 else self.x, L.attn_norm, L.w_in, self.proj,
                            bias=L.b_in, tail=tail, conv_w=L.conv_w, embed=i == 0)
            _mixer_kernel[(B * H, DV // self._bv)](
                self.proj, L.up_w, L.up_b, L.skip, S, self.o, self.n_in, c.conv_channels, c.gate_rank, DK ** -0.5,
                c.g_min, H=H, DK=DK, DV=DV, BV=self._bv, RP=triton.next_power_of_2(c.gate_rank),
                DELTA=c.update_rule == "delta", PDL=self.pdl, num_warps=4 if DK * self._bv >= 4096 else 2,
                **self._launch)
            self._gemv_residual("out", self.o, L.w_out, H, DV, out_norm=L.out_norm)
            self._norm_gemv("mlp", c.mlp_hidden_size, self.x, L.mlp_norm, L.w_mlp, self.hidden)
            self._gemv_residual("down", self.hidden, L.w_down, *self._f_split)
        self._norm_gemv("head", c.vocab_size, self.x, self.final_norm, self.head, self.logits)
        return self.logits
