"""ClusterDecoder (kernels/cluster_decode.cu) against the float32 model.step and FusedDecoder, on a GPU of sm 9.0+.

Skipped without such a GPU or without nvcc (the kernel is compiled on first use); the packing and the kernel's
walk through it are checked on CPU by tests/test_decode_cluster_cpu.py.
"""

from __future__ import annotations

import shutil

import pytest
import torch

from _kernel_cases import randomize

if not torch.cuda.is_available():
    pytest.skip("no CUDA device: the cluster decoder needs an NVIDIA GPU of sm 9.0+", allow_module_level=True)
if torch.cuda.get_device_capability() < (9, 0):
    pytest.skip(f"thread-block clusters need sm 9.0+, this GPU is sm "
                f"{'.'.join(map(str, torch.cuda.get_device_capability()))}", allow_module_level=True)
if shutil.which("nvcc") is None:
    pytest.skip("nvcc is not on PATH: the cluster decoder's kernel is compiled on first use", allow_module_level=True)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def _config(name: str, rule: str):
    from seqedge.config import SequentialAttentionConfig

    if name == "small":
        return SequentialAttentionConfig.preset("small", update_rule=rule)
    # odd sizes the kernel takes: hidden 200 (rows split unevenly over the CTAs), conv tail of 2, untied head,
    # gate rank 8, 2 heads (mixer columns of one CTA inside one head)
    return SequentialAttentionConfig(hidden_size=200, num_layers=2, num_heads=2, head_k_dim=128, head_v_dim=128,
                                     gate_rank=8, conv_kernel=3, update_rule=rule, tie_embeddings=False,
                                     mlp_multiple_of=8)


@pytest.fixture
def no_tf32():
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


@pytest.mark.parametrize("slots", [3, 2])
@pytest.mark.parametrize("cluster", [16, 8])
@pytest.mark.parametrize("rule", ["gated", "delta"])
@pytest.mark.parametrize("name", ["odd", "small"])
def test_cluster_decoder_matches_model_step(name, rule, cluster, slots, no_tf32):
    """Six tokens from a random state: logits and every state tensor against model.step of a float32 copy of the
    bf16 model (the same rounded weights; the kernel computes in float32) to 1e-4, and against FusedDecoder
    (same math, other summation order) to 1e-4; logits poisoned with NaN before each step; state buffers stay
    at their addresses."""
    from seqedge.kernels.decode_cluster import ClusterDecoder
    from seqedge.kernels.decode_fused import FusedDecoder
    from seqedge.model import SequentialAttentionModel
    from seqedge.state import State

    cfg = _config(name, rule)
    torch.manual_seed(0)
    model = SequentialAttentionModel(cfg)
    randomize(model, seed=1)
    model = model.to("cuda", torch.bfloat16).eval()
    ref_model = SequentialAttentionModel(cfg).cuda().eval()
    ref_model.load_state_dict({k: v.float() for k, v in model.state_dict().items()})
    gen = torch.Generator(device="cuda").manual_seed(cluster + slots)
    state = State([0.5 * torch.randn(t.shape, generator=gen, device="cuda") for t in model.init_state(1).tensors],
                  model.state_specs, model.fingerprint)
    dec = ClusterDecoder(model, cluster=cluster, slots=slots)
    fused = FusedDecoder(model, batch_size=1)
    assert dec.plan.nc == cluster and dec.graph is not None
    dec.reset(state)
    fused.reset(state)
    addrs = [t.data_ptr() for t in dec.states]
    tokens = torch.randint(0, cfg.vocab_size, (6, 1), generator=gen, device="cuda")
    with torch.no_grad():
        for t in range(6):
            dec.logits.fill_(float("nan"))
            ref, state = ref_model.step(tokens[t], state)
            got = dec.step(tokens[t]).clone()
            other = fused.step(tokens[t])
            assert got.shape == (1, cfg.vocab_size) and got.dtype == torch.float32
            assert _rel(got, ref) < 1e-4, (t, _rel(got, ref))
            assert _rel(got, other) < 1e-4, (t, _rel(got, other))
            for i, (a, r, o) in enumerate(zip(dec.states, state.tensors, fused.states)):
                assert _rel(a, r) < 1e-4, (t, i, _rel(a, r))
                assert _rel(a, o) < 1e-4, (t, i, _rel(a, o))
    assert [t.data_ptr() for t in dec.states] == addrs


def test_cluster_decoder_replay_and_refusals():
    from seqedge.config import SequentialAttentionConfig
    from seqedge.kernels.decode_cluster import ClusterDecoder
    from seqedge.model import SequentialAttentionModel

    torch.manual_seed(0)
    model = SequentialAttentionModel(SequentialAttentionConfig.preset("small")).cuda().eval()
    with pytest.raises(ValueError, match="bf16 weights"):
        ClusterDecoder(model)
    model = model.to(torch.bfloat16)
    with pytest.raises(ValueError, match="batch 1"):
        ClusterDecoder(model, batch_size=2)
    tiny = SequentialAttentionModel(SequentialAttentionConfig.preset("tiny")).to("cuda", torch.bfloat16)
    with pytest.raises(ValueError, match="cannot take this model"):
        ClusterDecoder(tiny)
    dec = ClusterDecoder(model)
    tok = torch.tensor([5], device="cuda")
    dec.step(tok)
    saved = dec.state()
    first = dec.step(tok).clone()
    dec.reset(saved)
    assert torch.equal(dec.step(tok), first)          # same state, same token: bit-identical replay
