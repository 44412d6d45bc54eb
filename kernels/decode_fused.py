"""Fused whole-model decode: 3 or 5 Triton launches per layer (+1 for the logits), captured in one CUDA graph.

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

With ``FusedConfig.merged`` a layer is 3 launches: 2+3 (_mixer_kernel adds its value block's share of out_proj to
the layer's accumulators) and 4+5 (_mlp_kernel: gate, up and down for a slice of the hidden units, adding its
share of down's output). The residual stream is then rebuilt by each reader from the layer's base and
accumulators (_residual), and the per-head RMSNorm scale is applied there, once every value block has added its
sum of squares. Atomic float32 additions make the order of those sums, hence the last bits, vary between runs;
the 5-launch configs are bitwise reproducible.

Weights stay in the model's dtype (bf16, fp16 or fp32) and every sum accumulates in float32; activations between
launches are float32 (the model rounds some to its dtype: results agree to that dtype's rounding).

Batch 1 is bound by the chain of dependent launches, not by bandwidth: each GEMV program holds its whole weight
tile (every input column) and, with programmatic dependent launch (sm 9.0+), loads it before waiting for the
previous kernel, which lets the next kernel stream its weights while the current one finishes. Every activation
read and every write comes after ``gdc_wait``, which returns once the previous kernel has completed (and, by
induction, every earlier one). The mixer also loads its state before the wait: only it touches that state, once
per step, and the previous step (an earlier graph replay, stream-ordered) has completed.

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

from .decode_graph import StaticDecoder


class FusedConfig(NamedTuple):
    """Launch parameters: value columns of the state per mixer program; weight elements per GEMV program;
    ``merged``: 3 launches per layer (out_proj and the MLP's down projection as atomically added split-K
    partials) instead of 5."""

    block_v: int
    max_tile: int
    merged: bool = False


# Every entry is checked by the tests (interpreter and GPU); the first is the default. No autotuning.
FUSED_CONFIGS: tuple[FusedConfig, ...] = (FusedConfig(block_v=32, max_tile=16384, merged=True),
                                          FusedConfig(block_v=16, max_tile=16384, merged=True),
                                          FusedConfig(block_v=32, max_tile=4096),
                                          FusedConfig(block_v=64, max_tile=8192))


def block_n(rows: int, width: int, programs: int, max_tile: int) -> int:
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
def _residual(base, acc, b, K, W, eps, rk, kmask, H: tl.constexpr, HP: tl.constexpr, DV: tl.constexpr,
              MLP: tl.constexpr):
    """Row b of the residual stream in the 3-launch layout ([BK] float32): base[b] + sum over heads of
    acc_P[b, h] / rms_h (+ acc_M[b] if MLP), from one layer's accumulators acc [B, W] = [P: H*K | ss: H | M: K]:
    P[h] = out_proj's columns of head h times that head's gated, unscaled output; ss[h] = the sum of squares of
    that output, whose RMSNorm scale 1 / sqrt(ss / DV + eps) is applied here, once every value block has added in;
    M = the MLP's down-projection."""
    x = tl.load(base + b * K + rk, mask=kmask, other=0.0)
    row = acc + b * W
    rh = tl.arange(0, HP)
    hmask = rh < H
    ss = tl.load(row + H * K + rh, mask=hmask, other=0.0)
    p = tl.load(row + rh[:, None] * K + rk[None, :], mask=hmask[:, None] & kmask[None, :], other=0.0)
    x += tl.sum(p / tl.sqrt(ss / DV + eps)[:, None], 0)
    if MLP:
        x += tl.load(row + H * K + H + rk, mask=kmask, other=0.0)
    return x


@triton.jit
def _norm_gemv_kernel(x, tok, xres, norm_w, w, out, bias, tail, conv_w, acc, N, K, C, W, n_zero, eps,
                      SRC: tl.constexpr, STORE_X: tl.constexpr, ZERO: tl.constexpr, HAS_BIAS: tl.constexpr,
                      CONV: tl.constexpr, SWIGLU: tl.constexpr, KW: tl.constexpr, KP: tl.constexpr,
                      RH: tl.constexpr, RHP: tl.constexpr, RDV: tl.constexpr, ZB: tl.constexpr,
                      BN: tl.constexpr, BK: tl.constexpr, PDL: tl.constexpr):
    """out[b, n] = epilogue(sum_k w[n, k] * RMSNorm(x[b])[k]) for rows n of this program, batch row b.

    x[b]: SRC 0: x [B, K] float32; SRC 1: the embedding table [V, K], row tok[b]; SRC 2: _residual(x = the
    previous layer's base, acc = its accumulators; RH heads of RDV values). STORE_X: program 0 of each batch row
    writes x[b] to xres [B, K]. ZERO: the programs together zero acc[:n_zero] (every layer's accumulators, at the
    start of a step: nothing reads them before they are added to). w [N, K] ([2N, K] if SWIGLU: gate rows, then up
    rows); out [B, N] float32. BK >= K: the whole row in one tile, so every weight load is issued at once, before
    the wait for the previous kernel (PDL). Epilogue: rows < C (CONV) are the conv channels: SiLU(conv over tail
    [B, C, KW-1] and the new value), tail shifted in place; others + bias (HAS_BIAS); SWIGLU: silu(gate) * up.
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
    if SRC == 2:
        xv = _residual(x, acc, b, K, W, eps, rk, kmask, RH, RHP, RDV, True)
    else:
        if SRC == 1:
            xrow = x + tl.load(tok + b).to(tl.int64) * K
        else:
            xrow = x + b * K
        xv = tl.load(xrow + rk, mask=kmask, other=0.0).to(tl.float32)      # [BK]
    if STORE_X:
        tl.store(xres + b * K + rk, xv, mask=kmask & (pid_n == 0))
    if ZERO:
        per = tl.cdiv(n_zero, tl.num_programs(0) * tl.num_programs(1))
        start = (b * tl.num_programs(0) + pid_n) * per
        for off in range(0, per, ZB):
            rz = off + tl.arange(0, ZB)
            tl.store(acc + start + rz, tl.zeros([ZB], tl.float32), mask=(rz < per) & (start + rz < n_zero))
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
def _mixer_kernel(proj, up_w, up_b, skip, state, o, w_out, out_norm, acc, NP, C, R, D, W, gate_off, scale, g_min,
                  H: tl.constexpr, DK: tl.constexpr, DV: tl.constexpr, BV: tl.constexpr, RP: tl.constexpr,
                  DP: tl.constexpr, DELTA: tl.constexpr, MERGED: tl.constexpr, PDL: tl.constexpr):
    """One (batch * head, value block): gates from proj [B, NP] (q | k | v | gate_down | beta | out_gate),
    the step of recurrent_step on state [B, H, DK, DV] in place, out = read-out + skip * v.

    5 launches per layer: o [B, H * DV] = out. MERGED (3 per layer): out_proj's share of this block,
    w_out[:, block] @ (out * out_norm * SiLU(out_gate)), and the block's sum of squares of out are added
    (atomically) to the layer's accumulators acc [B, W] (see _residual: the head's RMSNorm scale is applied by
    whoever reads them, once every block has added in).
    """
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
    if MERGED:
        rd = tl.arange(0, DP)
        dmask = rd < D
        wo = tl.load(w_out + rd[:, None] * (H * DV) + (h * DV + rv)[None, :], mask=dmask[:, None], other=0.0)
        nw = tl.load(out_norm + rv).to(tl.float32)
    # the state too: only this kernel, once per step, touches it, and the previous step has completed
    ptr = state + i_bh * DK * DV + rk[:, None] * DV + rv[None, :]
    S = tl.load(ptr)
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
    S = S * tl.exp(g)[:, None]                                              # [DK, BV] decayed
    if DELTA:
        u = v - tl.sum(k[:, None] * S, 0)                                   # overwrite what k held
    else:
        u = v
    S = S + (beta * k)[:, None] * u[None, :]
    tl.store(ptr, S)
    out = tl.sum((q * scale)[:, None] * S, 0) + sk * v
    if MERGED:    # relaxed atomics: readers see the sums through kernel completion (gdc_wait), not through these
        gt = tl.load(row + gate_off + h * DV + rv)
        a = out * nw * gt * tl.sigmoid(gt)
        dst = acc + b * W
        tl.atomic_add(dst + h * D + rd, tl.sum(wo.to(tl.float32) * a[None, :], 1), mask=dmask, sem="relaxed")
        tl.atomic_add(dst + H * D + h, tl.sum(out * out, 0), sem="relaxed")
    else:
        tl.store(o + b * (H * DV) + h * DV + rv, out)


@triton.jit
def _mlp_kernel(base, acc, norm_w, w_mlp, w_down, F, K, W, eps, H: tl.constexpr, HP: tl.constexpr,
                DV: tl.constexpr, BF: tl.constexpr, BK: tl.constexpr, PDL: tl.constexpr):
    """The whole MLP for BF hidden units f of batch row b (3 launches per layer): x = _residual (no MLP term yet),
    h = silu(RMSNorm(x) @ gate[f]) * (RMSNorm(x) @ up[f]), then w_down[:, f] @ h added (atomically) to the
    layer's MLP accumulator. w_mlp [2F, K]: gate rows, then up rows; w_down [K, F]; every weight before the wait.
    """
    if PDL:
        gdc_launch_dependents()
    pid_f = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    rf = pid_f * BF + tl.arange(0, BF)
    fmask = rf < F
    rk = tl.arange(0, BK)
    kmask = rk < K
    wmask = fmask[:, None] & kmask[None, :]
    wg = tl.load(w_mlp + rf[:, None] * K + rk[None, :], mask=wmask, other=0.0)          # [BF, BK]
    wu = tl.load(w_mlp + (rf + F)[:, None] * K + rk[None, :], mask=wmask, other=0.0)
    wd = tl.load(w_down + rk[:, None] * F + rf[None, :], mask=kmask[:, None] & fmask[None, :], other=0.0)
    nw = tl.load(norm_w + rk, mask=kmask, other=0.0).to(tl.float32)
    if PDL:
        gdc_wait()
    x = _residual(base, acc, b, K, W, eps, rk, kmask, H, HP, DV, False)
    xn = (x / tl.sqrt(tl.sum(x * x, 0) / K + eps) * nw)[None, :]
    gate = tl.sum(wg.to(tl.float32) * xn, 1)
    hid = gate * tl.sigmoid(gate) * tl.sum(wu.to(tl.float32) * xn, 1)                  # [BF], 0 past F
    tl.atomic_add(acc + b * W + H * K + H + rk, tl.sum(wd.to(tl.float32) * hid[None, :], 1), mask=kmask,
                  sem="relaxed")


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
        # 3 launches per layer: the residual stream entering each layer (base) and each layer's accumulators
        # (out_proj per head, the heads' sums of squares, the MLP's output; see _residual)
        n_layers, self._acc_width = c.num_layers, c.num_heads * D + c.num_heads + D
        self.base = torch.zeros(n_layers, B, D, **f32)
        self.acc = torch.zeros(n_layers, B, self._acc_width, **f32)
        pow2 = triton.next_power_of_2
        # GEMV tiles: inputs of width D as one [pow2(D)] row, the SwiGLU hidden F as [rows, cols] (_head_split)
        self._d_cols, self._f_split = pow2(D), _head_split(F)
        tile = lambda rows, width: block_n(rows, width, programs, config.max_tile)
        hp_o = pow2(c.num_heads) * c.head_v_dim
        self._bn = dict(inp=tile(self.n_in, self._d_cols), out=tile(D, hp_o), mlp=tile(F, 2 * self._d_cols),
                        down=tile(D, pow2(self._f_split[0]) * self._f_split[1]), head=tile(c.vocab_size, self._d_cols),
                        mlp_merged=tile(F, 3 * self._d_cols))
        self.pdl = pdl_supported(device) if pdl is None else pdl
        if self.pdl and not pdl_supported(device):
            raise ValueError(f"programmatic dependent launch needs a GPU of sm 9.0 or newer; {device} is not one")
        self._launch = dict(launch_pdl=True) if self.pdl else {}
        self._bv = min(config.block_v, c.head_v_dim)
        self.launches_per_step = (3 if config.merged else 5) * c.num_layers + 1   # launches the graph replays
        self.logits = torch.zeros(B, c.vocab_size, **f32)                                  # [B, V] static output
        if capture:
            self._capture(warmup)

    @property
    def scratch(self) -> tuple[torch.Tensor, ...]:
        """Buffers every step rewrites before reading (tests poison them with NaN)."""
        if self.config.merged:
            return self.proj, self.base, self.acc, self.logits
        return self.x, self.proj, self.o, self.hidden, self.logits

    def _body(self) -> torch.Tensor:
        """The launches of one step on the static buffers (what the graph holds): tokens -> logits ``[B, V]``."""
        return self._body_merged() if self.config.merged else self._body_5()

    def _norm_gemv(self, grid_rows: int, bn: int, x, w, out, **kw) -> None:
        """One :func:`_norm_gemv_kernel` launch over ``grid_rows`` output rows (tiles of ``bn``), batch rows in
        the grid's second axis; ``kw`` sets the pointers and flags that differ from the defaults below."""
        c, D = self.cfg, self.cfg.hidden_size
        args = dict(tok=self.tokens, xres=self.x, bias=self.x, tail=self.x, conv_w=self.x,
                    acc=self.x, C=0, W=0, n_zero=0, SRC=0, STORE_X=False, ZERO=False, HAS_BIAS=False, CONV=False,
                    SWIGLU=False, KW=1, KP=1, RH=c.num_heads, RHP=triton.next_power_of_2(c.num_heads),
                    RDV=c.head_v_dim, ZB=256)
        args.update(kw)
        width = (2 if args["SWIGLU"] else 1) * self._d_cols
        _norm_gemv_kernel[(triton.cdiv(grid_rows, bn), self.batch_size)](
            x=x, w=w, out=out, N=grid_rows, K=D, eps=self.eps, BN=bn, BK=self._d_cols, PDL=self.pdl,
            num_warps=_warps(bn * width), **args, **self._launch)

    def _mixer(self, i: int, merged: bool) -> None:
        c, L = self.cfg, self.layers[i]
        H, DK, DV = c.num_heads, c.head_k_dim, c.head_v_dim
        warps = 8 if merged and (DK + self._d_cols) * self._bv >= 8192 else 4 if DK * self._bv >= 4096 else 2
        _mixer_kernel[(self.batch_size * H, DV // self._bv)](
            self.proj, L.up_w, L.up_b, L.skip, self.states[2 * i + 1], self.o, L.w_out, L.out_norm, self.acc[i],
            self.n_in, c.conv_channels, c.gate_rank, c.hidden_size, self._acc_width,
            c.conv_channels + c.gate_rank + H, DK ** -0.5, c.g_min, H=H, DK=DK, DV=DV, BV=self._bv,
            RP=triton.next_power_of_2(c.gate_rank), DP=self._d_cols, DELTA=c.update_rule == "delta", MERGED=merged,
            PDL=self.pdl, num_warps=warps, **self._launch)

    def _attn_in(self, i: int, **kw) -> None:
        """Step 1 of layer i: RMSNorm + the packed input GEMV with the conv step and beta's bias."""
        c, L = self.cfg, self.layers[i]
        self._norm_gemv(self.n_in, self._bn["inp"], w=L.w_in, out=self.proj, norm_w=L.attn_norm, bias=L.b_in,
                        tail=self.states[2 * i], conv_w=L.conv_w, C=c.conv_channels, HAS_BIAS=True, CONV=True,
                        KW=c.conv_kernel, KP=triton.next_power_of_2(c.conv_kernel - 1), **kw)

    def _body_5(self) -> torch.Tensor:
        """5 launches per layer; the residual stream is self.x, updated in place."""
        c, B, bn, pdl, opts = self.cfg, self.batch_size, self._bn, self.pdl, self._launch
        H, D, F, DV = c.num_heads, c.hidden_size, c.mlp_hidden_size, c.head_v_dim
        cdiv, pow2 = triton.cdiv, triton.next_power_of_2
        for i, L in enumerate(self.layers):
            self._attn_in(i, x=self.embed if i == 0 else self.x, SRC=1 if i == 0 else 0, STORE_X=i == 0)
            self._mixer(i, merged=False)
            _gemv_residual_kernel[(cdiv(D, bn["out"]), B)](
                self.o, self.proj, L.out_norm, L.w_out, self.x, D, c.value_size, self.n_in,
                c.conv_channels + c.gate_rank + H, self.eps, HEAD_NORM=True, H=H, HP=pow2(H), DV=DV, BN=bn["out"],
                PDL=pdl, num_warps=_warps(bn["out"] * pow2(H) * DV), **opts)
            self._norm_gemv(F, bn["mlp"], x=self.x, w=L.w_mlp, out=self.hidden, norm_w=L.mlp_norm, SWIGLU=True)
            hf, dvf = self._f_split
            _gemv_residual_kernel[(cdiv(D, bn["down"]), B)](
                self.hidden, self.hidden, self.hidden, L.w_down, self.x, D, F, 0, 0, self.eps, HEAD_NORM=False,
                H=hf, HP=pow2(hf), DV=dvf, BN=bn["down"], PDL=pdl, num_warps=_warps(bn["down"] * pow2(hf) * dvf),
                **opts)
        self._norm_gemv(c.vocab_size, bn["head"], x=self.x, w=self.head, out=self.logits, norm_w=self.final_norm)
        return self.logits

    def _body_merged(self) -> torch.Tensor:
        """3 launches per layer: the residual stream entering layer i is base[i], and out_proj and the MLP add
        their split-K partials to acc[i] (see _residual); the first launch zeroes every acc."""
        c, B = self.cfg, self.batch_size
        H, D, F = c.num_heads, c.hidden_size, c.mlp_hidden_size
        bf = self._bn["mlp_merged"]
        for i, L in enumerate(self.layers):
            if i == 0:
                self._attn_in(i, x=self.embed, xres=self.base[0], acc=self.acc, n_zero=self.acc.numel(), SRC=1,
                              STORE_X=True, ZERO=True)
            else:
                self._attn_in(i, x=self.base[i - 1], xres=self.base[i], acc=self.acc[i - 1], W=self._acc_width,
                              SRC=2, STORE_X=True)
            self._mixer(i, merged=True)
            _mlp_kernel[(triton.cdiv(F, bf), B)](
                self.base[i], self.acc[i], L.mlp_norm, L.w_mlp, L.w_down, F, D, self._acc_width, self.eps, H=H,
                HP=triton.next_power_of_2(H), DV=c.head_v_dim, BF=bf, BK=self._d_cols, PDL=self.pdl,
                num_warps=_warps(3 * bf * self._d_cols), **self._launch)
        self._norm_gemv(c.vocab_size, self._bn["head"], x=self.base[-1], w=self.head, out=self.logits,
                        norm_w=self.final_norm, acc=self.acc[-1], W=self._acc_width, SRC=2)
        return self.logits


def _warps(tile: int) -> int:
    """Warps for a GEMV program holding ``tile`` weight elements: 8 from 8192 up, else 4."""
    return 8 if tile >= 8192 else 4
