"""The delta rule's custom op on CPU (the chunked PyTorch form and its recomputing backward): outputs, final
state and every gradient against float64, per-key and per-head gates, carried state, odd lengths; and the
chunk-local operands the CUDA backward differentiates, against the reference scan."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from seqedge.kernels import delta_operands, delta_scan
from seqedge.kernels.delta_ops import chunk_scan_delta
from seqedge.kernels.delta_operands import chunk_operands, scan_operands
from seqedge.scan import chunked_scan, reference_scan


def _inputs(B, T, H, dk, dv, gk, seed):
    gen = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=gen)
    k = torch.nn.functional.normalize(r(B, T, H, dk), dim=-1)
    g = -5.0 * torch.rand(B, T, H, *gk, generator=gen)
    return r(B, T, H, dk), k, r(B, T, H, dv), g, torch.rand(B, T, H, generator=gen), r(B, H, dk, dv)


def _rel(x, ref):
    return float((x.double() - ref.double()).norm() / ref.double().norm())


@pytest.mark.parametrize("gk", [(16,), (1,), ()], ids=["per-key", "per-head-1", "per-head"])
def test_delta_op_against_float64(gk):
    B, T, H, dk, dv = 2, 37, 2, 16, 32
    q, k, v, g, beta, s0 = _inputs(B, T, H, dk, dv, gk, seed=len(gk))
    ge = (g if g.dim() == 4 else g.unsqueeze(-1)).expand(B, T, H, dk)
    ro, rs = reference_scan(q, k, v, ge, beta, rule="delta", initial_state=s0)
    leaves = [x.clone().requires_grad_() for x in (q, k, v, g, beta, s0)]
    o, fin = delta_scan(*leaves[:5], initial_state=leaves[5], output_final_state=True)
    assert _rel(o, ro) < 2e-5 and _rel(fin, rs) < 2e-5
    do, ds = torch.randn_like(o), torch.randn_like(fin)
    got = torch.autograd.grad((o, fin), leaves, (do, ds))
    ref_leaves = [x.double().requires_grad_() for x in (q, k, v, g, beta, s0)]
    g64 = ref_leaves[3] if ref_leaves[3].dim() == 4 else ref_leaves[3].unsqueeze(-1)
    o64, s64 = chunked_scan(*ref_leaves[:3], g64.expand(B, T, H, dk), ref_leaves[4], rule="delta",
                            initial_state=ref_leaves[5])
    want = torch.autograd.grad((o64, s64), ref_leaves, (do.double(), ds.double()))
    for x, ref in zip(got, want):
        assert x.shape == ref.shape and _rel(x, ref) < 3e-5


@pytest.mark.parametrize("T", [16, 17, 40])
def test_delta_op_saves_the_state_entering_each_piece(T, monkeypatch):
    """The op's third output, which the CUDA backward starts its pieces from: the state after each whole piece
    before the last, as the reference scan of that prefix gives it (none for one piece)."""
    monkeypatch.setattr(delta_operands, "PIECE", 16)
    B, H, dk, dv = 1, 2, 16, 8
    q, k, v, g, beta, s0 = _inputs(B, T, H, dk, dv, (16,), seed=T)
    o, fin, saved = chunk_scan_delta(q, k, v, g, beta, s0, dk ** -0.5)
    assert saved.shape == ((T - 1) // 16, B, H, dk, dv)
    for p in range(saved.shape[0]):
        t = 16 * (p + 1)
        _, want = reference_scan(q[:, :t], k[:, :t], v[:, :t], g[:, :t], beta[:, :t], rule="delta",
                                 initial_state=s0)
        assert _rel(saved[p], want) < 2e-5
    ro, rs = reference_scan(q, k, v, g, beta, rule="delta", initial_state=s0)
    assert _rel(o, ro) < 2e-5 and _rel(fin, rs) < 2e-5


def test_delta_op_rejects_bad_gate_shape():
    q, k, v, g, beta, _ = _inputs(1, 5, 2, 16, 16, (16,), seed=0)
    with pytest.raises(ValueError, match="g must be"):
        delta_scan(q, k, v, g[..., :3], beta)


@pytest.mark.parametrize("chunk", [16, 32])
def test_chunk_operands_give_the_reference_scan(chunk):
    B, T, H, dk, dv = 1, 45, 2, 16, 8
    q, k, v, g, beta, s0 = _inputs(B, T, H, dk, dv, (1,), seed=chunk)
    ops = chunk_operands(*(x.double() for x in (q, k, v, g, beta)), scale=dk ** -0.5, chunk=chunk)
    o, s = scan_operands(*ops, s0.double())
    o = o.permute(0, 2, 3, 1, 4).reshape(B, -1, H, dv)[:, :T]
    ro, rs = reference_scan(q, k, v, g.expand(B, T, H, dk), beta, rule="delta", initial_state=s0)
    assert _rel(o, ro) < 1e-12 and _rel(s, rs) < 1e-12


@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="needs triton (pip install triton==3.6.0)")
def test_register_prep_configs():
    """The register prep takes chunks of 16, 32 or 64 tokens (one, two or four row blocks; refused before any
    launch otherwise), and the op times it for gates per key only."""
    from seqedge.kernels.delta_prep_regs_triton import prep
    from seqedge.kernels.delta_scan_triton import DELTA_CONFIGS, DeltaConfig

    x = torch.zeros(1, 8, 1, 16)
    with pytest.raises(ValueError, match="chunks of 16, 32, 64 tokens, got 128"):
        prep(x, x, x, x[..., :1], x[..., 0], 1.0, 128, 16, 1, "ieee")
    assert DeltaConfig(chunk=64, block_v=16, register_prep=True).register_prep
    regs = [c for c in DELTA_CONFIGS if c.register_prep]
    assert regs and all(c.timed_for(False) and not c.timed_for(True) for c in regs)
    assert all(c.timed_for(True) for c in DELTA_CONFIGS if not c.register_prep)


@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="needs triton (pip install triton==3.6.0)")
def test_pending_delta_configs_are_checked_but_never_picked():
    """Candidates (none at times) are neither picked (the op times DELTA_CONFIGS only) nor taken-out configs."""
    from seqedge.kernels.delta_scan_triton import DELTA_CONFIGS, EXCLUDED_CONFIGS, PENDING_CONFIGS

    assert isinstance(PENDING_CONFIGS, tuple)
    assert not set(PENDING_CONFIGS) & (set(DELTA_CONFIGS) | set(EXCLUDED_CONFIGS))


@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="needs triton (pip install triton==3.6.0)")
def test_pending_backward_launches_are_never_picked():
    """The backward's candidates (none at times) are not among the launches the op times."""
    from seqedge.kernels.delta_scan_bwd import BWD_LAUNCHES, PENDING_BWD_LAUNCHES

    for per_head in (False, True):
        assert not set(PENDING_BWD_LAUNCHES[per_head]) & set(BWD_LAUNCHES[per_head])
