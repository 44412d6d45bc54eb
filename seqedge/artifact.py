"""``manifest.json`` of an artifact directory: what is in it, how to run it, and how to check it is intact.

Torch-free: runtimes read it without the training stack. A manifest is untrusted input: loading validates it
against :mod:`seqedge.artifact_schema` (types, required keys, chunk size, fingerprint, state layout) and confines
every file it names to the artifact directory (relative, normalised, still inside after resolving symlinks);
each variant's files are checked against their recorded size and sha256 before a runtime opens them.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from seqedge.artifact_schema import check_relative_path, validate_manifest
from seqedge.config import SequentialAttentionConfig
from seqedge.state import StateSpec

MANIFEST_FILE = "manifest.json"
ARTIFACT_FORMAT = "seqedge-artifact"
ARTIFACT_FORMAT_VERSION = 1
# The optional input of an ONNX chunk graph that picks the rows its vocabulary head reads (logits for rows
# [logits_from:] of the chunk; default 0, every row): seqedge.export.head_rows writes it, runtimes feed -1 when
# only the last position's logits are wanted.
CHUNK_LOGITS_FROM = "logits_from"
MAX_MANIFEST_BYTES = 16 << 20       # a manifest is a few KiB; the bound keeps a hostile one from filling memory


class ArtifactError(ValueError):
    """An artifact directory is missing, foreign, of another format version, or tampered with."""


def sha256_file(path: Path, max_bytes: int | None = None) -> str:
    """Hex sha256 of a file; with ``max_bytes``, ArtifactError as soon as the file proves longer (never read
    past ``max_bytes + 1`` bytes: a manifest's size bound keeps a swapped-in huge file from being hashed)."""
    digest = hashlib.sha256()
    read = 0
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            read += len(block)
            if max_bytes is not None and read > max_bytes:
                raise ArtifactError(f"{path} is larger than the {max_bytes} bytes recorded in {MANIFEST_FILE} "
                                    "(modified or replaced); re-run `seqedge export`")
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
        return self.config.vocab_size          # the validated config: a field left at its default is absent

    @property
    def variants(self) -> list[Variant]:
        return [Variant(v["target"], v["quantization"], v["files"], v.get("info", {})) for v in self.data["variants"]]

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

    def inside(self, relative: str) -> Path:
        """``root / relative``, refused unless it is a normalised relative path that stays inside the artifact
        after resolving every symlink on the way (a file or a whole folder linked elsewhere is refused)."""
        try:
            check_relative_path(relative)
        except ValueError as err:
            raise ArtifactError(f"{self.root / MANIFEST_FILE}: {err}") from None
        root = self.root.resolve()
        path = (root / relative).resolve()
        if not path.is_relative_to(root):
            raise ArtifactError(f"{self.root / MANIFEST_FILE} names {relative!r}, which resolves to {path}, "
                                f"outside the artifact {root}; refusing to read it")
        return path

    @property
    def tokenizer_file(self) -> dict[str, Any] | None:
        """The file record of the artifact's ``tokenizer.json`` (None: the byte tokenizer, no file)."""
        return (self.data.get("tokenizer") or {}).get("file")

    def files(self) -> list[str]:
        """Every file path the manifest lists (relative to the root), ``manifest.json`` included."""
        paths = {MANIFEST_FILE}
        for variant in self.variants:
            paths.update(record["path"] for record in variant.files.values())
        if self.tokenizer_file:
            paths.add(self.tokenizer_file["path"])
        return sorted(paths)

    def tokenizer(self):
        """The artifact's tokenizer (a :class:`seqedge.tokenizer.Tokenizer`): the byte tokenizer, or its
        ``tokenizer.json`` checked (confined, size, sha256) before it is parsed."""
        from seqedge.tokenizer import tokenizer_from_record
        from seqedge.tokenizer_hf import TokenizerError

        try:
            return tokenizer_from_record(self.data.get("tokenizer"), lambda record: self.checked(record).read_bytes())
        except TokenizerError as err:
            raise ArtifactError(f"{self.root}: {err}") from None

    def path(self, variant: Variant, role: str, *, verify: bool = True) -> Path:
        """Absolute path of a variant's file, confined to the artifact and checked against its recorded size and
        sha256 (the confinement is checked before any byte is read)."""
        if role not in variant.files:
            raise ArtifactError(f"{variant.name} has no {role!r} file (it has {sorted(variant.files)})")
        return self.checked(variant.files[role], verify=verify)

    def checked(self, record: dict[str, Any], *, verify: bool = True) -> Path:
        """Absolute path of a file record's file, confined to the artifact, its size and (``verify``) sha256
        checked against the record."""
        path = self.inside(record["path"])
        if not path.is_file():
            raise ArtifactError(f"{path} is missing from the artifact; re-run `seqedge export`")
        if path.stat().st_size != record["bytes"]:
            raise ArtifactError(f"{path} has {path.stat().st_size} bytes, not the {record['bytes']} recorded with "
                                f"its sha256 in {MANIFEST_FILE} (truncated or modified); re-run `seqedge export`")
        if verify and sha256_file(path, record["bytes"]) != record["sha256"]:
            raise ArtifactError(f"{path} does not match the sha256 in {MANIFEST_FILE} (truncated or modified); "
                                "re-run `seqedge export`")
        return path

    def checkpoint_dir(self, variant: Variant) -> Path:
        """The folder of a torch variant, with its ``config`` and ``weights`` files checked (confined, size,
        sha256) and sitting together under the names ``load_pretrained`` reads, so nothing unchecked is loaded."""
        from seqedge.checkpoint import CONFIG_FILE, WEIGHTS_FILE

        config, weights = self.path(variant, "config"), self.path(variant, "weights")
        if (config.name, weights.name) != (CONFIG_FILE, WEIGHTS_FILE) or config.parent != weights.parent:
            raise ArtifactError(f"{variant.name} of {self.root} must list {CONFIG_FILE} and {WEIGHTS_FILE} in one "
                                f"folder, got {config} and {weights}; re-run `seqedge export`")
        return config.parent


def read_manifest(directory: str | Path) -> Manifest:
    """Parse and check ``<directory>/manifest.json``: existence, format and version, the schema of
    :mod:`seqedge.artifact_schema`, and that every file it names stays inside ``directory``."""
    root = Path(directory)
    path = root / MANIFEST_FILE
    if root.exists() and not root.is_dir():
        raise ArtifactError(f"{root} is a file, not an artifact directory (pass the directory `seqedge export` "
                            "wrote)")
    if not root.is_dir():
        raise ArtifactError(f"artifact directory {root} does not exist")
    if not path.is_file():
        raise ArtifactError(f"{path} is missing: {root} is not a seqedge artifact (create one with "
                            "`seqedge export`)")
    if not path.resolve().is_relative_to(root.resolve()):
        raise ArtifactError(f"{path} links outside the artifact ({path.resolve()}); refusing to read it")
    with open(path, "rb") as f:
        text = f.read(MAX_MANIFEST_BYTES + 1)
    if len(text) > MAX_MANIFEST_BYTES:
        raise ArtifactError(f"{path} is larger than {MAX_MANIFEST_BYTES} bytes; no seqedge manifest is, so it "
                            "is not one")
    try:
        data = json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ArtifactError(f"{path} is not valid JSON: {err}") from None
    if not isinstance(data, dict) or data.get("format") != ARTIFACT_FORMAT:
        raise ArtifactError(f"{path} is not a seqedge artifact manifest")
    if data.get("format_version") != ARTIFACT_FORMAT_VERSION:
        raise ArtifactError(f"{path} has artifact format version {data.get('format_version')}, this seqedge "
                            f"reads version {ARTIFACT_FORMAT_VERSION}; re-export with this seqedge")
    try:
        validate_manifest(data)
    except ValueError as err:
        raise ArtifactError(f"{path}: {err}; re-run `seqedge export`") from None
    manifest = Manifest(root, data)
    for variant in manifest.variants:          # paths only (no file is opened): refuse escapes up front
        for record in variant.files.values():
            manifest.inside(record["path"])
        if "package" in variant.info:
            manifest.inside(variant.info["package"])
    if manifest.tokenizer_file:
        manifest.inside(manifest.tokenizer_file["path"])
    return manifest


def write_manifest(directory: Path, data: dict[str, Any]) -> Path:
    from seqedge.fsutil import write_json_atomic

    return write_json_atomic(Path(directory) / MANIFEST_FILE, data)
