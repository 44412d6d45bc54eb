"""``seqedge train``: error paths are one line + exit code 2; a tiny run writes a loadable model; --resume."""

from __future__ import annotations

import pytest
import torch

from seqedge.cli.main import main
from seqedge.model import load_pretrained


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


def _lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip() and "sequence scan runs" not in line]


def test_unknown_preset(tmp_path, capsys):
    assert main(["train", "--preset", "huge", "--steps", "1", "--out", str(tmp_path / "x")]) == 2
    err = _lines(capsys.readouterr().err)
    assert len(err) == 1 and "unknown preset 'huge'" in err[0] and "tiny" in err[0]


def test_missing_data(tmp_path, capsys):
    assert main(["train", "--data", str(tmp_path / "nope"), "--steps", "1", "--out", str(tmp_path / "x")]) == 2
    err = _lines(capsys.readouterr().err)
    assert len(err) == 1 and "neither 'stdlib' nor an existing file or folder" in err[0]


def test_resume_without_checkpoint(tmp_path, capsys):
    f = tmp_path / "t.txt"
    f.write_text("abc " * 200)
    assert main(["train", "--data", str(f), "--steps", "1", "--out", str(tmp_path / "x"), "--resume"]) == 2
    assert "no checkpoint" in capsys.readouterr().err


def test_tiny_run_then_resume(tmp_path, capsys):
    f = tmp_path / "t.txt"
    f.write_text("hello seqedge\n" * 300)
    out = tmp_path / "run"
    common = ["train", "--data", str(f), "--out", str(out), "--batch-size", "2", "--seq-len", "16", "--warmup", "1",
              "--eval-tokens", "64", "--device", "cpu", "--update-rule", "delta", "--no-progress"]
    assert main([*common, "--steps", "1"]) == 0
    assert load_pretrained(out / "model").config.update_rule == "delta"
    assert main([*common, "--steps", "1"]) == 2                                  # refuses to overwrite
    assert "--resume" in capsys.readouterr().err
    assert main([*common, "--steps", "2", "--resume"]) == 0
    assert "step 2" in capsys.readouterr().out
