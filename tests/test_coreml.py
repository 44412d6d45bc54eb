"""Core ML target and runtime: on Linux, export and check the package's spec; predict runs only on macOS 15+.

Conversion takes seconds (coremltools validates the whole program after each of ~100 passes), so the model here
has one layer and each scheme is exported once per module.
"""

from __future__ import annotations

import platform
import warnings

import numpy as np
import pytest
import torch

from seqedge.artifact import Manifest
from seqedge.export.base import ExportContext
from seqedge.export.quantization import QuantizationRecipe
from seqedge.runtimes.base import RuntimeUnavailable

ct = pytest.importorskip("coremltools", reason="coremltools is not installed (pip install 'coremltools==9.0')")
from coremltools.proto import MIL_pb2  # noqa: E402

FUNCTIONS = ("step", "chunk")


@pytest.fixture(scope="module")
def model():
    from conftest import TINY_DIMS

    from seqedge.config import SequentialAttentionConfig
    from seqedge.model import SequentialAttentionModel

    torch.manual_seed(0)
    return SequentialAttentionModel(SequentialAttentionConfig(**{**TINY_DIMS, "num_layers": 1})).eval()


# "int4": the recipe's default int4 policy (the MLP); "int4-all": every weight matrix (int4_modules=("*",))
RECIPES = {"none": QuantizationRecipe("none"), "int4": QuantizationRecipe("int4"),
           "int4-all": QuantizationRecipe("int4", int4_modules=("*",))}


@pytest.fixture(scope="module", params=list(RECIPES))
def exported(request, model, tmp_path_factory):
    from seqedge.export.coreml_target import CoreMLTarget

    root = tmp_path_factory.mktemp(f"coreml_{request.param}")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        variant = CoreMLTarget().export(ExportContext(model, root, RECIPES[request.param]))
    spec = ct.utils.load_spec(str(root / variant.info["package"]))
    return request.param, root, variant, spec, [str(w.message) for w in caught]


def _features(features):
    return {f.name: (list(f.type.multiArrayType.shape), f.type.multiArrayType.dataType) for f in features}


def test_one_package_with_step_and_chunk(exported):
    _, _, variant, spec, _ = exported
    assert spec.specificationVersion >= 9                   # iOS 18 / macOS 15
    assert [f.name for f in spec.description.functions] == list(FUNCTIONS)
    assert spec.description.defaultFunctionName == "step"
    assert sorted(spec.mlProgram.functions) == sorted(FUNCTIONS)
    assert variant.info["package"].endswith("model.mlpackage")


def test_inputs_outputs_and_state_names_and_shapes(exported, model):
    _, _, variant, spec, _ = exported
    f32 = ct.proto.FeatureTypes_pb2.ArrayFeatureType.FLOAT32
    i32 = ct.proto.FeatureTypes_pb2.ArrayFeatureType.INT32
    specs, C, V = model.state_specs, model.config.chunk_size, model.config.vocab_size
    names = variant.info["feature_names"]
    for function in spec.description.functions:
        tokens = [1] if function.name == "step" else [1, C]
        logits = [1, V] if function.name == "step" else [1, C, V]
        want_in = {"tokens": (tokens, i32), **{names[s.name]: (list(s.concrete_shape(1)), f32) for s in specs}}
        want_out = {"logits": (logits, f32),
                    **{names[f"new_{s.name}"]: (list(s.concrete_shape(1)), f32) for s in specs}}
        assert _features(function.input) == want_in
        assert _features(function.output) == want_out
    assert names["state.1"] == "state_1" and names["new_state.1"] == "new_state_1"


def test_scan_only_state_converts(tmp_path):
    """A mixer without a short conv (GLA's parts): both functions' state I/O is the scan matrices only."""
    from _artifacts import GLA_MIXER, TINY_DIMS, build_model

    from seqedge.config import SequentialAttentionConfig
    from seqedge.export.coreml_target import CoreMLTarget

    model = build_model(SequentialAttentionConfig(**{**TINY_DIMS, "num_layers": 1}, mixer=GLA_MIXER))
    variant = CoreMLTarget().export(ExportContext(model, tmp_path, QuantizationRecipe("none")))
    spec = ct.utils.load_spec(str(tmp_path / variant.info["package"]))
    scan = list(model.state_specs[0].concrete_shape(1))
    for function in spec.description.functions:
        states = {k: v[0] for k, v in _features(function.input).items() if k != "tokens"}
        assert states == {"state_0": scan}


def test_int8_with_a_zero_conv_bias_converts(tmp_path):
    """Core ML shares equal constants between ops: a zero conv bias (a random Mamba2's) and a bias-free linear's
    zero bias became one constant with two compression configs, which coremltools refuses."""
    import torch
    from _artifacts import TINY_DIMS, build_model

    from seqedge.config import MixerParts, SequentialAttentionConfig
    from seqedge.export.coreml_target import CoreMLTarget

    parts = MixerParts(gate="softplus", beta="dt", num_key_heads=1, conv_bias=True, output="gate_norm",
                       out_norm_size=128, scale=1.0, mlp=False)
    dims = {**TINY_DIMS, "hidden_size": 64, "num_heads": 8, "head_k_dim": 16, "head_v_dim": 16}
    model = build_model(SequentialAttentionConfig(**dims, mixer=parts))
    with torch.no_grad():
        for block in model.blocks:
            block.attn.conv.bias.zero_()
    variant = CoreMLTarget().export(ExportContext(model, tmp_path, QuantizationRecipe("int8")))
    assert variant.info["weight_dtypes"].get("INT8", 0) >= 3


def _stored_weight_dtypes(spec, function):
    """Data types of every weight stored in a function: plain consts of rank >= 2, and constexpr data."""
    fn = spec.mlProgram.functions[function]
    found = []
    for op in fn.block_specializations[fn.opset].operations:
        if op.type == "const":
            t = op.attributes["val"].type.tensorType
            if t.rank >= 2:
                found.append(MIL_pb2.DataType.Name(t.dataType))
        elif op.type.startswith("constexpr"):
            found.append(MIL_pb2.DataType.Name(op.inputs["data"].arguments[0].value.type.tensorType.dataType))
    return found


def test_weights_are_stored_as_the_scheme_says(exported):
    scheme, _, variant, spec, caught = exported
    for function in FUNCTIONS:
        # BOOL constants are the chunked scan's causal masks, not weights
        dtypes = [d for d in _stored_weight_dtypes(spec, function) if d != "BOOL"]
        if scheme == "none":
            assert set(dtypes) == {"FLOAT32"}
        elif scheme == "int4":
            assert dtypes.count("INT4") == 2                     # the MLP's two matrices, nothing else
            assert "FLOAT32" not in dtypes
        else:
            assert dtypes.count("INT4") >= 4                     # embedding and the attention/MLP matrices
            assert "FLOAT32" not in dtypes
    assert variant.info["compute_precision"] == ("float32" if scheme == "none" else "float16")
    if scheme == "int4":
        assert variant.info["weight_dtypes"]["INT4"] == 2
        assert variant.info["int4"]["quantized_modules"] == ["blocks.0.mlp.down", "blocks.0.mlp.gate_up"]
        assert variant.info["int4"]["float16_modules"] == sorted(
            [f"blocks.0.attn.{m}" for m in ("qkv", "gate_down", "gate_up", "beta", "out_gate", "out_proj")]
            + ["embed"])
        # the kept matrices are float16 by the policy, not a failure to compress: no warning
        assert variant.info["uncompressed_weights"] == []
        assert not any("uncompressed" in m for m in caught)
    if scheme == "int4-all":
        assert variant.info["weight_dtypes"]["INT4"] >= 4
        assert "embed" in variant.info["int4"]["quantized_modules"]
        # tiny layers narrower than group_size=32 cannot be blocked: export must say which stayed fp16
        assert variant.info["uncompressed_weights"]
        assert any("left" in m and "uncompressed" in m for m in caught)


def test_weights_are_shared_between_functions(exported, model):
    scheme, root, variant, _, _ = exported
    if scheme != "none":
        pytest.skip("checked on the float32 export, where the weight file size is exactly predictable")
    weights = root / variant.info["package"] / "Data/com.apple.CoreML/weights/weight.bin"
    one_copy = 4 * model.num_parameters()
    assert one_copy <= weights.stat().st_size < 1.5 * one_copy    # one copy for both functions, not two


def test_files_are_hashed_and_neural_engine_notes_recorded(exported):
    _, root, variant, _, caught = exported
    manifest = Manifest(root, {})
    paths = [manifest.path(variant, role) for role in variant.files]
    assert any(p.name == "weight.bin" for p in paths) and any(p.name == "model.mlmodel" for p in paths)
    assert variant.info["neural_engine_notes"]                     # tiny dims (16, 8, 3) are not multiples of 32
    assert any("Neural-Engine friendly" in m for m in caught)
    assert variant.info["batch_sizes"] == [1]


@pytest.mark.skipif(platform.system() == "Darwin", reason="checks the refusal off macOS")
def test_runtime_refuses_off_macos():
    from seqedge.runtimes.coreml_runtime import CoreMLRuntime

    with pytest.raises(RuntimeUnavailable, match=r"needs macOS 15\+ \(or iOS 18.*\) and Core ML") as err:
        CoreMLRuntime().check_available()
    print(err.value)


@pytest.mark.skipif(platform.system() != "Darwin", reason="Core ML predicts only on macOS 15+")
def test_predict_matches_torch_on_macos(exported, model):  # pragma: no cover - runs on macOS only
    from seqedge.runtimes.coreml_runtime import CoreMLRuntime

    scheme, root, variant, _, _ = exported
    manifest = Manifest(root, {"state": [s.to_dict() for s in model.state_specs]})
    backend = CoreMLRuntime().open(manifest, variant, compute_units="CPU_ONLY")
    gen = torch.Generator().manual_seed(0)
    C = model.config.chunk_size
    tokens = torch.randint(0, 256, (1, C + 1), generator=gen)
    with torch.no_grad():
        want, _ = model(tokens)
    state = [np.zeros(s.concrete_shape(1), np.float32) for s in model.state_specs]
    chunk_logits, state = backend.run("chunk", tokens[:, :C].numpy(), state)
    step_logits, state = backend.run("step", tokens[:, C].numpy(), state)
    got = np.concatenate([chunk_logits, step_logits[:, None]], axis=1)
    tol = 1e-4 if scheme == "none" else 0.5
    assert np.abs(got - want.numpy()).max() < tol
