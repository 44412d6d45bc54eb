"""Benchmark of the delta rule's Triton chunk scan beside fla on one CUDA card.

    python benchmarks/delta_kernels.py --out benchmarks/results [--who ours fla] [--rows fwd fwdbwd ...]

B=1, H=16, dk=dv=128, bf16: forward and forward+backward times at T=65,536 and peak memory at T=131,072, for
per-key gates (ours against fla's chunk_kda) and per-head gates (ours against fla's chunk_gated_delta_rule), on the
same inputs. Writes ``delta_kernels.json`` and ``delta_kernels.md`` (card, date, versions, command); the JSON is
rewritten after every measurement so a run cut short keeps what it measured. Times: medians of CUDA-event timings
(triton.testing.do_bench) after warm-up. Peak memory: the most allocated above the inputs during the call,
outputs and gradients included.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import importlib
import json
import os
import sys
from unittest import mock

import torch

B, H, D = 1, 16, 128
TARGETS = {"fwd_ratio": 2 / 3, "fwdbwd_ratio": 1.0, "peak_ratio": 0.5}    # ours / fla, at most
GATES = {False: "per-key (fla: chunk_kda)", True: "per-head (fla: chunk_gated_delta_rule)"}
GRADS = ("o", "dq", "dk", "dv", "dg", "dbeta")          # the grads row: the output, then the inputs' gradients


def inputs(T: int, per_head: bool, seed: int = 0) -> tuple[torch.Tensor, ...]:
    gen = torch.Generator(device="cuda").manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=gen, device="cuda")
    q = r(B, T, H, D).bfloat16()
    k = torch.nn.functional.normalize(r(B, T, H, D), dim=-1).bfloat16()
    v = r(B, T, H, D).bfloat16()
    g = -0.5 * torch.rand(B, T, H, *(() if per_head else (D,)), generator=gen, device="cuda")
    beta = torch.rand(B, T, H, generator=gen, device="cuda").bfloat16()
    return q, k, v, g, beta


def rel(x: torch.Tensor, ref: torch.Tensor) -> float:
    """Relative L2 error of ``x`` against ``ref``, in float64 (NaN where ``x`` has one)."""
    x, ref = x.double(), ref.double()
    return float((x - ref).norm() / ref.norm().clamp_min(1e-30))


def runners(per_head: bool) -> dict:
    """name -> fn(q, k, v, g, beta) -> o, for ours and fla's peer (absent when fla is not installed)."""
    from seqedge.kernels import delta_scan

    out = {"ours": lambda q, k, v, g, beta: delta_scan(q, k, v, g, beta)[0]}
    if importlib.util.find_spec("fla") is not None:
        if per_head:
            from fla.ops.gated_delta_rule import chunk_gated_delta_rule as peer
        else:
            from fla.ops.kda import chunk_kda as peer
        out["fla"] = lambda q, k, v, g, beta: peer(q, k, v, g, beta)[0]
    return out


def peer_guard(per_head: bool) -> tuple[contextlib.AbstractContextManager, str | None]:
    """The context fla's per-head calls run in, and a note for the record when it differs from fla's own.

    fla 0.6 refuses its gated backward (``chunk_bwd_dqkwg``) on Hopper with Triton in [3.4, 3.7.1): Triton
    miscompiles that kernel at key block 64 (fla issue #640; its bisection found key blocks 32 and 128 correct).
    On a Hopper card fla's wrapper picks key block 128 for dk=128, outside the miscompiled width, so there the
    benchmark lets the call past the version check, and the ``grads`` row compares fla's gradients with ours on the
    same inputs: a miscompiled backward shows there as an error of order one.
    """
    if not per_head or importlib.util.find_spec("fla") is None:
        return contextlib.nullcontext(), None
    chunk_o = importlib.import_module("fla.ops.common.chunk_o")
    refused = chunk_o.IS_NVIDIA_HOPPER and chunk_o.TRITON_ABOVE_3_4_0 and not chunk_o.TRITON_ABOVE_3_7_1
    if not refused or D != 128 or not chunk_o.check_shared_mem("hopper", torch.cuda.current_device()):
        return contextlib.nullcontext(), None
    return (mock.patch.object(chunk_o, "TRITON_ABOVE_3_7_1", True),
            "fla's per-head backward run past its Hopper/Triton version check: key block 128, not #640's 64; "
            "its gradients checked against ours in the grads row")


def grads_rel(T: int, per_head: bool) -> dict:
    """Relative L2 difference of fla's output and gradients from ours on the same inputs and output gradient."""
    fns = runners(per_head)
    xs = inputs(T, per_head)
    do = torch.randn_like(xs[2])
    got = {}
    for name in ("ours", "fla"):
        leaves = [x.detach().clone().requires_grad_() for x in xs]
        with peer_guard(per_head)[0] if name == "fla" else contextlib.nullcontext():
            o = fns[name](*leaves)
            o.backward(do)
        got[name] = [o.detach()] + [x.grad for x in leaves]
    return {n: rel(f, ours) for n, f, ours in zip(GRADS, got["fla"], got["ours"])}


def fwd_ms(fn, xs) -> float:
    from triton.testing import do_bench

    with torch.no_grad():
        return do_bench(lambda: fn(*xs), warmup=25, rep=200, return_mode="median")


def fwdbwd_ms(fn, xs) -> float:
    from triton.testing import do_bench

    leaves = [x.detach().clone().requires_grad_() for x in xs]
    do = torch.randn_like(xs[2])

    def step():
        fn(*leaves).backward(do)
    return do_bench(step, warmup=25, rep=200, grad_to_none=leaves, return_mode="median")


def parts_ms(T: int, per_head: bool) -> dict:
    """Ours by launch, every config, the whole length as one piece: the prep (parallel over chunks) and the scan
    (sequential in the chunks), in ms."""
    from triton.testing import do_bench

    from seqedge.kernels.delta_scan_triton import DELTA_CONFIGS, prep, scan_piece

    q, k, v, g, beta = inputs(T, per_head)
    g = g.unsqueeze(-1) if per_head else g
    out = {}
    for cfg in DELTA_CONFIGS:
        ops = prep(q, k, v, g, beta, D ** -0.5, cfg)
        o, final = torch.empty_like(v), torch.empty(B, H, D, D, device="cuda")
        name = f"C={cfg.chunk} BV={cfg.block_v} warps={cfg.num_warps}{' split_o' if cfg.split_o else ''}"
        out[name] = {"prep_ms": do_bench(lambda: prep(q, k, v, g, beta, D ** -0.5, cfg), return_mode="median"),
                     "scan_ms": do_bench(lambda: scan_piece(ops, o, None, final, cfg), return_mode="median")}
        del ops
    return out


def peak_gb(fn, xs, backward: bool) -> float:
    """The most memory one call (with ``backward`` its backward too) allocates above its inputs, in GB, after one
    unmeasured call: a first call of a shape class also times the candidate configs or autotunes (ours and fla's),
    whose buffers are no part of a call's peak."""
    leaves = [x.detach().clone().requires_grad_(backward) for x in xs]
    do = torch.randn_like(xs[2]) if backward else None

    def call() -> None:
        with torch.set_grad_enabled(backward):
            o = fn(*leaves)
            if backward:
                o.backward(do)
        for x in leaves:
            x.grad = None
        torch.cuda.synchronize()

    call()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    call()
    return (torch.cuda.max_memory_allocated() - base) / 1e9


def environment(argv: list[str]) -> dict:
    import triton

    fla = importlib.util.find_spec("fla") and importlib.import_module("fla").__version__
    return {"card": torch.cuda.get_device_name(), "date": datetime.datetime.now(datetime.UTC).isoformat(),
            "torch": torch.__version__, "triton": triton.__version__, "cuda": torch.version.cuda,
            "fla": fla or "not installed", "command": "python " + " ".join(argv)}


def markdown(res: dict) -> str:
    env = res["env"]
    lines = [f"# Delta-rule chunk scan beside fla: {env['card']}", "",
             f"{env['date']}; torch {env['torch']}, triton {env['triton']}, CUDA {env['cuda']}, fla {env['fla']}.",
             f"Command: `{env['command']}` (benchmarks/delta_kernels.py). B=1, H=16, dk=dv=128, bf16; times are",
             "medians of CUDA events (ms); peak memory is the most allocated above the inputs (GB).", "",
             "| gates | what | ours | fla | ours / fla | target (ours / fla at most) |", "|---|---|---|---|---|---|"]
    for gates, rows in res["rows"].items():
        for what, vals in rows.items():
            ours, fla = vals.get("ours"), vals.get("fla")
            numbers = isinstance(ours, float) and isinstance(fla, float)
            ratio = f"{ours / fla:.2f}" if numbers else "-"
            target = {"fwd_ms": "fwd_ratio", "fwdbwd_ms": "fwdbwd_ratio", "peak_fwd_gb": "peak_ratio",
                      "peak_fwdbwd_gb": "peak_ratio"}.get(what.split("_T")[0])
            fmt = lambda x: "-" if x is None else (f"{x:.3f}" if isinstance(x, float) else str(x))
            lines.append(f"| {gates} | {what} | {fmt(ours)} | {fmt(fla)} | {ratio} | "
                         f"{'' if target is None else f'{TARGETS[target]:.2f}'} |")
    for key, gates in (("parts_per_key", "per-key"), ("parts_per_head", "per-head")):
        if key in res:
            lines += ["", f"Ours by launch ({gates} gates, the whole length as one piece), ms:", "",
                      "| config | prep | scan (with o) |", "|---|---|---|"]
            lines += [f"| {name} | {p['prep_ms']:.3f} | {p['scan_ms']:.3f} |" for name, p in res[key].items()]
    if res.get("grads"):
        lines += ["", "fla's output and gradients against ours (relative L2 difference, same inputs and output "
                  "gradient):", "", "| gates | T | " + " | ".join(GRADS) + " |", "|---" * (len(GRADS) + 2) + "|"]
        lines += [f"| {gates} | {g['T']} | " + " | ".join(f"{g[n]:.1e}" for n in GRADS) + " |"
                  for gates, g in res["grads"].items()]
    for gates, note in res.get("peer_notes", {}).items():
        lines += ["", f"{gates}: {note}."]
    if res.get("earlier"):
        lines += ["", "Rows this run did not measure are kept from earlier runs (newest first; a row is the newest "
                  "run's that measured it):", ""]
        lines += [f"- {env['date']}: `{env['command']}`" for env in earlier_runs(res)]
    if "picked" in res:
        lines += ["", "Configs picked by timing (shape class -> config):", ""]
        lines += [f"- `{key}`: `{cfg}`" for key, cfg in res["picked"].items()]
    if res.get("picked_backward"):
        lines += ["", "Backward launches picked by timing (shape class -> launch):", ""]
        lines += [f"- `{key}`: `{launch}`" for key, launch in res["picked_backward"].items()]
    return "\n".join(lines) + "\n"


def earlier_runs(res: dict) -> list[dict]:
    """The environments of the runs a merged record keeps rows of, newest first (a record of the format before
    the chain kept only the last run's, as one dict)."""
    earlier = res.get("earlier") or []
    return [earlier] if isinstance(earlier, dict) else earlier


def merged(earlier: dict, env: dict) -> dict:
    """A record of this run (``env``) that starts with ``earlier``'s rows, which this run's replace one by one."""
    return {**earlier, "env": env, "earlier": [earlier["env"], *earlier_runs(earlier)]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True, help="folder for delta_kernels.json and delta_kernels.md")
    ap.add_argument("--T", type=int, default=65536, help="length of the timed runs")
    ap.add_argument("--T-mem", type=int, default=131072, help="length of the peak-memory runs")
    ap.add_argument("--who", choices=("ours", "fla"), nargs="+", default=["ours", "fla"],
                    help="whose rows to measure (fla's first calls compile and autotune for minutes)")
    ap.add_argument("--rows", choices=("fwd", "peak_fwd", "fwdbwd", "peak_fwdbwd", "parts", "grads"), nargs="+",
                    default=["fwd", "peak_fwd", "fwdbwd", "peak_fwdbwd", "parts", "grads"],
                    help="which rows to measure (grads: fla's output and gradients against ours)")
    ap.add_argument("--gates", choices=("per-key", "per-head"), nargs="+", default=["per-key", "per-head"],
                    help="which gate kinds to measure")
    ap.add_argument("--T-grads", type=int, default=8192, help="length of the gradient comparison")
    ap.add_argument("--merge", metavar="JSON", help="an earlier delta_kernels.json whose rows this run's replace "
                    "one by one (the others are kept, with that run's environment under 'earlier')")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    res = {"env": environment(sys.argv), "rows": {}}
    if args.merge:
        with open(args.merge) as f:
            earlier = json.load(f)
        res = merged(earlier, res["env"])
    kinds = [per_head for per_head in (False, True) if ("per-head" if per_head else "per-key") in args.gates]

    def save() -> None:
        from seqedge.kernels.delta_scan_bwd import _PICKED_BWD
        from seqedge.kernels.delta_scan_triton import _PICKED

        res["picked"] = {str(key): repr(cfg) for key, cfg in _PICKED.items()}
        res["picked_backward"] = {str(key): repr(launch) for key, launch in _PICKED_BWD.items()}
        with open(os.path.join(args.out, "delta_kernels.json"), "w") as f:
            json.dump(res, f, indent=1)
        with open(os.path.join(args.out, "delta_kernels.md"), "w") as f:
            f.write(markdown(res))

    # forward rows of both gate kinds first, the launches' times last: a run cut by its time box keeps the most
    # wanted numbers
    measures = ((f"fwd_ms_T{args.T}", lambda f, x: fwd_ms(f, x), args.T),
                (f"peak_fwd_gb_T{args.T_mem}", lambda f, x: peak_gb(f, x, False), args.T_mem),
                (f"fwdbwd_ms_T{args.T}", lambda f, x: fwdbwd_ms(f, x), args.T),
                (f"peak_fwdbwd_gb_T{args.T_mem}", lambda f, x: peak_gb(f, x, True), args.T_mem))
    for what, measure, T in measures:
        if what.rsplit("_T", 1)[0].replace("_ms", "").replace("_gb", "") not in args.rows:
            continue
        for name in args.who:                  # ours first by default: fla's first calls take minutes
            for per_head in kinds:
                gates = GATES[per_head]
                rows = res["rows"].setdefault(gates, {})
                fn = runners(per_head).get(name)
                if fn is None:
                    continue
                guard, note = peer_guard(per_head) if name == "fla" else (contextlib.nullcontext(), None)
                if note:
                    res.setdefault("peer_notes", {})[gates] = note
                try:
                    with guard:
                        rows.setdefault(what, {})[name] = measure(fn, inputs(T, per_head))
                except torch.OutOfMemoryError as err:
                    rows.setdefault(what, {})[name] = f"out of memory: {str(err)[:80]}"
                except RuntimeError as err:       # e.g. a peer that refuses this Triton version on this card
                    rows.setdefault(what, {})[name] = f"error: {str(err).splitlines()[0][:160]}"
                torch.cuda.empty_cache()
                print(gates, what, name, rows[what][name], flush=True)
                save()
    for per_head in kinds if "grads" in args.rows and "fla" in args.who else ():
        res.setdefault("grads", {})[GATES[per_head]] = {"T": args.T_grads, **grads_rel(args.T_grads, per_head)}
        print("grads", GATES[per_head], res["grads"][GATES[per_head]], flush=True)
        save()
    for per_head in kinds if "parts" in args.rows else ():
        res["parts_per_head" if per_head else "parts_per_key"] = parts_ms(args.T, per_head)
        print("parts per head" if per_head else "parts per key", res["parts_per_head" if per_head else
                                                                    "parts_per_key"], flush=True)
        save()
    print(markdown(res))


if __name__ == "__main__":
    main()
