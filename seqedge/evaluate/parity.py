"""One parity harness and one set of error statistics for every runtime and quantization.

A token stream is run with the state carried through (``prefill`` of the first part, then one ``step`` per
token) by a Session and by the float64 reference (the artifact's torch variant in float64, same prefill/step
split). The statistics cover every position of the stream, so a dropped or wrong state write-back shows up as
error growing along the stream (``first`` vs ``last`` window), and the final states are compared directly.

Error budgets (DESIGN §4): fp32 max |logit diff| <= 1e-4; fp16 top-1 >= 99 %; int8/int4 top-1 >= 95 %
and bits per byte within 3 % of the reference's.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from seqedge.artifact import Manifest, read_manifest

LN2 = math.log(2.0)


@dataclass(frozen=True)
class Budget:
    """Tolerances of one format; ``None`` means not checked for that format.

    ``max_abs`` bounds the largest logit difference per unit of the reference's logit scale, ``max(1, max|logit|)``:
    float32 rounding grows with the logits' size (a 130M model's logits reach 15), so a fixed absolute bound would
    fail every real model.
    """

    max_abs: float | None = None
    min_top1: float | None = None
    max_bpb_rel: float | None = None       # |bpb / bpb_reference - 1|


BUDGETS: dict[str, Budget] = {
    "fp32": Budget(max_abs=1e-4),
    "fp16": Budget(min_top1=0.99),
    "int8": Budget(min_top1=0.95, max_bpb_rel=0.03),
    "int4": Budget(min_top1=0.95, max_bpb_rel=0.03),
}


@dataclass
class StreamResult:
    """Logits ``[T, V]`` (float64) of a stream of T tokens and the final state arrays."""

    logits: np.ndarray
    state: list[np.ndarray]


@dataclass
class ParityReport:
    """Error statistics of one run against the reference over one token stream."""

    tokens: int
    prefill: int
    max_abs: float
    rel_rms: float
    sqnr_db: float
    top1: float
    kl: float                   # mean KL(reference || test) in nats per position
    state_rel_err: float        # max over state tensors of ||test - ref|| / ||ref|| (final state)
    bpb: float                  # bits per byte of the test logits on the stream's next tokens
    bpb_reference: float
    window: int
    first: dict[str, float]     # max_abs and top1 over the first ``window`` positions
    last: dict[str, float]      # ... and over the last ``window`` positions
    per_step_max_abs: list[float] = field(repr=False, default_factory=list)
    logit_scale: float = 1.0    # max(1, max |reference logit|): the unit of the max_abs budget
    budget: dict[str, Any] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.failures

    def to_dict(self, *, per_step: bool = True) -> dict[str, Any]:
        data = asdict(self)
        if not per_step:
            data.pop("per_step_max_abs")
        data["passed"] = self.passed
        return data


def text_tokens(n: int, *, add_bos: bool = True, vocab_size: int | None = None) -> np.ndarray:
    """``n`` byte tokens of real text that every install has: the source of the stdlib's ``argparse``.

    Repeats the file if it is shorter than ``n``. Deterministic. A model whose vocabulary is smaller than the
    byte tokenizer's (``vocab_size`` < 257) gets the ids modulo its size: parity needs valid ids, not meaning.
    """
    import argparse

    data = Path(argparse.__file__).read_bytes()
    ids = ([256] if add_bos else []) + list(data)
    while len(ids) < n:
        ids += list(data)
    out = np.asarray(ids[:n], dtype=np.int64)
    return out % vocab_size if vocab_size is not None and vocab_size < 257 else out


def run_stream(session, tokens: Sequence[int], prefill: int) -> StreamResult:
    """Tokens ``[T]`` through ``session``: ``prefill`` tokens by ``Session.prefill``, the rest one step each."""
    tokens = np.asarray(tokens, dtype=np.int64)
    state = session.init_state(1)
    pieces = []
    if prefill:
        logits, state = session.prefill(tokens[None, :prefill], state)
        pieces.append(np.asarray(logits[0], dtype=np.float64))
    for t in range(prefill, len(tokens)):
        logits, state = session.step(tokens[t:t + 1], state)
        pieces.append(np.asarray(logits, dtype=np.float64))
    return StreamResult(np.concatenate(pieces, axis=0), [np.array(s, dtype=np.float64) for s in state.numpy()])


def reference_stream(model, tokens: Sequence[int], prefill: int) -> StreamResult:
    """The float64 reference of :func:`run_stream`: the torch model in float64, state kept in float64.

    ``model`` is a ``SequentialAttentionModel`` (copied to float64) or an artifact directory / Manifest (its
    torch variant, hash-checked). Same split as a Session: ``prefill // C`` chunks, the rest as steps.
    """
    import copy

    import torch

    if isinstance(model, (str, Path, Manifest)):
        model = _load_reference_model(model)
    model = copy.deepcopy(model).double().eval()
    tokens = torch.as_tensor(np.asarray(tokens, dtype=np.int64))
    C = model.config.chunk_size
    state = [torch.zeros(s.concrete_shape(1), dtype=torch.float64) for s in model.state_specs]
    pieces = []
    threads = torch.get_num_threads()
    torch.set_num_threads(1)      # one-token float64 matmuls: threads only add sync cost
    try:
        with torch.inference_mode():
            _reference_loop(model, tokens, prefill, C, state, pieces)
    finally:
        torch.set_num_threads(threads)
    return StreamResult(torch.cat(pieces).numpy(), [s.numpy() for s in state])


def _reference_loop(model, tokens, prefill: int, C: int, state: list, pieces: list) -> None:
    """Fills ``pieces`` with logits and updates ``state`` in place (the list, not the tensors)."""
    for start in range(0, prefill - prefill % C, C):
        logits, state[:] = model.forward_tensors(tokens[None, start:start + C], state)
        pieces.append(logits[0])
    for t in range(prefill - prefill % C, len(tokens)):
        logits, state[:] = model.forward_tensors(tokens[None, t:t + 1], state, step=True)
        pieces.append(logits[0])


def _load_reference_model(artifact):
    from seqedge.model import load_pretrained

    manifest = artifact if isinstance(artifact, Manifest) else read_manifest(artifact)
    return load_pretrained(manifest.checkpoint_dir(manifest.variant("torch")))


def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def bits_per_byte(logits: np.ndarray, tokens: np.ndarray) -> float:
    """Mean cross-entropy in bits of ``tokens[1:]`` under ``logits[:-1]`` (one token is one byte)."""
    logp = _log_softmax(np.asarray(logits[:-1], dtype=np.float64))
    nll = -logp[np.arange(len(tokens) - 1), tokens[1:]]
    return float(nll.mean() / LN2) if len(nll) else float("nan")


def relative_rms(test: np.ndarray, ref: np.ndarray) -> float:
    """RMS of ``test - ref`` over the RMS of ``ref`` (any matching shapes)."""
    test, ref = np.asarray(test, np.float64), np.asarray(ref, np.float64)
    return math.sqrt(float(((test - ref) ** 2).mean()) / max(float((ref ** 2).mean()), 1e-300))


def compare(test: StreamResult, ref: StreamResult, tokens: Sequence[int], *, prefill: int, tag: str = "fp32",
            window: int = 100) -> ParityReport:
    """Error statistics of ``test`` against ``ref`` on the same stream, checked against ``BUDGETS[tag]``."""
    tokens = np.asarray(tokens, dtype=np.int64)
    a, b = np.asarray(test.logits, np.float64), np.asarray(ref.logits, np.float64)
    if a.shape != b.shape:
        raise ValueError(f"logits of shape {a.shape} cannot be compared with reference logits {b.shape}")
    diff = a - b
    per_step = np.abs(diff).max(-1)
    agree = a.argmax(-1) == b.argmax(-1)
    noise = float((diff ** 2).mean())
    signal = float((b ** 2).mean())
    lp_ref, lp_test = _log_softmax(b), _log_softmax(a)
    kl = float((np.exp(lp_ref) * (lp_ref - lp_test)).sum(-1).mean())
    state_err = max(float(np.linalg.norm(np.asarray(s, np.float64) - r) / max(np.linalg.norm(r), 1e-30))
                    for s, r in zip(test.state, ref.state))
    w = min(window, len(tokens))
    report = ParityReport(
        tokens=len(tokens), prefill=prefill, max_abs=float(per_step.max()),
        rel_rms=relative_rms(a, b),
        sqnr_db=10 * math.log10(signal / noise) if noise > 0 else float("inf"),
        top1=float(agree.mean()), kl=kl, state_rel_err=state_err,
        bpb=bits_per_byte(a, tokens), bpb_reference=bits_per_byte(b, tokens), window=w,
        first={"max_abs": float(per_step[:w].max()), "top1": float(agree[:w].mean())},
        last={"max_abs": float(per_step[-w:].max()), "top1": float(agree[-w:].mean())},
        per_step_max_abs=[float(x) for x in per_step], logit_scale=max(1.0, float(np.abs(b).max())))
    check_budget(report, tag)
    return report


def check_budget(report: ParityReport, tag: str) -> None:
    """Fill ``report.budget`` and ``report.failures`` from ``BUDGETS[tag]`` (non-finite output always fails)."""
    budget = BUDGETS.get(tag, Budget())
    report.budget = {k: v for k, v in asdict(budget).items() if v is not None}
    failures = []
    if not all(map(math.isfinite, (report.max_abs, report.kl, report.bpb))):
        failures.append("non-finite logits")
    if budget.max_abs is not None and not report.max_abs <= budget.max_abs * report.logit_scale:
        scale = f" x logit scale {report.logit_scale:.3g}" if report.logit_scale > 1 else ""
        failures.append(f"max |logit diff| {report.max_abs:.3g} > {budget.max_abs:g}{scale}")
    if budget.min_top1 is not None and not report.top1 >= budget.min_top1:
        failures.append(f"top-1 agreement {report.top1:.2%} < {budget.min_top1:.0%}")
    if budget.max_bpb_rel is not None:
        rel = abs(report.bpb / report.bpb_reference - 1)
        if not rel <= budget.max_bpb_rel:
            failures.append(f"bpb {report.bpb:.4f} is {rel:.1%} off the reference {report.bpb_reference:.4f} "
                            f"(budget {budget.max_bpb_rel:.0%})")
    report.failures = failures


def default_prefill(n_tokens: int, chunk_size: int) -> int:
    """Half the stream as prefill (at least one full chunk and a partial one when the stream allows)."""
    return min(n_tokens - 1, max(n_tokens // 2, 0)) if n_tokens > 1 else 0


def check_session(session, tokens: Sequence[int], *, prefill: int | None = None, reference: StreamResult | None = None,
                  window: int = 100) -> ParityReport:
    """Run ``tokens`` through ``session`` and its artifact's float64 reference; report against the budget."""
    tokens = np.asarray(tokens, dtype=np.int64)
    prefill = default_prefill(len(tokens), session.chunk_size) if prefill is None else prefill
    if reference is None:
        reference = reference_stream(session.manifest, tokens, prefill)
    test = run_stream(session, tokens, prefill)
    return compare(test, reference, tokens, prefill=prefill, tag=session.variant.tag, window=window)
