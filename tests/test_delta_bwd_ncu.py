"""benchmarks/probes/delta_bwd_ncu.py's summary, read from CSVs laid out as Nsight Compute exports them."""

from __future__ import annotations

import csv
import json
import runpy
from pathlib import Path
from types import SimpleNamespace

import pytest

PROBE = Path(__file__).resolve().parents[1] / "benchmarks" / "probes" / "delta_bwd_ncu.py"
KERNELS = {"0": "_delta_local_grad_kernel", "1": "_delta_scan_kernel"}


@pytest.fixture(scope="module")
def probe():
    return SimpleNamespace(**runpy.run_path(str(PROBE)))


def _write(path: Path, rows: list[list[str]]) -> None:
    with open(path, "w", newline="") as f:
        csv.writer(f, quoting=csv.QUOTE_ALL).writerows(rows)


def _details(path: Path) -> None:
    head = ["ID", "Process ID", "Kernel Name", "Block Size", "Grid Size", "Section Name", "Metric Name",
            "Metric Unit", "Metric Value", "Rule Name"]
    rows = [head]
    for kid, name in KERNELS.items():
        duration = f"{507_200 - 250_000 * int(kid):,}"                  # ns, with thousands separators
        for section, metric, value in (("GPU Speed Of Light Throughput", "Duration", duration),
                                       ("GPU Speed Of Light Throughput", "DRAM Frequency", "3,174,863,387.98"),
                                       ("Launch Statistics", "Registers Per Thread", "255"),
                                       ("Occupancy", "Achieved Occupancy", "12.5")):
            rows.append([kid, "1", name, "(256, 1, 1)", "(128, 16, 2)", section, metric, "", value, ""])
    _write(path, rows)


def _raw(path: Path) -> None:
    head = ["ID", "Kernel Name", "l1tex__t_sectors_pipe_lsu_mem_local_op_ld.sum",
            "smsp__average_warps_issue_stalled_long_scoreboard_per_issue_active.ratio",
            "smsp__average_warps_issue_stalled_barrier_per_issue_active.ratio",
            "smsp__average_warps_issue_stalled_long_scoreboard_not_issued_per_issue_active.ratio"]
    _write(path, [head, ["", "", "sector", "", "", ""],
                  ["0", KERNELS["0"], "1,833,300", "3.94", "1.68", "9.9"],
                  ["1", KERNELS["1"], "0", "2.59", "0.98", "9.9"]])


def _source(path: Path) -> None:
    head = ["Address", "Source", "Warp Stall Sampling (All Samples)", "stall_long_sb", "stall_barrier",
            "stall_long_sb (Not Issued)"]
    _write(path, [["Kernel Name", "_delta_local_grad_kernel", ""], head,
                  ["0x10", "      STS [R1], R2", "60", "50", "10", "40"],
                  ["0x20", "  @P0 STS.128 [R3], R4", "20", "20", "0", "0"],
                  ["0x30", "      HMMA.16816.F32 R8, R12, R16, R8", "20", "0", "5", "0"]])


def test_summary_reads_each_page_as_ncu_writes_it(probe, tmp_path):
    _details(tmp_path / "ours_details.csv")
    _raw(tmp_path / "ours_raw.csv")
    _source(tmp_path / "ours_source.csv")
    res = probe.summarize(tmp_path)
    local, scan = res["ours"]
    assert local["kernel"] == KERNELS["0"] and scan["kernel"] == KERNELS["1"]
    assert local["duration"] == 507_200.0 and scan["duration"] == 257_200.0     # thousands separators read
    assert local["regs"] == 255.0 and local["occ_pct"] == 12.5 and "DRAM Frequency" not in local
    assert local["local_ld_sectors"] == 1_833_300.0 and scan["local_ld_sectors"] == 0.0
    # stall reasons per issued instruction, the not-issued variants left out
    assert local["stalls"] == {"long_scoreboard": 3.94, "barrier": 1.68}
    # source page: predicates and modifiers dropped, shares of all samples
    by_op = {r["opcode"]: r for r in res["ours_local_kernel_by_opcode"]}
    assert by_op["STS"]["share_pct"] == 80.0 and by_op["STS"]["instructions"] == 2
    assert by_op["STS"]["reasons_pct"] == {"long_sb": 70.0, "barrier": 10.0}
    assert by_op["HMMA"]["share_pct"] == 20.0
    md = (tmp_path / "delta_bwd_ncu.md").read_text()
    assert "| STS | 80.0% | 2 |" in md and "507.2 us" in md and "fla" not in md.split("## ours")[1]


def test_a_side_without_csvs_is_left_out(probe, tmp_path):
    _details(tmp_path / "fla_details.csv")
    _raw(tmp_path / "fla_raw.csv")
    res = probe.summarize(tmp_path, write=False)
    assert set(res) == {"fla"} and not (tmp_path / "delta_bwd_ncu.json").exists()


def test_a_forward_profile_is_summarized_under_its_own_name(probe, tmp_path):
    (tmp_path / "meta.json").write_text(json.dumps({"pass": "fwd", "gates": "per key", "T": 16384}))
    _details(tmp_path / "ours_details.csv")
    _raw(tmp_path / "ours_raw.csv")
    _source(tmp_path / "ours_source.csv")
    res = probe.summarize(tmp_path)
    assert "ours_prep_kernel_by_opcode" in res and "ours_local_kernel_by_opcode" not in res
    assert not (tmp_path / "delta_bwd_ncu.md").exists() and not (tmp_path / "delta_fwd_ncu.md").exists()
    md = (tmp_path / "delta_fwd_ncu_per_key.md").read_text()
    assert md.startswith("# Per key delta forward under Nsight Compute")
    assert "where the prep kernel's warps stall" in md and "`_delta_prep`" in md
