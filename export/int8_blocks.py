"""Blockwise symmetric int8: the numbers the onnx target packs into MatMulNBits for the ``int8`` scheme.

A MatMul weight ``w [K, N]`` (K inputs, N outputs) is cut along K into blocks of ``block`` weights per output
column (the last block zero-padded). Each block keeps codes ``q`` in -127..127 and one float32 scale
``s = max|w| / 127`` and stands for ``q * s``: ``com.microsoft::MatMulNBits`` with ``bits=8`` and no zero points
(the operator's default zero point, 128, is added to the stored bytes). A block's rounding step is at most half
that of one 7-bit scale per output column (a block's max is at most its column's), and with int8 activations
(``accuracy_level`` 4) ONNX Runtime's MatMulNBits kernels run a one-token step faster than ``MatMulInteger`` on
per-channel int8; a 64-token chunk runs slower (``benchmarks/results/int8_packing.md``).

Example::

    packed, scales = pack(w)                     # w [K, N] float32 -> B [N, kb, 128] uint8, scales [N, kb]
    w_hat = dequantize(packed, scales, w.shape[0])                # [K, N] float32, == rounded(w)
"""

from __future__ import annotations

import numpy as np

from .int4_blockwise import blocks

BLOCK = 128                                   # weights per block along K
LEVEL = 127                                   # codes -127..127: symmetric, so 0 is exact
ZERO_POINT = 128                              # MatMulNBits' implied zero point at 8 bits


def quantize(w: np.ndarray, block: int = BLOCK) -> tuple[np.ndarray, np.ndarray]:
    """``(codes [N, kb, block] int8, scales [N, kb] float32)`` of ``w [K, N]``: round to nearest (half away from
    zero) on ``w / s``; an all-zero block gets scale 0 and codes 0."""
    if w.ndim != 2:
        raise ValueError(f"int8 blocks pack 2-D weights [K, N], got shape {list(w.shape)}")
    wb = blocks(w, block)                       # [N, kb, block], the last block zero-padded
    scale = np.abs(wb).max(-1) / np.float32(LEVEL)
    inv = np.divide(np.float32(1), scale, out=np.zeros_like(scale), where=scale != 0)
    q = np.clip(np.round(wb * inv[..., None]), -LEVEL, LEVEL)
    return q.astype(np.int8), scale.astype(np.float32)


def pack(w: np.ndarray, block: int = BLOCK) -> tuple[np.ndarray, np.ndarray]:
    """MatMulNBits' ``B [N, kb, block]`` uint8 (code + 128) and ``scales [N, kb]`` float32 for ``w [K, N]``."""
    q, scale = quantize(w, block)
    return (q.astype(np.int16) + ZERO_POINT).astype(np.uint8), scale


def dequantize(packed: np.ndarray, scales: np.ndarray, K: int) -> np.ndarray:
    """The weight ``[K, N]`` float32 that MatMulNBits multiplies by, from :func:`pack`'s arrays."""
    N, kb, block = packed.shape
    q = packed.astype(np.float32) - ZERO_POINT
    return (q * np.asarray(scales, np.float32).reshape(N, kb)[..., None]).reshape(N, -1)[:, :K].T.copy()


def rounded(w: np.ndarray, block: int = BLOCK) -> np.ndarray:
    """``w`` as the int8 export stores it (``dequantize(*pack(w), K)``): what its weights alone cost a model."""
    return dequantize(*pack(w, block), w.shape[0])
