"""The float64 oracle of the scan: plain loops, written straight from DESIGN §1. Never on a hot path."""

from __future__ import annotations

import torch

from .checks import check_scan_inputs


def reference_scan(
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
    """Float64 token-by-token scan.

    Args: q, k ``[B, T, H, dk]``; v ``[B, T, H, dv]``; g ``[B, T, H, dk]`` log forget gates (<= 0);
    beta ``[B, T, H]`` input gates; initial_state ``[B, H, dk, dv]`` or None (zeros).
    Returns o ``[B, T, H, dv]`` and the final state ``[B, H, dk, dv]``, both float64.
    """
    B, T, H, dk, dv = check_scan_inputs(q, k, v, g, beta, rule, initial_state)
    scale = dk ** -0.5 if scale is None else scale
    f64 = torch.float64
    q, k, v, g, beta = (x.detach().to(f64) for x in (q, k, v, g, beta))
    S = torch.zeros(B, H, dk, dv, dtype=f64) if initial_state is None else initial_state.detach().to(f64).clone()
    out = torch.zeros(B, T, H, dv, dtype=f64)
    for t in range(T):
        for b in range(B):
            for h in range(H):
                qt, kt, vt = q[b, t, h], k[b, t, h], v[b, t, h]
                decayed = torch.exp(g[b, t, h])[:, None] * S[b, h]          # diag(exp g_t) S_{t-1}   [dk, dv]
                if rule == "gated":
                    S[b, h] = decayed + beta[b, t, h] * torch.outer(kt, vt)
                else:
                    S[b, h] = decayed + beta[b, t, h] * torch.outer(kt, vt - kt @ decayed)
                out[b, t, h] = (qt * scale) @ S[b, h]
    return out, S
