"""Shared pieces of the kernel tests: trained-like random weights, the odd-sized decoder model, and running a
check script in Triton's interpreter. Importing this imports neither triton nor CUDA."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import torch

from seqedge.config import SequentialAttentionConfig


def randomize(model: torch.nn.Module, seed: int) -> None:
    """Trained-like weights: matrices ~ N(0, 1/fan_in); vectors (norms, skip, biases) shifted by N(0, 0.5), so a
    kernel that forgets a norm weight, the skip or a bias is visibly wrong."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            noise = torch.randn(p.shape, generator=gen)
            if p.dim() == 1:
                p.add_(0.5 * noise)
            else:
                p.copy_(noise / math.sqrt(p.shape[-1]))


def odd_decoder_config(rule: str, conv_kernel: int = 3, tied: bool = False) -> SequentialAttentionConfig:
    """Odd sizes for the fused decoder: dk != dv, gate_rank and conv tail not powers of two, masked GEMV tails."""
    return SequentialAttentionConfig(hidden_size=64, num_layers=2, num_heads=2, head_k_dim=32, head_v_dim=64,
                                     gate_rank=5, conv_kernel=conv_kernel, update_rule=rule, tie_embeddings=tied,
                                     mlp_multiple_of=16)


def run_in_interpreter(script: str) -> subprocess.CompletedProcess:
    """Run ``tests/<script>`` in a fresh process (it switches Triton's interpreter on before triton compiles
    anything; nothing else in the test session may see that); asserts it exited 0 and printed ``ALL OK``."""
    here = Path(__file__).parent
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, str(here / script)], capture_output=True, text=True, env=env,
                          timeout=600, cwd=here)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "ALL OK" in proc.stdout
    return proc
