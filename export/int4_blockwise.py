"""Blockwise asymmetric int4 with integer zero points: the numbers the onnx target packs into MatMulNBits.

A MatMul weight ``w [K, N]`` (K inputs, N outputs) is cut along K into blocks of ``group`` weights per output
column (the last block zero-padded). Each block keeps 4-bit codes ``q`` in 0..15, one float32 scale ``s`` and one
integer zero point ``z`` in 0..15, and stands for ``(q - z) * s``; this is ``com.microsoft::MatMulNBits`` with
uint8 zero points, which ONNX Runtime's CPU runs on its fast MLAS kernels (float zero points, as HQQ writes them,
are not: `benchmarks/results/int4_policy.md`).

- :func:`rtn` is onnxruntime's asymmetric round-to-nearest (``DefaultWeightOnlyQuantConfig(is_symmetric=False)``):
  the block's range, widened to include 0, spread over the 16 codes. It is the reference; tests check that
  :func:`pack` of it reproduces onnxruntime's bytes.
- :func:`search` (what the target uses) lowers each block's squared error below :func:`rtn`'s: it tries the range
  shrunk at either end (clipping outliers), keeps the best, then alternates a least-squares scale for the codes
  with +-1 moves of the zero point. Each step keeps a block's error or lowers it, and the first candidate is
  :func:`rtn`'s, so no block ends worse than round-to-nearest. No calibration data.

Example::

    scale, zero = search(w, 32)                  # w [K, N] float32 -> scale, zero [N, K/32]
    packed, scales, zero_points = pack(w, scale, zero, 32)
    w_hat = dequantize(packed, scales, zero_points, w.shape[0])   # [K, N] float32
"""

from __future__ import annotations

import numpy as np

LEVELS = 15                                   # codes 0..15
SHRINK = np.linspace(1.0, 0.6, 9)             # fractions of the block's low/high end tried by :func:`search`
REFINE_STEPS = 10


def blocks(w: np.ndarray, group: int) -> np.ndarray:
    """``w [K, N]`` -> ``[N, ceil(K/group), group]`` float32, the last block zero-padded."""
    K, N = w.shape
    kb = -(-K // group)
    return np.pad(np.asarray(w, np.float32), ((0, kb * group - K), (0, 0))).T.reshape(N, kb, group)


def _round_half_up(x: np.ndarray, *, scratch: bool = False) -> np.ndarray:
    """onnxruntime's rounding of codes and zero points (``roundf`` on the non-negative values that survive).
    ``scratch``: ``x`` is a temporary this may overwrite (the search rounds over a hundred times)."""
    floor = np.floor(x)
    frac = np.subtract(x, floor, out=x if scratch else None)
    floor += frac >= 0.5
    return floor


def codes(wb: np.ndarray, scale: np.ndarray, zero: np.ndarray) -> np.ndarray:
    """Nearest codes ``[N, kb, group]`` (float32, 0..15) of blocks ``wb`` for ``scale``, ``zero [N, kb]``, in
    onnxruntime's arithmetic: float32 ``w * (1/scale) + zero`` rounded half up (``roundf`` on what survives the
    clip at 0); a zero scale gives ``zero``."""
    scale = np.asarray(scale, np.float32)
    inv = np.divide(np.float32(1), scale, out=np.zeros_like(scale), where=scale != 0)
    x = wb * inv[..., None]
    x += np.asarray(zero, np.float32)[..., None]
    q = _round_half_up(x, scratch=True)
    return np.clip(q, 0, LEVELS, out=q)


def block_error(wb: np.ndarray, scale: np.ndarray, zero: np.ndarray, valid: np.ndarray | None = None
                ) -> np.ndarray:
    """Squared error ``[N, kb]`` (float64) of each block against what MatMulNBits computes from its nearest codes,
    ``(q - zero) * scale`` in float32; ``valid [group*kb]`` masks out the padding of the last block."""
    scale, zero = np.asarray(scale, np.float32), np.asarray(zero, np.float32)
    diff = (wb - (codes(wb, scale, zero) - zero[..., None]) * scale[..., None]).astype(np.float64)
    if valid is not None:
        diff = diff * valid.reshape(wb.shape[1:])
    return (diff * diff).sum(-1)


def _range_params(lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Scale and integer zero point spreading ``[lo, hi]`` (``lo <= 0 <= hi``, float32) over the codes, in
    onnxruntime's float32 arithmetic; an empty range gives scale 0, zero point 0."""
    scale = (hi - lo) / np.float32(LEVELS)
    zp = np.divide(-lo, scale, out=np.zeros_like(scale), where=scale != 0)
    return scale, np.clip(_round_half_up(zp), 0, LEVELS)


def rtn(w: np.ndarray, group: int) -> tuple[np.ndarray, np.ndarray]:
    """onnxruntime's asymmetric round-to-nearest: ``(scale, zero)``, each ``[N, ceil(K/group)]`` float32 (the zero
    points integer-valued): each block's range, widened to include 0, over the 16 codes."""
    wb = blocks(w, group)
    return _range_params(np.minimum(wb.min(-1), 0), np.maximum(wb.max(-1), 0))


SLAB = 1 << 17                                # weights per slab of columns searched together (see search)


def search(w: np.ndarray, group: int, slab: int = SLAB) -> tuple[np.ndarray, np.ndarray]:
    """``(scale, zero)`` like :func:`rtn`'s, each block's squared error at most :func:`rtn`'s (see module doc).

    Blocks are independent, so the columns go through in slabs of about ``slab`` weights: the search makes over a
    hundred passes over its blocks, and a slab's float64 temporaries stay in the CPU's cache where a whole
    weight's would stream from memory on every pass. The result does not depend on the slab size."""
    wb = blocks(w, group)
    valid = (np.arange(wb.shape[1] * group) < w.shape[0]).reshape(wb.shape[1:])
    step = max(slab // max(wb.shape[1] * group, 1), 1)
    parts = [_search_blocks(wb[i:i + step], valid) for i in range(0, wb.shape[0], step)]
    if not parts:
        return _range_params(np.zeros(wb.shape[:2], np.float32), np.zeros(wb.shape[:2], np.float32))
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def _search_blocks(wb: np.ndarray, valid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """:func:`search` on blocks ``wb [n, kb, group]`` (``valid [kb, group]`` masks the padding)."""
    lo0, hi0 = np.minimum(wb.min(-1), 0), np.maximum(wb.max(-1), 0)
    scale, zero = _range_params(lo0, hi0)                         # rtn: the first best
    best = block_error(wb, scale, zero, valid)

    def keep_better(s: np.ndarray, z: np.ndarray) -> None:
        nonlocal best, scale, zero
        err = block_error(wb, s, z, valid)
        better = err < best
        best, scale, zero = np.where(better, err, best), np.where(better, s, scale), np.where(better, z, zero)

    for a in SHRINK:                                              # clip the low end by a, the high end by b
        for b in SHRINK:
            keep_better(*_range_params(lo0 * np.float32(a), hi0 * np.float32(b)))
    for _ in range(REFINE_STEPS):                                 # least-squares scale for the codes, zero +-1
        d = (codes(wb, scale, zero) - zero[..., None]).astype(np.float64) * valid
        den = (d * d).sum(-1)
        ls = np.divide((wb * d).sum(-1), den, out=np.zeros_like(den), where=den > 0)
        s = np.where(ls > 0, ls, scale).astype(np.float32)
        for z in (zero, np.clip(zero - 1, 0, LEVELS), np.clip(zero + 1, 0, LEVELS)):
            keep_better(s, z)
    return scale, zero


def pack(w: np.ndarray, scale: np.ndarray, zero: np.ndarray, group: int
         ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """MatMulNBits' inputs (bits 4, ``block_size=group``) for ``w [K, N]`` and ``scale``, ``zero [N, kb]``:
    ``B [N, kb, group/2]`` uint8 (two codes a byte, the lower k in the low nibble), ``scales [N, kb]`` float32,
    ``zero_points [N, ceil(kb/2)]`` uint8 (two a byte, the lower block low). Padding: codes past K are 0 and a
    missing zero point nibble is 8, as onnxruntime writes them (for an odd K it puts another value next to the
    last code; no kernel reads it)."""
    K = w.shape[0]
    zero = np.asarray(zero, np.float32)
    q = codes(blocks(w, group), scale, zero).astype(np.uint8)                  # [N, kb, group]
    N, kb, _ = q.shape
    q = q.reshape(N, -1)
    q[:, K:] = 0
    q = q.reshape(N, kb, group)
    z = np.pad(zero.astype(np.uint8), ((0, 0), (0, kb % 2)), constant_values=8)
    return ((q[..., 0::2] | (q[..., 1::2] << 4)).astype(np.uint8), np.asarray(scale, np.float32),
            (z[:, 0::2] | (z[:, 1::2] << 4)).astype(np.uint8))


def dequantize(packed: np.ndarray, scales: np.ndarray, zero_points: np.ndarray, K: int) -> np.ndarray:
    """The weight ``[K, N]`` float32 that MatMulNBits multiplies by, from :func:`pack`'s three arrays."""
    N, kb, _ = packed.shape
    q = np.stack([packed & 15, packed >> 4], -1).reshape(N, kb, -1).astype(np.float32)
    z = np.stack([zero_points & 15, zero_points >> 4], -1).reshape(N, -1)[:, :kb].astype(np.float32)
    s = np.asarray(scales, np.float32).reshape(N, kb)
    return ((q - z[..., None]) * s[..., None]).reshape(N, -1)[:, :K].T.copy()
