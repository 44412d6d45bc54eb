"""``seqedge generate``: stream a continuation of a prompt from a checkpoint."""

from __future__ import annotations

import argparse
import sys
import time


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("generate", help="stream generated text from a checkpoint",
                       description="Stream a continuation of --prompt to the terminal, token by token.")
    p.add_argument("--checkpoint", metavar="DIR", help="checkpoint directory (default: the bundled model)")
    p.add_argument("--artifact", metavar="DIR", help="run an exported artifact instead of a checkpoint")
    p.add_argument("--runtime", default=None,
                   help="runtime for --artifact: torch, onnxruntime, executorch, coreml, tensorrt, cuda (default: "
                        "cuda on a machine with an NVIDIA GPU, else onnxruntime); a checkpoint runs on cuda there too")
    p.add_argument("--quantization", default=None, help="variant of --artifact: fp32, fp16, int8, int4 (default: "
                                                        "fp32, or the only one)")
    p.add_argument("--prompt", required=True, help="text to continue")
    p.add_argument("--max-new-tokens", type=int, default=200, help="tokens to generate (default: 200)")
    p.add_argument("--temperature", type=float, default=0.8, help="0 for greedy (default: 0.8)")
    p.add_argument("--top-k", type=int, default=0, help="sample from the k most likely tokens (0: off)")
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass (1.0: off)")
    p.add_argument("--seed", type=int, default=None, help="random seed, for repeatable output")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from seqedge.defaults import default_checkpoint_dir
    from seqedge.model import load_pretrained
    from seqedge.sampling import SamplingConfig
    from seqedge.tokenizer import ByteTokenizer

    SamplingConfig(args.temperature, args.top_k, args.top_p, args.seed)  # validate before loading anything
    if args.max_new_tokens < 0:
        raise ValueError(f"--max-new-tokens must be >= 0, got {args.max_new_tokens}")
    if not args.prompt:
        raise ValueError("--prompt must not be empty")
    if args.artifact and args.checkpoint:
        raise ValueError("pass either --checkpoint or --artifact, not both")
    from seqedge.runtimes.cuda_runtime import cuda_available

    on_gpu = args.runtime in (None, "cuda") and cuda_available()
    if args.artifact:
        from seqedge.runtimes import load

        runtime = args.runtime or ("cuda" if on_gpu else "onnxruntime")
        model = load(args.artifact, runtime, quantization=args.quantization)     # a Session
        print(f"[{model.runtime} running {model.variant.name}]", file=sys.stderr)
    elif on_gpu:
        model = _checkpoint_on_cuda(args.checkpoint or default_checkpoint_dir())
        print(f"[cuda running {model.variant.name}]", file=sys.stderr)
    else:
        model = load_pretrained(args.checkpoint or default_checkpoint_dir()).eval()
    tok = ByteTokenizer()
    decoder = tok.stream_decoder()
    sys.stdout.write(args.prompt)
    sys.stdout.flush()
    start, count = time.perf_counter(), 0
    for token in model.generate(tok.encode(args.prompt, add_bos=True), args.max_new_tokens,
                                temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, seed=args.seed,
                                stop_tokens=(tok.eos_id,)):
        count += 1
        sys.stdout.write(decoder.push(token))
        sys.stdout.flush()
    sys.stdout.write(decoder.flush() + "\n")
    elapsed = time.perf_counter() - start
    print(f"[{count} tokens, {count / max(elapsed, 1e-9):.1f} tokens/s]", file=sys.stderr)
    return 0


def _checkpoint_on_cuda(checkpoint_dir):
    """A cuda Session over a checkpoint: its torch variant is written to a temporary artifact first (checked
    against the float64 reference like every export), then opened on that runtime."""
    import tempfile
    from pathlib import Path

    from seqedge.export.api import export_model
    from seqedge.runtimes import load

    out = Path(tempfile.mkdtemp(prefix="seqedge-cuda-")) / "artifact"
    export_model(checkpoint_dir, out, [], progress=False)
    return load(out, "cuda")
