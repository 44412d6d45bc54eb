"""Which int8 packing ONNX Runtime runs faster: the same float32 graphs quantized as ``MatMulInteger`` (7-bit weights
per output channel, one dynamic activation scale, as ``quantize_dynamic`` packs them) and as 8-bit
``MatMulNBits`` blocks (``export.onnx_target._quantize_int8``, the shipped recipe).

    python benchmarks/probes/int8_packing_ab.py --artifact DIR [--threads 1,2] [--rounds 7]

``DIR``: an artifact with an ``onnx-ort`` fp32 variant (``llama_cpp.py``'s work folder holds one of mamba2-130m's
config). Both packings of ``step`` and ``chunk`` are timed in alternating rounds (each round times every variant,
in a new random order), one token / one 64-token chunk, after warm-up; the relative RMS of their logits against
the float32 graph's on the same inputs is the quantization error. Writes benchmarks/results/int8_packing.{md,json}.
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
from pathlib import Path

import numpy as np
from onnxruntime.quantization import QuantType, quantize_dynamic
from ort_timing import cpu_session, random_feeds, time_rounds

from seqedge.evaluate.run_info import metadata_markdown, run_metadata
from seqedge.export.onnx_target import _quantize_int8

RESULTS = Path(__file__).resolve().parents[1] / "results"


def _matmul_integer(source: Path, dest: Path) -> None:
    """Per-channel MatMulInteger via quantize_dynamic: 7-bit per-channel weights."""
    quantize_dynamic(str(source), str(dest), op_types_to_quantize=["MatMul"], per_channel=True, reduce_range=True,
                     weight_type=QuantType.QInt8, extra_options={"MatMulConstBOnly": True})


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--artifact", type=Path, required=True)
    p.add_argument("--threads", default="1,2")
    p.add_argument("--rounds", type=int, default=7)
    args = p.parse_args(argv)
    logging.disable(logging.INFO)
    fp32 = args.artifact / "onnx-ort" / "fp32"
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for entry in ("step", "chunk"):
            source = fp32 / f"{entry}.onnx"
            mmi, blocks = Path(tmp) / f"{entry}-mmi.onnx", Path(tmp) / f"{entry}-nbits.onnx"
            _matmul_integer(source, mmi)
            _quantize_int8(source, blocks)
            paths = {"fp32": source, "MatMulInteger (7-bit per channel)": mmi,
                     "MatMulNBits (8-bit blocks of 128)": blocks}
            for threads in (int(t) for t in args.threads.split(",")):
                sessions = {k: cpu_session(v, threads) for k, v in paths.items()}
                feeds = random_feeds(sessions["fp32"])
                ref = sessions["fp32"].run(None, feeds)[0]
                times = time_rounds(sessions, feeds, 20 if entry == "step" else 4, args.rounds)
                for name, session in sessions.items():
                    err = session.run(None, feeds)[0] - ref
                    rows.append({"entry": entry, "threads": threads, "packing": name,
                                 "p50_ms": round(float(np.median(times[name])), 3),
                                 "rounds_ms": [round(t, 3) for t in times[name]],
                                 "rel_rms_vs_fp32": round(float(np.sqrt((err ** 2).mean() / (ref ** 2).mean())), 4)})
                    print(rows[-1], flush=True)
    meta = run_metadata(artifact=str(args.artifact))
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "int8_packing.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    lines = ["# int8 packing A/B: MatMulInteger against 8-bit MatMulNBits blocks", "", *metadata_markdown(meta), "",
             "Median over rounds of each round's median call; relative RMS of the logits against the float32 graph "
             "on the same random inputs (a random model amplifies weight error: compare the two packings, not "
             "the absolute value).", "",
             "| entry | threads | packing | p50 ms | relative RMS vs fp32 |", "|---|---:|---|---:|---:|"]
    lines += [f"| {r['entry']} | {r['threads']} | {r['packing']} | {r['p50_ms']} | {r['rel_rms_vs_fp32']} |"
              for r in rows]
    (RESULTS / "int8_packing.md").write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
