"""Benchmark rows from the native C++ runner (runners/cpp): ``seqedge-run --bench --json`` in its own process.

The runner measures what :func:`seqedge.evaluate.latency.bench_stepper` measures (the same phases, statistics and
peak-RSS reset) on the token stream this module hands it as a file of ids; the sha256 of the ids it consumed comes
back in its JSON and is checked against the stream's, so a row is never of another stream. Its result becomes a
:class:`~seqedge.evaluate.latency.RunResult` beside the Python runtimes' rows.

Which binary runs: the path given (``seqedge bench --runner PATH``), else ``$SEQEDGE_RUN``, else ``seqedge-run``
on PATH; none of them is a :class:`RunnerNotFound` whose message says how to build it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from seqedge.evaluate.bench_results import BenchConfig, ContextResult, RunResult
from seqedge.runtimes.huge_pages import HugePages

RUNNER_ENV = "SEQEDGE_RUN"
RUNNER_PROGRAM = "seqedge-run"
# native runtime name -> the export target whose variants it runs
NATIVE_RUNTIMES = {"executorch-cpp": "executorch"}
_PREFIX = "$(python3 -c 'import executorch, os; print(os.path.join(executorch.__path__[0], \"share/cmake\"))')"
BUILD_HINT = (f"cmake -S runners/cpp -B build/cpp -DCMAKE_PREFIX_PATH=\"{_PREFIX}\" && cmake --build build/cpp -j, "
              f"then pass --runner build/cpp/{RUNNER_PROGRAM} or set {RUNNER_ENV}")
RELEASE_OPTIONS = ("-DCMAKE_BUILD_TYPE=Release", "-DSEQEDGE_BUILD_TESTS=OFF")


class RunnerNotFound(FileNotFoundError):
    """No C++ runner binary where :func:`find_runner` looks."""


def find_runner(runner: str | Path | None = None) -> Path:
    """The ``seqedge-run`` binary: ``runner`` if given, else ``$SEQEDGE_RUN``, else ``seqedge-run`` on PATH."""
    for given, origin in ((runner, "--runner"), (os.environ.get(RUNNER_ENV) or None, f"${RUNNER_ENV}")):
        if given is None:
            continue
        path = Path(given)
        if not (path.is_file() and os.access(path, os.X_OK)):
            raise RunnerNotFound(f"the C++ runner {path} (from {origin}) is not an executable file; build it with: "
                                 f"{BUILD_HINT}")
        return path
    found = shutil.which(RUNNER_PROGRAM)
    if found is None:
        raise RunnerNotFound(f"the C++ runner is not built ({RUNNER_PROGRAM} is not on PATH and {RUNNER_ENV} is "
                             f"not set); build it with: {BUILD_HINT}")
    return Path(found)


def build_runner(source: str | Path, build_dir: str | Path, options: Sequence[str] = RELEASE_OPTIONS) -> Path:
    """Configure and build ``seqedge-run`` from ``source`` (runners/cpp) against the executorch wheel's C++ runtime
    (incremental when ``build_dir`` exists); RuntimeError with CMake's output when that fails."""
    import executorch

    prefix = Path(list(executorch.__path__)[0]) / "share" / "cmake"
    configure = ["cmake", "-S", str(source), "-B", str(build_dir), f"-DCMAKE_PREFIX_PATH={prefix}", *options]
    for cmd in (configure, ["cmake", "--build", str(build_dir), "-j", str(os.cpu_count() or 2)]):
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed:\n{done.stdout[-4000:]}\n{done.stderr[-4000:]}")
    return Path(build_dir) / RUNNER_PROGRAM


def consumed_tokens(config: BenchConfig) -> int:
    """How many ids of the stream one benchmark run reads (every phase starts at the stream's beginning)."""
    return max(config.stream_length() - 1, config.prefill_tokens, config.stepwise_tokens, config.ttft_prompt)


def stream_sha256(ids: np.ndarray) -> str:
    """sha256 of token ids as int64 little-endian: what ``seqedge-run --bench --json`` reports as stream_sha256."""
    return hashlib.sha256(np.ascontiguousarray(ids, dtype="<i8").tobytes()).hexdigest()


def bench_command(runner: Path, artifact: str | Path, tag: str, config: BenchConfig, token_file: Path,
                  threads: int | None = None) -> list[str]:
    """The ``seqedge-run --bench --json`` command measuring ``config`` on the ids in ``token_file`` (``threads``:
    the runner's ``--threads``; None leaves the choice to it)."""
    contexts = ",".join(str(c) for c in config.contexts)
    return [str(runner), str(artifact), "-q", tag, "--bench", "--json", "--tokens", str(token_file),
            "--contexts", contexts, "--steps", str(config.steps), "--warmup", str(config.warmup),
            "--prefill-tokens", str(config.prefill_tokens), "--stepwise-tokens", str(config.stepwise_tokens),
            "--ttft-prompt", str(config.ttft_prompt), "--sweeps", str(config.sweeps),
            *([] if threads is None else ["--threads", str(threads)])]


def run_bench_json(runner: Path, artifact: str | Path, tag: str, config: BenchConfig,
                   stream: np.ndarray, threads: int | None = None) -> dict[str, Any]:
    """The runner's JSON report on ``stream``, after checking that it consumed exactly ``stream``'s first ids
    (``threads`` as :func:`bench_command`'s)."""
    need = consumed_tokens(config)
    stream = np.asarray(stream, np.int64)
    if len(stream) < need:
        raise ValueError(f"token stream has {len(stream)} tokens, the benchmark needs {need}")
    with tempfile.TemporaryDirectory(prefix="seqedge-run-bench-") as tmp:
        token_file = Path(tmp) / "stream.txt"
        token_file.write_text(" ".join(map(str, stream[:need].tolist())))
        cmd = bench_command(runner, artifact, tag, config, token_file, threads)
        done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        tail = done.stderr.strip().splitlines()[-1:] or [f"exit code {done.returncode}"]
        raise RuntimeError(f"{runner} --bench exited {done.returncode}: {tail[0]}")
    report = json.loads(done.stdout)
    if report.get("stream_tokens") != need or report.get("stream_sha256") != stream_sha256(stream[:need]):
        raise RuntimeError(f"{runner} consumed another token stream than the benchmark's ({report.get('stream_tokens')}"
                           f" ids, sha256 {report.get('stream_sha256')}); rebuild it from this checkout")
    return report


def bench_native(runner: Path, artifact: str | Path, tag: str, config: BenchConfig, stream: np.ndarray,
                 name: str | None = None) -> RunResult:
    """One variant measured by the C++ runner in its own process, as a row of ``seqedge bench``."""
    report = run_bench_json(runner, artifact, tag, config, stream)
    contexts = [ContextResult(**{k: row[k] for k in ContextResult.__dataclass_fields__ if k in row})
                for row in report["contexts"]]
    info = {"runtime": "executorch-cpp", "variant": report["variant"], "threads": report["threads"],
            "runner": str(runner),
            "process": "own (the C++ runner, no Python)", "state_bytes": report["state_bytes"],
            "process_peak_rss_bytes": report["process_peak_rss_bytes"], "peak_rss_reset": report["peak_rss_reset"],
            "stream_sha256": report["stream_sha256"]}
    pages = report.get("huge_pages")            # what the runner advised once loaded, as a Python session reports it
    if pages is not None:
        info["huge_pages"] = HugePages(pages["advised_bytes"], pages["huge_bytes"], pages["reason"]).describe()
    return RunResult(name=name or f"executorch-cpp/{tag}", kind="seqedge", contexts=contexts,
                     ttft_ms=report["ttft_ms"], prefill_tokens_per_s=report["prefill_tokens_per_s"],
                     stepwise_tokens_per_s=report["stepwise_tokens_per_s"], peak_rss_bytes=report["peak_rss_bytes"],
                     rss_before_bytes=report["rss_before_bytes"], load_s=report["load_s"], info=info)
