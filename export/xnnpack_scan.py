"""The chunked scan with its masks and prefix sums as constants: what the ExecuTorch ``chunk`` program traces.

:func:`seqedge.scan.chunked_scan` builds its masks at run time (``arange``, comparisons, ``where``), takes the
cumulative log-gates with ``cumsum`` and its reference rows with slices. XNNPACK's partitioner (executorch
1.5.1) takes none of these on tensors with a symbolic batch, so every layer's scan would run on ExecuTorch's
portable kernels between delegate calls. :class:`StaticMaskScan` computes the same function with ops XNNPACK takes, for
the chunk size C fixed at export (its constants are built once, in ``__init__``). For bounded gates
(``config.bounded_gates``, every g >= -5: the native sigmoid gate):

- ``b = cumsum(g)`` as a linear over the chunk axis with the 0/1 lower-triangular ``[C, C]`` matrix: the same
  sums (XNNPACK adds them in order: the lowered programs gave the same bits as ``cumsum``);
- the reference rows (b at the middle of every 16-token sub-chunk, b at the chunk's end) as linears with one-hot
  rows: exact (one term times 1, the others times 0);
- the decayed scores ``x_t . y_s exp(b_t - b_s)`` (s <= t) with one reference per 16-token column block, its
  middle m: ``(x_t exp(b_t - m)) . (y_s exp(m - b_s))``, one batched matmul for the whole ``[C, C]``. The same
  product as :func:`seqedge.scan.decayed_scores` in exact arithmetic. For a kept score both factors stay in
  range: ``b_t - m <= 40`` inside the block (at most 8 decays of at most 5, g_min >= -5) and ``<= 0`` below it,
  ``|m - b_s| <= 40``. Rows above the block (masked out) would reach ``exp(5 C)``, so that exponent is clamped at
  :data:`REF_SPAN` = 41, which no kept score reaches;
- ``where(mask, scores, 0)`` as ``clamp(scores, -FLT_MAX, FLT_MAX) * mask`` with constant 0/1 masks: a kept
  score is multiplied by 1 (exact); a masked-out one, at most ``exp(76) |x_t| |y_s|``, becomes a zero, also
  when it overflowed (the clamp makes ``inf`` finite first). Only a NaN, from opposite overflowing terms in one
  dot product (each ``|x_i y_i| > 3e5``), would pass the mask;
- the per-chunk products as 3-D ``bmm`` (no broadcast reshapes around them) and a one-chunk output reshaped,
  not stacked (``cat`` of one tensor is not taken either).

Unbounded gates (``config.bounded_gates`` False: softplus, logsigmoid; ``StaticMaskScan(C, bounded=False)``) have
no midpoint reference that keeps every exponent in range, so that form computes what
``chunked_scan(..., bounded=False)`` computes: every exponent ``b_t - b_s`` as a segment sum
``g_{s+1} + ... + g_t`` of same-sign terms (float32 error relative to itself: a steep decay early in a chunk does
not blur the mild ones after it), never as a difference of running sums. Each segment sum is a linear over the
token axis with a constant 0/1 matrix (sums of terms times 1 and 0s: the same sums in another order):

- inside each 16-token sub-chunk the pairwise exponents ``seg[t, s]`` (0 for s >= t) from one ``[16*16, 16]``
  matrix; the scores ``sum_i x_t,i y_s,i exp(seg[t, s, i])`` as one ``bmm`` over (chunk, sub-chunk, t), masked by
  a constant ``[16, 16]`` multiply and placed on the diagonal blocks by a multiply with a 0/1 block identity;
- across sub-chunks ``x_t exp(decay after sub-chunk j up to t)`` for every j (a ``[nb*C, C]`` matrix) against
  ``y_s exp(decay after s to the end of its sub-chunk)`` (``[16, 16]``), one ``bmm``, kept below the diagonal
  blocks by a constant multiply;
- ``k_dec = kb exp(decay after t to the chunk's end)`` (a strictly upper ``[C, C]`` matrix); ``q_dec`` and the
  chunk decay from the prefix sums as in the bounded form.

Every exponent is <= 0 (log decays are <= 0), so no factor overflows and no clamp is needed before the masks:
a masked-out term is bounded by the same ``|x_t| |y_s|`` as a kept one.

One buffer per use: a constant that feeds a linear must not also feed a multiply. XNNPACK packs the linear's
weights, ExecuTorch's delegate then frees the constant's unpacked data, and the multiply reads freed memory: a
program loaded from a file (memory-mapped, as on a device) crashed, one loaded from a buffer did not.

The delta rule's ``(I + M)^-1`` still comes from :func:`seqedge.scan.unit_lower_inverse`, given a constant 16x16
identity (so no ``eye`` is built in the graph); its block slices and its zero blocks stay portable.

The eager model (``seqedge``) is never modified; tests/test_xnnpack_scan.py compares both forms to
:func:`seqedge.scan.chunked_scan`, :func:`seqedge.scan.decayed_scores` and the float64 reference, and runs
lowered programs (a bounded and an unbounded-gate model) loaded from a file.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from seqedge.config import SUB_CHUNK
from seqedge.layers import SequentialAttention
from seqedge.scan import check_chunk_size, check_scan_inputs, padded_inputs, unit_lower_inverse

# b_t - b_mid for t in the mid's own 16-token block is at most 8 decays of at most 5 (g_min >= -5): 40, plus
# one for the rounding of the prefix sums. Clamping the exponent here leaves every kept score as it is.
REF_SPAN = 5.0 * (SUB_CHUNK // 2) + 1.0


def _one_hot_rows(positions: list[int], length: int) -> torch.Tensor:
    """``[len(positions), length]``: row i picks column ``positions[i]`` (``F.linear`` with it selects rows)."""
    out = torch.zeros(len(positions), length)
    out[torch.arange(len(positions)), torch.tensor(positions)] = 1.0
    return out


def _pairs(rows: int, cols: int, keep) -> torch.Tensor:
    """``[rows, cols]`` 0/1 matrix with a 1 where ``keep(row, col)``."""
    r, c = torch.arange(rows)[:, None], torch.arange(cols)[None, :]
    return keep(r, c).float()


def _bounded_consts(C: int) -> dict[str, torch.Tensor]:
    nb = C // SUB_CHUNK
    return {
        "causal": _pairs(C, C, lambda t, s: s <= t),                                       # [C, C] mask
        "strict": _pairs(C, C, lambda t, s: s < t),                                        # [C, C] mask
        "pick_mid": _one_hot_rows([j * SUB_CHUNK + SUB_CHUNK // 2 for j in range(nb)], C),  # [nb, C]
    }


def _segment_consts(C: int) -> dict[str, torch.Tensor]:
    """The unbounded form's 0/1 segment-sum matrices (linears over the token axis) and masks (multiplies)."""
    S, nb = SUB_CHUNK, C // SUB_CHUNK
    row, col = torch.arange(S * S)[:, None], torch.arange(S)[None, :]
    ends = (torch.arange(nb * C) // C) * S + S - 1                                 # end of sub-chunk j, row j*C+t
    t_of = (torch.arange(nb * C) % C)[:, None]
    block = torch.arange(C) // S
    return {
        # seg[t*16+s, r]: s < r <= t, so seg @ g = g_{s+1} + ... + g_t inside one sub-chunk (0 for s >= t)
        "seg_pairs": ((col > row % S) & (col <= row // S)).float(),                    # [256, 16]
        # x side, row j*C+t: the decay after sub-chunk j up to t (0 for t in or before sub-chunk j)
        "seg_after_block": ((torch.arange(C)[None, :] > ends[:, None]) & (torch.arange(C)[None, :] <= t_of)).float(),
        "seg_to_block_end": _pairs(S, S, lambda s, r: r > s),                          # [16, 16]: y side
        "seg_to_chunk_end": _pairs(C, C, lambda t, r: r > t),                          # [C, C]: k_dec
        "tri_causal": _pairs(S, S, lambda t, s: s <= t),                               # [16, 16] masks
        "tri_strict": _pairs(S, S, lambda t, s: s < t),
        "below": (block[None, :, None] > torch.arange(nb)[:, None, None]).float().expand(nb, C, S).clone(),
        "place_diag": torch.eye(nb).reshape(nb, nb, 1, 1),                             # diag block j at rows of j
    }


class StaticMaskScan(nn.Module):
    """:func:`seqedge.scan.chunked_scan` for chunk size C with masks, prefix sums and row picks as constants.

    Same signature (less ``chunk_size`` and ``bounded``: fixed here) and outputs: o ``[B, T, H, dv]`` and the final
    state ``[B, H, dk, dv]``, float32 (float64 for float64 input); any T, the tail padded as chunked_scan pads it.
    ``bounded``: every g >= -5 (the sigmoid gate); False computes ``chunked_scan(..., bounded=False)``.
    """

    def __init__(self, chunk_size: int, bounded: bool = True) -> None:
        super().__init__()
        check_chunk_size(chunk_size)
        C = chunk_size
        self.chunk_size, self.bounded = C, bounded
        consts = {      # one buffer per use: see the module doc on constants shared by a linear and a multiply
            "prefix": _pairs(C, C, lambda t, s: s <= t),            # [C, C]: b = prefix @ g (inclusive sums)
            "pick_last": _one_hot_rows([C - 1], C),                 # [1, C]
            "eye_sub": torch.eye(SUB_CHUNK),                        # (I + M)^-1's identity: no eye in the graph
            **(_bounded_consts(C) if bounded else _segment_consts(C)),
        }
        for name, value in consts.items():
            self.register_buffer(name, value, persistent=False)

    def _const(self, name: str, dtype: torch.dtype) -> torch.Tensor:
        return getattr(self, name).to(dtype)          # float32 buffers: a no-op except for a float64 scan

    def decayed_scores(self, x: torch.Tensor, y: torch.Tensor, b: torch.Tensor, mid: torch.Tensor, *,
                       strict: bool) -> torch.Tensor:
        """:func:`seqedge.scan.decayed_scores` with one reference row per 16-token column block (bounded form).

        x, y, b: ``[L, C, d]``; mid: ``[L, nb, 1, d]``, b at row 16j+8. Returns ``[L, C, C]``.
        """
        C, d = self.chunk_size, int(x.shape[-1])
        nb = C // SUB_CHUNK
        yb, bb = (t.reshape(-1, nb, SUB_CHUNK, d) for t in (y, b))                          # [L, nb, 16, d]
        x_dec = x.unsqueeze(1) * torch.exp(torch.clamp(b.unsqueeze(1) - mid, max=REF_SPAN))  # [L, nb, C, d]
        y_dec = yb * torch.exp(mid - bb)                                                     # [L, nb, 16, d]
        scores = torch.bmm(x_dec.reshape(-1, C, d), y_dec.reshape(-1, SUB_CHUNK, d).transpose(1, 2))  # [L*nb, C, 16]
        scores = scores.reshape(-1, nb, C, SUB_CHUNK).transpose(1, 2).reshape(-1, C, C)    # [L, C, C]
        limit = torch.finfo(x.dtype).max
        return torch.clamp(scores, -limit, limit) * self._const("strict" if strict else "causal", x.dtype)

    def segment_decays(self, g_t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The unbounded form's decay factors from segment sums of g_t ``[L, d, C]`` (token axis last).

        Returns ``pair`` ``[L, nb, 16, 16, d]`` (``exp(g_{s+1} + ... + g_t)`` for t, s in sub-chunk j, 1 for
        s >= t), ``x_exp`` ``[L, nb, C, d]`` (exp of the decay after sub-chunk j up to t) and ``y_exp``
        ``[L, nb, 16, d]`` (exp of the decay after s to the end of its sub-chunk). Every exponent is <= 0.
        """
        C, d, S = self.chunk_size, int(g_t.shape[1]), SUB_CHUNK
        nb = C // S
        g_sub = g_t.reshape(-1, d, nb, S)                                                     # [L, d, nb, 16]
        pair = torch.exp(F.linear(g_sub, self._const("seg_pairs", g_t.dtype)))                # [L, d, nb, 256]
        pair = pair.permute(0, 2, 3, 1).reshape(-1, nb, S, S, d)
        x_exp = torch.exp(F.linear(g_t, self._const("seg_after_block", g_t.dtype)))           # [L, d, nb*C]
        y_exp = torch.exp(F.linear(g_sub, self._const("seg_to_block_end", g_t.dtype)))        # [L, d, nb, 16]
        return pair, x_exp.transpose(1, 2).reshape(-1, nb, C, d), y_exp.permute(0, 2, 3, 1)

    def segment_scores(self, x: torch.Tensor, y: torch.Tensor, decays: tuple[torch.Tensor, ...], *,
                       strict: bool) -> torch.Tensor:
        """:func:`seqedge.scan.decayed_scores` with ``bounded=False``: x, y ``[L, C, d]``, decays from
        :meth:`segment_decays`. Returns ``[L, C, C]``."""
        C, d, S = self.chunk_size, int(x.shape[-1]), SUB_CHUNK
        nb = C // S
        pair, x_exp, y_exp = decays
        # in-sub-chunk: for each row t, sum_i x_t,i (pair[t, s, i] y_s,i) as one bmm over (L, nb, t)
        paired = (pair * y.reshape(-1, nb, 1, S, d)).reshape(-1, S, d)                          # [L*nb*16, 16, d]
        diag = torch.bmm(paired, x.reshape(-1, d, 1)).reshape(-1, nb, S, S)                    # [L, nb, t, s]
        diag = diag * self._const("tri_strict" if strict else "tri_causal", x.dtype)
        placed = (diag.unsqueeze(2) * self._const("place_diag", x.dtype)).reshape(-1, nb, C, S)  # [L, nb, C, 16]
        # across sub-chunks: column block j against every row, kept below the diagonal blocks
        x_dec = x.unsqueeze(1) * x_exp                                                          # [L, nb, C, d]
        y_dec = y.reshape(-1, nb, S, d) * y_exp                                                 # [L, nb, 16, d]
        off = torch.bmm(x_dec.reshape(-1, C, d), y_dec.reshape(-1, S, d).transpose(1, 2)).reshape(-1, nb, C, S)
        scores = off * self._const("below", x.dtype) + placed                                  # [L, nb(j), C, 16]
        return scores.transpose(1, 2).reshape(-1, C, C)

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor, beta: torch.Tensor, *,
                rule: str, scale: float | None = None,
                initial_state: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        # static in exported graphs: only the batch is symbolic
        T, H, dk, dv = (int(n) for n in check_scan_inputs(q, k, v, g, beta, rule, initial_state)[1:])
        scale = dk ** -0.5 if scale is None else scale
        C = self.chunk_size
        q, k, v, g, beta, state, pad = padded_inputs(q, k, v, g, beta, initial_state, C)
        state = state.reshape(-1, dk, dv)                                          # [BH, dk, dv]
        N = (T + pad) // C

        def chunks(x: torch.Tensor) -> torch.Tensor:       # [B, T, H, d] -> [BH, N, C, d]
            d = int(x.shape[-1])
            return x.reshape(-1, N, C, H, d).permute(0, 3, 1, 2, 4).reshape(-1, N, C, d)

        def flat(x: torch.Tensor) -> torch.Tensor:         # [BH, N, C, d] -> [BH*N, C, d]
            return x.reshape(-1, C, int(x.shape[-1]))

        g_t = g.reshape(-1, N, C, H, dk).permute(0, 3, 1, 4, 2).reshape(-1, N, dk, C)   # [BH, N, dk, C]
        b_t = F.linear(g_t, self._const("prefix", g.dtype))                              # inclusive sums
        b_last_t = F.linear(b_t, self._const("pick_last", g.dtype))                      # [BH, N, dk, 1]
        b = b_t.transpose(-1, -2)                                                         # [BH, N, C, dk]
        q, k, v = (chunks(x) for x in (q, k, v))                                          # [BH, N, C, d]
        kb = k * chunks(beta.unsqueeze(-1))
        q = q * scale
        if self.bounded:
            nb = C // SUB_CHUNK
            mid = F.linear(b_t, self._const("pick_mid", g.dtype)).transpose(-1, -2).reshape(-1, nb, 1, dk)

            def scores_of(x, y, strict):
                return self.decayed_scores(flat(x), flat(y), flat(b), mid, strict=strict)
            to_end = b_last_t.reshape(-1, N, 1, dk) - b                                  # a size-1 transpose
        else:
            decays = self.segment_decays(g_t.reshape(-1, dk, C))

            def scores_of(x, y, strict):
                return self.segment_scores(flat(x), flat(y), decays, strict=strict)
            # summed from the end, not b_last - b: see chunked_scan
            to_end = F.linear(g_t, self._const("seg_to_chunk_end", g.dtype)).transpose(-1, -2)
        scores = scores_of(q, kb, False).reshape(-1, N, C, C)
        q_dec = q * torch.exp(b)
        k_dec = kb * torch.exp(to_end)
        chunk_decay = torch.exp(b_last_t)                                          # [BH, N, dk, 1]
        if rule == "delta":
            inv = unit_lower_inverse(scores_of(k, kb, True), self._const("eye_sub", q.dtype))
            inv = inv.reshape(-1, N, C, C)                                          # (I + M)^-1
            u0 = inv @ v
            w = inv @ (k * torch.exp(b))
        else:
            u0, w = v, None

        outs = []
        for n in range(N):                                # [BH, C, d] per chunk: plain batched matmuls
            u = u0[:, n] if w is None else u0[:, n] - torch.bmm(w[:, n], state)
            outs.append(torch.bmm(q_dec[:, n], state) + torch.bmm(scores[:, n], u))   # [BH, C, dv]
            state = chunk_decay[:, n] * state + torch.bmm(k_dec[:, n].transpose(1, 2), u)
        out = outs[0] if N == 1 else torch.cat(outs, dim=1)                       # [BH, N*C, dv]
        out = out.reshape(-1, H, N * C, dv).permute(0, 2, 1, 3)                  # [B, N*C, H, dv]
        return (out[:, :T] if pad else out), state.reshape(-1, H, dk, dv)


class StaticMaskAttention(nn.Module):
    """A :class:`seqedge.layers.SequentialAttention` whose sequence path runs :class:`StaticMaskScan`.

    The mixer's weights and submodules are the original's (``self.attn``); ``step`` is the original's.
    """

    def __init__(self, attn: SequentialAttention) -> None:
        super().__init__()
        self.attn = attn
        self.scan = StaticMaskScan(attn.config.chunk_size, bounded=attn.config.bounded_gates)

    def forward(self, x: torch.Tensor, conv_state: torch.Tensor, scan_state: torch.Tensor):
        """As :meth:`SequentialAttention.forward`: x ``[B, T, D]`` -> (y ``[B, T, D]``, conv tail, scan state)."""
        a = self.attn
        T = int(x.shape[1])                      # static in exported graphs: only the batch stays symbolic
        B = -1 if T else x.shape[0]
        q, k, v, g, beta, conv_state = a._project(x, conv_state, B, T)
        o, scan_state = self.scan(q, k, v, g, beta, rule=a.config.update_rule, scale=a.scale,
                                  initial_state=scan_state)
        return a._output(x, o, v, B, T), conv_state, scan_state

    def step(self, x: torch.Tensor, conv_state: torch.Tensor, scan_state: torch.Tensor):
        return self.attn.step(x, conv_state, scan_state)
