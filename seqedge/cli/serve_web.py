"""``seqedge serve-web``: serve the browser demo (runners/web) for an artifact on localhost."""

from __future__ import annotations

import argparse
import shutil
import subprocess
from pathlib import Path

from .options import add_model, model_path

WEB_DIR = Path(__file__).resolve().parents[2] / "runners" / "web"


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve-web", help="serve the browser demo of an artifact (onnxruntime-web)",
                       description="Serve the browser demo page for an artifact on http://HOST:PORT/: it runs the "
                                   "onnx-ort graphs with onnxruntime-web (WASM, or WebGPU where the browser has "
                                   "it), the state carried in JavaScript. Needs Node.js and `npm ci` in "
                                   "runners/web of a seqedge source checkout. Query parameters of the page: "
                                   "quantization=int8, target=onnx, ep=wasm|webgpu.")
    add_model(p, "artifact directory with an onnx-ort export (required)")
    p.add_argument("--port", type=int, default=8000, help="port to listen on (default: 8000)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from seqedge.artifact import read_manifest

    artifact = model_path(args)
    if artifact is None:
        raise ValueError("name the artifact to serve: seqedge serve-web -m DIR")
    read_manifest(artifact)                          # a clear error before a server starts on a wrong folder
    if not (WEB_DIR / "serve.mjs").is_file():
        raise FileNotFoundError(f"the browser demo is not at {WEB_DIR}: serve-web runs from a seqedge source "
                                "checkout (git clone), not from an installed wheel")
    node = shutil.which("node")
    if node is None:
        raise FileNotFoundError("serve-web needs Node.js >= 20 on PATH; install it (apt-get install -y nodejs)")
    if not (WEB_DIR / "node_modules" / "onnxruntime-web").is_dir():
        raise FileNotFoundError(f"the demo's npm packages are missing; run: (cd {WEB_DIR} && npm ci)")
    return subprocess.call([node, str(WEB_DIR / "serve.mjs"), str(Path(artifact).resolve()),
                            "--port", str(args.port), "--host", args.host])
