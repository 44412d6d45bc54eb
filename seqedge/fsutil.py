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


def write_json_atomic(path: "str | os.PathLike", data, *, indent: "int | None" = 2) -> Path:
    """Write ``data`` as JSON to ``path`` through a temporary file in the same folder and ``os.replace``, so a
    reader (or a crash) never sees half a file; the parent folder is created. Returns the path."""
    import contextlib
    import json
    import threading

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # a plain open (not mkstemp) so the file gets the umask's usual permissions
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        with open(tmp, "w") as f:
            json.dump(data, f, indent=indent)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return path
