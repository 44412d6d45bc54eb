"""How many threads a CPU runtime uses for one step: chosen from the model's size, overridable per session.
(ONNX Runtime's chunk session, a chunk of steps' work at once, keeps the runtime's default unless a count is asked
for; ExecuTorch's one XNNPACK pool serves both methods.)

A fused step of a small model (ONNX Runtime's ``onnx-ort`` graphs, ExecuTorch's XNNPACK program) is a hundred
or so tiny kernels: splitting each over threads buys little against the wake-ups and hand-offs (for the bundled
4 MFLOP model one thread is as fast as two or faster, benchmarks/results/step_overhead.md), and on a machine
shared with other work a second busy thread slows the first. Past :data:`SINGLE_THREAD_FLOPS` per token the
matrix products are large enough to share, and the runtime's own default (one thread per core) is kept. The
portable ONNX graphs keep that default at every size: their step computes the scan as matrix products over the
state, which two threads run faster even for the bundled model (same file).
"""

from __future__ import annotations

from seqedge.config import SequentialAttentionConfig

SINGLE_THREAD_FLOPS = 32e6      # per-token FLOPs below which one thread runs a step faster


def step_flops(config: SequentialAttentionConfig) -> int:
    """FLOPs of one token's step, batch 1: 2 per weight of every matrix product (the tied head included, the
    embedding lookup not), plus the scan's state update and read-out (about 4 per state element)."""
    c = config
    d, r = c.hidden_size, c.gate_rank
    attn = d * c.conv_channels + d * r + r * c.key_size + d * c.num_heads + 2 * d * c.value_size
    mlp = 3 * d * c.mlp_hidden_size
    head = d * c.vocab_size
    scan = c.num_heads * c.head_k_dim * c.head_v_dim
    return int(2 * (c.num_layers * (attn + mlp) + head) + 4 * c.num_layers * scan)


def default_threads(config: SequentialAttentionConfig) -> int | None:
    """1 for models whose step is below :data:`SINGLE_THREAD_FLOPS`, else None (the runtime's default)."""
    return 1 if step_flops(config) < SINGLE_THREAD_FLOPS else None


def check_threads(threads: object) -> int | None:
    """``threads`` as given to a runtime's ``open``: None (chosen by model size) or a positive integer."""
    if threads is None:
        return None
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ValueError(f"threads must be a positive integer (or None: chosen from the model's size), got "
                         f"{threads!r}")
    return threads
