"""How much one session's prefill speed moves over time on this machine: the same prompt prefilled again and again
in one process, each round timed, with the session's chunk graph also called directly (the same chunks, state
carried) in alternating rounds, so that a slow round of one is seen to be a slow round of the other.

    python benchmarks/probes/prefill_phases.py --artifact ART [--runtime onnxruntime-fused] [--quantization fp32]
        [--tokens 2048] [--rounds 12] [--out FILE]

A spread between rounds that both ways share is the machine's, not the session's: a benchmark comparing two
engines by one timed prefill each can then read it as a difference between the engines.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--artifact", type=Path, required=True)
    parser.add_argument("--runtime", default="onnxruntime-fused", help="an ONNX Runtime runtime (default: %(default)s)")
    parser.add_argument("--quantization", default="fp32")
    parser.add_argument("--tokens", type=int, default=2048, help="prompt length, a multiple of the chunk")
    parser.add_argument("--rounds", type=int, default=12)
    parser.add_argument("--out", type=Path, help="write the result as JSON here too")
    args = parser.parse_args()
    import seqedge
    from seqedge.artifact import CHUNK_LOGITS_FROM
    from seqedge.evaluate.run_info import run_metadata

    sess = seqedge.load(args.artifact, runtime=args.runtime, quantization=args.quantization)
    chunk = sess.backend.sessions["chunk"]
    C = sess.chunk_size
    if args.tokens % C:
        parser.error(f"--tokens must be a multiple of the chunk size {C}")
    prompt = np.random.default_rng(0).integers(1, sess.vocab_size - 1, size=(1, args.tokens))
    names = sess.backend.state_names
    outputs = ["logits", *sess.backend.out_names]

    def through_session() -> None:
        sess.prefill(prompt, sess.init_state(1), logits="last")

    def raw_chunks() -> None:
        state = [np.asarray(a) for a in sess.init_state(1).tensors]
        for start in range(0, args.tokens, C):
            feeds = dict(zip(names, state), tokens=prompt[:, start:start + C], **{CHUNK_LOGITS_FROM: np.array([-1])})
            _, *state = chunk.run(outputs, feeds)

    ways = {"session": through_session, "raw_chunks": raw_chunks}
    tok_s: dict[str, list[float]] = {k: [] for k in ways}
    for r in range(args.rounds):
        for name in (list(ways) if r % 2 == 0 else list(ways)[::-1]):
            t0 = time.perf_counter()
            ways[name]()
            tok_s[name].append(args.tokens / (time.perf_counter() - t0))
            print(r, name, round(tok_s[name][-1], 1), flush=True)
    result = {"meta": run_metadata(artifact=str(args.artifact), runtime=args.runtime,
                                   quantization=args.quantization, tokens=args.tokens, rounds=args.rounds),
              "tok_s_by_round": tok_s,
              "summary": {k: {"min": min(v), "median": float(np.median(v)), "max": max(v)} for k, v in tok_s.items()}}
    if args.out:
        args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result["summary"], indent=1))


if __name__ == "__main__":
    main()
