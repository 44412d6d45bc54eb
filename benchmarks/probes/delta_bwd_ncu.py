"""Nsight Compute's view of the delta-rule backward (or forward), ours beside fla's, kernel by kernel.

    python benchmarks/probes/delta_bwd_ncu.py --profile DIR [--T 16384] [--pass fwd] [--per-key]   (on a CUDA card
        with ncu on the PATH)
    python benchmarks/probes/delta_bwd_ncu.py --summarize DIR      (anywhere: DIR/delta_{bwd,fwd}_ncu[_per_key].md
        and .json)

``--profile`` runs ncu (full section set, clocks left alone) over one backward (``--pass fwd``: one forward) of
each side, per-head gates unless ``--per-key``, marked with an NVTX range after two warm-up calls, and exports each
report's details and raw pages as CSV into DIR (and, for ours, the source page of the kernel :data:`SOURCE_KERNEL`
names: stall samples per SASS instruction). ``--summarize`` reads those CSVs back: per kernel its duration,
throughput against the card's peaks, occupancy, registers, local memory traffic and where its warps stall. The
shape is the benchmark's (B=1, H=16, dk=dv=128, bf16) at a T of whole pieces; per-chunk kernels behave alike at any
T, and a shorter T keeps ncu's replays short.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import os
import subprocess
import sys
from collections import Counter, defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

WHO = ("ours", "fla")
PASSES = ("bwd", "fwd")
# per pass, the kernel of ours whose stalls are tallied per instruction: (label, name regex)
SOURCE_KERNEL = {"bwd": ("local", "_delta_local_grad_kernel"), "fwd": ("prep", "_delta_prep")}
# details-page metrics kept per kernel: (section, metric) -> column name
DETAILS = {
    ("GPU Speed Of Light Throughput", "Duration"): "duration",
    ("GPU Speed Of Light Throughput", "Compute (SM) Throughput"): "sm_pct",
    ("GPU Speed Of Light Throughput", "Memory Throughput"): "mem_pct",
    ("GPU Speed Of Light Throughput", "DRAM Throughput"): "dram_pct",
    ("Launch Statistics", "Registers Per Thread"): "regs",
    ("Launch Statistics", "Grid Size"): "grid",
    ("Launch Statistics", "Block Size"): "block",
    ("Launch Statistics", "Dynamic Shared Memory Per Block"): "smem_dyn",
    ("Occupancy", "Theoretical Occupancy"): "occ_theory_pct",
    ("Occupancy", "Achieved Occupancy"): "occ_pct",
    ("Occupancy", "Block Limit Registers"): "blocks_by_regs",
    ("Occupancy", "Block Limit Shared Mem"): "blocks_by_smem",
    ("Compute Workload Analysis", "Issue Slots Busy"): "issue_pct",
    ("Scheduler Statistics", "No Eligible"): "no_eligible_pct",
    ("Warp State Statistics", "Warp Cycles Per Issued Instruction"): "cycles_per_issue",
    ("Memory Workload Analysis", "L1/TEX Hit Rate"): "l1_hit_pct",
    ("Memory Workload Analysis", "L2 Hit Rate"): "l2_hit_pct",
}
# raw-page metrics: local (spill) traffic, tensor-core use, and the warp stall reasons (per issued instruction)
RAW = {
    "l1tex__t_sectors_pipe_lsu_mem_local_op_ld.sum": "local_ld_sectors",
    "l1tex__t_sectors_pipe_lsu_mem_local_op_st.sum": "local_st_sectors",
    "dram__bytes_read.sum": "dram_read_bytes",
    "dram__bytes_write.sum": "dram_write_bytes",
    "sm__pipe_tensor_op_hmma_cycles_active.avg.pct_of_peak_sustained_active": "tensor_pct",
    "sm__inst_executed_pipe_lsu.avg.pct_of_peak_sustained_active": "lsu_pct",
    "smsp__inst_executed.sum": "instructions",
}
STALL_PREFIX = "smsp__average_warps_issue_stalled_"
STALL_SUFFIX = "_per_issue_active.ratio"


def drive(who: str, T: int, pass_: str, per_head: bool) -> None:
    """Two warm-up calls, then one backward (``pass_`` "bwd") or forward ("fwd") inside the NVTX range
    ``<pass_>_<who>``."""
    import torch
    from delta_kernels import inputs, peer_guard, runners

    fn = runners(per_head=per_head)[who]
    backward = pass_ == "bwd"
    xs = [x.detach().clone().requires_grad_(backward) for x in inputs(T, per_head=per_head)]
    do = torch.randn_like(xs[2])
    with peer_guard(per_head)[0] if who == "fla" else contextlib.nullcontext(), torch.set_grad_enabled(backward):
        for _ in range(2):
            o = fn(*xs)
            if backward:
                o.backward(do)
        o = fn(*xs) if backward else None
        torch.cuda.synchronize()
        # a start/end range, not push/pop: autograd launches the backward's kernels from its own thread
        rng = torch.cuda.nvtx.range_start(f"{pass_}_{who}")
        if backward:
            o.backward(do)
        else:
            fn(*xs)
        torch.cuda.synchronize()
        torch.cuda.nvtx.range_end(rng)


def profile(out: Path, T: int, launches: int, pass_: str, per_head: bool) -> None:
    from delta_kernels import environment

    out.mkdir(parents=True, exist_ok=True)
    meta = {**environment(sys.argv), "T": T, "pass": pass_, "gates": "per head" if per_head else "per key"}
    (out / "meta.json").write_text(json.dumps(meta, indent=1) + "\n")
    for who in WHO:
        rep = out / f"{who}.ncu-rep"
        cmd = ["ncu", "--clock-control", "none", "--set", "full", "--nvtx", "--nvtx-include", f"{pass_}_{who}",
               "--launch-count", str(launches), "-f", "-o", str(rep.with_suffix("")),
               sys.executable, __file__, "--drive", who, "--T", str(T), "--pass", pass_,
               *(() if per_head else ("--per-key",))]
        print(" ".join(cmd), flush=True)
        subprocess.run(cmd, check=True)
        for page in ("details", "raw"):
            with open(out / f"{who}_{page}.csv", "w") as f:
                subprocess.run(["ncu", "--import", str(rep), "--page", page, "--csv", "--print-units", "base"],
                               stdout=f, check=True)
        if who == "ours":       # where in one of our kernels the warps stall, instruction by instruction
            with open(out / "ours_source.csv", "w") as f:
                subprocess.run(["ncu", "--import", str(rep), "--page", "source", "--csv", "--print-source", "sass",
                                "--kernel-name", f"regex:{SOURCE_KERNEL[pass_][1]}", "--launch-count", "1"],
                               stdout=f)
        rep.unlink()        # the CSVs hold what the summary reads; the report is too big to bring back


def _num(s: str) -> float | str:
    try:
        return float(s.replace(",", ""))
    except ValueError:
        return s


def summarize(out: Path, write: bool = True) -> dict:
    res: dict = {}
    if (out / "meta.json").exists():
        res["meta"] = json.loads((out / "meta.json").read_text())
    pass_ = res.get("meta", {}).get("pass", "bwd")
    name = f"delta_{pass_}_ncu" + ("_per_key" if res.get("meta", {}).get("gates") == "per key" else "")
    for who in WHO:
        if not (out / f"{who}_details.csv").exists():
            continue
        kernels: dict[str, dict] = {}
        with open(out / f"{who}_details.csv") as f:
            for row in csv.DictReader(f):
                key = DETAILS.get((row["Section Name"], row["Metric Name"]))
                if key:
                    k = kernels.setdefault(row["ID"], {"kernel": row["Kernel Name"][:60]})
                    k[key] = _num(row["Metric Value"])
        with open(out / f"{who}_raw.csv") as f:
            rows = list(csv.reader(f))
        head = rows[0]
        for row in rows[2:]:                # the second row holds the units
            r = dict(zip(head, row))
            k = kernels.get(r["ID"])
            if k is None:
                continue
            for metric, key in RAW.items():
                if metric in r:
                    k[key] = _num(r[metric])
            stalls = {m[len(STALL_PREFIX):-len(STALL_SUFFIX)]: _num(v) for m, v in r.items()
                      if m.startswith(STALL_PREFIX) and m.endswith(STALL_SUFFIX) and "_not_issued" not in m}
            top = sorted(((v, n) for n, v in stalls.items() if isinstance(v, float)), reverse=True)[:5]
            k["stalls"] = {n: round(v, 2) for v, n in top}
        res[who] = list(kernels.values())
    if (out / "ours_source.csv").exists():
        res[f"ours_{SOURCE_KERNEL[pass_][0]}_kernel_by_opcode"] = stalls_by_opcode(out / "ours_source.csv")
    if write:
        (out / f"{name}.json").write_text(json.dumps(res, indent=1) + "\n")
        (out / f"{name}.md").write_text(markdown(res))
    return res


def stalls_by_opcode(path: Path, top: int = 12) -> list[dict]:
    """The source page's warp-stall samples summed per SASS opcode (predicate and modifiers dropped), largest
    first: each opcode's share of all samples and its three largest stall reasons' shares."""
    with open(path) as f:
        rows = list(csv.reader(f))
    head = next(i for i, r in enumerate(rows) if r[:2] == ["Address", "Source"])
    names = rows[head]
    samples: Counter = Counter()
    count: Counter = Counter()
    reasons: defaultdict = defaultdict(Counter)
    for r in rows[head + 1:]:
        d = {name: _num(v) for name, v in zip(names, r)}
        words = str(d.get("Source", "")).split()
        if not words:
            continue
        op = (words[1] if words[0].startswith("@") and len(words) > 1 else words[0]).split(".")[0]
        count[op] += 1
        n = d.get("Warp Stall Sampling (All Samples)")
        samples[op] += n if isinstance(n, float) else 0.0
        reasons[op].update({name[6:]: v for name, v in d.items()
                            if name.startswith("stall_") and "Not Issued" not in name and isinstance(v, float)})
    total = sum(samples.values()) or 1.0
    return [{"opcode": op, "share_pct": round(100 * n / total, 1), "instructions": count[op],
             "reasons_pct": {k: round(100 * v / total, 1) for k, v in reasons[op].most_common(3)}}
            for op, n in samples.most_common(top)]


def markdown(res: dict) -> str:
    meta = res.get("meta", {})
    pass_ = meta.get("pass", "bwd")
    what = {"bwd": "backward", "fwd": "forward"}[pass_]
    gates = meta.get("gates", "per head")
    lines = [f"# {gates.capitalize()} delta {what} under Nsight Compute, ours beside fla: "
             f"{meta.get('card', 'card unknown')}",
             "", f"{meta.get('date', '')}; torch {meta.get('torch')}, triton {meta.get('triton')}, CUDA "
             f"{meta.get('cuda')}, fla {meta.get('fla')}; T={meta.get('T')}, B=1, H=16, dk=dv=128, bf16.",
             f"Command: `{meta.get('command')}`", "",
             f"One {what} after two warm-up calls (`benchmarks/probes/delta_bwd_ncu.py`). Times are ncu's "
             "(kernel replayed, caches flushed), so they run longer than in the benchmark; compare the sides, "
             "and the kernels within a side. Stalls: warps stalled per issued instruction, the five largest.", ""]
    cols = ("duration", "grid", "block", "sm_pct", "mem_pct", "dram_pct", "tensor_pct", "issue_pct", "regs", "occ_pct",
            "local_ld_sectors", "local_st_sectors")
    for who in WHO:
        kernels = res.get(who)
        if kernels is None:
            continue
        total = sum(k.get("duration", 0) for k in kernels if isinstance(k.get("duration"), float))
        lines += [f"## {who}: {len(kernels)} kernels, {total / 1e3:.1f} us in all", "",
                  "| kernel | " + " | ".join(cols) + " | stalls |", "|---" * (len(cols) + 2) + "|"]
        for k in sorted(kernels, key=lambda k: -(k.get("duration") or 0)):
            cells = []
            for c in cols:
                v = k.get(c, "")
                if c == "duration" and isinstance(v, float):
                    v = f"{v / 1e3:.1f} us"
                elif c in ("grid", "block") and isinstance(v, float):
                    v = str(int(v))
                elif isinstance(v, float):
                    v = f"{v:.3g}"
                cells.append(str(v))
            stalls = ", ".join(f"{n} {v}" for n, v in k.get("stalls", {}).items())
            lines.append(f"| {k['kernel']} | " + " | ".join(cells) + f" | {stalls} |")
        lines.append("")
    label, kernel = SOURCE_KERNEL[pass_]
    if res.get(f"ours_{label}_kernel_by_opcode"):
        lines += [f"## ours: where the {label} kernel's warps stall, by SASS opcode", "",
                  f"Share of all warp-stall samples of `{kernel}` (its first launch) at each opcode, "
                  "and the three largest reasons there (shares of all samples).", "",
                  "| opcode | share | instructions | reasons |", "|---|---|---|---|"]
        for r in res[f"ours_{label}_kernel_by_opcode"]:
            why = ", ".join(f"{k} {v}%" for k, v in r["reasons_pct"].items())
            lines.append(f"| {r['opcode']} | {r['share_pct']}% | {r['instructions']} | {why} |")
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = ap.add_mutually_exclusive_group(required=True)
    mode.add_argument("--profile", type=Path, metavar="DIR", help="run ncu over both sides, CSVs into DIR")
    mode.add_argument("--summarize", type=Path, metavar="DIR", help="tables from DIR's CSVs")
    mode.add_argument("--drive", choices=WHO, help=argparse.SUPPRESS)
    ap.add_argument("--T", type=int, default=16384, help="tokens (default: %(default)s, two pieces)")
    ap.add_argument("--launch-count", type=int, default=40, help="kernels profiled per side at most")
    ap.add_argument("--pass", dest="pass_", choices=PASSES, default="bwd",
                    help="profile the backward (default) or the forward")
    ap.add_argument("--per-key", action="store_true", help="a gate per key (fla: chunk_kda), not per head")
    args = ap.parse_args()
    if args.drive:
        drive(args.drive, args.T, args.pass_, not args.per_key)
    elif args.profile:
        profile(args.profile, args.T, args.launch_count, args.pass_, not args.per_key)
        print(markdown(summarize(args.profile, write=False)))
    else:
        print(markdown(summarize(args.summarize)))


if __name__ == "__main__":
    os.environ.setdefault("TRITON_PRINT_AUTOTUNING", "0")
    main()
