"""What ExecuTorch's Python step pays for returning its new state as copies.

``method(inputs)`` (what the executorch runtime calls) clones every output out of the program's planned memory,
because the next call overwrites it. ``clone_outputs=False`` returns tensors over that memory instead, which the
next step cannot read as its input state where the same memory is written again. Two loads of the program have two
planned memories, so steps that alternate between them (``ping-pong``) could hand each output state on uncopied.
This probe, on one artifact's ExecuTorch step at batch 1, times in blocks of consecutive steps:

- ``clones``: ``method(inputs)``, each step's new state (torch tensors) fed to the next;
- ``ping-pong``: two programs, ``clone_outputs=False``, the logits copied;
- ``copy-back``: one program, ``clone_outputs=False``, the new state copied over the previous state's tensors;

checks that every kind gives the same logits and state bit for bit over a run of random tokens, and whether one
program's methods share their planned memory (a ``chunk`` call after a ``step``).

    python benchmarks/probes/et_output_copies.py --artifact ART [--variant int8] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from seqedge.artifact import read_manifest
from seqedge.evaluate.run_info import run_metadata
from seqedge.runtimes import load

BLOCK = 250


def step_inputs(torch, meta) -> list:
    shapes = [[1, *list(meta.input_tensor_meta(i).sizes())[1:]] for i in range(meta.num_inputs())]
    return [torch.zeros(shapes[0], dtype=torch.int64)] + [torch.zeros(s) for s in shapes[1:]]


def kinds(torch, first, second, ids) -> dict:
    """name -> (state -> (logits, new state)) for one step of each kind."""
    pair = [first, second]
    turn = [0]

    def clones(state):
        out = first([ids, *state])
        return out[0], out[1:]

    def ping_pong(state):
        method = pair[turn[0]]
        turn[0] ^= 1
        out = method([ids, *state], False)
        return out[0].clone(), out[1:]

    def copy_back(state):
        out = first([ids, *state], False)
        for dst, src in zip(state, out[1:]):
            dst.copy_(src)
        return out[0].clone(), state

    return {"clones": clones, "ping-pong": ping_pong, "copy-back": copy_back}


def run_tokens(torch, fn, ids, state, tokens):
    for token in tokens:
        ids.fill_(int(token))
        logits, state = fn(state)
    return logits.clone(), [s.clone() for s in state]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--artifact", type=Path, required=True)
    ap.add_argument("--variant", default="int8")
    ap.add_argument("--rounds", type=int, default=6, help="blocks of each kind, alternating")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/et_output_copies.json"))
    args = ap.parse_args()
    import torch
    from executorch.runtime import Runtime

    manifest = read_manifest(args.artifact)
    session = load(args.artifact, runtime="executorch", quantization=args.variant)   # sizes the XNNPACK pool
    backend = session.backend
    first = backend.methods["step"]._method
    second = Runtime.get().load_program(backend.path).load_method("step")._method
    meta = backend.program.metadata("step")
    ids, *zero = step_inputs(torch, meta)
    steps = kinds(torch, first, second, ids)

    tokens = np.random.default_rng(0).integers(0, manifest.vocab_size, 64)
    results = {name: run_tokens(torch, fn, ids, [z.clone() for z in zero], tokens) for name, fn in steps.items()}
    ref = results["clones"]
    identical = {name: bool(torch.equal(r[0], ref[0]) and all(torch.equal(a, b) for a, b in zip(r[1], ref[1])))
                 for name, r in results.items()}

    chunk = backend.methods["chunk"]._method
    out = first([ids, *zero], False)
    before = [t.clone() for t in out]
    cmeta = backend.program.metadata("chunk")
    chunk([torch.zeros([1, *list(cmeta.input_tensor_meta(0).sizes())[1:]], dtype=torch.int64),
           *[torch.randn_like(z) for z in zero]])
    shared = not all(torch.equal(a, b) for a, b in zip(out, before))

    p50: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(args.rounds):
        for name, fn in steps.items():
            state = [z.clone() for z in zero]
            times = []
            for _ in range(BLOCK):
                t0 = time.perf_counter()
                _, state = fn(state)
                times.append(time.perf_counter() - t0)
            p50[name].append(float(np.median(times[25:])) * 1e3)
    summary = {name: float(np.median(v)) for name, v in p50.items()}
    record = {"meta": run_metadata(command=f"python benchmarks/probes/et_output_copies.py --artifact ART "
                                           f"--variant {args.variant}"),
              "variant": f"executorch/{args.variant}", "threads": backend.threads, "block": BLOCK,
              "state_tensors": len(zero), "state_bytes": int(sum(z.numel() * 4 for z in zero)),
              "identical_to_clones_after_64_steps": identical,
              "chunk_call_overwrites_step_outputs": shared,
              "p50_ms_by_round": p50, "p50_ms": summary}
    args.out.write_text(json.dumps(record, indent=1) + "\n")
    print(json.dumps({k: record[k] for k in ("identical_to_clones_after_64_steps",
                                             "chunk_call_overwrites_step_outputs", "p50_ms")}, indent=1))


if __name__ == "__main__":
    main()
