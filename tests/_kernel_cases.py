"""Shared pieces of the kernel tests: trained-like random weights, the odd-sized decoder model, and running a
check script in Triton's interpreter. Importing this imports neither triton nor CUDA."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import torch
from _artifacts import GLA_MIXER

from seqedge.config import MixerParts, SequentialAttentionConfig


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


FAMILY_DIMS = dict(hidden_size=48, num_layers=2, vocab_size=97, gate_rank=5, mlp_multiple_of=16, tie_embeddings=False)
# Mamba2: per-head softplus decay, beta = its step, one B/C group, conv bias, gated RMSNorm, read-out scale 1, no MLP
MAMBA2 = dict(gate="softplus", beta="dt", num_key_heads=1, conv_bias=True, output="gate_norm", scale=1.0, mlp=False)
FAMILIES = {
    # norm groups of 2 heads (32 channels, 16 per head)
    "mamba2 groups=32": dict(update_rule="gated", num_heads=4, head_k_dim=32, head_v_dim=16, conv_kernel=4,
                             mixer=MixerParts(**MAMBA2, out_norm_size=32)),
    # norm groups of half a head
    "mamba2 groups=16": dict(update_rule="gated", num_heads=2, head_k_dim=16, head_v_dim=32, conv_kernel=3,
                             mixer=MixerParts(**MAMBA2, out_norm_size=16)),
    # Gated DeltaNet: 2 value heads per key head, rsqrt L2 norm, sigmoid beta, per-head RMSNorm then SiLU gate
    "gated-deltanet": dict(update_rule="delta", num_heads=4, head_k_dim=16, head_v_dim=32, conv_kernel=4,
                           mixer=MixerParts(gate="softplus", num_key_heads=2, qk_norm="rsqrt", skip=False)),
    # KDA: per-key softplus decay through a low rank, sigmoid low-rank output gate with a bias
    "kda": dict(update_rule="delta", num_heads=2, head_k_dim=32, head_v_dim=16, conv_kernel=4,
                mixer=MixerParts(gate="softplus_key", num_key_heads=1, qk_norm="rsqrt", skip=False,
                                 out_gate_act="sigmoid", out_gate_rank=6)),
    # GLA: logsigmoid gate over a normaliser, no beta, no short conv (the state is the scan matrix only)
    "gla": dict(update_rule="gated", num_heads=2, head_k_dim=32, head_v_dim=16, mixer=MixerParts(**GLA_MIXER)),
}


def family_decoder_config(name: str) -> SequentialAttentionConfig:
    """An imported family's mixer parts (``FAMILIES``) at odd sizes for the fused decoder: dk != dv, gate and
    output-gate ranks and conv tails not powers of two, untied head, vocabulary not a multiple of a tile."""
    return SequentialAttentionConfig(**FAMILY_DIMS, **FAMILIES[name])


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
