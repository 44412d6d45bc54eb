"""Triton fused decode step (decay, update, read-out) for both update rules, in place on the state.

Imported only on the CUDA path (imports triton at top level). One program per (batch*head, value block): it
reads its ``[dk, BV]`` block of the float32 state once, writes it back once at the same address, and writes o.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

STEP_BLOCK_V: tuple[int, ...] = (32, 64)  # every entry is checked by the GPU tests; 32 is the default


@triton.jit
def _step_kernel(q, k, v, g, beta, state, o, scale,
                 DK: tl.constexpr, DV: tl.constexpr, BV: tl.constexpr, DELTA: tl.constexpr):
    i_bh = tl.program_id(0).to(tl.int64)
    i_v = tl.program_id(1)
    rk = tl.arange(0, DK)
    rv = i_v * BV + tl.arange(0, BV)
    b_q = tl.load(q + i_bh * DK + rk).to(tl.float32) * scale                # [DK]
    b_k = tl.load(k + i_bh * DK + rk).to(tl.float32)
    b_g = tl.load(g + i_bh * DK + rk).to(tl.float32)
    b_v = tl.load(v + i_bh * DV + rv).to(tl.float32)                         # [BV]
    b_beta = tl.load(beta + i_bh).to(tl.float32)
    ptr = state + i_bh * DK * DV + rk[:, None] * DV + rv[None, :]
    S = tl.load(ptr) * tl.exp(b_g)[:, None]                                  # [DK, BV] decayed
    if DELTA:
        b_v = b_v - tl.sum(b_k[:, None] * S, axis=0)                         # overwrite what k held
    S = S + (b_beta * b_k)[:, None] * b_v[None, :]
    tl.store(ptr, S)
    tl.store(o + i_bh * DV + rv, tl.sum(b_q[:, None] * S, axis=0))


def step_scan_cuda(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor, beta: torch.Tensor,
                   state: torch.Tensor, delta: bool, scale: float, block_v: int = 32,
                   out: torch.Tensor | None = None) -> torch.Tensor:
    """Launch the step on contiguous CUDA tensors; updates ``state`` in place, returns o ``[B, H, dv]`` float32."""
    B, H, DK = q.shape
    DV = v.shape[-1]
    BV = min(block_v, DV)
    o = torch.empty(B, H, DV, dtype=torch.float32, device=q.device) if out is None else out
    _step_kernel[(B * H, DV // BV)](q, k, v, g, beta, state, o, scale, DK=DK, DV=DV, BV=BV, DELTA=delta,
                                   num_warps=4 if DK * BV >= 4096 else 2)
    return o
