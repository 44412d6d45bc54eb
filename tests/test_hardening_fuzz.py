"""Random edits of a valid manifest: loading and resolving files either works on files inside the artifact or
raises ArtifactError, never another exception, and never reads a byte outside the root (a byte-identical
sentinel copy of every file sits outside it, so only confinement can keep the loader from accepting it)."""

from __future__ import annotations

import json
import shutil

import pytest
from _hardening import built, record_hashes
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from seqedge.artifact import ArtifactError, read_manifest

JSON = st.recursive(st.none() | st.booleans() | st.integers(-2**40, 2**40) | st.floats(allow_nan=True)
                    | st.text(max_size=12),
                    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner,
                                                                                  max_size=3),
                    max_leaves=6)
SENTINEL_NAMES = ("model.safetensors", "config.json")


def _paths(node, prefix=()):
    """Every (path of keys, value) in a JSON tree."""
    yield prefix, node
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for key, value in items:
        yield from _paths(value, prefix + (key,))


@st.composite
def edits(draw, valid: dict):
    data = json.loads(json.dumps(valid))
    for _ in range(draw(st.integers(1, 4))):
        spots = [p for p, _ in _paths(data) if p]
        where = draw(st.sampled_from(spots))
        parent = data
        for key in where[:-1]:
            parent = parent[key]
        kind = draw(st.sampled_from(["delete", "replace", "escape", "number"]))
        if kind == "delete":
            if isinstance(parent, dict):
                del parent[where[-1]]
            else:
                parent.pop(where[-1])
        elif kind == "escape":                # a path aimed at the sentinels outside the root
            parent[where[-1]] = draw(st.sampled_from(
                [f"../outside/{n}" for n in SENTINEL_NAMES] + [f"/{n}" for n in SENTINEL_NAMES]
                + ["torch/../../outside/model.safetensors", "link/model.safetensors", "."]))
        elif kind == "number":
            parent[where[-1]] = draw(st.sampled_from([0, -64, 1, 16, 17, 2**62, -1, 1.5, True]))
        else:
            parent[where[-1]] = draw(JSON)
    return data


@pytest.fixture(scope="module")
def playground(tmp_path_factory):
    """(root, valid manifest data): a torch-only artifact, sentinel copies of its files next to it, and a symlink
    ``link`` inside it that points at the sentinels."""
    base = tmp_path_factory.mktemp("fuzz")
    root = base / "art"
    shutil.copytree(built(tmp_path_factory, ()), root)
    (base / "outside").mkdir()
    for name in SENTINEL_NAMES:
        shutil.copy(root / "torch" / "fp32" / name, base / "outside" / name)
    (root / "link").symlink_to(base / "outside", target_is_directory=True)
    return root, json.loads((root / "manifest.json").read_text())


def test_fuzzed_manifests_fail_cleanly_and_stay_inside(playground, monkeypatch):
    root, valid = playground
    real_root = root.resolve()
    reads = record_hashes(monkeypatch)

    @settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    @given(edits(valid))
    def check(data):
        (root / "manifest.json").write_text(json.dumps(data))
        try:
            manifest = read_manifest(root)
            manifest.config, manifest.state_specs, manifest.chunk_size, manifest.vocab_size  # noqa: B018
            for variant in manifest.variants:
                for role in variant.files:
                    path = manifest.path(variant, role)
                    assert path.is_relative_to(real_root), path
        except ArtifactError:
            pass
        assert all(p.is_relative_to(real_root) for p in reads), reads
        reads.clear()

    try:
        check()
    finally:
        (root / "manifest.json").write_text(json.dumps(valid))
