"""Mamba2 import (seqedge/families/mamba2.py, `seqedge import`, `seqedge export -m`) against transformers.

Oracle for everything here: transformers' own ``Mamba2ForCausalLM`` on its CPU torch path (the reference
PyTorch SSD chunk scan and conv, as mamba_ssm/causal_conv1d are not installed), on a tiny random model built
with transformers' classes and written with ``save_pretrained`` to a temp dir (no download). It checks

- the imported model's logits over a sequence fed in several calls (state carried: chunked calls, then steps)
  and its final scan state (transformers' recurrent cache, transposed) to 1e-4 relative, float32;
- the exported ``step`` of onnx, onnx-ort and executorch artifacts (made by the CLI from the HF directory),
  token by token over 256 tokens, to 1e-4 relative;
- top-1 agreement >= 99% of the onnx fp16 and int8 steps on a copy of the imported model trained briefly on a
  low-entropy language (``_families.trained_copy``: on random weights the logits are flat and top-1 measures
  near-ties); the oracle there is the trained copy's float32 torch forward, which the checks above tie to
  transformers;
- refusals: one line naming the config key, exit code 2, nothing written.
"""

from __future__ import annotations

import json
import math

import pytest
import torch

pytest.importorskip("transformers", reason="transformers is not installed (pip install transformers==5.23.0)")

from _families import TOP1_MIN, assert_import_refused, quantized_top1, rel_error, stepped_logits  # noqa: E402

from seqedge.cli.main import main  # noqa: E402
from seqedge.families import UnsupportedModelError, import_hf  # noqa: E402

VOCAB = 300                 # above 256: the export's parity check feeds byte tokens
TOL = 1e-4
CONFIG = dict(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_heads=4, head_dim=16, state_size=16,
              n_groups=2, expand=2, conv_kernel=4, chunk_size=16, tie_word_embeddings=False)


def _hf_model(**overrides):
    from transformers import Mamba2Config, Mamba2ForCausalLM

    torch.manual_seed(0)
    model = Mamba2ForCausalLM(Mamba2Config(**{**CONFIG, **overrides})).eval()
    with torch.no_grad():          # non-trivial norms, D, and steps up to ~2 (decays far below the native g_min)
        for name, p in model.named_parameters():
            if "norm" in name:
                p.uniform_(0.5, 1.5)
            elif name.endswith((".D", "conv1d.bias")):
                p.uniform_(-1.0, 1.0)
            elif name.endswith("dt_bias"):
                p.uniform_(-2.0, 2.0)
    return model


@pytest.fixture(scope="module")
def hf(tmp_path_factory):
    model = _hf_model()
    path = tmp_path_factory.mktemp("mamba2") / "hf"
    model.save_pretrained(path)
    return model, path


def test_import_matches_transformers_with_carried_state(hf):
    source, path = hf
    model = import_hf(path)
    assert model.config.mixer.gate == "softplus" and not model.config.mixer.mlp
    tokens = torch.randint(0, VOCAB, (2, 53), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        out = source(tokens, use_cache=True)
        logits, state = model(tokens[:, :20])                                  # chunked, 20 tokens
        parts = [logits]
        more, state = model(tokens[:, 20:45], state)                           # chunked, state carried
        parts.append(more)
        for t in range(45, 53):                                                # recurrent steps
            step, state = model.step(tokens[:, t], state)
            parts.append(step[:, None])
    assert rel_error(torch.cat(parts, dim=1), out.logits) <= TOL
    for layer in range(model.config.num_layers):
        theirs = out.cache_params.get_recurrent_state(layer, state_idx=0)     # [B, H, P, N]
        assert rel_error(state.tensors[2 * layer + 1], theirs.transpose(-1, -2)) <= TOL


@pytest.fixture(scope="module")
def artifact(hf, tmp_path_factory):
    _, path = hf
    out = tmp_path_factory.mktemp("mamba2-art") / "art"
    assert main(["export", "-m", str(path), "--target", "onnx,onnx-ort,executorch", "--out", str(out),
                 "--quiet"]) == 0
    return out


@pytest.mark.parametrize("runtime", ["onnxruntime", "onnxruntime-fused", "executorch"])
def test_exported_step_matches_transformers_over_256_tokens(hf, artifact, runtime):
    import seqedge

    source, _ = hf
    tokens = torch.randint(0, VOCAB, (1, 256), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        want = source(tokens).logits[0].numpy()
    assert rel_error(stepped_logits(seqedge.load(artifact, runtime), tokens), want) <= TOL


@pytest.fixture(scope="module")
def trained_top1(hf, tmp_path_factory):
    return quantized_top1(hf[1], tmp_path_factory.mktemp("mamba2-q"))


@pytest.mark.parametrize("scheme", ["fp16", "int8", "int4"])
def test_quantized_step_keeps_top1(trained_top1, scheme):
    assert trained_top1[scheme] >= TOP1_MIN[scheme], trained_top1


def test_cli_import_writes_a_checkpoint_with_the_same_logits(hf, tmp_path):
    from seqedge.model import SequentialAttentionModel

    _, path = hf
    assert main(["import", str(path), "-o", str(tmp_path / "ck"), "-q"]) == 0
    loaded = SequentialAttentionModel.load_pretrained(tmp_path / "ck")
    tokens = torch.randint(0, VOCAB, (1, 19))
    with torch.no_grad():
        assert torch.equal(loaded(tokens)[0], import_hf(path)(tokens)[0])


@pytest.mark.parametrize("changes, key", [
    (dict(time_step_limit=[0.0, 10.0]), "time_step_limit"),
    (dict(hidden_act="gelu"), "hidden_act"),
    (dict(use_bias=True), "use_bias"),
    (dict(model_type="jamba"), "model_type"),
])
def test_refused_options_name_the_key_and_write_nothing(hf, tmp_path, capsys, changes, key):
    assert_import_refused(hf[1], tmp_path, capsys, key, **changes)


def test_pickled_weights_are_refused(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "mamba2", **CONFIG}))
    (tmp_path / "pytorch_model.bin").write_bytes(b"not loaded")
    with pytest.raises(UnsupportedModelError, match="pickled.*pytorch_model.bin.*safetensors"):
        import_hf(tmp_path)


def test_infinite_time_step_limit_reads_as_default():
    from seqedge.families.mamba2 import config_from_hf

    config = config_from_hf({"model_type": "mamba2", **CONFIG, "time_step_limit": [0.0, {"__float__": "Infinity"}]})
    assert config.mixer.scale == 1.0 and math.isclose(config.norm_eps, 1e-5)


def test_int4_mlp_on_a_model_without_mlps_is_refused_before_anything_is_written(hf, tmp_path, capsys):
    _, path = hf
    out = tmp_path / "art"
    assert main(["export", "-m", str(path), "--target", "onnx", "--quantize", "fp32,int4-mlp", "-o", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "int4-mlp" in err[0] and "mixer.mlp is False" in err[0], err
    assert not out.exists()


def test_coreml_int4_all_packs_every_linear(hf, tmp_path):
    """Core ML int4-all of an imported Mamba2 packs each layer's projections and the head (its conv step feeds a
    constant into a ``concat``, on which coremltools' own weight table fails; seqedge walks the program instead)."""
    pytest.importorskip("coremltools", reason="coremltools is not installed (pip install coremltools==9.0)")
    _, path = hf
    out = tmp_path / "art"
    assert main(["export", "-m", path.as_posix(), "--target", "coreml", "--quantize", "int4-all", "-o", str(out),
                 "-q"]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    info = next(v["info"] for v in manifest["variants"] if v["target"] == "coreml")
    packed = set(info["int4"]["quantized_modules"])
    for layer in range(CONFIG["num_hidden_layers"]):
        assert {f"blocks.{layer}.attn.qkv", f"blocks.{layer}.attn.out_proj"} <= packed
    # the untied embedding table is a lookup, not a matrix int4 packs: it stays float16 on purpose
    assert info["uncompressed_weights"] == []
    dtypes = info["weight_dtypes"]
    assert dtypes["FLOAT16"] == 1 and dtypes["INT4"] >= 4 * CONFIG["num_hidden_layers"] + 1
