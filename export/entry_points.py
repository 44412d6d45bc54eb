"""The two entry points of every artifact as plain ``nn.Module``s over flat tensors (what exporters trace).

    step(tokens[B] int64, *state)     -> (logits[B, V] float32, *new_state)
    chunk(tokens[B, C] int64, *state) -> (logits[B, C, V] float32, *new_state)

Both trace the plain PyTorch forms of the scan (recurrent for ``step``, chunked for ``chunk``); GPU custom ops
never appear in an exported graph.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from seqedge.model import SequentialAttentionModel
from seqedge.state import StateSpec

ENTRY_POINTS = ("step", "chunk")


def input_names(specs: list[StateSpec]) -> list[str]:
    return ["tokens"] + [s.name for s in specs]


def output_names(specs: list[StateSpec]) -> list[str]:
    return ["logits"] + [f"new_{s.name}" for s in specs]


class StepEntry(nn.Module):
    """``step``: one token per sequence through the recurrent form."""

    def __init__(self, model: SequentialAttentionModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, tokens: torch.Tensor, *state: torch.Tensor) -> tuple[torch.Tensor, ...]:
        logits, new_state = self.model.forward_tensors(tokens[:, None], list(state), step=True)
        return (logits[:, 0], *new_state)


class ChunkEntry(nn.Module):
    """``chunk``: C tokens per sequence through the chunked form (prefill)."""

    def __init__(self, model: SequentialAttentionModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, tokens: torch.Tensor, *state: torch.Tensor) -> tuple[torch.Tensor, ...]:
        logits, new_state = self.model.forward_tensors(tokens, list(state))
        return (logits, *new_state)


def example_inputs(model: SequentialAttentionModel, entry: str, batch_size: int = 1,
                   chunk_size: int | None = None, seed: int = 0) -> tuple[torch.Tensor, ...]:
    """Random valid inputs for tracing ``entry`` (non-zero state, so no branch is specialised on zeros)."""
    gen = torch.Generator().manual_seed(seed)
    C = chunk_size or model.config.chunk_size
    shape = (batch_size,) if entry == "step" else (batch_size, C)
    tokens = torch.randint(0, min(256, model.config.vocab_size), shape, generator=gen, dtype=torch.int64)
    state = [0.1 * torch.randn(s.concrete_shape(batch_size), generator=gen) for s in model.state_specs]
    return (tokens, *state)


def entry_module(model: SequentialAttentionModel, entry: str) -> nn.Module:
    if entry not in ENTRY_POINTS:
        raise ValueError(f"unknown entry point {entry!r}; valid ones are {list(ENTRY_POINTS)}")
    return (StepEntry if entry == "step" else ChunkEntry)(model).eval()
