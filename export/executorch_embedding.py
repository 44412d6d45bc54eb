"""A packed token embedding for ExecuTorch programs: the table in int8 rows or int4 groups, not float32.

torchao packs ``nn.Linear``s only, so an int8 or int4 program kept the embedding table in float32 beside the tied
head's packed copy (Mamba2-130M: 154 MB of a 273 MB int8 program). :class:`PackedEmbedding` stands in for the
model's ``nn.Embedding`` and looks rows up with ExecuTorch's quantized kernels
(``quantized_decomposed::embedding_byte`` / ``embedding_4bit``, portable ops that read one row of the packed table
per token), symmetric like the head's packing:

- 8 bits: one float32 scale per row, ``max |w| / 127``, codes -127..127 (int8 ``[V, D]``): the ONNX int8 blocks
  (:func:`int8_blocks.quantize`) with a whole row as the block;
- 4 bits: one float32 scale per group of ``group`` columns, codes -8..7 stored plus 8, two a byte with the even
  column in the high nibble (uint8 ``[V, D / 2]``, the kernel's layout). The scale is ``max |w| / d`` for the
  ``d`` of :data:`DIVISORS` that gives the group the least squared error (``d = 7`` never clips; a larger ``d``
  clips the largest value to a finer grid for the rest): 17% less error than ``d = 7`` alone on the bundled
  model's table.

:func:`pack_embedding` swaps it in where the head has a packed copy of its own (the table is then read only by the
lookup) and the table is at least :data:`MIN_TABLE_BYTES`, the floor the ONNX packed table uses too: a small
table's bytes do not pay for a portable op.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

from . import int8_blocks
from .packed_table import MIN_TABLE_BYTES

DIVISORS = tuple(6 + 0.25 * i for i in range(17))        # max |w| / d tried per 4-bit group: d in 6..10


def _register_ops() -> None:
    """Define ``quantized_decomposed::embedding_byte`` / ``embedding_4bit`` in torch (with their eager forms), as
    ExecuTorch's own quantization flows do; the runtime's kernels come from ``executorch.kernels.quantized``."""
    import executorch.exir.passes._quant_patterns_and_replacements  # noqa: F401


def _least_error_scales(blocks: torch.Tensor) -> torch.Tensor:
    """Per group of ``blocks [V, G, g]``, the scale ``max |w| / d`` (``d`` in :data:`DIVISORS`) whose codes in
    -8..7 give the least squared error; 0 for an all-zero group."""
    amax = blocks.abs().amax(2)
    safe = torch.where(amax > 0, amax, 1)
    best_scale, best_error = amax / 7, torch.full_like(amax, float("inf"))
    for d in DIVISORS:
        scale = safe / d
        error = ((torch.round(blocks / scale[..., None]).clamp(-8, 7) * scale[..., None] - blocks) ** 2).sum(2)
        better = error < best_error
        best_scale, best_error = torch.where(better, amax / d, best_scale), torch.where(better, error, best_error)
    return best_scale


def _groups_fit(group: int | None, width: int) -> bool:
    """Whether 4-bit groups of ``group`` columns pack a row ``width`` wide: two codes a byte, whole groups."""
    return group is not None and group % 2 == 0 and width % group == 0


class PackedEmbedding(nn.Module):
    """``nn.Embedding``'s lookup over a packed table: ``weight`` holds the codes, ``scales`` their scales."""

    def __init__(self, table: torch.Tensor, bits: int, group: int | None = None) -> None:
        super().__init__()
        _register_ops()
        table = table.detach().float()
        V, D = table.shape
        self.bits = bits
        if bits == 8:
            codes, scales = int8_blocks.quantize(table.numpy().T, block=D)       # [V, 1, D], [V, 1]
            self.register_buffer("weight", torch.from_numpy(codes.reshape(V, D)))
            scales = torch.from_numpy(scales.reshape(V))
            self.qmin, self.qmax = -int8_blocks.LEVEL, int8_blocks.LEVEL
        elif bits == 4:
            if not _groups_fit(group, D):
                raise ValueError(f"4-bit embedding groups must be even and divide the width {D}, got {group}")
            blocks = table.reshape(V, D // group, group)
            scales = _least_error_scales(blocks)
            codes = torch.round(blocks / torch.where(scales > 0, scales, 1)[..., None]).clamp(-8, 7)
            stored = (codes.reshape(V, D) + 8).to(torch.uint8)
            self.register_buffer("weight", (stored[:, 0::2] << 4) | stored[:, 1::2])
            self.qmin, self.qmax = -8, 7
        else:
            raise ValueError(f"bits must be 8 or 4, got {bits}")
        self.register_buffer("scales", scales.float().contiguous())
        self.num_embeddings, self.embedding_dim = V, D

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        op = (torch.ops.quantized_decomposed.embedding_byte if self.bits == 8
              else torch.ops.quantized_decomposed.embedding_4bit)
        return op.default(self.weight, self.scales, None, self.qmin, self.qmax, tokens)

    def dequantized(self) -> torch.Tensor:
        """The float32 table the lookup reads rows of."""
        return self.forward(torch.arange(self.num_embeddings))


def pack_embedding(model: nn.Module, bits: int, group: int | None = None) -> dict[str, Any] | None:
    """Swap ``model.embed`` (an ``nn.Embedding``) for a :class:`PackedEmbedding` of ``bits`` where ``model.head``
    is a module of its own and the table is at least :data:`MIN_TABLE_BYTES`; 4 bits fall back to 8 where
    ``group`` does not divide the width. Returns what was done, or None where the table was kept."""
    table = model.embed.weight
    if model.head is None or table.numel() * 4 < MIN_TABLE_BYTES:
        return None
    if bits == 4 and not _groups_fit(group, table.shape[1]):
        bits = 8
    model.embed = PackedEmbedding(table, bits, group if bits == 4 else None)
    return {"bits": bits, "group": group if bits == 4 else "row",
            "kernel": f"quantized_decomposed::embedding_{'byte' if bits == 8 else '4bit'} (portable)",
            "bytes": int(model.embed.weight.numel() + model.embed.scales.numel() * 4)}
