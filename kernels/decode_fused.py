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
from .decode_tiles import (gemv_residual_apply, gemv_residual_load, mixer_apply, mixer_load, norm_gemv_apply,
                           norm_gemv_load)


class FusedConfig(NamedTuple):
    """5 launches per layer: value columns of the state per mixer program; weight elements per GEMV program."""

    block_v: int
    max_tile: int


class PersistentConfig(NamedTuple):
    """One persistent launch per step (kernels/decode_persistent.py): warps per program (one program per SM); the
    most weight elements per tile (a program loads its first tile of each stage before the barrier); the grid
    barrier ("flags" or "counter", see ``decode_persistent.grid_sync``)."""

    num_warps: int
    max_tile: int
    barrier: str


# Every entry is checked by the tests (interpreter and GPU); FUSED_CONFIGS[0] is the default. No autotuning.
FUSED_CONFIGS: tuple[FusedConfig, ...] = (FusedConfig(block_v=32, max_tile=4096),
                                          FusedConfig(block_v=64, max_tile=8192))
PERSISTENT_CONFIGS: tuple[PersistentConfig, ...] = (PersistentConfig(num_warps=8, max_tile=16384, barrier="counter"),
                                                    PersistentConfig(num_warps=4, max_tile=16384, barrier="counter"),
                                                    PersistentConfig(num_warps=8, max_tile=16384, barrier="flags"))
ALL_CONFIGS = FUSED_CONFIGS + PERSISTENT_CONFIGS


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
    """out[b, n] = epilogue(sum_k w[n, k] * RMSNorm(x[b])[k]) for rows n of this program, batch row b
    (:func:`~seqedge.kernels.decode_tiles.norm_gemv_apply`).

    x [B, K] float32 (or, if EMBED, the embedding table [V, K], row tok[b], copied to xres [B, K]); out [B, N]
    float32. BK >= K: the whole row in one tile, so every weight load is issued at once, before the wait for the
    previous kernel (PDL).
    """
    if PDL:
        gdc_launch_dependents()
    pid_n = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    rn = pid_n * BN + tl.arange(0, BN)                                      # [BN] output rows
    wt, wu, nw, cw, cw_last = norm_gemv_load(w, norm_w, conv_w, rn, N, K, C, CONV, SWIGLU, KW, KP, BN, BK)
    if PDL:
        gdc_wait()                                                          # the previous kernel's writes
    if EMBED:
        xrow = x + tl.load(tok + b).to(tl.int64) * K
    else:
        xrow = x + b * K
    norm_gemv_apply(xrow, xres, pid_n == 0, out, bias, tail, b, rn, wt, wu, nw, cw, cw_last, N, K, C, eps,
                    EMBED, HAS_BIAS, CONV, SWIGLU, KW, KP, BK)


@triton.jit
def _mixer_kernel(proj, up_w, up_b, skip, state, o, NP, C, R, scale, g_min,
                  H: tl.constexpr, DK: tl.constexpr, DV: tl.constexpr, BV: tl.constexpr, RP: tl.constexpr,
                  DELTA: tl.constexpr, PDL: tl.constexpr):
    """One (batch * head, value block): gates from proj [B, NP] (q | k | v | gate_down | beta | out_gate),
    the step of recurrent_step on state [B, H, DK, DV] in place, o [B, H * DV] = read-out + skip * v
    (:func:`~seqedge.kernels.decode_tiles.mixer_apply`)."""
    if PDL:
        gdc_launch_dependents()
    i_bh = tl.program_id(0).to(tl.int64)
    b = i_bh // H
    h = i_bh % H
    rv = tl.program_id(1) * BV + tl.arange(0, BV)
    wu, bu, sk = mixer_load(up_w, up_b, skip, h, rv, R, DK, DV, RP)
    if PDL:
        gdc_wait()                  # the state too: the previous token's write may be in a kernel still running
    ptr = state + i_bh * DK * DV + tl.arange(0, DK)[:, None] * DV + rv[None, :]
    S = tl.load(ptr, cache_modifier=".cg")
    mixer_apply(proj, o, ptr, S, b, h, rv, wu, bu, sk, NP, C, R, scale, g_min, H, DK, DV, RP, DELTA)


@triton.jit
def _gemv_residual_kernel(inp, gate, norm_w, w, x, N, K, NP, gate_off, eps,
                          HEAD_NORM: tl.constexpr, H: tl.constexpr, HP: tl.constexpr, DV: tl.constexpr,
                          BN: tl.constexpr, PDL: tl.constexpr):
    """x[b, n] += sum_k w[n, k] * a[b, k], w [N, K], x [B, N] float32, K = H * DV, read as [H, DV] (HP >= H,
    DV powers of two): a = inp [B, K] or, if HEAD_NORM, RMSNorm over each head's DV values of inp, times norm_w,
    times SiLU(gate[b, gate_off + k]) (:func:`~seqedge.kernels.decode_tiles.gemv_residual_apply`)."""
    if PDL:
        gdc_launch_dependents()
    pid_n = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    rn = pid_n * BN + tl.arange(0, BN)
    wt, nw = gemv_residual_load(w, norm_w, rn, N, K, HEAD_NORM, H, HP, DV)       # before the wait
    if PDL:
        gdc_wait()
    gemv_residual_apply(inp, gate, x, b, rn, wt, nw, N, K, NP, gate_off, eps, HEAD_NORM, H, HP, DV)


def _head_split(width: int) -> tuple[int, int]:
    """``width`` as (rows, cols) with cols the largest power of two <= 128 dividing it: a GEMV input of that width
    is loaded as one [rows, cols] tile (power-of-two tile shapes, masked rows)."""
    cols = 1
    while cols < 128 and width % (2 * cols) == 0:
        cols *= 2
    return width // cols, cols


class _Layer(NamedTuple):
    """One layer's weights, or (``_pack_model``) every layer's, stacked on a leading layer axis [L, ...]."""

    attn_norm: torch.Tensor   # [D]
    w_in: torch.Tensor        # [C + R + H + H*dv, D]: qkv, gate_down, beta, out_gate
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
    w_in = torch.cat([a.qkv.weight, a.gate_down.weight, a.beta.weight, a.out_gate.weight])
    b_in = torch.zeros(w_in.shape[0], dtype=torch.float32, device=w_in.device)
    start = a.qkv.weight.shape[0] + a.gate_down.weight.shape[0]
    b_in[start:start + a.beta.weight.shape[0]] = a.beta.bias.float()
    return _Layer(block.attn_norm.weight, w_in, b_in, a.conv.weight[:, 0, :], a.gate_up.weight, a.gate_up.bias,
                  a.skip, a.out_norm.weight, a.out_proj.weight, block.mlp_norm.weight, block.mlp.gate_up.weight,
                  block.mlp.down.weight)


def _pack_model(model) -> _Layer:
    """Every layer's weights copied once into stacked [L, ...] tensors (the persistent kernel indexes layers)."""
    with torch.no_grad():
        layers = [_pack_layer(block) for block in model.blocks]
        return _Layer(*(torch.stack([t.detach() for t in field]).contiguous() for field in zip(*layers)))


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

    def __init__(self, model, batch_size: int, warmup: int = 2,
                 config: FusedConfig | PersistentConfig = FUSED_CONFIGS[0], capture: bool = True,
                 programs: int | None = None, pdl: bool | None = None) -> None:
        _check_model(model, batch_size, capture)
        c = self.cfg = model.config
        device = model.embed.weight.device
        self._static_buffers(model, batch_size, device)
        # one arena per kind of state, [L, ...], so the persistent kernel can index layers; states[i] are views
        self._tails, self._scans = torch.stack(self.states[0::2]), torch.stack(self.states[1::2])
        self.states = [t for pair in zip(self._tails, self._scans) for t in pair]
        self.config = config
        self.persistent = isinstance(config, PersistentConfig)
        if not isinstance(config, (FusedConfig, PersistentConfig)):
            raise ValueError(f"config must be one of FUSED_CONFIGS or PERSISTENT_CONFIGS, got {config!r}")
        sms = torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 8
        programs = sms if programs is None else programs
        if programs < 1 or (self.persistent and device.type == "cuda" and programs > sms):
            raise ValueError(f"programs must be in [1, {sms}] (at most one persistent program per SM), got "
                             f"{programs}")
        self.programs = programs
        self.weights = _pack_model(model)                    # stacked copies, [L, ...]; layers[i]: views of layer i
        self.layers = [_Layer(*(t[i] for t in self.weights)) for i in range(c.num_layers)]
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
        widths = dict(inp=(self.n_in, self._d_cols), out=(D, pow2(c.num_heads) * c.head_v_dim),
                      mlp=(F, 2 * self._d_cols), down=(D, pow2(self._f_split[0]) * self._f_split[1]),
                      head=(c.vocab_size, self._d_cols))
        if self.persistent:
            from .decode_persistent import persistent_block_n, persistent_block_v

            self._bn = {k: persistent_block_n(rows, width, B, programs, config.max_tile)
                        for k, (rows, width) in widths.items()}
            self._bv = persistent_block_v(B, c.num_heads, c.head_v_dim, programs)
            if None in self._bn.values() or self._bv is None:
                raise ValueError(f"{config} needs every stage in at most one tile of at most {config.max_tile} "
                                 f"weights per program ({programs} programs); batch_size {B} of this model does "
                                 f"not fit: use one of FUSED_CONFIGS")
            if pdl:
                raise ValueError("pdl applies to the 5-launch layers (FUSED_CONFIGS); a persistent config makes "
                                 "one launch per step")
            self.pdl = False
            if config.barrier not in ("flags", "counter"):
                raise ValueError(f"barrier must be 'flags' or 'counter', got {config.barrier!r}")
            self._sync = torch.zeros(programs, dtype=torch.int32, device=device)          # grid barrier memory
            self._stagewise = device.type != "cuda"          # Triton's interpreter: one launch per stage, no barrier
            self.launches_per_step = 1 if not self._stagewise else 5 * c.num_layers + 1
        else:
            self._bn = {k: block_n(rows, width, programs, config.max_tile) for k, (rows, width) in widths.items()}
            self._bv = min(config.block_v, c.head_v_dim)
            self.pdl = pdl_supported(device) if pdl is None else pdl
            if self.pdl and not pdl_supported(device):
                raise ValueError(f"programmatic dependent launch needs a GPU of sm 9.0 or newer; {device} is not "
                                 f"one")
            self.launches_per_step = 5 * c.num_layers + 1   # kernel launches the graph replays per token
        self._launch = dict(launch_pdl=True) if self.pdl else {}
        self.logits = torch.zeros(B, c.vocab_size, **f32)                                  # [B, V] static output
        if capture:
            self._capture(warmup)

    @property
    def scratch(self) -> tuple[torch.Tensor, ...]:
        """Buffers every step rewrites before reading (tests poison them with NaN)."""
        return self.x, self.proj, self.o, self.hidden, self.logits

    def _body(self) -> torch.Tensor:
        """The launches of one step on the static buffers (what the graph holds): tokens -> logits ``[B, V]``."""
        if self.persistent:
            return self._persistent_body()
        c, B, bn, eps, pdl, opts = self.cfg, self.batch_size, self._bn, self.eps, self.pdl, self._launch
        C, R, H, D, F = c.conv_channels, c.gate_rank, c.num_heads, c.hidden_size, c.mlp_hidden_size
        DK, DV, K = c.head_k_dim, c.head_v_dim, c.conv_kernel
        cdiv, pow2 = triton.cdiv, triton.next_power_of_2
        gate_off = C + R + H
        warps = lambda bn_, width: 8 if bn_ * width >= 8192 else 4
        for i, L in enumerate(self.layers):
            tail, S = self.states[2 * i], self.states[2 * i + 1]
            _norm_gemv_kernel[(cdiv(self.n_in, bn["inp"]), B)](
                self.embed if i == 0 else self.x, self.tokens, self.x, L.attn_norm, L.w_in, self.proj, L.b_in,
                tail, L.conv_w, self.n_in, D, C, eps, EMBED=i == 0, HAS_BIAS=True, CONV=True, SWIGLU=False,
                KW=K, KP=pow2(K - 1), BN=bn["inp"], BK=self._d_cols, PDL=pdl,
                num_warps=warps(bn["inp"], self._d_cols), **opts)
            _mixer_kernel[(B * H, DV // self._bv)](
                self.proj, L.up_w, L.up_b, L.skip, S, self.o, self.n_in, C, R, DK ** -0.5, c.g_min,
                H=H, DK=DK, DV=DV, BV=self._bv, RP=pow2(R), DELTA=c.update_rule == "delta", PDL=pdl,
                num_warps=4 if DK * self._bv >= 4096 else 2, **opts)
            _gemv_residual_kernel[(cdiv(D, bn["out"]), B)](
                self.o, self.proj, L.out_norm, L.w_out, self.x, D, c.value_size, self.n_in, gate_off, eps,
                HEAD_NORM=True, H=H, HP=pow2(H), DV=DV, BN=bn["out"], PDL=pdl,
                num_warps=warps(bn["out"], pow2(H) * DV), **opts)
            _norm_gemv_kernel[(cdiv(F, bn["mlp"]), B)](
                self.x, self.tokens, self.x, L.mlp_norm, L.w_mlp, self.hidden, self.x, self.x, self.x, F, D, 0, eps,
                EMBED=False, HAS_BIAS=False, CONV=False, SWIGLU=True, KW=1, KP=1, BN=bn["mlp"], BK=self._d_cols,
                PDL=pdl, num_warps=warps(bn["mlp"], 2 * self._d_cols), **opts)
            hf, dvf = self._f_split
            _gemv_residual_kernel[(cdiv(D, bn["down"]), B)](
                self.hidden, self.hidden, self.hidden, L.w_down, self.x, D, F, 0, 0, eps, HEAD_NORM=False,
                H=hf, HP=pow2(hf), DV=dvf, BN=bn["down"], PDL=pdl, num_warps=warps(bn["down"], pow2(hf) * dvf),
                **opts)
        _norm_gemv_kernel[(cdiv(c.vocab_size, bn["head"]), B)](
            self.x, self.tokens, self.x, self.final_norm, self.head, self.logits, self.x, self.x, self.x, c.vocab_size,
            D, 0, eps, EMBED=False, HAS_BIAS=False, CONV=False, SWIGLU=False, KW=1, KP=1, BN=bn["head"],
            BK=self._d_cols, PDL=pdl, num_warps=warps(bn["head"], self._d_cols), **opts)
        return self.logits

    def _persistent_body(self, sync: bool = True) -> torch.Tensor:
        """One launch of decode_step_kernel for the whole step (in Triton's interpreter: one per stage).
        ``sync=False`` (benchmarks/decode_barrier.py only) leaves the barriers out: the programs race and the
        results are wrong; it times the work alone."""
        from .decode_persistent import COUNTER, FLAGS, HEAD_STAGE, STAGES_PER_LAYER, decode_step_kernel

        c, B, bn, w = self.cfg, self.batch_size, self._bn, self.weights
        pow2 = triton.next_power_of_2
        hf, dvf = self._f_split
        args = (self.tokens, self.embed, self.x, self.proj, self.o, self.hidden, self.logits, self._sync,
                w.attn_norm, w.w_in, w.b_in, w.conv_w, self._tails, w.up_w, w.up_b, w.skip, self._scans, w.out_norm,
                w.w_out, w.mlp_norm, w.w_mlp, w.w_down, self.final_norm, self.head, B)
        sizes = (self.n_in, c.hidden_size, c.conv_channels, c.gate_rank, c.mlp_hidden_size, c.vocab_size,
                 self.eps, c.head_k_dim ** -0.5, c.g_min)
        meta = dict(H=c.num_heads, DK=c.head_k_dim, DV=c.head_v_dim, KW=c.conv_kernel, KP=pow2(c.conv_kernel - 1),
                    RP=pow2(c.gate_rank), HP=pow2(c.num_heads), HF=hf, HFP=pow2(hf), DVF=dvf, BK=self._d_cols,
                    BN_IN=bn["inp"], BN_OUT=bn["out"], BN_MLP=bn["mlp"], BN_DOWN=bn["down"], BN_HEAD=bn["head"],
                    BV=self._bv, DELTA=c.update_rule == "delta", num_warps=self.config.num_warps,
                    BARRIER=FLAGS if self.config.barrier == "flags" else COUNTER, FP=pow2(self.programs))
        grid = (self.programs,)
        if self._stagewise:
            for i in range(c.num_layers):
                for stage in range(STAGES_PER_LAYER):
                    decode_step_kernel[grid](*args, i, i + 1, *sizes, STAGE=stage, SYNC=False, **meta)
            L = c.num_layers
            decode_step_kernel[grid](*args, L, L, *sizes, STAGE=HEAD_STAGE, SYNC=False, **meta)
        else:
            decode_step_kernel[grid](*args, 0, c.num_layers, *sizes, STAGE=-1, SYNC=sync,
                                     launch_cooperative_grid=True, **meta)
        return self.logits
