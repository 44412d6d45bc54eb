"""The recurrent state: its spec (what exporters write as graph inputs/outputs) and a portable container.

Torch-free: runtimes hold numpy arrays, the torch model holds tensors, and both use the same ``State``.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .config import SequentialAttentionConfig

STATE_FORMAT_VERSION = 1
BATCH = "batch"  # symbolic batch dimension in shapes


@dataclass(frozen=True)
class StateSpec:
    """One state tensor: its graph name, layer, kind (``conv`` tail or ``scan`` matrix), shape, dtype."""

    name: str
    layer: int
    kind: str
    shape: tuple[int | str, ...]
    dtype: str = "float32"

    def concrete_shape(self, batch_size: int) -> tuple[int, ...]:
        return tuple(batch_size if d == BATCH else int(d) for d in self.shape)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "layer": self.layer, "kind": self.kind, "shape": list(self.shape),
                "dtype": self.dtype}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "StateSpec":
        return cls(name=data["name"], layer=int(data["layer"]), kind=data["kind"], shape=tuple(data["shape"]),
                   dtype=data.get("dtype", "float32"))


def state_specs(config: SequentialAttentionConfig) -> list[StateSpec]:
    """The ordered state of a model: per layer the conv tail, then the scan matrix."""
    specs = []
    for layer in range(config.num_layers):
        specs.append(StateSpec(f"state.{2 * layer}", layer, "conv",
                               (BATCH, config.conv_channels, config.conv_kernel - 1)))
        specs.append(StateSpec(f"state.{2 * layer + 1}", layer, "scan",
                               (BATCH, config.num_heads, config.head_k_dim, config.head_v_dim)))
    return specs


def state_nbytes(specs: Sequence[StateSpec], batch_size: int = 1) -> int:
    """Bytes of the whole state for ``batch_size`` sequences: fixed, whatever the context length."""
    return sum(int(np.prod(s.concrete_shape(batch_size))) * np.dtype(s.dtype).itemsize for s in specs)


def model_fingerprint(config: SequentialAttentionConfig) -> str:
    """A short hash of the config: states of two different models never pass for each other."""
    return hashlib.sha256(config.to_json().encode()).hexdigest()[:16]


class State:
    """The ordered state tensors of one model (numpy arrays or torch tensors) with their specs.

    ``save``/``load`` write safetensors plus JSON metadata (never pickle), so a state prefilled in one runtime
    resumes in another.
    """

    def __init__(self, tensors: Sequence[Any], specs: Sequence[StateSpec], fingerprint: str) -> None:
        if len(tensors) != len(specs):
            raise ValueError(f"state has {len(tensors)} tensors but the model expects {len(specs)}")
        self.tensors = list(tensors)
        self.specs = list(specs)
        self.fingerprint = fingerprint

    @property
    def batch_size(self) -> int:
        return int(self.tensors[0].shape[0])

    def __len__(self) -> int:
        return len(self.tensors)

    def __iter__(self):
        return iter(self.tensors)

    def __repr__(self) -> str:
        return f"State(batch_size={self.batch_size}, tensors={len(self.tensors)}, fingerprint={self.fingerprint})"

    def numpy(self) -> list[np.ndarray]:
        """The tensors as float32 numpy arrays (copies for torch tensors)."""
        out = []
        for t in self.tensors:
            if hasattr(t, "detach"):
                t = t.detach().cpu().numpy()
            out.append(np.ascontiguousarray(t, dtype=np.float32))
        return out

    def with_tensors(self, tensors: Sequence[Any]) -> "State":
        return State(tensors, self.specs, self.fingerprint)

    def check(self, specs: Sequence[StateSpec], fingerprint: str, batch_size: int | None = None) -> None:
        """Raise ValueError unless this state belongs to the model described by ``specs``/``fingerprint``."""
        if self.fingerprint != fingerprint:
            raise ValueError(f"state belongs to another model (fingerprint {self.fingerprint}, expected "
                             f"{fingerprint}); create one with init_state() of this session")
        if len(self.tensors) != len(specs):
            raise ValueError(f"state has {len(self.tensors)} tensors, expected {len(specs)}")
        batch = self.batch_size if batch_size is None else batch_size
        for tensor, spec in zip(self.tensors, specs):
            if tuple(tensor.shape) != spec.concrete_shape(batch):
                raise ValueError(f"{spec.name} has shape {tuple(tensor.shape)}, expected "
                                 f"{spec.concrete_shape(batch)} (batch {batch})")

    def save(self, path: str | os.PathLike) -> None:
        """Write the state atomically to ``path`` (safetensors with JSON metadata)."""
        from safetensors.numpy import save_file

        path = Path(path)
        arrays = {spec.name: arr for spec, arr in zip(self.specs, self.numpy())}
        meta = {"format": "seqedge-state", "format_version": str(STATE_FORMAT_VERSION),
                "fingerprint": self.fingerprint, "specs": json.dumps([s.to_dict() for s in self.specs])}
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.close(fd)
        try:
            save_file(arrays, tmp, metadata=meta)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "State":
        """Read a state written by :meth:`save`; tensors come back as float32 numpy arrays."""
        from safetensors import safe_open

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"no state file at {path}")
        try:
            with safe_open(str(path), framework="np") as f:
                meta = f.metadata() or {}
                if meta.get("format") != "seqedge-state":
                    raise ValueError(f"{path} is not a seqedge state file")
                if meta.get("format_version") != str(STATE_FORMAT_VERSION):
                    raise ValueError(f"{path} has state format {meta.get('format_version')}, this seqedge reads "
                                     f"{STATE_FORMAT_VERSION}; re-create the state with this version")
                specs = [StateSpec.from_dict(d) for d in json.loads(meta["specs"])]
                tensors = [f.get_tensor(s.name) for s in specs]
        except (OSError, KeyError, json.JSONDecodeError) as err:
            raise ValueError(f"{path} is not a readable seqedge state file: {err}") from None
        except Exception as err:  # safetensors raises its own error type on a corrupt header
            if isinstance(err, ValueError):
                raise
            raise ValueError(f"{path} is not a readable seqedge state file: {err}") from None
        return cls(tensors, specs, meta["fingerprint"])
