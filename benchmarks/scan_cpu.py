"""CPU benchmark of the scan: chunked form (training and prefill) vs recurrent form (token by token).

Shapes are the tiny preset's: H=3 heads, dk=dv=64, chunk 64, batch 1, float32, torch threads as on the machine
(``--threads`` to change). Both update rules, T = 512, 4096, 16384 tokens (the scan alone, with a carried initial
state), the scan at T = 4096 with smaller chunks (16, 32), and the whole tiny model (forward vs a loop of ``step``)
at T = 512 and 4096. Each timing is the median of several repeats after a warm-up, in wall-clock seconds; the
process CPU time is recorded beside it, since the machine may be shared. The outputs of the two forms are compared
on every run (max error relative to the largest entry), so a fast but wrong path cannot pass for a speed-up.

Target: the chunked scan at least 5x faster than the recurrent form at T = 4096, judged at
the preset's chunk size (64).

    python benchmarks/scan_cpu.py                      # the recorded run -> benchmarks/results/scan_cpu.{json,md}
    python benchmarks/scan_cpu.py --quick --out /tmp   # smoke test: short sequences, one repeat
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F

from seqedge.config import SequentialAttentionConfig
from seqedge.evaluate.run_info import load_average, run_metadata
from seqedge.model import SequentialAttentionModel
from seqedge.scan import chunked_scan, recurrent_scan

RESULTS = Path(__file__).resolve().parent / "results"
TARGET_T, TARGET_RATIO = 4096, 5.0
RULES = ("gated", "delta")


def timed(fn: Callable[[], Any], repeats: int) -> tuple[list[float], list[float], Any]:
    """Wall seconds and process CPU seconds of ``repeats`` calls after one warm-up call, and the last result."""
    result = fn()
    wall, cpu = [], []
    for _ in range(repeats):
        start, start_cpu = time.perf_counter(), time.process_time()
        result = fn()
        wall.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    return wall, cpu, result


def scaled_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return float((actual.double() - expected.double()).abs().max() / expected.double().abs().max())


def scan_inputs(config: SequentialAttentionConfig, T: int, rule: str, seed: int = 0):
    """Model-like inputs: gates g_min * sigmoid(.), beta in (0, 1), unit q and k for the delta rule."""
    gen = torch.Generator().manual_seed(seed)
    H, dk, dv = config.num_heads, config.head_k_dim, config.head_v_dim
    q, k = torch.randn(1, T, H, dk, generator=gen), torch.randn(1, T, H, dk, generator=gen)
    if rule == "delta":
        q, k = F.normalize(q, dim=-1), F.normalize(k, dim=-1)
    v = torch.randn(1, T, H, dv, generator=gen)
    g = config.g_min * torch.sigmoid(torch.randn(1, T, H, dk, generator=gen))
    beta = torch.sigmoid(torch.randn(1, T, H, generator=gen))
    state = torch.randn(1, H, dk, dv, generator=gen) * 0.1
    return q, k, v, g, beta, state


def bench_scan(config, rule: str, T: int, chunk: int, repeats: int) -> dict[str, Any]:
    q, k, v, g, beta, s0 = scan_inputs(config, T, rule)
    chunked = timed(lambda: chunked_scan(q, k, v, g, beta, rule=rule, initial_state=s0, chunk_size=chunk), repeats)
    recurrent = timed(lambda: recurrent_scan(q, k, v, g, beta, rule=rule, initial_state=s0), repeats)
    (co, cs), (ro, rs) = chunked[2], recurrent[2]
    return row("scan", rule, T, chunk, chunked, recurrent, max(scaled_error(co, ro), scaled_error(cs, rs)))


def bench_model(config, rule: str, T: int, repeats: int) -> dict[str, Any]:
    torch.manual_seed(0)
    model = SequentialAttentionModel(SequentialAttentionConfig.preset("tiny", update_rule=rule)).eval()
    tokens = torch.randint(0, config.vocab_size, (1, T), generator=torch.Generator().manual_seed(0))

    def stepwise():
        state, out = model.init_state(1), []
        for t in range(T):
            logits, state = model.step(tokens[:, t], state)
            out.append(logits)
        return torch.stack(out, dim=1), state

    forward, steps = timed(lambda: model(tokens), repeats), timed(stepwise, repeats)
    (fl, fs), (sl, ss) = forward[2], steps[2]
    err = max([scaled_error(fl, sl)] + [scaled_error(a, b) for a, b in zip(fs.tensors, ss.tensors)])
    return row("model", rule, T, config.chunk_size, forward, steps, err)


def row(what: str, rule: str, T: int, chunk: int, chunked_t, recurrent_t, err: float) -> dict[str, Any]:
    """One table row from the (wall, cpu, result) timings of the two forms."""
    chunked, recurrent = statistics.median(chunked_t[0]), statistics.median(recurrent_t[0])
    chunked_cpu, recurrent_cpu = statistics.median(chunked_t[1]), statistics.median(recurrent_t[1])
    return {"what": what, "rule": rule, "T": T, "chunk": chunk,
            "chunked_s": chunked, "recurrent_s": recurrent, "ratio": recurrent / chunked,
            "chunked_cpu_s": chunked_cpu, "recurrent_cpu_s": recurrent_cpu, "cpu_ratio": recurrent_cpu / chunked_cpu,
            "chunked_tokens_per_s": T / chunked, "recurrent_tokens_per_s": T / recurrent,
            "chunked_all_s": chunked_t[0], "recurrent_all_s": recurrent_t[0], "max_scaled_error": err}


def write_markdown(path: Path, report: dict[str, Any]) -> None:
    m = report["machine"]
    lines = [
        "# Scan on CPU: chunked vs recurrent form",
        "",
        f"- command: `{report['command']}`",
        f"- date (UTC): {report['date']}; commit: {report.get('commit') or 'unknown'}",
        f"- machine: {m['cpu']}, {m['cores']} cores, torch {m['torch']} (threads: {m['threads']}; torch's "
        f"default here: {m['default_threads']}), Python {m['python']}",
        f"- load average before / after: {m['load_before']} / {m['load_after']} "
        "(the machine is shared with other developers; timings may include their load)",
        f"- shapes: tiny preset, batch 1, H={report['shape']['H']}, dk={report['shape']['dk']}, "
        f"dv={report['shape']['dv']}, preset chunk {report['shape']['chunk']}, float32; wall-clock median of "
        f"{report['repeats']} repeats after a warm-up (the model rows: at most 3); CPU = process CPU time",
        "- `scan`: the scan alone (`chunked_scan` vs `recurrent_scan`); `model`: the whole tiny model "
        "(`forward` vs a loop of `step`); error: max |chunked - recurrent| / max |recurrent|",
        "",
        "| what | rule | T | chunk | chunked (s) | recurrent (s) | recurrent / chunked | same, CPU time | "
        "chunked tok/s | error |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in report["rows"]:
        lines.append(f"| {r['what']} | {r['rule']} | {r['T']} | {r['chunk']} | {r['chunked_s']:.4f} | "
                     f"{r['recurrent_s']:.4f} | {r['ratio']:.1f}x | {r['cpu_ratio']:.1f}x | "
                     f"{r['chunked_tokens_per_s']:,.0f} | {r['max_scaled_error']:.1e} |")
    if report["note"]:
        lines += ["", f"Note: {report['note']}"]
    lines += ["", f"Target: chunked scan >= {TARGET_RATIO:g}x faster than recurrent at T = {TARGET_T}, "
              f"preset chunk size {report['shape']['chunk']} (wall clock)."]
    for t in report["target"]:
        verdict = "met" if t["met"] else f"MISSED by a factor {TARGET_RATIO / t['ratio']:.1f}"
        lines.append(f"- {t['rule']}: {t['ratio']:.1f}x, {verdict}")
    for rule in RULES:
        at_target = [r for r in report["rows"] if r["what"] == "scan" and r["rule"] == rule and r["T"] == TARGET_T]
        if len(at_target) > 1:
            best = max(at_target, key=lambda r: r["ratio"])
            lines.append(f"- {rule}, best chunk size measured at T = {TARGET_T}: {best['chunk']} "
                         f"({best['ratio']:.1f}x)")
    path.write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="short sequences and one repeat (smoke test)")
    parser.add_argument("--repeats", type=int, default=None, help="timed repeats per case (default 5, quick 1)")
    parser.add_argument("--no-model", action="store_true", help="time the scan alone, not the whole model")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--note", default="", help="a remark on the run's conditions, recorded in the results")
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder for scan_cpu.json and scan_cpu.md")
    args = parser.parse_args(argv)
    repeats = args.repeats or (1 if args.quick else 5)
    lengths = (64, 256) if args.quick else (512, 4096, 16384)
    model_lengths = (64,) if args.quick else (512, 4096)
    config = SequentialAttentionConfig.preset("tiny")
    default_threads = torch.get_num_threads()
    if args.threads:
        torch.set_num_threads(args.threads)
    small_chunks = () if args.quick else (16, 32)
    meta = run_metadata()
    machine = {**meta["machine"], "threads": torch.get_num_threads(), "default_threads": default_threads,
               "torch": torch.__version__, "load_before": load_average()}
    rows = []
    with torch.inference_mode():
        for rule in RULES:
            for T, chunk in [(T, config.chunk_size) for T in lengths] + [(TARGET_T, c) for c in small_chunks]:
                rows.append(bench_scan(config, rule, T, chunk, repeats))
                print(_line(rows[-1]), flush=True)
            if not args.no_model:
                for T in model_lengths:
                    rows.append(bench_model(config, rule, T, max(1, min(repeats, 3))))
                    print(_line(rows[-1]), flush=True)
    machine["load_after"] = load_average()
    target = [{"rule": r["rule"], "ratio": r["ratio"], "met": r["ratio"] >= TARGET_RATIO}
              for r in rows if r["what"] == "scan" and r["T"] == TARGET_T and r["chunk"] == config.chunk_size]
    report = {"command": meta["command"], "date": meta["date"], "commit": meta["commit"],
              "machine": machine, "repeats": repeats, "note": args.note,
              "shape": {"B": 1, "H": config.num_heads, "dk": config.head_k_dim, "dv": config.head_v_dim,
                        "chunk": config.chunk_size},
              "target": target, "rows": rows}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "scan_cpu.json").write_text(json.dumps(report, indent=2) + "\n")
    write_markdown(args.out / "scan_cpu.md", report)
    print(f"wrote {args.out / 'scan_cpu.json'} and {args.out / 'scan_cpu.md'}")
    for t in target:
        print(f"target {t['rule']} T={TARGET_T}: {t['ratio']:.1f}x ({'met' if t['met'] else 'MISSED'})")
    return 0


def _line(r: dict[str, Any]) -> str:
    return (f"{r['what']:5s} {r['rule']:5s} T={r['T']:6d} C={r['chunk']:3d}  chunked {r['chunked_s'] * 1e3:9.1f} ms  "
            f"recurrent {r['recurrent_s'] * 1e3:9.1f} ms  ratio {r['ratio']:6.1f}x (cpu {r['cpu_ratio']:5.1f}x)  err {r['max_scaled_error']:.1e}")


if __name__ == "__main__":
    sys.exit(main())
