"""Checkpoints: ``config.json`` + ``model.safetensors``, written atomically, verified on load, never unpickled.

The file format only: building a model from the tensors is :func:`seqedge.model.load_pretrained`'s job, so this
module never imports the model.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from .config import SequentialAttentionConfig
from .fsutil import make_temp_dir, replace_dir

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
CHECKPOINT_FORMAT = "seqedge-checkpoint"
CHECKPOINT_VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint directory is missing, incomplete or does not match its config."""


def save_pretrained(model: Any, directory: str | os.PathLike) -> Path:
    """Write ``model`` (anything with ``config`` and ``state_dict()``) to ``directory``: built in a sibling temp
    dir, then renamed into place."""
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
        (tmp / CONFIG_FILE).write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n")
        replace_dir(tmp, directory, (CONFIG_FILE, WEIGHTS_FILE))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return directory


def read_config(directory: str | os.PathLike) -> SequentialAttentionConfig:
    """The model config of a checkpoint directory, validated."""
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
    try:
        return SequentialAttentionConfig.from_dict(payload.get("model"))
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"{path}: invalid model config: {err}") from None


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
