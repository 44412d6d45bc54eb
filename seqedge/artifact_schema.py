"""The schema of ``manifest.json``: what every field must hold before any other code reads it.

A manifest is untrusted input (it may be edited, truncated or written by someone else), so loading validates it
here first with pydantic: types, required keys, file paths that stay inside the artifact, a chunk size that is a
positive multiple of 16 and equals the config's, a fingerprint and a state layout that are the ones the config
implies. The first problem found is raised as one line naming the field.
"""

from __future__ import annotations

import re
from pathlib import PurePosixPath
from typing import Any, Literal, Optional, Union

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictInt,
    StrictStr,
    ValidationError,
    field_validator,
)

from seqedge.config import SequentialAttentionConfig
from seqedge.state import BATCH, model_fingerprint, state_specs
from seqedge.tokenizer_hf import MAX_TOKENIZER_BYTES, TOKENIZER_TYPE

SHA256 = re.compile(r"[0-9a-f]{64}")
CHUNK_MULTIPLE = 16


def check_relative_path(path: str) -> str:
    """``path`` if it is a normalised relative POSIX path inside its root, else ValueError saying why."""
    if not path or "\x00" in path or "\\" in path:
        raise ValueError(f"path {path!r} must be a non-empty POSIX path (no backslashes or NUL bytes)")
    pure = PurePosixPath(path)
    if pure.is_absolute():
        raise ValueError(f"path {path!r} must be relative to the artifact, not absolute")
    if any(part in ("..", ".") for part in path.split("/")) or pure.as_posix() != path:
        raise ValueError(f"path {path!r} must be normalised (no '.', '..', '//' or trailing '/')")
    return path


class _Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="allow", frozen=True)


class FileRecord(_Strict):
    path: StrictStr
    sha256: StrictStr
    bytes: StrictInt = Field(ge=0)

    @field_validator("path")
    @classmethod
    def _path(cls, value: str) -> str:
        return check_relative_path(value)

    @field_validator("sha256")
    @classmethod
    def _sha256(cls, value: str) -> str:
        if not SHA256.fullmatch(value):
            raise ValueError("must be 64 lowercase hex digits")
        return value


class Quantization(_Strict):
    scheme: StrictStr


class VariantRecord(_Strict):
    target: StrictStr = Field(min_length=1)
    quantization: Quantization
    files: dict[StrictStr, FileRecord] = Field(min_length=1)
    info: dict[StrictStr, Any] = Field(default_factory=dict)

    @field_validator("info")
    @classmethod
    def _package(cls, value: dict[str, Any]) -> dict[str, Any]:
        if "package" in value:                     # a folder the coreml runtime opens
            if not isinstance(value["package"], str):
                raise ValueError("info.package must be a string path")
            check_relative_path(value["package"])
        return value


class StateRecord(_Strict):
    name: StrictStr
    layer: StrictInt = Field(ge=0)
    kind: Literal["conv", "scan"]
    shape: list[Union[StrictInt, Literal["batch"]]] = Field(min_length=1)
    dtype: Literal["float32"] = "float32"


class TokenizerRecord(_Strict):
    type: Literal["bytes", "hf-tokenizers"]
    bos_id: Optional[StrictInt] = Field(default=None, ge=0)
    eos_id: Optional[StrictInt] = Field(default=None, ge=0)
    pad_id: Optional[StrictInt] = Field(default=None, ge=0)
    stop_ids: list[StrictInt] = Field(default_factory=list)
    vocab_size: StrictInt = Field(ge=1)
    file: Optional[FileRecord] = None          # the tokenizer.json of an hf-tokenizers record

    @field_validator("file")
    @classmethod
    def _bounded(cls, value: Optional[FileRecord]) -> Optional[FileRecord]:
        if value is not None and value.bytes > MAX_TOKENIZER_BYTES:
            raise ValueError(f"a tokenizer file of {value.bytes} bytes exceeds the {MAX_TOKENIZER_BYTES} seqedge "
                             "reads")
        return value


class ManifestRecord(_Strict):
    format: Literal["seqedge-artifact"]
    format_version: Literal[1]
    model: dict[StrictStr, Any]
    fingerprint: StrictStr
    state: list[StateRecord] = Field(min_length=1)
    chunk_size: StrictInt
    variants: list[VariantRecord]
    tokenizer: Optional[TokenizerRecord] = None        # absent: the byte tokenizer

    @field_validator("chunk_size")
    @classmethod
    def _chunk(cls, value: int) -> int:
        if value <= 0 or value % CHUNK_MULTIPLE:
            raise ValueError(f"must be a positive multiple of {CHUNK_MULTIPLE}, got {value}")
        return value


def _first_error(err: ValidationError) -> str:
    first = err.errors()[0]
    field = ".".join(str(p) for p in first["loc"]) or "(top level)"
    message = first["msg"].removeprefix("Value error, ")
    return f"field {field!r}: {message}"


def validate_manifest(data: Any) -> SequentialAttentionConfig:
    """Check a parsed ``manifest.json`` and return its model config; ValueError naming the first bad field."""
    try:
        record = ManifestRecord.model_validate(data)
    except ValidationError as err:
        raise ValueError(_first_error(err)) from None
    try:
        config = SequentialAttentionConfig.from_dict(record.model)
    except (TypeError, ValueError, KeyError) as err:
        raise ValueError(f"field 'model': not a valid model config ({err})") from None
    if record.chunk_size != config.chunk_size:
        raise ValueError(f"field 'chunk_size': {record.chunk_size} differs from the model config's "
                         f"{config.chunk_size}")
    if record.fingerprint != model_fingerprint(config):
        raise ValueError(f"field 'fingerprint': {record.fingerprint!r} is not the fingerprint of the model "
                         f"config ({model_fingerprint(config)!r})")
    _check_tokenizer(record.tokenizer, config.vocab_size)
    expected = [s.to_dict() for s in state_specs(config)]
    got = [s.model_dump() for s in record.state]
    for i, (want, have) in enumerate(zip(expected, got)):
        if {k: have[k] for k in want} != want:
            raise ValueError(f"field 'state.{i}': {have} does not match the model config (expected {want})")
    if len(got) != len(expected):
        raise ValueError(f"field 'state': {len(got)} tensors, the model config has {len(expected)}")
    assert all(d == BATCH or isinstance(d, int) for s in got for d in s["shape"])
    return config


def _check_tokenizer(record: Optional[TokenizerRecord], vocab_size: int) -> None:
    """A ``tokenizer.json`` record has its file, and its ids lie in the model's vocabulary."""
    if record is None or record.type != TOKENIZER_TYPE:
        return
    if record.file is None:
        raise ValueError(f"field 'tokenizer.file': a {TOKENIZER_TYPE} tokenizer must name its tokenizer.json")
    if record.vocab_size > vocab_size:
        raise ValueError(f"field 'tokenizer.vocab_size': {record.vocab_size} exceeds the model's {vocab_size}")
    ids = [i for i in (record.bos_id, record.eos_id, record.pad_id, *record.stop_ids) if i is not None]
    if any(i >= vocab_size for i in ids):
        raise ValueError(f"field 'tokenizer': special ids {ids} must lie in the model's vocabulary [0, {vocab_size})")
