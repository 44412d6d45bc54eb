"""Fused whole-model decode: 5 Triton launches per layer (+1 for the logits), captured in one CUDA graph.

:class:`~seqedge.kernels.decode_graph.GraphDecoder` replays the model's own step, about 60 small kernels per
layer; inside a graph each costs a fixed launch overhead whatever its size, so batch-1 decode is launch-bound.
This decoder packs the weights once and runs the same math (DESIGN §1, ``model.step``) as a short fixed sequence
of launches:

    per layer, with x the float32 residual stream [B, D]:
    1. norm_gemv_kernel   RMSNorm(x) (attn_norm) @ [qkv; gate input; beta; out gate input]^T; epilogue: the
                           causal conv step + SiLU on the q/k/v rows (conv tail updated in place; its bias), the
                           other rows' biases. Layer 0 reads x from the embedding table instead (and writes it to x).
    2. mixer_kernel       per (batch, head, value block): L2 norm of q, k, the log gate g and beta, the state
                           update and read-out of recurrent_step in place, the skip term o + skip * v; a low-rank
                           output gate's up-projection.
    3. _gemv_residual      prologue: grouped RMSNorm (out_norm) and the output gate; @ out_proj^T; x += result.
    4. norm_gemv_kernel   RMSNorm(x) (mlp_norm) @ gate_up^T, gate and up rows in the same program; silu(g) * u.
    5. _gemv_residual      @ down^T; x += result.
    after the last layer:  norm_gemv_kernel  final RMSNorm(x) @ head^T (tied: the embedding) -> logits float32.

The mixer's parts (``config.mixer``, :class:`seqedge.config.MixerParts`) select constexpr branches of the same
kernels (:mod:`seqedge.kernels.decode_fused_pack` maps them and packs the weights): every gate and beta form,
grouped key heads, the conv's bias or no short conv (GLA), both output orders with grouped norms, the sigmoid or
low-rank output gate, and blocks without an MLP (Mamba2: launches 4 and 5 are left out, 3 per layer).

Weights stay in the model's dtype (bf16, fp16 or fp32) and every sum accumulates in float32; activations between
launches are float32 (the model rounds some to its dtype: results agree to that dtype's rounding).

Batch 1 is bound by the chain of dependent launches, not by bandwidth: each GEMV program holds its whole weight
tile (every input column) and, with programmatic dependent launch (sm 9.0+), loads it before waiting for the
previous kernel, which lets the next kernel stream its weights while the current one finishes. Every activation
read and every write comes after ``gdc_wait``, which returns once the previous kernel has completed (and, by
induction, every earlier one).

The GEMVs run one program per batch row and weight tile, so each batch row reads the weights again (from L2).
From ``FusedConfig.batch_tile`` rows on (16 by default), steps 1, 3, 4, 5 and the logits use norm_gemm_kernel
and gemm_residual_kernel instead: the same math for ``batch_tile`` batch rows per program, as matrix products.
With bf16 weights they run on tensor cores, the float32 activations entering as two bf16 parts, high and low
(a relative error of about 2^-16); other weight dtypes multiply in exact float32.

    >>> dec = FusedDecoder(model, batch_size=1)             # model on CUDA; weights are read here, once
    >>> dec.reset()                                          # zero state (or dec.reset(state))
    >>> logits = dec.step(torch.tensor([72], device="cuda"))   # [B, V] float32; a view of a static buffer

Imported only on the CUDA path (imports triton at top level). On CPU it runs only in Triton's interpreter
(TRITON_INTERPRET=1, ``capture=False``), which is how tests/decode_fused_interpret_check.py checks it in CI.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import triton

from .decode_fused_kernels import (gemm_residual_kernel, gemv_residual_kernel, mixer_kernel, norm_gemm_kernel,
                                   norm_gemv_kernel)
from .decode_fused_pack import check_model, mixer_layout, pack_layer
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
        check_model(model, batch_size, capture)
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
        self.layout = lay = mixer_layout(c)
        self.layers = [pack_layer(block, c) for block in model.blocks]
        self.scale = model.blocks[0].attn.scale
        self.final_norm = model.norm.weight.detach().contiguous()
        self.embed = model.embed.weight.detach().contiguous()
        self.head = self.embed if model.head is None else model.head.weight.detach().contiguous()
        self.eps = c.norm_eps                                # every RMSNorm of the model uses it
        B, D, F, mlp = batch_size, c.hidden_size, c.mlp_hidden_size, c.mixer.mlp
        self.n_in = lay.n_in
        f32 = dict(dtype=torch.float32, device=device)
        self.x = torch.zeros(B, D, **f32)                                                  # residual stream
        self.proj = torch.zeros(B, self.n_in, **f32)                                       # step 1's output
        self.o = torch.zeros(B, c.value_size, **f32)                                       # mixer output
        self.hidden = torch.zeros(B, F, **f32) if mlp else None                            # SwiGLU output
        self.out_gate = torch.zeros(B, c.value_size, **f32) if c.mixer.out_gate_rank else None   # low-rank gate
        pow2 = triton.next_power_of_2
        # GEMV tiles: inputs of width D as one [pow2(D)] row, the SwiGLU hidden F as [rows, cols] (_head_split),
        # the mixer output as the output norm's [rows, width]
        self._d_cols, self._f_split = pow2(D), _head_split(F)
        tile = lambda rows, width: block_n(rows, width, programs, config.max_tile)
        self._bn = dict(inp=tile(self.n_in, self._d_cols), out=tile(D, pow2(lay.rows) * lay.width),
                        mlp=tile(F, 2 * self._d_cols), down=tile(D, pow2(self._f_split[0]) * self._f_split[1]),
                        head=tile(c.vocab_size, self._d_cols))
        self.pdl = pdl_supported(device) if pdl is None else pdl
        if self.pdl and not pdl_supported(device):
            raise ValueError(f"programmatic dependent launch needs a GPU of sm 9.0 or newer; {device} is not one")
        self._launch = dict(launch_pdl=True) if self.pdl else {}
        self._bv = min(config.block_v, c.head_v_dim)
        # batches of batch_tile rows or more: the tensor-core kernels (their dots need 16 columns a step at least)
        self._gemm = 0 < config.batch_tile <= B and min(lay.width, self._f_split[1] if mlp else 16) >= 16
        self._split = model.embed.weight.dtype == torch.bfloat16
        self.launches_per_step = (5 if mlp else 3) * c.num_layers + 1   # kernel launches the graph replays per token
        self.logits = torch.zeros(B, c.vocab_size, **f32)                                  # [B, V] static output
        if capture:
            self._capture(warmup)

    @property
    def scratch(self) -> tuple[torch.Tensor, ...]:
        """Buffers every step rewrites before reading (tests poison them with NaN)."""
        return tuple(t for t in (self.x, self.proj, self.o, self.hidden, self.out_gate, self.logits)
                     if t is not None)

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
        flags = dict(EMBED=embed, HAS_BIAS=bias is not None, CONV=conv, CONV_BIAS=conv and c.mixer.conv_bias,
                     SWIGLU=swiglu, KW=K if conv else 1, KP=triton.next_power_of_2(K - 1) if conv else 1,
                     PDL=self.pdl, **self._launch)
        if self._gemm:
            bt = self.config.batch_tile
            norm_gemm_kernel[(triton.cdiv(n, GEMM_BLOCK_N), triton.cdiv(B, bt))](
                *args, B, self.eps, BN=GEMM_BLOCK_N, BK=GEMM_BLOCK_K, BB=bt, SPLIT=self._split, num_warps=4,
                **flags)
        else:
            bn = self._bn[key]
            norm_gemv_kernel[(triton.cdiv(n, bn), B)](
                *args, self.eps, BN=bn, BK=self._d_cols, num_warps=_warps(bn, (1 + swiglu) * self._d_cols), **flags)

    def _gemv_residual(self, key: str, inp, w, rows: int, width: int, out_norm=None) -> None:
        """One launch of x += a @ w^T, a = inp read as [rows, width] per batch row or, with ``out_norm``, the
        mixer's grouped RMSNorm and output gate of it; per batch row or BB rows at a time, as _norm_gemv."""
        c, B, D, lay = self.cfg, self.batch_size, self.cfg.hidden_size, self.layout
        head_norm = out_norm is not None
        gate, stride, offset = ((self.out_gate, c.value_size, 0) if c.mixer.out_gate_rank
                                else (self.proj, self.n_in, lay.og_off))
        args = (inp, gate if head_norm else inp, out_norm if head_norm else inp, w, self.x, D, rows * width,
                stride, offset)
        flags = dict(HEAD_NORM=head_norm, H=rows, DV=width, GM=lay.group_rows if head_norm else 1,
                     NW_FULL=head_norm and c.mixer.output == "gate_norm",
                     GATE_FIRST=head_norm and c.mixer.output == "gate_norm",
                     OG_SIGMOID=c.mixer.out_gate_act == "sigmoid", PDL=self.pdl, **self._launch)
        if self._gemm:
            bt = self.config.batch_tile
            gemm_residual_kernel[(triton.cdiv(D, GEMM_BLOCK_N), triton.cdiv(B, bt))](
                *args, B, self.eps, BN=GEMM_BLOCK_N, BB=bt, SPLIT=self._split, num_warps=4, **flags)
        else:
            bn, hp = self._bn[key], triton.next_power_of_2(rows)
            gemv_residual_kernel[(triton.cdiv(D, bn), B)](
                *args, self.eps, HP=hp, BN=bn, num_warps=_warps(bn, hp * width), **flags)

    def _mixer(self, L, S) -> None:
        """One launch of the mixer step (launch 2) on the scan state S ``[B, H, dk, dv]``."""
        c, lay, m = self.cfg, self.layout, self.cfg.mixer
        H, DK, DV = c.num_heads, c.head_k_dim, c.head_v_dim
        pow2 = triton.next_power_of_2
        gate_mul = c.g_min if m.gate == "sigmoid" else 1.0 / m.gate_normalizer
        mixer_kernel[(self.batch_size * H, DV // self._bv)](
            self.proj, L.up_w, L.up_b, L.a_log, L.skip, L.og_w, L.og_b,
            self.o if self.out_gate is None else self.out_gate, S, self.o, self.n_in,
            c.gate_rank, lay.gate_off, lay.beta_off, lay.og_off, m.out_gate_rank, self.scale, gate_mul,
            H=H, KH=c.key_heads, DK=DK, DV=DV, BV=self._bv, RP=pow2(c.gate_rank),
            OGRP=pow2(m.out_gate_rank) if m.out_gate_rank else 0, PDL=self.pdl,
            num_warps=4 if DK * self._bv >= 4096 else 2, **lay.flags, **self._launch)

    def _body(self) -> torch.Tensor:
        """The launches of one step on the static buffers (what the graph holds): tokens -> logits ``[B, V]``."""
        c, lay = self.cfg, self.layout
        per_layer = 2 if c.mixer.short_conv else 1           # state tensors per layer: (conv tail,) scan state
        for i, L in enumerate(self.layers):
            tail = self.states[per_layer * i] if per_layer == 2 else None
            self._norm_gemv("inp", self.n_in, self.embed if i == 0 else self.x, L.attn_norm, L.w_in, self.proj,
                            bias=L.b_in, tail=tail, conv_w=L.conv_w, embed=i == 0)
            self._mixer(L, self.states[per_layer * i + per_layer - 1])
            self._gemv_residual("out", self.o, L.w_out, lay.rows, lay.width, out_norm=L.out_norm)
            if c.mixer.mlp:
                self._norm_gemv("mlp", c.mlp_hidden_size, self.x, L.mlp_norm, L.w_mlp, self.hidden)
                self._gemv_residual("down", self.hidden, L.w_down, *self._f_split)
        self._norm_gemv("head", c.vocab_size, self.x, self.final_norm, self.head, self.logits)
        return self.logits
