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
