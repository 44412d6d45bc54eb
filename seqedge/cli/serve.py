"""``seqedge serve``: an OpenAI-compatible HTTP API over an exported artifact."""

from __future__ import annotations

import argparse
import sys


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "serve", help="serve an artifact over an OpenAI-compatible HTTP API",
        description="Serve ARTIFACT at /v1/completions, /v1/chat/completions (streaming with stream=true), "
                    "/v1/models and /health. Up to --slots streams decode together, each in its own fixed-size "
                    "state slot; --max-queue more wait, and further requests get HTTP 429.")
    p.add_argument("artifact", metavar="ARTIFACT", help="artifact directory (from `seqedge export`)")
    p.add_argument("--runtime", default="onnxruntime",
                   help="torch, onnxruntime, onnxruntime-fused, executorch, coreml, tensorrt (default: onnxruntime)")
    p.add_argument("--quantization", default=None,
                   help="variant: fp32, fp16, int8, int4 (default: fp32, or the only one)")
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


def run(args: argparse.Namespace) -> int:
    from seqedge.serve import SchedulerConfig, ServeConfig, build_server
    from seqedge.serve.server import bind_socket

    config = ServeConfig(args.artifact, args.runtime, args.quantization, args.host, args.port, args.model_name,
                         args.max_tokens_limit, SchedulerConfig(args.slots, args.max_queue, batching=args.batching))
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
