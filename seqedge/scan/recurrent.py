"""The recurrent form of the scan: one token at a time. This is the decode step that edge runtimes run."""

from __future__ import annotations

from typing import Callable

import torch

from .checks import check_scan_inputs


def einsum_readout(x: torch.Tensor, state: torch.Tensor) -> torch.Tensor:
    """x ``[B, H, dk]`` against state ``[B, H, dk, dv]`` -> ``[B, H, dv]`` (what the state holds for key x)."""
    return torch.einsum("bhk,bhkv->bhv", x, state)


def recurrent_step(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    beta: torch.Tensor,
    state: torch.Tensor,
    *,
    rule: str,
    scale: float | None = None,
    readout: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = einsum_readout,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One token of the scan, in plain exportable ops.

    Args: q, k ``[B, H, dk]``; g ``[B, H, dk]`` or ``[B, H, 1]`` (one per head, broadcast); v ``[B, H, dv]``;
    beta ``[B, H]``; state ``[B, H, dk, dv]`` float32; ``readout``: the contraction over dk (an export flavour
    may spell it with other ops, as :func:`einsum_readout` computes it).
    Returns o ``[B, H, dv]`` (float32) and the new state ``[B, H, dk, dv]`` (float32).
    """
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    dtype = state.dtype
    q, k, v, g, beta = (x.to(dtype) for x in (q, k, v, g, beta))
    # unsqueezes on the inputs, not on products: an export reshapes each input once (a reshape of a reshape
    # folds into one), and XNNPACK charges every op a call
    decayed = torch.exp(g.unsqueeze(-1)) * state                       # [B, H, dk, dv]
    if rule == "delta":
        v = v - readout(k, decayed)                                     # what key k_t already holds is overwritten
    new_state = decayed + (k.unsqueeze(-1) * beta[..., None, None]) * v.unsqueeze(-2)
    o = readout(q * scale, new_state)
    return o, new_state


def recurrent_scan(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    beta: torch.Tensor,
    *,
    rule: str,
    scale: float | None = None,
    initial_state: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The scan over a sequence by repeated :func:`recurrent_step` (same signature as the other forms).

    Args: q, k, g ``[B, T, H, dk]``; v ``[B, T, H, dv]``; beta ``[B, T, H]``; initial_state ``[B, H, dk, dv]``.
    Returns o ``[B, T, H, dv]`` float32 and the final state ``[B, H, dk, dv]`` float32.
    """
    B, T, H, dk, dv = check_scan_inputs(q, k, v, g, beta, rule, initial_state)
    dtype = torch.float64 if q.dtype == torch.float64 else torch.float32
    state = (torch.zeros(B, H, dk, dv, dtype=dtype, device=q.device) if initial_state is None
             else initial_state.to(dtype))
    outs = []
    for t in range(T):
        o, state = recurrent_step(q[:, t], k[:, t], v[:, t], g[:, t], beta[:, t], state, rule=rule, scale=scale)
        outs.append(o)
    out = torch.stack(outs, dim=1) if outs else q.new_zeros(B, 0, H, dv, dtype=dtype)
    return out, state
