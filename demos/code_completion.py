"""Streaming code completion with the bundled model in any runtime, with the decode speed shown live.

    python demos/code_completion.py                                   # onnxruntime, exports to a temp dir
    python demos/code_completion.py --runtime executorch --quantize int8-dynamic
    python demos/code_completion.py --artifact out/ --prompt "def parse_args(argv):" --max-new-tokens 300

The completion goes to stdout. On a terminal, the running tokens/s is shown dimmed at the end of every completed
line (written to stderr, so redirected output stays clean code); with stdout redirected, a rate line goes to the
terminal every ``--report-every`` tokens. The summary (stderr) gives the prompt's prefill time (time to first
token) and the decode rate.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time

from _artifact import add_model_args, open_session

PROMPTS = ("import os\n\n\ndef list_python_files(root):\n    \"\"\"Return the .py files under root.\"\"\"\n",
           "class Stack:\n    def __init__(self):\n        self.items = []\n\n    def push(self, item):\n")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_model_args(p)
    p.add_argument("-p", "--prompt", action="append",
                   help="code to complete (repeatable; default: two built-in prompts)")
    p.add_argument("-n", "--max-new-tokens", type=int, default=200)
    p.add_argument("-t", "--temperature", type=float, default=0.6)
    p.add_argument("--top-k", type=int, default=40)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--report-every", type=int, default=50, help="tokens between rate lines when not on a terminal")
    return p.parse_args(argv)


def complete(session, prompt: str, args: argparse.Namespace) -> tuple[int, float, float]:
    """Stream one completion; returns (tokens, time to first token s, decode seconds)."""
    import numpy as np

    from seqedge.sampling import Sampler, SamplingConfig

    tok = session.tokenizer                     # the artifact's: bytes, or an imported model's tokenizer.json
    decoder = tok.stream_decoder()
    sampler = Sampler(SamplingConfig(args.temperature, args.top_k, 1.0, args.seed))
    live = sys.stdout.isatty() and sys.stderr.isatty()        # one terminal: rate dimmed at each line end
    periodic = not live and sys.stderr.isatty()                 # stdout redirected: rate lines on the terminal
    sys.stdout.write(prompt)
    sys.stdout.flush()
    t0 = time.perf_counter()
    last, state = session.prefill(np.asarray([tok.encode(prompt, add_bos=True)]), session.init_state(1),
                                  logits="last")
    ttft = time.perf_counter() - t0
    start, count = time.perf_counter(), 0
    for _ in range(args.max_new_tokens):
        token = int(sampler(last)[0])
        if token in tok.stop_ids:
            break
        count += 1
        text = decoder.push(token)
        rate = count / max(time.perf_counter() - start, 1e-9)
        if live and "\n" in text:
            head, _, tail = text.rpartition("\n")
            sys.stdout.write(head)
            sys.stdout.flush()
            sys.stderr.write(f"\x1b[2m   # {rate:,.0f} tok/s\x1b[0m")
            sys.stderr.flush()
            text = "\n" + tail
        sys.stdout.write(text)
        sys.stdout.flush()
        if periodic and count % args.report_every == 0:
            print(f"[{count} tokens, {rate:,.1f} tok/s]", file=sys.stderr, flush=True)
        last, state = session.step(np.asarray([token]), state)
    sys.stdout.write(decoder.flush() + "\n")
    sys.stdout.flush()
    return count, ttft, time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.max_new_tokens < 1:
        raise SystemExit("--max-new-tokens must be >= 1")
    with tempfile.TemporaryDirectory(prefix="seqedge-demo-") as tmp:
        session = open_session(args, tmp)
        print(f"[{session.runtime} / {session.variant.name}: {session.describe()}]", file=sys.stderr)
        for i, prompt in enumerate(args.prompt or PROMPTS):
            if i:
                print("-" * 60)
            count, ttft, seconds = complete(session, prompt, args)
            print(f"[{count} tokens in {seconds:.2f} s: {count / max(seconds, 1e-9):,.1f} tok/s decode; prompt "
                  f"prefill (time to first token) {ttft * 1e3:.1f} ms; {session.runtime}/{session.variant.tag}]",
                  file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
