"""The delta rule's chunk-local operands in plain PyTorch: what the Triton prep computes, differentiable.

The reference of the Triton prep (the interpreter checks compare the two) and of the chunk-local backward's
formulas (:mod:`seqedge.kernels.delta_bwd_local_triton` differentiates exactly these by hand). The formulas are
:func:`seqedge.scan.chunked_scan`'s (delta rule), split at the state.
"""

from __future__ import annotations

import torch

from seqedge.scan.chunked import decayed_scores, padded_inputs, unit_lower_inverse

# Tokens per piece of the sequence (a multiple of every chunk), forward and backward alike: the prep's operands and
# the backward's workspace take memory for one piece, and the forward hands the state entering each piece after the
# first to the backward, which then needs no re-scan. Read as ``delta_operands.PIECE`` (tests shorten it).
PIECE = 8192


def piece_count(T) -> int:
    """Pieces after the first, whose entering states the forward saves: ``max(T - 1, 0) // PIECE`` (a SymInt
    under torch.compile)."""
    return torch.sym_max(T - 1, 0) // PIECE


def _chunks(x: torch.Tensor, n: int, chunk: int) -> torch.Tensor:
    """``[B, n * C, H, d]`` -> ``[B, H, n, C, d]``."""
    return x.reshape(x.shape[0], n, chunk, x.shape[2], x.shape[3]).permute(0, 3, 1, 2, 4)


def expand_gate(g: torch.Tensor, dk: int) -> torch.Tensor:
    """A per-head gate ``[B, T, H]`` or ``[B, T, H, 1]`` as ``[B, T, H, dk]`` (a view); per-key gates unchanged."""
    if g.dim() == 3:
        g = g.unsqueeze(-1)
    return g if g.shape[-1] == dk else g.expand(*g.shape[:-1], dk)


def chunk_operands(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor, beta: torch.Tensor, *,
                   scale: float, chunk: int) -> tuple[torch.Tensor, ...]:
    """``(qt, kt, A, w, u0, b_last)`` of every chunk, float32 (float64 for float64 input), chunk layout.

    Args: q, k ``[B, T, H, dk]``; v ``[B, T, H, dv]``; g ``[B, T, H, dk]`` or ``[B, T, H, 1]``; beta ``[B, T, H]``.
    Returns qt, kt, w ``[B, H, N, C, dk]``, A ``[B, H, N, C, C]``, u0 ``[B, H, N, C, dv]``, b_last ``[B, H, N, dk]``
    with N = ceil(T / C): ``qt = scale q exp(b)``, ``kt = beta k exp(b_C - b)``, ``A`` the decayed scores
    (s <= t), ``w = (I + M)^-1 (k exp(b))``, ``u0 = (I + M)^-1 v``; the tail is padded with g = 0, beta = 0.
    """
    B, T, H, dk = q.shape
    dv = v.shape[-1]
    q, k, v, g, beta, _, pad = padded_inputs(q, k, v, g, beta, None, chunk)
    n = (T + pad) // chunk
    g = expand_gate(g, dk)
    q, k, v, g = (_chunks(x, n, chunk) for x in (q, k, v, g))            # [B, H, N, C, d]
    beta = _chunks(beta.unsqueeze(-1), n, chunk)                           # [B, H, N, C, 1]
    flat = lambda x: x.reshape(-1, chunk, int(x.shape[-1]))
    b = torch.cumsum(g, dim=-2)
    kb = k * beta
    qs = q * scale
    A = decayed_scores(flat(qs), flat(kb), flat(b), strict=False).reshape(B, H, n, chunk, chunk)
    inv = unit_lower_inverse(decayed_scores(flat(k), flat(kb), flat(b), strict=True))      # (I + M)^-1
    w = (inv @ flat(k * torch.exp(b))).reshape(B, H, n, chunk, dk)
    u0 = (inv @ flat(v)).reshape(B, H, n, chunk, dv)
    b_last = b[..., -1, :]
    return qs * torch.exp(b), kb * torch.exp(b_last.unsqueeze(-2) - b), A, w, u0, b_last


def scan_operands(qt, kt, A, w, u0, b_last, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The sequential part over :func:`chunk_operands`' output: o ``[B, H, N, C, dv]`` and the final state."""
    outs = []
    for n in range(qt.shape[2]):
        u = u0[:, :, n] - w[:, :, n] @ state
        outs.append(qt[:, :, n] @ state + A[:, :, n] @ u)
        state = torch.exp(b_last[:, :, n]).unsqueeze(-1) * state + kt[:, :, n].transpose(-1, -2) @ u
    return torch.stack(outs, dim=2), state


def chunk_layout(x: torch.Tensor, chunk: int) -> torch.Tensor:
    """``[B, T, H, d]`` -> ``[B, H, N, C, d]``, the tail padded with zeros."""
    T = x.shape[1]
    pad = (-T) % chunk
    if pad:
        x = torch.nn.functional.pad(x, (0, 0, 0, 0, 0, pad))
    return _chunks(x, (T + pad) // chunk, chunk)
