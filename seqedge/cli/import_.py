"""``seqedge import``: a local Hugging Face model directory -> a seqedge checkpoint."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(sub: argparse._SubParsersAction) -> None:
    from seqedge.families import FAMILIES

    p = sub.add_parser(
        "import", help="import a local Hugging Face model directory (Mamba2, ...) as a seqedge checkpoint",
        description="Read config.json and *.safetensors of a local Hugging Face model directory and write a "
                    "seqedge checkpoint (config.json + model.safetensors). The family comes from config.json's "
                    f"model_type ({', '.join(sorted(FAMILIES))}). Nothing is downloaded, no code from the "
                    "directory runs and pickled weights (.bin, .pt) are refused; an option seqedge cannot "
                    "represent exactly is refused with the config key that sets it, and nothing is written.")
    p.add_argument("hf_dir", metavar="HF_DIR", help="Hugging Face model directory (config.json + *.safetensors)")
    p.add_argument("-o", "--out", required=True, metavar="CHECKPOINT", help="checkpoint directory to write")
    p.add_argument("--overwrite", action="store_true", help="replace an existing directory at --out (atomically)")
    p.add_argument("-q", "--quiet", action="store_true", help="no summary line")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from seqedge.families import import_hf

    out = Path(args.out)
    if out.exists() and not args.overwrite:
        raise ValueError(f"{out} already exists; pass --overwrite to replace it")
    model = import_hf(args.hf_dir)
    model.save_pretrained(out)
    if not args.quiet:
        c = model.config
        print(f"imported {args.hf_dir}: {c.num_layers} layers, {c.num_heads} heads, vocab {c.vocab_size}, "
              f"{model.num_parameters() / 1e6:.2f}M parameters -> {out}")
    return 0
