"""Shared by the demos: the model options every demo takes (the CLI's spelling) and a Session on a runtime,
exporting the model to a temporary directory when no artifact is given."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path


def add_model_args(p: argparse.ArgumentParser) -> None:
    """``-m/--model`` (an artifact, or a checkpoint to export; default: the bundled model), ``--runtime`` and
    ``--quantize`` (a recipe), as ``seqedge generate`` spells them; ``--artifact``/``--checkpoint`` still work."""
    from seqedge.cli.options import add_model

    add_model(p, "artifact directory, or a checkpoint to export first (default: export the bundled model to a "
                 "temporary directory)", positional=False, legacy_flags=("--artifact", "--checkpoint"))
    p.add_argument("--runtime", default="onnxruntime",
                   help="onnxruntime, onnxruntime-fused, executorch, coreml, tensorrt or torch; a target name such "
                        "as onnx names its runtime (default: %(default)s)")
    p.add_argument("--quantize", default="fp32",
                   help="recipe to run: fp32, fp16, int8-dynamic, int4-mlp (default: %(default)s)")


def export_for(runtime: str, recipe: str, out: Path, checkpoint: str | None = None) -> Path:
    """Run ``seqedge export`` for the target that ``runtime`` runs (as a user would), into ``out``."""
    from seqedge.runtimes.base import get_runtime

    target = get_runtime(runtime).target
    cmd = [sys.executable, "-m", "seqedge.cli.main", "export", *(["-m", checkpoint] if checkpoint else []),
           "--target", target, "--quantize", recipe, "-o", str(out)]
    print(f"[exporting {'the bundled model' if checkpoint is None else checkpoint} for {runtime} "
          f"({target}, {recipe}) to {out}]", file=sys.stderr)
    if subprocess.run(cmd).returncode != 0:
        raise SystemExit(f"export failed: seqedge {' '.join(cmd[3:])}")
    return out


def open_session(args: argparse.Namespace, tmp: str):
    """A Session on ``args.runtime`` for the artifact ``-m`` names (or a fresh export under ``tmp``) at the recipe
    ``args.quantize``."""
    import seqedge
    from seqedge.cli.options import canonical_recipes, is_artifact, model_path
    from seqedge.export.quantization import recipe_tag
    from seqedge.targets import resolve_runtime

    runtime = resolve_runtime(args.runtime)
    recipe = canonical_recipes([args.quantize])[0]
    path = model_path(args)
    if path is None or not is_artifact(path):
        path = export_for(runtime, recipe, Path(tmp) / "artifact", path)
    return seqedge.load(path, runtime=runtime, quantization=recipe_tag(recipe))
