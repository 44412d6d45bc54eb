"""``seqedge export``: a checkpoint -> one artifact directory (manifest + one folder per target/recipe)."""

from __future__ import annotations

import argparse
import json
import sys

from seqedge.targets import TARGETS

from .options import (add_json, add_model, add_out, add_quiet, canonical_recipes, csv_list, model_path,
                      recipe_names, recipes_type)

EXIT_VERDICT_FAILED = 1          # the exported artifact missed its parity check

TARGET_CHOICES = (*TARGETS, "all")


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export", help="export a checkpoint to ONNX / ExecuTorch / Core ML / TensorRT",
        description="Export the step and chunk functions of a checkpoint (default: the bundled model) to one "
                    "artifact directory: manifest.json plus one folder per target and quantization recipe, and a "
                    "torch variant used as the float64 parity reference. The directory appears only when every "
                    "requested target succeeded. --target all exports what this machine supports and lists what "
                    "it skipped and why.")
    add_model(p, "checkpoint directory (config.json + model.safetensors; default: the bundled model)")
    p.add_argument("--target", type=csv_list(TARGET_CHOICES, "target"), default=["onnx"],
                   help=f"{', '.join(TARGETS)} or all; comma-separated for several (default: onnx)")
    p.add_argument("--quantize", type=recipes_type(), default=["fp32"], metavar="RECIPES",
                   help=f"quantization recipes, comma-separated: {recipe_names()} (default: fp32; --list-recipes "
                        "says what each does)")
    p.add_argument("--list-recipes", action="store_true", help="describe every quantization recipe and exit")
    p.add_argument("--group-size", type=int, default=32, help="int4 weights per scale group (default: 32)")
    p.add_argument("--max-batch", type=int, metavar="N",
                   help="largest batch the executorch and tensorrt variants take, 1 to 15 (default: 8). ExecuTorch "
                        "plans memory for it: 1 gives single-stream programs with the least memory, for an app "
                        "(the C++ runner) that runs one sequence. ONNX variants take any batch")
    add_out(p, "artifact directory to create")
    p.add_argument("--overwrite", action="store_true", help="replace an existing artifact at --out (atomically)")
    add_quiet(p)
    add_json(p, "the written manifest")
    p.set_defaults(run=run)


def list_recipes() -> str:
    """Every recipe with its one-line summary and how each target packs it."""
    from seqedge.export.quantization import RECIPE_ALIASES, RECIPES

    old = {new: old for old, new in RECIPE_ALIASES.items()}
    lines = []
    for r in RECIPES.values():
        alias = f"  (0.1 name: {old[r.name]})" if r.name in old else ""
        lines.append(f"{r.name:13s} {r.summary}{alias}")
        lines += [f"{'':13s}   {target}: {how}" for target, how in r.per_target.items()]
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    if args.list_recipes:
        print(list_recipes())
        return 0
    if not args.out:
        raise ValueError("-o/--out DIR is required: the artifact directory to create")
    from seqedge.defaults import default_checkpoint_dir
    from seqedge.evaluate.export_check import export_verified
    from seqedge.export.api import VerificationFailed
    from seqedge.families import import_hf, is_hf_dir

    targets = "all" if "all" in args.target else args.target
    source = model_path(args) or default_checkpoint_dir()
    checkpoint = import_hf(source) if is_hf_dir(source) else source
    recipes = canonical_recipes(args.quantize)
    try:
        manifest = export_verified(checkpoint, args.out, targets, recipes, progress=not (args.quiet or args.json),
                                   overwrite=args.overwrite, group_size=args.group_size,
                                   **({} if args.max_batch is None else {"max_batch": args.max_batch}))
    except VerificationFailed as err:          # the verdict of the work, not a usage error
        print(f"seqedge export: {err}", file=sys.stderr)
        return EXIT_VERDICT_FAILED
    if args.json:
        print(json.dumps(manifest.data, indent=2))
        return 0
    for skipped in manifest.data.get("skipped", []):
        print(f"skipped {skipped['target']}/{skipped['quantization']}: {skipped['reason']}")
    width = max((len(v.name) for v in manifest.variants), default=0)
    for variant in manifest.variants:
        size = sum(f["bytes"] for f in variant.files.values())
        parity = manifest.data.get("parity", {}).get(variant.name, {})
        check = (f"max|dlogit| {parity['max_abs']:.2e}, top-1 {parity['top1']:.1%}" if "max_abs" in parity
                 else f"not run here: {parity.get('skipped', '-')}")
        recipe = variant.quantization.get("recipe", variant.tag)
        print(f"{variant.name:{width}s} {recipe:13s} {size / 2**20:8.2f} MiB   parity: {check}")
    print(f"wrote {args.out}")
    return 0
