"""Runs the Triton kernels in Triton's CPU interpreter (TRITON_INTERPRET=1) against the float64 forms.

Started in a subprocess by tests/test_kernels_interpret.py: the interpreter must be switched on before triton
compiles anything, and nothing else in the test session should see that. Prints one line per case,
``name max_rel_err`` and exits non-zero on the first case over its tolerance. float32 only: the interpreter
emulates bfloat16 loads incorrectly (numpy has no bfloat16), so bf16 runs only on a GPU.
"""

from __future__ import annotations

import os
import sys

os.environ["TRITON_INTERPRET"] = "1"

import torch  # noqa: E402
import triton.runtime.interpreter as _interp  # noqa: E402

_original_patch = _interp._patch_lang_tensor


def _patch_lang_tensor(tensor, scope):
    """Triton 3.6's interpreter turns a program id into an int with ``int(array)``, which numpy >= 2.3 refuses for
    the 1-element arrays it holds; read the element instead (upstream behaviour otherwise unchanged)."""
    _original_patch(tensor, scope)
    scope.set_attr(tensor, "__index__", lambda self: int(self.handle.data.reshape(-1)[0]))


_interp._patch_lang_tensor = _patch_lang_tensor

from seqedge.kernels import chunk_scan_bwd_triton as bwd  # noqa: E402
from seqedge.kernels import chunk_scan_triton as fwd  # noqa: E402
from seqedge.kernels import step_scan_triton as step  # noqa: E402
from seqedge.scan import chunked_scan, recurrent_step, reference_scan  # noqa: E402

TOL = 2e-5
TOL_G = 3e-4   # the gates' gradient: a difference of large terms (see tests/test_kernels_gpu.py GRAD_TOL)


def rel(x: torch.Tensor, ref: torch.Tensor) -> float:
    if torch.isnan(x).any():
        return float("inf")
    return float((x.double() - ref.double()).norm() / ref.double().norm().clamp_min(1e-30))


def inputs(B, T, H, dk, dv, seed, g_mode="random"):
    gen = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=gen)
    u = torch.rand(B, T, H, dk, generator=gen)
    g = {"random": -5.0 * u, "gmin": torch.full_like(u, -5.0), "slow": -0.05 * u}[g_mode]
    return r(B, T, H, dk), r(B, T, H, dk), r(B, T, H, dv), g, torch.rand(B, T, H, generator=gen), r(B, H, dk, dv)


def check(name: str, err: float, tol: float) -> None:
    print(f"{name} {err:.2e}", flush=True)
    if not err < tol:
        sys.exit(f"FAILED {name}: relative error {err:.2e} >= {tol:.0e}")


def prepass_reference(q, k, g, beta, scale, chunk):
    """(qt, kt, A, decay) of _chunk_prep_kernel in float64, straight from the definitions: b the cumulative
    log-gates within each chunk, A[i, j] = sum_d q_i scale k_j beta_j exp(b_i - b_j) for j <= i."""
    B, T, H, DK = q.shape
    nc = -(-T // chunk)
    pad = lambda x: torch.nn.functional.pad(x.double(), (0, 0) * (x.dim() - 2) + (0, nc * chunk - T))
    per_chunk = lambda x: pad(x).reshape(B, nc, chunk, H, -1).permute(0, 3, 1, 2, 4)    # [B, H, NC, C, *]
    qc, kc, gc, bc = (per_chunk(x) for x in (q, k, g, beta[..., None]))
    b = gc.cumsum(3)
    last = b[:, :, :, -1:]
    unchunk = lambda x: x.permute(0, 2, 3, 1, 4).reshape(B, nc * chunk, H, DK)[:, :T]
    qt, kt = unchunk(qc * scale * b.exp()), unchunk(kc * bc * (last - b).exp())
    expo = b[:, :, :, :, None, :] - b[:, :, :, None, :, :]                      # [B, H, NC, Ci, Cj, DK]
    causal = torch.ones(chunk, chunk, dtype=torch.bool).tril()[:, :, None]
    A = (qc[:, :, :, :, None] * scale * (kc * bc)[:, :, :, None] * expo.masked_fill(~causal, -torch.inf).exp())
    return qt, kt, A.sum(-1).reshape(B * H, nc, chunk, chunk), last[:, :, :, 0].reshape(B * H, nc, DK)


def check_prepass() -> None:
    """The prepass's four outputs against their definitions, for chunks of one, two and four 16-token blocks and
    lengths that end inside a block (the forward and backward tests check them only through the scan)."""
    for chunk, shape, g_mode in ((16, (1, 37, 2, 32, 32), "random"), (32, (2, 70, 1, 64, 64), "gmin"),
                                 (64, (1, 100, 2, 16, 16), "random"), (32, (1, 45, 1, 128, 128), "slow")):
        q, k, _, g, beta, _ = inputs(*shape, seed=chunk, g_mode=g_mode)
        ref = prepass_reference(q, k, g, beta, 0.3, chunk)
        for block_k in (0, 16, 32):                   # the whole row at once; key columns 16 / 32 at a time
            got = fwd.prepass(q, k, g, beta, 0.3, chunk, num_warps=2, block_k=block_k)
            for name, a, b in zip(("qt", "kt", "A", "decay"), got, ref):
                check(f"prepass chunk={chunk} block_k={block_k} {shape} {g_mode} {name}", rel(a, b), TOL)


def main() -> None:
    check_prepass()
    fwd._num_segments = lambda programs, n_chunks: min(3, max(1, n_chunks))   # exercise the segment join
    shapes = [(1, 1, 1, 16, 16), (2, 70, 2, 32, 64), (1, 100, 1, 64, 32)]
    for i, cfg in enumerate(fwd.FWD_CONFIGS + fwd.PENDING_CONFIGS):
        for shape in shapes:
            q, k, v, g, beta, s0 = inputs(*shape, seed=i)
            o = torch.full((*shape[:3], shape[4]), float("nan"))
            fin = torch.full((shape[0], shape[2], shape[3], shape[4]), float("nan"))
            fwd.chunk_scan_fwd(q, k, v, g, beta, s0, 0.3, cfg, out=(o, fin))
            ro, rs = reference_scan(q, k, v, g, beta, rule="gated", scale=0.3, initial_state=s0)
            check(f"fwd {cfg} {shape} o", rel(o, ro), TOL)
            check(f"fwd {cfg} {shape} state", rel(fin, rs), TOL)
    for i, cfg in enumerate(bwd.BWD_CONFIGS):
        for shape, g_mode, with_init in [(shapes[1], "random", True), (shapes[2], "gmin", False),
                                         ((1, 40, 1, 16, 32), "slow", True), ((1, 45, 1, 128, 128), "random", True),
                                         ((1, 20, 1, 32, 32), "random", True)]:     # one chunk: one segment
            q, k, v, g, beta, s0 = inputs(*shape, seed=10 + i, g_mode=g_mode)
            gen = torch.Generator().manual_seed(1)
            do, dfin = torch.randn(*shape[:3], shape[4], generator=gen), torch.randn(s0.shape, generator=gen)
            got = bwd.chunk_scan_bwd(q, k, v, g, beta, s0 if with_init else None, do, dfin, 0.3, cfg)
            ref = [x.double().requires_grad_() for x in (q, k, v, g, beta, s0)]
            ro, rs = chunked_scan(*ref[:5], rule="gated", scale=0.3, initial_state=ref[5] if with_init else None)
            ((ro * do.double()).sum() + (rs * dfin.double()).sum()).backward()
            for name, a, b in zip(["q", "k", "v", "g", "beta", "initial_state"], got, ref):
                if name != "initial_state" or with_init:
                    check(f"bwd {cfg} {shape} {g_mode} d{name}", rel(a, b.grad), TOL_G if name == "g" else TOL)
    # the backward in pieces (bounded workspace): groups of batch rows (1 of 2, 2 of 3), whole or in pieces of 32
    # and 48 tokens
    for shape, rows, piece, with_init in (((2, 70, 2, 32, 64), 1, 70, True), ((3, 40, 2, 32, 32), 2, 40, False),
                                          ((2, 70, 2, 32, 64), 1, 32, True), ((2, 70, 2, 32, 64), 1, 48, False)):
        q, k, v, g, beta, s0 = inputs(*shape, seed=20 + piece)
        gen = torch.Generator().manual_seed(2)
        do, dfin = torch.randn(*shape[:3], shape[4], generator=gen), torch.randn(s0.shape, generator=gen)
        init = s0 if with_init else None
        got = bwd.chunk_scan_bwd_pieces(q, k, v, g, beta, init, do, dfin, 0.3, rows, piece, bwd.BWD_CONFIGS[0],
                                        fwd.FWD_CONFIGS[0])
        ref = [x.double().requires_grad_() for x in (q, k, v, g, beta, s0)]
        ro, rs = chunked_scan(*ref[:5], rule="gated", scale=0.3, initial_state=ref[5] if with_init else None)
        ((ro * do.double()).sum() + (rs * dfin.double()).sum()).backward()
        for name, a, b in zip(["q", "k", "v", "g", "beta", "initial_state"], got, ref):
            if name != "initial_state" or with_init:
                check(f"bwd {rows} row(s) at a time, pieces of {piece} d{name}", rel(a, b.grad),
                      TOL_G if name == "g" else TOL)
    for rule in ("gated", "delta"):
        q, k, v, g, beta, s0 = inputs(3, 1, 2, 32, 64, seed=5)
        q, k, v, g, beta = (x[:, 0] for x in (q, k, v, g, beta))
        if rule == "delta":
            q, k = torch.nn.functional.normalize(q, dim=-1), torch.nn.functional.normalize(k, dim=-1)
        state = s0.clone()
        o = step.step_scan_cuda(q, k, v, g, beta, state, rule == "delta", 0.3, block_v=32)
        ro, rs = recurrent_step(*(x.double() for x in (q, k, v, g, beta)), s0.double(), rule=rule, scale=0.3)
        check(f"step {rule} o", rel(o, ro), TOL)
        check(f"step {rule} state", rel(state, rs), TOL)
    print("ALL OK")


if __name__ == "__main__":
    main()
