"""The core CLI: help, info, generate, and user errors as one line on stderr with exit code 2.

The installed ``seqedge`` console script runs in a subprocess for a few cases; the rest call ``main(argv)``
in-process, which is the same code without the interpreter start-up.
"""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest
import torch

from seqedge.cli.main import main
from seqedge.model import load_pretrained
from seqedge.tokenizer import ByteTokenizer


def run_console_script(*args: str) -> subprocess.CompletedProcess:
    exe = shutil.which("seqedge")
    assert exe, "the `seqedge` console script is not on PATH: install the package with `pip install -e .`"
    return subprocess.run([exe, *args], capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)


def assert_one_line_error(err: str, command: str, match: str) -> None:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"seqedge {command}: error: ") and match in lines[0], lines[0]
    assert "Traceback" not in err


# --- through the console script -------------------------------------------------------------------------------

def test_console_script_help():
    out = run_console_script("--help")
    assert out.returncode == 0, out.stderr
    assert "generate" in out.stdout and "info" in out.stdout


def test_console_script_generate(tiny_checkpoint, capsys):
    args = ["generate", "-m", tiny_checkpoint, "--prompt", "Hello", "--max-new-tokens", "5", "--seed", "0"]
    out = run_console_script(*args)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("Hello")
    assert "tokens/s]" in out.stderr and "Traceback" not in out.stderr
    assert main(args) == 0                                                     # same seed, same text in-process
    assert capsys.readouterr().out == out.stdout


def test_console_script_error_is_one_line(tmp_path):
    out = run_console_script("generate", "-m", str(tmp_path / "missing"), "--prompt", "x")
    assert out.returncode == 2
    assert_one_line_error(out.stderr, "generate", "does not exist")


# --- in-process ---------------------------------------------------------------------------------------------------

def test_no_command_prints_help(capsys):
    assert main([]) == 2
    assert "usage: seqedge" in capsys.readouterr().out


def test_info(tiny_checkpoint, capsys):
    assert main(["info", "-m", tiny_checkpoint]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"checkpoint: {tiny_checkpoint}")
    assert "hidden_size" in out and "state per sequence" in out and "weights file" in out


def test_info_json(tiny_checkpoint, capsys):
    assert main(["info", "-m", tiny_checkpoint, "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    config = load_pretrained(tiny_checkpoint).config
    assert info["config"] == config.to_dict()
    conv = config.conv_channels * (config.conv_kernel - 1)
    scan = config.num_heads * config.head_k_dim * config.head_v_dim
    assert info["state_bytes_per_sequence"] == 4 * config.num_layers * (conv + scan)


def test_generate_greedy_matches_the_library(tiny_checkpoint, capsys):
    assert main(["generate", "-m", tiny_checkpoint, "--prompt", "Hi", "--max-new-tokens", "6",
                 "--temperature", "0"]) == 0
    captured = capsys.readouterr()
    tok = ByteTokenizer()
    model = load_pretrained(tiny_checkpoint).eval()
    with torch.no_grad():
        ids = list(model.generate(tok.encode("Hi", add_bos=True), 6, temperature=0.0, stop_tokens=(tok.eos_id,)))
    assert captured.out == "Hi" + tok.decode(ids) + "\n"
    assert f"[{len(ids)} tokens" in captured.err


@pytest.mark.parametrize("extra, match", [
    (["--max-new-tokens", "-1"], "--max-new-tokens must be >= 0"),
    (["--temperature", "-0.5"], "temperature"),
    (["--top-p", "0"], "top_p"),
    (["--top-k", "-3"], "top_k"),
])
def test_generate_bad_arguments(tiny_checkpoint, capsys, extra, match):
    assert main(["generate", "-m", tiny_checkpoint, "--prompt", "x", *extra]) == 2
    assert_one_line_error(capsys.readouterr().err, "generate", match)


def test_generate_empty_prompt(tiny_checkpoint, capsys):
    assert main(["generate", "-m", tiny_checkpoint, "--prompt", ""]) == 2
    assert_one_line_error(capsys.readouterr().err, "generate", "--prompt must not be empty")


def test_generate_missing_checkpoint(tmp_path, capsys):
    assert main(["generate", "-m", str(tmp_path / "nope"), "--prompt", "x"]) == 2
    assert_one_line_error(capsys.readouterr().err, "generate", "does not exist")
    assert main(["generate", "-m", str(tmp_path / "nope"), "--runtime", "onnxruntime", "--prompt", "x"]) == 2
    assert_one_line_error(capsys.readouterr().err, "generate", "does not exist")    # not "is a checkpoint"


def test_generate_directory_that_is_not_a_checkpoint(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("hello")
    assert main(["generate", "-m", str(tmp_path), "--prompt", "x"]) == 2
    assert_one_line_error(capsys.readouterr().err, "generate", "not a seqedge checkpoint")


def test_generate_truncated_checkpoint(tiny_checkpoint, tmp_path, capsys):
    ckpt = tmp_path / "ckpt"
    shutil.copytree(tiny_checkpoint, ckpt)
    data = (ckpt / "model.safetensors").read_bytes()
    (ckpt / "model.safetensors").write_bytes(data[:len(data) // 3])
    assert main(["generate", "-m", str(ckpt), "--prompt", "x"]) == 2
    assert_one_line_error(capsys.readouterr().err, "generate", "truncated")


def test_info_missing_path(tmp_path, capsys):
    assert main(["info", "-m", str(tmp_path / "nope")]) == 2
    assert_one_line_error(capsys.readouterr().err, "info", "does not exist")


def test_info_directory_that_is_not_a_checkpoint(tmp_path, capsys):
    assert main(["info", "-m", str(tmp_path)]) == 2
    assert_one_line_error(capsys.readouterr().err, "info", "not a seqedge checkpoint")
