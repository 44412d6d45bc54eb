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
from .ops import at_least_f32 as _at_least_f32


class RMSNorm(nn.Module):
    """RMS normalisation over the last dimension (``ops.rms_norm``)."""

    def __init__(self, dim: int, eps: float, ops: MixerOps = REFERENCE_OPS) -> None:
        super().__init__()
        self.eps = eps
        self.ops = ops
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.ops.rms_norm(x, self.weight, self.eps)


class ShortConv(nn.Module):
    """Causal depthwise conv of kernel K whose last K-1 inputs are the carried state ``[B, channels, K-1]``."""

    def __init__(self, channels: int, kernel: int, ops: MixerOps = REFERENCE_OPS) -> None:
        super().__init__()
        self.kernel = kernel
        self.ops = ops
        self.weight = nn.Parameter(torch.empty(channels, 1, kernel))
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))

    def forward(self, x: torch.Tensor, tail: torch.Tensor, *, step: bool = False):
        """x ``[B, T, channels]``, tail ``[B, channels, K-1]`` -> (SiLU(conv) ``[B, T, channels]``, new tail).

        ``ops.short_conv`` over a sequence, ``ops.short_conv_step`` for the one-token path.
        """
        conv = self.ops.short_conv_step if step else self.ops.short_conv
        return conv(x, tail, self.weight, None)


def _gate_bias_init(config: SequentialAttentionConfig) -> torch.Tensor:
    """Biases whose gates have half-lives spread log-uniformly over [min, max] tokens within every head."""
    half_lives = torch.logspace(math.log10(config.gate_half_life_min), math.log10(config.gate_half_life_max),
                                config.head_k_dim)
    p = (math.log(2.0) / (half_lives * abs(config.g_min))).clamp(1e-7, 1 - 1e-7)   # sigmoid(bias)
    return torch.log(p / (1 - p)).repeat(config.num_heads)                           # [H * dk]


class SequentialAttention(nn.Module):
    """The gated linear-attention mixer of DESIGN §1, with ``gated`` or ``delta`` update rule."""

    def __init__(self, config: SequentialAttentionConfig, ops: MixerOps = REFERENCE_OPS) -> None:
        super().__init__()
        c = self.config = config
        self.ops = ops
        self.qkv = nn.Linear(c.hidden_size, c.conv_channels, bias=False)
        self.conv = ShortConv(c.conv_channels, c.conv_kernel, ops)
        self.gate_down = nn.Linear(c.hidden_size, c.gate_rank, bias=False)
        self.gate_up = nn.Linear(c.gate_rank, c.key_size, bias=True)
        self.beta = nn.Linear(c.hidden_size, c.num_heads, bias=True)
        self.skip = nn.Parameter(torch.ones(c.value_size))
        self.out_norm = RMSNorm(c.head_v_dim, c.norm_eps, ops)
        self.out_gate = nn.Linear(c.hidden_size, c.value_size, bias=False)
        self.out_proj = nn.Linear(c.value_size, c.hidden_size, bias=False)
        with torch.no_grad():
            self.gate_up.bias.copy_(_gate_bias_init(c))
            nn.init.zeros_(self.beta.bias)

    def _project(self, x: torch.Tensor, conv_state: torch.Tensor, B: int, T: int, *, step: bool = False):
        """x ``[B, T, D]`` -> q, k, g ``[B, T, H, dk]``, v ``[B, T, H, dv]``, beta ``[B, T, H]``, new conv tail.

        The step path passes B = -1 and T = 1, so its exported graph needs no shape arithmetic.
        """
        c = self.config
        qkv, conv_state = self.conv(self.qkv(x), conv_state, step=step)
        q, k, v = qkv.split([c.key_size, c.key_size, c.value_size], dim=-1)
        q = q.reshape(B, T, c.num_heads, c.head_k_dim)
        k = k.reshape(B, T, c.num_heads, c.head_k_dim)
        v = v.reshape(B, T, c.num_heads, c.head_v_dim)
        if c.update_rule == "delta":
            q = F.normalize(q.to(_at_least_f32(q.dtype)), dim=-1, eps=1e-6).to(x.dtype)
            k = F.normalize(k.to(_at_least_f32(k.dtype)), dim=-1, eps=1e-6).to(x.dtype)
        g = c.g_min * torch.sigmoid(self.gate_up(self.gate_down(x)).to(_at_least_f32(x.dtype)))
        g = g.reshape(B, T, c.num_heads, c.head_k_dim)
        beta = torch.sigmoid(self.beta(x).to(_at_least_f32(x.dtype)))
        return q, k, v, g, beta, conv_state

    def _output(self, x: torch.Tensor, o: torch.Tensor, v: torch.Tensor, B: int, T: int) -> torch.Tensor:
        """o, v ``[B, T, H, dv]`` -> y ``[B, T, D]``: local skip, per-head norm, output gate, projection."""
        o = o.to(x.dtype) + self.skip.view(self.config.num_heads, -1).to(x.dtype) * v
        o = self.out_norm(o).reshape(B, T, self.config.value_size)
        return self.out_proj(o * self.ops.silu(self.out_gate(x)))

    def forward(self, x: torch.Tensor, conv_state: torch.Tensor, scan_state: torch.Tensor):
        """Sequence path: x ``[B, T, D]`` -> (y ``[B, T, D]``, conv tail, scan state ``[B, H, dk, dv]``)."""
        T = int(x.shape[1])                      # static in exported graphs: only the batch stays symbolic
        B = -1 if T else x.shape[0]
        q, k, v, g, beta, conv_state = self._project(x, conv_state, B, T)
        o, scan_state = self.ops.sequence_scan(q, k, v, g, beta, rule=self.config.update_rule,
                                               initial_state=scan_state, chunk_size=self.config.chunk_size)
        return self._output(x, o, v, B, T), conv_state, scan_state

    def step(self, x: torch.Tensor, conv_state: torch.Tensor, scan_state: torch.Tensor):
        """One-token path: x ``[B, 1, D]`` -> (y ``[B, 1, D]``, conv tail, scan state), recurrent form."""
        q, k, v, g, beta, conv_state = self._project(x, conv_state, -1, 1, step=True)
        c = self.config
        H, dk, dv = c.num_heads, c.head_k_dim, c.head_v_dim
        q, k, g = (t.reshape(-1, H, dk) for t in (q, k, g))             # drop T = 1, with constant shapes only
        v, beta = v.reshape(-1, H, dv), beta.reshape(-1, H)
        o, scan_state = self.ops.step_scan(q, k, v, g, beta, scan_state, rule=c.update_rule, scale=dk ** -0.5)
        return self._output(x, o.unsqueeze(1), v.unsqueeze(1), -1, 1), conv_state, scan_state


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
