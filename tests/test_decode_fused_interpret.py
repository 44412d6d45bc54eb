"""The fused decoder's Triton kernels on CPU, in Triton's interpreter, against ``model.step``; and its guards.

The GPU tests (test_kernels_gpu.py) check the compiled kernels, bf16 and the CUDA graph on a card; this runs the
same kernel source eagerly (``capture=False``) for every entry of FUSED_CONFIGS, both update rules, batch 1, 3, 17
(see decode_fused_interpret_check.py), and the imported families' mixer parts (Mamba2, Gated DeltaNet, KDA, GLA;
decode_fused_families_check.py), on any machine with triton installed. float32 only.
"""

from __future__ import annotations

import importlib.util

import pytest
import torch

from _kernel_cases import run_in_interpreter

HAS_TRITON = importlib.util.find_spec("triton") is not None
needs_triton = pytest.mark.skipif(not HAS_TRITON, reason="needs triton for its CPU interpreter "
                                  "(pip install triton==3.6.0)")


@needs_triton
def test_fused_decoder_in_triton_interpreter():
    proc = run_in_interpreter("decode_fused_interpret_check.py")
    # 2 configs x 2 rules at B=1, 2 runs at B=3, 1 more, 2 at B=17: 9 runs, 5 steps each, logits + 4 state tensors
    assert proc.stdout.count("\n") == 9 * 5 * 5 + 1, "every case must print its checks: none silently skipped"


@needs_triton
def test_fused_decoder_imported_families_in_triton_interpreter():
    proc = run_in_interpreter("decode_fused_families_check.py")
    # 5 families at B=1 and 2 of them at B=17: 7 runs of 3 steps; logits + 4 state tensors (GLA: + 2, no conv)
    assert proc.stdout.count("\n") == 6 * 3 * 5 + 3 * 3 + 1, "every case must print its checks: none silently skipped"
    for family in ("mamba2 groups=32 B=1", "mamba2 groups=32 B=17", "mamba2 groups=16", "gated-deltanet B=1",
                   "gated-deltanet B=17", "kda B=1", "gla B=1"):
        assert f"{family} " in proc.stdout, family


def _tiny_model(**overrides):
    from seqedge.config import SequentialAttentionConfig
    from seqedge.model import SequentialAttentionModel

    dims = dict(hidden_size=32, num_layers=1, num_heads=2, head_k_dim=16, head_v_dim=16)
    return SequentialAttentionModel(SequentialAttentionConfig(**{**dims, **overrides}))


@needs_triton
def test_fused_decoder_guards(monkeypatch):
    from seqedge.kernels.decode_fused import FusedConfig, FusedDecoder

    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(ValueError, match="CUDA device"):
        FusedDecoder(_tiny_model(), batch_size=1)
    with pytest.raises(ValueError, match="Triton's interpreter"):
        FusedDecoder(_tiny_model(), batch_size=1, capture=False)
    with pytest.raises(ValueError, match="head_v_dim to be a power of two"):
        FusedDecoder(_tiny_model(head_v_dim=24), batch_size=1, capture=False)
    from seqedge.config import MixerParts

    with pytest.raises(ValueError, match=r"mixer.out_norm_size \(24\) to divide head_v_dim \(16\)") as err:
        FusedDecoder(_tiny_model(num_heads=3, mixer=MixerParts(out_norm_size=24)), batch_size=1, capture=False)
    assert len(str(err.value).splitlines()) == 1 and "GraphDecoder" in str(err.value)
    with pytest.raises(ValueError, match="float64"):
        FusedDecoder(_tiny_model().to(torch.float64), batch_size=1, capture=False)
    with pytest.raises(ValueError, match="batch_size"):
        FusedDecoder(_tiny_model(), batch_size=0, capture=False)
    monkeypatch.setenv("TRITON_INTERPRET", "1")          # past the device check: PDL asked for where there is none
    for bad in (8, 24):
        with pytest.raises(ValueError, match="batch_tile must be 0"):
            FusedDecoder(_tiny_model(), batch_size=1, capture=False, config=FusedConfig(32, 4096, bad))
    with pytest.raises(ValueError, match="programmatic dependent launch needs"):
        FusedDecoder(_tiny_model(), batch_size=1, capture=False, pdl=True)


@needs_triton
def test_fused_decoder_is_exported_lazily():
    import seqedge.kernels
    from seqedge.kernels.decode_fused import FusedDecoder

    assert seqedge.kernels.FusedDecoder is FusedDecoder
    assert "FusedDecoder" not in seqedge.kernels.__all__     # a star import must not pull in triton
    with pytest.raises(AttributeError):
        seqedge.kernels.NoSuchDecoder
