"""benchmarks/llama_cpp.py without llama.cpp: where carried-over rows say they were measured, and the report of a
record with rows of several runs (the build and the timings need llama.cpp and a real-size model: not in CI)."""

from __future__ import annotations

import runpy
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture(scope="module")
def bench():
    """The script's functions (run as a file: benchmarks/ is no package; it imports hf_models beside it)."""
    sys.path.insert(0, str(BENCHMARKS))
    try:
        return SimpleNamespace(**runpy.run_path(str(BENCHMARKS / "llama_cpp.py")))
    finally:
        sys.path.remove(str(BENCHMARKS))


def _meta(commit: str, kept=None) -> dict:
    return {"commit": commit, "date": f"date of {commit}", "command": f"command of {commit}",
            **({"kept_rows": kept} if kept is not None else {})}


def test_rows_carried_twice_keep_the_run_that_measured_them(bench):
    """A row the last record had carried over names the run it came from, not the last record's run; rows the
    last run measured name that run; both kinds group by run. Older records hold one dict, newer a list."""
    first = {"engines": ["seqedge executorch", "seqedge onnxruntime"], **_meta("aaa")}
    for kept in (first, [first]):
        groups = bench.kept_provenance(["seqedge executorch", "seqedge onnxruntime", "seqedge onnxruntime-fused"],
                                       _meta("bbb", kept))
        assert groups == [
            {"engines": ["seqedge executorch", "seqedge onnxruntime"], **_meta("aaa")},
            {"engines": ["seqedge onnxruntime-fused"], **_meta("bbb")},
        ]
    assert bench.kept_provenance(["x"], _meta("ccc")) == [{"engines": ["x"], **_meta("ccc")}]


def test_report_names_every_run_rows_came_from(bench):
    row = bench.Row("seqedge onnxruntime", "fp32", "fp32", 0, 20.0, 25.0, 0.0, 600.0, 1.0)
    llama = bench.Row("llama.cpp", "f32", "fp32", 0, 19.0, 24.0, 0.0, 490.0, 1.0)
    kept = [{"engines": ["seqedge executorch"], **_meta("aaa")}, {"engines": ["seqedge onnxruntime"], **_meta("bbb")}]
    meta = {**bench.run_metadata(threads=2, llama_cpp_python="0"), "kept_rows": kept}
    text = bench.render([llama, row], meta)
    assert "rows of seqedge executorch are not from this run: kept from the run of commit aaa" in text
    assert "rows of seqedge onnxruntime are not from this run: kept from the run of commit bbb" in text


def test_engines_take_turns_on_the_same_tokens(bench):
    """Every engine prefills the same prompt and steps the same tokens; after the warm-up the engines alternate
    block by block (order reversed every round), and each row times exactly ``steps`` calls."""
    calls = []

    def engine(name):
        return bench.Engine(name, "v", "fp32", 1.0, lambda: calls.append((name, "reset")),
                            lambda prompt: calls.append((name, "prefill", tuple(prompt))),
                            lambda token: calls.append((name, token)))

    rows = bench.bench_engines([engine("a"), engine("b")], [0, 5], steps=10, vocab=100)
    assert [(r.engine, r.context) for r in rows] == [("a", 0), ("b", 0), ("a", 5), ("b", 5)]
    assert all(r.p50_ms >= 0 and r.p99_ms >= r.p50_ms for r in rows)
    prompts = [c[2] for c in calls if c[1] == "prefill"]
    assert prompts[0] == prompts[1] and prompts[2] == prompts[3] and len(prompts[2]) == 5
    for context_calls in (calls[:len(calls) // 2], calls[len(calls) // 2:]):
        steps = [c for c in context_calls if isinstance(c[1], int)]
        a, b = [c[1] for c in steps if c[0] == "a"], [c[1] for c in steps if c[0] == "b"]
        assert a == b and len(a) == 10 + bench.WARMUP                   # the same tokens, warm-up included
        timed = [c[0] for c in steps[2 * bench.WARMUP:]]
        block = -(-10 // bench.ROUNDS)
        assert timed[:2 * block] == ["a"] * block + ["b"] * block       # round 0: a then b
        assert timed[2 * block:4 * block] == ["b"] * block + ["a"] * block


def test_engines_prefill_in_pieces_taking_turns(bench):
    """A long prompt goes in pieces of PREFILL_PIECE tokens, the engines taking turns piece by piece (order
    reversed every piece); each engine's pieces make up the whole prompt, and its tok/s counts all of them."""
    calls = []

    def engine(name):
        return bench.Engine(name, "v", "fp32", 1.0, lambda: None,
                            lambda prompt: calls.append((name, tuple(prompt))), lambda token: None)

    ctx = 2 * bench.PREFILL_PIECE + 3
    rows = bench.bench_engines([engine("a"), engine("b")], [ctx], steps=2, vocab=100)
    assert [c[0] for c in calls] == ["a", "b", "b", "a", "a", "b"]
    assert [len(c[1]) for c in calls] == [bench.PREFILL_PIECE] * 4 + [3] * 2
    pieces = {name: sum((c[1] for c in calls if c[0] == name), ()) for name in "ab"}
    assert pieces["a"] == pieces["b"] and len(pieces["a"]) == ctx
    assert all(r.prefill_tok_s > 0 for r in rows)


def test_report_reads_each_row_against_its_floor(bench):
    """A row with a floor prints it and its p50 over it, and the ratio table prints the best variant's p50 over
    its floor; a row carried over from a record without floors prints dashes."""
    llama = bench.Row("llama.cpp", "q8_0", "int8", 0, 8.0, 9.0, 0.0, 130.0, 1.0, 7.5)
    ours = bench.Row("seqedge onnxruntime-fused", "int8", "int8", 0, 10.0, 12.0, 0.0, 275.0, 1.0, 6.25)
    old = {k: v for k, v in vars(bench.Row("seqedge executorch", "int8", "int8", 0, 19.0, 20.0, 0.0, 380.0,
                                           1.0)).items() if k != "floor_ms"}
    limits = {"bandwidth_by_bytes": {str(1 << 28): 22e9, str(1 << 20): 90e9}, "peak_flops": 2e11}
    meta = {**bench.run_metadata(threads=2, llama_cpp_python="0"), "limits": limits}
    text = bench.render([llama, ours, bench.Row(**old)], meta)
    assert "| 130.0 | 7.50 | 1.07 |" in text and "| 275.0 | 6.25 | 1.60 |" in text
    assert "| 380.0 | - | - |" in text
    assert "| int8 | 0 | 8.00 | 10.00 (seqedge onnxruntime-fused) | 1.25 | - | 1.60 |" in text
    assert "1 MiB 90.0, 256 MiB 22.0" in text


def test_report_states_the_int4_packing_beside_q4_0(bench):
    """The report says the int4 group of the run and its bits per weight (codes, float32 scale and 4-bit zero
    point per group) beside q4_0's; a record without the field says nothing of it."""
    llama = bench.Row("llama.cpp", "q4_0", "int4", 0, 5.0, 6.0, 0.0, 81.0, 1.0)
    base = bench.run_metadata(threads=2, llama_cpp_python="0")
    assert "groups of 64 weights" in bench.render([llama], {**base, "int4_group_size": 64})
    assert "4.56 bits a weight" in bench.render([llama], {**base, "int4_group_size": 64})
    assert "5.12 bits a weight" in bench.render([llama], {**base, "int4_group_size": 32})
    assert "seqedge int4:" not in bench.render([llama], base)
