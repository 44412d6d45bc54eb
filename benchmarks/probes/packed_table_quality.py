"""What a packed embedding table costs in quality, on the trained bundled model.

The int8 and int4 exports read the token embedding from packed bytes only where the float32 table is at least
``MIN_TABLE_BYTES`` (1 MiB): ONNX from the tied head's 8-bit or 4-bit blocks (``export/packed_table.py``),
ExecuTorch from a packed copy of the table for its quantized lookup kernels (``export/executorch_embedding.py``).
The bundled model's table (259 x 192, 0.2 MB) is under that floor, so its artifacts keep the float32 table. This
probe applies the same packing to the bundled model with the floor lifted and compares parity with the float32
table and with the packed one: the quality it costs a trained model, which the random-weight Mamba2-130M it
applies to cannot show. Recipes: int8-dynamic and int4-all (groups of 32 and 64). ONNX: the rewrite on the
exported ``chunk`` graphs. ExecuTorch: torchao's eager model of the recipe (``prepare_model``, what the program
lowers; ``benchmarks/int4_policy.py`` does the same), its ``embed`` swapped for a ``PackedEmbedding``.

Parity as ``benchmarks/int4_policy.py`` measures it: 1,024 tokens of the parity stream as chunk calls (state
carried) against the float64 reference; budget top-1 >= 95%, bpb within 3%.

Usage: ``python benchmarks/probes/packed_table_quality.py [--out FILE]`` (default
``benchmarks/results/packed_table_quality.json``).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import onnx

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))
from int4_policy import eager_stream, onnx_stream  # noqa: E402  (chunk calls, state carried, float64 logits)

from seqedge.evaluate.run_info import run_metadata  # noqa: E402
TOKENS = 1024
RECIPES = (("int8-dynamic", None), ("int4-all", 32), ("int4-all", 64))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "packed_table_quality.json")
    args = parser.parse_args(argv)
    import torch

    from seqedge.defaults import load_default
    from seqedge.evaluate.parity import StreamResult, compare, reference_stream, text_tokens
    from seqedge.export.api import export_model
    from seqedge.export.executorch_embedding import PackedEmbedding
    from seqedge.export.executorch_target import prepare_model
    from seqedge.export.packed_table import gather_from_packed_head
    from seqedge.export.quantization import make_recipe

    torch.set_num_threads(2)
    model = load_default().float().eval()
    tokens = text_tokens(TOKENS)
    reference = reference_stream(model, tokens, TOKENS)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for recipe, group in RECIPES:
            root = Path(tmp) / f"{recipe}-{group}"
            options = {} if group is None else {"group_size": group}
            manifest = export_model(model, root, ["onnx"], [recipe], progress=False, **options)
            variant = manifest.variant("onnx", "int8" if recipe == "int8-dynamic" else "int4")
            graph = manifest.path(variant, "chunk")
            rewritten = gather_from_packed_head(onnx.load(str(graph)), min_table_bytes=0)
            ops = {n.op_type for n in rewritten.graph.node}
            if "GatherBlockQuantized" not in ops:
                raise RuntimeError(f"{recipe}: the rewrite found no packed head for the table")
            packed = root / "packed_chunk.onnx"
            onnx.save(rewritten, str(packed))
            runs = {("onnx", "float32 table"): onnx_stream(graph, model, tokens),
                    ("onnx", "the head's packed rows"): onnx_stream(packed, model, tokens)}
            eager, _ = prepare_model(model, make_recipe(recipe, group_size=group or 32))
            runs[("executorch (torchao eager)", "float32 table")] = eager_stream(eager, tokens)
            bits = 8 if recipe == "int8-dynamic" else 4
            eager.embed = PackedEmbedding(model.embed.weight, bits, group if bits == 4 else None)
            runs[("executorch (torchao eager)", f"packed table ({bits} bits)")] = eager_stream(eager, tokens)
            for (packing, embedding), logits in runs.items():
                report = compare(StreamResult(logits, reference.state), reference, tokens, prefill=TOKENS,
                                 tag=variant.tag)
                rows.append({"recipe": recipe, "group_size": group, "packing": packing, "embedding": embedding,
                             "top1": report.top1, "dbpb": report.bpb / report.bpb_reference - 1, "kl": report.kl,
                             "passed": report.passed})
                print(f"{recipe:12s} g{group!s:4s} {packing:26s} {embedding:24s} top-1 {report.top1:.2%} "
                      f"bpb {rows[-1]['dbpb']:+.2%} kl {report.kl:.4f}", flush=True)
    run = run_metadata()
    meta = {"command": "python benchmarks/probes/packed_table_quality.py", "date_utc": run["date"],
            "commit": run["commit"], "machine": run["machine"], "tokens": TOKENS,
            "stream": "chunk calls only, state carried, against float64; budget top-1 >= 95%, bpb within 3%",
            "model": "the bundled model (seqedge/default_model), table 259 x 192"}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
