"""Helpers shared by the family-import tests (tests/test_import_*.py)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from seqedge.cli.main import main


def rel_error(got, want) -> float:
    """max |got - want| / max |want| in float64; the shapes must agree and ``got`` be finite."""
    got, want = torch.as_tensor(np.asarray(got)).double(), torch.as_tensor(np.asarray(want)).double()
    assert got.shape == want.shape and torch.isfinite(got).all()
    return float((got - want).abs().max() / want.abs().max())


def edited_hf_dir(path: Path, tmp_path: Path, **changes) -> Path:
    """A copy of the HF dir ``path`` with config.json keys changed (weights linked, not copied)."""
    edited = tmp_path / "edited"
    edited.mkdir()
    config = json.loads((path / "config.json").read_text())
    config.update(changes)
    (edited / "config.json").write_text(json.dumps(config))
    for f in path.glob("*.safetensors"):
        (edited / f.name).symlink_to(f)
    return edited


def assert_import_refused(path: Path, tmp_path: Path, capsys, key: str, **changes) -> str:
    """``seqedge import`` of a copy of the HF dir ``path`` with config.json ``changes`` exits 2 with one line
    naming ``key`` and writes nothing; returns that line."""
    edited = edited_hf_dir(path, tmp_path, **changes)
    out = tmp_path / "ck"
    capsys.readouterr()                   # drop what fixtures printed (save_pretrained's progress bars)
    assert main(["import", str(edited), "-o", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and key in err, err
    assert not out.exists()
    return err


def split_run(model, tokens):
    """seqedge's logits over ``tokens`` ``[B, T >= 45]`` fed as two chunked calls (20, 25 tokens) and then steps:
    the state carried across every kind of call; returns the logits and the final state."""
    with torch.no_grad():
        logits, state = model(tokens[:, :20])
        parts = [logits]
        more, state = model(tokens[:, 20:45], state)
        parts.append(more)
        for t in range(45, tokens.shape[1]):
            step, state = model.step(tokens[:, t], state)
            parts.append(step[:, None])
    return torch.cat(parts, dim=1), state


def stepped_logits(session, tokens) -> np.ndarray:
    """The logits ``[T, V]`` of a Session stepping one sequence (tokens ``[1, T]``) from a zero state."""
    state, got = session.init_state(1), []
    for t in range(tokens.shape[1]):
        logits, state = session.step(np.asarray(tokens[:, t]), state)
        got.append(np.asarray(logits)[0])
    return np.stack(got)


def weight_rounding_top1(path: Path, tokens, want) -> float:
    """Top-1 agreement with ``want`` of the model imported from ``path`` with the weights the onnx int8 export
    quantizes (each MatMul's: 2-D, not the embedding table) rounded as it does (``int8_blocks.rounded``: 8 bits
    in blocks of 128 inputs), activations kept float32: what int8 weights alone cost a model, whatever the runtime
    does with activations."""
    from seqedge.export import int8_blocks
    from seqedge.families import import_hf

    model = import_hf(path)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 2 and not name.startswith("embed"):
                p.copy_(torch.from_numpy(int8_blocks.rounded(p.T.numpy()).T.copy()))
        got = model(tokens)[0][0].numpy()
    return float((got.argmax(-1) == np.asarray(want).argmax(-1)).mean())
