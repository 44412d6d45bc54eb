"""Checkpoints and saved states: exact round trips, tamper detection with clear errors, atomic writes."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from seqedge.checkpoint import CONFIG_FILE, WEIGHTS_FILE, CheckpointError, read_config
from seqedge.model import SequentialAttentionModel, load_pretrained
from seqedge.state import State


@pytest.fixture
def model(tiny_config, make_tiny_model):
    return make_tiny_model(tiny_config)


@pytest.fixture
def ckpt(tmp_path, tiny_checkpoint) -> Path:
    """A private, writable copy of the session's tiny checkpoint (tests here tamper with it)."""
    path = tmp_path / "ckpt"
    shutil.copytree(tiny_checkpoint, path)
    return path


def logits_of(model, tokens=((256, 72, 101, 108, 108, 111, 33),)):
    with torch.no_grad():
        return model(torch.tensor(tokens))[0]


def edit_config(path: Path, edit) -> None:
    payload = json.loads((path / CONFIG_FILE).read_text())
    edit(payload)
    (path / CONFIG_FILE).write_text(json.dumps(payload))


# --- round trip -----------------------------------------------------------------------------------------------

def test_round_trip_gives_identical_logits(model, tmp_path):
    model.save_pretrained(tmp_path / "m")
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == [CONFIG_FILE, WEIGHTS_FILE]
    loaded = SequentialAttentionModel.load_pretrained(tmp_path / "m")
    assert loaded.config == model.config
    assert torch.equal(logits_of(loaded), logits_of(model))
    assert read_config(tmp_path / "m") == model.config


def test_saving_over_an_existing_checkpoint_replaces_it(model, tmp_path, make_tiny_config, make_tiny_model):
    model.save_pretrained(tmp_path / "m")
    other = make_tiny_model(make_tiny_config(update_rule="delta"), seed=1)
    other.save_pretrained(tmp_path / "m")
    assert torch.equal(logits_of(load_pretrained(tmp_path / "m")), logits_of(other))
    assert [p.name for p in tmp_path.iterdir()] == ["m"]                         # no temp or .old dirs left


# --- tamper detection ---------------------------------------------------------------------------------------------

def test_missing_directory(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_pretrained(tmp_path / "nowhere")


def test_missing_weights_file(ckpt):
    (ckpt / WEIGHTS_FILE).unlink()
    with pytest.raises(CheckpointError, match=f"{WEIGHTS_FILE} is missing"):
        load_pretrained(ckpt)


def test_missing_config_file(ckpt):
    (ckpt / CONFIG_FILE).unlink()
    with pytest.raises(CheckpointError, match=f"{CONFIG_FILE} is missing"):
        load_pretrained(ckpt)


@pytest.mark.parametrize("keep", [0.5, 0.99, 4])
def test_truncated_weights(ckpt, keep):
    data = (ckpt / WEIGHTS_FILE).read_bytes()
    (ckpt / WEIGHTS_FILE).write_bytes(data[:int(len(data) * keep) if keep < 1 else keep])
    with pytest.raises(CheckpointError, match="unreadable or truncated"):
        load_pretrained(ckpt)


def test_config_edited_so_shapes_mismatch(ckpt):
    edit_config(ckpt, lambda p: p["model"].update(head_v_dim=16))
    with pytest.raises(CheckpointError, match="has shape .* the config implies"):
        load_pretrained(ckpt)


def test_config_edited_so_tensors_are_missing(ckpt):
    edit_config(ckpt, lambda p: p["model"].update(num_layers=3))
    with pytest.raises(CheckpointError, match="does not match.*missing .*blocks.2"):
        load_pretrained(ckpt)


def test_unknown_config_field(ckpt):
    edit_config(ckpt, lambda p: p["model"].update(rope_theta=10000))
    with pytest.raises(CheckpointError, match="rope_theta"):
        load_pretrained(ckpt)


def test_invalid_config_value(ckpt):
    edit_config(ckpt, lambda p: p["model"].update(update_rule="mamba"))
    with pytest.raises(CheckpointError, match="update_rule"):
        load_pretrained(ckpt)


@pytest.mark.parametrize("version", [2, 0, "1", None])
def test_wrong_format_version(ckpt, version):
    edit_config(ckpt, lambda p: p.update(format_version=version))
    with pytest.raises(CheckpointError, match="format version"):
        load_pretrained(ckpt)


@pytest.mark.parametrize("text", ["{not json", "[]", json.dumps({"format": "other", "format_version": 1})])
def test_config_that_is_not_a_checkpoint_config(ckpt, text):
    (ckpt / CONFIG_FILE).write_text(text)
    with pytest.raises(CheckpointError, match="JSON|not a seqedge checkpoint"):
        load_pretrained(ckpt)


def test_checkpoint_errors_are_value_errors():
    assert issubclass(CheckpointError, ValueError)                              # the CLI turns them into one line


# --- atomic save --------------------------------------------------------------------------------------------------

def test_failed_save_leaves_previous_checkpoint_intact(model, tmp_path, monkeypatch, make_tiny_config,
                                                       make_tiny_model):
    import safetensors.torch

    target = tmp_path / "m"
    model.save_pretrained(target)
    before = {p.name: p.read_bytes() for p in target.iterdir()}

    def failing_save_file(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"partial")                                  # a half-written file, then a crash
        raise OSError("disk full")

    monkeypatch.setattr(safetensors.torch, "save_file", failing_save_file)
    other = make_tiny_model(make_tiny_config(update_rule="delta"), seed=1)
    with pytest.raises(OSError, match="disk full"):
        other.save_pretrained(target)
    assert {p.name: p.read_bytes() for p in target.iterdir()} == before
    assert [p.name for p in tmp_path.iterdir()] == ["m"]                         # no temp dirs remain
    monkeypatch.undo()
    assert torch.equal(logits_of(load_pretrained(target)), logits_of(model))


def test_failed_first_save_leaves_nothing(model, tmp_path, monkeypatch):
    import safetensors.torch

    monkeypatch.setattr(safetensors.torch, "save_file", lambda *a, **k: (_ for _ in ()).throw(OSError("boom")))
    with pytest.raises(OSError, match="boom"):
        model.save_pretrained(tmp_path / "m")
    assert list(tmp_path.iterdir()) == []


# --- State.save / State.load ----------------------------------------------------------------------------------------

def test_state_round_trip_resumes_identically(model, tmp_path):
    with torch.no_grad():
        _, state = model(torch.tensor([[256, 72, 105, 33], [256, 65, 66, 67]]))
    state.save(tmp_path / "s" / "state.safetensors")
    loaded = State.load(tmp_path / "s" / "state.safetensors")
    assert loaded.fingerprint == state.fingerprint and loaded.specs == state.specs
    assert all(isinstance(t, np.ndarray) and t.dtype == np.float32 for t in loaded.tensors)
    for a, b in zip(loaded.numpy(), state.numpy()):
        np.testing.assert_array_equal(a, b)
    tokens = torch.tensor([10, 20])
    with torch.no_grad():
        assert torch.equal(model.step(tokens, loaded)[0], model.step(tokens, state)[0])
    assert [p.name for p in (tmp_path / "s").iterdir()] == ["state.safetensors"]   # no temp file left


def test_loaded_state_of_another_model_is_rejected(model, tmp_path, make_tiny_config, make_tiny_model):
    other = make_tiny_model(make_tiny_config(update_rule="delta"))
    other.init_state().save(tmp_path / "state.safetensors")
    with pytest.raises(ValueError, match="another model"):
        model.step(torch.tensor([1]), State.load(tmp_path / "state.safetensors"))


def test_state_load_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="no state file"):
        State.load(tmp_path / "nothing.safetensors")


def test_state_load_garbage(tmp_path):
    (tmp_path / "s.safetensors").write_bytes(b"\x00" * 7 + b"not a safetensors file")
    with pytest.raises(ValueError, match="not a readable seqedge state file"):
        State.load(tmp_path / "s.safetensors")


def test_state_load_truncated(model, tmp_path):
    model.init_state().save(tmp_path / "s.safetensors")
    data = (tmp_path / "s.safetensors").read_bytes()
    (tmp_path / "s.safetensors").write_bytes(data[:len(data) // 2])
    with pytest.raises(ValueError, match="not a readable seqedge state file"):
        State.load(tmp_path / "s.safetensors")


def test_state_load_foreign_safetensors(tmp_path):
    from safetensors.numpy import save_file

    save_file({"x": np.zeros(3, np.float32)}, str(tmp_path / "w.safetensors"))
    with pytest.raises(ValueError, match="not a seqedge state file"):
        State.load(tmp_path / "w.safetensors")


def test_state_load_wrong_version(model, tmp_path):
    from safetensors.numpy import save_file

    state = model.init_state()
    arrays = {s.name: a for s, a in zip(state.specs, state.numpy())}
    meta = {"format": "seqedge-state", "format_version": "99", "fingerprint": state.fingerprint,
            "specs": json.dumps([s.to_dict() for s in state.specs])}
    save_file(arrays, str(tmp_path / "s.safetensors"), metadata=meta)
    with pytest.raises(ValueError, match="state format 99"):
        State.load(tmp_path / "s.safetensors")
