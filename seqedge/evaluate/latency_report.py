"""Reports of latency runs: the machine they ran on, JSON, a Markdown table and a PNG plot of latency vs context.

matplotlib is imported lazily (Agg backend) so the harness itself needs only numpy.
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .latency import BenchConfig, RunResult, Skipped, format_context
from seqedge.fsutil import write_json_atomic

from .run_info import command_line, git_commit, machine_info

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
    commit: str | None = field(default_factory=git_commit)
    sections: list[str] = field(default_factory=list)     # extra Markdown (e.g. target checks), after the header
    extra: dict[str, Any] = field(default_factory=dict)   # extra JSON fields

    def to_dict(self) -> dict[str, Any]:
        return {"title": self.title, "date": self.date, "command": self.command, "commit": self.commit,
                "artifact": self.artifact,
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
                     "(a value above ~0.5 per core means other work shared the CPU)")
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
    pages = [f"{r.name}: {r.info['huge_pages']}" for r in rows if "huge_pages" in r.info]
    if pages:
        out += ["", "Huge pages (runtimes/huge_pages.py): " + "; ".join(pages) + "."]
    return out


def render_markdown(report: BenchReport) -> str:
    """The report as Markdown: header, machine, summary table, per-context table, what was not measured."""
    contexts = report.config.contexts
    out = [f"# {report.title}", "", f"- Date: {report.date}", f"- Command: `{report.command}`",
           f"- Commit: {report.commit or 'unknown'}"]
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
        out += ["## Summary (latencies in ms" + (f"; p50 is the lowest of {c.sweeps} sweeps" if c.sweeps > 1 else
                                                  "; p50 is the median of the timed steps") + ")", "",
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
        many = c.sweeps > 1
        p50_head = f"p50 ms (lowest of {c.sweeps} sweeps)" if many else "p50 ms (median)"
        sweep_head = " median of sweeps' p50 ms | sweeps' p50 spread ms |" if many else ""
        out += ["", "## Latency and memory at each context", "",
                f"p50 is the median of the {c.steps} timed steps and IQR their spread (p75 - p25)"
                + (f"; with {c.sweeps} sweeps the row is the sweep with the lowest p50 (a min-of-sweeps figure), "
                   "beside the median and the spread (max - min) of every sweep's p50" if many else "") + ".", "",
                f"| runtime | context | {p50_head} | IQR ms | p90 ms | p99 ms |{sweep_head} state / KV cache | "
                "RSS MiB | prefill to here s |",
                "|" + "---|" * (9 + 2 * many)]
        for r in report.results:
            for x in r.contexts:
                sweeps = (f" {x.sweep_median_ms:.3f} | {max(x.sweep_p50_ms) - min(x.sweep_p50_ms):.3f} |"
                          if many and x.sweep_p50_ms else (" - | - |" if many else ""))
                out.append(f"| {r.name} | {format_context(x.context)} | {x.p50_ms:.3f} | {x.iqr_ms:.3f} | "
                           f"{x.p90_ms:.3f} | {x.p99_ms:.3f} |{sweeps} {_size(x.memory_bytes)} | "
                           f"{_mib(x.rss_bytes)} | {x.reach_s:.1f} |")
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
    write_json_atomic(paths["json"], report.to_dict())
    paths["md"].write_text(render_markdown(report))
    if report.results:
        paths["png"] = plot_report(report, out / f"{stem}.png")
    return paths
