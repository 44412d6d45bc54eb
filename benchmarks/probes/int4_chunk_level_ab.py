"""An int4 artifact's ``chunk`` graph with float32 and with int8 activations (MatMulNBits ``accuracy_level`` 4),
timed in alternating rounds: what :func:`seqedge.export.onnx_target.int4_accuracy_level` picks between.

The graph is copied into a temporary folder with every MatMulNBits set to one level (the packed weights are the
same for both; the copy hard-links the artifact's external weights, or copies them across file systems: ONNX
Runtime refuses external data outside the graph's folder, symlinks included); the artifact is never written to.

Usage: ``python benchmarks/probes/int4_chunk_level_ab.py ART_VARIANT_DIR [--threads 2] [--out FILE]`` where
``ART_VARIANT_DIR`` is e.g. ``ART/onnx-ort/int4``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx
from onnx import helper

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ort_timing import cpu_session, random_feeds, time_rounds  # noqa: E402

from seqedge.evaluate.run_info import run_metadata  # noqa: E402


def with_level(source: Path, dest_dir: Path, level: int | None) -> Path:
    """``source`` (a graph with external data beside it) as ``dest_dir/chunk.onnx`` with every MatMulNBits at
    ``level`` (None: the attribute removed, float32 compute)."""
    model = onnx.load(str(source), load_external_data=False)
    for node in model.graph.node:
        if node.op_type == "MatMulNBits":
            kept = [a for a in node.attribute if a.name != "accuracy_level"]
            del node.attribute[:]
            node.attribute.extend(kept)
            if level is not None:
                node.attribute.append(helper.make_attribute("accuracy_level", level))
    dest_dir.mkdir(parents=True, exist_ok=True)
    for data in {e.value for t in model.graph.initializer for e in t.external_data if e.key == "location"}:
        if not (dest_dir / data).exists():
            try:
                os.link(source.parent / data, dest_dir / data)
            except OSError:
                shutil.copyfile(source.parent / data, dest_dir / data)
    onnx.save(model, str(dest_dir / "chunk.onnx"))
    return dest_dir / "chunk.onnx"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("variant_dir", type=Path, help="an int4 ONNX variant folder (holding chunk.onnx)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--calls", type=int, default=5)
    p.add_argument("--out", type=Path,
                   default=Path(__file__).resolve().parents[1] / "results" / "int4_chunk_level_ab.json")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        sessions = {name: cpu_session(with_level(args.variant_dir / "chunk.onnx", Path(tmp) / name, level),
                                      args.threads) for name, level in (("float32", None), ("level 4", 4))}
        times = time_rounds(sessions, random_feeds(sessions["float32"]), args.calls, args.rounds)
    rows = {name: float(np.median(v)) for name, v in times.items()}
    for name, ms in rows.items():
        print(f"{name:10s} {ms:8.1f} ms per chunk call")
    result = {"meta": run_metadata(variant_dir=str(args.variant_dir), threads=args.threads, rounds=args.rounds,
                                   calls=args.calls),
              "chunk_ms": {name: {"p50_ms_by_round": times[name], "p50_ms": rows[name]} for name in rows}}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
