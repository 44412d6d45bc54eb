"""Small artifacts for the hardening tests: a torch-only one (about a second) and one onnx/fp32 export, each
built once per session and copied before a test changes anything in it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from _artifacts import tiny_model

_BUILT: dict[str, Path] = {}


def built(tmp_path_factory, targets: tuple[str, ...]) -> Path:
    """The seed-0 tiny gated model exported to ``targets`` (fp32 only; () writes just the torch variant)."""
    key = ",".join(targets) or "torch"
    if key not in _BUILT:
        from seqedge.export.api import export_model

        out = tmp_path_factory.mktemp(f"hardening-{key}") / "art"
        export_model(tiny_model("gated"), out, list(targets), ["none"], progress=False)
        _BUILT[key] = out
    return _BUILT[key]


def copy_artifact(source: Path, dest: Path) -> Path:
    shutil.copytree(source, dest, symlinks=True)
    return dest


def edit_manifest(root: Path, edit) -> dict:
    """Apply ``edit(data)`` to ``root``'s manifest.json in place and return the new data."""
    path = root / "manifest.json"
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))
    return data


def consistent_config_change(data: dict, **changes) -> None:
    """Change the model config in a manifest together with its fingerprint, state and chunk size, so the manifest
    passes its own checks and only the graphs (still of the old model) disagree with it."""
    from seqedge.config import SequentialAttentionConfig
    from seqedge.state import model_fingerprint, state_specs

    config = SequentialAttentionConfig.from_dict({**data["model"], **changes})
    data["model"] = config.to_dict()
    data["fingerprint"] = model_fingerprint(config)
    data["state"] = [s.to_dict() for s in state_specs(config)]
    data["chunk_size"] = config.chunk_size


def record_hashes(monkeypatch) -> list[Path]:
    """Make every file the artifact layer hashes (how it reads a variant's bytes) land, resolved, in the list
    returned."""
    import seqedge.artifact as artifact_module

    seen: list[Path] = []
    real = artifact_module.sha256_file

    def recording(path, max_bytes=None):
        seen.append(Path(path).resolve())
        return real(path) if max_bytes is None else real(path, max_bytes)

    monkeypatch.setattr(artifact_module, "sha256_file", recording)
    return seen
