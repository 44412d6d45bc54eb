"""Gated DeltaNet import (seqedge/families/gated_deltanet.py) against fla's and transformers' own code.

Tiny random models are built with the source library's classes and written with ``save_pretrained`` to a temp
dir (no download); every parameter gets non-trivial random values (norms, dt_bias, A_log, convs included).

- fla ``GatedDeltaNetForCausalLM`` (grouped value heads, ``expand_v`` 1.5; beta ``sigmoid`` and, with
  ``allow_neg_eigval``, ``2 * sigmoid``): its forward needs CUDA, so the
  oracle is assembled from the fla modules' own torch submodules (the linears; conv and norm weights with their
  math written out) and fla's pure-torch ``naive_recurrent_gated_delta_rule``. It checks every block's output
  and the logits of a sequence fed to seqedge in several calls (state carried: chunked calls, then steps), and
  every layer's final scan state, to 1e-4 relative (float32); and fla's ``GatedMLP`` width rule.
- transformers ``Qwen3NextForCausalLM`` (every layer linear attention, dense MLP, grouped value heads) on its CPU
  torch path (``torch_chunk_gated_delta_rule`` / ``torch_recurrent_gated_delta_rule``): the imported model's logits
  with the state carried, against transformers fed the same splits with its cache, and the final recurrent states,
  to 1e-4; the exported ``step`` of onnx, onnx-ort and executorch (slow) artifacts (made by the CLI from the HF
  directory) token by token over 256 tokens, to 1e-4; top-1 agreement >= 99% of the onnx fp16 and int8 steps on a
  copy of the imported model trained briefly on a low-entropy language (``_families.trained_copy``: on random
  weights the logits are flat and top-1 measures near-ties), against that copy's float32 torch forward.
- refusals (both formats): one line naming the config key, exit code 2, nothing written.
"""

from __future__ import annotations

import importlib
import sys

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("transformers", reason="transformers is not installed (pip install transformers==5.23.0)")

from _families import rel_error as _rel  # noqa: E402
from _families import (FLA_GPU_TOL, NEEDS_CUDA, TOP1_MIN, assert_import_refused, fla_gpu_error,  # noqa: E402
                       quantized_top1, split_run, stepped_logits)
from seqedge.cli.main import main  # noqa: E402
from seqedge.families import import_hf  # noqa: E402

VOCAB = 300                 # above 256: the export's parity check feeds byte tokens
TOL = 1e-4
FLA_CONFIG = dict(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_heads=2, num_v_heads=4, head_dim=8,
                  expand_v=1.5, hidden_ratio=2, conv_size=4, norm_eps=1e-5, tie_word_embeddings=False)
QWEN_CONFIG = dict(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, layer_types=["linear_attention"] * 2,
                   num_experts=0, intermediate_size=48, linear_num_key_heads=2, linear_num_value_heads=4,
                   linear_key_head_dim=8, linear_value_head_dim=8, linear_conv_kernel_dim=4, rms_norm_eps=1e-5,
                   num_attention_heads=2, num_key_value_heads=1, head_dim=8, tie_word_embeddings=False)


def _randomise(model, one_plus_norms: bool = False):
    """Non-trivial values in every parameter (the inits leave norms at 1 or 0 and weights small)."""
    torch.manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.uniform_(-0.5, 0.5) if one_plus_norms and "linear_attn.norm" not in name else p.uniform_(0.5, 1.5)
            elif name.endswith("A_log"):
                p.copy_(torch.empty_like(p).uniform_(0.5, 8.0).log())
            elif name.endswith("dt_bias"):
                p.uniform_(-2.0, 1.0)
            elif "conv1d" in name:
                p.uniform_(-0.6, 0.6)
            else:
                p.normal_(0.0, 0.15)
    return model.eval()



# fla -----------------------------------------------------------------------------------------------------

def _fla_model(tmp_path_factory, **changes):
    pytest.importorskip("fla", reason="fla is not installed (pip install flash-linear-attention==0.6.0 "
                                      "fla-core==0.6.0)")
    from fla.models import GatedDeltaNetConfig, GatedDeltaNetForCausalLM

    torch.manual_seed(0)
    model = _randomise(GatedDeltaNetForCausalLM(GatedDeltaNetConfig(**FLA_CONFIG, **changes)))
    path = tmp_path_factory.mktemp("fla-gdn") / "hf"
    model.save_pretrained(path)
    return model, path


@pytest.fixture(scope="module")
def fla_hf(tmp_path_factory):
    return _fla_model(tmp_path_factory)


@pytest.fixture(scope="module")
def fla_hf_neg_eigval(tmp_path_factory):
    """beta = 2 * sigmoid(W_b x), in (0, 2): fla's ``allow_neg_eigval``."""
    return _fla_model(tmp_path_factory, allow_neg_eigval=True)


def _rms(x, weight, eps):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight


def _conv_silu(x, conv):
    """fla's ShortConvolution (a depthwise causal nn.Conv1d, then SiLU) written out; x ``[B, T, C]``."""
    y = F.conv1d(x.transpose(1, 2), conv.weight, conv.bias, padding=conv.kernel_size[0] - 1, groups=x.shape[-1])
    return F.silu(y[..., :x.shape[1]]).transpose(1, 2)


def _fla_mixer(attn, x):
    """fla's GatedDeltaNet layer from zero state: its linears, the conv/l2norm/gate/norm math, fla's naive rule."""
    from fla.ops.gated_delta_rule.naive import naive_recurrent_gated_delta_rule

    B, T, _ = x.shape
    q, k, v = (_conv_silu(getattr(attn, f"{n}_proj")(x), getattr(attn, f"{n}_conv1d")) for n in "qkv")
    group = attn.num_v_heads // attn.num_heads               # fla's kernels: value head h reads key head h // group
    l2 = lambda t: t * torch.rsqrt(t.pow(2).sum(-1, keepdim=True) + 1e-6)       # noqa: E731
    q, k = (l2(t.view(B, T, attn.num_heads, attn.head_k_dim)).repeat_interleave(group, dim=2) for t in (q, k))
    v = v.view(B, T, attn.num_v_heads, attn.head_v_dim)
    g = -attn.A_log.exp() * F.softplus(attn.a_proj(x) + attn.dt_bias)
    beta = attn.b_proj(x).sigmoid() * (2.0 if attn.allow_neg_eigval else 1.0)
    o, state = naive_recurrent_gated_delta_rule(q, k, v, beta, g, output_final_state=True)
    gate = attn.g_proj(x).view(B, T, attn.num_v_heads, attn.head_v_dim)
    o = _rms(o, attn.o_norm.weight, attn.o_norm.eps) * F.silu(gate)
    return attn.o_proj(o.reshape(B, T, -1)), state


def _fla_block(block, x):
    h, state = _fla_mixer(block.attn, _rms(x, block.attn_norm.weight, block.attn_norm.eps))
    x = x + h
    mlp, y = block.mlp, _rms(x, block.mlp_norm.weight, block.mlp_norm.eps)
    return x + mlp.down_proj(F.silu(mlp.gate_proj(y)) * mlp.up_proj(y)), state


@pytest.mark.parametrize("fixture", ["fla_hf", "fla_hf_neg_eigval"])
def test_fla_import_matches_fla_layer_by_layer_with_carried_state(request, fixture):
    source, path = request.getfixturevalue(fixture)
    model = import_hf(path)
    c = model.config
    assert (c.update_rule, c.mixer.gate, c.mixer.beta, c.mixer.num_key_heads) == ("delta", "softplus", "sigmoid", 2)
    assert c.mixer.beta_scale == (2.0 if source.config.allow_neg_eigval else 1.0)
    assert (c.num_heads, c.head_v_dim, c.mlp_hidden_size) == (4, 12, source.model.layers[0].mlp.intermediate_size)
    tokens = torch.randint(0, VOCAB, (2, 53), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        x = ours = source.model.embeddings(tokens)
        states = []
        for i, block in enumerate(source.model.layers):
            want, state = _fla_block(block, x)
            zeros = model.init_state(2).tensors[2 * i: 2 * i + 2]
            got, _, _ = model.blocks[i](x, *zeros)                   # the same input: this block alone
            assert _rel(got, want) <= TOL, f"block {i}"
            x, _ = want, states.append(state)
            ours = model.blocks[i](ours, *zeros)[0]
        final = source.model.norm.weight * x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + source.model.norm.eps)
        want_logits = source.lm_head(final)
    logits, state = split_run(model, tokens)
    assert _rel(logits, want_logits) <= TOL
    for layer, want_state in enumerate(states):
        assert _rel(state.tensors[2 * layer + 1], want_state) <= TOL


@NEEDS_CUDA
def test_import_matches_fla_model_on_gpu(fla_hf):
    """The checkpoint against fla's own model forward (its Triton kernels on the card), logits over 100 tokens."""
    error = fla_gpu_error(*fla_hf, VOCAB)
    assert error <= FLA_GPU_TOL, error


@pytest.mark.parametrize("hidden, ratio, size", [(1000, 4, None), (32, None, None), (2048, 4, None), (64, 2, 96)])
def test_fla_mlp_width_is_fla_rule(hidden, ratio, size):
    pytest.importorskip("fla", reason="fla is not installed (pip install flash-linear-attention==0.6.0)")
    from fla.modules import GatedMLP

    from seqedge.families.gated_deltanet import config_from_hf

    with torch.device("meta"):
        want = GatedMLP(hidden_size=hidden, hidden_ratio=ratio, intermediate_size=size).intermediate_size
    config = config_from_hf({"model_type": "gated_deltanet", "hidden_size": hidden, "hidden_ratio": ratio,
                             "intermediate_size": size, "num_heads": 2, "head_dim": 16})
    assert config.mlp_hidden_size == want


# transformers Qwen3-Next ------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def qwen3_next_module():
    """transformers' Qwen3-Next modeling module on its torch path."""
    return torch_path_module("transformers.models.qwen3_next.modeling_qwen3_next")


def torch_path_module(name: str):
    """transformers' modeling module ``name`` on its torch path.

    transformers chooses the gated-delta-rule and conv implementations when the module is imported: fla's
    Triton kernels whenever ``fla`` imports (they need CUDA), else its torch fallbacks; no config or argument
    selects them. So the module is imported afresh while ``fla`` cannot be imported, and ``sys.modules`` is
    restored afterwards (the fla-format tests need fla).
    """
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(sys.modules, "fla", None)
        patch.delitem(sys.modules, name, raising=False)
        return importlib.import_module(name)


@pytest.fixture(scope="module")
def qwen_hf(qwen3_next_module, tmp_path_factory):
    return _qwen_model(qwen3_next_module, tmp_path_factory, QWEN_CONFIG)


def _qwen_model(module, tmp_path_factory, config):
    from transformers import Qwen3NextConfig

    torch.manual_seed(0)
    model = _randomise(module.Qwen3NextForCausalLM(Qwen3NextConfig(**config)), one_plus_norms=True)
    path = tmp_path_factory.mktemp("qwen3-next") / "hf"
    model.save_pretrained(path)
    return model, path


@pytest.fixture(scope="module")
def qwen_hf_one_layer(qwen3_next_module, tmp_path_factory):
    """One layer: ExecuTorch's lowering time grows with the graph (minutes per layer on 2 cores)."""
    return _qwen_model(qwen3_next_module, tmp_path_factory,
                       {**QWEN_CONFIG, "num_hidden_layers": 1, "layer_types": ["linear_attention"]})


def _qwen_split_run(source, tokens):
    """transformers' logits over ``tokens`` in the splits of :func:`_split_run`, state carried in its cache."""
    # the linear-attention layers take no mask; transformers' mask builder asks the cache for a sequence length,
    # which a cache of linear-attention layers only cannot give, so the (empty) mask mapping is passed in
    no_mask = {"full_attention": None, "linear_attention": None}
    bounds = [0, 20, 45, *range(46, tokens.shape[1] + 1)]
    cache, parts = None, []
    with torch.no_grad():
        for lo, hi in zip(bounds, bounds[1:]):
            out = source(tokens[:, lo:hi], position_ids=torch.arange(lo, hi)[None], attention_mask=no_mask,
                         past_key_values=cache, use_cache=True)
            cache = out.past_key_values
            parts.append(out.logits)
    return torch.cat(parts, dim=1), cache


def test_qwen3_next_import_matches_transformers_with_carried_state(qwen_hf):
    source, path = qwen_hf
    model = import_hf(path)
    assert model.config.mixer.num_key_heads == 2 and model.config.mlp_hidden_size == 48
    assert_matches_transformers_with_carried_state(source, model)


def assert_matches_transformers_with_carried_state(source, model):
    """The imported ``model``'s logits (chunked calls, then steps) == transformers' ``source`` fed the same splits
    with its cache (itself checked against one uncached call), and every layer's final recurrent state."""
    tokens = torch.randint(0, VOCAB, (2, 53), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        full = source(tokens, use_cache=False).logits
    want, cache = _qwen_split_run(source, tokens)
    assert _rel(want, full) <= TOL                               # transformers' own cache carries its state
    logits, state = split_run(model, tokens)
    assert _rel(logits, want) <= TOL
    for layer in range(model.config.num_layers):
        assert _rel(state.tensors[2 * layer + 1], cache.get_recurrent_state(layer, state_idx=0)) <= TOL


def _export(path, tmp_path_factory, targets):
    out = tmp_path_factory.mktemp("gdn-art") / "art"
    assert main(["export", "-m", str(path), "--target", targets, "--out", str(out), "--quiet"]) == 0
    return out


@pytest.fixture(scope="module")
def onnx_artifact(qwen_hf, tmp_path_factory):
    return _export(qwen_hf[1], tmp_path_factory, "onnx,onnx-ort")


@pytest.fixture(scope="module")
def executorch_artifact(qwen_hf_one_layer, tmp_path_factory):
    return _export(qwen_hf_one_layer[1], tmp_path_factory, "executorch")


def _step_error(source, artifact, runtime) -> float:
    import seqedge

    tokens = torch.randint(0, VOCAB, (1, 256), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        want = source(tokens, use_cache=False).logits[0].numpy()
    return _rel(stepped_logits(seqedge.load(artifact, runtime), tokens), want)


@pytest.mark.parametrize("runtime", ["onnxruntime", "onnxruntime-fused"])
def test_exported_onnx_step_matches_transformers_over_256_tokens(qwen_hf, onnx_artifact, runtime):
    assert _step_error(qwen_hf[0], onnx_artifact, runtime) <= TOL


# the ExecuTorch export of a delta-rule model with unbounded (softplus) gates takes minutes to lower:
# ExecuTorch's per-node edge and XNNPACK passes grow with the graph (one layer here)
@pytest.mark.slow
def test_exported_executorch_step_matches_transformers_over_256_tokens(qwen_hf_one_layer, executorch_artifact):
    assert _step_error(qwen_hf_one_layer[0], executorch_artifact, "executorch") <= TOL


@pytest.fixture(scope="module")
def trained_top1(qwen_hf, tmp_path_factory):
    return quantized_top1(qwen_hf[1], tmp_path_factory.mktemp("gdn-q"))


@pytest.mark.parametrize("scheme", ["fp16", "int8", "int4"])
def test_quantized_step_keeps_top1(trained_top1, scheme):
    assert trained_top1[scheme] >= TOP1_MIN[scheme], trained_top1


# refusals ---------------------------------------------------------------------------------------------------

FLA_REFUSED = [
    (dict(attn={"layers": [1], "num_heads": 2}), "attn"),
    (dict(use_gate=False), "use_gate"),
    (dict(use_short_conv=False), "use_short_conv"),
    (dict(hidden_act="powlu"), "hidden_act"),
    (dict(conv_bias=True), "conv_bias"),
    (dict(output_gate_activation="sigmoid"), "output_gate_activation"),
    (dict(attnres_block_size=2), "attnres_block_size"),
    (dict(num_v_heads=3), "num_v_heads"),
]
QWEN_REFUSED = [
    (dict(layer_types=["linear_attention", "full_attention"]), "layer_types"),
    (dict(num_experts=4), "num_experts"),
    (dict(hidden_act="gelu"), "hidden_act"),
    (dict(linear_num_value_heads=3), "linear_num_value_heads"),
]


@pytest.mark.parametrize("changes, key", FLA_REFUSED, ids=[k for _, k in FLA_REFUSED])
def test_fla_refused_options_name_the_key_and_write_nothing(fla_hf, tmp_path, capsys, changes, key):
    err = assert_import_refused(fla_hf[1], tmp_path, capsys, key, **changes)
    assert key != "attn" or "hybrid models" in err


@pytest.mark.parametrize("changes, key", QWEN_REFUSED, ids=[k for _, k in QWEN_REFUSED])
def test_qwen3_next_refused_options_name_the_key_and_write_nothing(qwen_hf, tmp_path, capsys, changes, key):
    err = assert_import_refused(qwen_hf[1], tmp_path, capsys, key, **changes)
    assert key != "layer_types" or "hybrid models are not supported yet" in err


def test_qwen3_next_default_layer_types_are_a_hybrid():
    from seqedge.families import UnsupportedModelError
    from seqedge.families.gdn_transformers import config_from_hf

    config = {k: v for k, v in QWEN_CONFIG.items() if k != "layer_types"}
    with pytest.raises(UnsupportedModelError, match="layer_types.*hybrid"):
        config_from_hf({"model_type": "qwen3_next", **config, "num_hidden_layers": 4})
