"""Shared by the demos: open an artifact on a runtime, exporting the model to a temporary directory if needed."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def export_for(runtime: str, quantize: str, out: Path, checkpoint: str | None = None) -> Path:
    """Run ``seqedge export`` for the target that ``runtime`` runs (as a user would), into ``out``."""
    from seqedge.runtimes.base import get_runtime

    target = get_runtime(runtime).target
    cmd = [sys.executable, "-m", "seqedge.cli.main", "export", *([checkpoint] if checkpoint else []),
           "--target", target, "--quantize", quantize, "--out", str(out)]
    print(f"[exporting {'the bundled model' if checkpoint is None else checkpoint} for {runtime} "
          f"({target}, {quantize}) to {out}]", file=sys.stderr)
    if subprocess.run(cmd).returncode != 0:
        raise SystemExit(f"export failed: seqedge {' '.join(cmd[3:])}")
    return out


def open_session(artifact: str | None, runtime: str, quantize: str, checkpoint: str | None, tmp: str):
    """A Session on ``runtime`` for ``artifact`` (or a fresh export under ``tmp``) at ``quantize``."""
    import seqedge

    path = Path(artifact) if artifact else export_for(runtime, quantize, Path(tmp) / "artifact", checkpoint)
    return seqedge.load(path, runtime=runtime, quantization=quantize)
