"""Registers and spills of the prepass kernels, compiled offline for a GPU architecture (no GPU needed).

Triton compiles to PTX for a named target without a device; the ptxas shipped in the triton wheel then reports
each kernel's registers per thread and spill traffic (``ptxas -v``). A program's register footprint (registers x
threads) bounds how many programs share a multiprocessor, which is what a latency-bound kernel such as the
prepass (benchmarks/results/fwd_call_overhead.md) lives on. Shapes: head dim 128,
chunk 32, bf16.

    python benchmarks/probes/kernel_registers.py --out benchmarks/results [--arch 90]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile

PREP_SIGNATURE = dict(q="*bf16", k="*bf16", g="*bf16", beta="*fp32", qt="*bf16", kt="*bf16", A="*bf16",
                      decay="*fp32", T="i32", H="i32", NC="i32", scale="fp32", DK="constexpr", C="constexpr",
                      PREC="constexpr")


def ptxas_usage(fn, signature: dict, constexprs: dict, num_warps: int, arch: int) -> dict:
    """``{"registers", "spill_stores", "spill_loads"}`` of ``fn`` compiled for sm_<arch> with ``num_warps``."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    kernel = triton.compile(ASTSource(fn=fn, signature=signature, constexprs=constexprs),
                            target=GPUTarget("cuda", arch, 32), options=dict(num_warps=num_warps))
    ptxas = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "ptxas")
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "kernel.ptx")
        with open(path, "w") as f:
            f.write(kernel.asm["ptx"])
        gpu = f"sm_{arch}a" if arch >= 90 else f"sm_{arch}"
        report = subprocess.run([ptxas, "-v", f"--gpu-name={gpu}", path, "-o", os.devnull], capture_output=True,
                                text=True, check=True).stderr
    number = lambda pattern: int(re.search(pattern, report).group(1))
    return dict(registers=number(r"Used (\d+) registers"), spill_stores=number(r"(\d+) bytes spill stores"),
                spill_loads=number(r"(\d+) bytes spill loads"))


def command_line() -> str:
    """This run's command as a record gives it: the script's path from the repository root, then its arguments."""
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    return "python " + " ".join([os.path.relpath(sys.argv[0], root)] + sys.argv[1:])


def write_record(out: str, stem: str, title: str, notes: list[str], columns: dict, rows: list[dict],
                 **meta) -> None:
    """``out/<stem>.json`` (``meta`` and the rows) and ``out/<stem>.md``: ``title``, ``notes`` as a list, and a
    table of the rows with ``columns`` (header -> a function of a row giving its cell)."""
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, f"{stem}.json"), "w") as f:
        json.dump(dict(**meta, rows=rows), f, indent=1)
    lines = [f"# {title}", "", *(f"- {note}" for note in notes), "", "| " + " | ".join(columns) + " |",
             "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(str(cell(r)) for cell in columns.values()) + " |" for r in rows]
    with open(os.path.join(out, f"{stem}.md"), "w") as f:
        f.write("\n".join(lines) + "\n")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="folder for kernel_registers.json / .md")
    ap.add_argument("--arch", type=int, default=90, help="compute capability x10 (90: H100)")
    args = ap.parse_args(argv)
    from seqedge.kernels import chunk_scan_triton as cst

    cases = [("_chunk_prep_kernel (whole rows)", cst._chunk_prep_kernel, PREP_SIGNATURE, {}, w) for w in (2, 4)]
    cases += [(f"_chunk_prep_cols_kernel (BD={bd})", cst._chunk_prep_cols_kernel, {**PREP_SIGNATURE, "BD": "constexpr"},
               dict(BD=bd), w) for bd in (16, 32) for w in (2, 4)]
    rows = []
    for name, fn, sig, extra, warps in cases:
        row = dict(kernel=name, num_warps=warps, **ptxas_usage(fn, sig, dict(DK=128, C=32, PREC="tf32", **extra),
                                                               warps, args.arch))
        row["footprint_registers"] = row["registers"] * 32 * warps
        rows.append(row)
        print(json.dumps(row), flush=True)
    command = command_line()
    write_record(args.out, "kernel_registers", "Prepass kernels: registers and spills (compiled offline, ptxas -v)",
                 [f"target: sm_{args.arch}; head dim 128, chunk 32, bf16", f"command: `{command}`"],
                 {"kernel": lambda r: f"`{r['kernel']}`", "warps": lambda r: r["num_warps"],
                  "registers / thread": lambda r: r["registers"], "spill stores B": lambda r: r["spill_stores"],
                  "spill loads B": lambda r: r["spill_loads"],
                  "registers / program": lambda r: r["footprint_registers"]},
                 rows, arch=args.arch, command=command)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
