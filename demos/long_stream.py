"""A million tokens through the step function: per-token latency and memory stay flat from first to last.

    python demos/long_stream.py                              # 1,000,000 tokens, onnxruntime, temp export
    python demos/long_stream.py --tokens 100000 --every 2000 --runtime executorch --out demos/results

Feeds real text (Python standard-library source bytes, repeated as needed) one token per ``step`` call, the
state carried throughout; every ``--every`` tokens it records that window's p50/p99 step latency and the
process RSS, then plots both against tokens seen (PNG) and writes the samples as JSON. The summary compares the
first and the last window: a model whose memory grew with context would show it here.

How long it takes is set by the step latency: tokens x p50 step time, plus Python overhead per step (the progress
bar shows the ETA; benchmarks/results/runtime_latency.md has the step latency per runtime on a 2-core CPU).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from _artifact import add_model_args, open_session


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tokens", type=float, default=1e6, help="tokens to stream (default: 1e6)")
    p.add_argument("--every", type=int, default=10_000, help="tokens per sample window (default: %(default)s)")
    add_model_args(p)
    p.add_argument("-o", "--out", default=".", help="directory for long_stream.{png,json} (default: current directory)")
    return p.parse_args(argv)


def stream(session, tokens: np.ndarray, every: int, show_progress: bool = True) -> list[dict]:
    """Step through ``tokens`` ``[N]``; one sample per window of ``every`` tokens (p50/p99 ms, RSS bytes)."""
    from seqedge.evaluate.latency import current_rss_bytes, latency_stats, progress_bar

    bar, progress = progress_bar(f"{session.runtime}/{session.variant.tag}", len(tokens), show_progress)
    state = session.init_state(1)
    times = np.empty(every, np.int64)
    samples = []
    for start in range(0, len(tokens), every):
        window = tokens[start:start + every]
        for i, token in enumerate(window):
            t0 = time.perf_counter_ns()
            logits, state = session.step(np.asarray([token]), state)
            times[i] = time.perf_counter_ns() - t0
        if not np.isfinite(logits).all():
            raise RuntimeError(f"non-finite logits after {start + len(window)} tokens")
        stats = latency_stats(times[:len(window)])
        samples.append({"tokens_seen": start + len(window), "p50_ms": stats["p50_ms"], "p99_ms": stats["p99_ms"],
                        "mean_ms": stats["mean_ms"], "rss_bytes": current_rss_bytes(),
                        "state_abs_max": float(max(np.abs(t).max() for t in state.numpy()))})
        progress(len(window), f"p50 {stats['p50_ms']:.3f} ms")
    bar.close()
    return samples


def plot(samples: list[dict], title: str, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = [s["tokens_seen"] for s in samples]
    fig, (ax_lat, ax_mem) = plt.subplots(1, 2, figsize=(12, 4.2))
    ax_lat.plot(x, [s["p50_ms"] for s in samples], label="p50")
    ax_lat.plot(x, [s["p99_ms"] for s in samples], label="p99", alpha=0.6)
    ax_lat.set_ylim(0, max(s["p99_ms"] for s in samples) * 1.3)
    ax_lat.set_ylabel("step latency per window, ms")
    ax_lat.legend()
    rss = [s["rss_bytes"] / 2 ** 20 if s["rss_bytes"] else np.nan for s in samples]
    ax_mem.plot(x, rss, color="tab:green")
    ax_mem.set_ylim(0, np.nanmax(rss) * 1.3 if np.isfinite(np.nanmax(rss)) else 1)
    ax_mem.set_ylabel("process RSS, MiB")
    for ax in (ax_lat, ax_mem):
        ax.set_xlabel("tokens seen")
        ax.grid(True, alpha=0.3)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> int:
    from seqedge.evaluate.latency import token_stream
    from seqedge.evaluate.run_info import machine_info

    args = parse_args(argv)
    n = int(args.tokens)
    if n < 1 or args.every < 1:
        raise SystemExit("--tokens and --every must be >= 1")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="seqedge-demo-") as tmp:
        session = open_session(args, tmp)
        tokens = token_stream(n)
        t0 = time.perf_counter()
        samples = stream(session, tokens, min(args.every, n))
        seconds = time.perf_counter() - t0
    first, last = samples[0], samples[-1]
    machine = machine_info()
    title = (f"{n:,} tokens through {session.runtime}/{session.variant.tag} step - {machine['cpu']}, "
             f"{machine['usable_cores']} cores")
    png = plot(samples, title, out / "long_stream.png")
    summary = {"tokens": n, "seconds": seconds, "tokens_per_s": n / seconds, "runtime": session.runtime,
               "variant": session.variant.name, "first_window": first, "last_window": last,
               "p50_ratio_last_first": last["p50_ms"] / first["p50_ms"],
               "rss_growth_bytes": (last["rss_bytes"] or 0) - (first["rss_bytes"] or 0),
               "command": " ".join(sys.argv), "machine": machine, "samples": samples}
    (out / "long_stream.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"{n:,} tokens in {seconds:.1f} s ({n / seconds:,.0f} tok/s) on {session.runtime}/{session.variant.tag}")
    print(f"p50 step latency: first window {first['p50_ms']:.3f} ms, last window {last['p50_ms']:.3f} ms "
          f"(ratio {summary['p50_ratio_last_first']:.2f})")
    if first["rss_bytes"]:
        print(f"RSS: first window {first['rss_bytes'] / 2 ** 20:.1f} MiB, last window "
              f"{last['rss_bytes'] / 2 ** 20:.1f} MiB")
    print(f"wrote {png} and {out / 'long_stream.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
