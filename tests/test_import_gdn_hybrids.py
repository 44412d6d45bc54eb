"""Gated DeltaNet import of transformers' Qwen3.5 and OLMo-hybrid linear-attention layers
(seqedge/families/gdn_transformers.py) against transformers' own classes on their CPU torch path.

Tiny random models are built with transformers' classes (fla blocked, so ``torch_chunk_gated_delta_rule`` /
``torch_recurrent_gated_delta_rule`` and the torch causal conv run) and written with ``save_pretrained`` to a temp
dir (no download); every parameter gets non-trivial random values (norms, dt_bias, A_log, conv included).

- transformers ``Qwen3_5ForCausalLM`` (``qwen3_5_text``; every layer linear attention, grouped value heads): the
  imported model's logits with the state carried (chunked calls, then steps) against transformers fed the same
  splits with its cache, and every layer's final recurrent state, to 1e-4 relative (float32); the exported onnx
  ``step`` (made by the CLI from the HF directory) token by token over 40 tokens against transformers' logits,
  to 1e-4; a tied-embedding model's logits, to 1e-4. ``mtp.*`` weights are dropped (transformers skips them),
  any other extra weight is refused.
- transformers ``OlmoHybridForCausalLM``: its config class requires an attention layer, so the model is built as a
  hybrid (two linear-attention layers, then one attention layer). Its directory is refused (layer_types). Each
  linear-attention decoder layer (transformers' ``OlmoHybridLinearAttentionDecoderLayer``) is checked alone against
  seqedge's block on the same input; the directory cut to its linear layers (config.json's layer_types all
  linear_attention, the attention layer's weights dropped) imports, and its logits with the state carried and
  its final recurrent states match transformers' embedding, linear layers (with its cache), final norm and head,
  to 1e-4.
  The model is transformers' default OLMo-hybrid layer: beta ``2 * sigmoid`` (``linear_allow_neg_eigval``,
  ``mixer.beta_scale`` 2) and the gated output norm's eps 1e-5 beside block norms at 1e-6 (``mixer.out_norm_eps``);
  its ``onnx-ort`` step (ORT's fused LinearAttention), exported by the CLI, token by token against transformers.
- refusals: one line naming the config key, exit code 2, nothing written (attention layers, activations, heads,
  the Qwen3.5 vision-language
  wrappers, as ``Qwen3_5ForConditionalGeneration`` saves itself and by config, and the mixture-of-experts text
  model).
"""

from __future__ import annotations

import json

import pytest
import torch

pytest.importorskip("transformers", reason="transformers is not installed (pip install transformers==5.23.0)")

from _families import assert_import_refused, split_run, stepped_logits  # noqa: E402
from _families import rel_error as _rel  # noqa: E402
from test_import_gdn import _randomise, torch_path_module  # noqa: E402
from test_import_gdn import assert_matches_transformers_with_carried_state  # noqa: E402

from seqedge.cli.main import main  # noqa: E402
from seqedge.families import import_hf  # noqa: E402

VOCAB = 300
TOL = 1e-4
HEADS = dict(linear_num_key_heads=2, linear_num_value_heads=4, linear_key_head_dim=8, linear_value_head_dim=8,
             linear_conv_kernel_dim=4, rms_norm_eps=1e-5, num_attention_heads=2, num_key_value_heads=1)
QWEN3_5_CONFIG = dict(HEADS, vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, intermediate_size=48,
                      layer_types=["linear_attention"] * 2, head_dim=8, tie_word_embeddings=False)
# transformers' defaults for the rest: beta = 2 * sigmoid (linear_allow_neg_eigval), block norms with eps 1e-6 and
# the gated output norm with its own 1e-5
OLMO_CONFIG = dict(HEADS, vocab_size=VOCAB, hidden_size=32, num_hidden_layers=3, intermediate_size=48,
                   layer_types=["linear_attention"] * 2 + ["full_attention"], rms_norm_eps=1e-6,
                   pad_token_id=None, eos_token_id=None, tie_word_embeddings=False)


def _save(model, tmp_path_factory, name):
    path = tmp_path_factory.mktemp(name) / "hf"
    model.save_pretrained(path)
    return path


# transformers Qwen3.5 (text model) ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def qwen3_5_hf(tmp_path_factory):
    from transformers import Qwen3_5TextConfig

    module = torch_path_module("transformers.models.qwen3_5.modeling_qwen3_5")
    torch.manual_seed(0)
    model = _randomise(module.Qwen3_5ForCausalLM(Qwen3_5TextConfig(**QWEN3_5_CONFIG)), one_plus_norms=True)
    return model, _save(model, tmp_path_factory, "qwen3-5")


def test_qwen3_5_import_matches_transformers_with_carried_state(qwen3_5_hf):
    source, path = qwen3_5_hf
    assert json.loads((path / "config.json").read_text())["model_type"] == "qwen3_5_text"
    model = import_hf(path)
    assert model.config.mixer.num_key_heads == 2 and model.config.num_heads == 4
    assert_matches_transformers_with_carried_state(source, model)


def test_qwen3_5_exported_onnx_step_matches_transformers(qwen3_5_hf, tmp_path):
    import seqedge

    source, path = qwen3_5_hf
    out = tmp_path / "art"
    assert main(["export", "-m", str(path), "--target", "onnx", "--out", str(out), "--quiet"]) == 0
    tokens = torch.randint(0, VOCAB, (1, 40), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        want = source(tokens, use_cache=False).logits[0].numpy()
    assert _rel(stepped_logits(seqedge.load(out, "onnxruntime"), tokens), want) <= TOL


def test_multi_token_prediction_weights_are_dropped_others_refused(qwen3_5_hf, tmp_path):
    """transformers' causal LMs skip ``mtp.*`` on load; any other weight the mapping leaves is refused."""
    from safetensors.torch import save_file

    from seqedge.families import UnsupportedModelError

    source, path = qwen3_5_hf
    extra = tmp_path / "extra"
    extra.mkdir()
    for f in path.iterdir():
        (extra / f.name).symlink_to(f)
    save_file({"mtp.fc.weight": torch.ones(2, 2)}, extra / "mtp.safetensors")
    torch.testing.assert_close(import_hf(extra).state_dict(), import_hf(path).state_dict(), rtol=0, atol=0)
    save_file({"model.extra.weight": torch.ones(2, 2)}, extra / "mtp.safetensors")
    with pytest.raises(UnsupportedModelError, match="model.extra.weight"):
        import_hf(extra)


def test_qwen3_5_tied_embeddings_match_transformers(tmp_path_factory):
    from transformers import Qwen3_5TextConfig

    module = torch_path_module("transformers.models.qwen3_5.modeling_qwen3_5")
    torch.manual_seed(0)
    config = dict(QWEN3_5_CONFIG, tie_word_embeddings=True, num_hidden_layers=1, layer_types=["linear_attention"])
    source = _randomise(module.Qwen3_5ForCausalLM(Qwen3_5TextConfig(**config)), one_plus_norms=True)
    model = import_hf(_save(source, tmp_path_factory, "qwen3-5-tied"))
    assert model.config.tie_embeddings
    tokens = torch.randint(0, VOCAB, (1, 30), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        assert _rel(model(tokens)[0], source(tokens, use_cache=False).logits) <= TOL


def test_qwen3_5_vision_language_wrapper_is_refused(tmp_path_factory, capsys):
    """``Qwen3_5ForConditionalGeneration`` as transformers saves it (text model nested in ``text_config``, a
    vision tower): refused naming ``vision_config``, pointing at the text model."""
    from transformers import Qwen3_5Config, Qwen3_5ForConditionalGeneration

    vision = dict(depth=1, hidden_size=16, num_heads=2, intermediate_size=32, out_hidden_size=32, patch_size=2,
                  spatial_merge_size=1, num_position_embeddings=16)
    torch.manual_seed(0)
    wrapper = Qwen3_5ForConditionalGeneration(Qwen3_5Config(text_config=QWEN3_5_CONFIG, vision_config=vision))
    path = _save(wrapper, tmp_path_factory, "qwen3-5-vl")
    out = tmp_path_factory.mktemp("qwen3-5-vl-ck") / "ck"
    capsys.readouterr()
    assert main(["import", str(path), "-o", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "vision_config" in err and "qwen3_5_text" in err, err
    assert not out.exists()


# transformers OLMo-hybrid -------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def olmo_hf(tmp_path_factory):
    """A hybrid OLMo (linear, linear, attention) and its directory cut to the two linear-attention layers."""
    from safetensors.torch import load_file, save_file
    from transformers import OlmoHybridConfig

    module = torch_path_module("transformers.models.olmo_hybrid.modeling_olmo_hybrid")
    torch.manual_seed(0)
    model = _randomise(module.OlmoHybridForCausalLM(OlmoHybridConfig(**OLMO_CONFIG)))
    path = _save(model, tmp_path_factory, "olmo-hybrid")
    linear = path.parent / "linear"
    linear.mkdir()
    config = json.loads((path / "config.json").read_text())
    config.update(num_hidden_layers=2, layer_types=["linear_attention"] * 2)
    (linear / "config.json").write_text(json.dumps(config))
    tensors = {k: v for f in path.glob("*.safetensors") for k, v in load_file(f).items()}
    save_file({k: v for k, v in tensors.items() if not k.startswith("model.layers.2.")},
              linear / "model.safetensors")
    return model, path, linear


def test_olmo_hybrid_linear_layers_match_transformers_layer_by_layer(olmo_hf):
    source, _, linear = olmo_hf
    model = import_hf(linear)
    parts = model.config.mixer
    assert (model.config.num_layers, parts.num_key_heads, model.config.norm_eps) == (2, 2, 1e-6)
    assert (parts.beta_scale, parts.out_norm_eps) == (2.0, 1e-5)
    x = torch.randn(2, 37, 32, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        for i in range(2):
            want = source.model.layers[i](x, attention_mask=None, position_embeddings=None)
            got = model.blocks[i](x, *model.init_state(2).tensors[2 * i: 2 * i + 2])[0]
            assert _rel(got, want) <= TOL, f"layer {i}"


def test_olmo_hybrid_exported_onnx_ort_step_matches_transformers(olmo_hf, tmp_path):
    import seqedge

    source, _, linear = olmo_hf
    out = tmp_path / "art"
    assert main(["export", "-m", str(linear), "--target", "onnx-ort", "--out", str(out), "--quiet"]) == 0
    tokens = torch.randint(0, VOCAB, (1, 40), generator=torch.Generator().manual_seed(2))
    want, _ = _olmo_linear_split_run(source, tokens)
    assert _rel(stepped_logits(seqedge.load(out, "onnxruntime-fused"), tokens), want[0].numpy()) <= TOL


def _olmo_linear_split_run(source, tokens):
    """transformers' embedding, first two (linear-attention) layers with its cache, final norm and head over
    ``tokens`` in the splits of ``split_run``."""
    from transformers import DynamicCache

    bounds = [0, 20, 45, *range(46, tokens.shape[1] + 1)]
    cache, parts = DynamicCache(config=source.config), []
    with torch.no_grad():
        for lo, hi in zip(bounds, bounds[1:]):
            x = source.model.embed_tokens(tokens[:, lo:hi])
            for layer in source.model.layers[:2]:
                x = layer(x, attention_mask=None, position_embeddings=None, past_key_values=cache, use_cache=True)
            parts.append(source.lm_head(source.model.norm(x)))
    return torch.cat(parts, dim=1), cache


def test_olmo_hybrid_linear_model_matches_transformers_with_carried_state(olmo_hf):
    source, _, linear = olmo_hf
    model = import_hf(linear)
    tokens = torch.randint(0, VOCAB, (2, 53), generator=torch.Generator().manual_seed(1))
    want, cache = _olmo_linear_split_run(source, tokens)
    logits, state = split_run(model, tokens)
    assert _rel(logits, want) <= TOL
    for layer in range(2):
        assert _rel(state.tensors[2 * layer + 1], cache.get_recurrent_state(layer, state_idx=0)) <= TOL


@pytest.mark.parametrize("neg_eigval", [None, False])
def test_olmo_hybrid_defaults_are_transformers_defaults(neg_eigval):
    """Heads, beta's range and the norms' eps from a config.json that leaves them out (or turns the range off)."""
    from transformers import OlmoHybridConfig

    from seqedge.families.gdn_transformers import config_from_hf

    keys = dict(vocab_size=VOCAB, hidden_size=64, num_attention_heads=4, num_hidden_layers=2)
    if neg_eigval is not None:
        keys["linear_allow_neg_eigval"] = neg_eigval
    want = OlmoHybridConfig(**keys, pad_token_id=None, eos_token_id=None)
    got = config_from_hf({"model_type": "olmo_hybrid", **keys, "layer_types": ["linear_attention"] * 2})
    assert (got.key_heads, got.num_heads, got.head_k_dim, got.head_v_dim) == (
        want.linear_num_key_heads, want.linear_num_value_heads, want.linear_key_head_dim, want.linear_value_head_dim)
    assert got.mixer.beta_scale == (2.0 if want.linear_allow_neg_eigval else 1.0)
    assert (got.norm_eps, got.mixer.out_norm_eps) == (want.rms_norm_eps, 1e-5)


# refusals ---------------------------------------------------------------------------------------------------

REFUSED = [        # (fixture whose last item is the directory to edit, config.json changes, the key named)
    ("qwen3_5_hf", dict(layer_types=["linear_attention", "full_attention"]), "layer_types"),
    ("qwen3_5_hf", dict(hidden_act="gelu"), "hidden_act"),
    ("qwen3_5_hf", dict(linear_num_value_heads=3), "linear_num_value_heads"),
    ("qwen3_5_hf", dict(model_type="qwen3_5_moe", vision_config={"model_type": "qwen3_5_moe_vision"}),
     "vision_config"),
    ("qwen3_5_hf", dict(model_type="qwen3_5_moe_text", num_experts=4), "num_experts"),
    ("olmo_hf", dict(hidden_act="gelu"), "hidden_act"),
    ("olmo_hf", dict(linear_num_value_heads=3), "linear_num_value_heads"),
]


@pytest.mark.parametrize("source, changes, key", REFUSED, ids=[f"{s[:-3]}-{k}" for s, _, k in REFUSED])
def test_refused_options_name_the_key_and_write_nothing(request, tmp_path, capsys, source, changes, key):
    err = assert_import_refused(request.getfixturevalue(source)[-1], tmp_path, capsys, key, **changes)
    assert key != "vision_config" or "qwen3_5_text" in err


def test_olmo_hybrid_as_transformers_saves_it_is_refused(olmo_hf, tmp_path, capsys):
    """The directory as saved (an attention layer, as transformers requires) and its default layer_types."""
    err = assert_import_refused(olmo_hf[1], tmp_path, capsys, "layer_types")
    assert "hybrid models are not supported yet" in err
    from seqedge.families import UnsupportedModelError
    from seqedge.families.gdn_transformers import config_from_hf

    config = {k: v for k, v in OLMO_CONFIG.items() if k != "layer_types"}
    with pytest.raises(UnsupportedModelError, match="layer_types.*hybrid"):
        config_from_hf({"model_type": "olmo_hybrid", **config, "num_hidden_layers": 2})


def test_transformers_model_types_are_registered():
    from seqedge.families import FAMILIES, gated_deltanet, gdn_transformers

    assert not set(gated_deltanet.MODEL_TYPES) & set(gdn_transformers.MODEL_TYPES)
    assert all(FAMILIES[t] is gdn_transformers for t in gdn_transformers.MODEL_TYPES)
    assert FAMILIES["gated_deltanet"] is gated_deltanet
