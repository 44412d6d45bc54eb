"""``seqedge bench``: per-token latency of an exported artifact in every runtime that can run it here."""

from __future__ import annotations

import argparse
import sys

from .options import (add_json, add_model, add_out, add_quiet, canonical_recipes, flatten, model_path,
                      note_deprecated, recipe_names, recipes_type, runtime_names, runtimes_type)


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "bench", help="measure per-token latency, prefill speed and memory of an artifact",
        description="Per-token step latency (median p50 and spread, p90, p99 over the timed steps) after reaching "
                    "each context length by prefill, prefill tokens/s against token-by-token, time to first token, "
                    "peak RSS and artifact size, for every runtime and quantization of the artifact that can run "
                    "on this machine (the others are listed with the reason). Writes bench.json, bench.md and "
                    "bench.png (latency and memory vs context) under --out and prints the table. Exit code 1 when "
                    "a runtime that can run here failed, 2 when nothing could be measured.")
    add_model(p, "artifact directory written by `seqedge export` (required)")
    p.add_argument("--runtimes", type=runtimes_type(), nargs="+", action="extend", metavar="NAMES",
                   help=f"runtimes to measure, comma-separated: {runtime_names()} (a target name such as onnx "
                        "names its runtime; default: every runtime)")
    p.add_argument("--quantize", type=recipes_type(), nargs="+", action="extend", metavar="RECIPES",
                   help=f"quantization recipes to measure, comma-separated: {recipe_names()} (default: every "
                        "variant present)")
    p.add_argument("--contexts", default="0,1k,16k,64k",
                   help="context lengths reached by prefill before timing steps, e.g. 0,1k,16k,64k (k = 1024; "
                        "default: %(default)s; a 64k prefill takes tens of seconds per runtime on 2 cores)")
    p.add_argument("--steps", type=int, default=100, help="timed steps per context (default: %(default)s)")
    p.add_argument("--warmup", type=int, default=5, help="untimed steps before them (default: %(default)s)")
    p.add_argument("--sweeps", type=int, default=1,
                   help="passes over the contexts; each context reports the pass with the lowest p50 (labelled "
                        "as a min-of-sweeps figure, beside the median and spread of every pass), which keeps "
                        "another process's load out of the flatness ratio (default: %(default)s)")
    p.add_argument("--prefill-tokens", type=int, default=2048,
                   help="tokens timed through prefill for prefill tokens/s (default: %(default)s)")
    p.add_argument("--stepwise-tokens", type=int, default=256,
                   help="tokens timed one step at a time for token-by-token tokens/s (default: %(default)s)")
    p.add_argument("--ttft-prompt", type=int, default=128,
                   help="prompt length for time to first token (default: %(default)s)")
    p.add_argument("--runner", metavar="PATH",
                   help="the C++ runner binary (seqedge-run) measured as the executorch-cpp runtime (default: "
                        "$SEQEDGE_RUN, else seqedge-run on PATH; build it from runners/cpp)")
    add_out(p, "where to write bench.json/.md/.png (default: ./%(default)s)", default="seqedge-bench")
    add_quiet(p, "no progress bars")
    p.add_argument("--no-progress", dest="legacy_no_progress", action="store_true", help=argparse.SUPPRESS)
    add_json(p, "the report (instead of the Markdown table)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    from seqedge.evaluate.latency import BenchConfig, bench_artifact, parse_contexts
    from seqedge.evaluate.latency_report import BenchReport, render_markdown, write_report
    from seqedge.fsutil import prepare_output

    artifact = model_path(args)
    if artifact is None:
        raise ValueError("name the artifact to measure: seqedge bench -m DIR")
    if args.legacy_no_progress:
        note_deprecated("--no-progress", "-q/--quiet")
        args.quiet = True
    config = BenchConfig(contexts=parse_contexts(args.contexts), steps=args.steps, warmup=args.warmup,
                         prefill_tokens=args.prefill_tokens, stepwise_tokens=args.stepwise_tokens,
                         ttft_prompt=args.ttft_prompt, sweeps=args.sweeps)
    if not Path(artifact).is_dir():
        raise FileNotFoundError(f"artifact directory {artifact} does not exist (create one with `seqedge export`)")
    prepare_output(Path(args.out), directory=True)          # before the run, not after it
    recipes = None if args.quantize is None else canonical_recipes(flatten(args.quantize))
    results, skipped = bench_artifact(artifact, config, flatten(args.runtimes), recipes,
                                      show_progress=not (args.quiet or args.json), runner=args.runner)
    for s in skipped:
        print(f"seqedge bench: not measured: {s.name}: {s.reason}", file=sys.stderr)
    if not results:
        reasons = "; ".join(f"{s.name}: {s.reason}" for s in skipped)
        raise RuntimeError(f"nothing could be measured ({reasons})")
    report = BenchReport(results, skipped, config, artifact=str(Path(artifact).resolve()))
    paths = write_report(report, args.out)
    print(json.dumps(report.to_dict(), indent=2) if args.json else render_markdown(report))
    print("wrote " + ", ".join(str(p) for p in paths.values()), file=sys.stderr)
    failed = [s.name for s in skipped if s.failed]
    if failed:
        print(f"seqedge bench: error: {', '.join(failed)} failed (see above); the others were measured",
              file=sys.stderr)
        return 1
    return 0
