"""Where and how a measurement ran: the metadata every benchmark and latency report records beside its numbers.

One helper for the ``seqedge bench`` reports and every maintained script in ``benchmarks/``: machine (CPU model,
cores, memory, load, from psutil; the CUDA card when asked), library versions (from package metadata, so nothing
heavy is imported), the git commit of the source tree, the command line and the date.
"""

from __future__ import annotations

import datetime as _dt
import os
import platform
import shlex
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any, Sequence

import psutil

LIBRARIES = ("seqedge", "numpy", "onnxruntime", "onnx", "executorch", "torch", "torchao", "coremltools",
             "tensorrt", "tensorrt_rtx", "triton", "matplotlib")
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")
_REPO = Path(__file__).resolve().parents[2]


def cpu_model() -> str:
    """The CPU's model name (Linux /proc/cpuinfo, macOS sysctl), else what :mod:`platform` knows.

    psutil reports counts, frequencies and load but not the model name, so this one fact is read directly.
    """
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    if sys.platform == "darwin":
        try:
            return subprocess.run(["sysctl", "-n", "machdep.cpu.brand_string"], capture_output=True, text=True,
                                  timeout=5).stdout.strip() or platform.processor()
        except (OSError, subprocess.SubprocessError):
            pass
    return platform.processor() or platform.machine()


def library_versions(names: Sequence[str] = LIBRARIES) -> dict[str, str]:
    """Installed versions of ``names`` (read from package metadata: nothing is imported); absent ones are left out."""
    out = {}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return out


def load_average() -> list[float]:
    """The 1, 5 and 15 minute load averages (psutil emulates them where the OS has none)."""
    return [round(x, 2) for x in psutil.getloadavg()]


def git_commit(repo: Path = _REPO) -> str | None:
    """The commit of the source tree (with ``-dirty`` when it has uncommitted changes), None outside a git checkout."""
    try:
        out = subprocess.run(["git", "-C", str(repo), "describe", "--always", "--dirty", "--abbrev=12"],
                             capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return (out.stdout.strip() or None) if out.returncode == 0 else None


def command_line() -> str:
    """The command that is running, shell-quoted, as the user could retype it."""
    prog = Path(sys.argv[0]).name if sys.argv and sys.argv[0] else "python"
    if prog == "__main__.py" or prog.endswith(".py"):
        prog = f"python {os.path.relpath(sys.argv[0])}"
    return " ".join([prog, *map(shlex.quote, sys.argv[1:])])


def utc_now() -> str:
    """The current time, UTC, ISO 8601 to the second."""
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def usable_cores() -> int:
    """The cores this process may run on (its affinity; all of them where there is no affinity API, as on macOS)."""
    try:
        return len(psutil.Process().cpu_affinity())
    except (AttributeError, psutil.Error):
        return psutil.cpu_count() or 1


def machine_info() -> dict[str, Any]:
    """CPU model, cores (and those this process may use), memory, OS, Python, library versions, load average."""
    usable = usable_cores()
    return {
        "cpu": cpu_model(), "cores": psutil.cpu_count(), "physical_cores": psutil.cpu_count(logical=False),
        "usable_cores": usable, "memory_bytes": psutil.virtual_memory().total,
        "os": platform.platform(), "python": platform.python_version(), "libraries": library_versions(),
        "thread_env": {k: os.environ[k] for k in THREAD_VARIABLES if k in os.environ},
        "load_average": load_average(),
    }


def cuda_card() -> dict[str, Any]:
    """Name, compute capability and driver-side CUDA version of the current CUDA card (torch is imported here)."""
    import torch

    index = torch.cuda.current_device()
    major, minor = torch.cuda.get_device_capability(index)
    return {"card": torch.cuda.get_device_name(index), "compute_capability": f"{major}.{minor}",
            "cuda": torch.version.cuda}


def run_metadata(card: bool = False, **extra: Any) -> dict[str, Any]:
    """Everything a recorded result carries: ``date`` (UTC), ``command``, ``commit``, ``machine`` and, with
    ``card=True``, the CUDA ``card``; ``extra`` fields (shapes, notes) are added as given."""
    meta: dict[str, Any] = {"date": utc_now(), "command": command_line(), "commit": git_commit(),
                            "machine": machine_info()}
    if card:
        meta.update(cuda_card())
    meta.update(extra)
    return meta


def metadata_markdown(meta: dict[str, Any]) -> list[str]:
    """Markdown bullet lines for :func:`run_metadata`'s output (machine, versions, commit, command, date)."""
    m = meta["machine"]
    lines = []
    if "card" in meta:
        lines.append(f"- card: {meta['card']} (compute capability {meta['compute_capability']}, CUDA {meta['cuda']})")
    lines += [f"- CPU: {m['cpu']} ({m['cores']} cores, {m['usable_cores']} usable); load average "
              f"{', '.join(f'{x:.2f}' for x in m['load_average'])}",
              f"- versions: Python {m['python']}, " + ", ".join(f"{k} {v}" for k, v in m["libraries"].items()),
              f"- commit: {meta.get('commit') or 'unknown'}; date (UTC): {meta['date']}",
              f"- command: `{meta['command']}`"]
    return lines
