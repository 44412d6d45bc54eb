"""What :class:`seqedge.kernels.decode_fused.FusedDecoder` reads from a model: the checks that its kernels compute
the model's mixer parts (``config.mixer``), the kernel flags those parts map to, and each layer's weights packed
for the kernels.

The input projection of a layer is one packed matrix, its rows in this order (``MixerLayout`` holds the offsets):

    qkv (conv_channels) | gate input | beta (num_heads, sigmoid beta only) | output gate input

where the gate input is ``gate_down`` (gate ``sigmoid``, ``logsigmoid``) or ``dt_down`` (``softplus_key``), each
``gate_rank`` rows, or ``dt_proj`` (``softplus``, one row per head, dt_bias as its bias), and the output gate input
is ``out_gate`` (value_size rows) or, with ``out_gate_rank`` r > 0, ``out_gate_down`` (r rows; the mixer kernel
applies the up-projection).
"""

from __future__ import annotations

import os
from typing import NamedTuple

import torch

GATE_CODES = {"sigmoid": 0, "logsigmoid": 1, "softplus_key": 2, "softplus": 3}
BETA_CODES = {"sigmoid": 0, "dt": 1, "none": 2}


class MixerLayout(NamedTuple):
    """Column offsets in the packed input projection's output ``proj`` [B, n_in], the output norm's row layout
    (``rows`` of ``width`` channels, ``group_rows`` rows per norm group) and the mixer kernel's flags."""

    n_in: int
    gate_off: int
    beta_off: int
    og_off: int
    rows: int
    width: int
    group_rows: int
    flags: dict


def mixer_layout(c) -> MixerLayout:
    """The layout and kernel flags of config ``c``'s mixer (see the module docstring)."""
    m = c.mixer
    gate_in = c.num_heads if m.gate == "softplus" else c.gate_rank
    beta_in = c.num_heads if m.beta == "sigmoid" else 0
    gate_off = c.conv_channels
    beta_off = gate_off + gate_in
    og_off = beta_off + beta_in
    group = m.out_norm_size or c.head_v_dim
    width = min(group, c.head_v_dim)
    qk_norm = {"none": 0, "rsqrt": 2}.get(m.qk_norm, int(c.update_rule == "delta"))
    flags = dict(DELTA=c.update_rule == "delta", QK_NORM=qk_norm, GATE=GATE_CODES[m.gate], BETA=BETA_CODES[m.beta],
                 HAS_SKIP=m.skip)
    return MixerLayout(og_off + (m.out_gate_rank or c.value_size), gate_off, beta_off, og_off, c.value_size // width,
                       width, group // width, flags)


class Layer(NamedTuple):
    attn_norm: torch.Tensor   # [D]
    w_in: torch.Tensor        # [n_in, D]: the packed input projection (module docstring)
    b_in: torch.Tensor        # [n_in] float32: conv bias, dt_bias (softplus), beta's bias; zeros elsewhere
    conv_w: torch.Tensor      # [C, K] (without a short conv: b_in, never read)
    up_w: torch.Tensor        # [H*dk, R]: gate_up or dt_up (softplus: b_in, never read)
    up_b: torch.Tensor        # [H*dk] float32: gate_up's bias or dt_bias
    a_log: torch.Tensor       # [H] float32: A_log (sigmoid / logsigmoid gates: b_in, never read)
    skip: torch.Tensor        # [H*dv]
    og_w: torch.Tensor        # [H*dv, r]: the output gate's up-projection (out_gate_rank r > 0)
    og_b: torch.Tensor        # [H*dv] float32: its bias
    out_norm: torch.Tensor    # [out_norm_size or dv], or [H*dv] (gate_norm: one weight per channel)
    w_out: torch.Tensor       # [D, H*dv]
    mlp_norm: torch.Tensor    # [D] (mixer.mlp False: b_in, never read)
    w_mlp: torch.Tensor       # [2*F, D]: gate rows, then up rows
    w_down: torch.Tensor      # [D, F]


def pack_layer(block, config) -> Layer:
    """One block's weights as the kernels read them: the model's dtype, small vectors float32 (lossless)."""
    a, m = block.attn, config.mixer
    c = lambda t: t.detach().contiguous()
    f = lambda t: t.detach().float().contiguous()
    if m.gate in ("sigmoid", "logsigmoid"):
        gate_w, up_w, up_b = a.gate_down.weight, c(a.gate_up.weight), f(a.gate_up.bias)
    elif m.gate == "softplus_key":
        gate_w, up_w, up_b = a.dt_down.weight, c(a.dt_up.weight), f(a.dt_bias)
    else:
        gate_w, up_w, up_b = a.dt_proj.weight, None, None
    rows = [a.qkv.weight, gate_w] + ([a.beta.weight] if m.beta == "sigmoid" else [])
    rows.append(a.out_gate_down.weight if m.out_gate_rank else a.out_gate.weight)
    w_in = torch.cat(rows).detach().contiguous()
    b_in = torch.zeros(w_in.shape[0], dtype=torch.float32, device=w_in.device)
    lay = mixer_layout(config)
    if m.conv_bias:
        b_in[:config.conv_channels] = f(a.conv.bias)
    if m.gate == "softplus":
        b_in[lay.gate_off:lay.beta_off] = f(a.dt_bias)
    if m.beta == "sigmoid":
        b_in[lay.beta_off:lay.og_off] = f(a.beta.bias)
    unused = b_in
    mlp = (c(block.mlp_norm.weight), c(block.mlp.gate_up.weight), c(block.mlp.down.weight)) if m.mlp else (unused,) * 3
    return Layer(c(block.attn_norm.weight), w_in, b_in, c(a.conv.weight[:, 0, :]) if m.short_conv else unused,
                 unused if up_w is None else up_w, unused if up_b is None else up_b,
                 f(a.A_log) if m.gate in ("softplus", "softplus_key") else unused, c(a.skip) if m.skip else unused,
                 c(a.out_gate.weight) if m.out_gate_rank else unused,
                 f(a.out_gate.bias) if m.out_gate_rank else unused, c(a.out_norm.weight), c(a.out_proj.weight),
                 *mlp)


def unsupported_part(config) -> str | None:
    """Why the kernels do not compute a model of this config, in one line naming the part; None if they do."""
    for name in ("head_k_dim", "head_v_dim"):
        value = getattr(config, name)
        if value < 2 or value & (value - 1):
            return f"FusedDecoder needs {name} to be a power of two >= 2, got {value}"
    m = config.mixer
    if m.beta_scale != 1.0 or m.out_norm_eps not in (0.0, config.norm_eps):
        return (f"FusedDecoder computes beta as sigmoid and every norm with norm_eps; this model has "
                f"mixer.beta_scale {m.beta_scale} and mixer.out_norm_eps {m.out_norm_eps}")
    group, dv = config.mixer.out_norm_size, config.head_v_dim
    if group and (group % dv if group > dv else dv % group):
        return (f"FusedDecoder needs mixer.out_norm_size ({group}) to divide head_v_dim ({dv}) or be a multiple "
                f"of it (its norm groups are whole rows of its tiles)")
    return None


def check_model(model, batch_size: int, capture: bool) -> None:
    """ValueError (one line, naming the part) if the kernels do not compute this model or cannot run here."""
    c = model.config
    device, dtype = model.embed.weight.device, model.embed.weight.dtype
    if batch_size <= 0:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    reason = unsupported_part(c)
    if reason:
        raise ValueError(f"{reason}; use GraphDecoder for this model")
    if dtype not in (torch.float32, torch.bfloat16, torch.float16):
        raise ValueError(f"FusedDecoder computes in float32 from float32/bfloat16/float16 weights, the model is "
                         f"{dtype}; use model.step for a float64 reference")
    if capture and device.type != "cuda":
        raise ValueError(f"FusedDecoder needs the model on a CUDA device, it is on {device}; call model.cuda() "
                         f"first, or use model.step on CPU")
    if device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
        raise ValueError(f"FusedDecoder on {device} runs only in Triton's interpreter (TRITON_INTERPRET=1, "
                         f"capture=False), for tests; use model.step on CPU")
