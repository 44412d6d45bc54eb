"""Reports of latency runs: the machine they ran on, JSON, a Markdown table and a PNG plot of latency vs context.

matplotlib is imported lazily (Agg backend) so the harness itself needs only numpy.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import shlex
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from .latency import BenchConfig, RunResult, Skipped, format_context

LIBRARIES = ("seqedge", "numpy", "onnxruntime", "onnx", "executorch", "torch", "torchao", "coremltools",
             "tensorrt", "tensorrt_rtx", "matplotlib")
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


def cpu_model() -> str:
    """The CPU's model name (Linux /proc/cpuinfo, macOS sysctl), else what platform knows."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    if sys.platform == "darwin":
        import subprocess

        try:
            return subprocess.run(["sysctl", "-n", "machdep.cpu.brand_string"], capture_output=True, text=True,
                                  timeout=5).stdout.strip() or platform.processor()
        except (OSError, subprocess.SubprocessError):
            pass
    return platform.processor() or platform.machine()


def _memory_total() -> int | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def library_versions(names: Sequence[str] = LIBRARIES) -> dict[str, str]:
    """Installed versions of the libraries that matter to latency (read from metadata: nothing is imported)."""
    out = {}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return out


def machine_info() -> dict[str, Any]:
    """CPU model, cores (and those this process may use), memory, OS, Python, library versions, load average."""
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    info: dict[str, Any] = {
        "cpu": cpu_model(), "cores": os.cpu_count(), "usable_cores": usable, "memory_bytes": _memory_total(),
        "os": platform.platform(), "python": platform.python_version(), "libraries": library_versions(),
        "thread_env": {k: os.environ[k] for k in THREAD_VARIABLES if k in os.environ},
    }
    if hasattr(os, "getloadavg"):
        info["load_average"] = [round(x, 2) for x in os.getloadavg()]
    return info


def command_line() -> str:
    """The command that is running, shell-quoted, as the user could retype it."""
    prog = Path(sys.argv[0]).name if sys.argv and sys.argv[0] else "python"
    if prog == "__main__.py" or prog.endswith(".py"):
        prog = f"python {os.path.relpath(sys.argv[0])}"
    return " ".join([prog, *map(shlex.quote, sys.argv[1:])])


@dataclass
class BenchReport:
    """Everything one benchmark run produced, with where and how it ran."""

    results: list[RunResult]
    skipped: list[Skipped]
    config: BenchConfig
    title: str = "seqedge per-token latency"
    artifact: str | None = None
    machine: dict[str, Any] = field(default_factory=machine_info)
    date: str = field(default_factory=lambda: _dt.datetime.now().astimezone().isoformat(timespec="seconds"))
    command: str = field(default_factory=command_line)
    sections: list[str] = field(default_factory=list)     # extra Markdown (e.g. target checks), after the header
    extra: dict[str, Any] = field(default_factory=dict)   # extra JSON fields

    def to_dict(self) -> dict[str, Any]:
        return {"title": self.title, "date": self.date, "command": self.command, "artifact": self.artifact,
                "machine": self.machine, "config": asdict(self.config),
                "results": [r.to_dict() for r in self.results], "skipped": [asdict(s) for s in self.skipped],
                **self.extra}


def _mib(n: int | None) -> str:
    return "n/a" if n is None else f"{n / 2 ** 20:.1f}"


def _size(n: int | None) -> str:
    if n is None:
        return "-"
    return f"{n / 2 ** 20:.2f} MiB" if n >= 2 ** 20 else f"{n / 1024:.1f} KiB"


def machine_markdown(machine: dict[str, Any]) -> str:
    libs = ", ".join(f"{k} {v}" for k, v in machine.get("libraries", {}).items())
    lines = [f"- CPU: {machine.get('cpu')} ({machine.get('cores')} cores, {machine.get('usable_cores')} usable), "
             f"memory {_mib(machine.get('memory_bytes'))} MiB",
             f"- OS: {machine.get('os')}, Python {machine.get('python')}",
             f"- Libraries: {libs}"]
    if machine.get("thread_env"):
        lines.append(f"- Thread settings: {machine['thread_env']}")
    if "load_average" in machine:
        lines.append(f"- Load average at start (1, 5, 15 min): {machine['load_average']} "
                     "(above ~0.5 per core, other work shared the CPU)")
    return "\n".join(lines)


def floor_markdown(results: Sequence[RunResult]) -> list[str]:
    """The step floor table (:mod:`seqedge.evaluate.floor`) of the results that carry one, with the threads."""
    rows = [r for r in results if "floor" in r.info]
    if not rows:
        return []
    limits = rows[0].info["floor"]["limits"]
    bandwidth = ", ".join(f"{size >> 20} MiB {bw / 1e9:.1f}" for size, bw in
                          sorted((int(k), v) for k, v in limits["bandwidth_by_bytes"].items()))
    out = ["", "## The floor of a step", "",
           f"This machine: copy bandwidth (GB/s) by working set {bandwidth}; peak {limits['peak_flops'] / 1e9:.1f} "
           f"GFLOP/s float32 ({limits['method']}). Floor = max((weights + 2 x state bytes) / the bandwidth at "
           "that working set, FLOPs / peak).", "",
           "| runtime | threads | weights | state | MFLOP | floor ms | bound | p50 @0 / floor |",
           "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        f = r.info["floor"]
        out.append(f"| {r.name} | {r.info.get('threads', '-')} | {_size(f['weight_bytes'])} | "
                   f"{_size(f['state_bytes'])} | {f['flops'] / 1e6:.2f} | {f['floor_ms']:.4f} | {f['bound']} | "
                   f"{f['p50_over_floor']:.1f}x |")
    return out


def render_markdown(report: BenchReport) -> str:
    """The report as Markdown: header, machine, summary table, per-context table, what was not measured."""
    contexts = report.config.contexts
    out = [f"# {report.title}", "", f"- Date: {report.date}", f"- Command: `{report.command}`"]
    if report.artifact:
        out.append(f"- Artifact: `{report.artifact}`")
    c = report.config
    out += [machine_markdown(report.machine),
            f"- Settings: batch 1, {c.steps} timed steps per context after {c.warmup} warm-up steps"
            + (f" in each of {c.sweeps} sweeps over the contexts (each context reports its sweep with the lowest "
               "p50)" if c.sweeps > 1 else "") + "; prefill "
            f"{c.prefill_tokens} tokens; token-by-token {c.stepwise_tokens} tokens; TTFT prompt {c.ttft_prompt} "
            "tokens; tokens are Python standard-library source bytes", ""]
    out += [s.rstrip() + "\n" for s in report.sections]
    if report.results:
        ctx_cols = " | ".join(f"p50 @{format_context(x)}" for x in contexts)
        out += ["## Summary (latencies in ms)", "",
                f"| runtime | artifact | load s | TTFT ms | prefill tok/s | token-by-token tok/s | prefill / step "
                f"| {ctx_cols} | p99 @{format_context(contexts[-1])} | p50 ratio {format_context(contexts[-1])}/"
                f"{format_context(contexts[0])} | peak RSS MiB |",
                "|" + "---|" * (10 + len(contexts))]
        for r in report.results:
            p50s = " | ".join(f"{x.p50_ms:.3f}" for x in r.contexts)
            load = "-" if r.load_s is None else f"{r.load_s:.2f}"
            ttft = "-" if r.ttft_ms is None else f"{r.ttft_ms:.1f}"
            prefill = "-" if r.prefill_tokens_per_s is None else f"{r.prefill_tokens_per_s:,.0f}"
            speedup = "-" if r.prefill_speedup is None else f"{r.prefill_speedup:.1f}x"
            out.append(f"| {r.name} | {_size(r.artifact_bytes)} | {load} | {ttft} | "
                       f"{prefill} | {r.stepwise_tokens_per_s:,.0f} | {speedup} | "
                       f"{p50s} | {r.contexts[-1].p99_ms:.3f} | {r.flatness:.2f} | {_mib(r.peak_rss_bytes)} |")
        out += floor_markdown(report.results)
        out += ["", "## Latency and memory at each context", "",
                "| runtime | context | p50 ms | p90 ms | p99 ms | state / KV cache | RSS MiB | prefill to here s |",
                "|---|---|---|---|---|---|---|---|"]
        for r in report.results:
            for x in r.contexts:
                out.append(f"| {r.name} | {format_context(x.context)} | {x.p50_ms:.3f} | {x.p90_ms:.3f} | "
                           f"{x.p99_ms:.3f} | {_size(x.memory_bytes)} | {_mib(x.rss_bytes)} | {x.reach_s:.1f} |")
        out.append("")
        out.append("RSS is the whole process (earlier runs' memory included); peak RSS is reset before each run "
                   "where the OS allows (Linux).")
        out.append("")
    if report.skipped:
        out += ["## Not measured here", ""] + [f"- **{s.name}**: {s.reason}" for s in report.skipped] + [""]
    return "\n".join(out)


def plot_report(report: BenchReport, path: str | Path) -> Path:
    """PNG: p50 latency (band to p90) and state/KV-cache memory against context, one line per run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    fig, (ax_lat, ax_mem) = plt.subplots(1, 2, figsize=(12, 4.5))
    nonzero = [c for c in report.config.contexts if c > 0]
    linthresh = min(nonzero) if nonzero else 1
    for r in report.results:
        xs = [x.context for x in r.contexts]
        style = "--" if r.kind == "baseline" else "-"
        line, = ax_lat.plot(xs, [x.p50_ms for x in r.contexts], style, marker="o", label=r.name)
        ax_lat.fill_between(xs, [x.p50_ms for x in r.contexts], [x.p90_ms for x in r.contexts],
                            color=line.get_color(), alpha=0.12)
        ax_mem.plot(xs, [x.memory_bytes / 2 ** 20 for x in r.contexts], style, marker="o", label=r.name,
                    color=line.get_color())
    for ax in (ax_lat, ax_mem):
        ax.set_xscale("symlog", linthresh=linthresh)
        ax.set_yscale("log")
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.set_xlabel("context (tokens already seen)")
        ax.set_xticks(list(report.config.contexts))
        ax.set_xticklabels([format_context(c) for c in report.config.contexts])
        ax.grid(True, which="both", alpha=0.3)
    ax_lat.set_ylabel("per-token step latency, ms (p50; band to p90)")
    ax_mem.set_ylabel("state / KV cache held, MiB")
    ax_lat.set_title("latency vs context")
    ax_mem.set_title("memory vs context")
    ax_lat.legend(fontsize=7, loc="upper left")
    cpu = report.machine.get("cpu", "")
    fig.suptitle(f"{report.title} - {cpu}, {report.machine.get('usable_cores')} cores - {report.date[:10]}",
                 fontsize=9)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_report(report: BenchReport, out_dir: str | Path, stem: str = "bench") -> dict[str, Path]:
    """Write ``<stem>.json``, ``<stem>.md`` and (when anything ran) ``<stem>.png`` under ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / f"{stem}.json", "md": out / f"{stem}.md"}
    paths["json"].write_text(json.dumps(report.to_dict(), indent=2) + "\n")
    paths["md"].write_text(render_markdown(report))
    if report.results:
        paths["png"] = plot_report(report, out / f"{stem}.png")
    return paths
