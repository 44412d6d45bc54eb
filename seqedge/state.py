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
from .fsutil import follow_umask

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
    def from_dict(cls, data: dict[str, Any]) -> StateSpec:
        return cls(name=data["name"], layer=int(data["layer"]), kind=data["kind"], shape=tuple(data["shape"]),
                   dtype=data.get("dtype", "float32"))


def state_specs(config: SequentialAttentionConfig) -> list[StateSpec]:
    """The ordered state of a model: per layer the conv tail (where the mixer has a short conv), then the scan
    matrix; tensor i is named ``state.i``."""
    specs: list[StateSpec] = []
    for layer in range(config.num_layers):
        if config.mixer.short_conv:
            specs.append(StateSpec(f"state.{len(specs)}", layer, "conv",
                                   (BATCH, config.conv_channels, config.conv_kernel - 1)))
        specs.append(StateSpec(f"state.{len(specs)}", layer, "scan",
                               (BATCH, config.num_heads, config.head_k_dim, config.head_v_dim)))
    return specs


def state_nbytes(specs: Sequence[StateSpec], batch_size: int = 1) -> int:
    """Bytes of the whole state for ``batch_size`` sequences: fixed, whatever the context length."""
    return sum(int(np.prod(s.concrete_shape(batch_size))) * np.dtype(s.dtype).itemsize for s in specs)


def model_fingerprint(config: SequentialAttentionConfig) -> str:
    """A short hash of the config: states of two different models never pass for each other."""
    return hashlib.sha256(config.to_json().encode()).hexdigest()[:16]


def _dtype_name(tensor: Any) -> str:
    """``"float32"`` for a numpy array or a torch tensor of that dtype."""
    return str(tensor.dtype).removeprefix("torch.")


def _is_tensor(value: Any) -> bool:
    return isinstance(value, np.ndarray) or (hasattr(value, "detach") and hasattr(value, "shape"))


def _as_numpy(tensor: Any) -> np.ndarray:
    return tensor if isinstance(tensor, np.ndarray) else tensor.detach().cpu().numpy()


def tensors_sha256(arrays: Sequence[np.ndarray]) -> str:
    """The checksum a state file carries: hex sha256 over the raw bytes of every tensor, in ``specs`` order,
    each as C-contiguous little-endian float32 (exactly the bytes safetensors stores for it), nothing between."""
    digest = hashlib.sha256()
    for arr in arrays:
        digest.update(np.ascontiguousarray(arr, dtype="<f4").tobytes())
    return digest.hexdigest()


class State:
    """The ordered state tensors of one model (numpy arrays or torch tensors) with their specs.

    ``save``/``load`` write safetensors plus JSON metadata (never pickle), so a state prefilled in one runtime
    resumes in another. The metadata carries a sha256 of the tensors (:func:`tensors_sha256`), checked on load.

    A state given up to ``Session.step(..., donate=True)`` is *spent* (:meth:`spend`): that call may have written
    the next state over its buffers, so reading or stepping it again raises ValueError instead of returning
    another state's values.
    """

    def __init__(self, tensors: Sequence[Any], specs: Sequence[StateSpec], fingerprint: str) -> None:
        if not isinstance(tensors, (list, tuple)):
            raise TypeError(f"state tensors must be a list of numpy arrays or torch tensors, got "
                            f"{type(tensors).__name__}")
        bad = [f"{i}: {type(t).__name__}" for i, t in enumerate(tensors) if not _is_tensor(t)]
        if bad:
            raise TypeError(f"state tensors must be numpy arrays or torch tensors, got {', '.join(bad[:3])}; "
                            "build states with init_state() or State.load()")
        if len(tensors) != len(specs):
            raise ValueError(f"state has {len(tensors)} tensors but the model expects {len(specs)}")
        self.tensors = list(tensors)
        self.specs = list(specs)
        self.fingerprint = fingerprint
        self._seal: tuple[object, tuple[int, ...]] | None = None
        self.spent = False

    def spend(self) -> None:
        """Mark this state as given up to a call that may reuse its buffers (``donate=True``): from now on every
        method that reads its values, and every Session call, raises ValueError."""
        self.spent = True
        self._seal = None

    def ensure_live(self) -> None:
        """ValueError if this state is spent (:meth:`spend`)."""
        if self.spent:
            raise ValueError("this state was donated to a step(..., donate=True) call, which may have written the "
                             "next state over its buffers; use the state that call returned (or donate=False to "
                             "keep this one)")

    @property
    def batch_size(self) -> int:
        return int(self.tensors[0].shape[0])

    def __len__(self) -> int:
        return len(self.tensors)

    def __iter__(self):
        self.ensure_live()
        return iter(self.tensors)

    def __repr__(self) -> str:
        return f"State(batch_size={self.batch_size}, tensors={len(self.tensors)}, fingerprint={self.fingerprint})"

    def numpy(self) -> list[np.ndarray]:
        """The tensors as float32 numpy arrays (copies for torch tensors)."""
        self.ensure_live()
        return [np.ascontiguousarray(_as_numpy(t), dtype=np.float32) for t in self.tensors]

    def arrays(self) -> list[np.ndarray]:
        """The tensors as numpy arrays of their own dtype (no cast; numpy arrays are returned as they are)."""
        self.ensure_live()
        return [_as_numpy(t) for t in self.tensors]

    def with_tensors(self, tensors: Sequence[Any]) -> State:
        self.ensure_live()
        return State(tensors, self.specs, self.fingerprint)

    def sealed_successor(self, tensors: list[Any], issuer: object, batch_size: int) -> State:
        """The state a runtime computed from this one: ``tensors`` (a runtime's outputs in ``specs`` order, taken
        as they are, unchecked) with this state's specs and fingerprint, sealed by ``issuer`` (a Session's token):
        it records that ``issuer`` produced exactly these tensors, of ``batch_size`` sequences (the call's), so it
        can accept the state back without checking it again (:meth:`sealed_by`)."""
        new = State.__new__(State)
        new.tensors, new.specs, new.fingerprint = list(tensors), self.specs, self.fingerprint
        new._seal = (issuer, tuple(map(id, new.tensors)), batch_size)
        new.spent = False
        return new

    def sealed_by(self, issuer: object, batch_size: int | None = None) -> bool:
        """True when ``issuer`` sealed this state (of ``batch_size`` sequences, where given) and its tensors are
        still the objects it sealed (a tensor swapped into ``tensors`` breaks the seal). False for a spent state.
        O(number of tensors); values are not read."""
        seal = self._seal
        return (seal is not None and seal[0] is issuer and (batch_size is None or seal[2] == batch_size)
                and seal[1] == tuple(map(id, self.tensors)))

    def check(self, specs: Sequence[StateSpec], fingerprint: str, batch_size: int | None = None,
              dtypes: Sequence[str] | None = None) -> None:
        """Raise ValueError unless this state belongs to the model described by ``specs``/``fingerprint``.

        Complex and non-floating tensors are always refused; ``dtypes`` (e.g. ``["float32"]``) refuses any other
        floating dtype too, rather than casting it silently. O(number of tensors): values are not read.
        """
        self.ensure_live()
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
            name = _dtype_name(tensor)
            if not name.startswith(("float", "bfloat")) or (dtypes is not None and name not in dtypes):
                want = list(dtypes) if dtypes is not None else "a real floating dtype"
                raise ValueError(f"{spec.name} has dtype {name}, expected {want}; states are never cast silently "
                                 "(convert it explicitly, or start from init_state())")

    def check_finite(self) -> None:
        """ValueError naming the first tensor holding NaN or inf (a state that would poison every later token)."""
        self.ensure_live()
        for tensor, spec in zip(self.tensors, self.specs):
            values = _as_numpy(tensor)
            if not np.isfinite(values).all():
                raise ValueError(f"{spec.name} holds NaN or inf values; a non-finite state makes every later "
                                 "logit NaN. Start again from init_state() (or pass check_finite=False to skip "
                                 "this check)")

    def save(self, path: str | os.PathLike) -> None:
        """Write the state atomically to ``path``: safetensors (one float32 tensor per spec, named by the spec)
        with string metadata ``format`` = ``seqedge-state``, ``format_version``, ``fingerprint``, ``specs`` (JSON)
        and ``sha256`` (:func:`tensors_sha256`). The file gets the permissions the umask gives."""
        from safetensors.numpy import save_file

        path = Path(path)
        arrays = {spec.name: arr for spec, arr in zip(self.specs, self.numpy())}
        meta = {"format": "seqedge-state", "format_version": str(STATE_FORMAT_VERSION),
                "fingerprint": self.fingerprint, "specs": json.dumps([s.to_dict() for s in self.specs]),
                "sha256": tensors_sha256(list(arrays.values()))}
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.close(fd)
        try:
            save_file(arrays, tmp, metadata=meta)
            follow_umask(Path(tmp))                  # mkstemp made it 0600
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)

    @classmethod
    def load(cls, path: str | os.PathLike, *, check_finite: bool = True) -> State:
        """Read a state written by :meth:`save`; tensors come back as float32 numpy arrays.

        Checked: format and version, specs, every tensor float32 of its spec's shape, the ``sha256`` of the
        tensors (files written before the checksum existed have none and are read without it), and, unless
        ``check_finite=False``, that every value is finite. ValueError says which check failed.
        """
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"no state file at {path}")
        meta, specs, tensors = _read_state_file(path)
        for spec, tensor in zip(specs, tensors):
            if tensor.dtype != np.dtype(spec.dtype) or tensor.ndim != len(spec.shape):
                raise ValueError(f"{path}: {spec.name} is {tensor.dtype} of rank {tensor.ndim}, its spec says "
                                 f"{spec.dtype} of rank {len(spec.shape)}")
        if "sha256" in meta and tensors_sha256(tensors) != meta["sha256"]:
            raise ValueError(f"{path}: the tensors do not match the sha256 in the file's metadata (corrupted or "
                             "modified); re-create the state")
        state = cls(tensors, specs, meta["fingerprint"])
        state.check(specs, meta["fingerprint"], dtypes=[s.dtype for s in specs])
        if check_finite:
            state.check_finite()
        return state


def _read_state_file(path: Path) -> tuple[dict[str, str], list[StateSpec], list[np.ndarray]]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="np") as f:
            meta = f.metadata() or {}
            specs, tensors = [], []
            if meta.get("format") == "seqedge-state" and meta.get("format_version") == str(STATE_FORMAT_VERSION):
                specs = [StateSpec.from_dict(d) for d in json.loads(meta["specs"])]
                tensors = [f.get_tensor(s.name) for s in specs]
    except Exception as err:  # OSError, KeyError, bad JSON, and safetensors' own error type on a corrupt header
        raise ValueError(f"{path} is not a readable seqedge state file: {err}") from None
    if meta.get("format") != "seqedge-state":
        raise ValueError(f"{path} is not a seqedge state file")
    if meta.get("format_version") != str(STATE_FORMAT_VERSION):
        raise ValueError(f"{path} has state format {meta.get('format_version')}, this seqedge reads "
                         f"{STATE_FORMAT_VERSION}; re-create the state with this version")
    if not specs or "fingerprint" not in meta:
        raise ValueError(f"{path} lists no state tensors or no fingerprint")
    return meta, specs, tensors
