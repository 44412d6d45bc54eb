"""The bundled default model: every command that takes a checkpoint falls back to it."""

from __future__ import annotations

from pathlib import Path

DEFAULT_MODEL_DIR = Path(__file__).parent / "default_model"


def default_checkpoint_dir() -> Path:
    """Directory of the bundled checkpoint; a clear error if this install ships none."""
    if not (DEFAULT_MODEL_DIR / "config.json").is_file():
        raise FileNotFoundError(f"no bundled default model at {DEFAULT_MODEL_DIR}; pass a checkpoint directory "
                                "(train one with `seqedge train`)")
    return DEFAULT_MODEL_DIR


def load_default(map_location: str = "cpu"):
    """The bundled tiny model, trained on the Python standard library (see default_model/TRAINING.md)."""
    from .model import load_pretrained

    return load_pretrained(default_checkpoint_dir(), map_location=map_location)
