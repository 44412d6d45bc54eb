"""The generalised mixer's parts in the three scan forms and in the model's two paths.

Oracles: the float64 reference scan (seqedge.scan.reference_scan, plain loops from DESIGN §1) for the chunked
form's unbounded-decay path (decay per head, far below g_min, as Mamba2's and Gated DeltaNet's softplus gate
give); a float64 copy of the model for its float32 sequence path; the sequence path for the one-token path
(step by step with the state carried). Tolerances as tests/test_scan.py (float32 ~1e-5 relative).
"""

from __future__ import annotations

import pytest
import torch
from _artifacts import GLA_MIXER

from seqedge.config import MixerParts, SequentialAttentionConfig
from seqedge.model import SequentialAttentionModel
from seqedge.scan import chunked_scan, recurrent_scan, reference_scan
from seqedge.state import state_specs

TOL32 = 2e-5
RULES = ("gated", "delta")


def scaled_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    assert torch.isfinite(actual).all(), "non-finite values"
    return float((actual.double() - expected.double()).abs().max() / expected.double().abs().max().clamp_min(1e-30))


def _per_head_inputs(gen, B, T, H, dk, dv, rule, per_key=False):
    """Scan inputs with one decay per head (broadcast over dk; per key dim with ``per_key``, as KDA's) reaching -30
    per token: no g_min bound."""
    q, k = torch.randn(B, T, H, dk, generator=gen), torch.randn(B, T, H, dk, generator=gen)
    if rule == "delta":
        q, k = torch.nn.functional.normalize(q, dim=-1), torch.nn.functional.normalize(k, dim=-1)
    v = torch.randn(B, T, H, dv, generator=gen)
    g = -30.0 * torch.rand(B, T, H, dk if per_key else 1, generator=gen) ** 3   # mostly mild, some steep
    beta = torch.rand(B, T, H, generator=gen)
    s0 = torch.randn(B, H, dk, dv, generator=gen)
    return q, k, v, g.expand(-1, -1, -1, dk), beta, s0


@pytest.mark.parametrize("per_key", [False, True], ids=["per-head", "per-key"])
@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("T", [1, 37, 64])
def test_unbounded_decay_in_three_forms(gen, rule, T, per_key):
    q, k, v, g, beta, s0 = _per_head_inputs(gen, 2, T, 3, 16, 8, rule, per_key)
    want_o, want_s = reference_scan(q, k, v, g, beta, rule=rule, scale=1.0, initial_state=s0)
    rec_o, rec_s = recurrent_scan(q, k, v, g, beta, rule=rule, scale=1.0, initial_state=s0)
    chk_o, chk_s = chunked_scan(q, k, v, g, beta, rule=rule, scale=1.0, initial_state=s0, chunk_size=32,
                                bounded=False)
    for got, want in ((rec_o, want_o), (rec_s, want_s), (chk_o, want_o), (chk_s, want_s)):
        assert scaled_error(got, want) <= TOL32


def test_bounded_form_is_wrong_for_unbounded_decay(gen):
    """Why the flag exists: the sub-chunk midpoint reference overflows when decays exceed g_min."""
    q, k, v, g, beta, s0 = _per_head_inputs(gen, 1, 32, 2, 16, 8, "gated")
    g = torch.full_like(g, -20.0)
    o, _ = chunked_scan(q, k, v, g, beta, rule="gated", initial_state=s0, chunk_size=32)
    want, _ = reference_scan(q, k, v, g, beta, rule="gated", initial_state=s0)
    assert not torch.isfinite(o).all() or scaled_error(o, want) > 1e-3


DIMS = dict(vocab_size=64, hidden_size=32, num_layers=2, num_heads=4, head_k_dim=16, head_v_dim=8, gate_rank=4,
            chunk_size=16, mlp_multiple_of=16)
PARTS = {
    "mamba2": ("gated", MixerParts(gate="softplus", beta="dt", num_key_heads=2, conv_bias=True, output="gate_norm",
                                   out_norm_size=16, scale=1.0, mlp=False)),
    "gated-deltanet": ("delta", MixerParts(gate="softplus", beta="sigmoid", num_key_heads=2, qk_norm="rsqrt",
                                           skip=False)),
    "kda": ("delta", MixerParts(gate="softplus_key", num_key_heads=2, qk_norm="rsqrt", skip=False,
                                out_gate_act="sigmoid", out_gate_rank=4)),
    "gated-normalised": ("gated", MixerParts(qk_norm="rsqrt")),
    "grouped-native": ("gated", MixerParts(num_key_heads=1)),
    "gla": ("gated", MixerParts(**GLA_MIXER)),
}


def _model(name: str, dtype=torch.float32) -> SequentialAttentionModel:
    rule, parts = PARTS[name]
    torch.manual_seed(0)
    model = SequentialAttentionModel(SequentialAttentionConfig(**DIMS, update_rule=rule, mixer=parts))
    with torch.no_grad():                          # non-trivial values in every part the init leaves at 0 or 1
        for n, p in model.named_parameters():
            if n.endswith(("norm.weight", "skip", "conv.bias", "dt_bias")):
                p.uniform_(0.5, 1.5) if "norm" in n else p.uniform_(-0.5, 0.5)
    return model.eval().to(dtype)


@pytest.mark.parametrize("name", sorted(PARTS))
def test_sequence_path_matches_float64_and_step_path(gen, name):
    model = _model(name)
    ref = _model(name, torch.float64)
    tokens = torch.randint(0, 64, (2, 41), generator=gen)
    with torch.no_grad():
        logits, state = model(tokens[:, :30])
        want, want_state = ref(tokens[:, :30])
        assert scaled_error(logits, want) <= TOL32
        for got, w in zip(state.tensors, want_state.tensors):
            assert scaled_error(got, w) <= TOL32
        full, _ = model(tokens)
        for t in range(30, 41):                     # the state carried from the sequence path into the steps
            step, state = model.step(tokens[:, t], state)
            assert scaled_error(step, full[:, t]) <= TOL32


@pytest.mark.parametrize("name", sorted(PARTS))
def test_state_spec_and_weights_follow_the_parts(name):
    model = _model(name)
    c = model.config
    scan = (c.num_heads, c.head_k_dim, c.head_v_dim)
    per_layer = [(c.conv_channels, c.conv_kernel - 1), scan] if c.mixer.short_conv else [scan]
    specs = state_specs(c)
    assert [s.shape[1:] for s in specs] == per_layer * c.num_layers
    assert [s.name for s in specs] == [f"state.{i}" for i in range(len(specs))]
    assert [s.layer for s in specs] == [i // len(per_layer) for i in range(len(specs))]
    assert ("blocks.0.attn.conv.weight" in model.state_dict()) == c.mixer.short_conv
    assert c.conv_channels == 2 * c.key_heads * c.head_k_dim + c.num_heads * c.head_v_dim
    names = set(model.state_dict())
    assert ("blocks.0.mlp.down.weight" in names) == c.mixer.mlp
    assert ("blocks.0.attn.A_log" in names) == (c.mixer.gate in ("softplus", "softplus_key"))
    assert ("blocks.0.attn.gate_up.bias" in names) == (c.mixer.gate in ("sigmoid", "logsigmoid"))
    assert ("blocks.0.attn.out_gate_down.weight" in names) == bool(c.mixer.out_gate_rank)
    assert ("blocks.0.attn.skip" in names) == c.mixer.skip
    assert SequentialAttentionConfig.from_json(c.to_json()) == c


@pytest.mark.parametrize("parts, fields", [
    (dict(beta="dt"), "mixer.beta.*mixer.gate"),
    (dict(num_key_heads=3), "num_heads.*mixer.num_key_heads"),
    (dict(out_norm_size=7), "mixer.out_norm_size"),
    (dict(gate="tanh"), "mixer.gate"),
    (dict(qk_norm="l1"), "mixer.qk_norm"),
    (dict(gate_normalizer=16.0), "mixer.gate_normalizer.*logsigmoid"),
    (dict(gate="logsigmoid", gate_normalizer=0.0), "mixer.gate_normalizer"),
    (dict(short_conv=False, conv_bias=True), "mixer.conv_bias.*mixer.short_conv"),
    (dict(out_gate_act="relu"), "mixer.out_gate_act"),
    (dict(out_gate_rank=-1), "mixer.out_gate_rank"),
    (dict(beta_scale=0.0), "mixer.beta_scale"),
    (dict(beta="none", beta_scale=2.0), "mixer.beta_scale.*sigmoid"),
    (dict(out_norm_eps=-1e-5), "mixer.out_norm_eps"),
])
def test_clashing_parts_are_named(parts, fields):
    with pytest.raises(ValueError, match=fields):
        SequentialAttentionConfig(**DIMS, mixer=MixerParts(**parts))


FINGERPRINT_BEFORE_LATER_PARTS = "5061756cc00ffb7e"     # the config below as written before beta_scale / out_norm_eps


def test_later_parts_at_their_defaults_leave_configs_and_fingerprints_as_before():
    """Artifacts of imported models written before beta_scale / out_norm_eps existed keep their fingerprints."""
    from seqedge.state import model_fingerprint

    mamba2 = SequentialAttentionConfig(**DIMS, mixer=MixerParts(gate="softplus", beta="dt", mlp=False))
    assert not {"beta_scale", "out_norm_eps"} & set(mamba2.to_dict()["mixer"])
    # the fingerprint of this config as written before those parts existed
    assert model_fingerprint(mamba2) == FINGERPRINT_BEFORE_LATER_PARTS
    olmo = SequentialAttentionConfig(**DIMS, mixer=MixerParts(beta_scale=2.0, out_norm_eps=1e-5))
    assert olmo.to_dict()["mixer"]["beta_scale"] == 2.0 and olmo.to_dict()["mixer"]["out_norm_eps"] == 1e-5
    assert SequentialAttentionConfig.from_dict(olmo.to_dict()) == olmo
    assert model_fingerprint(olmo) != model_fingerprint(SequentialAttentionConfig(**DIMS, mixer=MixerParts()))


def test_native_config_serialises_as_before():
    assert "mixer" not in SequentialAttentionConfig.preset("tiny").to_dict()
    with pytest.raises(ValueError, match="unknown mixer field"):
        SequentialAttentionConfig.from_dict({**DIMS, "mixer": {"gates": "sigmoid"}})


@pytest.mark.parametrize("how", ["rule", "rsqrt", "none"])
def test_qk_norm_forms(gen, how):
    """``rsqrt`` is fla's and transformers' l2norm, ``rule`` torch's normalize iff delta: they differ near 0."""
    model = SequentialAttentionModel(SequentialAttentionConfig(**DIMS, update_rule="delta",
                                                               mixer=MixerParts(qk_norm=how)))
    x = torch.randn(3, 5, 16, generator=gen) * torch.tensor([1.0, 1e-2, 1e-4]).view(3, 1, 1)
    got = model.blocks[0].attn._qk_norm(x)
    norm = x.pow(2).sum(-1, keepdim=True)
    want = {"rule": x / norm.sqrt().clamp_min(1e-6), "rsqrt": x / (norm + 1e-6).sqrt(), "none": x}[how]
    torch.testing.assert_close(got, want, rtol=1e-6, atol=0)


def test_logsigmoid_gate_stays_finite_where_sigmoid_underflows():
    """The exported graphs compute the gate from these plain ops; log(sigmoid(x)) would be -inf below ~-88."""
    from seqedge.layers import _logsigmoid

    x = torch.tensor([-1e4, -200.0, -90.0, -20.0, -1.0, 0.0, 1.0, 30.0, 1e4])
    torch.testing.assert_close(_logsigmoid(x), torch.nn.functional.logsigmoid(x), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("bias", [True, False])
def test_short_conv_step_equals_the_sequence_form(dtype, bias):
    """The one-token conv (reshapes instead of transposes) against the sequence form at T = 1, odd channels and
    batch; more than one token goes to the sequence form."""
    from seqedge.ops import short_conv, short_conv_step

    gen = torch.Generator().manual_seed(7)
    B, ch, K = 3, 37, 4
    r = lambda *s: torch.randn(*s, generator=gen, dtype=dtype)     # noqa: E731
    x, tail, w, b = r(B, 1, ch), r(B, ch, K - 1), r(ch, 1, K), (r(ch) if bias else None)
    for got, want in zip(short_conv_step(x, tail, w, b), short_conv(x, tail, w, b)):
        torch.testing.assert_close(got, want)
    x3 = r(B, 3, ch)
    for got, want in zip(short_conv_step(x3, tail, w, b), short_conv(x3, tail, w, b)):
        torch.testing.assert_close(got, want)
