"""The options every subcommand spells the same way: ``-m/--model``, ``-o/--out``, ``-q/--quiet``, ``--json``,
comma-separated lists, quantization recipes and runtime names, and the 0.1 spellings kept as hidden aliases.

A deprecated spelling still works; it prints one line to stderr naming the new one.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Callable, Sequence

DEPRECATED = "seqedge: note: {old} is deprecated and will be removed; use {new}"


def note_deprecated(old: str, new: str) -> None:
    """One line to stderr: ``old`` still works, ``new`` is the spelling to use."""
    print(DEPRECATED.format(old=old, new=new), file=sys.stderr)


def csv_list(choices: Sequence[str] | None = None, what: str = "value",
             canonical: Callable[[str], str] | None = None) -> Callable[[str], list[str]]:
    """An argparse type: ``"a,b"`` -> ``["a", "b"]``; with ``choices`` (or ``canonical``, which raises ValueError
    for an unknown name) each item is checked, and an empty list is refused."""
    def parse(text: str) -> list[str]:
        items = [t.strip() for t in text.split(",") if t.strip()]
        if not items:
            raise argparse.ArgumentTypeError(f"expected a comma-separated list of {what}s, got {text!r}")
        if canonical is not None:
            for item in items:
                try:
                    canonical(item)
                except ValueError as err:
                    raise argparse.ArgumentTypeError(str(err)) from None
        elif choices is not None:
            bad = [t for t in items if t not in choices]
            if bad:
                raise argparse.ArgumentTypeError(f"invalid {what} {','.join(bad)}; choose from {', '.join(choices)} "
                                                 "(comma-separated)")
        return items
    return parse


def add_model(p: argparse.ArgumentParser, what: str, *, positional: bool = True,
              legacy_flags: Sequence[str] = ()) -> None:
    """``-m/--model DIR``, plus the 0.1 spellings (a positional DIR, ``--checkpoint``, ``--artifact``) hidden."""
    p.add_argument("-m", "--model", metavar="DIR", default=None, help=what)
    if positional:
        p.add_argument("legacy_model", nargs="?", metavar="DIR", default=None, help=argparse.SUPPRESS)
    for flag in legacy_flags:
        p.add_argument(flag, dest="legacy_" + flag.lstrip("-"), metavar="DIR", default=None, help=argparse.SUPPRESS)


def model_path(args: argparse.Namespace) -> str | None:
    """The directory named by ``-m/--model`` or by one 0.1 spelling (with its deprecation note); None when none
    was given. Two spellings at once is a usage error."""
    given = [("-m/--model", args.model)] if args.model else []
    if getattr(args, "legacy_model", None):
        given.append(("a positional DIR", args.legacy_model))
    for flag in ("checkpoint", "artifact"):
        if getattr(args, "legacy_" + flag, None):
            given.append((f"--{flag}", getattr(args, "legacy_" + flag)))
    if len(given) > 1:
        raise ValueError(f"the model is named twice ({' and '.join(g[0] for g in given)}); pass only -m/--model")
    if not given:
        return None
    spelling, path = given[0]
    if spelling != "-m/--model":
        note_deprecated(spelling, "-m/--model DIR")
    return path


def is_artifact(path: str | Path) -> bool:
    """Whether ``path`` is an exported artifact (it has manifest.json) rather than a checkpoint."""
    return (Path(path) / "manifest.json").is_file()


def add_out(p: argparse.ArgumentParser, help: str, *, required: bool = False, default: str | None = None) -> None:
    p.add_argument("-o", "--out", metavar="DIR", required=required, default=default, help=help)


def add_quiet(p: argparse.ArgumentParser, help: str = "no progress lines") -> None:
    p.add_argument("-q", "--quiet", action="store_true", help=help)


def add_json(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("--json", action="store_true", help=f"print {what} as JSON on stdout (nothing else on stdout)")


def recipes_type(what: str = "quantization recipe") -> Callable[[str], list[str]]:
    """Comma-separated quantization recipes (fp32, fp16, int8-dynamic, int4-mlp, int4-all; 0.1 names and tags
    accepted)."""
    from seqedge.export.quantization import canonical_recipe

    return csv_list(what=what, canonical=canonical_recipe)


def canonical_recipes(names: Sequence[str]) -> list[str]:
    """Recipe names of ``names``, with a deprecation note for each 0.1 name (none, int8, int4)."""
    from seqedge.export.quantization import RECIPE_ALIASES, canonical_recipe

    for name in names:
        if name in RECIPE_ALIASES:
            note_deprecated(f"quantization {name!r}", f"{RECIPE_ALIASES[name]!r}")
    return list(dict.fromkeys(canonical_recipe(n) for n in names))


def runtimes_type() -> Callable[[str], list[str]]:
    """Comma-separated runtime names (a target name such as onnx names its runtime); the library checks them
    against the runtime registry."""
    return csv_list(what="runtime")


def add_quantize(p: argparse.ArgumentParser) -> None:
    """``--quantize RECIPE`` picking an artifact's variant, and the 0.1 spelling ``--quantization`` hidden."""
    from seqedge.export.quantization import RECIPES

    p.add_argument("--quantize", default=None, metavar="RECIPE",
                   help=f"the artifact's variant, by the recipe that wrote it: {', '.join(RECIPES)} (default: fp32, "
                        "or the only one)")
    p.add_argument("--quantization", dest="legacy_quantization", default=None, help=argparse.SUPPRESS)


def legacy_quantization(args: argparse.Namespace) -> str | None:
    """The value of the 0.1 spelling ``--quantization`` (with its deprecation note), or None; both spellings at
    once is an error."""
    if not args.legacy_quantization:
        return None
    note_deprecated("--quantization", "--quantize")
    if args.quantize:
        raise ValueError("pass either --quantize or --quantization, not both")
    return args.legacy_quantization


def add_library(p: argparse.ArgumentParser) -> None:
    """``--library PATH``: run the executorch runtime through seqedge's C++ runner library."""
    p.add_argument("--library", metavar="PATH", default=None,
                   help="executorch only: run the program through seqedge's C++ runner library (libseqedge.so, "
                        "built from runners/cpp: README, 'Native runner') instead of ExecuTorch's Python bindings")


def runtime_or_default(args: argparse.Namespace, fallback: str) -> str:
    """``--runtime`` as given, else executorch where ``--library`` was given, else ``fallback``."""
    return args.runtime or ("executorch" if getattr(args, "library", None) else fallback)


def runtime_options(args: argparse.Namespace, runtime: str) -> dict[str, Any]:
    """The runtime options the command line gave (``--library``), checked against ``runtime``."""
    if getattr(args, "library", None) is None:
        return {}
    if runtime != "executorch":
        raise ValueError(f"--library runs the executorch runtime, not {runtime}; pass --runtime executorch")
    return {"library": args.library}


def runtime_names() -> str:
    """Every runtime's name, for help texts: the one table commands read them from (seqedge.targets)."""
    from seqedge.targets import RUNTIMES

    return ", ".join(RUNTIMES)


def recipe_names() -> str:
    """Every quantization recipe's name, for help texts (seqedge.export.quantization.RECIPES)."""
    from seqedge.export.quantization import RECIPES

    return ", ".join(RECIPES)


def flatten(values: Sequence[Sequence[str]] | None) -> list[str] | None:
    """``[["a", "b"], ["c"]]`` (a list option given more than once, or space-separated) -> ``["a", "b", "c"]``."""
    if values is None:
        return None
    return [item for value in values for item in value]
