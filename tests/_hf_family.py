"""Helpers of the family-import tests (tests/test_import_*.py): the relative error they score, edited HF dirs."""

from __future__ import annotations

import json

import numpy as np
import torch


def rel_error(got, want) -> float:
    """max |got - want| / max |want| (both finite and of one shape), in float64."""
    got, want = torch.as_tensor(np.asarray(got)).double(), torch.as_tensor(np.asarray(want)).double()
    assert got.shape == want.shape and torch.isfinite(got).all()
    return float((got - want).abs().max() / want.abs().max())


def edited_hf_dir(path, tmp_path, **changes):
    """A copy of the HF dir with config.json keys changed (weights linked, not copied)."""
    out = tmp_path / "edited"
    out.mkdir()
    config = json.loads((path / "config.json").read_text())
    config.update(changes)
    (out / "config.json").write_text(json.dumps(config))
    for f in path.glob("*.safetensors"):
        (out / f.name).symlink_to(f)
    return out
