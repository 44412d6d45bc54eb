"""Gated DeltaNet as a Sequential Attention model: fla's ``GatedDeltaNetForCausalLM`` (``model_type:
gated_deltanet``) here, and transformers' linear-attention layers of the same math (``qwen3_next``,
``qwen3_5_text``, ``olmo_hybrid``) in :mod:`seqedge.families.gdn_transformers`.

Per value head h, with ``beta = sigmoid(W_b x)``, ``g = -exp(A_log) * softplus(W_a x + dt_bias)`` and q, k
L2-normalised (``x * rsqrt(|x|^2 + 1e-6)``), both read

    S' = exp(g) S_{t-1},     S_t = S' + beta k^T (v - k S'),     o_t = (q / sqrt(dk)) S_t

which is seqedge's delta rule with the softplus gate per head, the sigmoid beta (its bias loaded as zeros), no
read-out skip and ``RMSNorm_head(o) * SiLU(W_g x)`` as the output. Key heads serve ``num_v_heads / num_heads``
consecutive value heads (grouped value heads). The three q/k/v short convs (depthwise, SiLU, no bias) are one
conv over the concatenated channels. Blocks end in a SwiGLU MLP.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from ..config import MixerParts, SequentialAttentionConfig
from .hf_dir import HFModelDir, refuse_unless, take

if TYPE_CHECKING:
    import torch

FAMILY = "gated_deltanet"
MODEL_TYPES = ("gated_deltanet",)      # transformers' model types: seqedge/families/gdn_transformers.py
DEFAULT_CHUNK = 64

# fla's GatedDeltaNetConfig defaults, for keys a config.json leaves out
FLA_DEFAULTS: dict[str, Any] = dict(hidden_size=2048, expand_v=2.0, use_gate=True, use_short_conv=True,
                                    allow_neg_eigval=False, conv_size=4, head_dim=256, num_heads=6, num_v_heads=None,
                                    hidden_ratio=4, intermediate_size=None, hidden_act="swish",
                                    num_hidden_layers=21, norm_eps=1e-6, attn=None, tie_word_embeddings=False,
                                    vocab_size=32000, attnres_block_size=None, output_gate_activation="swish",
                                    conv_bias=False)


def config_from_hf(hf: dict[str, Any]) -> SequentialAttentionConfig:
    """The seqedge config of fla's Gated DeltaNet ``config.json``; refuses what it cannot represent exactly."""
    return _fla_config(hf)


def mixer_parts(key_heads: int, value_heads: int, *, neg_eigval: bool = False,
                out_norm_eps: float = 0.0) -> MixerParts:
    """The layer's parts; ``neg_eigval``: beta is ``2 * sigmoid`` (fla's ``allow_neg_eigval``), ``out_norm_eps``:
    the gated norm's own eps (0: the model's)."""
    grouped = key_heads if value_heads != key_heads else 0
    return MixerParts(gate="softplus", beta="sigmoid", num_key_heads=grouped, qk_norm="rsqrt", skip=False,
                      output="norm_gate", beta_scale=2.0 if neg_eigval else 1.0, out_norm_eps=out_norm_eps)


def check_heads(label: str, key: str, key_heads: int, value_heads: int) -> None:
    refuse_unless(value_heads >= key_heads and value_heads % key_heads == 0, label, key, value_heads,
                  f"each of the {key_heads} key heads must serve a whole group of value heads (a multiple of it)")


def fla_intermediate_size(hidden: int, hidden_ratio: Any, intermediate: Any) -> int:
    """fla's ``GatedMLP`` width: ``intermediate_size``, else ``2/3 * hidden_ratio * hidden`` rounded up to 256."""
    if intermediate is not None:
        return int(intermediate)
    ratio = 4 if hidden_ratio is None else hidden_ratio
    raw = int(hidden * ratio * 2 / 3)
    return 256 * ((raw + 256 - 1) // 256)


def _fla_config(hf: dict[str, Any]) -> SequentialAttentionConfig:
    label = "gated_deltanet"
    get = lambda key: hf.get(key, FLA_DEFAULTS[key])                             # noqa: E731
    refuse_unless(get("attn") is None, label, "attn", get("attn"),
                  "hybrid models (softmax-attention layers) are not supported yet")
    refuse_unless(get("attnres_block_size") is None, label, "attnres_block_size", get("attnres_block_size"),
                  "attention residuals across blocks are not part of seqedge's block")
    refuse_unless(get("use_gate") is True, label, "use_gate", get("use_gate"),
                  "seqedge's mixer always gates its output (RMSNorm(o) * SiLU(W_g x))")
    refuse_unless(get("use_short_conv") is True, label, "use_short_conv", get("use_short_conv"),
                  "seqedge's mixer always runs the short conv over q, k, v")
    refuse_unless(not get("conv_bias"), label, "conv_bias", get("conv_bias"), "fla's short convs have no bias")
    refuse_unless(get("hidden_act") == "swish", label, "hidden_act", get("hidden_act"),
                  "seqedge's MLP is a SwiGLU (swish)")
    refuse_unless(get("output_gate_activation") in ("swish", "silu"), label, "output_gate_activation",
                  get("output_gate_activation"), "seqedge's output gate is SiLU (swish)")
    hidden, heads, head_dim = int(get("hidden_size")), int(get("num_heads")), int(get("head_dim"))
    value_heads = int(get("num_v_heads") if get("num_v_heads") is not None else heads)
    check_heads(label, "num_v_heads", heads, value_heads)
    head_v = head_dim * float(get("expand_v"))
    refuse_unless(math.isclose(head_v, round(head_v), rel_tol=1e-5), label, "expand_v", get("expand_v"),
                  f"head_dim * expand_v ({head_v}) must be an integer")
    return SequentialAttentionConfig(
        vocab_size=int(get("vocab_size")), hidden_size=hidden, num_layers=int(get("num_hidden_layers")),
        num_heads=value_heads, head_k_dim=head_dim, head_v_dim=int(round(head_v)), update_rule="delta",
        conv_kernel=int(get("conv_size")), chunk_size=DEFAULT_CHUNK,
        intermediate_size=fla_intermediate_size(hidden, get("hidden_ratio"), get("intermediate_size")),
        tie_embeddings=bool(get("tie_word_embeddings")), norm_eps=float(get("norm_eps")),
        mixer=mixer_parts(heads, value_heads, neg_eigval=bool(get("allow_neg_eigval"))))


def state_dict_from_hf(hf: HFModelDir,
                       config: SequentialAttentionConfig) -> tuple[dict[str, "torch.Tensor"], list[str]]:
    """seqedge's weights from fla's names, and the names of the weights left unused."""
    return _fla_weights(dict(hf.tensors), config)


def head_weight(t: dict[str, "torch.Tensor"], out: dict[str, "torch.Tensor"], config: SequentialAttentionConfig,
                label: str) -> None:
    """``head.weight`` from ``lm_head.weight`` unless the embeddings are tied."""
    if not config.tie_embeddings:
        out["head.weight"] = take(t, "lm_head.weight", label)
    else:
        t.pop("lm_head.weight", None)                     # tied: the shared tensor may be stored twice


def swiglu_weights(t: dict[str, "torch.Tensor"], src: str, dst: str, label: str) -> dict[str, "torch.Tensor"]:
    """seqedge's ``gate_up`` (cat[gate_proj, up_proj]) and ``down`` from the source MLP's three linears."""
    import torch

    gate, up = take(t, src + "gate_proj.weight", label), take(t, src + "up_proj.weight", label)
    down = take(t, src + "down_proj.weight", label)
    return {dst + "gate_up.weight": torch.cat([gate, up], dim=0), dst + "down.weight": down}


def _fla_weights(t: dict[str, "torch.Tensor"],
                 config: SequentialAttentionConfig) -> tuple[dict[str, "torch.Tensor"], list[str]]:
    import torch

    label = "gated_deltanet"
    out = {"embed.weight": take(t, "model.embeddings.weight", label),
           "norm.weight": take(t, "model.norm.weight", label)}
    head_weight(t, out, config, label)
    for i in range(config.num_layers):
        src, dst = f"model.layers.{i}.", f"blocks.{i}."
        a = src + "attn."
        out[dst + "attn_norm.weight"] = take(t, src + "attn_norm.weight", label)
        out[dst + "attn.qkv.weight"] = torch.cat([take(t, a + f"{x}_proj.weight", label) for x in "qkv"], dim=0)
        out[dst + "attn.conv.weight"] = torch.cat([take(t, a + f"{x}_conv1d.weight", label) for x in "qkv"], dim=0)
        out[dst + "attn.dt_proj.weight"] = take(t, a + "a_proj.weight", label)
        beta = take(t, a + "b_proj.weight", label)
        out[dst + "attn.beta.weight"] = beta
        out[dst + "attn.beta.bias"] = beta.new_zeros(beta.shape[0])              # fla's b_proj has no bias
        out[dst + "attn.dt_bias"] = take(t, a + "dt_bias", label)
        out[dst + "attn.A_log"] = take(t, a + "A_log", label)
        out[dst + "attn.out_gate.weight"] = take(t, a + "g_proj.weight", label)
        out[dst + "attn.out_norm.weight"] = take(t, a + "o_norm.weight", label)
        out[dst + "attn.out_proj.weight"] = take(t, a + "o_proj.weight", label)
        out[dst + "mlp_norm.weight"] = take(t, src + "mlp_norm.weight", label)
        out.update(swiglu_weights(t, src + "mlp.", dst + "mlp.", label))
    return out, sorted(t)
