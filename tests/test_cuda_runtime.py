"""The cuda runtime: on a GPU against the torch runtime's logits and state (prefill through the chunk kernels,
steps through the fused decoder's CUDA graph, for the native mixer and the imported families' parts; through the
model's own step in a graph where the fused kernels do not compute the model); on a machine without CUDA, the message
saying what would run it, and which decoder a model would step with."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch

from seqedge.config import SequentialAttentionConfig

HAS_CUDA = torch.cuda.is_available()
HAS_TRITON = importlib.util.find_spec("triton") is not None
needs_gpu = pytest.mark.skipif(not (HAS_CUDA and HAS_TRITON),
                               reason="needs a CUDA GPU and triton; on CPU the unavailability message is tested")
_ARTIFACTS: dict[str, object] = {}


def _artifact(tmp_path_factory, rule: str):
    """A torch-only artifact of a small random model (head dims the kernels take: powers of two >= 16); rule
    ``gla``, ``mamba2``, ``kda``, ``gated-deltanet``: imported families' mixer parts (unbounded gates; GLA without a
    short conv), which the fused decoder computes; ``odd-norm``: norm groups the fused kernels do not take
    (mixer.out_norm_size 48 with head_v_dim 32), so the runtime steps with the model's own step in a CUDA graph."""
    if rule not in _ARTIFACTS:
        from _artifacts import GLA_MIXER
        from _kernel_cases import randomize
        from seqedge.export.api import export_model
        from seqedge.model import SequentialAttentionModel

        imported = {   # imported families' parts (tests/test_mixer_parts.py)
            "gla": ("gated", GLA_MIXER),
            "mamba2": ("gated", dict(gate="softplus", beta="dt", num_key_heads=1, conv_bias=True, output="gate_norm",
                                     out_norm_size=32, scale=1.0, mlp=False)),
            "kda": ("delta", dict(gate="softplus_key", num_key_heads=1, qk_norm="rsqrt", skip=False,
                                  out_gate_act="sigmoid", out_gate_rank=4)),
            "gated-deltanet": ("delta", dict(gate="softplus", num_key_heads=1, qk_norm="rsqrt", skip=False)),
            "odd-norm": ("gated", dict(out_norm_size=48)),
        }
        parts = (dict(update_rule=imported[rule][0], mixer=imported[rule][1]) if rule in imported
                 else dict(update_rule=rule))
        heads = 3 if rule == "odd-norm" else 2
        cfg = SequentialAttentionConfig(hidden_size=64, num_layers=2, num_heads=heads, head_k_dim=32, head_v_dim=32,
                                        gate_rank=4, chunk_size=16, mlp_multiple_of=16, **parts)
        model = SequentialAttentionModel(cfg).eval()
        randomize(model, seed=3)
        out = tmp_path_factory.mktemp(f"cuda-{rule}") / "art"
        export_model(model, out, [], progress=False)
        _ARTIFACTS[rule] = out
    return _ARTIFACTS[rule]


@pytest.mark.skipif(HAS_CUDA, reason="checks the message on a machine without CUDA; this one has a GPU")
def test_cuda_runtime_unavailable_says_what_would_run_it(tmp_path_factory):
    from seqedge.runtimes import RuntimeUnavailable, load

    with pytest.raises(RuntimeUnavailable, match="NVIDIA GPU") as err:
        load(_artifact(tmp_path_factory, "gated"), runtime="cuda")
    assert "runtime='torch'" in str(err.value)


FUSED = ("gated", "delta", "gla", "mamba2", "kda", "gated-deltanet")     # the rest step through GraphDecoder


@pytest.mark.parametrize("rule", [*FUSED, "odd-norm"])
def test_cuda_runtime_picks_the_fused_decoder_where_it_computes_the_model(tmp_path_factory, rule):
    """Which decoder the runtime steps with, decided from the config alone (no GPU needed)."""
    from seqedge.kernels.decode_fused_pack import unsupported_part
    from seqedge.runtimes import load
    from seqedge.runtimes.cuda_runtime import CudaBackend

    model = load(_artifact(tmp_path_factory, rule), runtime="torch").backend.model
    backend = CudaBackend(model, torch.device("cpu"))
    assert (backend.fused_refusal is None) == (rule in FUSED), backend.fused_refusal
    assert backend.step_kind().startswith("FusedDecoder" if rule in FUSED else "GraphDecoder")
    if rule not in FUSED:
        assert "mixer.out_norm_size (48)" in backend.fused_refusal and "\n" not in backend.fused_refusal
        assert unsupported_part(model.config) == backend.fused_refusal


@pytest.mark.parametrize("parts, named", [(dict(beta_scale=2.0), "mixer.beta_scale 2.0"),
                                           (dict(out_norm_eps=1e-5), "mixer.out_norm_eps 1e-05")])
def test_fused_decoder_refuses_a_scaled_beta_and_a_second_eps(parts, named):
    """OLMo-hybrid's parts: the kernels take beta as sigmoid and one eps, so such models step through GraphDecoder
    (a second eps equal to norm_eps is no second eps)."""
    from seqedge.config import MixerParts
    from seqedge.kernels.decode_fused_pack import unsupported_part

    config = SequentialAttentionConfig(update_rule="delta", norm_eps=1e-6, mixer=MixerParts(**parts))
    assert named in unsupported_part(config)
    same = SequentialAttentionConfig(update_rule="delta", norm_eps=1e-5, mixer=MixerParts(out_norm_eps=1e-5))
    assert unsupported_part(same) is None


def _rel(x: np.ndarray, ref: np.ndarray) -> float:
    assert not np.isnan(x).any()
    return float(np.linalg.norm(x - ref) / max(np.linalg.norm(ref), 1e-30))


# bfloat16 against the float32 torch runtime measures mostly the bf16 model's own rounding (prefill runs the model in
# bf16), not the kernels'; unbounded per-head decay and the delta rule amplify the rounding of k and beta, so the
# bound sits well above bf16's precision. The float32 cases check the math to 1e-4.
BF16_TOL = {"gated": 0.1, "delta": 0.1, "odd-norm": 0.1}


@pytest.mark.parametrize("rule", [*FUSED, "odd-norm"])
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("batch", [1, 3, 20])
@pytest.mark.gpu
@needs_gpu
def test_cuda_runtime_matches_torch_runtime(tmp_path_factory, rule, dtype, batch):
    """Prefill of an odd length, then steps (fed the previous step's state, and once a state from the torch
    runtime), against the float32 torch runtime on the same tokens; the state stays on the GPU."""
    from seqedge.runtimes import load

    tol = 1e-4 if dtype == "float32" else BF16_TOL.get(rule, 0.3)

    art = _artifact(tmp_path_factory, rule)
    cuda, ref = load(art, runtime="cuda", dtype=dtype), load(art, runtime="torch")
    rng = np.random.default_rng(batch)
    prompt = rng.integers(0, cuda.vocab_size, size=(batch, 37))
    lc, sc = cuda.prefill(prompt, cuda.init_state(batch))
    lr, sr = ref.prefill(prompt, ref.init_state(batch))
    assert all(isinstance(t, torch.Tensor) and t.is_cuda and t.dtype == torch.float32 for t in sc.tensors)
    assert _rel(lc, lr) < tol
    for i in range(6):
        if i == 1:                                       # the decoder the first step built for this batch size
            want = "FusedDecoder" if rule in FUSED else "GraphDecoder"
            assert type(cuda.backend._decoders[batch]).__name__ == want
        tok = rng.integers(0, cuda.vocab_size, size=batch)
        if i == 3:                                       # a state handed over from another runtime
            sc = sr
        lc, sc = cuda.step(tok, sc)
        lr, sr = ref.step(tok, sr)
        assert _rel(lc, lr) < tol, (i, _rel(lc, lr))
    for a, b in zip(sc.numpy(), sr.numpy()):
        assert _rel(a, b) < tol


@pytest.mark.gpu
@needs_gpu
def test_cuda_runtime_generate_and_describe(tmp_path_factory):
    from seqedge.runtimes import load

    art = _artifact(tmp_path_factory, "delta")
    cuda, ref = load(art, runtime="cuda", dtype="float32"), load(art, runtime="torch")
    prompt = list(range(1, 40))
    assert list(cuda.generate(prompt, 8)) == list(ref.generate(prompt, 8))
    state = cuda.init_state(1)
    bad = state.with_tensors([t.clone() for t in state.tensors])
    bad.tensors[1][0, 0, 0, 0] = float("nan")                      # checked on the GPU, named from the host
    with pytest.raises(ValueError, match=f"{bad.specs[1].name} holds NaN"):
        cuda.step([1], bad)
    cuda.step([1], bad, check_finite=False)
    assert "CUDA graph" in cuda.describe()["step"]


@pytest.mark.gpu
@needs_gpu
def test_cuda_prefill_last_logits_only(tmp_path_factory):
    """``logits="last"``: the last row of the full prefill's logits and the same state; no tokens is refused."""
    from seqedge.runtimes import load

    cuda = load(_artifact(tmp_path_factory, "delta"), runtime="cuda", dtype="float32")
    prompt = np.random.default_rng(0).integers(0, cuda.vocab_size, size=(2, 37))
    full, full_state = cuda.prefill(prompt, cuda.init_state(2))
    last, last_state = cuda.prefill(prompt, cuda.init_state(2), logits="last")
    assert last.shape == (2, cuda.vocab_size) and last.base is None         # its own memory, not a view
    np.testing.assert_array_equal(last, full[:, -1])
    for a, b in zip(last_state.numpy(), full_state.numpy()):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="at least one token"):
        cuda.prefill(np.zeros((2, 0), np.int64), cuda.init_state(2), logits="last")
