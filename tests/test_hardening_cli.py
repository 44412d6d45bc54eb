"""One failure path for the whole CLI: command -> exit code -> one line on stderr, never a traceback; and an
interrupted export (Ctrl-C or SIGTERM) or a killed one leaves nothing behind for long."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from _artifacts import tiny_model
from _hardening import built, copy_artifact, edit_manifest
from seqedge.export.api import export_model

from seqedge.cli.main import main
from seqedge.fsutil import TEMP_MARKER


@pytest.fixture
def paths(tmp_path_factory, tmp_path, tiny_checkpoint) -> dict[str, str]:
    art = copy_artifact(built(tmp_path_factory, ()), tmp_path / "art")
    bad_chunk = copy_artifact(art, tmp_path / "bad_chunk")
    edit_manifest(bad_chunk, lambda d: d.update(chunk_size=0))
    no_name = copy_artifact(art, tmp_path / "no_name")
    edit_manifest(no_name, lambda d: d["state"][0].pop("name"))
    (tmp_path / "file").write_text("x")
    webapp = tmp_path / "webapp"
    (webapp / "src").mkdir(parents=True)
    (webapp / "manifest.json").write_text('{"name": "My PWA"}')
    (webapp / "src" / "app.js").write_text("x")
    return {"ckpt": tiny_checkpoint, "art": str(art), "bad_chunk": str(bad_chunk), "no_name": str(no_name),
            "file": str(tmp_path / "file"), "missing": str(tmp_path / "missing"), "webapp": str(webapp),
            "tmp": str(tmp_path)}


TABLE = [
    # (argv, exit code, text in the one stderr line; None: no stderr line expected)
    (["info", "-m", "{art}"], 0, None),
    (["info", "-m", "{file}"], 2, "is a file"),
    (["info", "-m", "{missing}"], 2, "does not exist"),
    (["info", "-m", "{bad_chunk}"], 2, "chunk_size"),
    (["info", "-m", "{no_name}"], 2, "state.0.name"),
    (["export", "-m", "{ckpt}", "--target", "onnx", "-o", "{file}/sub"], 3, "under a file"),
    (["export", "-m", "{ckpt}", "--target", "onnx", "-o", "{webapp}", "--overwrite"], 2, "not a valid seqedge"),
    (["export", "-m", "{ckpt}", "--target", "onnx", "-o", "{art}"], 2, "--overwrite"),
    (["validate", "-m", "{art}", "--runtimes", "torch", "--tokens", "8", "--report", "{file}/sub/report.json"], 3,
     "Not a directory"),
    (["validate", "-m", "{art}", "--runtimes", "torch", "--tokens", "8", "--report", "{tmp}"], 3, "is a directory"),
    (["validate", "-m", "{art}", "--runtimes", "torch", "--tokens", "1"], 2, "tokens must be >= 2"),
    (["validate", "-m", "{file}", "--runtimes", "torch"], 2, "is a file"),
    (["generate", "-m", "{ckpt}", "-p", "x", "-t", "nan"], 2, "temperature"),
    (["generate", "-m", "{ckpt}", "-p", "x", "-t", "inf"], 2, "temperature"),
    (["generate", "-m", "{ckpt}", "-p", "x", "--top-p", "0"], 2, "top_p"),
    (["bench", "-m", "{missing}", "-q"], 2, "does not exist"),
    (["bench", "-m", "{art}", "-q", "-o", "{file}/sub"], 3, "Not a directory"),
]


@pytest.mark.parametrize("argv,code,text", TABLE, ids=[" ".join(a[:2]) + f" -> {c}" for a, c, _ in TABLE])
def test_cli_error_table(paths, capsys, argv, code, text):
    assert main([a.format(**paths) for a in argv]) == code
    err = capsys.readouterr().err
    assert "Traceback" not in err
    if text is None:
        return
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"seqedge {argv[0]}: error: ") and text in lines[0], err


@pytest.mark.parametrize("argv", [[], ["export"], ["info", "--no-such-flag"], ["nonsense"]])
def test_usage_errors_exit_2(argv, capsys):
    try:
        code = main(argv)
    except SystemExit as exit_:            # argparse's own usage errors
        code = exit_.code
    assert code == 2 and "Traceback" not in capsys.readouterr().err


def test_validate_report_path_is_checked_before_the_run(paths, capsys):
    assert main(["validate", "-m", paths["art"], "--runtimes", "torch", "--tokens", "8", "--report",
                 paths["file"] + "/r.json"]) == 3
    assert "reference" not in capsys.readouterr().err         # the float64 reference never started


def test_validate_dot_writes_its_report_next_to_the_artifact(paths, monkeypatch, capsys):
    monkeypatch.chdir(paths["art"])
    assert main(["validate", "-m", ".", "--runtimes", "torch", "--tokens", "8"]) == 0
    report = Path(paths["art"]).with_name("art.validate.json")
    assert json.loads(report.read_text())["passed"] is True


def test_interrupt_exits_130(paths, capsys, monkeypatch):
    import seqedge.evaluate.export_check as export_check

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(export_check, "export_verified", interrupted)
    assert main(["export", "-m", paths["ckpt"], "-o", paths["tmp"] + "/x"]) == 130
    assert capsys.readouterr().err.strip() == "seqedge export: interrupted"


def test_a_failed_export_check_is_the_verdict_exit_1(paths, capsys, monkeypatch):
    import seqedge.evaluate.export_check as export_check

    monkeypatch.setattr(export_check, "short_parity", lambda root, say: {"onnx/fp32": {"failures": ["max_abs"]}})
    out = Path(paths["tmp"]) / "failed"
    assert main(["export", "-m", paths["ckpt"], "--target", "onnx", "-o", str(out), "-q"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "parity check failed" in err[0] and not out.exists()


def test_a_bug_is_one_line_with_exit_70_and_the_traceback_on_request(paths, capsys, monkeypatch):
    import seqedge.checkpoint as checkpoint

    def broken(path):
        raise TypeError("unsupported operand")

    monkeypatch.setattr(checkpoint, "read_config", broken)
    assert main(["info", "-m", paths["ckpt"]]) == 70
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "internal error (TypeError" in err[0] and "--traceback" in err[0]
    for argv in (["--traceback", "info", "-m", paths["ckpt"]], ["info", "-m", paths["ckpt"], "--traceback"]):
        with pytest.raises(TypeError, match="unsupported operand"):
            main(argv)


def _seqedge() -> list[str]:
    exe = shutil.which("seqedge")
    return [exe] if exe else [sys.executable, "-m", "seqedge.cli.main"]


def test_closed_pipe_ends_quietly_with_141(paths):
    proc = subprocess.Popen([*_seqedge(), "info", "-m", paths["art"], "--json"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    proc.stdout.close()                                        # like `| head -c 0`: the reader is gone at once
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 141 and err == ""


def test_traceback_flag_after_the_subcommand(paths):
    out = subprocess.run([*_seqedge(), "info", "-m", paths["file"], "--traceback"], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode != 0 and "Traceback" in out.stderr and "is a file" in out.stderr


def test_sigterm_during_export_cleans_up_like_ctrl_c(paths, tmp_path):
    out = tmp_path / "sig" / "art"
    proc = subprocess.Popen([*_seqedge(), "export", "-m", paths["ckpt"], "--target", "onnx", "--quantize", "none,int8",
                             "-o", str(out), "--quiet"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    deadline = time.monotonic() + 120
    while not list(out.parent.glob(".art.tmp-*")) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, "export finished before it could be interrupted"
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130 and err.strip().endswith("seqedge export: interrupted"), err
    assert not out.exists() and list(out.parent.iterdir()) == []


def test_next_export_sweeps_only_our_stale_temp_dirs(tmp_path):
    out = tmp_path / "art"
    old = time.time() - 7 * 24 * 3600

    def leftover(name: str, marker: bool, stale: bool) -> Path:
        path = tmp_path / name
        path.mkdir()
        (path / "step.onnx").write_bytes(b"\0" * 1024)
        if marker:
            (path / TEMP_MARKER).write_text("1\n")
        if stale:
            for p in (path / "step.onnx", path / TEMP_MARKER, path):
                if p.exists():
                    os.utime(p, (old, old))
        return path

    swept = leftover(".art.tmp-killed", marker=True, stale=True)
    kept = [leftover(".art.tmp-running", marker=True, stale=False),
            leftover(".art.tmp-unmarked", marker=False, stale=True),
            leftover(".other.tmp-killed", marker=True, stale=True),
            leftover("art.tmp-visible", marker=True, stale=True)]
    export_model(tiny_model("gated"), out, [], progress=False)
    assert not swept.exists() and all(k.exists() for k in kept)
    assert (out / "manifest.json").is_file() and not (out / TEMP_MARKER).exists()
