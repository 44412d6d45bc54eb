"""What 2 MiB pages buy the C++ runner's decode step (``seqedge-run``, runners/cpp/tools/huge_pages.cpp).

Per variant, rounds of two ``seqedge-run --bench --json`` processes, one as it runs by default (its loaded memory
advised onto huge pages) and one with ``--no-huge-pages``, in alternating order; each reports the p50 of
consecutive steps at context 0 and its load time (the advice included: ``MADV_COLLAPSE`` copies what it moves).
The median over rounds of each side is reported, with the logits of the same tokens from both sides compared bit
for bit.

    python benchmarks/probes/runner_huge_pages_ab.py --runner build/cpp/seqedge-run --artifact ART
        [--variants fp32,int8,int4] [--rounds 6] [--steps 200] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import tempfile
from pathlib import Path

import numpy as np

SIDES = {"huge pages": [], "4 KiB pages": ["--no-huge-pages"]}


def bench(runner: Path, artifact: Path, variant: str, steps: int, extra: list[str]) -> dict:
    done = subprocess.run([str(runner), str(artifact), "-q", variant, "--bench", "--json", "--contexts", "0",
                           "--steps", str(steps), "--warmup", "10", "--prefill-tokens", "16", "--stepwise-tokens",
                           "16", "--ttft-prompt", "4", *extra], check=True, capture_output=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def logits(runner: Path, artifact: Path, variant: str, extra: list[str]) -> np.ndarray:
    with tempfile.TemporaryDirectory() as tmp:
        tokens, out = Path(tmp) / "tokens.txt", Path(tmp) / "logits.bin"
        tokens.write_text(" ".join(map(str, np.random.default_rng(0).integers(0, 256, 12))))
        subprocess.run([str(runner), str(artifact), "-q", variant, "--dump-logits", str(out), "--tokens",
                        str(tokens), "--prefill", "4", *extra], check=True, capture_output=True)
        return np.fromfile(out, np.float32)


def one_variant(runner: Path, artifact: Path, variant: str, rounds: int, steps: int) -> dict:
    times: dict[str, list[float]] = {side: [] for side in SIDES}
    loads: dict[str, list[float]] = {side: [] for side in SIDES}
    pages: dict[str, dict] = {}
    for r in range(rounds):
        for side in (list(SIDES) if r % 2 == 0 else list(SIDES)[::-1]):
            out = bench(runner, artifact, variant, steps, SIDES[side])
            times[side].append(out["contexts"][0]["p50_ms"])
            loads[side].append(out["load_s"])
            pages[side] = out["huge_pages"]
    same = np.array_equal(*(logits(runner, artifact, variant, extra) for extra in SIDES.values()))
    p50 = {side: float(np.median(v)) for side, v in times.items()}
    return {"variant": variant, "huge_pages": pages, "same_logits": bool(same), "p50_ms": p50,
            "p50_ms_by_round": times, "huge_over_plain": p50["huge pages"] / p50["4 KiB pages"],
            "load_s": {side: float(np.median(v)) for side, v in loads.items()}, "load_s_by_round": loads}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runner", type=Path, required=True, help="seqedge-run (runners/cpp)")
    parser.add_argument("--artifact", type=Path, required=True)
    parser.add_argument("--variants", default="fp32,int8,int4", help="comma-separated (default: %(default)s)")
    parser.add_argument("--rounds", type=int, default=6, help="alternating rounds (default: %(default)s)")
    parser.add_argument("--steps", type=int, default=200, help="timed steps per process (default: %(default)s)")
    parser.add_argument("--out", type=Path, help="write the result as JSON here too")
    args = parser.parse_args()
    from seqedge.evaluate.run_info import run_metadata

    rows = []
    for variant in args.variants.split(","):
        rows.append(one_variant(args.runner, args.artifact, variant, args.rounds, args.steps))
        r = rows[-1]
        print(f"seqedge-run {variant}: huge {r['p50_ms']['huge pages']:.3f} ms, 4 KiB {r['p50_ms']['4 KiB pages']:.3f}"
              f" ms, ratio {r['huge_over_plain']:.3f}; load {r['load_s']['huge pages']:.2f} against "
              f"{r['load_s']['4 KiB pages']:.2f} s; same logits {r['same_logits']}", flush=True)
    result = {"meta": run_metadata(artifact=str(args.artifact), runner=str(args.runner), rounds=args.rounds,
                                   steps=args.steps), "rows": rows}
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
