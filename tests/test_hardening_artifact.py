"""An artifact is untrusted input: overwrite never deletes what is not ours, every path stays inside the
artifact, the manifest is validated against its schema and against the graphs' own signatures."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from _artifacts import tiny_model
from _hardening import (
    built,
    consistent_config_change,
    copy_artifact,
    edit_manifest,
    record_hashes,
)
from seqedge.export.api import export_model

import seqedge
import seqedge.artifact as artifact_module
from seqedge.artifact import ArtifactError, read_manifest, sha256_file
from seqedge.fsutil import foreign_entries, replace_dir


@pytest.fixture
def torch_art(tmp_path_factory, tmp_path) -> Path:
    return copy_artifact(built(tmp_path_factory, ()), tmp_path / "art")


@pytest.fixture
def onnx_art(tmp_path_factory, tmp_path) -> Path:
    return copy_artifact(built(tmp_path_factory, ("onnx",)), tmp_path / "art")


@pytest.fixture
def reads(monkeypatch) -> list[Path]:
    """Every file the artifact layer hashes (the only way it reads a variant's bytes before a runtime)."""
    return record_hashes(monkeypatch)


# overwrite ------------------------------------------------------------------------------------------------
def test_overwrite_refuses_a_foreign_directory_with_a_manifest_json(tmp_path):
    webapp = tmp_path / "webapp"
    (webapp / "src").mkdir(parents=True)
    (webapp / "manifest.json").write_text('{"name": "My PWA"}')
    (webapp / "src" / "app.js").write_text("x")
    with pytest.raises(ArtifactError, match="not a valid seqedge artifact manifest"):
        export_model(tiny_model("gated"), webapp, [], progress=False, overwrite=True)
    assert (webapp / "src" / "app.js").read_text() == "x"
    assert json.loads((webapp / "manifest.json").read_text()) == {"name": "My PWA"}


@pytest.mark.parametrize("foreign", ["notes.txt", "torch/fp32/extra.bin", "mine/"])
def test_overwrite_refuses_an_artifact_holding_user_files(torch_art, foreign):
    target = torch_art / foreign
    if foreign.endswith("/"):
        target.mkdir()
    else:
        target.write_text("user data")
    before = sorted(p.relative_to(torch_art).as_posix() for p in torch_art.rglob("*"))
    with pytest.raises(ArtifactError, match="does not list"):
        export_model(tiny_model("gated"), torch_art, [], progress=False, overwrite=True)
    assert sorted(p.relative_to(torch_art).as_posix() for p in torch_art.rglob("*")) == before


def test_overwrite_replaces_a_clean_artifact_and_leaves_siblings(torch_art):
    sibling = torch_art.parent / "keep.txt"
    sibling.write_text("keep")
    old = read_manifest(torch_art).data["variants"][0]["files"]["weights"]["sha256"]
    export_model(tiny_model("gated", seed=1), torch_art, [], progress=False, overwrite=True)
    assert read_manifest(torch_art).data["variants"][0]["files"]["weights"]["sha256"] != old
    assert sibling.read_text() == "keep"
    assert sorted(p.name for p in torch_art.parent.iterdir()) == ["art", "keep.txt"]   # no temp/old dirs left
    assert sorted(foreign_entries(torch_art, read_manifest(torch_art).files())) == []


def test_every_exported_file_is_listed_in_the_manifest(onnx_art):
    """Otherwise a later --overwrite of the export's own output would be refused."""
    assert foreign_entries(onnx_art, read_manifest(onnx_art).files()) == []


def test_replace_dir_counts_symlinks_as_foreign(tmp_path):
    dst, src = tmp_path / "dst", tmp_path / "src"
    (dst / "a").mkdir(parents=True)
    (dst / "a" / "f").write_text("owned")
    (dst / "a" / "link").symlink_to(tmp_path)
    src.mkdir()
    with pytest.raises(FileExistsError, match="a/link"):
        replace_dir(src, dst, ["a/f"])
    assert (dst / "a" / "f").exists() and src.exists()


# paths ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("bad", ["../outside.bin", "/etc/hostname", "torch/../../outside.bin", "./torch/x",
                                 "torch//fp32/model.safetensors", "torch\\fp32\\model.safetensors", ""])
def test_manifest_paths_must_be_relative_and_normalised(torch_art, reads, bad):
    def edit(data):
        data["variants"][0]["files"]["weights"]["path"] = bad
    edit_manifest(torch_art, edit)
    with pytest.raises(ArtifactError, match="path"):
        seqedge.load(torch_art, "torch")
    assert reads == []


def _outside_copy(root: Path, rel: str) -> Path:
    """A byte-identical copy of ``root/rel`` outside the artifact (so only confinement can refuse it)."""
    outside = root.parent / "outside"
    outside.mkdir(exist_ok=True)
    copy = outside / Path(rel).name
    copy.write_bytes((root / rel).read_bytes())
    return copy


def test_a_file_symlinked_out_of_the_artifact_is_refused_before_reading(torch_art, reads):
    rel = read_manifest(torch_art).variant("torch").files["weights"]["path"]
    copy = _outside_copy(torch_art, rel)
    (torch_art / rel).unlink()
    (torch_art / rel).symlink_to(copy)
    with pytest.raises(ArtifactError, match="outside the artifact"):
        seqedge.load(torch_art, "torch")
    assert all(p.is_relative_to(torch_art.resolve()) for p in reads)


def test_a_variant_folder_symlinked_out_of_the_artifact_is_refused(torch_art, reads):
    folder = torch_art / "torch" / "fp32"
    outside = torch_art.parent / "elsewhere"
    folder.rename(outside)
    folder.symlink_to(outside, target_is_directory=True)
    with pytest.raises(ArtifactError, match="outside the artifact"):
        read_manifest(torch_art)
    assert reads == []


def test_a_symlink_inside_the_artifact_is_allowed(torch_art):
    rel = read_manifest(torch_art).variant("torch").files["weights"]["path"]
    (torch_art / "blobs").mkdir()
    os.replace(torch_art / rel, torch_art / "blobs" / "w")
    (torch_art / rel).symlink_to(torch_art / "blobs" / "w")
    manifest = read_manifest(torch_art)
    assert manifest.path(manifest.variant("torch"), "weights").is_relative_to(torch_art.resolve())


def test_hashing_stops_at_the_recorded_size(tmp_path):
    path = tmp_path / "big"
    path.write_bytes(b"x" * (3 << 20))
    with pytest.raises(ArtifactError, match="larger than the 1000 bytes"):
        sha256_file(path, 1000)
    assert sha256_file(path, 3 << 20) == sha256_file(path)


def test_a_file_of_another_size_is_refused_before_hashing(torch_art, reads):
    rel = read_manifest(torch_art).variant("torch").files["weights"]["path"]
    with open(torch_art / rel, "ab") as f:
        f.write(b"\0" * 4096)
    with pytest.raises(ArtifactError, match="bytes"):
        seqedge.load(torch_art, "torch")
    assert not any(p.name == Path(rel).name for p in reads)


# schema ---------------------------------------------------------------------------------------------------
def _set(path: str, value):
    def edit(data):
        *parents, last = path.split(".")
        node = data
        for key in parents:
            node = node[int(key)] if isinstance(node, list) else node[key]
        if value is KeyError:
            del node[last]
        elif isinstance(node, list):
            node[int(last)] = value
        else:
            node[last] = value
    return edit


@pytest.mark.parametrize("field,value,message", [
    ("chunk_size", -64, "chunk_size.*positive multiple of 16"),
    ("chunk_size", 0, "chunk_size.*positive multiple of 16"),
    ("chunk_size", 24, "chunk_size.*positive multiple of 16"),
    ("chunk_size", 32, "chunk_size.*differs from the model config"),
    ("chunk_size", "16", "chunk_size"),
    ("chunk_size", True, "chunk_size"),
    ("chunk_size", KeyError, "chunk_size.*required"),
    ("fingerprint", "0123456789abcdef", "fingerprint.*not the fingerprint"),
    ("fingerprint", 7, "fingerprint"),
    ("variants.0.files.weights.sha256", KeyError, "variants.0.files.weights.sha256.*required"),
    ("variants.0.files.weights.sha256", "xyz", "sha256.*64 lowercase hex"),
    ("variants.0.files.weights.bytes", -1, "bytes"),
    ("variants.0.files.weights.path", KeyError, "path.*required"),
    ("variants.0.target", KeyError, "target.*required"),
    ("variants.0.quantization", "none", "quantization"),
    ("variants", {}, "variants"),
    ("state.1.shape.2", 99, "state.1.*does not match the model config"),
    ("state.0.name", KeyError, "state.0.name.*required"),
    ("state", [], "state"),
    ("model.chunk_size", 0, "model.*chunk_size"),
    ("model", "tiny", "model"),
    ("model.hidden_size", KeyError, "fingerprint"),     # a default fills it in: another model, another fingerprint
])
def test_schema_names_the_bad_field(torch_art, field, value, message):
    edit_manifest(torch_art, _set(field, value))
    with pytest.raises(ArtifactError, match=message) as err:
        read_manifest(torch_art)
    assert "\n" not in str(err.value)


def test_negative_chunk_size_never_reaches_prefill(torch_art):
    """A negative chunk_size would make prefill of 100 tokens return zero logits and an untouched state, silently."""
    edit_manifest(torch_art, _set("chunk_size", -64))
    with pytest.raises(ArtifactError, match="chunk_size"):
        seqedge.load(torch_art, "torch")


def test_graph_of_another_model_is_refused_at_load_by_onnxruntime(onnx_art):
    edit_manifest(onnx_art, lambda data: consistent_config_change(data, conv_kernel=3))
    with pytest.raises(ArtifactError, match=r"input 1 \(state.0\) has size 3 on axis 2, expected 2"):
        seqedge.load(onnx_art, "onnxruntime")


def test_graph_with_another_vocab_is_refused_at_load_by_onnxruntime(onnx_art):
    edit_manifest(onnx_art, lambda data: consistent_config_change(data, vocab_size=300))
    with pytest.raises(ArtifactError, match=r"output 0 \(logits\) has size 259 on axis 1, expected 300"):
        seqedge.load(onnx_art, "onnxruntime")


def test_the_unchanged_artifact_still_loads_and_runs(onnx_art):
    session = seqedge.load(onnx_art, "onnxruntime")
    logits, _ = session.prefill(np.arange(40)[None] % 200, session.init_state())
    assert logits.shape == (1, 40, session.vocab_size) and np.isfinite(logits).all()


def test_info_on_a_file_says_it_is_a_file(torch_art):
    with pytest.raises(ArtifactError, match="is a file, not an artifact directory"):
        read_manifest(torch_art / "manifest.json")


def test_torch_variant_never_loads_unlisted_weights(torch_art):
    """The listed weights elsewhere, an unchecked model.safetensors next to config.json: refused, not loaded."""
    folder = torch_art / "torch" / "fp32"
    (torch_art / "blobs").mkdir()
    os.replace(folder / "model.safetensors", torch_art / "blobs" / "model.safetensors")
    (folder / "model.safetensors").write_bytes(b"not checked by anyone")
    edit_manifest(torch_art, _set("variants.0.files.weights.path", "blobs/model.safetensors"))
    with pytest.raises(ArtifactError, match="in one folder"):
        seqedge.load(torch_art, "torch")


def test_manifest_json_symlinked_outside_is_refused(torch_art):
    outside = torch_art.parent / "elsewhere.json"
    os.replace(torch_art / "manifest.json", outside)
    (torch_art / "manifest.json").symlink_to(outside)
    with pytest.raises(ArtifactError, match="links outside the artifact"):
        read_manifest(torch_art)


def test_an_oversized_manifest_is_refused_without_reading_it_all(torch_art, monkeypatch):
    monkeypatch.setattr(artifact_module, "MAX_MANIFEST_BYTES", 1024)
    with pytest.raises(ArtifactError, match="larger than"):
        read_manifest(torch_art)
