"""Checkpoints: ``config.json`` + ``model.safetensors``, written atomically, verified on load, never unpickled.

The file format only: building a model from the tensors is :func:`seqedge.model.load_pretrained`'s job, so this
module never imports the model.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .config import SequentialAttentionConfig
from .fsutil import make_temp_dir, replace_dir

if TYPE_CHECKING:
    from .tokenizer_hf import HFTokenizer

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
TOKENIZER_FILE = "tokenizer.json"        # an imported model's Hugging Face tokenizer, byte for byte
CHECKPOINT_FORMAT = "seqedge-checkpoint"
CHECKPOINT_VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint directory is missing, incomplete or does not match its config."""


def save_pretrained(model: Any, directory: str | os.PathLike, tokenizer: "HFTokenizer | None" = None) -> Path:
    """Write ``model`` (anything with ``config`` and ``state_dict()``) to ``directory``: built in a sibling temp
    dir, then renamed into place. A ``tokenizer`` (a model imported with its ``tokenizer.json``) is written as
    ``tokenizer.json`` and recorded with its size and sha256 in ``config.json``; without one the checkpoint's
    tokenizer is the byte tokenizer."""
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = make_temp_dir(directory)
    try:
        tensors = {name: t.detach().contiguous().cpu() for name, t in model.state_dict().items()}
        meta = {"format": CHECKPOINT_FORMAT, "format_version": str(CHECKPOINT_VERSION)}
        save_file(tensors, str(tmp / WEIGHTS_FILE), metadata=meta)
        payload = {"format": CHECKPOINT_FORMAT, "format_version": CHECKPOINT_VERSION,
                   "model": model.config.to_dict()}
        if tokenizer is not None:
            (tmp / TOKENIZER_FILE).write_bytes(tokenizer.data)
            payload["tokenizer"] = {**tokenizer.to_dict(), "file": {
                "path": TOKENIZER_FILE, "sha256": tokenizer.sha256, "bytes": len(tokenizer.data)}}
        (tmp / CONFIG_FILE).write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n")
        replace_dir(tmp, directory, (CONFIG_FILE, WEIGHTS_FILE, TOKENIZER_FILE))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return directory


def _read_payload(directory: str | os.PathLike) -> dict[str, Any]:
    """The parsed ``config.json`` of a checkpoint directory, its format and version checked."""
    path = Path(directory) / CONFIG_FILE
    if not Path(directory).is_dir():
        raise CheckpointError(f"checkpoint directory {directory} does not exist")
    if not path.is_file():
        raise CheckpointError(f"{path} is missing: not a seqedge checkpoint (expected {CONFIG_FILE} and "
                              f"{WEIGHTS_FILE})")
    try:
        payload = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{path} is not valid JSON: {err}") from None
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path} is not a seqedge checkpoint config")
    if payload.get("format_version") != CHECKPOINT_VERSION:
        raise CheckpointError(f"{path} has checkpoint format version {payload.get('format_version')}; this "
                              f"seqedge reads version {CHECKPOINT_VERSION}")
    return payload


def read_config(directory: str | os.PathLike) -> SequentialAttentionConfig:
    """The model config of a checkpoint directory, validated."""
    path = Path(directory) / CONFIG_FILE
    payload = _read_payload(directory)
    try:
        return SequentialAttentionConfig.from_dict(payload.get("model"))
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"{path}: invalid model config: {err}") from None


def read_tokenizer(directory: str | os.PathLike, vocab_size: int) -> "HFTokenizer | None":
    """The checkpoint's Hugging Face tokenizer (None: the byte tokenizer), its file checked against the size and
    sha256 in ``config.json`` and its ids against the model's ``vocab_size``."""
    from .tokenizer_hf import MAX_TOKENIZER_BYTES, TOKENIZER_TYPE, HFTokenizer, TokenizerError

    record = _read_payload(directory).get("tokenizer")
    if record is None:
        return None
    where = Path(directory) / CONFIG_FILE
    if not isinstance(record, dict) or record.get("type") != TOKENIZER_TYPE:
        raise CheckpointError(f"{where}: tokenizer record {str(record)[:80]} is not a {TOKENIZER_TYPE!r} record")
    file = record.get("file")
    if not isinstance(file, dict) or file.get("path") != TOKENIZER_FILE or not isinstance(file.get("bytes"), int):
        raise CheckpointError(f"{where}: tokenizer.file must be {{'path': {TOKENIZER_FILE!r}, 'sha256', 'bytes'}}")
    path = Path(directory) / TOKENIZER_FILE
    if not path.is_file() or path.is_symlink():
        raise CheckpointError(f"{path} is missing (or a link); {where} names it as the model's tokenizer")
    size = path.stat().st_size
    if size != file["bytes"] or size > MAX_TOKENIZER_BYTES:
        raise CheckpointError(f"{path} has {size} bytes, not the {file['bytes']} recorded in {where} (modified?)")
    data = path.read_bytes()
    if hashlib.sha256(data).hexdigest() != file.get("sha256"):
        raise CheckpointError(f"{path} does not match the sha256 in {where} (modified or replaced)")
    try:
        tokenizer = HFTokenizer.from_record(record, data)
        tokenizer.check_fits(vocab_size, str(directory))
    except TokenizerError as err:
        raise CheckpointError(str(err)) from None
    return tokenizer


def read_checkpoint(directory: str | os.PathLike, map_location: str = "cpu") -> tuple[SequentialAttentionConfig, dict]:
    """``(config, tensors)`` of a checkpoint directory; the tensors are checked against a model by the caller."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    config = read_config(directory)
    weights = Path(directory) / WEIGHTS_FILE
    if not weights.is_file():
        raise CheckpointError(f"{weights} is missing")
    try:
        return config, load_file(str(weights), device=map_location)
    except (SafetensorError, OSError) as err:
        raise CheckpointError(f"{weights} is unreadable or truncated: {err}") from None


def check_tensors(directory: str | os.PathLike, tensors: dict, expected: dict) -> None:
    """Raise CheckpointError unless ``tensors`` has exactly the names and shapes of ``expected``."""
    weights = Path(directory) / WEIGHTS_FILE
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    if missing or unexpected:
        raise CheckpointError(f"{weights} does not match {CONFIG_FILE}: missing {missing[:5]}, "
                              f"unexpected {unexpected[:5]}")
    for name, tensor in tensors.items():
        if tensor.shape != expected[name].shape:
            raise CheckpointError(f"{weights}: {name} has shape {tuple(tensor.shape)}, the config implies "
                                  f"{tuple(expected[name].shape)} (was {CONFIG_FILE} edited?)")
