"""Which call crashes the delta kernel's comparison with fla (tests/test_kernels_delta_gpu.py::test_delta_against_fla)?

Each variant runs in its own process (a segmentation fault ends only that one) with faulthandler on, on the
test's inputs (B=2, T=64, H=4, dk=dv=128, bf16 q/k/v, float32 gates and beta, a float32 initial state):
with fla imported before or after seqedge (pytest's conftest imports seqedge first), with the conftest's imports
and its one intra-op thread, with or without gradients and the initial state, and fla's own call; and the forward
of each launch config alone. All variants run at once. Prints one line per variant: its exit code and the last
lines of its output.

    python -P benchmarks/probes/delta_fla_crash.py [--no-fla-calls] [--timeout=S]
"""

from __future__ import annotations

import subprocess
import sys
import time

VARIANTS = {
    "ours fwd+grad, s0, no fla": dict(fla_import=False, grad=True, s0=True, call="ours"),
    "ours fwd+grad, s0, fla imported": dict(fla_import=True, grad=True, s0=True, call="ours"),
    "ours fwd only, s0, fla imported": dict(fla_import=True, grad=False, s0=True, call="ours"),
    "ours fwd+grad, no s0, fla imported": dict(fla_import=True, grad=True, s0=False, call="ours"),
    "fla fwd+grad, s0": dict(fla_import=True, grad=True, s0=True, call="fla"),
    "fla then ours, fwd+grad, s0": dict(fla_import=True, grad=True, s0=True, call="both"),
    # what the pytest process does before the test: the conftest's imports and one thread, then fla's import
    "seqedge imported before fla, ours": dict(fla_import="after", grad=True, s0=True, call="ours"),
    "one thread, fla imported, ours": dict(fla_import=True, grad=True, s0=True, call="ours", threads1=True),
    "conftest imports, fla after, ours": dict(fla_import="after", grad=True, s0=True, call="ours", conftest=True),
    "conftest imports, fla after, fla then ours": dict(fla_import="after", grad=True, s0=True, call="both",
                                                       conftest=True, threads1=True),
}
# the forward of one launch config alone (no timing of the others), on the same inputs: which config, if any,
# makes an illegal memory access at this shape
CONFIGS = {"C=32 BV=32": dict(chunk=32, block_v=32), "C=64 BV=16": dict(chunk=64, block_v=16),
           "C=32 BV=16": dict(chunk=32, block_v=16), "C=64 BV=16 split_o": dict(chunk=64, block_v=16, split_o=True),
           "C=32 BV=16 split_o": dict(chunk=32, block_v=16, split_o=True),
           "C=64 BV=64 w8 split_o": dict(chunk=64, block_v=64, num_warps=8, split_o=True)}
for _name, _cfg in CONFIGS.items():
    for _per_head in (False, True):
        VARIANTS[f"config {_name}{' per-head' if _per_head else ''}, fwd, s0"] = dict(
            fla_import=False, grad=False, s0=True, call="config", config=_cfg, per_head=_per_head)
# the launches one at a time: the prep alone at both chunk lengths, and the backward (the chunk-local kernel)
for _chunk in (32, 64):
    for _per_head in (False, True):
        VARIANTS[f"prep C={_chunk}{' per-head' if _per_head else ''}"] = dict(
            fla_import=False, grad=False, s0=True, call="prep", config=dict(chunk=_chunk, block_v=16),
            per_head=_per_head)
for _per_head in (False, True):
    VARIANTS[f"backward C=32{' per-head' if _per_head else ''}, s0"] = dict(
        fla_import=False, grad=True, s0=True, call="bwd", config=dict(chunk=32, block_v=32), per_head=_per_head)

CHILD = r'''
import faulthandler, sys, torch
faulthandler.enable()
opts = eval(sys.argv[1])
if opts.get("threads1"):
    torch.set_num_threads(1)
if opts.get("conftest"):
    sys.path.insert(0, "tests")
    import _artifacts
if opts["fla_import"] is True:
    from fla.ops.kda import chunk_kda
from seqedge.kernels import delta_scan
if opts["fla_import"] == "after":
    from fla.ops.kda import chunk_kda
gen = torch.Generator(device="cuda").manual_seed(64)
r = lambda *s: torch.randn(*s, generator=gen, device="cuda")
B, T, H, D = 2, 64, 4, 128
q = r(B, T, H, D).bfloat16(); k = torch.nn.functional.normalize(r(B, T, H, D), dim=-1).bfloat16()
v = r(B, T, H, D).bfloat16(); g = -5.0 * torch.rand(B, T, H, D, generator=gen, device="cuda")
beta = torch.rand(B, T, H, generator=gen, device="cuda"); s0 = r(B, H, D, D) if opts["s0"] else None
if opts["call"] in ("config", "prep", "bwd"):
    from seqedge.kernels.delta_scan_triton import DeltaConfig, delta_scan_fwd, prep
    from seqedge.kernels.delta_scan_bwd import BwdLaunch, delta_scan_bwd
    gh = g[..., :1].contiguous() if opts["per_head"] else g
    cfg = DeltaConfig(**opts["config"])
    if opts["call"] == "config":
        outs = delta_scan_fwd(q, k, v, gh, beta, s0, D ** -0.5, cfg)
    elif opts["call"] == "prep":
        outs = prep(q, k, v, gh, beta, D ** -0.5, cfg)
    else:
        outs = delta_scan_bwd(q, k, v, gh, beta, s0, torch.randn_like(v), torch.randn_like(s0), D ** -0.5,
                              BwdLaunch(cfg))
    torch.cuda.synchronize()
    print(opts["call"], "ok", [round(float(x.float().norm()), 4) for x in outs])
    sys.exit(0)
calls = {"ours": [delta_scan], "fla": [], "both": []}[opts["call"]]
if opts["call"] in ("fla", "both"):
    calls = [chunk_kda] + ([delta_scan] if opts["call"] == "both" else [])
for fn in calls:
    leaves = [x.detach().clone().requires_grad_(opts["grad"]) for x in (q, k, v, g, beta)]
    with torch.set_grad_enabled(opts["grad"]):
        o, fin = fn(*leaves, initial_state=s0, output_final_state=True)
        if opts["grad"]:
            grads = torch.autograd.grad(o, leaves, torch.randn_like(o))
    torch.cuda.synchronize()
    print(fn.__name__, "ok", tuple(o.shape), float(o.float().norm()))
'''


def main() -> int:
    """Every variant at once (each compiles its own kernels), all given ``--timeout=S`` seconds (80) from the start;
    ``--no-fla-calls`` leaves out the variants that call fla's kernels (their compiling takes minutes)."""
    timeout = float(next((a.split("=", 1)[1] for a in sys.argv if a.startswith("--timeout=")), 80))
    variants = {name: opts for name, opts in VARIANTS.items()
                if "--no-fla-calls" not in sys.argv or opts["call"] not in ("fla", "both")}
    procs = {name: subprocess.Popen([sys.executable, "-P", "-c", CHILD, repr(opts)], stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, text=True) for name, opts in variants.items()}
    deadline = time.monotonic() + timeout
    for name, proc in procs.items():
        try:
            out, err = proc.communicate(timeout=max(deadline - time.monotonic(), 1.0))
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
            err += f"\n(not finished in {timeout:.0f} s)"
        tail = " | ".join((out + err).strip().splitlines()[-4:])
        print(f"{name}: exit {proc.returncode}: {tail}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
