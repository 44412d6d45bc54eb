"""Batch-1 decode of an imported family at its real size on one GPU: FusedDecoder against GraphDecoder (the model's
own step in one CUDA graph), bf16 weights, float32 state.

    python benchmarks/decode_imported.py [--reps 300] [--batches 1] [--out benchmarks/results]

The model is mamba2-130m's shape (``hf_models.MAMBA2_130M``: hidden 768, 24 layers, d_state 128, head_dim 64,
expand 2, n_groups 1, vocabulary 50280) mapped to seqedge's config by the Mamba2 importer
(``seqedge.families.mamba2.config_from_hf``), with seeded random weights (no download). Each decoder is timed as the
mean of ``--reps`` graph replays back to back, from a random state; the first step's logits of both are compared
with the float32 ``model.step`` on the same (bf16-rounded) weights. Writes decode_imported.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from config_timing import cuda_kernels, replay_us
from hf_models import MAMBA2_130M

from seqedge.evaluate.run_info import metadata_markdown, run_metadata
from seqedge.families.mamba2 import config_from_hf

ROOT = Path(__file__).resolve().parents[1]
VOCAB = 50280     # mamba2-130m's own vocabulary (hf_models pads it to 50288 for its export benchmarks)


def _rel(got: torch.Tensor, ref: torch.Tensor) -> float:
    return float((got.double() - ref.double()).norm() / ref.double().norm())


def _per_kernel(model, tok: torch.Tensor) -> dict[str, float]:
    """Device time per kernel name of one fused step (us, summed over the layers), from torch.profiler: launched
    one by one (no graph, no programmatic dependent launch), so each kernel's own time, without overlap."""
    from seqedge.kernels.decode_fused import FusedDecoder

    dec = FusedDecoder(model, int(tok.shape[0]), capture=False, pdl=False)
    dec.step(tok)                                                    # compiles
    totals: dict[str, float] = {}
    for row in cuda_kernels(lambda: dec.step(tok)):
        totals[row["name"]] = totals.get(row["name"], 0.0) + row["us"]
    return dict(sorted(totals.items(), key=lambda kv: -kv[1]))


def measure(B: int, reps: int) -> dict:
    """us per token of both decoders at batch ``B``, launches per token and each one's error vs model.step."""
    from seqedge.kernels.decode_fused import FusedDecoder
    from seqedge.kernels.decode_graph import GraphDecoder
    from seqedge.model import SequentialAttentionModel
    from seqedge.state import State

    cfg = config_from_hf({**MAMBA2_130M, "vocab_size": VOCAB})
    torch.manual_seed(0)
    model = SequentialAttentionModel(cfg).cuda().to(torch.bfloat16).eval()
    ref_model = SequentialAttentionModel(cfg).cuda().eval()
    ref_model.load_state_dict({k: v.float() for k, v in model.state_dict().items()})
    gen = torch.Generator(device="cuda").manual_seed(B)
    state = State([0.1 * torch.randn(t.shape, generator=gen, device="cuda") for t in model.init_state(B).tensors],
                  model.state_specs, model.fingerprint)
    tok = torch.randint(0, VOCAB, (B,), generator=gen, device="cuda")
    with torch.no_grad():
        ref, _ = ref_model.step(tok, state)
    row = dict(B=B, params=model.num_parameters(), weight_bytes=sum(p.numel() * p.element_size()
                                                                     for p in model.parameters()))
    for name, make in (("fused", lambda: FusedDecoder(model, B)), ("graph", lambda: GraphDecoder(model, B))):
        dec = make()
        dec.reset(state)
        row[f"{name}_rel_err_vs_fp32_step"] = _rel(dec.step(tok), ref)
        row[f"{name}_us_per_token"] = replay_us(dec.graph.replay, reps)
        if name == "fused":
            row.update(fused_launches_per_token=dec.launches_per_step, pdl=dec.pdl,
                       fused_kernel_us=_per_kernel(model, tok))
        del dec
        torch.cuda.empty_cache()
    row["speedup"] = row["graph_us_per_token"] / row["fused_us_per_token"]
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=300)
    parser.add_argument("--batches", default="1", help="comma-separated batch sizes")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    parser.add_argument("--commit", default=None, help="the commit to record (a source tree without .git)")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("needs a CUDA GPU (the fused decoder's Triton kernels and CUDA graphs)", file=sys.stderr)
        return 2
    rows = [measure(int(b), args.reps) for b in args.batches.split(",")]
    meta = run_metadata(card=True, model="mamba2-130m shape, random bf16 weights", reps=args.reps)
    if args.commit:
        meta["commit"] = args.commit
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "decode_imported.json").write_text(json.dumps(dict(meta=meta, rows=rows), indent=2) + "\n")
    lines = ["# Decode of an imported Mamba2-130M-shaped model: FusedDecoder vs GraphDecoder", "",
             *metadata_markdown(meta), "",
             "Mamba2-130M's shape (hidden 768, 24 layers, d_state 128, head_dim 64, expand 2, n_groups 1, vocabulary "
             "50280), random weights in bf16, float32 state; mean of the graph replays. `rel err` is each decoder's "
             "first-step logits against the float32 `model.step` on the same bf16-rounded weights.", "",
             "| batch | FusedDecoder us/token | launches | GraphDecoder us/token | speedup | fused rel err | "
             "graph rel err |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['B']} | {r['fused_us_per_token']:.1f} | {r['fused_launches_per_token']} | "
                     f"{r['graph_us_per_token']:.1f} | {r['speedup']:.1f}x | {r['fused_rel_err_vs_fp32_step']:.1e} | "
                     f"{r['graph_rel_err_vs_fp32_step']:.1e} |")
    for r in rows:
        lines += ["", f"Batch {r['B']}: device time per fused kernel in one step (us, all layers), launched one "
                  "by one without a graph or programmatic dependent launch:", ""]
        lines += [f"- `{name}`: {us:.1f}" for name, us in r["fused_kernel_us"].items()]
    (out / "decode_imported.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
