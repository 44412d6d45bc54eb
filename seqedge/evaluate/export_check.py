"""Export, then prove: the short parity check that every export runs before its artifact is moved into place.

It lives above export/ and runtimes/ (export never imports a runtime): :func:`export_verified` hands
:func:`short_parity` to :func:`seqedge.export.api.export_model` as its ``verify`` step.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Sequence

from seqedge.artifact import Manifest, read_manifest
from seqedge.runtimes.session import open_session
from seqedge.targets import RUNTIME_OF_TARGET

from .parity import compare, reference_stream, run_stream, text_tokens

PARITY_CHUNKS, PARITY_STEPS = 2, 16


def export_verified(model, out_dir: str | os.PathLike, targets: Sequence[str] | str,
                    quantize: Sequence[str] = ("none",), **options: Any) -> Manifest:
    """:func:`~seqedge.export.api.export_model` with :func:`short_parity` as its verify step: the manifest's
    ``parity`` holds a short check (2 chunks + 16 steps) of every variant whose runtime can run here."""
    from seqedge.export.api import export_model

    return export_model(model, out_dir, targets, quantize, verify=short_parity, **options)


def short_parity(root: Path, say: Callable[[str], None]) -> dict[str, Any]:
    """Short parity check of every variant whose runtime runs here, against the float64 reference."""
    manifest = read_manifest(root)
    C = manifest.chunk_size
    prefill = PARITY_CHUNKS * C
    tokens = text_tokens(prefill + PARITY_STEPS, vocab_size=manifest.vocab_size)
    reference = reference_stream(manifest, tokens, prefill)
    results: dict[str, Any] = {}
    for variant in manifest.variants:
        runtime = RUNTIME_OF_TARGET[variant.target]
        try:
            session = open_session(manifest, variant, runtime)
        except (ImportError, RuntimeError) as err:
            results[variant.name] = {"runtime": runtime, "skipped": str(err).strip().splitlines()[0]}
            say(f"parity {variant.name} on {runtime}: skipped ({results[variant.name]['skipped']})")
            continue
        report = _short_report(session, tokens, prefill, reference)
        results[variant.name] = {"runtime": runtime, **report}
        say(f"parity {variant.name} on {runtime}: max|dlogit| {report['max_abs']:.2e}, top-1 "
            f"{report['top1']:.1%}, state rel err {report['state_rel_err']:.1e}")
    return results


def _short_report(session, tokens, prefill, reference) -> dict[str, Any]:
    """Statistics of the short stream; only fp32 (and non-finite output) is held to its budget here, the
    statistical budgets of quantized formats need the long stream of ``seqedge validate``."""
    report = compare(run_stream(session, tokens, prefill), reference, tokens, prefill=prefill,
                     tag=session.variant.tag, window=PARITY_STEPS)
    data = report.to_dict(per_step=False)
    if session.variant.tag != "fp32":
        data["failures"] = [f for f in report.failures if f == "non-finite logits"]
        data["budget_checked_by"] = "seqedge validate (1,024 tokens)"
    data["passed"] = not data["failures"]
    return data
