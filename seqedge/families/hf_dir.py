"""Reading a local Hugging Face model directory: ``config.json`` and ``*.safetensors``, nothing else.

Nothing is downloaded, no code from the directory runs (there is no ``trust_remote_code``), and nothing is
unpickled: weights only in safetensors, read with the safetensors library.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

PICKLED_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")


class UnsupportedModelError(ValueError):
    """The directory holds a model seqedge cannot represent exactly, or cannot read safely (one line)."""


@dataclass(frozen=True)
class HFModelDir:
    """A local Hugging Face model directory: its ``config.json`` as a dict and its weights by name."""

    path: Path
    config: dict[str, Any]
    tensors: dict[str, "torch.Tensor"]

    @property
    def model_type(self) -> str:
        return str(self.config.get("model_type", ""))


def is_hf_dir(path: str | os.PathLike) -> bool:
    """True for a directory whose config.json names a ``model_type`` (a seqedge checkpoint names a format)."""
    config = Path(path) / "config.json"
    if not config.is_file():
        return False
    try:
        data = json.loads(config.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError, OSError):
        return False
    return isinstance(data, dict) and "model_type" in data and "format" not in data


def read_hf_dir(path: str | os.PathLike) -> HFModelDir:
    """Read ``config.json`` and every ``*.safetensors`` file of ``path`` (float tensors as float32)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    config_path = path / "config.json"
    if not config_path.is_file():
        raise UnsupportedModelError(f"{path}: no config.json; expected a Hugging Face model directory "
                                    f"(config.json + *.safetensors)")
    try:
        config = json.loads(config_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise UnsupportedModelError(f"{config_path} is not valid JSON: {err}") from None
    if not isinstance(config, dict):
        raise UnsupportedModelError(f"{config_path} must hold a JSON object")
    files = sorted(path.glob("*.safetensors"))
    if not files:
        pickled = sorted(p.name for p in path.iterdir() if p.suffix in PICKLED_SUFFIXES)
        hint = (f"it has only pickled weights ({', '.join(pickled)}), which seqedge never loads: convert them to "
                f"safetensors with the library that wrote them (save_pretrained(..., safe_serialization=True))"
                if pickled else "it has no *.safetensors weights")
        raise UnsupportedModelError(f"{path}: {hint}")
    tensors: dict[str, "torch.Tensor"] = {}
    for file in files:
        try:
            loaded = load_file(str(file))
        except (SafetensorError, OSError) as err:
            raise UnsupportedModelError(f"{file} is unreadable or truncated: {err}") from None
        for name, tensor in loaded.items():
            tensors[name] = tensor.float() if tensor.is_floating_point() else tensor
    return HFModelDir(path, config, tensors)


def as_float(value: Any) -> float:
    """A number from config.json; transformers writes infinities as ``{"__float__": "Infinity"}``."""
    if isinstance(value, dict) and set(value) == {"__float__"}:
        return float(value["__float__"])
    return float(value)


def require(config: dict[str, Any], key: str, family: str) -> Any:
    """``config[key]``, or a one-line error naming the missing key."""
    if key not in config:
        raise UnsupportedModelError(f"{family}: config.json has no {key!r}, which seqedge needs")
    return config[key]


def refuse_unless(condition: bool, family: str, key: str, value: Any, why: str) -> None:
    """Raise the one-line refusal naming the config key and its value when ``condition`` is false."""
    if not condition:
        raise UnsupportedModelError(f"{family}: config.json {key}={value!r} is not supported: {why}")


def take(tensors: dict[str, "torch.Tensor"], name: str, family: str) -> "torch.Tensor":
    """Pop ``name`` from ``tensors`` or fail naming it."""
    if name not in tensors:
        raise UnsupportedModelError(f"{family}: weight {name!r} is missing from the safetensors files")
    return tensors.pop(name)


def outer_weights(tensors: dict[str, "torch.Tensor"], tied: bool, family: str, embed: str,
                  norm: str) -> dict[str, "torch.Tensor"]:
    """seqedge's embedding, final norm and (untied) head popped from ``tensors`` by their source names
    (``embed``, ``norm``, ``lm_head.weight``); a tied model's head is dropped, as libraries may store the shared
    tensor twice."""
    out = {"embed.weight": take(tensors, embed, family), "norm.weight": take(tensors, norm, family)}
    if not tied:
        out["head.weight"] = take(tensors, "lm_head.weight", family)
    else:
        tensors.pop("lm_head.weight", None)
    return out
