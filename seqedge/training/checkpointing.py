"""Training checkpoints: weights, config, optimizer, data position and RNG; atomic, never pickled.

Layout under ``<out>/checkpoints/``::

    step-00000100/model/{config.json, model.safetensors}   the model (loadable by ``load_pretrained``)
    step-00000100/optimizer.safetensors                     every optimizer state tensor, ``state.<i>.<key>``
    step-00000100/rng.safetensors                           torch RNG states (CPU, each CUDA device)
    step-00000100/trainer_state.json                        step, data position, arguments, history, optimizer
                                                            scalars and param groups
    latest                                                  the name of the newest complete checkpoint

A checkpoint is built in a temporary folder and renamed into place, then ``latest`` is replaced (write + rename),
so a save interrupted at any point leaves ``latest`` naming the previous complete checkpoint.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

LATEST = "latest"
STATE_FILE = "trainer_state.json"
OPTIMIZER_FILE = "optimizer.safetensors"
RNG_FILE = "rng.safetensors"
MODEL_DIR = "model"
FORMAT = "seqedge-training-checkpoint"
FORMAT_VERSION = 1


def optimizer_to_flat(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Split ``optimizer.state_dict()`` into tensors (for safetensors) and JSON-able scalars and groups."""
    sd = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for idx, entry in sd["state"].items():
        for key, value in entry.items():
            if isinstance(value, torch.Tensor):
                tensors[f"state.{idx}.{key}"] = value.detach().contiguous().cpu()
            else:
                scalars.setdefault(str(idx), {})[key] = value
    return tensors, {"scalars": scalars, "param_groups": sd["param_groups"]}


def optimizer_from_flat(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    """Inverse of :func:`optimizer_to_flat`: a state dict for ``optimizer.load_state_dict``."""
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        _, idx, key = name.split(".", 2)
        state.setdefault(int(idx), {})[key] = value
    for idx, entry in meta["scalars"].items():
        state.setdefault(int(idx), {}).update(entry)
    groups = [{**g, "betas": tuple(g["betas"])} if "betas" in g else g for g in meta["param_groups"]]
    return {"state": state, "param_groups": groups}


def rng_tensors() -> dict[str, torch.Tensor]:
    out = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            out[f"cuda.{i}"] = s
    return out


def restore_rng(tensors: dict[str, torch.Tensor]) -> None:
    torch.set_rng_state(tensors["cpu"])
    cuda = [tensors[k] for k in sorted(k for k in tensors if k.startswith("cuda."))]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda[: torch.cuda.device_count()])


def save_checkpoint(root: str | os.PathLike, step: int, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                    state: dict[str, Any], keep: int = 2) -> Path:
    """Write ``step-<step>`` under ``root`` atomically, point ``latest`` at it, keep the newest ``keep``."""
    from safetensors.torch import save_file

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    name = f"step-{step:08d}"
    tmp = Path(tempfile.mkdtemp(dir=root, prefix=f".tmp-{name}-"))
    try:
        model.save_pretrained(tmp / MODEL_DIR)
        tensors, meta = optimizer_to_flat(optimizer)
        save_file(tensors, str(tmp / OPTIMIZER_FILE))
        save_file(rng_tensors(), str(tmp / RNG_FILE))
        payload = {"format": FORMAT, "format_version": FORMAT_VERSION, "step": step, **state, "optimizer": meta}
        (tmp / STATE_FILE).write_text(json.dumps(payload, indent=1, sort_keys=True) + "\n")
        final = root / name
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    _write_latest(root, name)
    _prune(root, keep)
    return root / name


def _write_latest(root: Path, name: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=root, prefix=".latest-")
    with os.fdopen(fd, "w") as f:
        f.write(name + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, root / LATEST)


def _prune(root: Path, keep: int) -> None:
    latest = latest_checkpoint(root)
    steps = sorted(p for p in root.glob("step-*") if p.is_dir())
    for p in steps[:-keep] if keep > 0 else []:
        if p != latest:
            shutil.rmtree(p, ignore_errors=True)


def latest_checkpoint(root: str | os.PathLike) -> Path | None:
    """The checkpoint ``latest`` names, or None when there is none."""
    pointer = Path(root) / LATEST
    if not pointer.is_file():
        return None
    path = Path(root) / pointer.read_text().strip()
    if not (path / STATE_FILE).is_file():
        raise FileNotFoundError(f"{pointer} names {path.name}, which is incomplete or missing; delete {pointer} to "
                                "start over or point it at an earlier step-* folder")
    return path


def load_checkpoint(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any], dict[str, Any],
                                         dict[str, torch.Tensor]]:
    """``(model tensors, trainer state, optimizer state dict, rng tensors)`` of one checkpoint folder."""
    from safetensors.torch import load_file

    payload = json.loads((path / STATE_FILE).read_text())
    if payload.get("format") != FORMAT or payload.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{path} is not a {FORMAT} v{FORMAT_VERSION} checkpoint")
    model_tensors = load_file(str(path / MODEL_DIR / "model.safetensors"))
    optim = optimizer_from_flat(load_file(str(path / OPTIMIZER_FILE)), payload.pop("optimizer"))
    return model_tensors, payload, optim, load_file(str(path / RNG_FILE))
