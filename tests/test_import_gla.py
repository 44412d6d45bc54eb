"""GLA import (seqedge/families/gla.py, `seqedge import`, `seqedge export -m`) against fla.

fla's ``GLAForCausalLM`` forward needs CUDA (Triton kernels), so the oracle here is assembled from the fla model's
own torch submodules (its ``nn.Linear`` projections, the ``nn.Conv1d`` of its short convs, its norm weights with
fla's ``rms_norm_ref`` formulas) and fla's pure-torch ``naive_recurrent_gla`` scan, on tiny random models built
with fla's classes and written with ``save_pretrained`` to a temp dir (no download). It checks

- each layer: the imported mixer against the fla layer's reference (random inputs, a carried scan state) to 1e-4
  relative, float32;
- the whole model: logits over a sequence fed in several calls (chunked, chunked with the state carried, steps)
  and the final states against the layer references chained into a model, to 1e-4 relative, with and without
  fla's short convs (``use_short_conv``; without them a layer's state is its scan matrix only);
- the exported ``step`` of onnx, onnx-ort and executorch artifacts (made by the CLI from the HF directory), token by
  token over 256 tokens, against the same reference to 1e-4 relative; top-1 agreement >= 99% of the onnx fp16 and
  int8 steps on a copy of the imported model trained briefly on a low-entropy language (``_families.trained_copy``:
  on random weights the logits are flat and top-1 measures near-ties), against that copy's float32 torch forward;
- the exported chunk entry (prefill), a state saved and loaded, and batched rows (the server's slots) on a
  state without conv tails;
- refusals: one line naming the config key, exit code 2, nothing written.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("fla", reason="fla is not installed (pip install flash-linear-attention==0.6.0 fla-core==0.6.0)")

from _families import (FLA_GPU_TOL, NEEDS_CUDA, TOP1_MIN, assert_import_refused, fla_gpu_error,  # noqa: E402
                       quantized_top1, rel_error, stepped_logits)

from seqedge.cli.main import main  # noqa: E402
from seqedge.families import import_hf  # noqa: E402

VOCAB = 300                 # above 256: the export's parity check feeds byte tokens
TOL = 1e-4
CONFIG = dict(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_heads=2, expand_k=0.5, expand_v=1.0,
              tie_word_embeddings=False, norm_eps=1e-5)


def _fla_model(**overrides):
    from fla.models import GLAConfig, GLAForCausalLM

    torch.manual_seed(0)
    model = GLAForCausalLM(GLAConfig(**{**CONFIG, **overrides})).eval()
    with torch.no_grad():          # non-trivial values everywhere; gate logits wide enough for decays of e^-3
        for name, p in model.named_parameters():
            if "norm" in name:
                p.uniform_(0.5, 1.5)
            elif name.endswith("gk_proj.1.bias"):
                p.uniform_(-4.0, 4.0)
            elif name.endswith("gk_proj.1.weight"):
                p.normal_(0.0, 2.0)
            elif name.endswith("conv1d.weight"):
                p.normal_(0.0, 0.5)
            elif p.dim() == 2 and "embeddings" not in name:
                p.normal_(0.0, 1.2 / p.shape[1] ** 0.5)
    return model


def _saved(model, tmp_path_factory, name):
    path = tmp_path_factory.mktemp(name) / "hf"
    model.save_pretrained(path)
    return model, path


@pytest.fixture(scope="module")
def hf(tmp_path_factory):
    return _saved(_fla_model(), tmp_path_factory, "gla")


@pytest.fixture(scope="module")
def hf_conv(tmp_path_factory):
    return _saved(_fla_model(use_short_conv=True, tie_word_embeddings=True, intermediate_size=48),
                  tmp_path_factory, "gla-conv")


# the oracle: fla's torch submodules and its naive scan -------------------------------------------------------
def _rms(x, weight, eps):
    from fla.modules.norm.layernorm import rms_norm_ref

    return rms_norm_ref(x, weight, None, eps=eps)


def _conv(conv, x, tail):
    """fla's ShortConvolution as the nn.Conv1d it is: causal (tail in front), SiLU; x ``[B, T, C]``."""
    xc = torch.cat([tail, x.transpose(1, 2)], dim=-1)
    y = F.conv1d(xc, conv.weight, conv.bias, groups=conv.weight.shape[0])
    return F.silu(y).transpose(1, 2), xc[..., -(conv.weight.shape[-1] - 1):]


def _fla_layer(attn, h, scan, tails):
    """fla's GatedLinearAttention on h ``[B, T, D]`` with state (scan ``[B, H, K, V]``, conv tails or None)."""
    from fla.ops.gla.naive import naive_recurrent_gla

    q, k, v = attn.q_proj(h), attn.k_proj(h), attn.v_proj(h)
    if attn.use_short_conv:
        (q, tq), (k, tk), (v, tv) = (_conv(c, x, t) for c, x, t in
                                     zip((attn.q_conv1d, attn.k_conv1d, attn.v_conv1d), (q, k, v), tails))
        tails = (tq, tk, tv)
    B, T, H = h.shape[0], h.shape[1], attn.num_heads
    q, k, gk = (x.reshape(B, T, H, attn.head_k_dim) for x in (q, k, attn.gk_proj(h)))
    v = v.reshape(B, T, H, attn.head_v_dim)
    gk = F.logsigmoid(gk) / attn.gate_logit_normalizer
    o, scan = naive_recurrent_gla(q, k, v, gk, initial_state=scan, output_final_state=True)
    g = attn.g_proj(h).reshape(B, T, H, attn.head_v_dim)
    o = _rms(o, attn.g_norm_swish_gate.weight, attn.g_norm_swish_gate.eps) * F.silu(g)
    return attn.o_proj(o.reshape(B, T, -1)), scan, tails


def _zero_state(model, B):
    a = model.model.layers[0].attn
    tails = tuple(torch.zeros(B, c.weight.shape[0], a.conv_size - 1) for c in
                  (a.q_conv1d, a.k_conv1d, a.v_conv1d)) if a.use_short_conv else None
    return [(torch.zeros(B, a.num_heads, a.head_k_dim, a.head_v_dim), tails) for _ in model.model.layers]


def _fla_logits(model, tokens, states):
    """The fla model assembled from its layers' references: logits ``[B, T, V]`` and the new per-layer states."""
    x = model.model.embeddings(tokens)
    new = []
    for layer, (scan, tails) in zip(model.model.layers, states):
        y, scan, tails = _fla_layer(layer.attn, _rms(x, layer.attn_norm.weight, layer.attn_norm.eps), scan, tails)
        x = x + y
        m = _rms(x, layer.mlp_norm.weight, layer.mlp_norm.eps)
        x = x + layer.mlp.down_proj(F.silu(layer.mlp.gate_proj(m)) * layer.mlp.up_proj(m))
        new.append((scan, tails))
    x = _rms(x, model.model.norm.weight, model.model.norm.eps)
    return model.lm_head(x), new


# tests ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("which", ["hf", "hf_conv"])
def test_each_layer_matches_fla_with_carried_state(request, which):
    source, path = request.getfixturevalue(which)
    model = import_hf(path)
    gen = torch.Generator().manual_seed(4)
    conv = source.config.use_short_conv
    for attn, ours in zip((layer.attn for layer in source.model.layers), (b.attn for b in model.blocks)):
        h = torch.randn(2, 37, 32, generator=gen)
        scan = torch.randn(2, attn.num_heads, attn.head_k_dim, attn.head_v_dim, generator=gen)
        tails = _zero_state(source, 2)[0][1]
        tails = tuple(torch.randn(t.shape, generator=gen) for t in tails) if conv else None
        with torch.no_grad():
            want, want_scan, want_tails = _fla_layer(attn, h, scan, tails)
            tail = torch.cat(tails, dim=1) if conv else None
            got, got_tail, got_scan = ours(h, tail, scan)
        assert rel_error(got, want) <= TOL and rel_error(got_scan, want_scan) <= TOL
        assert (got_tail is None) == (not conv)
        if conv:
            assert rel_error(got_tail, torch.cat(want_tails, dim=1)) <= TOL


@pytest.mark.parametrize("which", ["hf", "hf_conv"])
def test_import_matches_fla_with_carried_state(request, which):
    source, path = request.getfixturevalue(which)
    model = import_hf(path)
    c = model.config
    assert c.mixer.gate == "logsigmoid" and c.mixer.gate_normalizer == 16 and c.mixer.beta == "none"
    assert c.mixer.short_conv == source.config.use_short_conv
    assert len(model.state_specs) == c.num_layers * (2 if c.mixer.short_conv else 1)
    tokens = torch.randint(0, VOCAB, (2, 53), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want, want_states = _fla_logits(source, tokens, _zero_state(source, 2))
        logits, state = model(tokens[:, :20])                                  # chunked, 20 tokens
        parts = [logits]
        more, state = model(tokens[:, 20:45], state)                           # chunked, state carried
        parts.append(more)
        for t in range(45, 53):                                                # recurrent steps
            step, state = model.step(tokens[:, t], state)
            parts.append(step[:, None])
    assert rel_error(torch.cat(parts, dim=1), want) <= TOL
    flat = [t for scan, tails in want_states for t in ((torch.cat(tails, 1), scan) if tails else (scan,))]
    for got, w in zip(state.tensors, flat, strict=True):
        assert rel_error(got, w) <= TOL


def test_mlp_width_follows_fla_when_the_config_has_none(hf, hf_conv):
    assert import_hf(hf[1]).config.mlp_hidden_size == hf[0].model.layers[0].mlp.intermediate_size == 256
    assert import_hf(hf_conv[1]).config.mlp_hidden_size == 48


@NEEDS_CUDA
def test_import_matches_fla_model_on_gpu(hf):
    """The checkpoint against fla's own model forward (its Triton kernels on the card), logits over 100 tokens."""
    error = fla_gpu_error(*hf, VOCAB)
    assert error <= FLA_GPU_TOL, error


@pytest.fixture(scope="module")
def reference_256(hf):
    source, _ = hf
    tokens = torch.randint(0, VOCAB, (1, 256), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        want, _ = _fla_logits(source, tokens, _zero_state(source, 1))
    return tokens, want[0].numpy()


@pytest.fixture(scope="module")
def artifact(hf, tmp_path_factory):
    _, path = hf
    out = tmp_path_factory.mktemp("gla-art") / "art"
    assert main(["export", "-m", str(path), "--target", "onnx,onnx-ort,executorch", "--out", str(out),
                 "--quiet"]) == 0
    return out


def _steps(artifact, runtime, tokens, **kw):
    import seqedge

    session = seqedge.load(artifact, runtime, **kw)
    assert [s.kind for s in session.specs] == ["scan"] * 2                    # no conv tails in the state
    return stepped_logits(session, tokens)


@pytest.mark.parametrize("runtime", ["onnxruntime", "onnxruntime-fused", "executorch"])
def test_exported_step_matches_fla_over_256_tokens(reference_256, artifact, runtime):
    tokens, want = reference_256
    assert rel_error(_steps(artifact, runtime, tokens), want) <= TOL


@pytest.mark.parametrize("runtime", ["onnxruntime", "executorch"])
def test_exported_prefill_state_file_and_batched_slots(reference_256, artifact, tmp_path, runtime):
    """The chunk entry, a saved state and the server's batched slots over a state of scan matrices only."""
    import seqedge
    from seqedge.serve.slots import probe_batching
    from seqedge.state import State

    tokens, want = reference_256
    session = seqedge.load(artifact, runtime)
    logits, state = session.prefill(tokens[:, :150].numpy(), session.init_state(1))   # 2 chunks, then steps
    assert rel_error(logits[0], want[:150]) <= TOL
    state.save(tmp_path / "s.safetensors")
    state = State.load(tmp_path / "s.safetensors")
    got = []
    for t in range(150, 170):
        step, state = session.step(tokens[:, t].numpy(), state)
        got.append(np.asarray(step)[0])
    assert rel_error(np.stack(got), want[150:170]) <= TOL
    if runtime == "onnxruntime":                  # the executorch step is exported for batch 1 only
        plan = probe_batching(session, 3)
        assert plan.batched, plan.reason


@pytest.fixture(scope="module")
def trained_top1(hf, tmp_path_factory):
    return quantized_top1(hf[1], tmp_path_factory.mktemp("gla-q"))


@pytest.mark.parametrize("scheme", ["fp16", "int8", "int4"])
def test_quantized_step_keeps_top1(trained_top1, scheme):
    assert trained_top1[scheme] >= TOP1_MIN[scheme], trained_top1


@pytest.mark.parametrize("changes, key", [
    (dict(attn={"layers": [1], "num_heads": 2}), "attn"),
    (dict(feature_map="relu"), "feature_map"),
    (dict(use_output_gate=False), "use_output_gate"),
    (dict(num_kv_heads=1), "num_kv_heads"),
    (dict(clamp_min=-1.0), "clamp_min"),
    (dict(hidden_act="powlu"), "hidden_act"),
    (dict(use_gv=True), "use_gv"),
    (dict(attnres_block_size=2), "attnres_block_size"),
    (dict(expand_k=0.3), "expand_k"),
])
def test_refused_options_name_the_key_and_write_nothing(hf, tmp_path, capsys, changes, key):
    assert_import_refused(hf[1], tmp_path, capsys, key, **changes)
