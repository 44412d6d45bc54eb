"""Directories that appear whole or not at all, and never take a user's files with them.

``make_temp_dir`` creates the hidden sibling a checkpoint or artifact is built in (with a marker file);
``replace_dir`` gives the finished one the permissions the umask gives (not mkdtemp's 0700), moves it into
place and removes only the files the old one is known to own; ``sweep_stale_temp_dirs`` removes temp dirs a
killed process left behind (only those of our naming with our marker, and only once they are old);
``terminate_as_interrupt`` turns SIGTERM into the same KeyboardInterrupt cleanup as Ctrl-C.
"""

from __future__ import annotations

import contextlib
import errno
import glob
import json
import os
import shutil
import signal
import tempfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterable, Iterator

TEMP_MARKER = ".seqedge-tmp"          # file inside every temp dir made here: what a sweep may remove
STALE_AFTER_S = 6 * 3600.0            # an export running longer than this is not expected on any machine


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def follow_umask(path: Path) -> None:
    """Give ``path`` (and, for a directory, everything in it) the modes a plain ``mkdir``/``open`` would under
    the current umask: libraries that write through private temp files (mkdtemp, mkstemp, safetensors) leave
    0700/0600 behind, which would hide an artifact from the group a user shares it with."""
    mask = _umask()
    for here, dirs, files in os.walk(path) if path.is_dir() else [(str(path.parent), [], [path.name])]:
        if path.is_dir():
            os.chmod(here, 0o777 & ~mask)
        for name in files:
            target = Path(here) / name
            if not target.is_symlink():
                os.chmod(target, 0o666 & ~mask)


def prepare_output(path: Path, *, directory: bool = False) -> Path:
    """Create the folder an output will be written to and check it can be written, before any long work:
    ``path`` is that folder (``directory=True``) or a file in it. OSError (the CLI's exit 3) if not."""
    folder = path if directory else path.parent
    folder.mkdir(parents=True, exist_ok=True)
    if not directory and path.is_dir():
        raise IsADirectoryError(errno.EISDIR, "the output file is a directory", str(path))
    target = folder if directory or not path.exists() else path
    if not os.access(target, os.W_OK):
        raise PermissionError(errno.EACCES, "cannot write here", str(target))
    return path


def temp_prefix(dst: Path) -> str:
    return f".{dst.name}.tmp-"


def make_temp_dir(dst: Path) -> Path:
    """A new directory next to ``dst`` (``.NAME.tmp-XXXX``, private until :func:`replace_dir` publishes it)
    holding only the marker file."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=dst.parent, prefix=temp_prefix(dst)))
    (tmp / TEMP_MARKER).write_text(f"{os.getpid()}\n")
    return tmp


def sweep_stale_temp_dirs(dst: Path, max_age_s: float = STALE_AFTER_S) -> list[Path]:
    """Remove ``.NAME.tmp-*`` siblings of ``dst`` that carry the marker and were last modified more than
    ``max_age_s`` ago (a killed export's leftovers). Anything else is left alone. Returns what was removed."""
    removed = []
    if not dst.parent.is_dir():
        return removed
    now = time.time()
    for candidate in dst.parent.glob(glob.escape(temp_prefix(dst)) + "*"):
        marker = candidate / TEMP_MARKER
        if candidate.is_symlink() or not candidate.is_dir() or not marker.is_file():
            continue
        if now - max(candidate.stat().st_mtime, marker.stat().st_mtime) < max_age_s:
            continue
        shutil.rmtree(candidate, ignore_errors=True)
        removed.append(candidate)
    return removed


def foreign_entries(directory: Path, owned: Iterable[str]) -> list[str]:
    """Entries under ``directory`` (relative POSIX paths) that are neither an ``owned`` file nor a folder on the
    way to one; symlinks count as foreign files."""
    owned = set(owned)
    folders = {p.rsplit("/", i)[0] for p in owned for i in range(1, p.count("/") + 1)}
    foreign = []
    for here, dirs, files in os.walk(directory):
        rel = Path(here).relative_to(directory)
        for name in dirs + files:
            path = (rel / name).as_posix()
            real_dir = name in dirs and not (Path(here) / name).is_symlink()
            if (real_dir and path in folders) or (not real_dir and path in owned):
                continue
            foreign.append(path + "/" if real_dir else path)
        dirs[:] = [d for d in dirs if (rel / d).as_posix() in folders and not (Path(here) / d).is_symlink()]
    return sorted(foreign)


def remove_owned(directory: Path, owned: Iterable[str]) -> None:
    """Delete the ``owned`` files of ``directory``, then its folders that became empty; nothing else."""
    owned = sorted(set(owned))
    for rel in owned:
        path = directory / rel
        if path.is_file() or path.is_symlink():
            path.unlink()
    folders = sorted({Path(rel).parent for rel in owned} | {Path(".")}, key=lambda p: -len(p.parts))
    for folder in folders:
        for parent in [folder, *folder.parents]:
            try:
                (directory / parent).rmdir()
            except OSError:
                break                      # not empty (or already gone): a foreign file stays where it was


def replace_dir(src: Path, dst: Path, owned: Iterable[str]) -> None:
    """Move the complete directory ``src`` to ``dst``. An existing ``dst`` is swapped out only then (and put back
    if the final rename fails), so ``dst`` always holds the old or the new directory; of the old one only the
    ``owned`` files (relative paths) and their folders are deleted. FileExistsError, before anything moves, if
    the old ``dst`` holds anything else."""
    owned = list(owned)
    (src / TEMP_MARKER).unlink(missing_ok=True)        # the finished directory is no longer a temp dir
    follow_umask(src)
    if not dst.exists() and not dst.is_symlink():
        os.replace(src, dst)
        return
    if dst.is_symlink() or not dst.is_dir():
        raise FileExistsError(f"{dst} exists and is not a directory; refusing to replace it")
    foreign = foreign_entries(dst, owned)
    if foreign:
        raise FileExistsError(f"{dst} holds files that are not part of it ({', '.join(foreign[:3])}"
                              f"{', ...' if len(foreign) > 3 else ''}); move them away first")
    old = dst.with_name(f".{dst.name}.old-{os.getpid()}")
    os.replace(dst, old)
    try:
        os.replace(src, dst)
    except BaseException:
        os.replace(old, dst)
        raise
    remove_owned(old, owned)


@contextmanager
def terminate_as_interrupt() -> Iterator[None]:
    """Within the block, SIGTERM raises KeyboardInterrupt, so ``kill`` runs the same cleanup as Ctrl-C (only in
    the main thread, where Python delivers signals; elsewhere the block runs unchanged)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum, frame):
        raise KeyboardInterrupt(f"terminated by signal {signum}")

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def write_json_atomic(path: "str | os.PathLike", data, *, indent: "int | None" = 2) -> Path:
    """Write ``data`` as JSON to ``path`` through a temporary file in the same folder and ``os.replace``, so a
    reader (or a crash) never sees half a file; the parent folder is created. Returns the path."""
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
