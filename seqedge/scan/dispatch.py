"""Which implementation runs the sequence scan. On CPU (and for export) it is the chunked PyTorch form."""

from __future__ import annotations

import torch

from .chunked import chunked_scan


def sequence_scan(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    beta: torch.Tensor,
    *,
    rule: str,
    initial_state: torch.Tensor | None,
    chunk_size: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The scan over a sequence, shapes as in :func:`seqedge.scan.chunked_scan`."""
    return chunked_scan(q, k, v, g, beta, rule=rule, initial_state=initial_state, chunk_size=chunk_size)
