"""``validate_artifact``: every runtime x quantization of an artifact against the float64 reference, one stream.

Runtimes that cannot run here are reported with the reason (never dropped); a result misses its tolerance when
its :class:`~seqedge.evaluate.parity.ParityReport` has failures.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable, Sequence

from seqedge.artifact import read_manifest
from seqedge.runtimes.base import RUNTIMES, get_runtime
from seqedge.targets import resolve_runtimes
from seqedge.runtimes.session import Session, open_session

from .parity import check_session, default_prefill, reference_stream, text_tokens


def validate_artifact(artifact_dir: str | Path, runtimes: Sequence[str] | None = None, *, tokens: int = 1024,
                      progress: Callable[[str], None] = lambda message: None) -> dict[str, Any]:
    """Run ``tokens`` tokens of real text (half prefill, half steps) through every variant on every runtime.

    Returns ``{"artifact", "tokens", "prefill", "reference", "results": [...], "passed"}``; each result has
    ``runtime``, ``variant``, ``status`` (``ok`` / ``failed`` / ``unavailable``) and the report or the reason.
    """
    if tokens < 2:
        raise ValueError(f"tokens must be >= 2, got {tokens}")
    names = list(RUNTIMES) if runtimes is None else resolve_runtimes(list(runtimes), known=tuple(RUNTIMES))
    manifest = read_manifest(artifact_dir)
    stream = text_tokens(tokens, vocab_size=manifest.vocab_size)
    prefill = default_prefill(tokens, manifest.chunk_size)
    rows: list[tuple[dict[str, Any], Session | None]] = []
    for name in names:
        rows += _open_runtime(manifest, name)
    reference = None
    if any(session is not None for _, session in rows):
        progress(f"float64 reference over {tokens} tokens ({prefill} prefill, {tokens - prefill} steps)")
        reference = reference_stream(manifest, stream, prefill)
    for row, session in rows:
        if session is None:
            continue
        start = time.perf_counter()
        report = check_session(session, stream, prefill=prefill, reference=reference)
        row.update(status="ok" if report.passed else "failed", seconds=round(time.perf_counter() - start, 3),
                   device=session.describe(), report=report.to_dict())
        progress(f"{row['runtime']} {row['variant']}: {row['status']} ({row['seconds']:.1f}s)")
    results = [row for row, _ in rows]
    ran = [r for r in results if r["status"] != "unavailable"]
    return {"artifact": str(artifact_dir), "tokens": tokens, "prefill": prefill,
            "reference": "torch variant in float64", "results": results,
            "passed": bool(ran) and all(r["status"] == "ok" for r in ran)}


def _open_runtime(manifest, name: str) -> list[tuple[dict[str, Any], Session | None]]:
    """A session per variant the runtime runs, or a row saying why it cannot run here."""
    try:
        factory = get_runtime(name)
    except ImportError as err:
        return [({"runtime": name, "variant": "-", "status": "unavailable",
                  "reason": f"runtime module not available: {err}"}, None)]
    variants = [v for v in manifest.variants if v.target == factory.target]
    if not variants:
        return [({"runtime": name, "variant": f"{factory.target}/-", "status": "unavailable",
                  "reason": f"the artifact has no {factory.target} variant (seqedge export --target "
                            f"{factory.target})"}, None)]
    out: list[tuple[dict[str, Any], Session | None]] = []
    for variant in variants:
        row: dict[str, Any] = {"runtime": name, "variant": variant.name}
        try:
            out.append((row, open_session(manifest, variant, name)))
        except (ImportError, RuntimeError) as err:
            row.update(status="unavailable", reason=str(err).strip().splitlines()[0])
            out.append((row, None))
    return out


def format_table(result: dict[str, Any]) -> str:
    """The validation result as a fixed-width text table (one row per runtime x variant)."""
    rw = max([12] + [len(row["runtime"]) for row in result["results"]])        # column widths fit the names
    vw = max([12] + [len(row["variant"]) for row in result["results"]])
    head = (f"{'runtime':{rw}s} {'variant':{vw}s} {'max|dlogit|':>11s} {'top-1':>7s} {'KL':>9s} {'state err':>9s} "
            f"{'bpb':>7s} {'dbpb':>7s} {'first100':>9s} {'last100':>9s}  status")
    lines = [f"{result['tokens']} tokens ({result['prefill']} prefill + {result['tokens'] - result['prefill']} "
             f"steps) against the {result['reference']}", head, "-" * len(head)]
    for row in result["results"]:
        if row["status"] == "unavailable":
            lines.append(f"{row['runtime']:{rw}s} {row['variant']:{vw}s} {'cannot run here: ' + row['reason']}")
            continue
        r = row["report"]
        dbpb = r["bpb"] / r["bpb_reference"] - 1
        status = "ok" if row["status"] == "ok" else "FAILED: " + "; ".join(r["failures"])
        lines.append(f"{row['runtime']:{rw}s} {row['variant']:{vw}s} {r['max_abs']:11.2e} {r['top1']:7.2%} "
                     f"{r['kl']:9.2e} {r['state_rel_err']:9.2e} {r['bpb']:7.3f} {dbpb:+7.2%} "
                     f"{r['first']['max_abs']:9.2e} {r['last']['max_abs']:9.2e}  {status}")
    return "\n".join(lines)
