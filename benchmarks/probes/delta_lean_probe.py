"""The delta forward with o beside the chain (``DeltaConfig.lean`` per head, ``split_o`` per key) against the
fused configs and fla, on one card.

    python benchmarks/probes/delta_lean_probe.py --out DIR [--rounds 3] [--no-fla]

B=1, H=16, dk=dv=128, bf16, T=65,536 (the benchmark's shape). Per gate kind: every config's whole forward
(``delta_scan_fwd``, pieces of 8,192 tokens), timed in alternating rounds (median of CUDA events per round), fla's
forward in the same rounds; each lean config's launches alone over the whole length as one piece (prep, chain, o);
and correctness first: each config's o and final state against float64 (T=3,000, pieces of 1,024 tokens, ``--dtypes``) and against the first fused config's at the timed shape. Writes ``delta_lean_probe.json`` after every
measurement.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import os
import statistics
import sys

import torch

B, H, D, T = 1, 16, 128, 65536


def inputs(T: int, per_head: bool, dtype, seed: int = 0):
    gen = torch.Generator(device="cuda").manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=gen, device="cuda")
    q = r(B, T, H, D).to(dtype)
    k = torch.nn.functional.normalize(r(B, T, H, D), dim=-1).to(dtype)
    v = r(B, T, H, D).to(dtype)
    g = -0.5 * torch.rand(B, T, H, 1 if per_head else D, generator=gen, device="cuda")
    beta = torch.rand(B, T, H, generator=gen, device="cuda").to(dtype)
    return q, k, v, g, beta


def rel(x, ref) -> float:
    return float((x.double() - ref.double()).norm() / ref.double().norm().clamp_min(1e-30))


def name(cfg) -> str:
    extra = " lean" if cfg.lean else (" split_o" if cfg.split_o else "")
    out = f" out {cfg.out_block_v}/{cfg.out_warps}w solve {cfg.solve_warps}w" if cfg.lean else ""
    return f"C={cfg.chunk} BV={cfg.block_v} pk={cfg.prep_block_k} w={cfg.num_warps} st={cfg.num_stages}{extra}{out}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--no-fla", action="store_true")
    ap.add_argument("--dtypes", nargs="+", type=lambda n: getattr(torch, n), default=[torch.float32, torch.bfloat16],
                    help="dtypes of the float64 checks (float32 bfloat16)")
    ap.add_argument("--gates", nargs="+", choices=("per_head", "per_key"), default=["per_head", "per_key"])
    args = ap.parse_args()
    from triton.testing import do_bench

    from seqedge.kernels.delta_scan_triton import DeltaConfig, delta_scan_fwd, forward_prep
    from seqedge.kernels.delta_scan_triton import chain_piece, out_piece
    from seqedge.scan import chunked_scan

    fused = {True: [DeltaConfig(chunk=64, block_v=64, num_stages=3, prep_block_k=64)],
             False: [DeltaConfig(chunk=32, block_v=64, num_stages=3), DeltaConfig(chunk=32, block_v=16, num_stages=3)]}
    lean_cfgs = [DeltaConfig(chunk=64, block_v=bv, num_stages=3, prep_block_k=64, lean=True, solve_warps=sw)
                 for bv, sw in ((16, 2), (16, 1), (16, 4), (32, 2))]
    lean_cfgs += [DeltaConfig(chunk=64, block_v=16, num_stages=3, prep_block_k=32, lean=True)]
    split = {True: [], False: [DeltaConfig(chunk=32, block_v=bv, num_stages=3, split_o=True) for bv in (16, 32, 64)]}
    res = {"meta": {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(), "argv": sys.argv,
                    "device": torch.cuda.get_device_name(), "torch": torch.__version__,
                    "triton": importlib.import_module("triton").__version__}, "check": {}, "fwd_ms": {},
           "launch_ms": {}, "errors": {}}
    path = os.path.join(args.out, "delta_lean_probe.json")
    save = lambda: json.dump(res, open(path, "w"), indent=1)
    for per_head in (True, False):
        kind = "per_head" if per_head else "per_key"
        if kind not in args.gates:
            continue
        cfgs = fused[per_head] + (lean_cfgs if per_head else []) + split[per_head]
        # correctness against float64, two dtypes, pieces carrying the state
        for dtype in args.dtypes:
            q, k, v, g, beta = inputs(3000, per_head, dtype, seed=1)
            s0 = torch.randn(B, H, D, D, device="cuda")
            ro, rs = chunked_scan(*(x.double() for x in (q, k, v, g.expand(B, 3000, H, D), beta)), rule="delta",
                                  initial_state=s0.double())
            for cfg in cfgs:
                try:
                    o, s = delta_scan_fwd(q, k, v, g, beta, s0, D ** -0.5, cfg, piece=1024)
                    torch.cuda.synchronize()
                    res["check"][f"{kind} {dtype} {name(cfg)}"] = [rel(o, ro), rel(s, rs)]
                except Exception as e:  # noqa: BLE001 - a probe records a failing config and goes on
                    res["errors"][f"{kind} {dtype} {name(cfg)}"] = repr(e)[:400]
                print(kind, dtype, name(cfg), res["check"].get(f"{kind} {dtype} {name(cfg)}"), flush=True)
            save()
        xs = inputs(T, per_head, torch.bfloat16)
        ref_o, ref_s = delta_scan_fwd(*xs, None, D ** -0.5, cfgs[0])
        runs = {}
        for cfg in cfgs:
            key = f"{kind} {name(cfg)}"
            if any(e.startswith(kind) and e.endswith(name(cfg)) for e in res["errors"]):
                continue
            o, s = delta_scan_fwd(*xs, None, D ** -0.5, cfg)
            res["check"][f"{kind} T={T} vs first {name(cfg)}"] = [rel(o, ref_o), rel(s, ref_s)]
            runs[key] = (lambda c: lambda: delta_scan_fwd(*xs, None, D ** -0.5, c))(cfg)
        if not args.no_fla and importlib.util.find_spec("fla") is not None:
            try:
                if per_head:
                    from fla.ops.gated_delta_rule import chunk_gated_delta_rule as peer
                else:
                    from fla.ops.kda import chunk_kda as peer
                q, k, v, g, beta = xs
                gg = g[..., 0] if per_head else g
                peer(q, k, v, gg, beta)
                runs[f"{kind} fla"] = lambda: peer(q, k, v, gg, beta)
            except Exception as e:  # noqa: BLE001
                res["errors"][f"{kind} fla"] = repr(e)[:400]
        save()
        with torch.no_grad():
            for r in range(args.rounds):
                order = list(runs) if r % 2 == 0 else list(reversed(runs))
                for key in order:
                    res["fwd_ms"].setdefault(key, []).append(do_bench(runs[key], warmup=10, rep=100,
                                                                      return_mode="median"))
                save()
        for key, ts in res["fwd_ms"].items():
            if key.startswith(kind):
                print(f"{key}: {statistics.median(ts):.3f} ms  {['%.3f' % t for t in ts]}", flush=True)
        # launches alone, the whole length as one piece
        q, k, v, g, beta = xs
        final = torch.empty(B, H, D, D, device="cuda")
        o = torch.empty_like(v)
        for cfg in cfgs:
            if not (cfg.lean or cfg.split_o) and cfg is not cfgs[0]:
                continue
            ops = forward_prep(q, k, v, g, beta, D ** -0.5, cfg)
            chained = chain_piece(ops, o, None, final, cfg)
            entry = {"prep": do_bench(lambda: forward_prep(q, k, v, g, beta, D ** -0.5, cfg), return_mode="median"),
                     "chain": do_bench(lambda: chain_piece(ops, o, None, final, cfg), return_mode="median")}
            if chained is not None:
                entry["o"] = do_bench(lambda: out_piece(ops, chained, o, D ** -0.5, cfg), return_mode="median")
            res["launch_ms"][f"{kind} {name(cfg)}"] = entry
            print(kind, name(cfg), {a: round(b, 3) for a, b in entry.items()}, flush=True)
            save()
    print("done", flush=True)


if __name__ == "__main__":
    main()
