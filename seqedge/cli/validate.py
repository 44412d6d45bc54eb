"""``seqedge validate``: parity of every runtime and quantization of an artifact against the float64 reference."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

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
    p.add_argument("artifact", metavar="DIR", help="artifact directory written by `seqedge export`")
    p.add_argument("--runtimes", default=None,
                   help="comma-separated runtimes (torch, onnxruntime, executorch, coreml, tensorrt; default: all)")
    p.add_argument("--tokens", type=int, default=1024, help="length of the token stream (default: 1024)")
    p.add_argument("--json", metavar="PATH", default=None,
                   help="where to save the full JSON report (default: DIR.validate.json next to DIR)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from seqedge.evaluate.validation import format_table, validate_artifact

    runtimes = None if args.runtimes is None else [r.strip() for r in args.runtimes.split(",") if r.strip()]
    path = _report_path(args)                # checked before the run, not after it
    result = validate_artifact(args.artifact, runtimes, tokens=args.tokens,
                               progress=lambda m: print(f"[seqedge validate] {m}", file=sys.stderr, flush=True))
    print(format_table(result))
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"saved {path}")
    if not any(r["status"] != "unavailable" for r in result["results"]):
        raise ValueError(f"none of the requested runtimes can run {args.artifact} here (see the table)")
    return 0 if result["passed"] else EXIT_TOLERANCE_MISSED


def _report_path(args: argparse.Namespace) -> Path:
    """Where the JSON report goes (``DIR.validate.json`` next to DIR by default, also for ``.``), checked for
    writing now, so an unwritable report fails before the run (OSError: exit 3)."""
    from seqedge.fsutil import prepare_output

    artifact = Path(args.artifact).resolve()
    return prepare_output(Path(args.json) if args.json else artifact.with_name(artifact.name + ".validate.json"))
