"""``manifest.json`` of an artifact directory: what is in it, how to run it, and how to check it is intact.

Torch-free: runtimes read it without the training stack. Loading checks the format version; each variant's
files are checked against their sha256 before a runtime opens them.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from seqedge.config import SequentialAttentionConfig
from seqedge.state import StateSpec

MANIFEST_FILE = "manifest.json"
ARTIFACT_FORMAT = "seqedge-artifact"
ARTIFACT_FORMAT_VERSION = 1


class ArtifactError(ValueError):
    """An artifact directory is missing, foreign, of another format version, or tampered with."""


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def file_record(root: Path, path: Path) -> dict[str, Any]:
    """``{"path", "sha256", "bytes"}`` of a file inside the artifact (path relative to ``root``)."""
    return {"path": path.relative_to(root).as_posix(), "sha256": sha256_file(path), "bytes": path.stat().st_size}


@dataclass(frozen=True)
class Variant:
    """One compiled form of the model: a target (onnx, executorch, ...) at one quantization."""

    target: str
    quantization: dict[str, Any]
    files: dict[str, dict[str, Any]]            # role (e.g. "step", "chunk", "program") -> file record
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def tag(self) -> str:
        scheme = self.quantization.get("scheme", "none")
        return "fp32" if scheme == "none" else scheme

    @property
    def name(self) -> str:
        return f"{self.target}/{self.tag}"

    def to_dict(self) -> dict[str, Any]:
        return {"target": self.target, "quantization": self.quantization, "files": self.files, "info": self.info}


@dataclass
class Manifest:
    """Parsed ``manifest.json``."""

    root: Path
    data: dict[str, Any]

    @property
    def config(self) -> SequentialAttentionConfig:
        return SequentialAttentionConfig.from_dict(self.data["model"])

    @property
    def state_specs(self) -> list[StateSpec]:
        return [StateSpec.from_dict(d) for d in self.data["state"]]

    @property
    def fingerprint(self) -> str:
        return self.data["fingerprint"]

    @property
    def chunk_size(self) -> int:
        return int(self.data["chunk_size"])

    @property
    def vocab_size(self) -> int:
        return int(self.data["model"]["vocab_size"])

    @property
    def variants(self) -> list[Variant]:
        return [Variant(**v) for v in self.data.get("variants", [])]

    def variant(self, target: str, quantization: str | None = None) -> Variant:
        """The variant of ``target`` at ``quantization`` (a tag: fp32/none, fp16, int8, int4).

        Without ``quantization``, fp32 if present, else the only variant of the target.
        """
        found = [v for v in self.variants if v.target == target]
        if not found:
            have = sorted({v.target for v in self.variants})
            raise ArtifactError(f"{self.root} has no {target!r} export (it has {have}); run "
                                f"`seqedge export --target {target}`")
        if quantization is not None:
            tag = "fp32" if quantization == "none" else quantization
            match = [v for v in found if v.tag == tag]
            if not match:
                raise ArtifactError(f"{self.root} has no {target}/{tag} variant (it has "
                                    f"{sorted(v.tag for v in found)})")
            return match[0]
        fp32 = [v for v in found if v.tag == "fp32"]
        if fp32:
            return fp32[0]
        if len(found) == 1:
            return found[0]
        raise ArtifactError(f"{self.root} has several {target} variants {sorted(v.tag for v in found)}; "
                            "choose one with quantization=...")

    def path(self, variant: Variant, role: str, *, verify: bool = True) -> Path:
        """Absolute path of a variant's file, checked against its recorded sha256."""
        if role not in variant.files:
            raise ArtifactError(f"{variant.name} has no {role!r} file (it has {sorted(variant.files)})")
        record = variant.files[role]
        path = self.root / record["path"]
        if not path.is_file():
            raise ArtifactError(f"{path} is missing from the artifact; re-run `seqedge export`")
        if verify and sha256_file(path) != record["sha256"]:
            raise ArtifactError(f"{path} does not match the sha256 in {MANIFEST_FILE} (truncated or modified); "
                                "re-run `seqedge export`")
        return path


def read_manifest(directory: str | Path) -> Manifest:
    """Parse and check ``<directory>/manifest.json``: existence, format and format version."""
    root = Path(directory)
    path = root / MANIFEST_FILE
    if not root.is_dir():
        raise ArtifactError(f"artifact directory {root} does not exist")
    if not path.is_file():
        raise ArtifactError(f"{path} is missing: {root} is not a seqedge artifact (create one with "
                            "`seqedge export`)")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ArtifactError(f"{path} is not valid JSON: {err}") from None
    if not isinstance(data, dict) or data.get("format") != ARTIFACT_FORMAT:
        raise ArtifactError(f"{path} is not a seqedge artifact manifest")
    if data.get("format_version") != ARTIFACT_FORMAT_VERSION:
        raise ArtifactError(f"{path} has artifact format version {data.get('format_version')}, this seqedge "
                            f"reads version {ARTIFACT_FORMAT_VERSION}; re-export with this seqedge")
    missing = [k for k in ("model", "fingerprint", "state", "chunk_size", "variants") if k not in data]
    if missing:
        raise ArtifactError(f"{path} lacks field(s) {missing}")
    return Manifest(root, data)


def write_manifest(directory: Path, data: dict[str, Any]) -> Path:
    from seqedge.fsutil import write_json_atomic

    return write_json_atomic(Path(directory) / MANIFEST_FILE, data)
