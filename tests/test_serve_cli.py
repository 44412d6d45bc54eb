"""``seqedge serve`` on the command line: the CLI serving an artifact in a subprocess, and user errors."""

from __future__ import annotations

import json
import re
import select
import signal
import subprocess
import sys
import time
import urllib.request

import pytest

from seqedge.cli.main import EXIT_INTERRUPTED, main

from _artifacts import onnx_artifact

TIMEOUT_S = 60


def test_cli_serves_until_interrupted(tmp_path_factory):
    """The startup line names the runtime, variant, slots and stepping; /health answers; Ctrl-C shuts the server
    down and exits with the CLI's interrupted code."""
    artifact = onnx_artifact(tmp_path_factory, "gated")
    proc = subprocess.Popen([sys.executable, "-m", "seqedge.cli.main", "serve", "-m", str(artifact), "--port", "0", "--slots", "3",
                             "--model-name", "t"],
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline, line = time.monotonic() + TIMEOUT_S, ""
        while "[seqedge serve:" not in line:
            ready, _, _ = select.select([proc.stderr], [], [], max(deadline - time.monotonic(), 0))
            assert ready and proc.poll() is None, f"no startup line; exit {proc.poll()}: {proc.stderr.read()}"
            line = proc.stderr.readline()
        assert "onnxruntime running onnx/fp32, 3 slots, batched step" in line, line
        url = re.search(r"http://[\d.]+:\d+", line).group(0)
        with urllib.request.urlopen(url + "/health", timeout=TIMEOUT_S) as response:
            health = json.loads(response.read())
        assert health["status"] == "ok" and health["model"] == "t" and health["slots"] == 3
        proc.send_signal(signal.SIGINT)
        assert proc.wait(TIMEOUT_S) == EXIT_INTERRUPTED
        err = proc.stderr.read()
        assert "seqedge serve: interrupted" in err and "Traceback" not in err, err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.parametrize("args, match", [
    (["--slots", "0"], "slots must be >= 1"),
    (["--max-queue", "-1"], "max_queue must be >= 0"),
    (["--port", "70000"], "port must lie in [0, 65535]"),
])
def test_bad_settings_are_one_line_errors(tmp_path, capsys, args, match):
    assert main(["serve", "-m", str(tmp_path), *args]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("seqedge serve: error: ") and match in err and len(err.splitlines()) == 1, err


def test_missing_artifact_is_a_one_line_error(tmp_path, capsys):
    assert main(["serve", "-m", str(tmp_path / "nothing")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("seqedge serve: error: ") and "does not exist" in err, err


def test_the_artifact_is_named_with_m_the_old_positional_with_a_note(tmp_path, capsys):
    """-m/--model like every command; the 0.1 positional still works with one deprecation line; none is an error."""
    assert main(["serve", str(tmp_path / "nothing")]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith("seqedge: note: ") and "-m/--model" in err[0] and "does not exist" in err[1], err
    assert main(["serve"]) == 2
    assert "seqedge serve -m DIR" in capsys.readouterr().err
