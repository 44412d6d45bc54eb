"""``seqedge bench --runtimes executorch-cpp``: the C++ runner (runners/cpp) measured in its own process.

The runner and the artifact are test_runner_cpp's (built with ASan/UBSan once, exported once). Asserted: the
runner's row lands beside the Python ExecuTorch session's with finite latencies and a peak RSS; the ids it
consumed are the Python stream's (their sha256, computed here); a runner reporting another stream is refused;
a missing runner is a "not measured" line that says how to build it; the binary is found in the documented order.
"""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("executorch.runtime", reason="ExecuTorch is not installed (pip install executorch==1.5.1 "
                                                  "torchao==0.18.0)")

import test_runner_cpp  # noqa: E402

runner, exported = test_runner_cpp.runner, test_runner_cpp.exported   # fixtures: the built runner, the artifact


BENCH_ARGS = ["--contexts", "0,64", "--steps", "8", "--warmup", "2", "--prefill-tokens", "64", "--stepwise-tokens",
              "16", "--ttft-prompt", "16", "-q"]


def test_bench_measures_the_runner_beside_the_python_session(runner, exported, tmp_path, monkeypatch):
    import json
    import math

    from seqedge.artifact import read_manifest
    from seqedge.cli.main import main
    from seqedge.evaluate.latency import BenchConfig, token_stream
    from seqedge.evaluate.native_runner import RUNNER_ENV, consumed_tokens, stream_sha256

    artifact, _ = exported("none")
    monkeypatch.setenv(RUNNER_ENV, str(runner["run"]))       # found through the environment, not --runner
    out = tmp_path / "out"
    assert main(["bench", "-m", str(artifact), "--runtimes", "executorch-cpp,executorch", *BENCH_ARGS,
                 "--out", str(out)]) == 0
    data = json.loads((out / "bench.json").read_text())
    rows = {r["name"]: r for r in data["results"]}
    assert sorted(rows) == ["executorch-cpp/fp32", "executorch/fp32"]
    cpp = rows["executorch-cpp/fp32"]
    assert [c["context"] for c in cpp["contexts"]] == [0, 64]
    for c in cpp["contexts"]:
        assert all(math.isfinite(c[k]) and c[k] > 0 for k in ("p50_ms", "p90_ms", "p99_ms", "mean_ms", "min_ms"))
        assert c["p50_ms"] <= c["p90_ms"] <= c["p99_ms"] and c["rss_bytes"] > 0
    assert cpp["contexts"][1]["reach_tokens"] == 64 - 10   # prefilled from where context 0's steps left off
    for key in ("ttft_ms", "prefill_tokens_per_s", "stepwise_tokens_per_s", "load_s"):
        assert math.isfinite(cpp[key]) and cpp[key] > 0, key
    assert 0 < cpp["peak_rss_bytes"] <= cpp["info"]["process_peak_rss_bytes"]
    # its loaded memory advised onto 2 MiB pages as a Python session's is, said in the same words
    assert cpp["info"]["huge_pages"].endswith("MiB advised at load)") or cpp["info"]["huge_pages"].startswith("off (")
    assert "executorch-cpp/fp32: " in (out / "bench.md").read_text().split("Huge pages")[1]
    assert cpp["artifact_bytes"] == rows["executorch/fp32"]["artifact_bytes"] > 0
    # the ids the runner consumed are the stream the Python session got: its sha256, computed here independently
    config = BenchConfig(contexts=(0, 64), steps=8, warmup=2, prefill_tokens=64, stepwise_tokens=16, ttft_prompt=16)
    python_stream = token_stream(config.stream_length(), vocab_size=read_manifest(artifact).vocab_size)
    assert cpp["info"]["stream_sha256"] == stream_sha256(python_stream[:consumed_tokens(config)])
    assert "executorch-cpp/fp32" in (out / "bench.md").read_text() and (out / "bench.png").is_file()


def test_bench_refuses_a_runner_that_consumed_another_stream(runner, exported, tmp_path):
    from seqedge.evaluate.latency import BenchConfig
    from seqedge.evaluate.native_runner import bench_native, run_bench_json

    artifact, _ = exported("none")
    config = BenchConfig(contexts=(0,), steps=4, warmup=1, prefill_tokens=16, stepwise_tokens=4, ttft_prompt=4)
    stream = np.random.default_rng(3).integers(0, 259, 16)
    row = bench_native(runner["run"], artifact, "fp32", config, stream)
    assert row.name == "executorch-cpp/fp32" and row.contexts[0].p50_ms > 0
    assert row.info["threads"] == 1                   # a tiny model runs on the calling thread by default
    with pytest.raises(ValueError, match="needs 16"):
        run_bench_json(runner["run"], artifact, "fp32", config, stream[:15])
    # a runner reporting another stream's digest (a stale build reading ids differently) is refused
    stale = tmp_path / "stale-runner"
    stale.write_text('#!/bin/sh\necho \'{"stream_tokens": 16, "stream_sha256": "00"}\'\n')
    stale.chmod(0o755)
    with pytest.raises(RuntimeError, match="consumed another token stream"):
        run_bench_json(stale, artifact, "fp32", config, stream)


def test_bench_says_how_to_build_a_missing_runner(exported, tmp_path, monkeypatch, capsys):
    from seqedge.cli.main import main
    from seqedge.evaluate.native_runner import RUNNER_ENV

    artifact, _ = exported("none")
    monkeypatch.delenv(RUNNER_ENV, raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))                # no seqedge-run on PATH
    args = ["bench", "-m", str(artifact), "--runtimes", "executorch-cpp", *BENCH_ARGS, "--out", str(tmp_path / "o")]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "not measured: executorch-cpp: the C++ runner is not built" in err and "cmake -S runners/cpp" in err
    assert main([*args, "--runner", str(tmp_path / "nowhere")]) == 2
    assert f"{tmp_path / 'nowhere'} (from --runner) is not an executable file" in capsys.readouterr().err


def test_find_runner_order(tmp_path, monkeypatch):
    from seqedge.evaluate.native_runner import RUNNER_ENV, find_runner

    made = {}
    for name in ("given", "env", "path"):
        (tmp_path / name).mkdir()
        made[name] = tmp_path / name / "seqedge-run"
        made[name].write_text("#!/bin/sh\n")
        made[name].chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path / "path"))
    monkeypatch.setenv(RUNNER_ENV, str(made["env"]))
    assert find_runner(made["given"]) == made["given"]
    assert find_runner() == made["env"]
    monkeypatch.delenv(RUNNER_ENV)
    assert find_runner() == made["path"]
