"""``seqedge info``: describe a checkpoint or an exported artifact directory."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from seqedge.tokenizer import ByteTokenizer

from .options import add_json, add_model, add_quiet, model_path


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("info", help="describe a checkpoint or an artifact directory",
                       description="Print the config, parameter count and state size of a checkpoint, or the "
                                   "manifest of an exported artifact directory.")
    add_model(p, "checkpoint or artifact directory (default: the bundled model)")
    add_json(p, "the description (the whole manifest for an artifact)")
    add_quiet(p, "print nothing: only check that the directory reads (exit code 0 when it does)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from seqedge.checkpoint import read_config
    from seqedge.defaults import default_checkpoint_dir
    from seqedge.state import state_nbytes, state_specs

    given = model_path(args)
    path = Path(given) if given else default_checkpoint_dir()
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist")
    if not path.is_dir():
        raise ValueError(f"{path} is a file; `seqedge info` takes a checkpoint or artifact directory")
    manifest = path / "manifest.json"
    if manifest.is_file():
        from seqedge.artifact import read_manifest

        artifact = read_manifest(path)            # checks the schema: the summary below may index freely
        if not args.quiet:
            print(json.dumps(artifact.data, indent=2) if args.json
                  else _manifest_summary(path, artifact.data, artifact.config.to_dict()))
        return 0
    config = read_config(path)
    specs = state_specs(config)
    state_bytes = state_nbytes(specs)
    info = {"path": str(path), "config": config.to_dict(), "state_bytes_per_sequence": state_bytes,
            "state": [s.to_dict() for s in specs]}
    weights = path / "model.safetensors"
    if weights.is_file():
        info["weights_bytes"] = weights.stat().st_size
    if args.quiet:
        return 0
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    print(f"checkpoint: {path}")
    for key, value in config.to_dict().items():
        print(f"  {key:20s} {value}")
    print(f"  state per sequence   {state_bytes / 1024:.1f} KiB in {len(specs)} tensors (fixed, any context)")
    if "weights_bytes" in info:
        print(f"  weights file         {info['weights_bytes'] / 2**20:.2f} MiB")
    return 0


def _tokenizer_line(t: dict) -> str:
    """The manifest's tokenizer record in one line: its type, file, size and special ids."""
    ids = ", ".join(f"{k} {t.get(f'{k}_id')}" for k in ("bos", "eos", "pad"))
    file = f" ({t['file']['path']})" if isinstance(t.get("file"), dict) else ""
    return f"  tokenizer   {t.get('type')}{file}, {t.get('vocab_size')} tokens, {ids}"


def _manifest_summary(path: Path, data: dict, model: dict) -> str:
    """A readable summary of an artifact's manifest.json (``--json`` prints all of it); ``model`` is its config
    with defaults filled in."""
    lines = [f"artifact: {path}  (format {data['format_version']}, seqedge {data.get('seqedge_version', '?')})",
             f"  model       {model['update_rule']} rule, hidden {model['hidden_size']}, {model['num_layers']} "
             f"layers, {model['num_heads']} heads x dk {model['head_k_dim']} / dv {model['head_v_dim']}, vocab "
             f"{model['vocab_size']}, {data.get('num_parameters', 0) / 1e6:.2f}M parameters",
             f"  fingerprint {data['fingerprint']}",
             f"  state       {len(data['state'])} tensors, {data.get('state_bytes_per_sequence', 0) / 1024:.1f} KiB "
             "per sequence (fixed, any context)",
             f"  entry points step(tokens[B], *state), chunk(tokens[B, {data['chunk_size']}], *state)",
             _tokenizer_line(data.get("tokenizer") or ByteTokenizer().to_dict()),
             "  variants:"]
    parity = data.get("parity", {})
    for v in data["variants"]:
        name = f"{v['target']}/{'fp32' if v['quantization']['scheme'] == 'none' else v['quantization']['scheme']}"
        size = sum(f["bytes"] for f in v["files"].values())
        p = parity.get(name, {})
        recipe = v["quantization"].get("recipe")
        name_shown = f"{name} ({recipe})" if recipe else name
        check = (f"max|dlogit| {p['max_abs']:.2e}, top-1 {p['top1']:.0%} on {p.get('runtime')}" if "max_abs" in p
                 else f"not checked: {p.get('skipped', '-')}")
        lines.append(f"    {name_shown:30s} {size / 2**20:8.2f} MiB  {', '.join(sorted(v['files']))}  [{check}]")
    for s in data.get("skipped", []):
        lines.append(f"  skipped {s['target']}/{s['quantization']}: {s['reason']}")
    return "\n".join(lines)
