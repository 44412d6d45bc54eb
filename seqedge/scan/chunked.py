"""The chunked form of the scan: quadratic inside chunks of C tokens, the state passed between chunks.

Training and prefill run this form. It is written in plain, exportable ops (matmul, exp, cumsum, where):
the ``chunk`` entry point of every artifact traces it. For a chunk with cumulative log-gates b (inclusive),
both update rules read

    A[t, s] = beta_s <q_t, k_s * exp(b_t - b_s)>          s <= t   (decayed scores)
    gated:  U = V
    delta:  M[t, s] = beta_s <k_t, k_s * exp(b_t - b_s)>  s < t,  U = (I + M)^-1 (V - (K * exp(b)) S0)
    O  = (Q * exp(b)) S0 + A U
    S1 = diag(exp(b_C)) S0 + (beta K * exp(b_C - b))^T U
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..config import SUB_CHUNK
from ._checks import check_scan_inputs


def decayed_scores(x: torch.Tensor, y: torch.Tensor, b: torch.Tensor, *, strict: bool) -> torch.Tensor:
    """``A[t, s] = sum_i x[t, i] y[s, i] exp(b[t, i] - b[s, i])`` for s <= t (s < t if strict), else 0.

    x, y, b: ``[..., C, d]`` with C a multiple of 16 and b non-increasing along C by at most 5 per token.
    Returns ``[..., C, C]``. No exponent ever exceeds 40 inside a 16-token sub-chunk (referenced to its
    middle), and across sub-chunks both factors are at most 1, so float32 neither overflows nor loses the
    small terms; every product is a matmul.
    """
    *lead, C, d = x.shape
    nb = C // SUB_CHUNK
    xb = x.reshape(*lead, nb, SUB_CHUNK, d)
    yb = y.reshape(*lead, nb, SUB_CHUNK, d)
    bb = b.reshape(*lead, nb, SUB_CHUNK, d)
    idx = torch.arange(SUB_CHUNK, device=x.device)
    tri = idx[:, None] > idx[None, :] if strict else idx[:, None] >= idx[None, :]       # [16, 16]

    mid = bb[..., SUB_CHUNK // 2: SUB_CHUNK // 2 + 1, :]                                 # [..., nb, 1, d]
    diag = (xb * torch.exp(bb - mid)) @ (yb * torch.exp(mid - bb)).transpose(-1, -2)   # [..., nb, 16, 16]
    diag = torch.where(tri, diag, torch.zeros_like(diag))
    eye_nb = torch.eye(nb, dtype=x.dtype, device=x.device).reshape(nb, 1, nb, 1)
    diag_full = (diag.unsqueeze(-2) * eye_nb).reshape(*lead, C, C)                      # block-diagonal

    ref = bb[..., SUB_CHUNK - 1, :].unsqueeze(-2)                                        # [..., nb, 1, d]
    x_dec = x.unsqueeze(-3) * torch.exp(torch.clamp(b.unsqueeze(-3) - ref, max=0.0))   # [..., nb, C, d]
    y_dec = yb * torch.exp(ref - bb)                                                     # [..., nb, 16, d]
    off = (x_dec @ y_dec.transpose(-1, -2)).transpose(-3, -2).reshape(*lead, C, C)     # [..., C, C]

    blk = torch.arange(C, device=x.device) // SUB_CHUNK
    below = blk[:, None] > blk[None, :]                                                  # [C, C]
    return torch.where(below, off, diag_full)


def _block_forward_substitution(lower: torch.Tensor) -> torch.Tensor:
    """``(I + L)^-1`` for strictly lower-triangular 16x16 blocks ``[..., 16, 16]``: 15 unrolled row updates."""
    n = lower.shape[-1]
    eye = torch.eye(n, dtype=lower.dtype, device=lower.device)
    inv = eye.expand_as(lower)
    for i in range(1, n):
        row_i = eye[:, i:i + 1]                                      # [16, 1] selects row i
        inv = inv - row_i * (lower @ inv)                            # row i := e_i - L[i, :i] X[:i]
    return inv


def unit_lower_inverse(lower: torch.Tensor) -> torch.Tensor:
    """``(I + L)^-1`` for a strictly lower-triangular ``[..., C, C]`` (C a multiple of 16).

    Forward substitution on the 16-row diagonal blocks, merged by block-triangular products. Unlike powers of
    L (Neumann series, repeated squaring) this stays accurate in float32 when keys are strongly correlated.
    """
    C = lower.shape[-1]
    nb = C // SUB_CHUNK

    def block(m: torch.Tensor, i: int, j: int) -> torch.Tensor:
        return m[..., i * SUB_CHUNK:(i + 1) * SUB_CHUNK, j * SUB_CHUNK:(j + 1) * SUB_CHUNK]

    inv: list[list[torch.Tensor | None]] = [[None] * nb for _ in range(nb)]
    for i in range(nb):
        inv[i][i] = _block_forward_substitution(block(lower, i, i))
    for i in range(1, nb):
        for j in range(i - 1, -1, -1):
            acc = sum(block(lower, i, m) @ inv[m][j] for m in range(j, i))
            inv[i][j] = -(inv[i][i] @ acc)
    zeros = torch.zeros_like(inv[0][0])
    rows = [torch.cat([inv[i][j] if j <= i else zeros for j in range(nb)], dim=-1) for i in range(nb)]
    return torch.cat(rows, dim=-2)


def _flat(fn, *xs: torch.Tensor, **kwargs) -> torch.Tensor:
    """Apply ``fn`` to ``[B, H, N, C, d]`` inputs flattened to ``[B*H*N, C, d]`` (keeps every intermediate at
    rank <= 5, which Core ML requires) and restore the leading dims."""
    lead = xs[0].shape[:-2]
    out = fn(*(x.reshape(-1, *x.shape[-2:]) for x in xs), **kwargs)
    return out.reshape(*lead, *out.shape[-2:])


def _to_chunks(x: torch.Tensor, chunk: int) -> torch.Tensor:
    """``[B, T, H, d]`` (T a multiple of chunk) -> ``[B, H, N, C, d]``."""
    B, T, H = x.shape[:3]
    return x.reshape(B, T // chunk, chunk, H, *x.shape[3:]).permute(0, 3, 1, 2, *range(4, x.dim() + 1))


def chunked_scan(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    beta: torch.Tensor,
    *,
    rule: str,
    scale: float | None = None,
    initial_state: torch.Tensor | None = None,
    chunk_size: int = 64,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The scan in chunks of ``chunk_size`` tokens (same signature as the reference and recurrent forms).

    Args: q, k, g ``[B, T, H, dk]``; v ``[B, T, H, dv]``; beta ``[B, T, H]``; initial_state ``[B, H, dk, dv]``.
    Any T: the tail is padded with tokens that leave the state untouched (g = 0, beta = 0), so it is exact.
    Returns o ``[B, T, H, dv]`` and the final state ``[B, H, dk, dv]``, float32 (float64 for float64 input).
    """
    B, T, H, dk, dv = check_scan_inputs(q, k, v, g, beta, rule, initial_state)
    if chunk_size <= 0 or chunk_size % SUB_CHUNK:
        raise ValueError(f"chunk_size must be a positive multiple of {SUB_CHUNK}, got {chunk_size}")
    scale = dk ** -0.5 if scale is None else scale
    dtype = torch.float64 if q.dtype == torch.float64 else torch.float32
    q, k, v, g, beta = (x.to(dtype) for x in (q, k, v, g, beta))
    state = (torch.zeros(B, H, dk, dv, dtype=dtype, device=q.device) if initial_state is None
             else initial_state.to(dtype))
    pad = (-T) % chunk_size
    if pad:
        q, k, v, g = (F.pad(x, (0, 0, 0, 0, 0, pad)) for x in (q, k, v, g))
        beta = F.pad(beta, (0, 0, 0, pad))
    C = chunk_size
    q, k, v, g = (_to_chunks(x, C) for x in (q, k, v, g))               # [B, H, N, C, d]
    beta = _to_chunks(beta.unsqueeze(-1), C)                               # [B, H, N, C, 1]
    n_chunks = q.shape[2]

    b = torch.cumsum(g, dim=-2)                                            # inclusive log-decay from chunk start
    kb = k * beta
    q = q * scale
    scores = _flat(decayed_scores, q, kb, b, strict=False)                 # [B, H, N, C, C]
    b_last = b[..., -1:, :]                                                # [B, H, N, 1, dk]
    q_dec = q * torch.exp(b)
    k_dec = kb * torch.exp(b_last - b)
    chunk_decay = torch.exp(b_last).transpose(-1, -2)                      # [B, H, N, dk, 1]
    if rule == "delta":
        inv = _flat(unit_lower_inverse, _flat(decayed_scores, k, kb, b, strict=True))  # (I + M)^-1 [B, H, N, C, C]
        u0 = inv @ v
        w = inv @ (k * torch.exp(b))
    else:
        u0, w = v, None

    outs = []
    for n in range(n_chunks):
        u = u0[:, :, n] if w is None else u0[:, :, n] - w[:, :, n] @ state
        outs.append(q_dec[:, :, n] @ state + scores[:, :, n] @ u)           # [B, H, C, dv]
        state = chunk_decay[:, :, n] * state + k_dec[:, :, n].transpose(-1, -2) @ u
    out = torch.stack(outs, dim=2).permute(0, 2, 3, 1, 4).reshape(B, n_chunks * C, H, dv)
    return out[:, :T], state
