"""Time ExecuTorch's ``to_edge_transform_and_lower`` of a tiny unbounded-gate model (Gated DeltaNet parts), or
of mamba2-130m's config cut to ``--layers`` layers (``--model mamba2-130m``: seeded random weights, imported as
``seqedge export -m`` imports them).

Lowers ``step`` and ``chunk`` as the executorch target does (the ``--recipe``'s preparation, xnnpack_friendly,
its edge passes, the XNNPACK partitioner, a batch bound of ``--max-batch``: 1 is static, more is a dynamic batch
dimension) and records the
lowering time and each program's delegation counts, with the machine's load average (the lowering is
single-threaded Python: a loaded machine slows it). Two layer counts give the cost per layer.

    .venv/bin/python benchmarks/executorch_lower_time.py --layers 1 --out benchmarks/results/executorch_lower_time.json
    .venv/bin/python benchmarks/executorch_lower_time.py --model mamba2-130m --layers 2 --max-batch 1 --out ...
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import torch
from hf_models import MAMBA2_130M

from seqedge.config import MixerParts, SequentialAttentionConfig
from seqedge.evaluate.run_info import run_metadata
from seqedge.export import executorch_target as et
from seqedge.export.entry_points import ENTRY_POINTS
from seqedge.export.quantization import make_recipe
from seqedge.export.xnnpack_friendly import xnnpack_friendly
from seqedge.model import SequentialAttentionModel
from seqedge.quiet import quiet_libraries


def tiny_delta_model(layers: int) -> SequentialAttentionModel:
    """The tests' tiny Gated DeltaNet mixer (softplus gate: unbounded, delta rule)."""
    parts = MixerParts(gate="softplus", beta="sigmoid", num_key_heads=2, qk_norm="rsqrt", skip=False)
    config = SequentialAttentionConfig(vocab_size=64, hidden_size=32, num_layers=layers, num_heads=4, head_k_dim=16,
                                       head_v_dim=8, gate_rank=4, chunk_size=16, mlp_multiple_of=16,
                                       update_rule="delta", mixer=parts)
    torch.manual_seed(0)
    return SequentialAttentionModel(config).eval()


def mamba2_130m_layers(layers: int, seed: int = 0) -> SequentialAttentionModel:
    """mamba2-130m's config with ``layers`` layers, seeded random weights, saved by transformers and imported."""
    from transformers import Mamba2Config, Mamba2ForCausalLM

    from seqedge.families import import_hf

    torch.manual_seed(seed)
    with tempfile.TemporaryDirectory() as tmp:
        Mamba2ForCausalLM(Mamba2Config(**{**MAMBA2_130M, "num_hidden_layers": layers})).save_pretrained(
            Path(tmp), safe_serialization=True)
        return import_hf(tmp).eval()


MODELS = {"tiny-delta": tiny_delta_model, "mamba2-130m": mamba2_130m_layers}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=sorted(MODELS), default="tiny-delta")
    parser.add_argument("--layers", type=int, default=1)
    parser.add_argument("--max-batch", type=int, default=4, help="batch bound (1: static; default 4)")
    parser.add_argument("--recipe", default="fp32",
                        help="quantization recipe, prepared as the executorch target does (default fp32)")
    parser.add_argument("--label", default="", help="a note stored with the row (e.g. the branch measured)")
    parser.add_argument("--out", help="append the row to this JSON list")
    args = parser.parse_args()
    with quiet_libraries():
        model, _ = et.prepare_model(MODELS[args.model](args.layers), make_recipe(args.recipe))
        model = xnnpack_friendly(model, inplace=True)
        programs = {e: et._export_entry(model, e, max_batch=args.max_batch) for e in ENTRY_POINTS}
        load_before = os.getloadavg()
        started = time.perf_counter()
        edge = et.lower(programs)
        seconds = time.perf_counter() - started
    row = run_metadata(model=args.model, layers=args.layers, max_batch=args.max_batch, recipe=args.recipe,
                       label=args.label, lower_seconds=round(seconds, 1),
                       loadavg_before=load_before, loadavg_after=os.getloadavg(),
                       delegation={e: et.delegation_counts(edge.exported_program(e).graph_module)
                                   for e in ENTRY_POINTS})
    print(json.dumps(row, indent=1))
    if args.out:
        rows = json.loads(Path(args.out).read_text()) if os.path.exists(args.out) else []
        with open(args.out, "w") as f:
            json.dump(rows + [row], f, indent=1)


if __name__ == "__main__":
    main()
