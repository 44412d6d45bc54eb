"""Building blocks of the model: RMSNorm, the short causal conv, the Sequential Attention mixer, SwiGLU.

Every mixer has a sequence path (chunked scan) and a one-token path (recurrent step) over the same weights,
with the state passed explicitly, so the step function exports as a plain feed-forward graph. Every module is
built with a :class:`seqedge.ops.MixerOps` and computes its scans, short convs, SiLUs, norms (and the model its
logits) only through it: those calls are every place where an export flavour's graph may differ.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from .config import SequentialAttentionConfig
from .ops import REFERENCE_OPS, MixerOps
from .ops import at_least_f32


class RMSNorm(nn.Module):
    """RMS normalisation over the last dimension (``ops.rms_norm``), or over ``groups`` equal slices of it with
    one weight per channel (Mamba2's gated norm)."""

    def __init__(self, dim: int, eps: float, ops: MixerOps = REFERENCE_OPS, *, groups: int = 1) -> None:
        super().__init__()
        self.eps = eps
        self.ops = ops
        self.groups = groups
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.groups == 1:
            return self.ops.rms_norm(x, self.weight, self.eps)
        grouped = x.unflatten(-1, (self.groups, -1))                          # [..., groups, dim / groups]
        return self.ops.rms_norm(grouped, self.weight.view(self.groups, -1), self.eps).flatten(-2)


class ShortConv(nn.Module):
    """Causal depthwise conv of kernel K whose last K-1 inputs are the carried state ``[B, channels, K-1]``."""

    def __init__(self, channels: int, kernel: int, ops: MixerOps = REFERENCE_OPS, *, bias: bool = False) -> None:
        super().__init__()
        self.kernel = kernel
        self.ops = ops
        self.weight = nn.Parameter(torch.empty(channels, 1, kernel))
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        self.bias = nn.Parameter(torch.zeros(channels)) if bias else None

    def forward(self, x: torch.Tensor, tail: torch.Tensor, *, step: bool = False):
        """x ``[B, T, channels]``, tail ``[B, channels, K-1]`` -> (SiLU(conv) ``[B, T, channels]``, new tail).

        ``ops.short_conv`` over a sequence, ``ops.short_conv_step`` for the one-token path.
        """
        conv = self.ops.short_conv_step if step else self.ops.short_conv
        return conv(x, tail, self.weight, self.bias)


def _gate_bias_init(config: SequentialAttentionConfig) -> torch.Tensor:
    """Biases whose gates have half-lives spread log-uniformly over [min, max] tokens within every head."""
    half_lives = torch.logspace(math.log10(config.gate_half_life_min), math.log10(config.gate_half_life_max),
                                config.head_k_dim)
    p = (math.log(2.0) / (half_lives * abs(config.g_min))).clamp(1e-7, 1 - 1e-7)   # sigmoid(bias)
    return torch.log(p / (1 - p)).repeat(config.num_heads)                           # [H * dk]


def _logsigmoid(x: torch.Tensor) -> torch.Tensor:
    """``log(sigmoid(x))`` as ``min(x, 0) - log1p(exp(-|x|))`` in plain ops: exported graphs may write
    ``F.logsigmoid`` as Log(Sigmoid(x)), which is -inf once sigmoid underflows (x below about -88)."""
    return torch.clamp(x, max=0.0) - torch.log1p(torch.exp(-x.abs()))


class SequentialAttention(nn.Module):
    """The gated linear-attention mixer of DESIGN §1, with ``gated`` or ``delta`` update rule.

    One composition of named parts (``config.mixer``, :class:`seqedge.config.MixerParts`): the native mixer and
    imported families (docs/families.md) differ only in which parts they set and how.
    """

    def __init__(self, config: SequentialAttentionConfig, ops: MixerOps = REFERENCE_OPS) -> None:
        super().__init__()
        c = self.config = config
        parts = c.mixer
        self.ops = ops
        self.scale = parts.scale or c.head_k_dim ** -0.5
        self.qkv = nn.Linear(c.hidden_size, c.conv_channels, bias=False)
        if parts.short_conv:
            self.conv = ShortConv(c.conv_channels, c.conv_kernel, ops, bias=parts.conv_bias)
        if parts.gate in ("sigmoid", "logsigmoid"):                 # low rank, one gate per key dim
            self.gate_down = nn.Linear(c.hidden_size, c.gate_rank, bias=False)
            self.gate_up = nn.Linear(c.gate_rank, c.num_heads * c.head_k_dim, bias=True)
        elif parts.gate == "softplus_key":          # one step per key dim, through a rank-gate_rank projection
            self.dt_down = nn.Linear(c.hidden_size, c.gate_rank, bias=False)
            self.dt_up = nn.Linear(c.gate_rank, c.num_heads * c.head_k_dim, bias=False)
            self.dt_bias = nn.Parameter(torch.zeros(c.num_heads * c.head_k_dim))
            self.A_log = nn.Parameter(torch.log(torch.arange(1, c.num_heads + 1, dtype=torch.float32)))
        else:                                       # softplus: one step size per head
            self.dt_proj = nn.Linear(c.hidden_size, c.num_heads, bias=False)
            self.dt_bias = nn.Parameter(torch.zeros(c.num_heads))
            self.A_log = nn.Parameter(torch.log(torch.arange(1, c.num_heads + 1, dtype=torch.float32)))
        if parts.beta == "sigmoid":
            self.beta = nn.Linear(c.hidden_size, c.num_heads, bias=True)
        if parts.skip:
            self.skip = nn.Parameter(torch.ones(c.value_size))
        norm_size, eps = parts.out_norm_size or c.head_v_dim, parts.out_norm_eps or c.norm_eps
        if parts.output == "norm_gate":             # one weight shared by every group
            self.out_norm = RMSNorm(norm_size, eps, ops)
        else:                                       # Mamba2's gated RMSNorm: one weight per channel
            self.out_norm = RMSNorm(c.value_size, eps, ops, groups=c.value_size // norm_size)
        if parts.out_gate_rank:                     # low rank, with a bias after the up-projection
            self.out_gate_down = nn.Linear(c.hidden_size, parts.out_gate_rank, bias=False)
        self.out_gate = nn.Linear(parts.out_gate_rank or c.hidden_size, c.value_size, bias=bool(parts.out_gate_rank))
        self.out_proj = nn.Linear(c.value_size, c.hidden_size, bias=False)
        with torch.no_grad():
            if parts.gate == "sigmoid":
                self.gate_up.bias.copy_(_gate_bias_init(c))
            if parts.beta == "sigmoid":
                nn.init.zeros_(self.beta.bias)

    def _heads(self, x: torch.Tensor, B: int, T: int, heads: int, dim: int) -> torch.Tensor:
        """``[B, T, heads * dim]`` -> ``[B, T, H, dim]``, each of ``heads`` repeated for its group of value heads."""
        H = self.config.num_heads
        x = x.reshape(B, T, heads, dim)
        if heads == H:
            return x
        return self.ops.expand(x.reshape(B, T, heads, 1, dim), -1, -1, -1, H // heads, -1).reshape(B, T, H, dim)

    def _qk_norm(self, x: torch.Tensor) -> torch.Tensor:
        """q or k ``[..., dk]`` L2-normalised per head as ``mixer.qk_norm`` says, in at least float32."""
        how = self.config.mixer.qk_norm
        if how == "none" or (how == "rule" and self.config.update_rule != "delta"):
            return x
        xf = x.to(at_least_f32(x.dtype))
        if how == "rule":
            return F.normalize(xf, dim=-1, eps=1e-6).to(x.dtype)
        return (xf * torch.rsqrt(xf.pow(2).sum(-1, keepdim=True) + 1e-6)).to(x.dtype)

    def _gate(self, x: torch.Tensor, B: int, T: int, *, step: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """x ``[B, T, D]`` -> log gate g ``[B, T, H, dk]`` and input scale beta ``[B, T, H]`` (at least float32).
        With ``step``, or ops with ``head_gates``, a gate per head stays ``[B, T, H, 1]``: those scans broadcast it
        (ONNX Runtime's LinearAttention takes it as its per-head decay), so the graph neither expands nor moves it."""
        c, parts, f32 = self.config, self.config.mixer, at_least_f32(x.dtype)
        if parts.gate == "sigmoid":
            g = c.g_min * torch.sigmoid(self.gate_up(self.gate_down(x)).to(f32))
            g = g.reshape(B, T, c.num_heads, c.head_k_dim)
            dt = None
        elif parts.gate == "logsigmoid":
            g = _logsigmoid(self.gate_up(self.gate_down(x)).to(f32)) / parts.gate_normalizer
            g = g.reshape(B, T, c.num_heads, c.head_k_dim)
            dt = None
        elif parts.gate == "softplus_key":
            dt = F.softplus(self.dt_up(self.dt_down(x)).to(f32) + self.dt_bias.to(f32))      # [B, T, H * dk]
            g = -torch.exp(self.A_log.to(f32)).unsqueeze(-1) * dt.reshape(B, T, c.num_heads, c.head_k_dim)
            dt = None
        else:
            dt = F.softplus(self.dt_proj(x).to(f32) + self.dt_bias.to(f32))               # [B, T, H]
            g = (-torch.exp(self.A_log.to(f32)) * dt).reshape(B, T, c.num_heads, 1)
            if not step and not self.ops.head_gates:
                g = self.ops.expand(g, -1, -1, -1, c.head_k_dim)
        if parts.beta == "sigmoid":
            beta = torch.sigmoid(self.beta(x).to(f32))
            if parts.beta_scale != 1.0:
                beta = parts.beta_scale * beta
        elif parts.beta == "dt":
            beta = dt
        else:
            beta = torch.ones_like(g[..., 0])
        return g, beta

    def _project(self, x: torch.Tensor, conv_state: torch.Tensor | None, B: int, T: int, *, step: bool = False):
        """x ``[B, T, D]`` -> q, k, g ``[B, T, H, dk]``, v ``[B, T, H, dv]``, beta ``[B, T, H]``, new conv tail
        (None without ``mixer.short_conv``: then q, k, v are the projections themselves).

        The step path passes B = -1 and T = 1, so its exported graph needs no shape arithmetic.
        """
        c = self.config
        qkv = self.qkv(x)
        if c.mixer.short_conv:
            qkv, conv_state = self.conv(qkv, conv_state, step=step)
        q, k, v = qkv.split([c.key_size, c.key_size, c.value_size], dim=-1)
        q = q.reshape(B, T, c.key_heads, c.head_k_dim)
        k = k.reshape(B, T, c.key_heads, c.head_k_dim)
        v = v.reshape(B, T, c.num_heads, c.head_v_dim)
        q, k = self._qk_norm(q), self._qk_norm(k)
        if c.key_heads != c.num_heads and not self.ops.grouped_keys:
            q, k = (self._heads(t, B, T, c.key_heads, c.head_k_dim) for t in (q, k))
        g, beta = self._gate(x, B, T, step=step)
        return q, k, v, g, beta, conv_state

    def _output(self, x: torch.Tensor, o: torch.Tensor, v: torch.Tensor, B: int, T: int) -> torch.Tensor:
        """o, v ``[B, T, H, dv]`` -> y ``[B, T, D]``: local skip, grouped norm and output gate, projection."""
        c, parts = self.config, self.config.mixer
        o = o.to(x.dtype)
        if parts.skip and parts.output == "norm_gate":      # a norm per head next: stay [B, T, H, dv]
            o = o + self.skip.view(c.num_heads, -1).to(x.dtype) * v
        elif parts.skip:        # a norm over all channels next: packed [B, T, H * dv], as the fused scans write it
            o = o.reshape(B, T, c.value_size) + self.skip.to(x.dtype) * v.reshape(B, T, c.value_size)
        gate = self.out_gate(self.out_gate_down(x) if parts.out_gate_rank else x)
        gate = self.ops.silu(gate) if parts.out_gate_act == "silu" else torch.sigmoid(gate)
        if parts.output == "norm_gate":
            if parts.out_norm_size:
                o = o.reshape(B, T, c.value_size // parts.out_norm_size, parts.out_norm_size)
            o = self.out_norm(o).reshape(B, T, c.value_size) * gate
        else:                                       # gated RMSNorm: the gate goes in before the norm
            o = self.out_norm(o.reshape(B, T, c.value_size) * gate)
        return self.out_proj(o)

    def forward(self, x: torch.Tensor, conv_state: torch.Tensor | None, scan_state: torch.Tensor):
        """Sequence path: x ``[B, T, D]`` -> (y ``[B, T, D]``, conv tail (None without a short conv), scan state
        ``[B, H, dk, dv]``)."""
        T = int(x.shape[1])                      # static in exported graphs: only the batch stays symbolic
        B = -1 if T else x.shape[0]
        c = self.config
        q, k, v, g, beta, conv_state = self._project(x, conv_state, B, T)
        o, scan_state = self.ops.sequence_scan(q, k, v, g, beta, rule=c.update_rule, initial_state=scan_state,
                                               chunk_size=c.chunk_size, scale=self.scale,
                                               bounded=c.bounded_gates)
        return self._output(x, o, v, B, T), conv_state, scan_state

    def step(self, x: torch.Tensor, conv_state: torch.Tensor | None, scan_state: torch.Tensor):
        """One-token path: x ``[B, 1, D]`` -> (y ``[B, 1, D]``, conv tail, scan state), recurrent form."""
        q, k, v, g, beta, conv_state = self._project(x, conv_state, -1, 1, step=True)
        c = self.config
        H, dk, dv = c.num_heads, c.head_k_dim, c.head_v_dim
        key_heads = c.key_heads if self.ops.grouped_keys else H
        q, k = (t.reshape(-1, key_heads, dk) for t in (q, k))           # drop T = 1, with constant shapes only
        g = g.reshape(-1, H, int(g.shape[-1]))                           # dk, or 1 for a gate per head
        o, scan_state = self.ops.step_scan(q, k, v.reshape(-1, H, dv), g, beta.reshape(-1, H), scan_state,
                                           rule=c.update_rule, scale=self.scale)
        # T = 1 back as a reshape to constant shapes (an exported graph folds reshape chains, not unsqueezes)
        return self._output(x, o.reshape(-1, 1, H, dv), v, -1, 1), conv_state, scan_state


class SwiGLU(nn.Module):
    def __init__(self, config: SequentialAttentionConfig, ops: MixerOps = REFERENCE_OPS) -> None:
        super().__init__()
        self.ops = ops
        self.gate_up = nn.Linear(config.hidden_size, 2 * config.mlp_hidden_size, bias=False)
        self.down = nn.Linear(config.mlp_hidden_size, config.hidden_size, bias=False)
        self.hidden = config.mlp_hidden_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_up(x).split([self.hidden, self.hidden], dim=-1)
        return self.down(self.ops.silu(gate) * up)
