"""Registers and spills of the delta rule's chunk-local backward kernel under each launch the op picks among and each
candidate, compiled offline for a GPU architecture (no GPU needed).

:mod:`seqedge.kernels.delta_bwd_local_triton` keeps a chunk's terms in registers (one gate per head) or in a
float32 scratch between phases (a gate per key); how much it spills at a launch's chunk, key block, value block and
warps is what separates its launches before a card times them. Compiled for sm_<arch> with ptxas -v, head dim 128,
bf16 inputs and workspace (``delta_scan_bwd.workspace_dtype``), for every launch in ``delta_scan_bwd.BWD_LAUNCHES``
and ``PENDING_BWD_LAUNCHES``.

    python benchmarks/probes/delta_local_registers.py --out benchmarks/results [--arch 90]
"""

from __future__ import annotations

import argparse
import json

from kernel_registers import command_line, ptxas_usage, write_record

FP32 = {"inv", "part", "scratch"}
SCALARS = dict(T="i32", T_OUT="i32", H="i32", NC="i32", scale="fp32")


def launches() -> list[tuple[str, bool, object]]:
    """(which list, gates per head, launch) of every launch the backward may pick and of the candidates."""
    from seqedge.kernels import delta_scan_bwd as bwd

    return [(kind, per_head, launch) for kind, table in (("picked among", bwd.BWD_LAUNCHES),
                                                         ("pending", bwd.PENDING_BWD_LAUNCHES))
            for per_head in (False, True) for launch in table[per_head]]


def usage(launch, per_head: bool, arch: int) -> dict:
    """ptxas' registers and spills of the chunk-local kernel as ``launch`` runs it at head dim 128, bf16."""
    from seqedge.kernels.delta_bwd_local_triton import _delta_local_grad_kernel as fn

    constexprs = dict(DK=128, DV=128, GK=1 if per_head else 128, C=launch.config.chunk,
                      BD=min(launch.local_block_k, 128), BV=min(launch.local_block_v, 128), PREC="tf32",
                      LOW=launch.local_low_dots and per_head)
    signature = {name: "constexpr" if name in constexprs else SCALARS.get(name, "*fp32" if name in FP32 else "*bf16")
                 for name in fn.arg_names}
    return ptxas_usage(fn, signature, constexprs, launch.local_warps, arch)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="folder for delta_local_registers.json / .md")
    ap.add_argument("--arch", type=int, default=90, help="compute capability x10 (90: H100, H200)")
    args = ap.parse_args(argv)
    import triton

    rows = []
    for kind, per_head, launch in launches():
        row = dict(launches=kind, gates="per head" if per_head else "per key", chunk=launch.config.chunk,
                   key_block=launch.local_block_k, value_block=launch.local_block_v, num_warps=launch.local_warps,
                   low_dots=launch.local_low_dots,
                   **usage(launch, per_head, args.arch))
        rows.append(row)
        print(json.dumps(row), flush=True)
    command = command_line()
    write_record(args.out, "delta_local_registers",
                 "The delta rule's chunk-local backward kernel: registers and spills (compiled offline, ptxas -v)",
                 [f"target: sm_{args.arch}; triton {triton.__version__}; head dim 128, bf16 inputs and workspace",
                  f"command: `{command}`"],
                 {"launches": lambda r: r["launches"], "gates": lambda r: r["gates"], "chunk": lambda r: r["chunk"],
                  "key block": lambda r: r["key_block"], "value block": lambda r: r["value_block"],
                  "warps": lambda r: r["num_warps"], "bf16 operands formed in the kernel": lambda r: r["low_dots"],
                  "registers / thread": lambda r: r["registers"], "spill stores B": lambda r: r["spill_stores"],
                  "spill loads B": lambda r: r["spill_loads"]},
                 rows, arch=args.arch, command=command, triton=triton.__version__)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
