"""Real-size Hugging Face model folders with seeded random weights, built from published configs (no download).

Shared by the benchmarks that need a model of a real family's size: ``llama_cpp.py`` and ``real_sizes.py``.
"""

from __future__ import annotations

from pathlib import Path

# mamba2-130m (state-spaces/mamba2-130m) in transformers' Mamba2Config terms; vocab padded to a multiple of 16
MAMBA2_130M = dict(vocab_size=50288, hidden_size=768, num_hidden_layers=24, state_size=128, head_dim=64,
                   num_heads=24, expand=2, n_groups=1, conv_kernel=4, use_bias=False, use_conv_bias=True,
                   layer_norm_epsilon=1e-5, tie_word_embeddings=True, rms_norm=True, chunk_size=256)
# a Gated DeltaNet of the ~340M class (fla's GatedDeltaNetConfig terms): 1024 wide, 21 layers, 4 heads of 256
GATED_DELTANET_340M = dict(hidden_size=1024, num_hidden_layers=21, num_heads=4, head_dim=256, expand_v=1.0,
                           vocab_size=32000, tie_word_embeddings=False)


def make_mamba2_130m(folder: Path, seed: int) -> None:
    """transformers' ``Mamba2ForCausalLM`` with mamba2-130m's config, saved to ``folder`` (kept if present)."""
    import torch
    from transformers import Mamba2Config, Mamba2ForCausalLM

    if (folder / "config.json").is_file():
        return
    torch.manual_seed(seed)
    model = Mamba2ForCausalLM(Mamba2Config(**MAMBA2_130M)).eval()
    model.save_pretrained(folder, safe_serialization=True)


def make_gated_deltanet_340m(folder: Path, seed: int) -> None:
    """fla's ``GatedDeltaNetForCausalLM`` of :data:`GATED_DELTANET_340M`, saved to ``folder`` (kept if present).

    fla's models construct and save on a CPU (only their forward needs CUDA): ``pip install
    flash-linear-attention==0.6.0``.
    """
    import torch

    if (folder / "config.json").is_file():
        return
    import transformers.modeling_utils  # noqa: F401  before fla: fla importing it first can fail half-way
    from fla.models import GatedDeltaNetConfig, GatedDeltaNetForCausalLM

    torch.manual_seed(seed)
    model = GatedDeltaNetForCausalLM(GatedDeltaNetConfig(**GATED_DELTANET_340M)).eval()
    model.save_pretrained(folder, safe_serialization=True)


BUILDERS = {"mamba2-130m": make_mamba2_130m, "gated-deltanet-340m": make_gated_deltanet_340m}
