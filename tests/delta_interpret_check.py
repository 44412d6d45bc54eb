"""Runs the delta rule's Triton kernels in Triton's CPU interpreter against the float64 forms.

Started in a subprocess by tests/test_kernels_delta_interpret.py (the interpreter must be on before triton
compiles anything). One line per case, ``name max_rel_err``; exits non-zero on the first case over its tolerance.
float32 only (the interpreter emulates bfloat16 loads incorrectly); tiny shapes, so it takes seconds.
"""

from __future__ import annotations

import torch

import kernels_interpret_check as base  # noqa: F401  (switches the interpreter on and patches it first)
from kernels_interpret_check import check, rel
from seqedge.kernels import delta_scan_bwd as bwd_mod
from seqedge.kernels import delta_scan_triton as fwd
from seqedge.kernels.delta_operands import chunk_layout, chunk_operands, expand_gate
from seqedge.kernels.delta_scan_bwd import delta_scan_bwd
from seqedge.scan import chunked_scan, reference_scan

TOL = 2e-5
TOL_G = 3e-4    # the gates' gradient: a difference of large terms


def inputs(B, T, H, dk, dv, gk, seed):
    gen = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=gen)
    k = torch.nn.functional.normalize(r(B, T, H, dk), dim=-1)
    g = -5.0 * torch.rand(B, T, H, gk, generator=gen)
    return r(B, T, H, dk), k, r(B, T, H, dv), g, torch.rand(B, T, H, generator=gen), r(B, H, dk, dv)


def check_prep(cfg, gk: int) -> None:
    """The prep's six outputs against :func:`chunk_operands` in float64 (tail chunk included; gk = 1: a gate per
    head, else per key)."""
    B, T, H, dk, dv = 1, 2 * cfg.chunk - 5, 2, 32, 16
    q, k, v, g, beta, _ = inputs(B, T, H, dk, dv, min(gk, dk), 1)
    g = g / 50          # weak gates: the blocks of the inverse far below the diagonal must not vanish
    got = fwd.prep(q, k, v, g, beta, 0.3, cfg)
    want = chunk_operands(*(x.double() for x in (q, k, v, g, beta)), scale=0.3, chunk=cfg.chunk)
    C = cfg.chunk
    for name, x, ref in zip(("qt", "kt", "A", "w", "u0", "b_C"), got, want):
        if name in ("qt", "kt", "w", "u0"):
            x = chunk_layout(x, C)
        x = x.reshape(ref.shape)
        check(f"prep C={C} gk={gk} register={cfg.register_prep} low={cfg.prep_low_dots} {name}", rel(x, ref), TOL)


def check_prep_inverse(cfg, gk: int) -> None:
    """The prep's ``(I + M)^-1`` (what the backward reads) against the float64 inverse of its definition."""
    B, T, H, dk, dv = 1, 2 * cfg.chunk - 5, 2, 32, 16
    q, k, v, g, beta, _ = inputs(B, T, H, dk, dv, min(gk, dk), 3)
    got = fwd.prep(q, k, v, g / 50, beta, 0.3, cfg, with_inverse=True)[6]
    x = chunk_layout(k.double(), cfg.chunk)                                      # [B, H, N, C, dk]
    b = chunk_layout(expand_gate(g.double() / 50, dk), cfg.chunk).cumsum(-2)
    kb = x * chunk_layout(beta.double().unsqueeze(-1), cfg.chunk)
    M = ((x * b.exp()) @ (kb * (-b).exp()).transpose(-1, -2)).tril(-1)
    want = torch.linalg.inv(torch.eye(cfg.chunk, dtype=torch.float64) + M)
    check(f"prep C={cfg.chunk} gk={gk} register={cfg.register_prep} inverse", rel(got.reshape(want.shape), want),
          TOL)


def check_scan(cfg, gk: int, T: int, B: int, piece: int | None = None) -> None:
    """o and the final state against the float64 reference, with a carried initial state."""
    H, dk, dv = 2, 16, 32
    q, k, v, g, beta, s0 = inputs(B, T, H, dk, dv, gk, T)
    ro, rs = reference_scan(q, k, v, g.expand(B, T, H, dk), beta, rule="delta", initial_state=s0)
    o, s = fwd.delta_scan_fwd(q, k, v, g, beta, s0, dk ** -0.5, cfg, piece=piece)
    tag = (f"fwd C={cfg.chunk} BV={cfg.block_v} split_o={cfg.split_o} register={cfg.register_prep} gk={gk} T={T} "
           f"piece={piece}")
    check(f"{tag} o", rel(o, ro), TOL)
    check(f"{tag} state", rel(s, rs), TOL)


def check_bwd(cfg, gk: int, T: int, piece: int, dk: int = 16, saved: bool = False, B: int = 1,
              blocks: int | None = None, low: bool = False) -> None:
    """Every gradient against float64 autograd of the chunked form, from output and final-state cotangents; with
    ``saved`` from the forward's piece-entering states (else the backward re-scans them); ``blocks``: the
    chunk-local kernel's key and value block (several key blocks: dbeta and a per-head dg summed over them);
    ``low``: its dots of operands formed in the kernel in the inputs' dtype (float32 here: the same values, the
    code path checked)."""
    H, dv = 2, 32
    q, k, v, g, beta, s0 = inputs(B, T, H, dk, dv, min(gk, dk), 7 + T)
    gen = torch.Generator().manual_seed(T)
    do, dfinal = torch.randn(B, T, H, dv, generator=gen), torch.randn(B, H, dk, dv, generator=gen)
    leaves = [x.double().requires_grad_() for x in (q, k, v, g, beta, s0)]
    o, s = chunked_scan(*leaves[:3], leaves[3].expand(B, T, H, dk), leaves[4], rule="delta", initial_state=leaves[5])
    want = torch.autograd.grad((o, s), leaves, (do.double(), dfinal.double()))
    entering = None
    if saved:
        entering = torch.full(((T - 1) // piece, B, H, dk, dv), float("nan"))
        fwd.delta_scan_fwd(q, k, v, g, beta, s0, dk ** -0.5, cfg, piece=piece, entering=entering)
    local = {"local_block_k": blocks, "local_block_v": blocks} if blocks else {}
    launch = bwd_mod.BwdLaunch(cfg, **local, local_low_dots=low)
    got = delta_scan_bwd(q, k, v, g, beta, s0, do, dfinal, dk ** -0.5, launch, piece=piece, entering=entering)
    for name, x, ref in zip(("dq", "dk", "dv", "dg", "dbeta", "ds0"), got, want):
        tag = (f"bwd C={cfg.chunk} gk={gk} dk={dk} B={B} T={T} piece={piece} saved={saved} blocks={blocks} "
               f"low={low} {name}")
        check(tag, rel(x, ref), TOL_G if name == "dg" else TOL)


def main() -> None:
    small = fwd.DeltaConfig(chunk=16, block_v=16, prep_block_k=16)
    for chunk, gk in ((16, 32), (32, 1), (64, 32), (64, 1)):   # 1, 2 and 4 diagonal blocks of the inverse
        check_prep(fwd.DeltaConfig(chunk=chunk, block_v=32, prep_block_k=16), gk)
    check_scan(small, 16, T=37, B=1)
    check_scan(small, 1, T=50, B=1, piece=32)           # pieces carry the state
    split = fwd.DeltaConfig(chunk=32, block_v=16, prep_block_k=16, split_o=True)
    check_scan(split, 16, T=75, B=2, piece=64)          # o formed after the scan, two batches, a partial piece
    check_scan(split, 1, T=40, B=1)
    check_scan(split, 1, T=100, B=2, piece=32)         # four pieces: each piece's o formed after the next prep
    for chunk, gk in ((16, 32), (32, 1), (32, 32), (64, 1), (64, 32)):   # the register prep: 1, 2 and 4 blocks
        regs = fwd.DeltaConfig(chunk=chunk, block_v=16, prep_block_k=16, register_prep=True, prep_warps=1)
        check_prep(regs, gk)
        check_prep_inverse(regs, gk)
    check_scan(fwd.DeltaConfig(chunk=32, block_v=16, prep_block_k=16, register_prep=True), 16, T=75, B=2, piece=64)
    for register in (False, True):                      # w and u0 from operands in the inputs' dtype (float32 here)
        check_prep(fwd.DeltaConfig(chunk=64, block_v=16, prep_block_k=16, register_prep=register, prep_warps=1,
                                   prep_low_dots=True), 1)
    for gk in (1, 16):                                   # strong gates through four blocks, a partial last chunk
        check_scan(fwd.DeltaConfig(chunk=64, block_v=16, prep_block_k=16, register_prep=True), gk, T=150, B=1,
                   piece=128)
    check_bwd(small, 16, T=37, piece=32)                # two pieces, the last one partial
    check_bwd(small, 1, T=37, piece=16, saved=True, B=2)   # three pieces, their states from the forward; two
    #                                                        batches: gradients written into rows of the whole
    mid = fwd.DeltaConfig(chunk=32, block_v=16, prep_block_k=16)
    check_bwd(mid, 1, T=45, piece=8192, dk=32)          # a gate per head, two key blocks and column blocks
    check_bwd(fwd.DeltaConfig(chunk=64, block_v=16, prep_block_k=16), 32, T=70, piece=64, dk=32)   # per key
    check_bwd(fwd.DeltaConfig(chunk=64, block_v=16, prep_block_k=16), 1, T=70, piece=64, dk=32)    # per head
    check_bwd(mid, 1, T=45, piece=8192, dk=32, blocks=16)      # the chunk-local kernel over two key blocks
    check_bwd(mid, 32, T=45, piece=32, dk=32, blocks=16, B=2)
    check_bwd(mid, 1, T=45, piece=32, dk=32, blocks=16, B=2, saved=True)   # per head: batches, pieces, saved
    check_bwd(mid, 1, T=45, piece=32, dk=32, blocks=16, B=2, saved=True, low=True)
    print("ALL OK")


if __name__ == "__main__":
    main()
