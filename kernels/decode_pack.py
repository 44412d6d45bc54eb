"""The weights of one model block in the order the fused decoders use them (decode_fused, decode_cluster).

Imports neither triton nor a CUDA extension.
"""

from __future__ import annotations

from typing import NamedTuple

import torch


class Layer(NamedTuple):
    """One block's weights as the fused decoders read them (views of the model's, except the packed w_in/b_in)."""

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


def pack_layer(block) -> Layer:
    """The weights of one :class:`seqedge.model` block, w_in packed (a copy), the rest views."""
    a = block.attn
    c = lambda t: t.detach().contiguous()
    w_in = torch.cat([a.qkv.weight, a.gate_down.weight, a.beta.weight, a.out_gate.weight]).detach().contiguous()
    b_in = torch.zeros(w_in.shape[0], dtype=torch.float32, device=w_in.device)
    start = a.qkv.weight.shape[0] + a.gate_down.weight.shape[0]
    b_in[start:start + a.beta.weight.shape[0]] = a.beta.bias.detach().float()
    return Layer(c(block.attn_norm.weight), w_in, b_in, c(a.conv.weight[:, 0, :]), c(a.gate_up.weight),
                 c(a.gate_up.bias), c(a.skip), c(a.out_norm.weight), c(a.out_proj.weight),
                 c(block.mlp_norm.weight), c(block.mlp.gate_up.weight), c(block.mlp.down.weight))
