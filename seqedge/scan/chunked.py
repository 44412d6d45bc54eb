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
from .checks import check_scan_inputs


def decayed_scores(x: torch.Tensor, y: torch.Tensor, b: torch.Tensor, *, strict: bool,
                   bounded: bool = True, g: torch.Tensor | None = None) -> torch.Tensor:
    """``A[t, s] = sum_i x[t, i] y[s, i] exp(b[t, i] - b[s, i])`` for s <= t (s < t if strict), else 0.

    x, y, b: ``[..., C, d]`` with C a multiple of 16 and b non-increasing along C, by at most 5 per token if
    ``bounded``. Returns ``[..., C, C]``. Bounded: no exponent ever exceeds 40 inside a 16-token sub-chunk
    (referenced to its middle) and every product is a matmul. Unbounded (any decay, e.g. Mamba2's; pass the
    per-token log decays ``g``, of which b is the running sum): every exponent ``b_t - b_s`` is formed as the
    segment sum ``g_{s+1} + ... + g_t`` (:func:`_unbounded_scores`), never as a difference of running sums.
    """
    lead = x.shape[:-2]
    C, d = int(x.shape[-2]), int(x.shape[-1])      # static when exported: only leading dims stay symbolic
    nb = C // SUB_CHUNK
    x, y, b = (t.reshape(-1, C, d) for t in (x, y, b))                                  # [L, C, d]
    xb, yb, bb = (t.reshape(-1, nb, SUB_CHUNK, d) for t in (x, y, b))                   # [L, nb, 16, d]
    idx = torch.arange(SUB_CHUNK, device=x.device)
    tri = idx[:, None] > idx[None, :] if strict else idx[:, None] >= idx[None, :]       # [16, 16]

    if bounded:
        mid = bb[:, :, SUB_CHUNK // 2: SUB_CHUNK // 2 + 1, :]                            # [L, nb, 1, d]
        diag = (xb * torch.exp(bb - mid)) @ (yb * torch.exp(mid - bb)).transpose(-1, -2)   # [L, nb, 16, 16]
        ref = bb[:, :, SUB_CHUNK - 1, :].unsqueeze(-2)                                   # [L, nb, 1, d]
        x_dec = x.unsqueeze(1) * torch.exp(torch.clamp(b.unsqueeze(1) - ref, max=0.0)) # [L, nb, C, d]
        y_dec = yb * torch.exp(ref - bb)                                                 # [L, nb, 16, d]
    else:
        if g is None:
            raise ValueError("decayed_scores(bounded=False) needs the per-token log decays g")
        diag, x_dec, y_dec = _unbounded_scores(x, xb, yb, g.reshape(-1, C, d))
    diag = torch.where(tri, diag, torch.zeros_like(diag))
    eye_nb = torch.eye(nb, dtype=x.dtype, device=x.device).reshape(nb, 1, nb, 1)
    diag_full = (diag.unsqueeze(-2) * eye_nb).reshape(-1, C, C)                         # block-diagonal

    off = (x_dec @ y_dec.transpose(-1, -2)).transpose(1, 2).reshape(-1, C, C)          # [L, C, C]

    blk = torch.arange(C, device=x.device) // SUB_CHUNK
    below = blk[:, None] > blk[None, :]                                                  # [C, C]
    out = torch.where(below, off, diag_full)
    return out if len(lead) == 1 else out.reshape(*lead, C, C)


def exclusive_suffix_sum(g: torch.Tensor, dim: int) -> torch.Tensor:
    """``out[t] = g[t+1] + ... + g[end]`` along ``dim`` (0 at the end), summed from the end: no cancellation."""
    total = torch.flip(torch.cumsum(torch.flip(g, (dim,)), dim), (dim,))              # inclusive suffix sums
    rest = total.narrow(dim, 1, int(g.shape[dim]) - 1)
    return torch.cat([rest, torch.zeros_like(g.narrow(dim, 0, 1))], dim)


def _unbounded_scores(x: torch.Tensor, xb: torch.Tensor, yb: torch.Tensor, g: torch.Tensor):
    """The unbounded form's factors from segment sums of g ``[L, C, d]`` (each a sum of same-sign terms, so its
    float32 error is relative to itself: a steep decay early in a chunk does not blur the later, mild ones).

    Returns the in-sub-chunk scores ``[L, nb, 16, 16]`` and the cross-sub-chunk factors ``x_dec`` ``[L, nb, C, d]``
    (x_t times exp of the decay from the end of sub-chunk j to t) and ``y_dec`` ``[L, nb, 16, d]`` (y_s times exp
    of the decay from s to the end of its sub-chunk).
    """
    C, d = int(g.shape[-2]), int(g.shape[-1])
    nb = C // SUB_CHUNK
    gb = g.reshape(-1, nb, SUB_CHUNK, d)
    idx = torch.arange(SUB_CHUNK, device=g.device)
    after = (idx[None, :] > idx[:, None]).to(g.dtype)                                   # [s, r]: r > s
    seg = torch.cumsum(gb.unsqueeze(-3) * after[:, :, None], dim=-2)                    # [L, nb, s, t, d]
    pair = torch.exp(seg.transpose(-2, -3))                                              # [L, nb, t, s, d]
    diag = ((xb.unsqueeze(-2) * pair) * yb.unsqueeze(-3)).sum(-1)                        # [L, nb, 16, 16]
    pos = torch.arange(C, device=g.device)
    ends = torch.arange(nb, device=g.device) * SUB_CHUNK + SUB_CHUNK - 1
    past = (pos[None, :] > ends[:, None]).to(g.dtype)                                   # [nb, C]: r after sub-chunk j
    x_dec = x.unsqueeze(1) * torch.exp(torch.cumsum(g.unsqueeze(1) * past[:, :, None], dim=-2))
    y_dec = yb * torch.exp(exclusive_suffix_sum(gb, -2))
    return diag, x_dec, y_dec


def _block_forward_substitution(lower: torch.Tensor, eye: torch.Tensor | None = None) -> torch.Tensor:
    """``(I + L)^-1`` for strictly lower-triangular 16x16 blocks ``[..., 16, 16]``: 15 unrolled row updates.

    ``eye``: the 16x16 identity, if the caller holds it as a constant (an exported graph then builds none)."""
    n = int(lower.shape[-1])
    eye = torch.eye(n, dtype=lower.dtype, device=lower.device) if eye is None else eye
    inv = eye - eye[:, 1:2] * lower                                  # row 1 (L @ I is L): [..., 16, 16]
    for i in range(2, n):
        row_i = eye[:, i:i + 1]                                      # [16, 1] selects row i
        inv = inv - row_i * (lower @ inv)                            # row i := e_i - L[i, :i] X[:i]
    return inv


def unit_lower_inverse(lower: torch.Tensor, eye: torch.Tensor | None = None) -> torch.Tensor:
    """``(I + L)^-1`` for a strictly lower-triangular ``[..., C, C]`` (C a multiple of 16).

    Forward substitution on the 16-row diagonal blocks, merged by block-triangular products. Unlike powers of
    L (Neumann series, repeated squaring) this stays accurate in float32 when keys are strongly correlated.
    ``eye``: the 16x16 identity held as a constant by the caller (built here if None).
    """
    C = int(lower.shape[-1])
    nb = C // SUB_CHUNK

    def block(m: torch.Tensor, i: int, j: int) -> torch.Tensor:
        return m[..., i * SUB_CHUNK:(i + 1) * SUB_CHUNK, j * SUB_CHUNK:(j + 1) * SUB_CHUNK]

    inv: list[list[torch.Tensor | None]] = [[None] * nb for _ in range(nb)]
    for i in range(nb):
        inv[i][i] = _block_forward_substitution(block(lower, i, i), eye)
    for i in range(1, nb):
        for j in range(i - 1, -1, -1):
            acc = sum(block(lower, i, m) @ inv[m][j] for m in range(j, i))
            inv[i][j] = -(inv[i][i] @ acc)
    if nb == 1:                      # one block: no cat of one tensor (XNNPACK leaves that to the portable kernels)
        return inv[0][0]
    zeros = torch.zeros_like(inv[0][0])
    rows = [torch.cat([inv[i][j] if j <= i else zeros for j in range(nb)], dim=-1) for i in range(nb)]
    return torch.cat(rows, dim=-2)


def _to_chunks(x: torch.Tensor, n_chunks: int, chunk: int) -> torch.Tensor:
    """``[B, T, H, d]`` (T = n_chunks * chunk) -> ``[B, H, N, C, d]``; only the batch is left symbolic."""
    H, d = int(x.shape[2]), int(x.shape[3])
    return x.reshape(-1, n_chunks, chunk, H, d).permute(0, 3, 1, 2, 4)


def check_chunk_size(chunk_size: int) -> None:
    """Chunks are whole 16-token sub-chunks (the decayed scores' exponent reference)."""
    if chunk_size <= 0 or chunk_size % SUB_CHUNK:
        raise ValueError(f"chunk_size must be a positive multiple of {SUB_CHUNK}, got {chunk_size}")


def padded_inputs(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor, beta: torch.Tensor,
                  initial_state: torch.Tensor | None, chunk_size: int) -> tuple[torch.Tensor, ...]:
    """``(q, k, v, g, beta, state, pad)``: the inputs in float32 (float64 for float64 input), padded to whole
    chunks with ``pad`` tokens that leave the state untouched (g = 0, beta = 0), and the starting state
    ``[B, H, dk, dv]`` (zeros without an initial state). Shared by the chunked forms, so they pad alike."""
    B, T, H, dk = q.shape
    dtype = torch.float64 if q.dtype == torch.float64 else torch.float32
    q, k, v, g, beta = (x.to(dtype) for x in (q, k, v, g, beta))
    state = (torch.zeros(B, H, dk, v.shape[-1], dtype=dtype, device=q.device) if initial_state is None
             else initial_state.to(dtype))
    pad = (-int(T)) % chunk_size
    if pad:
        q, k, v, g = (F.pad(x, (0, 0, 0, 0, 0, pad)) for x in (q, k, v, g))
        beta = F.pad(beta, (0, 0, 0, pad))
    return q, k, v, g, beta, state, pad


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
    bounded: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The scan in chunks of ``chunk_size`` tokens (same signature as the reference and recurrent forms).

    ``bounded``: every g >= -5 (the native gate); pass False for any other decay (see :func:`decayed_scores`).
    Args: q, k, g ``[B, T, H, dk]``; v ``[B, T, H, dv]``; beta ``[B, T, H]``; initial_state ``[B, H, dk, dv]``.
    Any T: the tail is padded with tokens that leave the state untouched (g = 0, beta = 0), so it is exact.
    Returns o ``[B, T, H, dv]`` and the final state ``[B, H, dk, dv]``, float32 (float64 for float64 input).
    """
    T, H, dk, dv = (int(n) for n in check_scan_inputs(q, k, v, g, beta, rule, initial_state)[1:])
    check_chunk_size(chunk_size)
    scale = dk ** -0.5 if scale is None else scale
    q, k, v, g, beta, state, pad = padded_inputs(q, k, v, g, beta, initial_state, chunk_size)
    C = chunk_size
    n_chunks = (T + pad) // C
    q, k, v, g = (_to_chunks(x, n_chunks, C) for x in (q, k, v, g))     # [B, H, N, C, d]
    beta = _to_chunks(beta.unsqueeze(-1), n_chunks, C)                     # [B, H, N, C, 1]

    def flat(x: torch.Tensor) -> torch.Tensor:     # [B, H, N, C, d] -> [B*H*N, C, d]: intermediates stay rank <= 5
        return x.reshape(-1, C, int(x.shape[-1]))

    def unflat(x: torch.Tensor) -> torch.Tensor:   # [B*H*N, C, C] -> [B, H, N, C, C]
        return x.reshape(-1, H, n_chunks, C, C)

    b = torch.cumsum(g, dim=-2)                                            # inclusive log-decay from chunk start
    kb = k * beta
    q = q * scale
    gf = None if bounded else flat(g)
    scores = unflat(decayed_scores(flat(q), flat(kb), flat(b), strict=False, bounded=bounded, g=gf))
    b_last = b[..., -1:, :]                                                # [B, H, N, 1, dk]
    q_dec = q * torch.exp(b)
    # decay from t to the chunk's end; unbounded: summed from the end, not b_last - b (see decayed_scores)
    k_dec = kb * torch.exp(b_last - b if bounded else exclusive_suffix_sum(g, -2))
    chunk_decay = torch.exp(b_last).transpose(-1, -2)                      # [B, H, N, dk, 1]
    if rule == "delta":
        lower = decayed_scores(flat(k), flat(kb), flat(b), strict=True, bounded=bounded, g=gf)
        inv = unflat(unit_lower_inverse(lower))                                                 # (I + M)^-1
        u0 = inv @ v
        w = inv @ (k * torch.exp(b))
    else:
        u0, w = v, None

    outs = []
    for n in range(n_chunks):
        u = u0[:, :, n] if w is None else u0[:, :, n] - w[:, :, n] @ state
        outs.append(q_dec[:, :, n] @ state + scores[:, :, n] @ u)           # [B, H, C, dv]
        state = chunk_decay[:, :, n] * state + k_dec[:, :, n].transpose(-1, -2) @ u
    out = torch.stack(outs, dim=2).permute(0, 2, 3, 1, 4).reshape(-1, n_chunks * C, H, dv)
    return out[:, :T], state
