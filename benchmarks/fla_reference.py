"""fla itself as the oracle of seqedge's imports: logits of fla's models on a GPU against seqedge's on a CPU.

fla's models run only on CUDA (their Triton kernels), so the check has two halves:

- ``generate`` (on a GPU with fla installed): for each family, a random fla model (seeded; every parameter drawn,
  norms and gate biases included) is saved with ``save_pretrained`` and run in float32 on fixed tokens, once over
  the whole sequence (fla's chunk kernels) and once split in two with fla's cache carrying the recurrent state into
  the second part (its fused-recurrent kernels). Each family's directory is packed into ``<family>.tar``.
- ``check`` (here, on a CPU): each packed directory is imported with ``seqedge.families.import_hf`` and the
  imported model's logits, whole and with the state carried across the same split, are compared with fla's.

Usage:
    python -P benchmarks/fla_reference.py generate --out DIR       # GPU machine (-P: benchmarks/kernels.py
                                                                   # would shadow the kernels package)
    python benchmarks/fla_reference.py check DIR [--out RESULT.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import tarfile
import tempfile
from pathlib import Path

FAMILIES = {
    # name: (fla config class, its arguments); sizes small enough for a file of a few MiB
    "gated_deltanet": ("GatedDeltaNetConfig", dict(hidden_size=256, num_hidden_layers=2, num_heads=4, head_dim=32,
                                                   expand_v=2.0, vocab_size=1000)),
    "gated_deltanet_grouped": ("GatedDeltaNetConfig", dict(hidden_size=256, num_hidden_layers=2, num_heads=2,
                                                           num_v_heads=4, head_dim=32, expand_v=1.0,
                                                           vocab_size=1000)),
    "kda": ("KDAConfig", dict(hidden_size=256, num_hidden_layers=2, num_heads=4, head_dim=32, vocab_size=1000)),
    "gla": ("GLAConfig", dict(hidden_size=256, num_hidden_layers=2, num_heads=4, vocab_size=1000)),
}
TOKENS = (2, 300)     # batch, length
SPLIT = 173           # the cache carries the state from token SPLIT on (not a chunk multiple on purpose)
SEED = 0


def _randomise(model) -> None:
    """Every parameter drawn: weights ~N(0, 0.05), norm weights in [0.5, 1.5], other 1-D parameters in [-1, 1]."""
    import torch

    gen = torch.Generator().manual_seed(SEED)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim >= 2:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.05)
            elif "norm" in name:
                p.copy_(torch.rand(p.shape, generator=gen) + 0.5)
            else:
                p.copy_(torch.rand(p.shape, generator=gen) * 2 - 1)


def _pack(directory: Path, out: Path) -> None:
    with tarfile.open(out, "w") as tar:
        for f in sorted(directory.iterdir()):
            tar.add(f, arcname=f.name)


def generate(out: Path, families: list[str]) -> None:
    import transformers.modeling_utils  # noqa: F401  before fla: fla's import of it first can fail half-way
    import fla.models
    from transformers import AutoModelForCausalLM
    import torch
    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    torch.backends.cuda.matmul.allow_tf32 = False
    info = {"torch": torch.__version__, "fla": getattr(fla, "__version__", "?"),
            "device": torch.cuda.get_device_name(0), "families": {}}
    tokens = torch.randint(0, 1000, TOKENS, generator=torch.Generator().manual_seed(SEED))
    for family in families:
        config_cls, kwargs = FAMILIES[family]
        config = getattr(fla.models, config_cls)(**kwargs)
        model = AutoModelForCausalLM.from_config(config)      # fla registers its model types on import
        _randomise(model)
        model = model.cuda().float().eval()
        t = tokens.cuda()
        with torch.no_grad():
            whole = model(t).logits.float().cpu()
            first = model(t[:, :SPLIT], use_cache=True)
            second = model(t[:, SPLIT:], past_key_values=first.past_key_values, use_cache=True).logits
            split = torch.cat([first.logits, second], dim=1).float().cpu()
        with tempfile.TemporaryDirectory() as tmp:
            model.cpu().save_pretrained(tmp, safe_serialization=True)
            save_file({"tokens": tokens, "whole": whole.contiguous(), "split": split.contiguous()},
                      str(Path(tmp) / "fla_logits.safetensors"))
            _pack(Path(tmp), out / f"{family}.tar")
        info["families"][family] = {"config": kwargs, "whole_vs_split": float((whole - split).abs().max() /
                                                                              whole.abs().max())}
        print(family, info["families"][family], flush=True)
        (out / f"{family}.json").write_text(json.dumps(info, indent=2))   # per family: Triton's autotuning is slow


def _relative(a, b) -> float:
    return float((a.double() - b.double()).abs().max() / b.double().abs().max())


def check(directory: Path) -> dict:
    import torch
    from safetensors.torch import load_file

    from seqedge.families import import_hf

    results = {}
    for family in FAMILIES:
        packed = directory / f"{family}.tar"
        if not packed.is_file():
            results[family] = {"error": f"{packed} missing"}
            continue
        with tempfile.TemporaryDirectory() as tmp, tarfile.open(packed) as tar:
            tar.extractall(tmp, filter="data")
            logits = Path(tmp) / "fla_logits.safetensors"
            ref = load_file(str(logits))
            logits.unlink()                   # not a weight of the model directory
            try:
                model = import_hf(tmp)
            except Exception as err:          # a family whose importer refuses it: recorded, not hidden
                results[family] = {"error": f"{type(err).__name__}: {err}"}
                print(family, results[family], flush=True)
                continue
            tokens = ref["tokens"]
            with torch.no_grad():
                whole, _ = model(tokens)
                first, state = model(tokens[:, :SPLIT])
                second, _ = model(tokens[:, SPLIT:], state)
            split = torch.cat([first, second], dim=1)
            results[family] = {"whole_vs_fla_whole": _relative(whole, ref["whole"]),
                               "split_vs_fla_split": _relative(split, ref["split"]),
                               "fla_whole_vs_fla_split": _relative(ref["split"], ref["whole"]),
                               "top1_agreement": float((whole.argmax(-1) == ref["whole"].argmax(-1))
                                                       .double().mean())}
        print(family, results[family], flush=True)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    gen = sub.add_parser("generate", help="on a GPU with fla: save random fla models and their logits")
    gen.add_argument("--out", type=Path, required=True)
    gen.add_argument("--families", default=",".join(FAMILIES), help="comma list (default: all)")
    chk = sub.add_parser("check", help="here: import the saved models with seqedge and compare logits")
    chk.add_argument("directory", type=Path)
    chk.add_argument("--out", type=Path, help="write the comparison as JSON here")
    args = parser.parse_args(argv)
    if args.command == "generate":
        generate(args.out, args.families.split(","))
        return 0
    results = check(args.directory)
    if args.out:
        from seqedge.evaluate.run_info import run_metadata

        generated = {f: json.loads((args.directory / f"{f}.json").read_text()) for f in FAMILIES
                     if (args.directory / f"{f}.json").is_file()}
        versions = args.directory / "versions.json"      # the GPU machine's torch, fla, transformers, card
        record = {"run": run_metadata(), "gpu_versions": json.loads(versions.read_text()) if versions.is_file()
                  else None, "fla_runs": generated, "results": results}
        args.out.write_text(json.dumps(record, indent=2) + "\n")
    return 0 if all("error" not in r for r in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
