"""CLI: export, validate, info and generate on an artifact; every error path is one line and exit code 2."""

from __future__ import annotations

import json
import sys

import pytest

from seqedge.cli.main import main
from seqedge.evaluate import parity


@pytest.fixture(scope="module")
def cli_artifact(tmp_path_factory, tiny_checkpoint):
    out = tmp_path_factory.mktemp("cli") / "art"
    assert main(["export", "-m", tiny_checkpoint, "--target", "onnx", "--quantize", "fp32,int8-dynamic", "-o", str(out),
                 "-q"]) == 0
    return out


def _one_line_error(capsys, command):
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"seqedge {command}: error: "), err
    return err[0]


def test_export_writes_artifact_and_reports(cli_artifact, capsys):
    manifest = json.loads((cli_artifact / "manifest.json").read_text())
    assert sorted(f"{v['target']}/{v['quantization']['scheme']}" for v in manifest["variants"]) == [
        "onnx/int8", "onnx/none", "torch/none"]
    assert sorted(v["quantization"]["recipe"] for v in manifest["variants"]) == ["fp32", "fp32", "int8-dynamic"]


def test_info_summarises_an_artifact(cli_artifact, capsys):
    assert main(["info", "-m", str(cli_artifact)]) == 0
    out = capsys.readouterr().out
    assert "onnx/int8" in out and "fingerprint" in out and "KiB per sequence" in out
    assert main(["info", "-m", str(cli_artifact), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["format_version"] == 1


def test_validate_prints_table_saves_json_and_lists_unavailable(cli_artifact, tmp_path, capsys):
    report = tmp_path / "v.json"
    rc = main(["validate", "-m", str(cli_artifact), "--tokens", "96", "--runtimes", "torch,onnx,tensorrt",
               "--report", str(report)])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "onnx/int8" in out and "torch/fp32" in out and "cannot run here" in out
    data = json.loads(report.read_text())
    statuses = {(r["runtime"], r["variant"]): r["status"] for r in data["results"]}
    assert statuses[("onnxruntime", "onnx/fp32")] == "ok" and statuses[("torch", "torch/fp32")] == "ok"
    assert [r for r in data["results"] if r["runtime"] == "tensorrt"][0]["status"] == "unavailable"
    assert data["passed"] and len(data["results"][0]["report"]["per_step_max_abs"]) == 96


def test_validate_exit_1_when_a_tolerance_is_missed(cli_artifact, monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(parity.BUDGETS, "fp32", parity.Budget(max_abs=0.0))
    rc = main(["validate", "-m", str(cli_artifact), "--tokens", "40", "--runtimes", "onnxruntime",
               "--report", str(tmp_path / "v.json")])
    assert rc == 1 and "FAILED" in capsys.readouterr().out


def test_generate_from_artifact(cli_artifact, capsys):
    rc = main(["generate", "-m", str(cli_artifact), "--runtime", "onnxruntime", "-p", "def ", "-n", "5", "-t", "0"])
    assert rc == 0 and capsys.readouterr().out.startswith("def ")


@pytest.mark.parametrize("argv,command,words", [
    (["export", "-m", "/nonexistent/ckpt", "-o", "{tmp}/a"], "export", "does not exist"),
    (["export", "-m", "{ckpt}", "-o", "{tmp}/taken"], "export", "not a seqedge artifact"),
    (["export", "-m", "{ckpt}", "-o", "{art}"], "export", "--overwrite"),
    (["export", "-m", "{ckpt}", "--target", "executorch", "--max-batch", "0", "-o", "{tmp}/a"], "export",
     "max_batch must be an integer in [1, 15]"),
    (["export", "-m", "{ckpt}", "--target", "executorch", "--max-batch", "16", "-o", "{tmp}/a"], "export",
     "max_batch must be an integer in [1, 15]"),
    (["validate", "-m", "{tmp}"], "validate", "not a seqedge artifact"),
    (["validate", "-m", "{art}", "--runtimes", "tflite"], "validate", "valid runtimes"),
    (["validate", "-m", "{art}", "--runtimes", "tensorrt", "--report", "{tmp}/v.json"], "validate", "none of the"),
    (["info", "-m", "{tmp}/nothing"], "info", "does not exist"),
    (["generate", "-m", "{art}", "--runtime", "tflite", "-p", "x"], "generate", "valid runtimes"),
    (["generate", "-m", "{art}", "--quantize", "int4-mlp", "-p", "x"], "generate", "no onnx/int4"),
])
def test_error_paths_are_one_line_exit_2(argv, command, words, cli_artifact, tiny_checkpoint, tmp_path, capsys):
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "file.txt").write_text("x")
    argv = [a.format(tmp=tmp_path, ckpt=tiny_checkpoint, art=cli_artifact) for a in argv]
    assert main(argv) == 2
    assert words in _one_line_error(capsys, command)
    assert not (tmp_path / "a").exists()


def test_missing_library_is_one_line_with_pip_install(monkeypatch, tiny_checkpoint, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    assert main(["export", "-m", tiny_checkpoint, "--target", "onnx", "-o", str(tmp_path / "a")]) == 2
    assert "pip install" in _one_line_error(capsys, "export") and not (tmp_path / "a").exists()


def test_bad_choices_exit_2(capsys):
    for argv in (["export", "--target", "tflite", "--out", "x"], ["export", "--quantize", "int3", "--out", "x"]):
        with pytest.raises(SystemExit) as exc:
            main(argv)
        assert exc.value.code == 2
    assert "invalid" in capsys.readouterr().err
