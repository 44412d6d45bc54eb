"""KDA import (seqedge/families/kda.py, `seqedge import`, `seqedge export -m`) against fla and transformers.

Tiny random models built with the source libraries' own classes, written with ``save_pretrained`` to a temp dir (no
download). fla's model forward needs CUDA (Triton), so the oracles on this CPU are:

- fla-format checkpoints (``KDAForCausalLM``): a reference forward assembled from the fla model's own torch
  submodules (projections, conv weights, MLP) and fla's pure-torch ``naive_kda_gate`` and ``naive_recurrent_kda``;
  it checks the imported model's logits over a sequence fed in several calls (chunked calls, then steps: the state
  carried) and its final scan states to 1e-4 relative (float32), with grouped value heads and ``expand_v`` 2, and
  with ``allow_neg_eigval`` (beta ``2 * sigmoid``);
- the same fla weights mapped onto transformers' ``KimiLinearForCausalLM`` (its KDA layers on their torch fallback):
  a second, independent oracle of the fla import, layer math included;
- transformers-format checkpoints (``kimi_linear``, every layer KDA with a dense MLP): transformers' own forward
  (torch fallback), logits and cache state;
- fla's ``naive_recurrent_kda`` against seqedge's three scan forms: DESIGN's ``delta`` rule with a per-key,
  unbounded gate is KDA's recurrence, without any scan change;
- the exported ``step`` of onnx, onnx-ort and executorch artifacts of an imported one-layer fla model, token by
  token over 256 tokens, against the fla reference (1e-4 relative); top-1 agreement >= 99% of the onnx fp16 and int8
  steps on a copy of the imported model trained briefly on a low-entropy language (``_families.trained_copy``: on
  random weights the logits are flat and top-1 measures near-ties), against that copy's float32 torch forward;
- refusals: one line naming the config key, exit code 2, nothing written.

transformers picks fla's Triton kernels over its torch fallback when fla imports at the time its kimi_linear module
is imported; the ``kimi`` fixture imports that module afresh with fla hidden (there is no other switch).
"""

from __future__ import annotations

import dataclasses
import importlib
import math
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("transformers", reason="transformers is not installed (pip install transformers==5.23.0)")
pytest.importorskip("fla", reason="fla is not installed (pip install flash-linear-attention==0.6.0 fla-core==0.6.0)")

from _families import (FLA_GPU_TOL, NEEDS_CUDA, TOP1_MIN, assert_import_refused, fla_gpu_error,  # noqa: E402
                       quantized_top1, rel_error, split_run)
from seqedge.cli.main import main  # noqa: E402
from seqedge.families import import_hf  # noqa: E402
from seqedge.scan import chunked_scan, recurrent_scan, reference_scan  # noqa: E402

VOCAB = 300                 # above 256: the export's parity check feeds byte tokens
TOL = 1e-4
FLA = dict(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_heads=2, num_v_heads=4, head_dim=8,
           expand_v=2.0, conv_size=4, intermediate_size=48, norm_eps=1e-5, tie_word_embeddings=False)
KIMI = dict(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, intermediate_size=48, linear_num_heads=2,
            linear_head_dim=16, linear_conv_kernel_dim=4, layer_types=["linear_attention"] * 2,
            mlp_layer_types=["dense"] * 2, rms_norm_eps=1e-5, pad_token_id=None, bos_token_id=None,
            eos_token_id=None, tie_word_embeddings=False)


def _randomise(model: torch.nn.Module) -> torch.nn.Module:
    """Non-trivial values in every parameter (decays from ~0 to far below the native g_min)."""
    torch.manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.uniform_(0.5, 1.5)
            elif name.endswith("dt_bias"):
                p.uniform_(-4.0, 1.0)
            elif name.endswith("A_log"):
                p.uniform_(-1.0, 2.0)
            elif name.endswith("bias") or "conv1d" in name:
                p.uniform_(-0.5, 0.5)
            elif p.dim() == 2:
                p.normal_(0.0, p.shape[1] ** -0.5)
    return model.eval()


# the fla reference: fla's submodules and naive functions ------------------------------------------------------
def _rms(x, weight, eps):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight


def _fla_layer(attn, x):
    """fla's ``KimiDeltaAttention.forward`` on the CPU: x ``[B, T, D]`` -> (y, final state ``[B, HV, K, V]``)."""
    from fla.ops.kda.gate import naive_kda_gate
    from fla.ops.kda.naive import naive_recurrent_kda

    def conv(proj, conv1d):
        y = proj(x).transpose(1, 2)
        y = F.conv1d(F.pad(y, (conv1d.weight.shape[-1] - 1, 0)), conv1d.weight, groups=y.shape[1])
        return F.silu(y).transpose(1, 2)

    B, T, _ = x.shape
    K, V = attn.head_k_dim, attn.head_v_dim
    q, k = (conv(p, c).reshape(B, T, -1, K) for p, c in ((attn.q_proj, attn.q_conv1d), (attn.k_proj, attn.k_conv1d)))
    q, k = (t / torch.sqrt(t.pow(2).sum(-1, keepdim=True) + 1e-6) for t in (q, k))   # fla's l2norm
    v = conv(attn.v_proj, attn.v_conv1d).reshape(B, T, -1, V)
    g = naive_kda_gate(attn.f_proj(x).reshape(B, T, -1, K), attn.A_log, attn.dt_bias)
    beta = torch.sigmoid(attn.b_proj(x)) * (2.0 if attn.allow_neg_eigval else 1.0)
    o, state = naive_recurrent_kda(q, k, v, g, beta, output_final_state=True)
    o = _rms(o, attn.o_norm.weight, attn.o_norm.eps) * torch.sigmoid(attn.g_proj(x).reshape(B, T, -1, V))
    return attn.o_proj(o.reshape(B, T, -1)), state


def _fla_reference(model, tokens):
    """Logits ``[B, T, V]`` and the final scan state of every layer of fla's ``KDAForCausalLM``."""
    x, states = model.model.embeddings(tokens), []
    for block in model.model.layers:
        y, state = _fla_layer(block.attn, _rms(x, block.attn_norm.weight, block.attn_norm.eps))
        x, states = x + y, states + [state]
        h = _rms(x, block.mlp_norm.weight, block.mlp_norm.eps)
        x = x + block.mlp.down_proj(F.silu(block.mlp.gate_proj(h)) * block.mlp.up_proj(h))
    return model.lm_head(_rms(x, model.model.norm.weight, model.model.norm.eps)), states


def _fla_model(**overrides):
    from fla.models import KDAConfig, KDAForCausalLM

    return _randomise(KDAForCausalLM(KDAConfig(**{**FLA, **overrides})))


@pytest.fixture(scope="module")
def fla(tmp_path_factory):
    model = _fla_model()
    path = tmp_path_factory.mktemp("kda") / "hf"
    model.save_pretrained(path)
    return model, path


@pytest.fixture(scope="module")
def kimi():
    """transformers' kimi_linear module on its torch fallback: imported afresh while fla cannot be imported."""
    name = "transformers.models.kimi_linear.modeling_kimi_linear"
    hidden = {key: sys.modules.pop(key) for key in list(sys.modules) if key == name or key.split(".")[0] == "fla"}
    sys.modules["fla"] = None                                   # makes `import fla` raise ImportError
    try:
        module = importlib.import_module(name)
    finally:
        del sys.modules["fla"]
        sys.modules.pop(name)
        sys.modules.update(hidden)
    return module


def _assert_matches_fla_reference(model, source, tokens) -> None:
    """``model``'s logits over ``tokens`` fed in several calls, and its final scan states, against fla's."""
    got, state = split_run(model, tokens)
    with torch.no_grad():
        want, want_states = _fla_reference(source, tokens)
    assert rel_error(got, want) <= TOL
    for layer, want_state in enumerate(want_states):
        assert rel_error(state.tensors[2 * layer + 1], want_state) <= TOL


def test_fla_import_matches_fla_reference_with_carried_state(fla):
    source, path = fla
    model = import_hf(path)
    assert model.config.mixer.gate == "softplus_key" and model.config.mixer.num_key_heads == 2
    _assert_matches_fla_reference(model, source, torch.randint(0, VOCAB, (2, 53),
                                                               generator=torch.Generator().manual_seed(1)))


def test_fla_beta_in_zero_two_matches_fla_reference(tmp_path):
    """fla's ``allow_neg_eigval``: beta = 2 * sigmoid(W_b x) (``mixer.beta_scale`` 2)."""
    source = _fla_model(allow_neg_eigval=True)
    source.save_pretrained(tmp_path / "hf")
    model = import_hf(tmp_path / "hf")
    assert model.config.mixer.beta_scale == 2.0
    _assert_matches_fla_reference(model, source, torch.randint(0, VOCAB, (2, 37),
                                                               generator=torch.Generator().manual_seed(2)))


@NEEDS_CUDA
def test_import_matches_fla_model_on_gpu(fla):
    """The checkpoint against fla's own model forward (its Triton kernels on the card), logits over 100 tokens."""
    error = fla_gpu_error(*fla, VOCAB)
    assert error <= FLA_GPU_TOL, error


def _kimi_inputs(tokens) -> dict:
    """Explicit positions and masks: transformers derives them from a cache length that an all-KDA cache does not
    keep (its causal mask is built for softmax layers even when there are none)."""
    return dict(position_ids=torch.arange(tokens.shape[1])[None], attention_mask={"linear_attention": None})


def _fla_to_kimi(source, kimi):
    """A transformers KimiLinearForCausalLM with the weights of fla's KDA model (no grouped heads, expand_v 1)."""
    c = source.config
    config = kimi.KimiLinearConfig(**{**KIMI, "linear_num_heads": c.num_heads, "linear_head_dim": c.head_dim,
                                      "rms_norm_eps": c.norm_eps})
    out = {}
    for name, p in source.state_dict().items():
        name = name.replace("model.embeddings", "model.embed_tokens").replace(".attn_norm", ".input_layernorm")
        name = name.replace(".mlp_norm", ".post_attention_layernorm").replace(".attn.", ".self_attn.")
        name = name.replace("f_proj.0", "forget_gate.f_a_proj").replace("f_proj.1", "forget_gate.f_b_proj")
        name = name.replace("self_attn.dt_bias", "self_attn.forget_gate.dt_bias")
        name = name.replace("g_proj.0", "g_a_proj").replace("g_proj.1", "g_b_proj")
        if name.endswith("A_log"):
            name, p = name.replace("self_attn.A_log", "self_attn.forget_gate.A_log"), p.view(1, 1, -1, 1)
        out[name] = p
    for i in range(c.num_hidden_layers):
        a = f"model.layers.{i}.self_attn."
        out[a + "conv1d.weight"] = torch.cat([out.pop(f"{a}{x}_conv1d.weight") for x in "qkv"])
        assert not out.pop(a + "g_b_proj.bias").any()          # transformers' output gate has no bias
    model = kimi.KimiLinearForCausalLM(config).eval()
    model.load_state_dict(out)
    return model


def test_fla_import_matches_transformers_layers_with_fla_weights(kimi, tmp_path):
    source = _fla_model(num_v_heads=None, expand_v=1.0, head_dim=16)
    with torch.no_grad():
        for block in source.model.layers:
            block.attn.g_proj[1].bias.zero_()
    source.save_pretrained(tmp_path / "hf")
    tokens = torch.randint(0, VOCAB, (2, 53), generator=torch.Generator().manual_seed(4))
    got, _ = split_run(import_hf(tmp_path / "hf"), tokens)
    with torch.no_grad():
        want = _fla_to_kimi(source, kimi)(tokens, **_kimi_inputs(tokens)).logits
    assert rel_error(got, want) <= TOL


@pytest.fixture(scope="module")
def kimi_dir(kimi, tmp_path_factory):
    model = _randomise(kimi.KimiLinearForCausalLM(kimi.KimiLinearConfig(**KIMI)))
    path = tmp_path_factory.mktemp("kimi") / "hf"
    model.save_pretrained(path)
    return model, path


def test_kimi_linear_import_matches_transformers_with_carried_state(kimi_dir):
    source, path = kimi_dir
    model = import_hf(path)
    tokens = torch.randint(0, VOCAB, (2, 53), generator=torch.Generator().manual_seed(5))
    got, state = split_run(model, tokens)
    with torch.no_grad():
        out = source(tokens, **_kimi_inputs(tokens), use_cache=True)
    assert rel_error(got, out.logits) <= TOL
    for layer in range(model.config.num_layers):
        theirs = out.past_key_values.get_recurrent_state(layer, state_idx=0)       # [B, H, K, V]
        assert rel_error(state.tensors[2 * layer + 1], theirs) <= TOL


@pytest.mark.parametrize("T", [1, 37, 64])
def test_delta_rule_with_per_key_unbounded_gate_is_kda(gen, T):
    from fla.ops.kda.naive import naive_recurrent_kda

    B, H, K, V = 2, 3, 16, 8
    q, k = (F.normalize(torch.randn(B, T, H, K, generator=gen), dim=-1) for _ in range(2))
    v = torch.randn(B, T, H, V, generator=gen)
    g = -30.0 * torch.rand(B, T, H, K, generator=gen) ** 3             # per key dim, far below g_min
    beta, s0 = torch.rand(B, T, H, generator=gen), torch.randn(B, H, K, V, generator=gen)
    want_o, want_s = naive_recurrent_kda(q, k, v, g, beta, initial_state=s0, output_final_state=True)
    forms = (reference_scan(q, k, v, g, beta, rule="delta", initial_state=s0),
             recurrent_scan(q, k, v, g, beta, rule="delta", initial_state=s0),
             chunked_scan(q, k, v, g, beta, rule="delta", initial_state=s0, chunk_size=32, bounded=False))
    for o, s in forms:
        assert rel_error(o, want_o) <= 2e-5 and rel_error(s, want_s) <= 2e-5


@pytest.fixture(scope="module")
def fla_one_layer(tmp_path_factory):
    """The exports' model: one layer, as ExecuTorch's lowering of every layer costs tens of seconds of CPU."""
    model = _fla_model(num_hidden_layers=1)
    path = tmp_path_factory.mktemp("kda1") / "hf"
    model.save_pretrained(path)
    return model, path


@pytest.fixture(scope="module")
def reference_256(fla_one_layer):
    source, _ = fla_one_layer
    tokens = torch.randint(0, VOCAB, (1, 256), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        return tokens, _fla_reference(source, tokens)[0][0].numpy()


@pytest.fixture(scope="module")
def artifact(fla_one_layer, tmp_path_factory):
    """The imported model exported with a 16-token chunk: the step graph is the same for every chunk size, and the
    delta rule's 64-token chunk graph (the import's default) takes minutes to lower for ExecuTorch on 2 cores.
    The CLI's `export -m DIR` path is exercised by the quantized export below."""
    from seqedge.export.api import export_model
    from seqedge.model import SequentialAttentionModel

    _, path = fla_one_layer
    imported = import_hf(path)
    model = SequentialAttentionModel(dataclasses.replace(imported.config, chunk_size=16))
    model.load_state_dict(imported.state_dict())
    out = tmp_path_factory.mktemp("kda-art") / "art"
    export_model(model.eval(), out, ["onnx", "onnx-ort", "executorch"], progress=False)
    return out


def _steps(session, tokens):
    state, got = session.init_state(1), []
    for t in range(tokens.shape[1]):
        logits, state = session.step(tokens[:, t].numpy(), state)
        got.append(np.asarray(logits)[0])
    return np.stack(got)


@pytest.mark.parametrize("runtime", ["onnxruntime", "onnxruntime-fused", "executorch"])
def test_exported_step_matches_fla_over_256_tokens(artifact, reference_256, runtime):
    import seqedge

    tokens, want = reference_256
    assert rel_error(_steps(seqedge.load(artifact, runtime), tokens), want) <= TOL


@pytest.fixture(scope="module")
def trained_top1(fla_one_layer, tmp_path_factory):
    return quantized_top1(fla_one_layer[1], tmp_path_factory.mktemp("kda-q"))


@pytest.mark.parametrize("scheme", ["fp16", "int8", "int4"])
def test_quantized_step_keeps_top1(trained_top1, scheme):
    assert trained_top1[scheme] >= TOP1_MIN[scheme], trained_top1


def test_cli_import_writes_a_checkpoint_with_the_same_logits(fla, tmp_path):
    from seqedge.model import SequentialAttentionModel

    _, path = fla
    assert main(["import", str(path), "-o", str(tmp_path / "ck"), "-q"]) == 0
    loaded = SequentialAttentionModel.load_pretrained(tmp_path / "ck")
    tokens = torch.randint(0, VOCAB, (1, 19))
    with torch.no_grad():
        assert torch.equal(loaded(tokens)[0], import_hf(path)(tokens)[0])


REFUSED = [
    ("fla", dict(attn={"layers": [1], "num_heads": 2}), "attn"),
    ("fla", dict(use_short_conv=False), "use_short_conv"),
    ("fla", dict(safe_gate=True, lower_bound=-5.0), "safe_gate"),
    ("fla", dict(lower_bound=-5.0), "lower_bound"),
    ("fla", dict(hidden_act="powlu"), "hidden_act"),
    ("fla", dict(attnres_block_size=2), "attnres_block_size"),
    ("fla", dict(num_v_heads=3), "num_v_heads"),
    ("fla", dict(expand_v=1.3), "expand_v"),
    ("fla", dict(model_type="rwkv7"), "model_type"),
    ("kimi_dir", dict(layer_types=["linear_attention", "full_attention"]), "layer_types"),
    ("kimi_dir", dict(layer_types=None, num_hidden_layers=5), "layer_types"),      # transformers' default: hybrid
    ("kimi_dir", dict(mlp_layer_types=["dense", "sparse"]), "mlp_layer_types"),
    ("kimi_dir", dict(mlp_layer_types=None), "mlp_layer_types"),                   # the default: MoE after layer 0
    ("kimi_dir", dict(hidden_act="gelu"), "hidden_act"),
]


@pytest.mark.parametrize("source, changes, key", REFUSED, ids=[f"{s}-{k}" for s, _, k in REFUSED])
def test_refused_options_name_the_key_and_write_nothing(request, tmp_path, capsys, source, changes, key):
    _, path = request.getfixturevalue(source)
    assert_import_refused(path, tmp_path, capsys, key, **changes)


def test_mlp_width_follows_fla_rule_when_unset():
    from seqedge.families.kda import config_from_hf

    config = config_from_hf({"model_type": "kda", **FLA, "intermediate_size": None, "hidden_ratio": 4})
    assert config.mlp_hidden_size == 256 * math.ceil(int(32 * 4 * 2 / 3) / 256)
