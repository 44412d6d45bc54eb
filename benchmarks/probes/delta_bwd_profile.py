"""Where the delta rule's CUDA backward spends its time, and which launch parameters its launches want.

    python benchmarks/probes/delta_bwd_profile.py --out DIR [--sweep]   -> DIR/delta_bwd_profile.json, printed

The benchmark's shape (B=1, H=16, dk=dv=128, bf16, T=65,536): torch.profiler's CUDA time per kernel over one
forward+backward of the public op, then each launch of :func:`seqedge.kernels.delta_scan_bwd.delta_scan_bwd` timed
alone (triton do_bench, median) on one piece of ``delta_operands.PIECE`` tokens, with how often the backward runs
it. With ``--sweep``: the same launches under other launch parameters, each output compared with the shipped
launch's. With ``--whole``: the whole forward at two priorities of the scans' stream, and the whole backward
from the forward's saved piece states (shipped and float32 workspace) and re-scanning them. With ``--fla``: fla's
profiler table beside ours (its per-head backward past the version check, as ``benchmarks/delta_kernels.py``).
With ``--configs``: first the whole backward under each launch the op picks among and each candidate. With
``--sweep-launches``: only the whole backward under a grid of launches (:func:`sweep_launches`), per key or
(``--per-head``) per head, into ``DIR/delta_bwd_sweep.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from delta_kernels import D, H, environment, inputs, peer_guard, rel, runners  # noqa: E402


def profiler_table(T: int, per_head: bool, who: str = "ours") -> list[dict]:
    """CUDA time per kernel name over one forward+backward of ours or fla's peer (after warm-up calls)."""
    from torch.profiler import ProfilerActivity, profile

    fn = runners(per_head)[who]
    xs = [x.detach().clone().requires_grad_() for x in inputs(T, per_head)]
    do = torch.randn_like(xs[2])
    with peer_guard(per_head)[0] if who == "fla" else contextlib.nullcontext():
        for _ in range(2):
            fn(*xs).backward(do)
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            fn(*xs).backward(do)
            torch.cuda.synchronize()
    rows = []
    for ev in prof.key_averages():
        us = getattr(ev, "device_time_total", 0) or getattr(ev, "cuda_time_total", 0)
        if us > 0:
            rows.append({"kernel": ev.key[:90], "calls": ev.count, "ms": us / 1e3})
    return sorted(rows, key=lambda r: -r["ms"])


def launches(T: int, per_head: bool, sweep: bool) -> list[dict]:
    """Each launch of the backward on one piece, ms, and its count over T tokens; with ``sweep`` the chunk-local
    kernel under other launch parameters and the whole backward under other configs."""
    from triton.testing import do_bench

    from seqedge.kernels import delta_operands
    from seqedge.kernels import delta_scan_bwd as bwd_mod
    from seqedge.kernels.chunk_scan_triton import dot_precision
    from seqedge.kernels.delta_bwd_local_triton import local_grads
    from seqedge.kernels.delta_scan_triton import DeltaConfig, dstate_piece, prep, scan_piece

    P = delta_operands.PIECE
    n_pieces = T // P
    q, k, v, g, beta = inputs(T, per_head)
    g = g.unsqueeze(-1) if per_head else g
    cfg = bwd_mod.BWD_CONFIG
    do = torch.randn_like(v)
    xs = [x[:, :P].contiguous() for x in (q, k, v, g, beta, do)]
    scale = D ** -0.5
    B = 1
    f32 = dict(dtype=torch.float32, device="cuda")
    prec = dot_precision(q.dtype)
    out = []

    def bench(name, fn, count, **extra):
        ms = do_bench(fn, warmup=10, rep=50, return_mode="median")
        row = {"launch": name, "ms_per_piece": ms, "count": count, "ms_total": ms * count, **extra}
        print(row, flush=True)
        out.append(row)

    def piece_operands(c):
        qt, kt, A, w, u0, decay, inv = prep(*xs[:5], scale, c, with_inverse=True)
        ops = (qt, kt, A, w, u0, decay)
        nc = A.shape[1]
        wdt = {"dtype": bwd_mod.workspace_dtype(q), "device": "cuda"}          # as the backward allocates them
        states, u = torch.empty(B * H, nc, D, D, **wdt), torch.empty(B, P, H, D, **wdt)
        scan_piece(ops, None, s0, fin, c, store=(states, u))
        dstates, du, d_in = torch.empty_like(states), torch.empty_like(u), torch.empty(B, H, D, D, **f32)
        dstate_piece(ops, xs[5], d_out, dstates, du, d_in, c)
        return ops, inv, states, u, dstates, du, d_in

    s0 = torch.zeros(B, H, D, D, **f32)
    fin = torch.empty(B, H, D, D, **f32)
    d_out = torch.randn(B, H, D, D, **f32) * 0.1
    bench("prep with inverse", lambda: prep(*xs[:5], scale, cfg, with_inverse=True), n_pieces)
    ops, inv, states, u, dstates, du, d_in = piece_operands(cfg)
    bench("scan with stores (states, u)", lambda: scan_piece(ops, None, s0, fin, cfg, store=(states, u)), n_pieces)
    bench("dstate (reverse scan)", lambda: dstate_piece(ops, xs[5], d_out, dstates, du, d_in, cfg), n_pieces)
    outs = [torch.empty_like(x) for x in (q, k, v, g, beta)]       # the gradients, written in their dtypes

    def lg(c, bk, nw, st, dst, u_, du_, inv_, ops_):
        local_grads(*xs[:5], xs[5], u_, du_, st, dst, inv_, scale, c.chunk, bk, bwd_mod.LOCAL_BLOCK_V, nw,
                    prec, out=[x[:, :P] for x in outs])
        return [x[:, :P].clone() for x in outs]
    args = (states, dstates, u, du, inv, ops)
    bench("local_grads", lambda: lg(cfg, bwd_mod.LOCAL_BLOCK_K, bwd_mod.LOCAL_WARPS, *args), n_pieces)
    if not sweep:
        return out
    for c in (DeltaConfig(chunk=32, block_v=16), DeltaConfig(chunk=64, block_v=16)):
        ops_c, inv_c, st_c, u_c, dst_c, du_c, _ = piece_operands(c)
        a = (st_c, dst_c, u_c, du_c, inv_c, ops_c)
        ref = lg(c, bwd_mod.LOCAL_BLOCK_K, bwd_mod.LOCAL_WARPS, *a)
        for bk, nw in ((32, 4), (64, 4), (64, 8), (128, 8), (128, 4)):
            try:
                got = lg(c, bk, nw, *a)
                err = max(rel(x, y) for x, y in zip(got, ref))
                bench(f"C={c.chunk} local_grads BD={bk} warps={nw}", lambda: lg(c, bk, nw, *a), n_pieces, err=err)
            except Exception as e:  # noqa: BLE001 (a sweep records what failed and goes on)
                out.append({"launch": f"C={c.chunk} local_grads BD={bk} warps={nw}", "error": str(e)[:200]})
        del ops_c, inv_c, st_c, u_c, dst_c, du_c
    return out


def whole_backward(T: int, per_head: bool) -> list[dict]:
    """The whole backward (every launch, pieces, streams), ms: from the forward's saved piece states, with the
    shipped workspace dtype and with float32, and re-scanning the states; gradients compared with the first row's."""
    from triton.testing import do_bench

    from seqedge.kernels import delta_operands
    from seqedge.kernels import delta_scan_bwd as bwd_mod
    from seqedge.kernels.delta_scan_triton import delta_scan_fwd

    q, k, v, g, beta = inputs(T, per_head)
    g = g.unsqueeze(-1) if per_head else g
    do = torch.randn_like(v)
    d_fin = torch.zeros(1, H, D, D, dtype=torch.float32, device="cuda")
    cfg = bwd_mod.BWD_CONFIG
    saved = torch.empty(delta_operands.piece_count(T), 1, H, D, D, dtype=torch.float32, device="cuda")
    delta_scan_fwd(q, k, v, g, beta, None, D ** -0.5, cfg, entering=saved)
    shipped = bwd_mod.workspace_dtype
    variants = [("saved states, shipped workspace", saved, shipped),
                ("saved states, float32 workspace", saved, lambda q: torch.float32),
                ("re-scan, shipped workspace", None, shipped)]
    out, ref = [], None
    for name, ent, wdt in variants:
        run = lambda ent=ent: bwd_mod.delta_scan_bwd(q, k, v, g, beta, None, do, d_fin, D ** -0.5,
                                                     bwd_mod.BwdLaunch(cfg), entering=ent)
        bwd_mod.workspace_dtype = wdt
        try:
            ms = do_bench(run, warmup=5, rep=60, return_mode="median")
            got = run()
            ref = ref or got
            err = max(rel(a, b) for a, b in zip(got, ref))
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
            run()
            torch.cuda.synchronize()
        finally:
            bwd_mod.workspace_dtype = shipped
        row = {"backward": name, "ms": ms, "err_vs_first": err,
               "peak_gb": (torch.cuda.max_memory_allocated() - base) / 1e9}
        print(row, flush=True)
        out.append(row)
    return out


def sweep_launches(per_head: bool) -> list:
    """The launches ``--sweep-launches`` times: chunk, the chunk-local kernel's key block, value block and warps,
    and with a gate per head its dots' operands at both precisions (with a gate per key chunk 32 only: chunk 64's
    decayed blocks grow with the chunk's square)."""
    from seqedge.kernels.delta_scan_bwd import BwdLaunch
    from seqedge.kernels.delta_scan_triton import DeltaConfig

    chunks = (32, 64) if per_head else (32,)
    return [BwdLaunch(DeltaConfig(chunk=c, block_v=16, num_stages=3), local_block_k=bk, local_warps=nw,
                      local_block_v=bv, local_low_dots=low)
            for c in chunks for bk in (32, 64, 128) for bv in ((16, 32, 64) if per_head else (32, 64))
            for nw in (4, 8) for low in ((False, True) if per_head else (False,))]


def backward_configs(T: int, per_head: bool, launches: list | None = None) -> list[dict]:
    """The whole backward from the forward's saved piece states under each launch the op picks among and each
    candidate (``delta_scan_bwd.BWD_LAUNCHES``, ``PENDING_BWD_LAUNCHES``), or under ``launches``, ms; gradients
    compared with the first launch's."""
    from triton.testing import do_bench

    from seqedge.kernels import delta_operands
    from seqedge.kernels import delta_scan_bwd as bwd_mod
    from seqedge.kernels.delta_scan_triton import delta_scan_fwd

    q, k, v, g, beta = inputs(T, per_head)
    g = g.unsqueeze(-1) if per_head else g
    do = torch.randn_like(v)
    d_fin = torch.zeros(1, H, D, D, dtype=torch.float32, device="cuda")
    saved = torch.empty(delta_operands.piece_count(T), 1, H, D, D, dtype=torch.float32, device="cuda")
    delta_scan_fwd(q, k, v, g, beta, None, D ** -0.5, bwd_mod.BWD_CONFIG, entering=saved)   # pieces, not chunks
    out, ref = [], None
    pending = set(bwd_mod.PENDING_BWD_LAUNCHES[per_head])
    if launches is None:
        launches = [*bwd_mod.BWD_LAUNCHES[per_head], *bwd_mod.PENDING_BWD_LAUNCHES[per_head]]
    for launch in launches:
        run = lambda: bwd_mod.delta_scan_bwd(q, k, v, g, beta, None, do, d_fin, D ** -0.5, launch, entering=saved)
        try:
            ms = do_bench(run, warmup=5, rep=40, return_mode="median")
            got = run()
            ref = ref or got
            row = {"backward": repr(launch), "ms": ms, "err_vs_first": max(rel(a, b) for a, b in zip(got, ref)),
                   "pending": launch in pending}
        except Exception as e:  # noqa: BLE001 (a sweep records what failed and goes on)
            row = {"backward": repr(launch), "error": str(e)[:200]}
        print(row, flush=True)
        out.append(row)
    return out


def forward_streams(T: int, per_head: bool) -> list[dict]:
    """The forward (the op's picked config), ms, with the scans' stream at the shipped priority and at 0, and the
    host's lookahead of preps at 1 and the shipped one."""
    from triton.testing import do_bench

    from seqedge.kernels import delta_scan_triton as fwd_mod

    q, k, v, g, beta = inputs(T, per_head)
    g = g.unsqueeze(-1) if per_head else g
    cfg = fwd_mod.pick_config(q, k, v, g, beta, None, D ** -0.5)
    shipped, ahead, out = fwd_mod.SCAN_PRIORITY, fwd_mod.PREP_LOOKAHEAD, []
    for prio, look in ((shipped, ahead), (0, ahead), (shipped, 1)):
        fwd_mod.SCAN_PRIORITY, fwd_mod.PREP_LOOKAHEAD = prio, look
        try:
            ms = do_bench(lambda: fwd_mod.delta_scan_fwd(q, k, v, g, beta, None, D ** -0.5, cfg), warmup=10,
                          rep=100, return_mode="median")
        finally:
            fwd_mod.SCAN_PRIORITY, fwd_mod.PREP_LOOKAHEAD = shipped, ahead
        row = {"forward": f"C={cfg.chunk} BV={cfg.block_v}, scans' priority {prio}, lookahead {look}", "ms": ms}
        print(row, flush=True)
        out.append(row)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--T", type=int, default=65536)
    ap.add_argument("--sweep", action="store_true")
    ap.add_argument("--per-head", action="store_true", help="also the per-head gates")
    ap.add_argument("--fla", action="store_true", help="also fla's profiler table beside ours")
    ap.add_argument("--configs", action="store_true",
                    help="first the whole backward under each launch the op picks among (per-head gates with "
                    "--per-head, else per-key)")
    ap.add_argument("--whole", action="store_true",
                    help="the whole forward (scans' priority) and backward (saved states or re-scan, workspace)")
    ap.add_argument("--configs-only", action="store_true", help="--configs, and nothing after it")
    ap.add_argument("--sweep-launches", action="store_true",
                    help="instead of the rest: the whole backward under a grid of launches (sweep_launches)")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    res = {**environment(sys.argv), "T": args.T}           # card, date, versions and command
    path = os.path.join(args.out, "delta_bwd_profile.json")
    if args.sweep_launches:
        key = "sweep_launches_per_head" if args.per_head else "sweep_launches_per_key"
        res[key] = backward_configs(args.T, args.per_head, sweep_launches(args.per_head))
        json.dump(res, open(os.path.join(args.out, "delta_bwd_sweep.json"), "w"), indent=1)
        return
    if args.configs or args.configs_only:
        res["backward_configs_per_head" if args.per_head else "backward_configs_per_key"] = backward_configs(
            args.T, args.per_head)
        json.dump(res, open(path, "w"), indent=1)
        if args.configs_only:
            return
    for per_head in (False, True) if args.per_head else (False,):
        key = "per_head" if per_head else "per_key"
        if args.whole:
            res[f"forward_{key}"] = forward_streams(args.T, per_head)
            res[f"whole_{key}"] = whole_backward(args.T, per_head)
        res[f"launches_{key}"] = launches(args.T, per_head, args.sweep and not per_head)
        json.dump(res, open(path, "w"), indent=1)
        res[f"profiler_{key}"] = profiler_table(args.T, per_head)
        for r in res[f"profiler_{key}"][:14]:
            print(f"{key} {r['ms']:9.3f} ms {r['calls']:5d}x {r['kernel']}", flush=True)
        json.dump(res, open(path, "w"), indent=1)
        if args.fla:
            res[f"fla_profiler_{key}"] = profiler_table(args.T, per_head, "fla")
            for r in res[f"fla_profiler_{key}"][:14]:
                print(f"fla {key} {r['ms']:9.3f} ms {r['calls']:5d}x {r['kernel']}", flush=True)
            json.dump(res, open(path, "w"), indent=1)


if __name__ == "__main__":
    main()
