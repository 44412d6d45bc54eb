"""The ExecuTorch ``chunk`` program's scan (export/xnnpack_scan.py) computes the chunked scan's function.

Chained as in tests/test_scan.py: :class:`StaticMaskScan` against :func:`seqedge.scan.chunked_scan` (the form it
replaces in the export) and against the float64 :func:`seqedge.scan.reference_scan`, outputs and final states,
both update rules, lengths that fill chunks exactly, leave a tail, or fit in one partial chunk, with and without
a carried state. Error: ``max |actual - expected| / max |expected|``. float32: 2e-5 for the scan, as in
tests/test_scan.py (chunked_scan itself is float32 rounding away from the reference), 1e-6 for the decayed
scores; float64: 1e-11 (the same math in another order).

Also: its decayed scores equal :func:`seqedge.scan.decayed_scores` (strict and not), also where a masked-out
score overflows float32; and the lowered ``chunk`` of a one-layer model keeps no scan op on the portable kernels
and runs, loaded from a file (so constants are memory-mapped, as on a device), to 1e-5 of the eager model.

The unbounded-gate (segment-sum) form, against ``chunked_scan(bounded=False)`` and the float64 reference: decays
per head and per key reaching -30 per token, and a steep decay early in every chunk followed by mild ones, where
a difference of running sums would lose ~1e-5 of the mild decays; float32 within 1e-6, float64 1e-11; a lowered
Gated DeltaNet-style model (softplus gate, delta rule) likewise, with no cumsum, flip, arange or comparison left
portable.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from seqedge.config import SUB_CHUNK, MixerParts, SequentialAttentionConfig
from seqedge.export.xnnpack_scan import REF_SPAN, StaticMaskAttention, StaticMaskScan
from seqedge.model import SequentialAttentionModel
from seqedge.scan import chunked_scan, decayed_scores, reference_scan

TOL32, TOL_SCORES, TOL64 = 2e-5, 1e-6, 1e-11
TOL_LOWERED = 1e-5          # the lowered program against the eager model, as test_xnnpack_friendly
TOL_SEGMENT = 1e-6         # the unbounded form's float32 scan, against chunked_scan and the float64 reference
G_MIN = -5.0
# what chunked_scan builds its masks and prefix sums from, none of which XNNPACK takes on a symbolic batch (the
# softplus gate's own threshold, gt.Scalar and where, is the mixer's, not the scan's)
SCAN_OPS = {"cumsum.default", "flip.default", "arange.default", "arange.start", "arange.start_step", "gt.Tensor",
            "ge.Tensor", "lt.Tensor", "le.Tensor", "eq.Tensor"}


def scaled_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    assert actual.shape == expected.shape and actual.dtype == expected.dtype, (actual.shape, expected.shape)
    assert torch.isfinite(actual).all(), "non-finite values"
    diff = (actual.double() - expected.double()).abs().max()
    return float(diff / expected.double().abs().max().clamp_min(1e-30))


def gates(gen: torch.Generator, shape: tuple[int, ...], kind: str) -> torch.Tensor:
    """Log forget gates in [g_min, 0): random, all at g_min, near zero, or a mix of fast and slow key dims."""
    if kind == "random":
        return G_MIN * torch.sigmoid(2 * torch.randn(shape, generator=gen))
    if kind == "g_min":
        return torch.full(shape, G_MIN)
    if kind == "near_zero":
        return torch.full(shape, -1e-4)
    if kind == "mixed":            # half-lives from ~1 to ~10^4 tokens across the key dim, as the model's init
        rate = torch.logspace(0, -4, shape[-1])
        return G_MIN * rate * torch.rand(shape, generator=gen)
    raise AssertionError(kind)


def scan_inputs(gen, B, T, H, dk, dv, rule, gate, dtype=torch.float32):
    q, k = torch.randn(B, T, H, dk, generator=gen), torch.randn(B, T, H, dk, generator=gen)
    if rule == "delta":
        q, k = F.normalize(q, dim=-1), F.normalize(k, dim=-1)
    v = torch.randn(B, T, H, dv, generator=gen)
    beta = torch.sigmoid(torch.randn(B, T, H, generator=gen))
    state = torch.randn(B, H, dk, dv, generator=gen)
    return [x.to(dtype) for x in (q, k, v, gates(gen, (B, T, H, dk), gate), beta, state)]


# --- decayed scores -------------------------------------------------------------------------------------------
def _scores_inputs(gen, L, C, d, gate, scale=1.0):
    x, y = scale * torch.randn(L, C, d, generator=gen), scale * torch.randn(L, C, d, generator=gen)
    b = torch.cumsum(gates(gen, (L, C, d), gate), dim=1)
    mid = b[:, SUB_CHUNK // 2::SUB_CHUNK].unsqueeze(2)                      # [L, nb, 1, d]: b at row 16j+8
    return x, y, b, mid


@pytest.mark.parametrize("strict", [False, True])
@pytest.mark.parametrize("gate", ["random", "g_min", "near_zero", "mixed"])
@pytest.mark.parametrize("C", [16, 64])
def test_decayed_scores_match(gen, strict, gate, C):
    x, y, b, mid = _scores_inputs(gen, 3, C, 16, gate)
    want = decayed_scores(x, y, b, strict=strict)
    got = StaticMaskScan(C).decayed_scores(x, y, b, mid, strict=strict)
    assert scaled_error(got, want) <= TOL_SCORES
    kept = torch.ones(C, C).tril(-1 if strict else 0).bool()
    assert (got[:, ~kept] == 0).all()                                        # masked-out scores are zeros


def test_overflowing_masked_scores_stay_out(gen):
    """Masked-out scores up to exp(76) |x_t| |y_s| overflow float32 for large x, y; the mask still zeroes them."""
    x, y, b, mid = _scores_inputs(gen, 2, 64, 16, "g_min", scale=3e3)
    nb = 64 // SUB_CHUNK
    x_dec = x.unsqueeze(1) * torch.exp(torch.clamp(b.unsqueeze(1) - mid, max=REF_SPAN))      # [L, nb, C, d]
    yb, bb = y.reshape(-1, nb, SUB_CHUNK, 16), b.reshape(-1, nb, SUB_CHUNK, 16)
    raw = x_dec @ (yb * torch.exp(mid - bb)).transpose(-1, -2)                               # unmasked scores
    assert torch.isinf(raw).any()                     # the case the clamp to +-FLT_MAX before the mask is for
    want = decayed_scores(x, y, b, strict=False)
    got = StaticMaskScan(64).decayed_scores(x, y, b, mid, strict=False)
    assert scaled_error(got, want) <= TOL_SCORES


# --- the scan -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("rule", ["gated", "delta"])
@pytest.mark.parametrize("gate", ["random", "g_min", "mixed"])
@pytest.mark.parametrize("length", ["C", "3C", "2C+5", "7"])
@pytest.mark.parametrize("carried", [True, False])
def test_scan_matches_chunked_and_reference(gen, rule, gate, length, carried):
    C = 32
    T = {"C": C, "3C": 3 * C, "2C+5": 2 * C + 5, "7": 7}[length]
    q, k, v, g, beta, s0 = scan_inputs(gen, 2, T, 3, 16, 8, rule, gate)
    s0 = s0 if carried else None
    got_o, got_s = StaticMaskScan(C)(q, k, v, g, beta, rule=rule, initial_state=s0)
    want_o, want_s = chunked_scan(q, k, v, g, beta, rule=rule, initial_state=s0, chunk_size=C)
    ref_o, ref_s = reference_scan(*(x.double() for x in (q, k, v, g, beta)), rule=rule,
                                  initial_state=None if s0 is None else s0.double())
    assert scaled_error(got_o, want_o) <= TOL32 and scaled_error(got_s, want_s) <= TOL32
    assert scaled_error(got_o.double(), ref_o) <= TOL32 and scaled_error(got_s.double(), ref_s) <= TOL32


def test_carried_state_is_used(gen):
    """With slow gates the initial state reaches the outputs and the final state: a dropped state fails."""
    q, k, v, g, beta, s0 = scan_inputs(gen, 2, 40, 2, 16, 8, "gated", "near_zero")
    with_state = StaticMaskScan(16)(q, k, v, g, beta, rule="gated", initial_state=s0)
    without = StaticMaskScan(16)(q, k, v, g, beta, rule="gated")
    assert all(scaled_error(a, b) > 0.1 for a, b in zip(with_state, without))


@pytest.mark.parametrize("rule", ["gated", "delta"])
def test_float64_scan_is_the_reference(gen, rule):
    q, k, v, g, beta, s0 = scan_inputs(gen, 2, 2 * 32 + 3, 2, 16, 8, rule, "random", dtype=torch.float64)
    got_o, got_s = StaticMaskScan(32)(q, k, v, g, beta, rule=rule, initial_state=s0)
    ref_o, ref_s = reference_scan(q, k, v, g, beta, rule=rule, initial_state=s0)
    assert got_o.dtype == torch.float64
    assert scaled_error(got_o, ref_o) <= TOL64 and scaled_error(got_s, ref_s) <= TOL64


def test_chunk_size_is_checked():
    with pytest.raises(ValueError, match="chunk_size"):
        StaticMaskScan(24)


def test_attention_wrapper_matches_the_mixer(gen):
    torch.manual_seed(0)
    config = SequentialAttentionConfig(hidden_size=32, num_layers=1, num_heads=2, head_k_dim=16, head_v_dim=8,
                                       gate_rank=4, chunk_size=16, mlp_multiple_of=16)
    attn = SequentialAttentionModel(config).blocks[0].attn.eval()
    wrapped = StaticMaskAttention(attn)
    x = torch.randn(2, 16, 32, generator=gen)
    conv = torch.randn(2, config.conv_channels, config.conv_kernel - 1, generator=gen)
    scan = torch.randn(2, 2, 16, 8, generator=gen)
    with torch.no_grad():
        for got, want in zip(wrapped(x, conv, scan), attn(x, conv, scan), strict=True):
            assert scaled_error(got, want) <= TOL32
        for got, want in zip(wrapped.step(x[:, :1], conv, scan), attn.step(x[:, :1], conv, scan), strict=True):
            assert torch.equal(got, want)                                    # the step is the original's


# --- the unbounded-gate (segment-sum) form -------------------------------------------------------------------
def unbounded_gates(gen, shape: tuple[int, ...], kind: str, C: int) -> torch.Tensor:
    """Log decays with no g_min: per head (broadcast over dk) or per key dim, reaching -30 per token (mostly
    mild, some steep, as Mamba2's and KDA's softplus gates give), or ``steep_early``: -30 on the first 4 tokens of
    every chunk, then mild per-key decays, where b_t - b_s as a difference of running sums would lose the mild
    ones to the float32 rounding of the steep prefix."""
    B, T, H, dk = shape
    if kind == "steep_early":
        g = -1e-3 * torch.logspace(0, 2, dk) * torch.rand(shape, generator=gen)
        g[:, (torch.arange(T) % C) < 4] = -30.0
        return g
    g = -30.0 * torch.rand(B, T, H, dk if kind == "per_key" else 1, generator=gen) ** 3
    return g.expand(-1, -1, -1, dk)


@pytest.mark.parametrize("strict", [False, True])
@pytest.mark.parametrize("C", [16, 64])
def test_segment_scores_match(gen, strict, C):
    x, y = torch.randn(3, C, 16, generator=gen), torch.randn(3, C, 16, generator=gen)
    g = unbounded_gates(gen, (1, 3 * C, 1, 16), "per_key", C).reshape(3, C, 16)
    want = decayed_scores(x, y, torch.cumsum(g, dim=1), strict=strict, bounded=False, g=g)
    scan = StaticMaskScan(C, bounded=False)
    got = scan.segment_scores(x, y, scan.segment_decays(g.transpose(1, 2)), strict=strict)
    assert scaled_error(got, want) <= TOL_SCORES
    kept = torch.ones(C, C).tril(-1 if strict else 0).bool()
    assert (got[:, ~kept] == 0).all()                                        # masked-out scores are zeros


@pytest.mark.parametrize("rule", ["gated", "delta"])
@pytest.mark.parametrize("gate", ["per_head", "per_key", "steep_early"])
@pytest.mark.parametrize("length", ["C", "2C+5", "7"])
@pytest.mark.parametrize("carried", [True, False])
def test_unbounded_scan_matches_chunked_and_reference(gen, rule, gate, length, carried):
    C = 32
    T = {"C": C, "2C+5": 2 * C + 5, "7": 7}[length]
    q, k, v, _, beta, s0 = scan_inputs(gen, 2, T, 3, 16, 8, rule, "random")
    g = unbounded_gates(gen, (2, T, 3, 16), gate, C)
    s0 = s0 if carried else None
    got_o, got_s = StaticMaskScan(C, bounded=False)(q, k, v, g, beta, rule=rule, initial_state=s0)
    want_o, want_s = chunked_scan(q, k, v, g, beta, rule=rule, initial_state=s0, chunk_size=C, bounded=False)
    ref_o, ref_s = reference_scan(*(x.double() for x in (q, k, v, g, beta)), rule=rule,
                                  initial_state=None if s0 is None else s0.double())
    assert scaled_error(got_o, want_o) <= TOL_SEGMENT and scaled_error(got_s, want_s) <= TOL_SEGMENT
    assert scaled_error(got_o.double(), ref_o) <= TOL_SEGMENT and scaled_error(got_s.double(), ref_s) <= TOL_SEGMENT


@pytest.mark.parametrize("rule", ["gated", "delta"])
def test_unbounded_float64_scan_is_the_reference(gen, rule):
    q, k, v, _, beta, s0 = scan_inputs(gen, 2, 2 * 32 + 3, 2, 16, 8, rule, "random", dtype=torch.float64)
    g = unbounded_gates(gen, (2, 2 * 32 + 3, 2, 16), "per_key", 32).double()
    got_o, got_s = StaticMaskScan(32, bounded=False)(q, k, v, g, beta, rule=rule, initial_state=s0)
    ref_o, ref_s = reference_scan(q, k, v, g, beta, rule=rule, initial_state=s0)
    assert scaled_error(got_o, ref_o) <= TOL64 and scaled_error(got_s, ref_s) <= TOL64


# --- lowered to ExecuTorch ------------------------------------------------------------------------------------
def _lowered_chunk(model: SequentialAttentionModel) -> tuple[dict, bytes]:
    """The model's ``chunk`` through xnnpack_friendly and the executorch target's lowering: (delegation counts,
    program bytes)."""
    exir = pytest.importorskip("executorch.exir", reason="ExecuTorch is not installed "
                                                         "(pip install executorch==1.5.1 torchao==0.18.0)")
    from seqedge.export import executorch_target as et
    from seqedge.export.xnnpack_friendly import xnnpack_friendly
    from seqedge.quiet import quiet_libraries

    with quiet_libraries():
        edge = et.lower({"chunk": et._export_entry(xnnpack_friendly(model), "chunk", max_batch=4)})
        counts = et.delegation_counts(edge.exported_program("chunk").graph_module)
        return counts, edge.to_executorch(et.backend_config(exir)).buffer


def _check_from_file(model: SequentialAttentionModel, buffer: bytes, tmp_path) -> None:
    """The program, loaded from a file (delegate constants come from a mapped file, as on a device), runs
    ``chunk`` to TOL_LOWERED of the eager model at two batch sizes."""
    from executorch.runtime import Runtime

    from seqedge.export.entry_points import entry_module, example_inputs

    path = tmp_path / "chunk.pte"
    path.write_bytes(buffer)
    method = Runtime.get().load_program(str(path)).load_method("chunk")
    for batch in (1, 3):
        inputs = example_inputs(model, "chunk", batch_size=batch, seed=batch)
        with torch.no_grad():
            want = entry_module(model, "chunk")(*inputs)
        for got, w in zip(method.execute(list(inputs)), want, strict=True):
            assert scaled_error(got, w) <= TOL_LOWERED


def test_lowered_chunk_keeps_the_scan_on_xnnpack(tmp_path):
    torch.manual_seed(0)
    config = SequentialAttentionConfig(hidden_size=32, num_layers=1, num_heads=2, head_k_dim=16, head_v_dim=8,
                                       gate_rank=4, chunk_size=32, mlp_multiple_of=16)
    model = SequentialAttentionModel(config).eval()
    counts, buffer = _lowered_chunk(model)
    # chunked_scan left cumsum, where, arange, comparisons and slices here: only the q/k/v split and the
    # embedding stay outside XNNPACK now
    assert counts["portable_ops"] == {"embedding.default": 1, "split_with_sizes_copy.default": 1}, counts
    _check_from_file(model, buffer, tmp_path)


def test_lowered_unbounded_chunk_keeps_the_scan_on_xnnpack(tmp_path):
    """A Gated DeltaNet mixer (softplus gate: unbounded, delta rule) runs the segment-sum form."""
    torch.manual_seed(0)
    parts = MixerParts(gate="softplus", beta="sigmoid", num_key_heads=2, qk_norm="rsqrt", skip=False)
    config = SequentialAttentionConfig(vocab_size=64, hidden_size=32, num_layers=1, num_heads=4, head_k_dim=16,
                                       head_v_dim=8, gate_rank=4, chunk_size=32, mlp_multiple_of=16,
                                       update_rule="delta", mixer=parts)
    model = SequentialAttentionModel(config).eval()
    assert not config.bounded_gates
    counts, buffer = _lowered_chunk(model)
    # chunked_scan(bounded=False) left cumsum, flip, arange, comparisons and where here
    assert not SCAN_OPS & set(counts["portable_ops"]), counts
    _check_from_file(model, buffer, tmp_path)
