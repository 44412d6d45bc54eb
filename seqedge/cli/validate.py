"""``seqedge validate``: parity of every runtime and quantization of an artifact against the float64 reference."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .options import add_json, add_model, add_quiet, flatten, model_path, runtime_names, runtimes_type

EXIT_TOLERANCE_MISSED = 1


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "validate", help="check parity of every runtime x quantization against the float64 reference",
        description="Run one token stream of real text (prefill, then steps, state carried) through every "
                    "runtime and quantization present in the artifact and compare with the float64 torch "
                    "reference: max |logit diff|, top-1 agreement, KL, state relative error, bits per byte, and "
                    "the error over the first vs last 100 tokens. Exit code 1 when a tolerance is missed "
                    "(fp32: max |diff| <= 1e-4; fp16: top-1 >= 99%; int8/int4: top-1 >= 95% and bpb within 3%). "
                    "Runtimes that cannot run here are listed with the reason.")
    add_model(p, "artifact directory written by `seqedge export` (required)")
    p.add_argument("--runtimes", type=runtimes_type(), action="append", default=None, metavar="NAMES",
                   help=f"comma-separated runtimes ({runtime_names()}; a target name such as onnx names its "
                        "runtime; default: all)")
    p.add_argument("--tokens", type=int, default=1024, help="length of the token stream (default: 1024)")
    p.add_argument("--report", metavar="FILE", default=None,
                   help="where to save the full JSON report (default: DIR.validate.json next to DIR)")
    add_json(p, "the full report (instead of the table)")
    add_quiet(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from seqedge.evaluate.validation import format_table, validate_artifact
    from seqedge.fsutil import write_json_atomic

    artifact = model_path(args)
    if artifact is None:
        raise ValueError("name the artifact to validate: seqedge validate -m DIR")
    progress = ((lambda m: None) if args.quiet or args.json
                else (lambda m: print(f"[seqedge validate] {m}", file=sys.stderr, flush=True)))
    path = _report_path(artifact, args.report)        # checked before the run, not after it
    result = validate_artifact(artifact, flatten(args.runtimes), tokens=args.tokens, progress=progress)
    write_json_atomic(path, result)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(format_table(result))
        print(f"saved {path}")
    if not any(r["status"] != "unavailable" for r in result["results"]):
        raise ValueError(f"none of the requested runtimes can run {artifact} here (see the table)")
    return 0 if result["passed"] else EXIT_TOLERANCE_MISSED


def _report_path(artifact: str, report: str | None) -> Path:
    """Where the JSON report goes (``DIR.validate.json`` next to DIR by default, also for ``.``), checked for
    writing now, so an unwritable report fails before the run (OSError: exit 3)."""
    from seqedge.fsutil import prepare_output

    folder = Path(artifact).resolve()
    return prepare_output(Path(report) if report else folder.with_name(folder.name + ".validate.json"))
