"""Benchmark of seqedge.kernels on one CUDA card: chunk scan vs fla and torch SDPA, and CUDA-graph decode.

    python benchmarks/kernels.py --out benchmarks/results

Writes ``kernels.json`` and ``kernels.md`` (card, date, versions, command) into ``--out``; the JSON is rewritten
after every measurement so a run cut short keeps what it measured. Peers that are not installed or that run out
of memory are recorded as such, never estimated. Times are medians of CUDA-event timings after a warm-up call.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import torch

from config_timing import event_ms, replay_us, run_meta, scan_inputs

H, D = 16, 128
TARGETS = {"fwd_ms_T65536": 2.0, "fwdbwd_ms_T65536": 10.0, "fwd_peak_gb_T131072": 2.5}


def _time_ms(fn, budget_ms: float = 250.0, max_reps: int = 30) -> float:
    """Median of per-call CUDA-event times; one warm-up call, then as many calls as fit the budget (>= 3)."""
    fn()
    torch.cuda.synchronize()
    times = []
    reps = max_reps
    for i in range(max_reps):
        times.append(event_ms(fn))
        if i == 0:
            reps = max(3, min(max_reps, int(budget_ms / max(times[0], 1e-3))))
        if len(times) >= reps:
            break
    return statistics.median(times)


def _peak_extra_gb(fn) -> tuple[float, float]:
    """(peak bytes allocated above what was allocated before the call, peak total) in GB, outputs included."""
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    out = fn()
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated()
    del out
    return (peak - base) / 1e9, peak / 1e9


def copy_bandwidth_gbs() -> float:
    x = torch.empty(2 * 1024 ** 3, dtype=torch.uint8, device="cuda").random_()
    y = torch.empty_like(x)
    ms = _time_ms(lambda: y.copy_(x), budget_ms=200)
    return 2 * x.numel() / (ms * 1e-3) / 1e9


def _methods():
    """name -> (fwd(inputs) callable, supports backward)."""
    from seqedge.kernels import chunk_scan

    methods = {"seqedge chunk_scan": lambda q, k, v, g, gh, beta: chunk_scan(q, k, v, g, beta)[0]}
    try:
        from fla.ops.gla import chunk_gla
        from fla.ops.simple_gla import chunk_simple_gla

        methods["fla chunk_gla"] = lambda q, k, v, g, gh, beta: chunk_gla(q, k, v, g)[0]
        methods["fla chunk_simple_gla"] = lambda q, k, v, g, gh, beta: chunk_simple_gla(q, k, v, g=gh)[0]
    except ImportError as err:
        print(f"fla not importable ({err}); pip install flash-linear-attention to compare", flush=True)
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.nn.functional import scaled_dot_product_attention as sdpa

    def sdpa_fn(backend):
        def run(q, k, v, g, gh, beta):
            with sdpa_kernel(backend):
                return sdpa(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=True)
        return run

    methods["torch SDPA flash"] = sdpa_fn(SDPBackend.FLASH_ATTENTION)
    methods["torch SDPA cuDNN"] = sdpa_fn(SDPBackend.CUDNN_ATTENTION)
    return methods


def _allowed(name: str, B: int, T: int, backward: bool) -> str | None:
    """Why a measurement is skipped (time budget of one lease), or None."""
    if name.startswith("torch SDPA") and B * T > (32768 if backward else 65536):
        return "quadratic attention: skipped above B*T = %d to fit the lease" % (32768 if backward else 65536)
    return None


def bench_scan(results: dict, save, lens, batches, bw: float, only: set[str] | None = None) -> None:
    methods = {name: fn for name, fn in _methods().items() if not only or name in only}
    for name, fn in methods.items():                     # ours first: a run cut short still measured it
        for B in batches:
            for T in lens:
                q, k, v, g, beta = scan_inputs(B, T, H, D, seed=T + B)[1]
                gh = g[..., 0].float().contiguous()
                _bench_one(results, save, name, fn, B, T, (q, k, v, g, gh, beta), bw)
                del q, k, v, g, gh, beta
                torch.cuda.empty_cache()


def _bench_one(results, save, name, fn, B, T, inputs, bw) -> None:
    q, k, v, g, gh, beta = inputs
    ess_bytes = 5 * B * T * H * D * 2                      # q, k, v, g read + o written (bf16)
    row = dict(B=B, T=T, method=name)
    try:
        why = _allowed(name, B, T, False)
        if why:
            row["fwd_note"] = why
        else:
            with torch.no_grad():
                row["fwd_ms"] = _time_ms(lambda: fn(*inputs))
                row["fwd_peak_extra_gb"], row["fwd_peak_total_gb"] = _peak_extra_gb(lambda: fn(*inputs))
            row["fwd_eff_bw_gbs"] = ess_bytes / (row["fwd_ms"] * 1e-3) / 1e9
            row["fwd_eff_bw_frac_of_copy"] = row["fwd_eff_bw_gbs"] / bw
    except torch.OutOfMemoryError:
        row["fwd_note"] = "out of memory"
    except Exception as err:                         # a peer failing must not end the run
        row["fwd_note"] = f"error: {type(err).__name__}: {str(err)[:200]}"
    torch.cuda.empty_cache()
    try:
        why = _allowed(name, B, T, True)
        if why:
            row["fwdbwd_note"] = why
        else:
            leaves = [x.requires_grad_() for x in (q, k, v, g, gh, beta)]   # no copies: B=8, T=131k is 17 GB
            do = torch.randn_like(v)

            def fwd_bwd():
                for x in leaves:
                    x.grad = None
                o = fn(*leaves)
                o = o.transpose(1, 2) if o.shape != do.shape else o
                o.backward(do)
            row["fwdbwd_ms"] = _time_ms(fwd_bwd, budget_ms=400, max_reps=10)
            del leaves
    except torch.OutOfMemoryError:
        row["fwdbwd_note"] = "out of memory"
    except Exception as err:
        row["fwdbwd_note"] = f"error: {type(err).__name__}: {str(err)[:200]}"
    torch.cuda.empty_cache()
    results["scan"].append(row)
    print(json.dumps(row), flush=True)
    save()


def bench_step(results: dict, save) -> None:
    """One layer's decode step, B=1, H=16, D=128: fused kernel vs eager PyTorch vs fla fused_recurrent_gla."""
    from seqedge.kernels import step_scan
    from seqedge.scan import recurrent_step

    B = 1
    q, k, g = (torch.randn(B, H, D, device="cuda") for _ in range(3))
    g = -torch.rand(B, H, D, device="cuda")
    v, beta = torch.randn(B, H, D, device="cuda"), torch.rand(B, H, device="cuda")
    state = torch.randn(B, H, D, D, device="cuda")
    rows = {"seqedge step_scan (Triton)": lambda: step_scan(q, k, v, g, beta, state, rule="gated"),
            "seqedge recurrent_step (eager PyTorch)": lambda: recurrent_step(q, k, v, g, beta, state, rule="gated")}
    try:
        from fla.ops.gla import fused_recurrent_gla

        qb, kb, vb = (x[:, None].to(torch.bfloat16) for x in (q, k, v))
        rows["fla fused_recurrent_gla (T=1)"] = lambda: fused_recurrent_gla(
            qb, kb, vb, g[:, None], initial_state=state, output_final_state=True)
    except ImportError:
        pass
    n = 50
    for name, fn in rows.items():
        try:                                             # GPU time per call: n calls captured in one graph
            fn()
            torch.cuda.synchronize()
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                for _ in range(n):
                    fn()
            ms = _time_ms(graph.replay, budget_ms=100, max_reps=50) / n
            eager_ms = _time_ms(fn, budget_ms=50, max_reps=100)
        except Exception as err:
            results["step"].append(dict(method=name, note=f"error: {type(err).__name__}: {str(err)[:150]}"))
            continue
        results["step"].append(dict(method=name, B=B, H=H, D=D, us=ms * 1e3, eager_launch_us=eager_ms * 1e3))
        print(results["step"][-1], flush=True)
    save()


DECODE_STEPS = {"fused": "fused Triton + graph", "fused-nopdl": "fused Triton + graph, no PDL",
                "compile": "torch.compile + graph", "eager": "eager ops + graph"}
# (batch, step): the batch-1 target first (a run cut short has measured what matters most); torch.compile only at
# batch 1 (one multi-second compile per preset and batch size)
DECODE_ROWS = ((1, "fused"), (1, "fused-nopdl"), (1, "compile"), (1, "eager"), (8, "fused"), (8, "eager"),
               (64, "fused"), (64, "eager"))


def _decoder(model, B: int, step: str):
    from seqedge.kernels.decode_fused import FusedDecoder
    from seqedge.kernels.decode_graph import GraphDecoder

    if step.startswith("fused"):
        return FusedDecoder(model, batch_size=B, pdl=False if step == "fused-nopdl" else None)
    return GraphDecoder(model, batch_size=B, compile=step == "compile")


def bench_decode(results: dict, save, bw: float) -> None:
    """Whole-model decode in one CUDA graph at batch 1, 8, 64: the fused Triton decoder (kernels/decode_fused.py)
    and the model's own step (eager ops; torch.compile at batch 1 only). Each row also records how far the first
    token's logits are from ``model.step`` (same bf16 model, zero state): a sanity check, not the tests."""
    from seqedge.config import SequentialAttentionConfig
    from seqedge.model import SequentialAttentionModel

    for preset in ("small", "base"):
        torch.manual_seed(0)
        model = SequentialAttentionModel(SequentialAttentionConfig.preset(preset)).to("cuda", torch.bfloat16).eval()
        w_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
        for B, step in DECODE_ROWS:
            row = dict(preset=preset, B=B, step=DECODE_STEPS[step])
            try:
                dec = _decoder(model, B, step)
            except Exception as err:                     # a compile failure must not end the run
                row["note"] = f"error: {type(err).__name__}: {str(err)[:150]}"
                results["decode"].append(row)
                save()
                continue
            row.update(_time_decoder(dec, model, B, w_bytes, bw))
            results["decode"].append(row)
            print(row, flush=True)
            save()
            del dec


def _time_decoder(dec, model, B: int, w_bytes: int, bw: float, n: int = 200) -> dict:
    """Mean time of ``n`` graph replays (us per token), the bandwidth floor, and the first token's error."""
    s_bytes = sum(t.numel() * t.element_size() for t in dec.states)
    tok = torch.randint(0, 256, (B,), device="cuda")
    with torch.no_grad():
        ref, _ = model.step(tok, model.init_state(B))
    dec.reset()
    got = dec.step(tok)
    row = dict(rel_err_vs_model_step=float((got.double() - ref.double()).norm() / ref.double().norm()))
    if hasattr(dec, "launches_per_step"):
        row.update(launches_per_token=dec.launches_per_step, pdl=dec.pdl)
    us = replay_us(dec.graph.replay, n, warmup=0)
    floor_us = (w_bytes + 2 * s_bytes) / (bw * 1e9) * 1e6
    row.update(us_per_token=us, floor_us=floor_us, x_floor=us / floor_us, weight_bytes=w_bytes, state_bytes=s_bytes)
    return row


def bench_decode_sweep(results: dict, save, bw: float) -> None:
    """The fused decoder's launch parameters: at the target (small, batch 1), every FUSED_CONFIGS entry x GEMV
    programs per batch row (half, one, two per SM); at batch 16 and 64 (small and base), the first entry with its
    batched tensor-core kernels off (batch_tile 0: one GEMV program per batch row and weight tile) and with 16 and
    32 batch rows per program."""
    from seqedge.config import SequentialAttentionConfig
    from seqedge.kernels.decode_fused import FUSED_CONFIGS, FusedDecoder
    from seqedge.model import SequentialAttentionModel

    sms = torch.cuda.get_device_properties(0).multi_processor_count
    batched = [(B, FUSED_CONFIGS[0]._replace(batch_tile=bt), sms) for B in (16, 64) for bt in (0, 16, 32) if bt <= B]
    cases = {"small": [(1, cfg, programs) for cfg in FUSED_CONFIGS for programs in (sms // 2, sms, 2 * sms)] + batched,
             "base": batched}
    for preset, runs in cases.items():
        torch.manual_seed(0)
        model = SequentialAttentionModel(SequentialAttentionConfig.preset(preset)).to("cuda", torch.bfloat16).eval()
        w_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
        for B, cfg, programs in runs:
            row = dict(preset=preset, B=B, config=cfg._asdict(), programs=programs)
            try:
                dec = FusedDecoder(model, B, config=cfg, programs=programs)
                row.update(_time_decoder(dec, model, B, w_bytes, bw))
            except Exception as err:
                row["note"] = f"error: {type(err).__name__}: {str(err)[:150]}"
            results["decode_sweep"].append(row)
            print(row, flush=True)
            save()


def _scan_lines(scan: list[dict]) -> list[str]:
    """The chunk-scan table (by batch, method in run order, length) and the targets for ours at B=1."""
    lines = ["| B | T | method | fwd ms | fwd+bwd ms | fwd peak extra GB | eff. BW GB/s (% copy) | notes |",
             "|---|---|---|---|---|---|---|---|"]
    f = lambda r, key, fmt: (fmt % r[key]) if key in r else "-"
    order = list(dict.fromkeys(r.get("method", "") for r in scan))
    for r in sorted(scan, key=lambda r: (r["B"], order.index(r.get("method", "")), r["T"])):
        if "method" not in r:
            lines.append(f"| {r['B']} | {r['T']} | - | - | - | - | - | {r.get('note', '')} |")
            continue
        bwp = (f"{r['fwd_eff_bw_gbs']:.0f} ({100 * r['fwd_eff_bw_frac_of_copy']:.0f}%)"
               if "fwd_eff_bw_gbs" in r else "-")
        notes = "; ".join(r[k] for k in ("fwd_note", "fwdbwd_note") if k in r)
        lines.append(f"| {r['B']} | {r['T']} | {r['method']} | {f(r, 'fwd_ms', '%.3f')} | "
                     f"{f(r, 'fwdbwd_ms', '%.2f')} | {f(r, 'fwd_peak_extra_gb', '%.2f')} | {bwp} | {notes} |")
    ours = {(r["B"], r["T"]): r for r in scan if r.get("method") == "seqedge chunk_scan"}
    lines += ["\n## Targets, B=1\n", "| target | goal | measured | verdict |", "|---|---|---|---|"]
    for key, goal, (B, T), field in (("fwd_ms_T65536", 2.0, (1, 65536), "fwd_ms"),
                                     ("fwdbwd_ms_T65536", 10.0, (1, 65536), "fwdbwd_ms"),
                                     ("fwd_peak_gb_T131072", 2.5, (1, 131072), "fwd_peak_extra_gb")):
        val = ours.get((B, T), {}).get(field)
        if val is None:
            lines.append(f"| {key} | <= {goal} | not measured | - |")
        else:
            verdict = "met" if val <= goal else f"missed by {val - goal:.2f} ({val / goal:.1f}x the goal)"
            lines.append(f"| {key} | <= {goal} | {val:.3f} | {verdict} |")
    return lines


def write_markdown(results: dict, path: str) -> None:
    m = results["meta"]
    lines = ["# seqedge.kernels benchmark\n", f"- card: {m['card']}", f"- date (UTC): {m['date']}",
             f"- versions: {m['versions']}", f"- command: `{m['command']}`",
             f"- measured copy bandwidth: {m['copy_bw_gbs']:.0f} GB/s (bytes read + written)",
             f"- shapes: H={H}, head dim {D}, bf16 q/k/v/g, beta float32 (ours only); times are medians (ms)",
             "- fwd+bwd: forward, then backward of sum(o * do) for random do (all inputs require grad)\n"]
    lines += _scan_lines(results["scan"]) if results["scan"] else [
        "Chunk scan: not measured in this run (`--skip scan`)."]
    if results["step"]:
        lines += ["\n## One layer's decode step (B=1, H=16, D=128)\n",
                  "| method | us per call, 50 calls in a CUDA graph | us per call, eager (launch included) |",
                  "|---|---|---|"]
    lines += [f"| {r['method']} | {r['us']:.1f} | {r['eager_launch_us']:.1f} |" if "us" in r
              else f"| {r['method']} | {r['note']} | - |" for r in results["step"]]
    lines += ["\n## Whole-model decode in one CUDA graph (bf16 weights, float32 state)\n",
              "| preset | batch | step | us / token | floor us (weights + 2x state) / copy BW | x floor | "
              "1st-token logits rel. err vs model.step |", "|---|---|---|---|---|---|---|"]
    how = lambda r: r["step"] + (f" ({r['launches_per_token']} launches)" if "launches_per_token" in r else "")
    err = lambda r: f"{r['rel_err_vs_model_step']:.1e}" if "rel_err_vs_model_step" in r else "-"
    lines += [f"| {r['preset']} | {r['B']} | {how(r)} | {r['us_per_token']:.1f} | {r['floor_us']:.1f} | "
              f"{r['x_floor']:.1f} | {err(r)} |" if "us_per_token" in r else f"| {r['preset']} | {r['B']} | "
              f"{how(r)} | {r['note']} | - | - | - |" for r in results["decode"]]
    if results.get("decode_sweep"):
        lines += ["\n## Fused decoder launch parameters\n",
                  "| preset | batch | config | GEMV programs per batch row | us / token | x floor |",
                  "|---|---|---|---|---|---|"]
        lines += [f"| {r['preset']} | {r['B']} | {r['config']} | {r['programs']} | "
                  + (f"{r['us_per_token']:.1f} | {r['x_floor']:.2f} |" if "us_per_token" in r else f"{r['note']} | - |")
                  for r in results["decode_sweep"]]
    with open(path, "w") as fh:
        fh.write("\n".join(lines) + "\n")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="benchmarks/results")
    ap.add_argument("--lens", default="2048,8192,32768,65536,131072")
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--skip", default="", help="comma list of sections to skip: scan,step,decode,sweep")
    ap.add_argument("--methods", default="", help="comma list: only these scan methods (e.g. 'seqedge chunk_scan,"
                    "fla chunk_gla'); default all")
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("benchmarks/kernels.py needs a CUDA GPU; none is visible", file=sys.stderr)
        return 2
    import triton

    versions = {"torch": torch.__version__, "triton": triton.__version__, "cuda": torch.version.cuda}
    try:
        import fla
        versions["fla"] = fla.__version__
    except ImportError:
        versions["fla"] = "not installed"
    os.makedirs(args.out, exist_ok=True)
    results = {"meta": {**run_meta("H=16, head dim 128, bf16"), "versions": versions}, "scan": [], "step": [],
               "decode": [], "decode_sweep": []}

    def save():
        with open(os.path.join(args.out, "kernels.json"), "w") as fh:
            json.dump(results, fh, indent=1)
        write_markdown(results, os.path.join(args.out, "kernels.md"))

    t0 = time.time()
    results["meta"]["copy_bw_gbs"] = copy_bandwidth_gbs()
    print("copy bandwidth GB/s", results["meta"]["copy_bw_gbs"], flush=True)
    skip = set(args.skip.split(","))
    only = {m.strip() for m in args.methods.split(",") if m.strip()} or None
    if "step" not in skip:
        bench_step(results, save)
    lens, batches = [int(x) for x in args.lens.split(",")], [int(x) for x in args.batches.split(",")]
    bw = results["meta"]["copy_bw_gbs"]
    # The targets first (every method at the first batch size), then decode, then the other batch sizes:
    # a run cut short by its time box has measured what matters most.
    if "scan" not in skip:
        bench_scan(results, save, lens, batches[:1], bw, only)
    if "decode" not in skip:
        bench_decode(results, save, bw)
    if "sweep" not in skip:
        bench_decode_sweep(results, save, bw)
    if "scan" not in skip and batches[1:]:
        bench_scan(results, save, lens, batches[1:], bw, only)
    results["meta"]["wall_s"] = time.time() - t0
    save()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
