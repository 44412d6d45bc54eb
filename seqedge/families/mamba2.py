"""Mamba2 (transformers ``Mamba2ForCausalLM``, ``model_type: mamba2``) as a Sequential Attention model.

Per head h with step ``dt = softplus(W_dt x + dt_bias)`` and ``A = -exp(A_log)``, Mamba2's SSD layer reads

    S_t = exp(dt A) S_{t-1} + dt B_t^T x_t,     y_t = C_t S_t + D x_t

which is the gated rule with k = B, q = C, v = x, beta = dt, one decay per head (``mixer.gate = softplus``),
read-out scale 1 and the D skip. B and C are shared by the heads of each of ``n_groups`` groups (grouped key
heads); one short conv (with bias) runs over x, B, C; the output is Mamba2's gated RMSNorm
``RMSNorm(y * SiLU(z))`` over ``n_groups`` groups; blocks have no MLP. The state ``[B, H, N, P]`` is the
transpose of transformers' ``[B, H, P, N]``; the conv tail keeps transformers' conv state with the channels
reordered as (C, B, x), which is how seqedge's projection and conv are laid out (q, k, v).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from ..config import MixerParts, SequentialAttentionConfig
from .hf_dir import HFModelDir, as_float, outer_weights, refuse_unless, require, take

if TYPE_CHECKING:
    import torch

FAMILY = "mamba2"
MODEL_TYPES = ("mamba2",)
DEFAULT_CHUNK = 64


def config_from_hf(hf: dict[str, Any]) -> SequentialAttentionConfig:
    """The seqedge config of a Mamba2 ``config.json``; refuses what it cannot represent exactly."""
    get = lambda key: require(hf, key, FAMILY)                                   # noqa: E731
    hidden, heads, head_dim = int(get("hidden_size")), int(get("num_heads")), int(get("head_dim"))
    groups = int(hf.get("n_groups", 1))
    inner = int(hf.get("expand", 2) * hidden)
    refuse_unless(inner == heads * head_dim, FAMILY, "expand", hf.get("expand"),
                  f"expand * hidden_size ({inner}) must equal num_heads * head_dim ({heads * head_dim})")
    refuse_unless(hf.get("hidden_act", "silu") == "silu", FAMILY, "hidden_act", hf.get("hidden_act"),
                  "seqedge's short conv applies SiLU only")
    refuse_unless(not hf.get("use_bias", False), FAMILY, "use_bias", hf.get("use_bias"),
                  "the in/out projections of seqedge's mixer have no bias")
    try:
        limit = tuple(as_float(x) for x in hf.get("time_step_limit", (0.0, math.inf)))
    except (TypeError, ValueError):
        limit = None
    refuse_unless(limit == (0.0, math.inf), FAMILY, "time_step_limit", hf.get("time_step_limit"),
                  "a clamped step size is not part of seqedge's softplus gate (only (0.0, inf))")
    refuse_unless(heads % groups == 0, FAMILY, "n_groups", groups, f"num_heads ({heads}) must be a multiple of it")
    parts = MixerParts(gate="softplus", beta="dt", num_key_heads=groups, conv_bias=bool(hf.get("use_conv_bias", True)),
                       skip=True, output="gate_norm", out_norm_size=inner // groups, scale=1.0, mlp=False)
    return SequentialAttentionConfig(
        vocab_size=int(get("vocab_size")), hidden_size=hidden, num_layers=int(get("num_hidden_layers")),
        num_heads=heads, head_k_dim=int(get("state_size")), head_v_dim=head_dim, update_rule="gated",
        conv_kernel=int(hf.get("conv_kernel", 4)), chunk_size=DEFAULT_CHUNK,
        tie_embeddings=bool(hf.get("tie_word_embeddings", False)), norm_eps=float(hf.get("layer_norm_epsilon", 1e-5)),
        mixer=parts)


def _qkv_order(xbc: "torch.Tensor", inner: int, bc: int) -> "torch.Tensor":
    """Rows (or channels) in transformers' (x, B, C) order -> seqedge's (q, k, v) = (C, B, x)."""
    x, b, c = xbc.split([inner, bc, bc], dim=0)
    import torch

    return torch.cat([c, b, x], dim=0)


def state_dict_from_hf(hf: HFModelDir,
                       config: SequentialAttentionConfig) -> tuple[dict[str, "torch.Tensor"], list[str]]:
    """seqedge's weights from transformers' Mamba2 names, and the names of the weights left unused."""
    t = dict(hf.tensors)
    inner, bc, heads = config.value_size, config.key_size, config.num_heads
    out = outer_weights(t, config.tie_embeddings, FAMILY, "backbone.embeddings.weight", "backbone.norm_f.weight")
    for i in range(config.num_layers):
        src, dst = f"backbone.layers.{i}.", f"blocks.{i}."
        z, xbc, dt = take(t, src + "mixer.in_proj.weight", FAMILY).split([inner, inner + 2 * bc, heads], dim=0)
        out[dst + "attn_norm.weight"] = take(t, src + "norm.weight", FAMILY)
        out[dst + "attn.qkv.weight"] = _qkv_order(xbc, inner, bc)
        out[dst + "attn.out_gate.weight"] = z
        out[dst + "attn.dt_proj.weight"] = dt
        out[dst + "attn.conv.weight"] = _qkv_order(take(t, src + "mixer.conv1d.weight", FAMILY), inner, bc)
        if config.mixer.conv_bias:
            out[dst + "attn.conv.bias"] = _qkv_order(take(t, src + "mixer.conv1d.bias", FAMILY), inner, bc)
        out[dst + "attn.dt_bias"] = take(t, src + "mixer.dt_bias", FAMILY)
        out[dst + "attn.A_log"] = take(t, src + "mixer.A_log", FAMILY)
        out[dst + "attn.skip"] = take(t, src + "mixer.D", FAMILY).repeat_interleave(config.head_v_dim)
        out[dst + "attn.out_norm.weight"] = take(t, src + "mixer.norm.weight", FAMILY)
        out[dst + "attn.out_proj.weight"] = take(t, src + "mixer.out_proj.weight", FAMILY)
    return out, sorted(t)
