"""The C++ runner (runners/cpp, ``seqedge-run --bench``) against the Python ExecuTorch session, per artifact.

Both run the same ``.pte`` with the same XNNPACK build on the same token stream (Python standard-library source
bytes, runtimes/latency.token_stream): per-token step p50/p99 after prefilling to each context, prefill tokens/s
and peak RSS. The C++ numbers come from the runner's own process (nothing but the runner and ExecuTorch's
libraries); the Python ones from seqedge.evaluate.latency in this process (torch is imported by the executorch
runtime). Before timing, the runner's logits on a 256-token stream are compared with the Python session's.

Targets: the runner's peak RSS < 30 MiB; its step p50 no slower than the Python session's at every context.
A missed target is reported with by how much. Results: benchmarks/results/runner_cpp.{json,md}.

ExecuTorch plans each method's activations for the program's largest batch, so the batch bound the artifact
was exported with (``seqedge export --max-batch``) sets much of the runner's memory: give one artifact per bound
to compare them (an app that runs one sequence exports with ``--max-batch 1``).

    seqedge export --target executorch --max-batch 1 -o A1     # the bundled model, single-stream programs
    seqedge export --target executorch -o A8                   # the default bound (8)
    python benchmarks/runner_cpp.py A1 A8
    python benchmarks/runner_cpp.py A1 --quick                 # smoke test: small contexts, results to a temp dir
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from seqedge.artifact import read_manifest
from seqedge.runtimes import load
from seqedge.evaluate.latency import BenchConfig, SessionStepper, bench_stepper, format_context, parse_contexts, \
    token_stream
from seqedge.evaluate.native_runner import bench_native, build_runner
from seqedge.evaluate.run_info import command_line, machine_info

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
RSS_MAX_MIB = 30.0
FULL = dict(contexts="0,1k,16k", steps=100, warmup=5, prefill_tokens=2048)
QUICK = dict(contexts="0,1k", steps=20, warmup=2, prefill_tokens=512)


def check_parity(runner: Path, artifact: Path, tag: str, work: Path) -> dict[str, float]:
    """The runner's logits on 256 tokens (prefill 200, then steps) against the Python session's."""
    tokens = token_stream(256)
    (work / "parity.txt").write_text(" ".join(map(str, tokens)))
    subprocess.run([str(runner), str(artifact), "-q", tag, "--dump-logits", str(work / "parity.bin"), "--tokens",
                    str(work / "parity.txt"), "--prefill", "200"], check=True, capture_output=True)
    ours = np.fromfile(work / "parity.bin", np.float32).reshape(256, -1)
    session = load(artifact, "executorch", quantization=tag)
    logits, state = session.prefill(tokens[None, :200], session.init_state(1))
    pieces = [logits[0]]
    for t in tokens[200:]:
        step, state = session.step(np.asarray([t]), state)
        pieces.append(step)
    python = np.concatenate(pieces)
    return {"max_abs": float(np.abs(ours - python).max()), "top1": float((ours.argmax(-1) == python.argmax(-1)).mean())}


def bench_python(artifact: Path, tag: str, config: BenchConfig, stream: np.ndarray) -> dict[str, Any]:
    result = bench_stepper(SessionStepper(load(artifact, "executorch", quantization=tag)), config, stream)
    return result.to_dict()


def verdict(cpp: dict[str, Any], python: dict[str, Any]) -> list[str]:
    lines = []
    peak = cpp["info"]["process_peak_rss_bytes"] / 2 ** 20      # the whole process, loading included
    lines.append(f"peak RSS {peak:.1f} MiB: " + ("meets" if peak < RSS_MAX_MIB else
                 f"MISSES the {RSS_MAX_MIB:.0f} MiB target by {peak - RSS_MAX_MIB:.1f} MiB ({peak / RSS_MAX_MIB:.2f}x)"))
    for ours, theirs in zip(cpp["contexts"], python["contexts"]):
        ratio = ours["p50_ms"] / theirs["p50_ms"]
        lines.append(f"step p50 @{format_context(ours['context'])}: {ours['p50_ms']:.3f} ms vs Python "
                     f"{theirs['p50_ms']:.3f} ms ({ratio:.2f}x): " +
                     ("meets" if ratio <= 1 else f"MISSES (slower by {100 * (ratio - 1):.0f}%)"))
    return lines


def batch_bound(artifact: Path, tag: str) -> int:
    """The largest batch the artifact's executorch/<tag> program was compiled for (it plans memory for it)."""
    return int(read_manifest(artifact).variant("executorch", tag).info["batch"]["max"])


def render(report: dict[str, Any]) -> str:
    out = ["# C++ runner vs the Python ExecuTorch session", "",
           f"Command: `{report['command']}`  ", f"Date: {report['date']}  ",
           f"Machine: {report['machine'].get('cpu')}, {report['machine'].get('cores')} cores; "
           f"load average before: {report['load_before']}  ",
           f"Versions: {json.dumps(report['machine'].get('libraries', {}))}", "",
           "ExecuTorch allocates each method's planned activation memory for the program's batch bound when the "
           "method loads (`chunk`'s, for a whole chunk of tokens, dominates), so the bound the artifact was exported "
           "with (`seqedge export --max-batch`) sets most of the runner's peak RSS beyond the weights.", ""]
    for run in report["runs"]:
        cpp, py = run["cpp"], run["python"]
        out += [f"## executorch/{run['tag']}, batch bound {run['max_batch']}", "",
                f"Artifact: {run['artifact']} (fingerprint {run['fingerprint']}).", "",
                f"Parity first (256 tokens, prefill 200 then steps): max |dlogit| {run['parity']['max_abs']:.2e}, "
                f"top-1 {run['parity']['top1']:.0%}.", "",
                "| context | C++ p50 ms | C++ p99 ms | Python p50 ms | Python p99 ms |", "|---|---|---|---|---|"]
        for a, b in zip(cpp["contexts"], py["contexts"]):
            out.append(f"| {format_context(a['context'])} | {a['p50_ms']:.3f} | {a['p99_ms']:.3f} | "
                       f"{b['p50_ms']:.3f} | {b['p99_ms']:.3f} |")
        out += ["", f"| | C++ runner | Python session |", "|---|---|---|",
                f"| prefill tokens/s | {cpp['prefill_tokens_per_s']:.0f} | {py['prefill_tokens_per_s']:.0f} |",
                f"| time to first token ms (128-token prompt) | {cpp['ttft_ms']:.1f} | {py['ttft_ms']:.1f} |",
                f"| token-by-token tokens/s | {cpp['stepwise_tokens_per_s']:.0f} | {py['stepwise_tokens_per_s']:.0f} |",
                f"| peak RSS MiB, after loading | {cpp['peak_rss_bytes'] / 2 ** 20:.1f} | "
                f"{py['peak_rss_bytes'] / 2 ** 20:.1f} |",
                f"| peak RSS MiB of the process | {cpp['info']['process_peak_rss_bytes'] / 2 ** 20:.1f} | |",
                f"| load s | {cpp['load_s']:.3f} | |", "", "Targets:", ""]
        out += [f"- {line}" for line in run["verdict"]] + [""]
    return "\n".join(out)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("artifacts", type=Path, nargs="+", metavar="ARTIFACT",
                        help="artifact directories with an executorch variant (one per batch bound to compare)")
    parser.add_argument("--quantize", default="fp32", help="executorch variants to measure, comma-separated")
    parser.add_argument("--build", type=Path, default=REPO / "build" / "runner-cpp", help="CMake build directory")
    parser.add_argument("--quick", action="store_true", help="smoke test; results to a temp dir")
    args = parser.parse_args()
    params = QUICK if args.quick else FULL
    out_dir = Path(tempfile.mkdtemp()) if args.quick else RESULTS
    load_before = os.getloadavg()
    runner = build_runner(REPO / "runners" / "cpp", args.build)
    config = BenchConfig(contexts=parse_contexts(params["contexts"]), steps=params["steps"], warmup=params["warmup"],
                         prefill_tokens=params["prefill_tokens"], stepwise_tokens=256, ttft_prompt=128)
    stream = token_stream(max(config.stream_length(), params["prefill_tokens"], 256))
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for artifact in args.artifacts:
            fingerprint = read_manifest(artifact).fingerprint
            for tag in args.quantize.split(","):
                bound = batch_bound(artifact, tag)
                parity = check_parity(runner, artifact, tag, work)
                cpp = bench_native(runner, artifact, tag, config, stream).to_dict()
                python = bench_python(artifact, tag, config, stream)
                runs.append({"artifact": str(artifact), "fingerprint": fingerprint, "tag": tag, "max_batch": bound,
                             "parity": parity, "cpp": cpp, "python": python, "verdict": verdict(cpp, python)})
                print(f"{artifact} executorch/{tag} (batch bound {bound}):\n  " + "\n  ".join(runs[-1]["verdict"]))
    report = {"command": command_line(), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
              "machine": machine_info(), "load_before": [round(x, 2) for x in load_before], "params": params,
              "rss_target_mib": RSS_MAX_MIB, "runs": runs}
    (out_dir / "runner_cpp.json").write_text(json.dumps(report, indent=2) + "\n")
    (out_dir / "runner_cpp.md").write_text(render(report))
    print(f"wrote {out_dir / 'runner_cpp.json'} and {out_dir / 'runner_cpp.md'}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
