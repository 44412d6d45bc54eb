"""Where the delta rule's CUDA forward spends its time, and which launch parameters its launches want.

    python benchmarks/probes/delta_fwd_profile.py --out DIR [--fla] [--budget S] [--warps ..] [--stages ..] [--split]
        -> DIR/delta_fwd_profile.json
    python benchmarks/probes/delta_fwd_profile.py --out DIR --configs [--per-head | --per-key]
        -> DIR/delta_fwd_configs.json

The benchmark's shape (B=1, H=16, dk=dv=128, bf16). On one piece of ``delta_operands.PIECE`` tokens, each gate
kind: the prep under several (chunk, key block, warps), the scan under several (chunk, value block, warps,
stages, split o), each output compared with the first config's; a synthetic one-dot chain ``S' = P S + Q`` (what
the scan's critical path would be with the two dots of the recurrence folded into one state map per chunk); then
the whole forward at T=65,536 under the fastest scan configs, and with ``--fla`` torch.profiler's CUDA time per
kernel of fla's forward. Stops starting new measurements after ``--budget`` seconds.

``--configs`` instead: the whole forward at T=65,536 under each candidate (``PENDING_CONFIGS``) and the configs the
op picks among (``DELTA_CONFIGS``) of a candidate's chunk and prep kind (``--every``: all of them), those
``timed_for`` the gates, each output compared with the first config's, and fla's forward on the same inputs in the
same process.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from pathlib import Path

import torch
import triton
import triton.language as tl

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from delta_kernels import D, H, inputs, rel  # noqa: E402


@triton.jit
def _chain_kernel(P, Q, states, NC, DK: tl.constexpr, DV: tl.constexpr, BV: tl.constexpr):
    """S_{n+1} = P_n S_n + Q_n for one (head, value block), S_n stored in P's dtype: the one-dot chain."""
    i_bh = tl.program_id(0)
    i_v = tl.program_id(1)
    rk = tl.arange(0, DK)
    rv = i_v * BV + tl.arange(0, BV)
    S = tl.zeros([DK, BV], dtype=tl.float32)
    for n in range(NC):
        idx = i_bh.to(tl.int64) * NC + n
        p = tl.load(P + idx * DK * DK + rk[:, None] * DK + rk[None, :])
        qq = tl.load(Q + idx * DK * DV + rk[:, None] * DV + rv[None, :]).to(tl.float32)
        tl.store(states + idx * DK * DV + rk[:, None] * DV + rv[None, :], S.to(states.dtype.element_ty))
        S = tl.dot(p, S.to(p.dtype)) + qq


def forward_configs(T: int, per_head: bool, every: bool) -> list[dict]:
    """The whole forward under each candidate and, after them, each config the op picks among (with ``every``;
    else only those of a candidate's chunk and prep kind, the baselines), ms (triton do_bench, median), peak memory
    above the inputs, o and the final state compared with the first config's; then fla's forward (``"fla"``),
    where installed."""
    from triton.testing import do_bench

    from delta_kernels import peak_gb, runners

    from seqedge.kernels import delta_scan_triton as fwd_mod

    q, k, v, g, beta = inputs(T, per_head)
    gk = g.unsqueeze(-1) if per_head else g
    pending = [c for c in fwd_mod.PENDING_CONFIGS if c.timed_for(per_head)]
    shipped = [c for c in fwd_mod.DELTA_CONFIGS if c.timed_for(per_head) and (every or any(
        c.chunk == p.chunk and c.register_prep == p.register_prep for p in pending))]
    configs = pending + shipped          # candidates first: a run cut short by its time box still times them
    rows, ref = [], None
    for cfg in configs:
        run = lambda: fwd_mod.delta_scan_fwd(q, k, v, gk, beta, None, D ** -0.5, cfg)   # noqa: E731
        try:
            got = run()
            ref = ref or got
            row = {"config": repr(cfg), "pending": cfg in pending,
                   "ms": do_bench(run, warmup=10, rep=50, return_mode="median"),
                   "err_o_final_vs_first": [rel(got[0], ref[0]), rel(got[1], ref[1])],
                   "peak_gb": peak_gb(lambda *xs: fwd_mod.delta_scan_fwd(*xs, None, D ** -0.5, cfg),
                                      (q, k, v, gk, beta), backward=False)}
        except Exception as e:  # noqa: BLE001  a probe: record what failed and go on
            row = {"config": repr(cfg), "pending": cfg in pending, "error": repr(e)[:200]}
        print(row, flush=True)
        rows.append(row)
    peer = runners(per_head).get("fla")
    if peer is not None:
        with torch.no_grad():
            row = {"config": "fla", "ms": do_bench(lambda: peer(q, k, v, g, beta), warmup=10, rep=50,
                                                   return_mode="median"),
                   "err_o_vs_first": rel(peer(q, k, v, g, beta), ref[0]) if ref else None}
        print(row, flush=True)
        rows.append(row)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--configs", action="store_true",
                    help="only the whole forward under each config and candidate, beside fla's")
    ap.add_argument("--every", action="store_true",
                    help="with --configs: every config the op picks among, not only a candidate's baselines")
    gates = ap.add_mutually_exclusive_group()
    gates.add_argument("--per-head", action="store_true", help="with --configs: per-head gates only")
    gates.add_argument("--per-key", action="store_true", help="with --configs: per-key gates only")
    ap.add_argument("--fla", action="store_true")
    ap.add_argument("--budget", type=float, default=400.0)
    ap.add_argument("--warps", type=int, nargs="+", default=[4], help="scan warps to sweep")
    ap.add_argument("--stages", type=int, nargs="+", default=[3, 4, 2], help="scan load stages to sweep")
    ap.add_argument("--split", action="store_true", help="also sweep o formed after the scan (split_o)")
    args = ap.parse_args()
    if args.configs:
        from delta_kernels import environment
        res = {**environment(sys.argv), "T": 65536}
        for per_head in (True,) if args.per_head else (False,) if args.per_key else (False, True):
            key = "forward_configs_per_head" if per_head else "forward_configs_per_key"
            res[key] = forward_configs(res["T"], per_head, args.every)
            Path(args.out).mkdir(parents=True, exist_ok=True)
            (Path(args.out) / "delta_fwd_configs.json").write_text(json.dumps(res, indent=1) + "\n")
        return
    from triton.testing import do_bench

    from seqedge.kernels import delta_operands
    from seqedge.kernels.delta_scan_triton import DeltaConfig, delta_scan_fwd, prep, scan_piece

    t_start = time.time()
    left = lambda: args.budget - (time.time() - t_start)
    P = delta_operands.PIECE
    res = {"prep": [], "scan": [], "chain": [], "whole": [], "fla": {}}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    save = lambda: (out / "delta_fwd_profile.json").write_text(json.dumps(res, indent=1))
    bench = lambda fn: do_bench(fn, warmup=10, rep=50, return_mode="median")
    scale = D ** -0.5
    for per_head in (True, False):
        q, k, v, g, beta = (x[:, :P].contiguous() for x in inputs(P, per_head))
        g = g.unsqueeze(-1) if per_head else g
        kind = "per_head" if per_head else "per_key"
        for chunk in (64, 32):
            base = None
            for bk, pw in ((32, 4), (64, 4), (64, 8)):
                if left() < 0:
                    break
                cfg = DeltaConfig(chunk=chunk, block_v=16, prep_block_k=bk, prep_warps=pw)
                try:
                    ops = prep(q, k, v, g, beta, scale, cfg)
                    err = 0.0 if base is None else max(rel(a, b) for a, b in zip(ops, base))
                    base = base or ops
                    ms = bench(lambda: prep(q, k, v, g, beta, scale, cfg))
                except Exception as e:  # noqa: BLE001  a probe: record and go on
                    ms, err = None, repr(e)[:200]
                res["prep"].append({"kind": kind, "chunk": chunk, "block_k": bk, "warps": pw, "ms": ms, "err": err})
                print("prep", res["prep"][-1], flush=True)
            save()
            ops = base
            o_ref = final_ref = None
            grid = itertools.product((16, 32, 64), args.warps, args.stages, (False, True) if args.split else (False,))
            for bv, nw, ns, split in grid:
                if left() < 0:
                    continue
                cfg = DeltaConfig(chunk=chunk, block_v=bv, num_warps=nw, num_stages=ns, split_o=split)
                o = torch.full_like(v, float("nan"))
                fin = torch.full((1, H, D, D), float("nan"), device="cuda")
                try:
                    scan_piece(ops, o, None, fin, cfg)
                    torch.cuda.synchronize()
                    if o_ref is None:
                        o_ref, final_ref = o.clone(), fin.clone()
                    errs = (rel(o, o_ref), rel(fin, final_ref))
                    ms = bench(lambda: scan_piece(ops, o, None, fin, cfg))
                except Exception as e:  # noqa: BLE001
                    ms, errs = None, repr(e)[:200]
                row = {"kind": kind, "chunk": chunk, "block_v": bv, "warps": nw, "stages": ns, "split": split,
                       "ms": ms, "err_o_final": errs}
                res["scan"].append(row)
                print("scan", row, flush=True)
                save()
            if per_head and chunk == 32 and left() > 0:
                from seqedge.kernels.delta_scan_triton import dstate_piece
                B, _, _, DK = q.shape
                states = torch.empty(B * H, P // chunk, D, D, dtype=q.dtype, device="cuda")
                u, du, do = torch.empty_like(v), torch.empty_like(v), torch.randn_like(v)
                dstates, f = torch.empty_like(states), torch.zeros(B, H, D, D, device="cuda")
                for ns in (2, 3, 4):
                    cfg = DeltaConfig(chunk=32, block_v=16, num_stages=ns)
                    row = {"chunk": 32, "block_v": 16, "stages": ns,
                           "bwd_scan_ms": bench(lambda: scan_piece(ops, None, f, fin, cfg, store=(states, u))),
                           "bwd_dstate_ms": bench(lambda: dstate_piece(ops, do, f, dstates, du, fin, cfg))}
                    res.setdefault("bwd_scans", []).append(row)
                    print("bwd", row, flush=True)
            if per_head and left() > 0:
                NC = P // chunk
                Pm = (torch.randn(H, NC, D, D, device="cuda") / D ** 0.5).bfloat16()
                Qm = torch.randn(H, NC, D, D, device="cuda")
                st = torch.empty(H, NC, D, D, device="cuda", dtype=torch.bfloat16)
                for bv, nw in ((16, 4), (32, 4), (64, 4)):
                    fn = lambda: _chain_kernel[(H, D // bv)](Pm, Qm, st, NC, DK=D, DV=D, BV=bv, num_warps=nw)
                    row = {"chunk": chunk, "block_v": bv, "warps": nw, "ms": bench(fn)}
                    res["chain"].append(row)
                    print("chain", row, flush=True)
                save()
    # the whole forward, T = 65,536, under the fastest scan configs per gate kind that agree with the first config
    T = 65536
    for per_head in (True, False):
        kind = "per_head" if per_head else "per_key"
        ok = [r for r in res["scan"] if r["kind"] == kind and r["ms"] is not None
              and max(r["err_o_final"]) < 1e-2]
        ok.sort(key=lambda r: r["ms"])
        xs = inputs(T, per_head)
        cands = [(r, bk) for r in ok[:3] for bk in (32, 64)]
        for r, bk in cands:
            if left() < 0:
                break
            cfg = DeltaConfig(chunk=r["chunk"], block_v=r["block_v"], num_warps=r["warps"], num_stages=r["stages"],
                              split_o=r["split"], prep_block_k=bk)
            g = xs[3].unsqueeze(-1) if per_head else xs[3]
            ms = bench(lambda: delta_scan_fwd(xs[0], xs[1], xs[2], g, xs[4], None, scale, cfg))
            res["whole"].append({"kind": kind, **{k_: r[k_] for k_ in ("chunk", "block_v", "warps", "stages",
                                                                     "split")}, "prep_block_k": bk, "ms": ms})
            print("whole", res["whole"][-1], flush=True)
            save()
    if args.fla and left() > 0:
        from torch.profiler import ProfilerActivity, profile

        from fla.ops.gated_delta_rule import chunk_gated_delta_rule
        from fla.ops.kda import chunk_kda
        for per_head, fn in ((True, chunk_gated_delta_rule), (False, chunk_kda)):
            xs = inputs(T, per_head)
            with torch.no_grad():
                for _ in range(3):
                    fn(*xs)
                torch.cuda.synchronize()
                with profile(activities=[ProfilerActivity.CUDA]) as prof:
                    fn(*xs)
                    torch.cuda.synchronize()
                total = bench(lambda: fn(*xs))
            rows = []
            for ev in prof.key_averages():
                us = getattr(ev, "device_time_total", 0) or getattr(ev, "cuda_time_total", 0)
                if us > 0:
                    rows.append({"kernel": ev.key[:80], "calls": ev.count, "ms": us / 1e3})
            res["fla"]["per_head" if per_head else "per_key"] = {"fwd_ms": total,
                                                                 "kernels": sorted(rows, key=lambda r: -r["ms"])}
            print("fla", per_head, total, rows, flush=True)
            save()
    save()
    print("summary (fastest scans first):")
    for kind in ("per_head", "per_key"):
        rows = sorted((r for r in res["scan"] if r["kind"] == kind and r["ms"]), key=lambda r: r["ms"])
        for r in rows[:6]:
            print(kind, r)
    for r in res["whole"]:
        print("whole", r)


if __name__ == "__main__":
    main()
