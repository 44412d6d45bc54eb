"""KDA, Kimi Delta Attention (fla ``KDAForCausalLM``, ``model_type: kda``; transformers ``KimiLinearForCausalLM``,
``model_type: kimi_linear``, when every layer is a KDA layer with a dense MLP) as a Sequential Attention model.

Per value head h, with ``g_t = -exp(A_log[h]) * softplus(W_fb W_fa x_t + dt_bias)`` one log decay per key dim
(``mixer.gate = softplus_key``, rank ``gate_rank`` between the two projections) and ``beta_t = sigmoid(W_b x_t)``
(``2 * sigmoid`` with fla's ``allow_neg_eigval``: ``mixer.beta_scale``), KDA's recurrence reads

    S' = diag(exp g_t) S_{t-1},     S_t = S' + beta_t k_t^T (v_t - k_t S'),     o_t = (q_t / sqrt(dk)) S_t

which is DESIGN's ``delta`` rule with a per-key gate: the scans take g ``[B, T, H, dk]`` as it is. q and k go
through SiLU short convs (no bias) and fla's ``l2norm`` (``qk_norm = rsqrt``); the output is
``RMSNorm_head(o) * sigmoid(W_gb W_ga x + b)`` (a low-rank output gate; transformers' has no bias: zeros);
seqedge's beta projection has a bias: zeros. Blocks have a SwiGLU MLP (``gate_up = cat[gate_proj, up_proj]``).
fla's grouped value heads (``num_v_heads`` a multiple of ``num_heads``) are seqedge's grouped key heads. The
scan state ``[B, H, dk, dv]`` is the state of fla's naive functions and of transformers' cache.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from ..config import MixerParts, SequentialAttentionConfig
from .hf_dir import HFModelDir, UnsupportedModelError, refuse_unless, require, take

if TYPE_CHECKING:
    import torch

FAMILY = "kda"
MODEL_TYPES = ("kda", "kimi_linear")
DEFAULT_CHUNK = 64


def _parts(key_heads: int, heads: int, rank: int, neg_eigval: bool = False) -> MixerParts:
    """``neg_eigval``: beta is ``2 * sigmoid`` (fla's ``allow_neg_eigval``)."""
    return MixerParts(gate="softplus_key", beta="sigmoid", num_key_heads=key_heads if key_heads != heads else 0,
                      qk_norm="rsqrt", skip=False, output="norm_gate", out_gate_act="sigmoid",
                      out_gate_rank=rank, beta_scale=2.0 if neg_eigval else 1.0)


def _fla_config(hf: dict[str, Any]) -> SequentialAttentionConfig:
    """fla's ``KDAConfig``: refuses hybrids, other gates, other activations and every option not exact."""
    get = lambda key: require(hf, key, FAMILY)                                    # noqa: E731
    refuse_unless(hf.get("attn") is None, FAMILY, "attn", hf.get("attn"),
                  "softmax-attention layers of a hybrid are not part of seqedge's mixer")
    refuse_unless(hf.get("use_short_conv", True) is True, FAMILY, "use_short_conv", hf.get("use_short_conv"),
                  "seqedge's mixer always has the short conv")
    refuse_unless(not hf.get("safe_gate", False), FAMILY, "safe_gate", hf.get("safe_gate"),
                  "the lower-bounded gate is not part of seqedge's softplus_key gate")
    refuse_unless(hf.get("lower_bound") is None, FAMILY, "lower_bound", hf.get("lower_bound"),
                  "the lower-bounded gate is not part of seqedge's softplus_key gate")
    refuse_unless(hf.get("hidden_act", "swish") == "swish", FAMILY, "hidden_act", hf.get("hidden_act"),
                  "seqedge's MLP is SwiGLU only")
    refuse_unless(hf.get("attnres_block_size") is None, FAMILY, "attnres_block_size", hf.get("attnres_block_size"),
                  "attention residuals are not part of seqedge's block")
    hidden, heads, head_dim = int(get("hidden_size")), int(get("num_heads")), int(get("head_dim"))
    v_heads = int(hf.get("num_v_heads") or heads)
    refuse_unless(v_heads % heads == 0, FAMILY, "num_v_heads", hf.get("num_v_heads"),
                  f"it must be a multiple of num_heads ({heads}): each key head serves a group of value heads")
    expand_v = float(hf.get("expand_v", 1.0))
    head_v_dim = int(head_dim * expand_v)
    refuse_unless(head_v_dim == head_dim * expand_v, FAMILY, "expand_v", hf.get("expand_v"),
                  f"head_dim * expand_v ({head_dim * expand_v}) must be an integer")
    mlp = hf.get("intermediate_size")
    if mlp is None:                                 # fla's GatedMLP rule: 2/3 * hidden_ratio * hidden, up to 256
        mlp = int(hidden * (hf.get("hidden_ratio") or 4) * 2 / 3)
        mlp = 256 * math.ceil(mlp / 256)
    return SequentialAttentionConfig(
        vocab_size=int(get("vocab_size")), hidden_size=hidden, num_layers=int(get("num_hidden_layers")),
        num_heads=v_heads, head_k_dim=head_dim, head_v_dim=head_v_dim, update_rule="delta",
        conv_kernel=int(hf.get("conv_size", 4)), gate_rank=head_v_dim, chunk_size=DEFAULT_CHUNK,
        intermediate_size=int(mlp), tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
        norm_eps=float(hf.get("norm_eps", 1e-6)),
        mixer=_parts(heads, v_heads, head_v_dim, neg_eigval=bool(hf.get("allow_neg_eigval", False))))


def _kimi_layer_types(hf: dict[str, Any]) -> tuple[list[Any], list[Any]]:
    """``layer_types`` and ``mlp_layer_types`` as transformers' ``KimiLinearConfig`` derives them."""
    layers = int(require(hf, "num_hidden_layers", FAMILY))
    linear = hf.get("linear_attn_config") or {}
    types = hf.get("layer_types")
    if types is None and "full_attn_layers" in linear and "kda_layers" in linear:
        types = [None] * layers
        for i in linear["full_attn_layers"]:
            types[i - 1] = "full_attention"          # 1-indexed in the checkpoint
        for i in linear["kda_layers"]:
            types[i - 1] = "linear_attention"
    if types is None:
        types = ["full_attention" if i and i % 4 == 0 else "linear_attention" for i in range(layers)]
    mlp_types = hf.get("mlp_layer_types")
    if mlp_types is None:
        dense = int(hf.get("first_k_dense_replace", 1))
        mlp_types = ["dense" if i < dense else "sparse" for i in range(layers)]
    return list(types), list(mlp_types)


def _kimi_config(hf: dict[str, Any]) -> SequentialAttentionConfig:
    """transformers' ``KimiLinearConfig`` with only KDA layers and dense MLPs; hybrids and MoE are refused."""
    get = lambda key: require(hf, key, FAMILY)                                    # noqa: E731
    types, mlp_types = _kimi_layer_types(hf)
    refuse_unless(all(t == "linear_attention" for t in types), FAMILY, "layer_types", types,
                  "softmax-attention layers of a hybrid are not part of seqedge's mixer (only linear_attention)")
    refuse_unless(all(t == "dense" for t in mlp_types), FAMILY, "mlp_layer_types", mlp_types,
                  "mixture-of-experts MLPs are not part of seqedge's block (only dense)")
    refuse_unless(hf.get("hidden_act", "silu") == "silu", FAMILY, "hidden_act", hf.get("hidden_act"),
                  "seqedge's short conv and MLP apply SiLU only")
    linear = hf.get("linear_attn_config") or {}
    head_dim = int(linear.get("head_dim", hf.get("linear_head_dim", 128)))
    heads = int(linear.get("num_heads", hf.get("linear_num_heads", 32)))
    kernel = int(linear.get("short_conv_kernel_size", hf.get("linear_conv_kernel_dim", 4)))
    return SequentialAttentionConfig(
        vocab_size=int(get("vocab_size")), hidden_size=int(get("hidden_size")), num_layers=len(types),
        num_heads=heads, head_k_dim=head_dim, head_v_dim=head_dim, update_rule="delta", conv_kernel=kernel,
        gate_rank=head_dim, chunk_size=DEFAULT_CHUNK, intermediate_size=int(get("intermediate_size")),
        tie_embeddings=False, norm_eps=float(hf.get("rms_norm_eps", 1e-5)), mixer=_parts(heads, heads, head_dim))


def config_from_hf(hf: dict[str, Any]) -> SequentialAttentionConfig:
    """The seqedge config of a KDA ``config.json`` (fla's or transformers'); refuses what is not exact."""
    return _kimi_config(hf) if hf.get("model_type") == "kimi_linear" else _fla_config(hf)


# weight names as the sources write them (transformers saves kimi_linear in Moonshot's checkpoint names: the forget
# gate's weights on the attention, one conv per q, k, v, and a dense MLP under ``block_sparse_moe`` or ``mlp``)
_FLA = dict(attn_norm="attn_norm", mlp_norm="mlp_norm", attn="attn.", fa="f_proj.0", fb="f_proj.1",
            ga="g_proj.0", gb="g_proj.1")
_KIMI = dict(attn_norm="input_layernorm", mlp_norm="post_attention_layernorm", attn="self_attn.", fa="f_a_proj",
             fb="f_b_proj", ga="g_a_proj", gb="g_b_proj")


def _layer(t: dict[str, "torch.Tensor"], src: str, dst: str, names: dict[str, str]) -> dict[str, "torch.Tensor"]:
    """One block's weights: ``src`` the source's prefix, ``dst`` seqedge's, ``names`` the source's sub-names."""
    import torch

    a, n = src + names["attn"], names
    out = {dst + "attn_norm.weight": take(t, src + n["attn_norm"] + ".weight", FAMILY),
           dst + "mlp_norm.weight": take(t, src + n["mlp_norm"] + ".weight", FAMILY)}
    out[dst + "attn.qkv.weight"] = torch.cat([take(t, f"{a}{x}_proj.weight", FAMILY) for x in "qkv"])
    out[dst + "attn.conv.weight"] = torch.cat([take(t, f"{a}{x}_conv1d.weight", FAMILY) for x in "qkv"])
    out[dst + "attn.dt_down.weight"] = take(t, a + n["fa"] + ".weight", FAMILY)
    out[dst + "attn.dt_up.weight"] = take(t, a + n["fb"] + ".weight", FAMILY)
    out[dst + "attn.dt_bias"] = take(t, a + "dt_bias", FAMILY).reshape(-1)
    out[dst + "attn.A_log"] = take(t, a + "A_log", FAMILY).reshape(-1)
    beta = take(t, a + "b_proj.weight", FAMILY)
    out[dst + "attn.beta.weight"] = beta
    out[dst + "attn.beta.bias"] = torch.zeros(beta.shape[0])       # KDA's b_proj has no bias
    out[dst + "attn.out_gate_down.weight"] = take(t, a + n["ga"] + ".weight", FAMILY)
    up = take(t, a + n["gb"] + ".weight", FAMILY)
    out[dst + "attn.out_gate.weight"] = up
    out[dst + "attn.out_gate.bias"] = (take(t, a + n["gb"] + ".bias", FAMILY) if n is _FLA   # fla's has a bias,
                                       else torch.zeros(up.shape[0]))                      # transformers' none
    out[dst + "attn.out_norm.weight"] = take(t, a + "o_norm.weight", FAMILY)
    out[dst + "attn.out_proj.weight"] = take(t, a + "o_proj.weight", FAMILY)
    mlp = src + ("block_sparse_moe." if src + "block_sparse_moe.down_proj.weight" in t else "mlp.")
    out[dst + "mlp.gate_up.weight"] = torch.cat([take(t, f"{mlp}{x}_proj.weight", FAMILY) for x in ("gate", "up")])
    out[dst + "mlp.down.weight"] = take(t, mlp + "down_proj.weight", FAMILY)
    return out


def state_dict_from_hf(hf: HFModelDir,
                       config: SequentialAttentionConfig) -> tuple[dict[str, "torch.Tensor"], list[str]]:
    """seqedge's weights from fla's or transformers' KDA names, and the names of the weights left unused."""
    t = dict(hf.tensors)
    kimi = hf.model_type == "kimi_linear"
    embed = "model.embed_tokens.weight" if kimi else "model.embeddings.weight"
    out = {"embed.weight": take(t, embed, FAMILY), "norm.weight": take(t, "model.norm.weight", FAMILY)}
    if not config.tie_embeddings:
        if "lm_head.weight" not in t:
            raise UnsupportedModelError(f"{FAMILY}: config.json tie_word_embeddings="
                                        f"{hf.config.get('tie_word_embeddings')!r} but the weights have no "
                                        f"lm_head.weight (transformers' kimi_linear never ties its head)")
        out["head.weight"] = take(t, "lm_head.weight", FAMILY)
    else:
        t.pop("lm_head.weight", None)                 # tied: the shared tensor may be stored twice
    for i in range(config.num_layers):
        out.update(_layer(t, f"model.layers.{i}.", f"blocks.{i}.", _KIMI if kimi else _FLA))
    return out, sorted(t)
