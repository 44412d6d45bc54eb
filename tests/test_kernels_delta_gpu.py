"""GPU tests of the delta rule's Triton chunk scan (seqedge.kernels.delta_scan): every config against the float64
forms, gradients of every input, carried state, odd lengths, pieces, per-key and per-head gates, and fla's
chunk_kda / chunk_gated_delta_rule on the same inputs. Outputs are poisoned with NaN before each call.
Skipped, with the reason printed, where there is no CUDA GPU or no triton (CPU: test_kernels_delta_interpret).
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

from seqedge.scan import chunked_scan, reference_scan

HAS_CUDA = torch.cuda.is_available()
HAS_TRITON = importlib.util.find_spec("triton") is not None
HAS_FLA = importlib.util.find_spec("fla") is not None
ROOT = Path(__file__).resolve().parents[1]
pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU (Triton kernels); CPU: test_kernels_delta_interpret"),
    pytest.mark.skipif(not HAS_TRITON, reason="needs triton (pip install triton)"),
]
# every config is checked, not only the one picked (importing the module initialises no CUDA)
_configs = lambda m: m.DELTA_CONFIGS + m.PENDING_CONFIGS                      # noqa: E731  (candidates too)
N_CONFIGS = len(_configs(importlib.import_module("seqedge.kernels.delta_scan_triton"))) if HAS_TRITON else 0
TOL = {torch.float32: 2e-5, torch.bfloat16: 2e-2}
GRAD_TOL = {torch.float32: 3e-4, torch.bfloat16: 5e-2}


def _rel(x: torch.Tensor, ref: torch.Tensor) -> float:
    assert not torch.isnan(x).any(), "NaN in output: unwritten or poisoned memory"
    x, ref = x.double(), ref.double().to(x.device)
    return float((x - ref).norm() / ref.norm().clamp_min(1e-30))


def _inputs(B, T, H, dk, dv, dtype, seed, per_head=False):
    gen = torch.Generator(device="cuda").manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=gen, device="cuda")
    q = r(B, T, H, dk).to(dtype)
    k = torch.nn.functional.normalize(r(B, T, H, dk), dim=-1).to(dtype)
    g = -5.0 * torch.rand(B, T, H, 1 if per_head else dk, generator=gen, device="cuda")
    beta = torch.rand(B, T, H, generator=gen, device="cuda")
    return q, k, r(B, T, H, dv).to(dtype), g, beta, r(B, H, dk, dv)


def _oracle(q, k, v, g, beta, s0):
    B, T, H, dk = q.shape
    args = [x.double() for x in (q, k, v, g.expand(B, T, H, dk), beta)]
    if B * T * H <= 1200:
        return reference_scan(*[a.cpu() for a in args], rule="delta", initial_state=s0.double().cpu())
    return chunked_scan(*args, rule="delta", initial_state=s0.double())


SHAPES = [(1, 1, 1, 64, 64), (2, 100, 3, 64, 64), (1, 200, 2, 128, 128), (2, 64, 2, 128, 64), (1, 2051, 1, 128, 128),
          (3, 777, 2, 64, 128)]


@pytest.mark.parametrize("cfg_id", range(N_CONFIGS), ids=lambda i: f"cfg{i}")   # -k "cfg6": one config's
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("per_head", [False, True])
def test_delta_forward(cfg_id, dtype, shape, per_head):
    from seqedge.kernels import delta_scan_triton
    from seqedge.kernels.delta_scan_triton import delta_scan_fwd

    B, T, H, dk, dv = shape
    q, k, v, g, beta, s0 = _inputs(*shape, dtype, seed=T + cfg_id, per_head=per_head)
    o = torch.full((B, T, H, dv), float("nan"), dtype=dtype, device="cuda")
    fin = torch.full((B, H, dk, dv), float("nan"), device="cuda")
    delta_scan_fwd(q, k, v, g, beta, s0, dk ** -0.5, _configs(delta_scan_triton)[cfg_id], out=(o, fin), piece=1024)
    ro, rs = _oracle(q, k, v, g, beta, s0)
    assert _rel(o, ro) < TOL[dtype] and _rel(fin, rs) < TOL[dtype]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", [(2, 100, 2, 64, 64), (1, 1100, 2, 128, 128)])
@pytest.mark.parametrize("per_head", [False, True])
def test_delta_gradients(dtype, shape, per_head):
    """Every gradient, initial state included, through the public op against float64 autograd of the chunked
    form; the pieces (PIECE: the forward saves the state entering each, the backward starts from those) are
    shortened so the longer shape spans three."""
    from seqedge.kernels import delta_operands, delta_scan

    B, T, H, dk, dv = shape
    q, k, v, g, beta, s0 = _inputs(*shape, dtype, seed=T, per_head=per_head)
    gen = torch.Generator(device="cuda").manual_seed(1)
    do, ds = torch.randn(B, T, H, dv, generator=gen, device="cuda"), torch.randn(B, H, dk, dv, generator=gen,
                                                                                   device="cuda")
    old, delta_operands.PIECE = delta_operands.PIECE, 512
    try:
        leaves = [x.detach().clone().requires_grad_() for x in (q, k, v, g, beta, s0)]
        o, fin = delta_scan(*leaves[:5], initial_state=leaves[5], output_final_state=True)
        got = torch.autograd.grad((o, fin), leaves, (do.to(dtype), ds))
    finally:
        delta_operands.PIECE = old
    ref_leaves = [x.detach().double().requires_grad_() for x in (q, k, v, g, beta, s0)]
    ro, rs = chunked_scan(*ref_leaves[:3], ref_leaves[3].expand(B, T, H, dk), ref_leaves[4], rule="delta",
                          initial_state=ref_leaves[5])
    want = torch.autograd.grad((ro, rs), ref_leaves, (do.to(dtype).double(), ds.double()))
    for name, x, ref in zip(("dq", "dk", "dv", "dg", "dbeta", "ds0"), got, want):
        assert x.shape == ref.shape, name
        assert _rel(x, ref) < GRAD_TOL[dtype], (name, _rel(x, ref))


def _launches() -> list:
    """(gates per head, index, launch) of every launch the backward may pick and of the candidates."""
    if not HAS_TRITON:
        return []
    bwd = importlib.import_module("seqedge.kernels.delta_scan_bwd")
    return [(per_head, i, launch) for per_head in (False, True)
            for i, launch in enumerate((*bwd.BWD_LAUNCHES[per_head], *bwd.PENDING_BWD_LAUNCHES[per_head]))]


_LAUNCHES = _launches()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("per_head,launch_id,launch", _LAUNCHES)
def test_delta_backward_launches(per_head, launch_id, launch, dtype):
    """Every launch the backward may pick (not only the one picked on this card) and every candidate, from the
    forward's saved piece states, against float64 autograd of the chunked form: several pieces, the last one a
    partial chunk."""
    from seqedge.kernels import delta_scan_bwd as bwd
    from seqedge.kernels.delta_scan_triton import delta_scan_fwd

    B, T, H, dk, dv = 2, 300, 2, 128, 128
    piece = 2 * launch.config.chunk
    q, k, v, g, beta, s0 = _inputs(B, T, H, dk, dv, dtype, seed=launch_id, per_head=per_head)
    gen = torch.Generator(device="cuda").manual_seed(2)
    do, ds = torch.randn(B, T, H, dv, generator=gen, device="cuda"), torch.randn(B, H, dk, dv, generator=gen,
                                                                                   device="cuda")
    entering = torch.full(((T - 1) // piece, B, H, dk, dv), float("nan"), device="cuda")
    delta_scan_fwd(q, k, v, g, beta, s0, dk ** -0.5, launch.config, piece=piece, entering=entering)
    got = bwd.delta_scan_bwd(q, k, v, g, beta, s0, do.to(dtype), ds, dk ** -0.5, launch, piece=piece,
                             entering=entering)
    leaves = [x.detach().double().requires_grad_() for x in (q, k, v, g, beta, s0)]
    ro, rs = chunked_scan(*leaves[:3], leaves[3].expand(B, T, H, dk), leaves[4], rule="delta",
                          initial_state=leaves[5])
    want = torch.autograd.grad((ro, rs), leaves, (do.to(dtype).double(), ds.double()))
    for name, x, ref in zip(("dq", "dk", "dv", "dg", "dbeta", "ds0"), got, want):
        assert _rel(x, ref) < GRAD_TOL[dtype], (launch, name, _rel(x, ref))


def test_delta_dispatch_uses_the_kernel():
    from seqedge.scan import dispatch

    q = torch.zeros(1, 4, 1, 64, device="cuda")
    assert dispatch.scan_path(q, q, "delta")[0] == "triton"


def test_delta_torch_compile():
    from seqedge.kernels import delta_scan

    q, k, v, g, beta, s0 = _inputs(1, 130, 2, 64, 64, torch.bfloat16, seed=5)
    fn = torch.compile(lambda *a: delta_scan(*a, output_final_state=True), fullgraph=True)
    o, fin = fn(q, k, v, g, beta, s0)
    ro, rs = _oracle(q, k, v, g, beta, s0)
    assert _rel(o, ro) < TOL[torch.bfloat16] and _rel(fin, rs) < TOL[torch.bfloat16]


@pytest.mark.skipif(not HAS_FLA, reason="flash-linear-attention not installed (pip install flash-linear-attention)")
@pytest.mark.parametrize("T", [64, 1000])
@pytest.mark.parametrize("per_head", [False, True])
def test_delta_against_fla(T, per_head):
    """Outputs, final state and every gradient against fla's chunk_kda (per-key gates) or chunk_gated_delta_rule
    (per-head gates) on the same bf16 inputs, in a fresh process (tests/delta_fla_check.py says why)."""
    # the fresh process compiles fla's kernels, forward and backward: over 4 minutes beside other compiles
    proc = subprocess.run([sys.executable, str(ROOT / "tests" / "delta_fla_check.py"), str(T), str(int(per_head))],
                          capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    errors = json.loads(proc.stdout.strip().splitlines()[-1])
    refused = errors.pop("fla_backward_refused", None)
    if refused:
        warnings.warn(f"gradients not compared with fla: its backward refused: {refused}", stacklevel=1)
    assert set(errors) >= {"o", "state"} and all(err < 3e-2 for err in errors.values()), errors
