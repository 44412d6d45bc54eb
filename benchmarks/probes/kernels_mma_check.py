"""Run the Triton chunk scan on a few bf16 cases in fresh processes, with Hopper wgmma (MMAv3) on and off.

    python benchmarks/probes/kernels_mma_check.py

Triton 3.4-3.7 has been reported to miscompile kernels of this kind on Hopper; this separates a compiler
problem (fails only with MMAv3) from a kernel bug (fails both ways). Prints one line per case and mode.
"""

from __future__ import annotations

import os
import subprocess
import sys

CASE = r"""
import sys, torch
from seqedge.kernels.chunk_scan_triton import ScanConfig, chunk_scan_fwd
from seqedge.scan import chunked_scan
B, T, H, dk, dv, chunk, block_v, warps = (int(x) for x in sys.argv[1:9])
cfg = ScanConfig(chunk=chunk, block_v=block_v, num_warps=warps)
torch.manual_seed(0)
q, k, v = (torch.randn(B, T, H, d, device="cuda").bfloat16() for d in (dk, dk, dv))
g, beta = -5 * torch.rand(B, T, H, dk, device="cuda"), torch.rand(B, T, H, device="cuda")
o = torch.full((B, T, H, dv), float("nan"), device="cuda", dtype=torch.bfloat16)
fin = torch.full((B, H, dk, dv), float("nan"), device="cuda")
chunk_scan_fwd(q, k, v, g, beta, None, dk ** -0.5, cfg, out=(o, fin))
torch.cuda.synchronize()
ro, rs = chunked_scan(*(x.double() for x in (q, k, v, g, beta)), rule="gated")
rel = lambda a, b: float((a.double() - b).norm() / b.norm())
print(f"rel o {rel(o, ro):.2e} state {rel(fin, rs):.2e} nan {bool(torch.isnan(o).any())}")
"""

# (B, T, H, dk, dv, chunk, block_v, num_warps): four configs spanning FWD_CONFIGS and EXCLUDED_CONFIGS
CONFIGS = [(64, 64, 8), (64, 32, 4), (32, 64, 4), (32, 128, 8)]
CASES = ([(1, 200, 2, 128, 128, *c) for c in CONFIGS] + [(1, 1, 1, 64, 64, 32, 128, 8), (2, 100, 3, 64, 64, 64, 64, 8)]
         + [(2, 64, 2, 128, 64, *c) for c in CONFIGS])


def main() -> int:
    for mode in ("0", "1"):
        for case in CASES:
            env = dict(os.environ, DISABLE_MMA_V3=mode)
            res = subprocess.run([sys.executable, "-c", CASE, *map(str, case)], env=env, capture_output=True,
                                 text=True, timeout=120)
            out = res.stdout.strip() or (res.stderr.strip().splitlines() or ["?"])[-1][:160]
            print(f"DISABLE_MMA_V3={mode} B,T,H,dk,dv,chunk,block_v,warps={case}: {out}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
