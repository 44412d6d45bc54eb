"""Entry point of ``seqedge``: builds the subcommand parsers and turns every failure into one line + exit code.

Exit codes (the same for every subcommand; ``--traceback``, before or after the subcommand, shows the traceback):
0 done; 1 the work ran and its verdict failed (validate out of budget, bench with a failed runtime); 2 usage
error (bad arguments, a path named that does not exist, a bad artifact or checkpoint, a missing library);
3 environment error (any other OSError: permissions, a file where a folder must be, I/O, a full disk);
70 internal error (a bug: please report it with ``--traceback``); 130 interrupted (Ctrl-C, or SIGTERM during
export); 141 the reader of stdout went away (``| head``), which ends quietly.
"""

from __future__ import annotations

import argparse
import os
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
    "serve-web": "seqedge.cli.serve_web",
    "serve": "seqedge.cli.serve",
    "import": "seqedge.cli.import_",
}

EXIT_USER_ERROR = 2
EXIT_ENVIRONMENT = 3
EXIT_INTERNAL = 70
EXIT_INTERRUPTED = 130
EXIT_BROKEN_PIPE = 141
# ArtifactError and CheckpointError are ValueErrors; a missing input path is the caller's mistake, not the system's
USER_ERRORS = (ValueError, ImportError, RuntimeError, FileNotFoundError)


class CLIError(Exception):
    """A user-facing failure: printed as one line, exit code 2."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="seqedge",
        description="Sequential Attention language models from training to devices: train, export to ONNX "
                    "Runtime / ExecuTorch / Core ML / TensorRT, validate parity, measure per-token latency.",
        epilog="exit codes: 0 done, 1 the verdict failed (validate, bench), 2 usage error, 3 environment error "
               "(I/O, permissions), 70 internal error, 130 interrupted, 141 stdout closed. See docs/security.md.",
    )
    parser.add_argument("--version", action="version", version=f"seqedge {seqedge.__version__}")
    parser.add_argument("--traceback", action="store_true", help="show the full traceback on errors (debugging)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, module in SUBCOMMANDS.items():
        import_module(module).add_parser(sub)
        # accepted after the subcommand too; SUPPRESS keeps a missing flag from resetting the top-level one
        sub.choices[name].add_argument("--traceback", action="store_true", default=argparse.SUPPRESS,
                                       help="show the full traceback on errors (debugging)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return EXIT_USER_ERROR
    try:
        code = int(args.run(args) or 0)
        sys.stdout.flush()                   # a closed pipe shows up here, not in Python's exit-time flush
        return code
    except BrokenPipeError:
        _silence_stdout()
        return EXIT_BROKEN_PIPE
    except KeyboardInterrupt:
        print(f"seqedge {args.command}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except (CLIError, *USER_ERRORS) as err:
        return _fail(args, err, EXIT_USER_ERROR)
    except OSError as err:
        return _fail(args, err, EXIT_ENVIRONMENT)
    except Exception as err:  # a bug: still one line, and how to get the details
        return _fail(args, err, EXIT_INTERNAL, prefix=f"internal error ({type(err).__name__}; rerun with "
                                                       "--traceback and report it): ")


def _silence_stdout() -> None:
    """stdout's reader is gone: point stdout at /dev/null so the exit-time flush does not complain either."""
    try:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):     # not a real file (a test's capture): nothing to silence
        pass


def _fail(args: argparse.Namespace, err: BaseException, code: int, prefix: str = "") -> int:
    if args.traceback:
        raise err
    print(f"seqedge {args.command}: error: {prefix}{_one_line(err)}", file=sys.stderr)
    return code


def _one_line(err: BaseException) -> str:
    text = str(err).strip()
    if isinstance(err, OSError) and err.strerror and text.startswith("[Errno"):   # the OS's own wording
        where = " -> ".join(str(f) for f in (err.filename, err.filename2) if f is not None)
        return f"{err.strerror}: {where}" if where else err.strerror
    return text.splitlines()[0] if text else type(err).__name__


if __name__ == "__main__":
    sys.exit(main())
