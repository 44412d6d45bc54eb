"""``seqedge export``: a checkpoint -> one artifact directory (manifest + one folder per target/quantization)."""

from __future__ import annotations

import argparse

TARGET_CHOICES = ("onnx", "onnx-ort", "executorch", "coreml", "tensorrt", "all")
SCHEME_CHOICES = ("none", "fp16", "int8", "int4")


def _csv(choices: tuple[str, ...], what: str):
    def parse(text: str) -> list[str]:
        items = [t.strip() for t in text.split(",") if t.strip()]
        bad = [t for t in items if t not in choices]
        if not items or bad:
            raise argparse.ArgumentTypeError(f"invalid {what} {','.join(bad) or text!r}; choose from "
                                             f"{', '.join(choices)} (comma-separated)")
        return items
    return parse


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export", help="export a checkpoint to ONNX / ExecuTorch / Core ML / TensorRT",
        description="Export the step and chunk functions of a checkpoint (default: the bundled model) to one "
                    "artifact directory: manifest.json plus one folder per target and quantization, and a torch "
                    "variant used as the float64 parity reference. The directory appears only when every "
                    "requested target succeeded. --target all exports what this machine supports and lists what "
                    "it skipped and why.")
    p.add_argument("checkpoint", nargs="?", metavar="CHECKPOINT",
                   help="checkpoint directory (config.json + model.safetensors; default: the bundled model)")
    p.add_argument("-m", "--model", metavar="DIR",
                   help="checkpoint or Hugging Face model directory (imported as `seqedge import` does); "
                        "the same as the positional CHECKPOINT")
    p.add_argument("--target", type=_csv(TARGET_CHOICES, "target"), default=["onnx"],
                   help="onnx, onnx-ort (ONNX Runtime's fused LinearAttention op), executorch, coreml, tensorrt or "
                        "all; comma-separated for several (default: onnx)")
    p.add_argument("--quantize", type=_csv(SCHEME_CHOICES, "quantization"), default=["none"],
                   help="none, fp16, int8, int4; comma-separated for several variants (default: none)")
    p.add_argument("--group-size", type=int, default=32, help="int4 weights per scale group (default: 32)")
    p.add_argument("--out", required=True, metavar="DIR", help="artifact directory to create")
    p.add_argument("--overwrite", action="store_true", help="replace an existing artifact at --out (atomically)")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from seqedge.defaults import default_checkpoint_dir
    from seqedge.export.api import export_model

    from seqedge.families import import_hf, is_hf_dir

    targets = "all" if "all" in args.target else args.target
    if args.model and args.checkpoint and args.model != args.checkpoint:
        raise ValueError(f"two models given ({args.checkpoint} and -m {args.model}); pass one")
    source = args.model or args.checkpoint or default_checkpoint_dir()
    checkpoint = import_hf(source) if is_hf_dir(source) else source
    manifest = export_model(checkpoint, args.out, targets, args.quantize, progress=not args.quiet,
                            overwrite=args.overwrite, group_size=args.group_size)
    for skipped in manifest.data.get("skipped", []):
        print(f"skipped {skipped['target']}/{skipped['quantization']}: {skipped['reason']}")
    for variant in manifest.variants:
        size = sum(f["bytes"] for f in variant.files.values())
        parity = manifest.data.get("parity", {}).get(variant.name, {})
        check = (f"max|dlogit| {parity['max_abs']:.2e}, top-1 {parity['top1']:.1%}" if "max_abs" in parity
                 else f"not run here: {parity.get('skipped', '-')}")
        print(f"{variant.name:14s} {size / 2**20:8.2f} MiB   parity: {check}")
    print(f"wrote {args.out}")
    return 0
