"""``seqedge info``: describe a checkpoint or an exported artifact directory."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("info", help="describe a checkpoint or an artifact directory",
                       description="Print the config, parameter count and state size of a checkpoint, or the "
                                   "manifest of an exported artifact directory.")
    p.add_argument("path", nargs="?", metavar="DIR", help="checkpoint or artifact directory (default: bundled model)")
    p.add_argument("--json", action="store_true", help="print machine-readable JSON")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from seqedge.checkpoint import read_config
    from seqedge.defaults import default_checkpoint_dir
    from seqedge.state import state_specs

    path = Path(args.path) if args.path else default_checkpoint_dir()
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist")
    manifest = path / "manifest.json"
    if manifest.is_file():
        try:
            data = json.loads(manifest.read_text())
        except json.JSONDecodeError as err:
            raise ValueError(f"{manifest} is not valid JSON: {err}") from None
        print(json.dumps(data, indent=2))
        return 0
    config = read_config(path)
    specs = state_specs(config)
    state_bytes = sum(4 * _numel(s.concrete_shape(1)) for s in specs)
    info = {"path": str(path), "config": config.to_dict(), "state_bytes_per_sequence": state_bytes,
            "state": [s.to_dict() for s in specs]}
    weights = path / "model.safetensors"
    if weights.is_file():
        info["weights_bytes"] = weights.stat().st_size
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


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n
