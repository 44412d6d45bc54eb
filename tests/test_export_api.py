"""export_model: manifest contents, atomic writes, overwrite rules, target planning ("all", tensorrt -> onnx)."""

from __future__ import annotations

import sys

import pytest
from _artifacts import onnx_artifact, tiny_model

from seqedge.artifact import ArtifactError, Variant, file_record, read_manifest, sha256_file
from seqedge.evaluate.export_check import export_verified
from seqedge.export import api
from seqedge.export.onnx_target import OnnxTarget


def test_manifest_fields(tmp_path_factory):
    path = onnx_artifact(tmp_path_factory, "gated")
    m = read_manifest(path)
    d = m.data
    assert d["format"] == "seqedge-artifact" and d["format_version"] == 1 and d["seqedge_version"]
    assert m.config.update_rule == "gated" and m.fingerprint == tiny_model("gated").fingerprint
    assert d["tokenizer"]["vocab_size"] == 259 and d["chunk_size"] == 16
    assert [s.name for s in m.state_specs] == ["state.0", "state.1", "state.2", "state.3"]
    assert all(s.shape[0] == "batch" and s.dtype == "float32" for s in m.state_specs)
    step = d["entry_points"]["step"]
    assert [i["name"] for i in step["inputs"]] == ["tokens", "state.0", "state.1", "state.2", "state.3"]
    assert [o["name"] for o in step["outputs"]] == ["logits"] + [f"new_state.{i}" for i in range(4)]
    assert d["entry_points"]["chunk"]["inputs"][0]["shape"] == ["batch", 16]
    assert [q["scheme"] for q in d["quantization"]] == ["none", "fp16", "int8", "int4"]
    assert sorted(v.name for v in m.variants) == ["onnx/fp16", "onnx/fp32", "onnx/int4", "onnx/int8", "torch/fp32"]
    for v in m.variants:
        for record in v.files.values():
            f = path / record["path"]
            assert sha256_file(f) == record["sha256"] and f.stat().st_size == record["bytes"]
    for name in ("torch/fp32", "onnx/fp32", "onnx/fp16", "onnx/int8", "onnx/int4"):
        parity = d["parity"][name]
        assert parity["passed"] and parity["tokens"] == 2 * 16 + 16 and parity["prefill"] == 32
    assert d["parity"]["onnx/fp32"]["max_abs"] <= 1e-4
    assert d["skipped"] == []


def _leftovers(parent, name):
    return sorted(p.name for p in parent.iterdir() if p.name.startswith(f".{name}"))


@pytest.mark.parametrize("error", [RuntimeError("boom"), KeyboardInterrupt()])
def test_interrupted_export_leaves_nothing(tmp_path, monkeypatch, error):
    calls = []

    def failing_export(self, ctx):
        calls.append(ctx.quantization.scheme)
        if ctx.quantization.scheme == "int8":        # fp32 already written into the temp dir
            (ctx.target_dir("onnx") / "step.onnx").write_bytes(b"half")
            raise error
        return real_export(self, ctx)

    real_export = OnnxTarget.export
    monkeypatch.setattr(OnnxTarget, "export", failing_export)
    out = tmp_path / "art"
    with pytest.raises(type(error)):
        export_verified(tiny_model("gated"), out, ["onnx"], ["none", "int8"], progress=False)
    assert calls == ["none", "int8"]
    assert not out.exists() and _leftovers(tmp_path, "art") == []


def test_failed_export_keeps_the_old_artifact(tmp_path, monkeypatch):
    out = tmp_path / "art"
    first = export_verified(tiny_model("gated"), out, [], progress=False)
    monkeypatch.setattr(OnnxTarget, "export", lambda self, ctx: (_ for _ in ()).throw(RuntimeError("boom")))
    with pytest.raises(RuntimeError):
        export_verified(tiny_model("delta"), out, ["onnx"], progress=False, overwrite=True)
    assert read_manifest(out).fingerprint == first.fingerprint and _leftovers(tmp_path, "art") == []


def test_overwrite_rules(tmp_path):
    out = tmp_path / "art"
    export_verified(tiny_model("gated"), out, [], progress=False)
    with pytest.raises(ArtifactError, match="--overwrite"):
        export_verified(tiny_model("delta"), out, [], progress=False)
    replaced = export_verified(tiny_model("delta"), out, [], progress=False, overwrite=True)
    assert replaced.config.update_rule == "delta" and _leftovers(tmp_path, "art") == []
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(ArtifactError, match="not a seqedge artifact"):
        export_verified(tiny_model("gated"), foreign, [], progress=False, overwrite=True)
    assert (foreign / "notes.txt").read_text() == "keep me"


class FakeTensorRT:
    """Stands in for the TensorRT target: checks that the onnx variant of this export already exists."""

    name, install_hint, schemes = "tensorrt", "pip install tensorrt", ("none", "fp16")

    def check_available(self):
        pass

    def export(self, ctx):
        onnx = [v for v in ctx.variants if v.target == "onnx" and v.tag == ctx.quantization.tag]
        assert onnx, "tensorrt exported before onnx"
        path = ctx.target_dir("tensorrt") / "engine.plan"
        path.write_bytes(b"engine built from " + onnx[0].files["step"]["sha256"].encode())
        return Variant("tensorrt", ctx.quantization.to_dict(), {"engine": file_record(ctx.root, path)})


def _fake_targets(monkeypatch, available: dict):
    real = api.get_target

    def get_target(name):
        if name in available:
            if available[name] is None:
                return real(name)
            return available[name]()
        raise ImportError(f"{name} is not installed; run: pip install {name}-lib")

    monkeypatch.setattr(api, "get_target", get_target)


def test_tensorrt_pulls_in_onnx_first(tmp_path, monkeypatch):
    _fake_targets(monkeypatch, {"onnx": None, "tensorrt": FakeTensorRT})
    m = export_verified(tiny_model("gated"), tmp_path / "a", ["tensorrt"], progress=False)
    assert [v.name for v in m.variants] == ["torch/fp32", "onnx/fp32", "tensorrt/fp32"]
    assert m.data["parity"]["tensorrt/fp32"]["runtime"] == "tensorrt"


def test_all_skips_what_cannot_run_and_says_why(tmp_path, monkeypatch, capsys):
    _fake_targets(monkeypatch, {"onnx": None, "tensorrt": FakeTensorRT})
    m = export_verified(tiny_model("gated"), tmp_path / "a", "all", ["none", "int8"])
    skipped = {(s["target"], s["quantization"]): s["reason"] for s in m.data["skipped"]}
    assert "pip install executorch-lib" in skipped[("executorch", "*")]
    assert "pip install coreml-lib" in skipped[("coreml", "*")]
    assert "does not support quantize='int8'" in skipped[("tensorrt", "int8")]
    assert sorted(v.name for v in m.variants) == ["onnx/fp32", "onnx/int8", "tensorrt/fp32", "torch/fp32"]
    err = capsys.readouterr().err
    assert "skipping executorch" in err and "parity onnx/int8" in err


def test_explicit_missing_library_names_pip_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(ImportError, match=r"pip install 'seqedge\[onnx\]'"):
        export_verified(tiny_model("gated"), tmp_path / "a", ["onnx"], progress=False)
    assert not (tmp_path / "a").exists()


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="valid targets"):
        export_verified(tiny_model("gated"), tmp_path / "a", ["tflite"], progress=False)
    with pytest.raises(ValueError, match="quantize must be one of"):
        export_verified(tiny_model("gated"), tmp_path / "a", ["onnx"], ["int3"], progress=False)
    assert not (tmp_path / "a").exists() and _leftovers(tmp_path, "a") == []
