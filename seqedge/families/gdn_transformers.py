"""transformers' Gated DeltaNet linear-attention layers: Qwen3-Next (``qwen3_next``), Qwen3.5's text model
(``qwen3_5_text``) and OLMo-hybrid (``olmo_hybrid``).

All three compute the layer of seqedge/families/gated_deltanet.py: one depthwise short conv (SiLU, no bias) over
[q heads, k heads, v heads], ``g = -exp(A_log) * softplus(a + dt_bias)``, ``beta = sigmoid(b)``, L2-normed q/k,
key heads shared by consecutive value heads, ``RMSNorm_head(o) * SiLU(z)``, then ``out_proj``; blocks are
pre-norm with a SwiGLU MLP. They differ in how the projections are stored and in the norms:

- ``qwen3_next``: ``in_proj_qkvz`` and ``in_proj_ba`` packed per key head; block and final norms ``1 + weight``;
  the gated norm ``norm`` with ``rms_norm_eps``.
- ``qwen3_5_text``: ``in_proj_qkv`` (rows already [q, k, v]), ``in_proj_z``, ``in_proj_b``, ``in_proj_a``;
  norms as Qwen3-Next. The multimodal wrapper (``qwen3_5``) always carries a vision tower: refused.
- ``olmo_hybrid``: ``q/k/v_proj``, ``q/k/v_conv1d``, ``a_proj``, ``b_proj``, ``g_proj`` (the output gate),
  ``o_proj``; plain ``weight`` norms (``attention_layer_norm``, ``feedforward_layer_norm`` in its checkpoints);
  the gated norm ``o_norm`` with eps 1e-5 whatever ``rms_norm_eps`` says (``mixer.out_norm_eps``), and
  ``beta = 2 * sigmoid(b)`` unless ``linear_allow_neg_eigval`` is false (``mixer.beta_scale`` 2; transformers'
  default). transformers' class requires at least one attention layer, so a real
  OLMo-hybrid is always a hybrid (refused); its linear-attention layers map, and a config.json whose layer_types
  are all ``linear_attention`` imports.

Only configs whose every layer is linear attention with a dense MLP import; everything else is refused naming
the config key. Keys that only attention layers read (``rope_parameters``, ``num_key_value_heads``, ``head_dim``,
``attention_bias``) are ignored; ``num_attention_heads`` matters only as OLMo-hybrid's fallback head count.
``mtp.*`` weights (a multi-token-prediction head) are dropped, as transformers' causal-LM classes drop them on
load.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..config import SequentialAttentionConfig
from .gated_deltanet import DEFAULT_CHUNK, check_heads, head_weight, mixer_parts, swiglu_weights
from .hf_dir import HFModelDir, UnsupportedModelError, refuse_unless, require, take

if TYPE_CHECKING:
    import torch

    Tensors = dict[str, torch.Tensor]

FAMILY = "gated_deltanet"
OLMO_OUT_NORM_EPS = 1e-5          # OLMo-hybrid's o_norm: a constant, not rms_norm_eps

_LINEAR_KEYS: dict[str, Any] = dict(hidden_act="silu", rms_norm_eps=1e-6, tie_word_embeddings=False,
                                    linear_conv_kernel_dim=4, layer_types=None)
# transformers' config defaults, for keys a config.json leaves out
QWEN3_NEXT_DEFAULTS: dict[str, Any] = dict(_LINEAR_KEYS, intermediate_size=5632, num_hidden_layers=48,
                                           linear_key_head_dim=128, linear_value_head_dim=128,
                                           linear_num_key_heads=16, linear_num_value_heads=32,
                                           decoder_sparse_step=1, num_experts=512, mlp_only_layers=None,
                                           full_attention_interval=4)
QWEN3_5_DEFAULTS: dict[str, Any] = dict(_LINEAR_KEYS, intermediate_size=12288, num_hidden_layers=32,
                                        linear_key_head_dim=128, linear_value_head_dim=128,
                                        linear_num_key_heads=16, linear_num_value_heads=32,
                                        full_attention_interval=4)
OLMO_HYBRID_DEFAULTS: dict[str, Any] = dict(_LINEAR_KEYS, intermediate_size=11008, num_hidden_layers=32,
                                            num_attention_heads=30, linear_num_key_heads=None,
                                            linear_num_value_heads=None, linear_key_head_dim=None,
                                            linear_value_head_dim=None, linear_allow_neg_eigval=True)
# multimodal wrappers and mixture-of-experts variants: the key that rules each out
WRAPPERS = {"qwen3_5": "vision_config", "qwen3_5_moe": "vision_config", "qwen3_5_moe_text": "num_experts"}


@dataclass(frozen=True)
class Layout:
    """Where one model type keeps the layer's parts: config defaults and rules, weight names, norm form."""

    defaults: dict[str, Any]
    default_layer_types: Callable[[Callable[[str], Any], int], list[str]]
    heads: Callable[[Callable[[str], Any]], tuple[int, int, int, int]]  # key heads, value heads, dk, dv
    checks: Callable[[Callable[[str], Any], str, int], None]            # the type's own refusals
    parts: Callable[[Callable[[str], Any]], dict[str, Any]]              # -> the type's own mixer_parts options
    projections: Callable[["Tensors", str, SequentialAttentionConfig, str], tuple]   # -> qkv, z, b, a
    conv: Callable[["Tensors", str, str], "torch.Tensor"]                             # -> [C, 1, K]
    one_plus_norms: bool          # block and final norms scale by 1 + weight
    block_norms: tuple[str, str]  # before the mixer, before the MLP
    out_norm: str
    out_proj: str


def _interval_types(get: Callable[[str], Any], layers: int) -> list[str]:
    every = int(get("full_attention_interval"))
    return ["full_attention" if (i + 1) % every == 0 else "linear_attention" for i in range(layers)]


def _olmo_types(get: Callable[[str], Any], layers: int) -> list[str]:
    types = ["full_attention" if i % 4 == 3 else "linear_attention" for i in range(layers)]
    if "full_attention" not in types:
        types[-1] = "full_attention"                       # transformers forces one attention layer
    return types


def _qwen_heads(get: Callable[[str], Any]) -> tuple[int, int, int, int]:
    return (int(get("linear_num_key_heads")), int(get("linear_num_value_heads")), int(get("linear_key_head_dim")),
            int(get("linear_value_head_dim")))


def _olmo_heads(get: Callable[[str], Any]) -> tuple[int, int, int, int]:
    """OLMo-hybrid's fallbacks: heads from ``num_attention_heads``, dk = 0.75 hidden / key heads, dv = 2 dk."""
    pick = lambda key, fallback: fallback if get(key) is None else int(get(key))     # noqa: E731
    key_heads = pick("linear_num_key_heads", int(get("num_attention_heads")))
    value_heads = pick("linear_num_value_heads", int(get("num_attention_heads")))
    dk = pick("linear_key_head_dim", int(0.75 * int(get("hidden_size")) / key_heads))
    return key_heads, value_heads, dk, pick("linear_value_head_dim", 2 * dk)


def _qwen3_next_checks(get: Callable[[str], Any], label: str, layers: int) -> None:
    experts, step = int(get("num_experts")), int(get("decoder_sparse_step"))
    dense_only = set(get("mlp_only_layers") or [])
    sparse = [i for i in range(layers) if i not in dense_only and experts > 0 and (i + 1) % step == 0]
    refuse_unless(not sparse, label, "num_experts", experts,
                  f"layers {sparse[:4]}{'...' if len(sparse) > 4 else ''} would be mixture-of-experts MLPs; "
                  f"seqedge imports dense MLPs only (num_experts: 0, or mlp_only_layers naming every layer)")


def _unpack_qwen3_next(t: "Tensors", a: str, config: SequentialAttentionConfig, label: str) -> tuple:
    """Rows of ``in_proj_qkvz`` / ``in_proj_ba``, packed per key head as [q, k, v_group, z_group] and
    [b_group, a_group], -> the rows of [q, k, v], z, b, a in head order."""
    import torch

    qkvz, ba = take(t, a + "in_proj_qkvz.weight", label), take(t, a + "in_proj_ba.weight", label)
    key_heads, dk, dv = config.key_heads, config.head_k_dim, config.head_v_dim
    group = config.num_heads // key_heads
    try:
        per_head = qkvz.reshape(key_heads, 2 * dk + 2 * group * dv, -1)
        q, k, v, z = per_head.split([dk, dk, group * dv, group * dv], dim=1)
        b, dt = ba.reshape(key_heads, 2 * group, -1).split([group, group], dim=1)
    except RuntimeError as err:
        raise UnsupportedModelError(f"{label}: in_proj_qkvz/in_proj_ba have shapes {tuple(qkvz.shape)}, "
                                    f"{tuple(ba.shape)}, which the config's head sizes do not explain: {err}")
    q, k, v, z, b, dt = (x.reshape(-1, x.shape[-1]) for x in (q, k, v, z, b, dt))
    return torch.cat([q, k, v], dim=0), z, b, dt


def _split_qwen3_5(t: "Tensors", a: str, config: SequentialAttentionConfig, label: str) -> tuple:
    return tuple(take(t, a + f"in_proj_{x}.weight", label) for x in ("qkv", "z", "b", "a"))


def _split_olmo(t: "Tensors", a: str, config: SequentialAttentionConfig, label: str) -> tuple:
    import torch

    qkv = torch.cat([take(t, a + f"{x}_proj.weight", label) for x in "qkv"], dim=0)
    return (qkv, *(take(t, a + f"{x}_proj.weight", label) for x in "gba"))


def _fused_conv(t: "Tensors", a: str, label: str) -> "torch.Tensor":
    return take(t, a + "conv1d.weight", label)


def _split_conv(t: "Tensors", a: str, label: str) -> "torch.Tensor":
    """OLMo-hybrid's checkpoints store the conv as q/k/v_conv1d; transformers' save_pretrained cuts its fused conv
    into three near-equal parts rather than at the q/k/v boundaries, so only their concatenation is trusted."""
    import torch

    return torch.cat([take(t, a + f"{x}_conv1d.weight", label) for x in "qkv"], dim=0)


def _olmo_parts(get: Callable[[str], Any]) -> dict[str, Any]:
    return dict(neg_eigval=bool(get("linear_allow_neg_eigval")), out_norm_eps=OLMO_OUT_NORM_EPS)


QWEN_NORMS = ("input_layernorm", "post_attention_layernorm")
LAYOUTS: dict[str, Layout] = {
    "qwen3_next": Layout(QWEN3_NEXT_DEFAULTS, _interval_types, _qwen_heads, _qwen3_next_checks, lambda _: {},
                         _unpack_qwen3_next, _fused_conv, True, QWEN_NORMS, out_norm="norm", out_proj="out_proj"),
    "qwen3_5_text": Layout(QWEN3_5_DEFAULTS, _interval_types, _qwen_heads, lambda *_: None, lambda _: {},
                           _split_qwen3_5, _fused_conv, True, QWEN_NORMS, out_norm="norm", out_proj="out_proj"),
    # the names of OLMo-hybrid's checkpoints (transformers renames them on load and back on save)
    "olmo_hybrid": Layout(OLMO_HYBRID_DEFAULTS, _olmo_types, _olmo_heads, lambda *_: None, _olmo_parts,
                          _split_olmo, _split_conv, False, ("attention_layer_norm", "feedforward_layer_norm"),
                          out_norm="o_norm", out_proj="o_proj"),
}
MODEL_TYPES = (*LAYOUTS, *WRAPPERS)


def config_from_hf(hf: dict[str, Any]) -> SequentialAttentionConfig:
    """The seqedge config of a transformers linear-attention ``config.json``; refuses what it cannot represent."""
    label = str(hf.get("model_type"))
    if label in WRAPPERS:
        _refuse_wrapper(hf, label)
    layout = LAYOUTS[label]
    get = lambda key: hf.get(key, layout.defaults.get(key))                        # noqa: E731
    layers = int(get("num_hidden_layers"))
    types = get("layer_types")
    if types is None:
        types = layout.default_layer_types(get, layers)
    others = sorted({t for t in types if t != "linear_attention"})
    refuse_unless(not others and len(types) == layers, label, "layer_types", others or types,
                  "hybrid models are not supported yet (every layer must be linear_attention)")
    layout.checks(get, label, layers)
    refuse_unless(get("hidden_act") == "silu", label, "hidden_act", get("hidden_act"),
                  "seqedge's short conv and MLP apply SiLU only")
    key_heads, value_heads, dk, dv = layout.heads(get)
    check_heads(label, "linear_num_value_heads", key_heads, value_heads)
    return SequentialAttentionConfig(
        vocab_size=int(require(hf, "vocab_size", label)), hidden_size=int(require(hf, "hidden_size", label)),
        num_layers=layers, num_heads=value_heads, head_k_dim=dk, head_v_dim=dv, update_rule="delta",
        conv_kernel=int(get("linear_conv_kernel_dim")), chunk_size=DEFAULT_CHUNK,
        intermediate_size=int(get("intermediate_size")), tie_embeddings=bool(get("tie_word_embeddings")),
        norm_eps=float(get("rms_norm_eps")), mixer=mixer_parts(key_heads, value_heads, **layout.parts(get)))


def _refuse_wrapper(hf: dict[str, Any], label: str) -> None:
    key = WRAPPERS[label]
    if key == "num_experts":
        refuse_unless(False, label, key, hf.get(key, "its default"),
                      "every layer's MLP is a mixture of experts; seqedge imports dense MLPs only")
    vision = hf.get(key)
    refuse_unless(False, label, key, vision.get("model_type", "...") if isinstance(vision, dict) else vision,
                  "a vision-language model (transformers builds its vision tower even when vision_config is "
                  "absent); seqedge imports text-only models: save the text model (Qwen3_5ForCausalLM, "
                  "model_type qwen3_5_text)")


def state_dict_from_hf(hf: HFModelDir, config: SequentialAttentionConfig) -> tuple["Tensors", list[str]]:
    """seqedge's weights from transformers' names, and the names of the weights left unused."""
    import torch

    tensors = dict(hf.tensors)
    label, layout = hf.model_type, LAYOUTS[hf.model_type]
    for name in [n for n in tensors if n.startswith("mtp.")]:
        del tensors[name]                  # the multi-token-prediction head: not part of the causal LM's forward
    norm = ((lambda name: 1.0 + take(tensors, name, label)) if layout.one_plus_norms
            else (lambda name: take(tensors, name, label)))
    out = {"embed.weight": take(tensors, "model.embed_tokens.weight", label), "norm.weight": norm("model.norm.weight")}
    head_weight(tensors, out, config, label)
    for i in range(config.num_layers):
        src, dst = f"model.layers.{i}.", f"blocks.{i}."
        a = src + "linear_attn."
        qkv, z, b, dt = layout.projections(tensors, a, config, label)
        out[dst + "attn_norm.weight"] = norm(src + layout.block_norms[0] + ".weight")
        out[dst + "attn.qkv.weight"] = qkv
        out[dst + "attn.conv.weight"] = layout.conv(tensors, a, label)
        out[dst + "attn.dt_proj.weight"] = dt
        out[dst + "attn.beta.weight"] = b
        out[dst + "attn.beta.bias"] = torch.zeros(b.shape[0])                # the b projections have no bias
        out[dst + "attn.dt_bias"] = take(tensors, a + "dt_bias", label)
        out[dst + "attn.A_log"] = take(tensors, a + "A_log", label)
        out[dst + "attn.out_gate.weight"] = z
        out[dst + "attn.out_norm.weight"] = take(tensors, a + layout.out_norm + ".weight", label)
        out[dst + "attn.out_proj.weight"] = take(tensors, a + layout.out_proj + ".weight", label)
        out[dst + "mlp_norm.weight"] = norm(src + layout.block_norms[1] + ".weight")
        out.update(swiglu_weights(tensors, src + "mlp.", dst + "mlp.", label))
    return out, sorted(tensors)
