"""benchmarks/delta_kernels.py without a card: the report of a merged record (rows of two runs, fla's gradients
against ours, a note on the peer's call) and the peer's context where nothing needs to differ from fla's own."""

from __future__ import annotations

import contextlib
import runpy
from pathlib import Path
from types import SimpleNamespace

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture(scope="module")
def bench():
    pytest.importorskip("torch", reason="the benchmark module imports torch")
    return SimpleNamespace(**runpy.run_path(str(BENCHMARKS / "delta_kernels.py")))


def _env(date: str) -> dict:
    return {"card": "card", "date": date, "torch": "t", "triton": "tr", "cuda": "c", "fla": "f",
            "command": f"command of {date}"}


def test_merged_record_reports_both_runs_and_the_gradient_check(bench):
    per_head = bench.GATES[True]
    res = {"env": _env("third"), "earlier": [_env("second"), _env("first")],
           "rows": {per_head: {"fwd_ms_T65536": {"ours": 3.0, "fla": 2.0},
                               "fwdbwd_ms_T65536": {"ours": 15.0, "fla": "error: refused"}}},
           "grads": {per_head: {"T": 8192, "o": 1e-3, "dq": 2e-3, "dk": 3e-3, "dv": 4e-3, "dg": 5e-3,
                                "dbeta": 6e-3}},
           "peer_notes": {per_head: "a note"}}
    md = bench.markdown(res)
    assert f"| {per_head} | fwd_ms_T65536 | 3.000 | 2.000 | 1.50 | 0.67 |" in md
    assert f"| {per_head} | fwdbwd_ms_T65536 | 15.000 | error: refused | - | 1.00 |" in md
    assert f"| {per_head} | 8192 | 1.0e-03 | 2.0e-03 | 3.0e-03 | 4.0e-03 | 5.0e-03 | 6.0e-03 |" in md
    assert f"{per_head}: a note." in md
    assert "- second: `command of second`\n- first: `command of first`" in md


def test_a_merge_keeps_the_chain_of_earlier_runs(bench):
    older = {"env": _env("second"), "earlier": _env("first")}         # a record that kept one run, as one dict
    assert bench.earlier_runs(older) == [_env("first")]
    assert bench.earlier_runs({"env": _env("first")}) == []
    chain = bench.merged(bench.merged({"env": _env("first"), "rows": {"a": 1}}, _env("second")), _env("third"))
    assert chain["env"] == _env("third") and chain["rows"] == {"a": 1}
    assert chain["earlier"] == [_env("second"), _env("first")]


def test_per_key_peer_runs_as_fla_ships_it(bench):
    guard, note = bench.peer_guard(False)
    assert isinstance(guard, contextlib.nullcontext) and note is None


def test_the_shipped_backward_launches_are_points_of_the_probe_sweep():
    """The launches the op picks among come from ``delta_bwd_profile.py --sweep-launches``'s grid."""
    pytest.importorskip("triton", reason="the kernels' modules import triton")
    probe = SimpleNamespace(**runpy.run_path(str(BENCHMARKS / "probes" / "delta_bwd_profile.py")))
    from seqedge.kernels.delta_scan_bwd import BWD_LAUNCHES

    for per_head in (False, True):
        grid = probe.sweep_launches(per_head)
        assert len(grid) == len(set(grid)) == (72 if per_head else 12)
        assert set(BWD_LAUNCHES[per_head]) <= set(grid), per_head

