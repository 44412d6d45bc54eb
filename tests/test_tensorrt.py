"""TensorRT target and runtime: engines build on this CPU-only machine (TensorRT for RTX), the runtime refuses.

The ONNX inputs are written by the onnx target, as the export orchestrator does before tensorrt.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from seqedge.artifact import Manifest, Variant
from seqedge.export.base import ExportContext
from seqedge.export.quantization import QuantizationRecipe
from seqedge.runtimes.base import RuntimeUnavailable

trt_api = pytest.importorskip("seqedge.tensorrt_api")
try:
    API = trt_api.load_api()
except ImportError as err:                                   # pragma: no cover - depends on the machine
    pytest.skip(f"no TensorRT API importable: {err}", allow_module_level=True)


def export_onnx(model, root: Path, scheme: str = "none") -> Variant:
    """The onnx variant TensorRT builds from, written by the onnx target into the same artifact root."""
    from seqedge.export.onnx_target import OnnxTarget

    return OnnxTarget().export(ExportContext(model, root, QuantizationRecipe(scheme)))


@pytest.fixture(scope="module")
def tiny_model():
    from conftest import TINY_DIMS

    from seqedge.config import SequentialAttentionConfig
    from seqedge.model import SequentialAttentionModel

    torch.manual_seed(0)
    return SequentialAttentionModel(SequentialAttentionConfig(**TINY_DIMS)).eval()


@pytest.fixture(scope="module")
def fp32_export(tiny_model, tmp_path_factory):
    from seqedge.export.tensorrt_target import TensorRTTarget

    root = tmp_path_factory.mktemp("trt_fp32")
    onnx = export_onnx(tiny_model, root)
    messages: list[str] = []
    ctx = ExportContext(tiny_model, root, QuantizationRecipe("none"), progress=messages.append, variants=[onnx])
    return root, TensorRTTarget().export(ctx), messages


def test_builds_engines_without_gpu(fp32_export, tiny_model):
    root, variant, messages = fp32_export
    assert variant.name == "tensorrt/fp32"
    assert variant.info["api"] == API.flavor and variant.info["version"] == API.version
    assert variant.info["built_from"] == "onnx/fp32"
    manifest = Manifest(root, {})
    for entry in ("step", "chunk"):
        path = manifest.path(variant, entry)                  # exists and matches its sha256
        assert path.name == f"{entry}.engine" and path.stat().st_size > 10_000
        assert any(f"building {entry} engine" in m for m in messages)
    if API.flavor == trt_api.RTX:
        assert set(variant.info["compute_capabilities"]) >= {"sm80", "sm86", "sm89", "sm120"}


def test_profiles_cover_batch_1_to_8(fp32_export, tiny_model):
    _, variant, _ = fp32_export
    specs = tiny_model.state_specs
    C = tiny_model.config.chunk_size
    for entry in ("step", "chunk"):
        profile = variant.info["profiles"][entry]
        assert sorted(profile) == sorted(["tokens"] + [s.name for s in specs])
        tokens = profile["tokens"]
        assert (tokens["min"], tokens["opt"], tokens["max"]) == (([1], [1], [8]) if entry == "step"
                                                                  else ([1, C], [1, C], [8, C]))
        for s in specs:
            assert profile[s.name]["min"] == list(s.concrete_shape(1))
            assert profile[s.name]["max"] == list(s.concrete_shape(8))


def test_dynamic_batch_needs_the_profile(fp32_export):
    """The ONNX batch dim is dynamic, so an engine only builds with a profile: the one in the engine matters."""
    root, _, _ = fp32_export
    trt = API.trt
    logger = trt.Logger(trt.Logger.ERROR)
    builder = trt.Builder(logger)
    network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
    assert trt.OnnxParser(network, logger).parse_from_file(str(root / "onnx/fp32/step.onnx"))
    assert all(network.get_input(i).shape[0] == -1 for i in range(network.num_inputs))
    assert builder.build_serialized_network(network, builder.create_builder_config()) is None


def test_builds_fp16_engines_from_the_fp16_onnx(tiny_model, tmp_path):
    from seqedge.export.tensorrt_target import TensorRTTarget

    onnx = export_onnx(tiny_model, tmp_path, "fp16")
    onnx_lib = pytest.importorskip("onnx")
    graph = onnx_lib.load(str(tmp_path / onnx.files["step"]["path"])).graph
    assert any(t.data_type == onnx_lib.TensorProto.FLOAT16 for t in graph.initializer)     # really an fp16 graph
    variant = TensorRTTarget().export(ExportContext(tiny_model, tmp_path, QuantizationRecipe("fp16"), variants=[onnx]))
    assert variant.name == "tensorrt/fp16" and variant.info["built_from"] == "onnx/fp16"
    assert variant.info["precision"].startswith("fp16")
    for entry in ("step", "chunk"):
        assert (tmp_path / variant.files[entry]["path"]).stat().st_size > 10_000


@pytest.mark.parametrize("scheme", ["int8", "int4"])
def test_rejects_integer_quantization(tiny_model, tmp_path, scheme):
    from seqedge.export.tensorrt_target import TensorRTTarget

    with pytest.raises(ValueError, match=r"supports quantization \['none', 'fp16'\]"):
        TensorRTTarget().export(ExportContext(tiny_model, tmp_path, QuantizationRecipe(scheme)))


def test_needs_the_onnx_variant(tiny_model, tmp_path):
    from seqedge.export.tensorrt_target import TensorRTTarget

    with pytest.raises(ValueError, match="builds from the onnx/fp32 variant"):
        TensorRTTarget().export(ExportContext(tiny_model, tmp_path, QuantizationRecipe("none")))


def test_runtime_refuses_here_and_says_why():
    from seqedge.runtimes import cuda_driver
    from seqedge.runtimes.tensorrt_runtime import TensorRTRuntime

    try:
        gpu = cuda_driver.probe()
    except cuda_driver.CudaError:
        gpu = None
    if gpu is not None:
        pytest.skip(f"this machine has a GPU ({gpu.name}, {gpu.sm}); the refusal is for machines without one")
    with pytest.raises(RuntimeUnavailable, match="needs an NVIDIA GPU and none is usable here") as err:
        TensorRTRuntime().check_available()
    print(err.value)
    assert "runtime='onnxruntime'" in str(err.value)
    if API.flavor == trt_api.RTX:
        assert "compute capability 8.0, 8.6, 8.9 or 12.x" in str(err.value)


def test_runtime_refuses_hopper_for_rtx_engines(monkeypatch):
    """TensorRT-RTX engines do not run on sm90 (e.g. H100): the probe result decides, the message says so."""
    from seqedge.runtimes import cuda_driver, tensorrt_runtime

    monkeypatch.setattr(cuda_driver, "probe", lambda index=0: cuda_driver.GpuInfo(0, "NVIDIA H100", (9, 0)))
    with pytest.raises(RuntimeUnavailable, match="compute capability 9.0, which TensorRT for RTX"):
        tensorrt_runtime.gpu_or_reason(trt_api.RTX)
    monkeypatch.setattr(cuda_driver, "probe", lambda index=0: cuda_driver.GpuInfo(0, "RTX 4090", (8, 9)))
    assert tensorrt_runtime.gpu_or_reason(trt_api.RTX).sm == "sm89"


def test_builds_engines_for_a_scan_only_state(tmp_path):
    """A mixer without a short conv (GLA's parts): the engines' state I/O is the scan matrices only."""
    from _artifacts import GLA_MIXER, TINY_DIMS, build_model

    from seqedge.config import SequentialAttentionConfig
    from seqedge.export.tensorrt_target import TensorRTTarget

    model = build_model(SequentialAttentionConfig(**{**TINY_DIMS, "num_layers": 1}, mixer=GLA_MIXER))
    assert [s.kind for s in model.state_specs] == ["scan"]
    onnx = export_onnx(model, tmp_path)
    variant = TensorRTTarget().export(ExportContext(model, tmp_path, QuantizationRecipe("none"), variants=[onnx]))
    for entry in ("step", "chunk"):
        assert Manifest(tmp_path, {}).path(variant, entry).stat().st_size > 10_000
