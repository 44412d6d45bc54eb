"""The three forms of the scan agree: reference (float64 loops) == recurrent == chunked, outputs and final states.

Error criterion: ``max |actual - expected| / max |expected|`` over the whole tensor (every position is compared;
the scale is the tensor's largest entry, so tiny entries do not make the check meaningless). float32 is ~6e-8 per
operation; the chunked form sums up to C terms per output and the state accumulates over T tokens, so 2e-5 leaves
a margin of about 4x over the worst error measured on these shapes while any real bug shows up as O(1).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from seqedge.config import SUB_CHUNK
from seqedge.scan import (chunked_scan, decayed_scores, recurrent_scan, recurrent_step, reference_scan,
                          unit_lower_inverse)

TOL32 = 2e-5
TOL64 = 1e-11
G_MIN = -5.0
RULES = ("gated", "delta")


def scaled_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    assert torch.isfinite(actual).all(), "non-finite values (unwritten or overflowed memory)"
    diff = (actual.double() - expected.double()).abs().max()
    return float(diff / expected.double().abs().max().clamp_min(1e-30))


def make_inputs(gen, B, T, H, dk, dv, rule, gate="random", dtype=torch.float32):
    """Seeded scan inputs; for the delta rule q and k are L2-normalised per head, as the model does."""
    q = torch.randn(B, T, H, dk, generator=gen)
    k = torch.randn(B, T, H, dk, generator=gen)
    v = torch.randn(B, T, H, dv, generator=gen)
    if gate == "random":
        g = G_MIN * torch.sigmoid(2 * torch.randn(B, T, H, dk, generator=gen))
    elif gate == "g_min":
        g = torch.full((B, T, H, dk), G_MIN)
    elif gate == "near_zero":
        g = torch.full((B, T, H, dk), -1e-4)
    else:
        raise AssertionError(gate)
    beta = torch.sigmoid(torch.randn(B, T, H, generator=gen))
    if rule == "delta":
        q, k = F.normalize(q, dim=-1), F.normalize(k, dim=-1)
    state = torch.randn(B, H, dk, dv, generator=gen)
    return [x.to(dtype) for x in (q, k, v, g, beta, state)]


@pytest.fixture(autouse=True)
def poison_uninitialized_memory():
    """With deterministic algorithms on, torch fills every ``torch.empty`` with NaN: unwritten outputs fail."""
    import torch.utils.deterministic as det

    was_on, was_fill = torch.are_deterministic_algorithms_enabled(), det.fill_uninitialized_memory
    torch.use_deterministic_algorithms(True)
    det.fill_uninitialized_memory = True
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(was_on)
        det.fill_uninitialized_memory = was_fill


def test_poison_is_active():
    assert torch.isnan(torch.empty(8)).all()


# --- reference == recurrent == chunked -------------------------------------------------------------------------

@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("gate", ["random", "g_min", "near_zero"])
@pytest.mark.parametrize("chunk", [16, 32])
@pytest.mark.parametrize("length", ["1", "C-1", "C", "C+1", "3C+5"])
def test_three_forms_agree(gen, rule, gate, chunk, length):
    T = {"1": 1, "C-1": chunk - 1, "C": chunk, "C+1": chunk + 1, "3C+5": 3 * chunk + 5}[length]
    q, k, v, g, beta, s0 = make_inputs(gen, 2, T, 2, 16, 8, rule, gate)
    ref_o, ref_s = reference_scan(q, k, v, g, beta, rule=rule, initial_state=s0)
    rec_o, rec_s = recurrent_scan(q, k, v, g, beta, rule=rule, initial_state=s0)
    chk_o, chk_s = chunked_scan(q, k, v, g, beta, rule=rule, initial_state=s0, chunk_size=chunk)
    assert ref_o.dtype == torch.float64 and rec_o.dtype == chk_o.dtype == chk_s.dtype == torch.float32
    assert scaled_error(rec_o, ref_o) < TOL32 and scaled_error(rec_s, ref_s) < TOL32
    assert scaled_error(chk_o, ref_o) < TOL32 and scaled_error(chk_s, ref_s) < TOL32
    assert scaled_error(chk_o, rec_o) < TOL32 and scaled_error(chk_s, rec_s) < TOL32


@pytest.mark.parametrize("rule", RULES)
def test_long_sequence_4096(gen, rule):
    """4096 tokens, 64 chunks of 64: the state is carried through many chunk boundaries."""
    q, k, v, g, beta, s0 = make_inputs(gen, 1, 4096, 2, 16, 8, rule)
    ref_o, ref_s = reference_scan(q, k, v, g, beta, rule=rule, initial_state=s0)
    rec_o, rec_s = recurrent_scan(q, k, v, g, beta, rule=rule, initial_state=s0)
    chk_o, chk_s = chunked_scan(q, k, v, g, beta, rule=rule, initial_state=s0, chunk_size=64)
    assert scaled_error(chk_o, rec_o) < TOL32 and scaled_error(chk_s, rec_s) < TOL32
    assert scaled_error(chk_o, ref_o) < TOL32 and scaled_error(chk_s, ref_s) < TOL32
    assert scaled_error(rec_o, ref_o) < TOL32 and scaled_error(rec_s, ref_s) < TOL32


@pytest.mark.parametrize("rule", RULES)
def test_float64_chunked_matches_reference_tightly(gen, rule):
    q, k, v, g, beta, s0 = make_inputs(gen, 2, 53, 2, 16, 8, rule, dtype=torch.float64)
    ref_o, ref_s = reference_scan(q, k, v, g, beta, rule=rule, initial_state=s0)
    chk_o, chk_s = chunked_scan(q, k, v, g, beta, rule=rule, initial_state=s0, chunk_size=16)
    assert chk_o.dtype == torch.float64
    assert scaled_error(chk_o, ref_o) < TOL64 and scaled_error(chk_s, ref_s) < TOL64


@pytest.mark.parametrize("rule", RULES)
def test_no_initial_state_means_zeros(gen, rule):
    q, k, v, g, beta, s0 = make_inputs(gen, 2, 21, 2, 16, 8, rule)
    zeros = torch.zeros_like(s0)
    for scan, kw in ((recurrent_scan, {}), (chunked_scan, {"chunk_size": 16})):
        o1, s1 = scan(q, k, v, g, beta, rule=rule, **kw)
        o2, s2 = scan(q, k, v, g, beta, rule=rule, initial_state=zeros, **kw)
        assert torch.equal(o1, o2) and torch.equal(s1, s2)
    ref_o, _ = reference_scan(q, k, v, g, beta, rule=rule)
    o1, _ = chunked_scan(q, k, v, g, beta, rule=rule, chunk_size=16)
    assert scaled_error(o1, ref_o) < TOL32


@pytest.mark.parametrize("rule", RULES)
def test_chunked_state_carries_across_calls(gen, rule):
    """Scanning [0, 40) then [40, 77) from the carried state equals one scan over [0, 77)."""
    q, k, v, g, beta, s0 = make_inputs(gen, 2, 77, 2, 16, 8, rule)
    whole_o, whole_s = chunked_scan(q, k, v, g, beta, rule=rule, initial_state=s0, chunk_size=32)
    a_o, a_s = chunked_scan(*(x[:, :40] for x in (q, k, v, g, beta)), rule=rule, initial_state=s0, chunk_size=32)
    b_o, b_s = chunked_scan(*(x[:, 40:] for x in (q, k, v, g, beta)), rule=rule, initial_state=a_s, chunk_size=32)
    assert scaled_error(torch.cat([a_o, b_o], dim=1), whole_o) < TOL32
    assert scaled_error(b_s, whole_s) < TOL32


@pytest.mark.parametrize("rule", RULES)
def test_recurrent_step_is_one_reference_token(gen, rule):
    q, k, v, g, beta, s0 = make_inputs(gen, 3, 1, 2, 16, 8, rule)
    ref_o, ref_s = reference_scan(q, k, v, g, beta, rule=rule, initial_state=s0)
    o, s = recurrent_step(q[:, 0], k[:, 0], v[:, 0], g[:, 0], beta[:, 0], s0, rule=rule)
    assert o.shape == (3, 2, 8) and s.shape == (3, 2, 16, 8)
    assert scaled_error(o, ref_o[:, 0]) < TOL32 and scaled_error(s, ref_s) < TOL32


# --- the pieces of the chunked form ------------------------------------------------------------------------------

def direct_decayed_scores(x, y, b, strict):
    """float64 ``A[t, s] = sum_i x[t,i] y[s,i] exp(b[t,i] - b[s,i])`` over explicit pairwise differences."""
    x, y, b = x.double(), y.double(), b.double()
    diff = b.unsqueeze(-2) - b.unsqueeze(-3)                                    # [..., C(t), C(s), d]
    C = x.shape[-2]
    mask = torch.ones(C, C, dtype=torch.bool).tril(-1 if strict else 0)
    diff = torch.where(mask.unsqueeze(-1), diff, torch.full_like(diff, -torch.inf))   # exp(-inf) = 0 above
    return torch.einsum("...ti,...si,...tsi->...ts", x, y, torch.exp(diff))


@pytest.mark.parametrize("strict", [False, True])
@pytest.mark.parametrize("gate", ["random", "g_min", "near_zero"])
@pytest.mark.parametrize("C", [16, 64])
def test_decayed_scores_matches_direct_pairwise(gen, strict, gate, C):
    q, k, _, g, _, _ = make_inputs(gen, 2, C, 3, 8, 1, "gated", gate)
    x, y = q.transpose(1, 2), k.transpose(1, 2)                                  # [B, H, C, d]
    b = torch.cumsum(g.transpose(1, 2), dim=-2)                                 # b decreases by up to 5 a token
    expected = direct_decayed_scores(x, y, b, strict)
    assert scaled_error(decayed_scores(x.double(), y.double(), b.double(), strict=strict), expected) < TOL64
    actual = decayed_scores(x, y, b, strict=strict)
    assert actual.dtype == torch.float32 and scaled_error(actual, expected) < TOL32
    above = torch.ones(C, C, dtype=torch.bool).triu(1 if not strict else 0)
    assert (actual[..., above] == 0).all()


def correlated_keys(gen, C, dk, rho):
    """Unit keys whose pairwise cosine is about ``rho``: a shared direction plus independent noise."""
    common = torch.randn(1, 1, 1, dk, generator=gen, dtype=torch.float64)
    noise = torch.randn(2, C, 2, dk, generator=gen, dtype=torch.float64)
    keys = rho ** 0.5 * F.normalize(common, dim=-1) + (1 - rho) ** 0.5 * F.normalize(noise, dim=-1)
    return F.normalize(keys, dim=-1)


def repeated_squaring_inverse(lower):
    """(I + L)^-1 = prod_j (I + (-L)^(2^j)): exact in exact arithmetic, used here only to show the case is hard."""
    eye = torch.eye(lower.shape[-1], dtype=lower.dtype)
    power, inv = -lower, eye + (-lower)
    for _ in range(lower.shape[-1].bit_length() - 1):
        power = power @ power
        inv = inv @ (eye + power)
    return inv


def test_unit_lower_inverse_with_correlated_keys(gen):
    """DESIGN §1: C=64, keys with 0.9 correlation, slow decay; blocked forward substitution stays accurate."""
    C, dk = 64, 16
    k = correlated_keys(gen, C, dk, 0.9).transpose(1, 2).float()               # [B, H, C, dk]
    beta = torch.sigmoid(torch.randn(2, 2, C, 1, generator=gen)) * 0.5 + 0.5
    b = torch.cumsum(torch.full((2, 2, C, dk), -1e-3), dim=-2)                  # slow decay
    lower = decayed_scores(k, k * beta, b, strict=True)                          # float32 [B, H, C, C]
    expected = torch.linalg.inv(torch.eye(C, dtype=torch.float64) + lower.double())
    err = scaled_error(unit_lower_inverse(lower), expected)
    assert err < 1e-6, err
    assert scaled_error(unit_lower_inverse(lower.double()), expected) < TOL64
    # The case has teeth: an algebraically exact but unstable method is far off here.
    assert not scaled_error(repeated_squaring_inverse(lower), expected) < 1e-2


def test_delta_chunked_with_correlated_keys(gen):
    C, dk, dv, T = 64, 16, 8, 3 * 64 + 5
    k = correlated_keys(gen, T, dk, 0.9).float()                                # [B, T, H, dk]
    q = F.normalize(torch.randn(2, T, 2, dk, generator=gen), dim=-1)
    v = torch.randn(2, T, 2, dv, generator=gen)
    g = torch.full((2, T, 2, dk), -1e-3)
    beta = torch.sigmoid(torch.randn(2, T, 2, generator=gen)) * 0.5 + 0.5
    s0 = torch.randn(2, 2, dk, dv, generator=gen)
    ref_o, ref_s = reference_scan(q, k, v, g, beta, rule="delta", initial_state=s0)
    chk_o, chk_s = chunked_scan(q, k, v, g, beta, rule="delta", initial_state=s0, chunk_size=C)
    assert scaled_error(chk_o, ref_o) < TOL32 and scaled_error(chk_s, ref_s) < TOL32


# --- gradients -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("T", [5, 2 * SUB_CHUNK + 3])
def test_chunked_gradcheck(gen, rule, T):
    """float64 gradients of the chunked form w.r.t. q, k, v, g, beta and the initial state (full Jacobian):
    one padded chunk, and three chunks (state passed twice, padded tail)."""
    inputs = make_inputs(gen, 1, T, 1, 4, 3, rule, dtype=torch.float64)
    inputs = [x.requires_grad_() for x in inputs]

    def f(q, k, v, g, beta, s0):
        return chunked_scan(q, k, v, g, beta, rule=rule, initial_state=s0, chunk_size=SUB_CHUNK)

    assert torch.autograd.gradcheck(f, inputs, eps=1e-6, atol=1e-8, rtol=1e-6)


# --- input checks --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("scan", [reference_scan, recurrent_scan, chunked_scan])
def test_bad_inputs_raise(gen, scan):
    q, k, v, g, beta, s0 = make_inputs(gen, 2, 5, 2, 16, 8, "gated")
    with pytest.raises(ValueError, match="rule"):
        scan(q, k, v, g, beta, rule="linear")
    with pytest.raises(ValueError, match="beta"):
        scan(q, k, v, g, beta[:, :, :1], rule="gated")
    with pytest.raises(ValueError, match="initial_state"):
        scan(q, k, v, g, beta, rule="gated", initial_state=s0[:, :, :4])
    with pytest.raises(ValueError, match="k must"):
        scan(q, k[..., :8], v, g, beta, rule="gated")


@pytest.mark.parametrize("chunk", [0, 24, -16])
def test_chunk_size_must_be_multiple_of_16(gen, chunk):
    q, k, v, g, beta, _ = make_inputs(gen, 1, 5, 1, 16, 8, "gated")
    with pytest.raises(ValueError, match="chunk_size"):
        chunked_scan(q, k, v, g, beta, rule="gated", chunk_size=chunk)
