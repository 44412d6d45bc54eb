"""Atomic replacement of a directory: what checkpoints and artifacts use so no reader ever sees half of one."""

from __future__ import annotations

import os
import shutil
from pathlib import Path


def replace_dir(src: Path, dst: Path) -> None:
    """Move the complete directory ``src`` to ``dst``; an existing ``dst`` is swapped out only then, and put
    back if the final rename fails, so ``dst`` always holds either the old or the new directory."""
    if dst.exists():
        old = dst.with_name(f".{dst.name}.old-{os.getpid()}")
        os.replace(dst, old)
        try:
            os.replace(src, dst)
        except BaseException:
            os.replace(old, dst)
            raise
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(src, dst)
