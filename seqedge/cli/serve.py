"""``seqedge serve``: an OpenAI-compatible HTTP API over an exported artifact."""

from __future__ import annotations

import argparse
import sys

from .options import (add_library, add_model, add_quantize, canonical_recipes, legacy_quantization, model_path,
                      runtime_names, runtime_options, runtime_or_default)


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "serve", help="serve an artifact over an OpenAI-compatible HTTP API",
        description="Serve an artifact at /v1/completions, /v1/chat/completions (streaming with stream=true), "
                    "/v1/models and /health. Up to --slots streams decode together, each in its own fixed-size "
                    "state slot; --max-queue more wait, and further requests get HTTP 429.")
    add_model(p, "artifact directory written by `seqedge export` (required)")
    p.add_argument("--runtime", default=None,
                   help=f"{runtime_names()}; a target name such as onnx names its runtime (default: onnxruntime; "
                        "executorch with --library)")
    add_quantize(p)
    add_library(p)
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="port to listen on (default: 8000; 0: a free one)")
    p.add_argument("--slots", type=int, default=8, help="streams decoded concurrently (default: 8)")
    p.add_argument("--max-queue", type=int, default=32, help="requests waiting for a slot (default: 32)")
    p.add_argument("--batching", choices=("auto", "serial"), default="auto",
                   help="auto: one batched step over all slots when the runtime's rows are checked independent at "
                        "start, else one slot at a time; serial: always one slot at a time (default: auto)")
    p.add_argument("--model-name", default=None, help="model id clients send (default: the artifact's folder name)")
    p.add_argument("--max-tokens-limit", type=int, default=4096,
                   help="largest max_tokens a request may ask for, and the default of chat requests (default: 4096)")
    p.set_defaults(run=run)


def _variant_tag(args: argparse.Namespace) -> str | None:
    """The variant tag (fp32, int8, ...) of --quantize, or of the older --quantization (which took tags)."""
    from seqedge.export.quantization import recipe_tag

    legacy = legacy_quantization(args)
    if legacy:
        return legacy
    return recipe_tag(canonical_recipes([args.quantize])[0]) if args.quantize else None


def run(args: argparse.Namespace) -> int:
    from seqedge.serve import SchedulerConfig, ServeConfig, build_server
    from seqedge.serve.server import bind_socket
    from seqedge.targets import resolve_runtime

    artifact = model_path(args)
    if artifact is None:
        raise ValueError("name the artifact to serve: seqedge serve -m DIR")
    runtime = resolve_runtime(runtime_or_default(args, "onnxruntime"))
    config = ServeConfig(artifact, runtime, _variant_tag(args), args.host, args.port, args.model_name,
                         args.max_tokens_limit, SchedulerConfig(args.slots, args.max_queue, batching=args.batching),
                         runtime_options(args, runtime))
    server = build_server(config)
    uvicorn_server = server.uvicorn_server()
    sock = bind_socket(config.host, config.port)
    print(server.startup_line(sock.getsockname()[1]), file=sys.stderr, flush=True)
    uvicorn_server.run(sockets=[sock])
    if uvicorn_server.started and uvicorn_server.should_exit:
        # stopped by Ctrl-C or SIGTERM: uvicorn re-raises the signal after shutting down, but from inside the
        # event loop's last step, where asyncio's own SIGINT handler can let the main task finish normally
        raise KeyboardInterrupt
    return 0
