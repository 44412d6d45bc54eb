"""``seqedge bench``: per-token latency of an exported artifact in every runtime that can run it here."""

from __future__ import annotations

import argparse
import sys


def _names(values: list[str] | None) -> list[str] | None:
    """``["onnxruntime,torch", "executorch"]`` -> ``["onnxruntime", "torch", "executorch"]``."""
    if values is None:
        return None
    names = [n.strip() for v in values for n in v.split(",") if n.strip()]
    return names or None


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "bench", help="measure per-token latency, prefill speed and memory of an artifact",
        description="Per-token step latency (p50/p90/p99) after reaching each context length by prefill, prefill "
                    "tokens/s against token-by-token, time to first token, peak RSS and artifact size, for every "
                    "runtime and quantization of the artifact that can run on this machine (the others are listed "
                    "with the reason). Writes bench.json, bench.md and bench.png (latency and memory vs context) "
                    "under --out and prints the table. Exit code 1 when a runtime that can run here failed, 2 "
                    "when nothing could be measured.")
    p.add_argument("artifact", metavar="DIR", help="artifact directory written by `seqedge export`")
    p.add_argument("--runtimes", nargs="+", metavar="NAME",
                   help="runtimes to measure, space- or comma-separated (default: every runtime)")
    p.add_argument("--quantize", nargs="+", metavar="SCHEME",
                   help="quantizations to measure: none fp16 int8 int4 (default: every variant present)")
    p.add_argument("--contexts", default="0,1k,16k,64k",
                   help="context lengths reached by prefill before timing steps, e.g. 0,1k,16k,64k (k = 1024; "
                        "default: %(default)s; a 64k prefill takes tens of seconds per runtime on 2 cores)")
    p.add_argument("--steps", type=int, default=100, help="timed steps per context (default: %(default)s)")
    p.add_argument("--warmup", type=int, default=5, help="untimed steps before them (default: %(default)s)")
    p.add_argument("--sweeps", type=int, default=1,
                   help="passes over the contexts; each context reports the pass with the lowest p50, which keeps "
                        "another process's load out of the flatness ratio (default: %(default)s)")
    p.add_argument("--prefill-tokens", type=int, default=2048,
                   help="tokens timed through prefill for prefill tokens/s (default: %(default)s)")
    p.add_argument("--stepwise-tokens", type=int, default=256,
                   help="tokens timed one step at a time for token-by-token tokens/s (default: %(default)s)")
    p.add_argument("--ttft-prompt", type=int, default=128,
                   help="prompt length for time to first token (default: %(default)s)")
    p.add_argument("--out", metavar="DIR", default="seqedge-bench",
                   help="where to write bench.json/.md/.png (default: ./%(default)s)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from seqedge.evaluate.latency import BenchConfig, bench_artifact, parse_contexts
    from seqedge.evaluate.latency_report import BenchReport, render_markdown, write_report
    from seqedge.fsutil import prepare_output

    config = BenchConfig(contexts=parse_contexts(args.contexts), steps=args.steps, warmup=args.warmup,
                         prefill_tokens=args.prefill_tokens, stepwise_tokens=args.stepwise_tokens,
                         ttft_prompt=args.ttft_prompt, sweeps=args.sweeps)
    if not Path(args.artifact).is_dir():
        raise FileNotFoundError(f"artifact directory {args.artifact} does not exist (create one with `seqedge export`)")
    prepare_output(Path(args.out), directory=True)          # before the run, not after it
    results, skipped = bench_artifact(args.artifact, config, _names(args.runtimes), _names(args.quantize),
                                      show_progress=not args.no_progress)
    for s in skipped:
        print(f"seqedge bench: not measured: {s.name}: {s.reason}", file=sys.stderr)
    if not results:
        reasons = "; ".join(f"{s.name}: {s.reason}" for s in skipped)
        raise RuntimeError(f"nothing could be measured ({reasons})")
    report = BenchReport(results, skipped, config, artifact=str(Path(args.artifact).resolve()))
    paths = write_report(report, args.out)
    print(render_markdown(report))
    print("wrote " + ", ".join(str(p) for p in paths.values()), file=sys.stderr)
    failed = [s.name for s in skipped if s.failed]
    if failed:
        print(f"seqedge bench: error: {', '.join(failed)} failed (see above); the others were measured",
              file=sys.stderr)
        return 1
    return 0
