"""CPU tests of seqedge.kernels: lazy imports, dispatch and its messages, the CPU fallback of the custom ops,
their fake (meta) implementations, autograd, torch.compile, the in-place step. The Triton paths are in
test_kernels_gpu.py."""

from __future__ import annotations

import importlib.util
import logging
import subprocess
import tempfile
import sys
from types import SimpleNamespace

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from seqedge.scan import chunked_scan, recurrent_step, reference_scan
from seqedge.scan import dispatch


def _inputs(B, T, H, dk, dv, dtype=torch.float64, seed=0):
    gen = torch.Generator().manual_seed(seed)
    q, k = torch.randn(B, T, H, dk, generator=gen, dtype=dtype), torch.randn(B, T, H, dk, generator=gen, dtype=dtype)
    v = torch.randn(B, T, H, dv, generator=gen, dtype=dtype)
    g = -5.0 * torch.rand(B, T, H, dk, generator=gen, dtype=dtype)
    beta = torch.rand(B, T, H, generator=gen, dtype=dtype)
    s0 = torch.randn(B, H, dk, dv, generator=gen, dtype=dtype)
    return q, k, v, g, beta, s0


def test_import_does_not_load_triton_or_cuda():
    code = ("import sys, torch, seqedge.kernels, seqedge.kernels.ops, seqedge.kernels.decode_graph;"
            "print('triton' in sys.modules, torch.cuda.is_initialized())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=tempfile.gettempdir(), check=True).stdout  # installed package, not ./seqedge
    assert out.split() == ["False", "False"]


def _stub(device_cuda: bool, dtype=torch.bfloat16, dk=128, dv=128):
    return SimpleNamespace(is_cuda=device_cuda, device=torch.device("cuda" if device_cuda else "cpu"), dtype=dtype,
                           shape=(1, 8, 2, dk)), SimpleNamespace(shape=(1, 8, 2, dv))


@pytest.mark.parametrize("cuda, rule, dtype, dk, expected", [
    (True, "gated", torch.bfloat16, 128, "triton"),
    (True, "gated", torch.float32, 64, "triton"),
    (False, "gated", torch.float32, 64, "chunked"),
    (True, "delta", torch.bfloat16, 128, "triton"),
    (True, "delta", torch.float16, 128, "chunked"),
    (True, "gated", torch.float16, 128, "chunked"),
    (True, "gated", torch.float64, 128, "chunked"),
    (True, "gated", torch.bfloat16, 96, "chunked"),
])
def test_scan_path_decisions(cuda, rule, dtype, dk, expected, monkeypatch):
    monkeypatch.setattr(dispatch, "_TRITON_ENABLED", True)
    monkeypatch.setattr(dispatch, "_triton_available", lambda: True)
    q, v = _stub(cuda, dtype, dk)
    path, reason = dispatch.scan_path(q, v, rule)
    assert path == expected and reason


def test_triton_kernel_is_on_by_default_and_can_be_turned_off(monkeypatch):
    monkeypatch.setattr(dispatch, "_triton_available", lambda: True)
    q, v = _stub(True)
    assert dispatch._TRITON_ENABLED, "the kernel must be on by default"
    assert dispatch.scan_path(q, v, "gated")[0] == "triton"
    dispatch.use_triton_kernels(False)
    try:
        path, reason = dispatch.scan_path(q, v, "gated")
        assert path == "chunked" and "use_triton_kernels(False)" in reason
    finally:
        dispatch.use_triton_kernels(True)


def test_missing_triton_falls_back_with_reason(monkeypatch):
    monkeypatch.setattr(dispatch, "_triton_available", lambda: False)
    q, v = _stub(True)
    path, reason = dispatch.scan_path(q, v, "gated")
    assert path == "chunked" and "pip install triton" in reason


def test_export_tracing_takes_plain_form(monkeypatch):
    q, v = _stub(True)
    monkeypatch.setattr(dispatch, "_TRITON_ENABLED", True)
    monkeypatch.setattr(torch.compiler, "is_exporting", lambda: True)
    assert dispatch.scan_path(q, v, "gated") == ("chunked", "tracing for export: the plain PyTorch form is traced")


def test_torch_export_graph_has_no_custom_op():
    class Scan(torch.nn.Module):
        def forward(self, q, k, v, g, beta, s0):
            return dispatch.sequence_scan(q, k, v, g, beta, rule="gated", initial_state=s0, chunk_size=16)

    args = _inputs(1, 32, 1, 16, 16, torch.float32)
    ep = torch.export.export(Scan(), args)
    assert "seqedge" not in str(ep.graph)


def test_cpu_dispatch_runs_chunked_and_says_so_once(caplog):
    q, k, v, g, beta, s0 = _inputs(2, 37, 2, 16, 16, torch.float32)
    dispatch._TOLD.clear()
    with caplog.at_level(logging.WARNING, logger="seqedge.scan"):
        o1, s1 = dispatch.sequence_scan(q, k, v, g, beta, rule="gated", initial_state=s0, chunk_size=16)
        dispatch.sequence_scan(q, k, v, g, beta, rule="gated", initial_state=s0, chunk_size=16)
    msgs = [r.message for r in caplog.records if "sequence scan runs" in r.message]
    assert len(msgs) == 1 and "chunked PyTorch scan" in msgs[0] and "cpu" in msgs[0]
    o2, s2 = chunked_scan(q, k, v, g, beta, rule="gated", initial_state=s0, chunk_size=16)
    assert torch.equal(o1, o2) and torch.equal(s1, s2)


def test_cpu_tensors_go_through_the_custom_op():
    from seqedge.kernels import ops

    q, k, v, g, beta, s0 = _inputs(1, 4, 1, 16, 8, seed=0)
    assert not ops.calls_cuda_directly(q, k, v, g, beta, s0)      # the CUDA shortcut is for CUDA tensors only


@pytest.mark.parametrize("T", [1, 37, 64])
def test_chunk_scan_op_cpu_matches_reference(T):
    from seqedge.kernels import chunk_scan

    q, k, v, g, beta, s0 = _inputs(2, T, 2, 16, 8, seed=T)
    o, fin = chunk_scan(q, k, v, g, beta, initial_state=s0, output_final_state=True, scale=0.3)
    ro, rs = reference_scan(q, k, v, g, beta, rule="gated", initial_state=s0, scale=0.3)
    assert torch.allclose(o, ro, atol=1e-10) and torch.allclose(fin, rs, atol=1e-10)
    o2, none = chunk_scan(q, k, v, g, beta)
    assert none is None and o2.shape == (2, T, 2, 8)


def test_chunk_scan_rejects_bad_shapes():
    from seqedge.kernels import chunk_scan

    q, k, v, g, beta, _ = _inputs(1, 5, 2, 16, 8)
    with pytest.raises(ValueError, match="beta must have shape"):
        chunk_scan(q, k, v, g, beta[..., :1])


def test_fake_impl_shapes_and_dtypes():
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        q = torch.empty(2, 300, 3, 128, dtype=torch.bfloat16)
        v = torch.empty(2, 300, 3, 64, dtype=torch.bfloat16)
        o, fin = torch.ops.seqedge.chunk_scan_gated(q, q, v, torch.empty(2, 300, 3, 128), torch.empty(2, 300, 3),
                                                    None, 0.1)
        assert o.shape == (2, 300, 3, 64) and o.dtype == torch.bfloat16
        assert fin.shape == (2, 3, 128, 64) and fin.dtype == torch.float32
        grads = torch.ops.seqedge.chunk_scan_gated_bwd(q, q, v, torch.empty(2, 300, 3, 128), torch.empty(2, 300, 3),
                                                       None, torch.empty_like(v), fin, 0.1)
        assert [tuple(x.shape) for x in grads] == [(2, 300, 3, 128), (2, 300, 3, 128), (2, 300, 3, 64),
                                                   (2, 300, 3, 128), (2, 300, 3), (2, 3, 128, 64)]


def test_opcheck_custom_ops():
    q, k, v, g, beta, s0 = _inputs(1, 20, 2, 16, 16, torch.float32)
    torch.library.opcheck(torch.ops.seqedge.chunk_scan_gated, (q, k, v, g, beta, s0, 0.25))
    torch.library.opcheck(torch.ops.seqedge.chunk_scan_gated, (q, k, v, g, beta, None, 0.25))
    torch.library.opcheck(torch.ops.seqedge.step_scan, (q[:, 0], k[:, 0], v[:, 0], g[:, 0], beta[:, 0],
                                                        s0.clone(), True, 0.25))


def test_backward_segments_match_chunked_autograd(monkeypatch):
    from seqedge.kernels import chunk_scan, ops

    monkeypatch.setattr(ops, "BWD_SEGMENT", 16)              # several segments on a short sequence
    ins = _inputs(1, 45, 2, 16, 8, seed=3)
    a = [x.clone().requires_grad_() for x in ins]
    b = [x.clone().requires_grad_() for x in ins]
    o, fin = chunk_scan(*a[:5], initial_state=a[5], output_final_state=True)
    ro, rs = chunked_scan(*b[:5], rule="gated", initial_state=b[5])
    gen = torch.Generator().manual_seed(1)
    do, dfin = torch.randn(o.shape, generator=gen, dtype=o.dtype), torch.randn(fin.shape, generator=gen,
                                                                                dtype=fin.dtype)
    ((o * do).sum() + (fin * dfin).sum()).backward()
    ((ro * do).sum() + (rs * dfin).sum()).backward()
    for x, y in zip(a, b):
        assert torch.allclose(x.grad, y.grad, atol=1e-10)


@given(batch=st.integers(1, 16), length=st.integers(1, 300_000), budget_mb=st.floats(0.0, 40_000),
       per_token_kb=st.floats(1.0, 100.0))
@settings(max_examples=200, deadline=None)
def test_backward_plan_stays_within_budget(batch, length, budget_mb, per_token_kb):
    """The CUDA backward's split: whole rows when they fit (no piece of the sequence then), else one row in
    pieces within the budget, never below the minimum piece; pieces are multiples of 64 unless the whole row."""
    from seqedge.kernels.ops import backward_plan

    budget, per_token, min_piece = budget_mb * 1e6, per_token_kb * 1e3, 4096
    rows, piece = backward_plan(batch, length, per_token, budget, min_piece)
    assert 1 <= rows <= batch and 1 <= piece <= length
    if rows * per_token * length <= budget and rows == batch:
        assert piece == length                                        # all at once: nothing split
    if piece < length:
        assert rows == 1 and piece % 64 == 0 and piece >= min_piece
        assert piece * per_token <= budget or piece == min_piece
    else:
        assert rows * per_token * length <= budget or rows == 1     # whole rows only when they fit
    if per_token * length <= budget:
        assert piece == length and rows == min(batch, int(budget // (per_token * length)))


def test_backward_plan_examples():
    from seqedge.kernels.ops import backward_plan, workspace_bytes_per_token

    per_token = workspace_bytes_per_token(16, 128, 128, 2)         # H=16, head dims 128, bf16
    assert 40e3 < per_token < 45e3
    budget = 0.25 * 80e9                                               # a quarter of an 80 GB card
    assert backward_plan(1, 65536, per_token, budget, 4096) == (1, 65536)
    assert backward_plan(8, 32768, per_token, budget, 4096) == (8, 32768)
    assert backward_plan(8, 131072, per_token, budget, 4096) == (3, 131072)
    rows, piece = backward_plan(2, 1_000_000, per_token, budget, 4096)
    assert rows == 1 and 400_000 < piece < 500_000


def test_gradcheck_small():
    from seqedge.kernels import chunk_scan

    ins = [x.requires_grad_() for x in _inputs(1, 19, 1, 16, 16, seed=4)]
    assert torch.autograd.gradcheck(lambda *a: chunk_scan(*a[:5], initial_state=a[5], output_final_state=True),
                                    ins, eps=1e-6, atol=1e-5, fast_mode=True)


@pytest.mark.slow
def test_torch_compile_fullgraph_cpu():
    from seqedge.kernels import chunk_scan

    q, k, v, g, beta, s0 = _inputs(1, 21, 1, 16, 16, torch.float32, seed=5)
    q.requires_grad_()
    fn = torch.compile(lambda *a: chunk_scan(*a[:5], initial_state=a[5])[0].sum(), backend="aot_eager",
                       fullgraph=True)
    fn(q, k, v, g, beta, s0).backward()
    ref = q.detach().clone().requires_grad_()
    chunked_scan(ref, k, v, g, beta, rule="gated", initial_state=s0)[0].sum().backward()
    assert torch.allclose(q.grad, ref.grad, atol=1e-5)


@pytest.mark.parametrize("rule", ["gated", "delta"])
def test_step_scan_cpu_in_place(rule):
    from seqedge.kernels import step_scan

    q, k, v, g, beta, s0 = _inputs(2, 1, 3, 16, 8, torch.float32)
    q, k, v, g, beta = q[:, 0], k[:, 0], v[:, 0], g[:, 0], beta[:, 0]
    state = s0.clone()
    addr = state.data_ptr()
    o = step_scan(q, k, v, g, beta, state, rule=rule)
    ro, rs = recurrent_step(q, k, v, g, beta, s0, rule=rule)
    assert state.data_ptr() == addr
    assert torch.allclose(o, ro, atol=1e-6) and torch.allclose(state, rs, atol=1e-6)
    with pytest.raises(ValueError, match="rule must be one of"):
        step_scan(q, k, v, g, beta, state, rule="linear")


def test_graph_decoder_needs_cuda():
    from seqedge.config import SequentialAttentionConfig
    from seqedge.kernels.decode_graph import GraphDecoder
    from seqedge.model import SequentialAttentionModel

    model = SequentialAttentionModel(SequentialAttentionConfig.preset("tiny", num_layers=1))
    with pytest.raises(ValueError, match="needs the model on a CUDA device"):
        GraphDecoder(model, batch_size=1)


@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="the kernels' modules import triton")
def test_a_lone_launch_is_picked_without_timing():
    """``fastest`` (every timed pick: the chunk scans' and the delta rule's forward and backward) returns the only
    candidate without timing it, so a gate kind with one backward launch costs no first-call timing."""
    from seqedge.kernels.chunk_scan_triton import fastest

    def run(config):
        raise AssertionError("timed a lone candidate")

    cache: dict = {}
    assert fastest(("only",), ("key",), cache, run, warmup=5, rep=20) == "only"
    assert cache == {}
