"""Entry point of ``seqedge``: builds the subcommand parsers and turns user errors into one line + exit code."""

from __future__ import annotations

import argparse
import sys
from importlib import import_module
from typing import Sequence

import seqedge

# subcommand -> module with ``add_parser(subparsers)`` and ``run(args) -> int``; modules stay import-light.
SUBCOMMANDS: dict[str, str] = {
    "generate": "seqedge.cli.generate",
    "info": "seqedge.cli.info",
    "export": "seqedge.cli.export",
    "validate": "seqedge.cli.validate",
    "train": "seqedge.cli.train",
    "bench": "seqedge.cli.bench",
    "import": "seqedge.cli.import_",
}

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130


class CLIError(Exception):
    """A user-facing failure: printed as one line, exit code 2."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="seqedge",
        description="Sequential Attention language models from training to devices: train, export to ONNX "
                    "Runtime / ExecuTorch / Core ML / TensorRT, validate parity, measure per-token latency.",
    )
    parser.add_argument("--version", action="version", version=f"seqedge {seqedge.__version__}")
    parser.add_argument("--traceback", action="store_true", help="show the full traceback on errors (debugging)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, module in SUBCOMMANDS.items():
        import_module(module).add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return EXIT_USER_ERROR
    try:
        return int(args.run(args) or 0)
    except KeyboardInterrupt:
        print("seqedge: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except (CLIError, ValueError, FileNotFoundError, FileExistsError, ImportError, NotADirectoryError,
            RuntimeError) as err:
        if args.traceback:
            raise
        message = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        print(f"seqedge {args.command}: error: {message}", file=sys.stderr)
        return EXIT_USER_ERROR


if __name__ == "__main__":
    sys.exit(main())
