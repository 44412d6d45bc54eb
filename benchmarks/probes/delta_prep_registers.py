"""Registers and spills of the delta rule's register prep, compiled offline for a GPU architecture (no GPU needed).

The register prep (:mod:`seqedge.kernels.delta_prep_regs_triton`) holds a chunk's scores and inverse in registers,
so its footprint decides whether it spills and how many programs share a multiprocessor. This compiles it (and,
with ``--baseline REV``, repeatable, the same file as of git revisions, for a before/after of a rewrite) for
sm_<arch> with ptxas -v, at head dim 128, bf16 inputs, float32 gates, over chunk, key block, warps and gate kind.

    python benchmarks/probes/delta_prep_registers.py --out benchmarks/results [--baseline REV ...] [--arch 90]
"""

from __future__ import annotations

import argparse
import importlib.util
import itertools
import json
import os
import re
import subprocess
import sys
import tempfile

from kernel_registers import command_line, ptxas_usage, write_record

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
POINTERS = dict(q="*bf16", k="*bf16", v="*bf16", g="*fp32", beta="*bf16", qt="*bf16", kt="*bf16", A="*bf16",
                w="*bf16", u0="*bf16", decay="*fp32", inverse="*fp32", T="i32", H="i32", NC="i32", scale="fp32")


def _module_at(rev: str, path: str, name: str, replace: tuple[str, str] | None = None):
    """``path`` (a file of seqedge's kernels package) as of git revision ``rev``, loaded as the module
    ``seqedge.kernels.<name>`` (``replace``: one text substitution first, to point an import at another such
    module). triton reads a kernel's source from its file, so the copy stays on disk."""
    source = subprocess.run(["git", "-C", ROOT, "show", f"{rev}:{path}"], capture_output=True, text=True,
                            check=True).stdout
    if replace:
        source = source.replace(*replace)
    file = os.path.join(tempfile.mkdtemp(), name + ".py")
    with open(file, "w") as f:
        f.write(source)
    spec = importlib.util.spec_from_file_location(f"seqedge.kernels.{name}", file)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def kernel_at(rev: str | None):
    """``_delta_prep_regs_kernel`` of the working tree, or of kernels/delta_prep_regs_triton.py at ``rev``, with
    the helpers it imports from delta_prep_triton.py at the same revision."""
    from seqedge.kernels import delta_prep_regs_triton

    if rev is None:
        return delta_prep_regs_triton._delta_prep_regs_kernel
    tag = re.sub(r"\W", "_", rev)
    _module_at(rev, "kernels/delta_prep_triton.py", f"_delta_prep_triton_at_{tag}")
    module = _module_at(rev, "kernels/delta_prep_regs_triton.py", f"_delta_prep_regs_at_{tag}",
                        ("from .delta_prep_triton import", f"from ._delta_prep_triton_at_{tag} import"))
    return module._delta_prep_regs_kernel


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="folder for delta_prep_registers.json / .md")
    ap.add_argument("--arch", type=int, default=90, help="compute capability x10 (90: H100, H200)")
    ap.add_argument("--baseline", action="append", default=[],
                    help="a git revision whose register prep is compiled beside the working tree's (repeatable)")
    args = ap.parse_args(argv)
    import triton

    head = subprocess.run(["git", "-C", ROOT, "describe", "--always", "--dirty"], capture_output=True, text=True,
                          check=True).stdout.strip()
    versions = [(head, kernel_at(None))]
    versions += [(rev, kernel_at(rev)) for rev in args.baseline]
    rows = []
    grid = itertools.product(versions, (False, True), (32, 64), (16, 32, 64), (1, 2, 4))
    for (version, fn), per_head, chunk, bd, warps in grid:
        params = fn.arg_names
        if chunk not in (16, 32) and "PER_HEAD" not in params:
            continue                       # the chunk-32 kernel before the four-block rewrite
        gate = dict(PER_HEAD=per_head) if "PER_HEAD" in params else dict(GK=1 if per_head else 128)
        constexprs = dict(DK=128, DV=128, C=chunk, BD=bd, PREC="tf32", WITH_INVERSE=False, **gate)
        signature = {name: POINTERS.get(name, "constexpr") for name in params}
        try:
            usage = ptxas_usage(fn, signature, constexprs, warps, args.arch)
        except Exception as e:                                   # noqa: BLE001 - recorded as the row's outcome
            usage = dict(error=f"{type(e).__name__}: {str(e).splitlines()[0][:200]}")
        row = dict(version=version, gates="per head" if per_head else "per key", chunk=chunk, key_block=bd,
                   num_warps=warps, **usage)
        if "registers" in row:
            row["footprint_registers"] = row["registers"] * 32 * warps
        rows.append(row)
        print(json.dumps(row), flush=True)
    command = command_line()
    failed = lambda r, key: r[key] if "registers" in r else (r["error"] if key == "registers" else "")
    write_record(args.out, "delta_prep_registers",
                 "The delta register prep: registers and spills (compiled offline, ptxas -v)",
                 [f"target: sm_{args.arch}; triton {triton.__version__}; head dim 128, bf16 inputs, float32 gates; "
                  "no inverse written", f"command: `{command}`"],
                 {"version": lambda r: r["version"], "gates": lambda r: r["gates"], "chunk": lambda r: r["chunk"],
                  "key block": lambda r: r["key_block"], "warps": lambda r: r["num_warps"],
                  "registers / thread": lambda r: failed(r, "registers"),
                  "spill stores B": lambda r: failed(r, "spill_stores"),
                  "spill loads B": lambda r: failed(r, "spill_loads")},
                 rows, arch=args.arch, command=command, triton=triton.__version__)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
