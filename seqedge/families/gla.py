"""GLA (fla ``GLAForCausalLM``, ``model_type: gla``) as a Sequential Attention model.

fla's ``GatedLinearAttention`` layer reads, per head with key dim dk and value dim dv,

    g_t = logsigmoid(W_up W_down x_t + b) / 16,     S_t = diag(exp g_t) S_{t-1} + k_t^T v_t,
    o_t = (q_t / sqrt(dk)) S_t,                     y_t = W_o(RMSNorm_head(o_t) * swish(W_g x_t))

which is the gated rule with beta = 1 (``mixer.beta = none``), the low-rank ``logsigmoid`` gate per key dim
(normaliser 16: fla's layer default, which ``GLAConfig`` does not pass on), no read-out skip, and the native
output order (norm, then gate, per head). q, k, v are the plain projections (``use_short_conv: false``, fla-hub's
GLA checkpoints: no conv, so a layer's state is its scan matrix alone) or, with ``use_short_conv: true``, each
passes its own SiLU short conv without bias (depthwise: the same as seqedge's one conv over q, k, v). Blocks end
with fla's ``GatedMLP`` (SwiGLU; ``gate_proj``, ``up_proj`` -> ``mlp.gate_up``). The scan state ``[B, H, dk, dv]``
is fla's naive recurrent state; its fused kernels keep the transpose (``state_v_first``).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from ..config import MixerParts, SequentialAttentionConfig
from .hf_dir import HFModelDir, outer_weights, refuse_unless, require, take

if TYPE_CHECKING:
    import torch

FAMILY = "gla"
MODEL_TYPES = ("gla",)
DEFAULT_CHUNK = 64
GATE_RANK = 16            # fla's gate_low_rank_dim: the layer default, not a GLAConfig option
GATE_NORMALIZER = 16.0    # fla's gate_logit_normalizer: likewise


def _mlp_width(hf: dict[str, Any], hidden: int) -> int:
    """fla's GatedMLP width: ``intermediate_size``, else ``2/3 * hidden_ratio * hidden`` rounded up to 256."""
    if hf.get("intermediate_size") is not None:
        return int(hf["intermediate_size"])
    ratio = hf.get("hidden_ratio") or 4
    width = int(hidden * ratio * 2 / 3)
    return 256 * ((width + 255) // 256)


def _refuse_options(hf: dict[str, Any]) -> None:
    """One-line refusals for every GLAConfig option seqedge's mixer does not compute exactly."""
    for key, default, why in (
            ("attn", None, "hybrid softmax-attention layers are not part of seqedge's mixer"),
            ("feature_map", None, "a feature map on q and k is not part of seqedge's mixer"),
            ("clamp_min", None, "a clamped log gate is not part of seqedge's logsigmoid gate"),
            ("attnres_block_size", None, "attention residuals are not part of seqedge's blocks"),
            ("use_output_gate", True, "seqedge's GLA output is RMSNorm(o) * swish(W_g x): the gate is needed"),
            ("hidden_act", "swish", "seqedge's output gate and MLP apply swish (SiLU) only"),
            ("use_gk", True, "fla 0.6's layer ignores it (always a key gate): the checkpoint may expect otherwise"),
            ("use_gv", False, "fla 0.6's layer ignores it (never a value gate): the checkpoint may expect otherwise"),
            ("conv_bias", False, "fla 0.6's GLA conv has no bias: the checkpoint may expect one")):
        refuse_unless(hf.get(key, default) == default, FAMILY, key, hf.get(key), why)
    heads = require(hf, "num_heads", FAMILY)
    refuse_unless(hf.get("num_kv_heads") in (None, heads), FAMILY, "num_kv_heads", hf.get("num_kv_heads"),
                  f"fla's groups share k, v and the gate among query heads (num_heads={heads}); seqedge's grouped "
                  "heads share q and k among value heads")


def config_from_hf(hf: dict[str, Any]) -> SequentialAttentionConfig:
    """The seqedge config of a GLA ``config.json``; refuses what it cannot represent exactly."""
    get = lambda key: require(hf, key, FAMILY)                                   # noqa: E731
    _refuse_options(hf)
    hidden, heads = int(get("hidden_size")), int(get("num_heads"))
    sizes = {}
    for key, default in (("expand_k", 0.5), ("expand_v", 1.0)):
        width = hidden * float(hf.get(key, default))
        refuse_unless(math.isclose(width, round(width)) and round(width) % heads == 0, FAMILY, key, hf.get(key),
                      f"hidden_size * {key} must be an integer multiple of num_heads ({heads})")
        sizes[key] = round(width) // heads
    conv = bool(hf.get("use_short_conv", False))
    parts = MixerParts(gate="logsigmoid", gate_normalizer=GATE_NORMALIZER, beta="none", short_conv=conv,
                       qk_norm="none", skip=False, output="norm_gate")
    return SequentialAttentionConfig(
        vocab_size=int(get("vocab_size")), hidden_size=hidden, num_layers=int(get("num_hidden_layers")),
        num_heads=heads, head_k_dim=sizes["expand_k"], head_v_dim=sizes["expand_v"], update_rule="gated",
        conv_kernel=int(hf.get("conv_size", 4)), gate_rank=GATE_RANK, chunk_size=DEFAULT_CHUNK,
        intermediate_size=_mlp_width(hf, hidden), tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
        norm_eps=float(hf.get("norm_eps", 1e-6)), mixer=parts)


def state_dict_from_hf(hf: HFModelDir,
                       config: SequentialAttentionConfig) -> tuple[dict[str, "torch.Tensor"], list[str]]:
    """seqedge's weights from fla's GLA names, and the names of the weights left unused."""
    import torch

    t = dict(hf.tensors)
    out = outer_weights(t, config.tie_embeddings, FAMILY, "model.embeddings.weight", "model.norm.weight")
    for i in range(config.num_layers):
        src, dst = f"model.layers.{i}.", f"blocks.{i}."
        a = src + "attn."
        qkv = [take(t, a + f"{x}_proj.weight", FAMILY) for x in "qkv"]
        out[dst + "attn_norm.weight"] = take(t, src + "attn_norm.weight", FAMILY)
        out[dst + "attn.qkv.weight"] = torch.cat(qkv, dim=0)
        if config.mixer.short_conv:
            out[dst + "attn.conv.weight"] = torch.cat([take(t, a + f"{x}_conv1d.weight", FAMILY) for x in "qkv"])
        out[dst + "attn.gate_down.weight"] = take(t, a + "gk_proj.0.weight", FAMILY)
        out[dst + "attn.gate_up.weight"] = take(t, a + "gk_proj.1.weight", FAMILY)
        out[dst + "attn.gate_up.bias"] = take(t, a + "gk_proj.1.bias", FAMILY)
        out[dst + "attn.out_gate.weight"] = take(t, a + "g_proj.weight", FAMILY)
        if not hf.config.get("elementwise_affine", True):
            out[dst + "attn.out_norm.weight"] = torch.ones(config.head_v_dim)     # no weight: the same function
        else:
            fused = hf.config.get("fuse_norm", True)
            out[dst + "attn.out_norm.weight"] = take(t, a + ("g_norm_swish_gate" if fused else "g_norm") + ".weight",
                                                     FAMILY)
        out[dst + "attn.out_proj.weight"] = take(t, a + "o_proj.weight", FAMILY)
        out[dst + "mlp_norm.weight"] = take(t, src + "mlp_norm.weight", FAMILY)
        out[dst + "mlp.gate_up.weight"] = torch.cat([take(t, src + "mlp.gate_proj.weight", FAMILY),
                                                     take(t, src + "mlp.up_proj.weight", FAMILY)], dim=0)
        out[dst + "mlp.down.weight"] = take(t, src + "mlp.down_proj.weight", FAMILY)
    return out, sorted(t)
