"""``seqedge generate``: stream a continuation of a prompt from a checkpoint or an exported artifact."""

from __future__ import annotations

import argparse
from pathlib import Path
import json
import sys
import time

from seqedge.sampling import DEFAULT_MAX_NEW_TOKENS, SamplingConfig

from .options import (add_json, add_library, add_model, add_quantize, add_quiet, canonical_recipes, is_artifact,
                      legacy_quantization, model_path, runtime_names, runtime_options, runtime_or_default)

DEFAULTS = SamplingConfig()       # the Python API's defaults (model.generate, Session.generate)
DEFAULT_RUNTIME = "onnxruntime"


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("generate", help="stream generated text from a checkpoint or an artifact",
                       description="Stream a continuation of --prompt to the terminal, token by token. -m names a "
                                   "checkpoint (run by torch, or by the cuda runtime on an NVIDIA GPU) or an "
                                   "artifact directory (run by --runtime). "
                                   "Sampling defaults are the Python API's: greedy unless -t is given.")
    add_model(p, "checkpoint or artifact directory (default: the bundled checkpoint)", positional=False,
              legacy_flags=("--checkpoint", "--artifact"))
    p.add_argument("--runtime", default=None,
                   help=f"runtime for an artifact: {runtime_names()}; a target name such as onnx names its runtime "
                        f"(default: executorch with --library, else cuda on an NVIDIA GPU, else {DEFAULT_RUNTIME})")
    add_quantize(p)
    add_library(p)
    p.add_argument("-p", "--prompt", required=True, help="text to continue")
    p.add_argument("-n", "--max-new-tokens", type=int, default=DEFAULT_MAX_NEW_TOKENS,
                   help="tokens to generate (default: %(default)s)")
    p.add_argument("-t", "--temperature", type=float, default=DEFAULTS.temperature,
                   help="sampling temperature; 0 is greedy (default: %(default)s)")
    p.add_argument("--top-k", type=int, default=DEFAULTS.top_k,
                   help="sample from the k most likely tokens; 0 is off (default: %(default)s)")
    p.add_argument("--top-p", type=float, default=DEFAULTS.top_p,
                   help="nucleus sampling mass; 1.0 is off (default: %(default)s)")
    p.add_argument("--seed", type=int, default=DEFAULTS.seed, help="random seed, for repeatable output")
    add_quiet(p, "no status lines on stderr (the text only)")
    add_json(p, "the prompt, the continuation and its token count and speed (no streaming)")
    p.set_defaults(run=run)


def _open(args: argparse.Namespace):
    """The model to generate with (a torch module or a Session) and a description of it."""
    from seqedge.defaults import default_checkpoint_dir
    from seqedge.runtimes.cuda_runtime import cuda_available
    from seqedge.targets import resolve_runtime

    path = model_path(args)
    on_gpu = args.runtime in (None, "cuda") and cuda_available()
    quantize = legacy_quantization(args) or args.quantize
    if path is not None and not Path(path).is_dir():
        raise ValueError(f"{path} does not exist or is not a directory (a checkpoint from `seqedge import` "
                                f"or `seqedge train`, or an artifact from `seqedge export`)")
    if path is not None and is_artifact(path):
        from seqedge.export.quantization import recipe_tag
        from seqedge.runtimes import load

        runtime = resolve_runtime(runtime_or_default(args, "cuda" if on_gpu else DEFAULT_RUNTIME))
        tag = recipe_tag(canonical_recipes([quantize])[0]) if quantize else None
        session = load(path, runtime, quantization=tag, **runtime_options(args, runtime))
        return session, f"{session.runtime} running {session.variant.name}"
    checkpoint = path or default_checkpoint_dir()
    if on_gpu and not quantize:
        session = _checkpoint_on_cuda(checkpoint)
        return session, f"cuda running checkpoint {checkpoint}"
    given = [flag for flag, value in (("--runtime", args.runtime), ("--quantize", quantize),
                                      ("--library", args.library)) if value]
    if given:
        verb = "apply" if len(given) > 1 else "applies"
        raise ValueError(f"{' and '.join(given)} {verb} to an exported artifact, and {path or 'the bundled model'} "
                         "is a checkpoint (export it with `seqedge export`)")
    from seqedge.model import load_pretrained

    return load_pretrained(checkpoint).eval(), f"torch running checkpoint {checkpoint}"


def _checkpoint_on_cuda(checkpoint_dir):
    """A cuda Session over a checkpoint: its torch variant is written to a temporary artifact (removed at exit)
    and opened on that runtime."""
    import atexit
    import shutil
    import tempfile
    from pathlib import Path

    from seqedge.export.api import export_model
    from seqedge.runtimes import load

    folder = tempfile.mkdtemp(prefix="seqedge-cuda-")
    atexit.register(shutil.rmtree, folder, True)
    out = Path(folder) / "artifact"
    export_model(checkpoint_dir, out, [], progress=False)
    return load(out, "cuda")


def run(args: argparse.Namespace) -> int:
    from seqedge.tokenizer import ByteTokenizer

    SamplingConfig(args.temperature, args.top_k, args.top_p, args.seed)  # validate before loading anything
    if args.max_new_tokens < 0:
        raise ValueError(f"--max-new-tokens must be >= 0, got {args.max_new_tokens}")
    if not args.prompt:
        raise ValueError("--prompt must not be empty")
    status = (lambda line: None) if args.quiet or args.json else (lambda line: print(line, file=sys.stderr))
    unused = [flag for flag, value, off in (("--top-k", args.top_k, DEFAULTS.top_k), ("--top-p", args.top_p,
                                            DEFAULTS.top_p), ("--seed", args.seed, DEFAULTS.seed)) if value != off]
    if args.temperature == 0 and unused:
        print(f"seqedge generate: note: {', '.join(unused)} {'has' if len(unused) == 1 else 'have'} no effect at "
              "temperature 0 (greedy); pass -t/--temperature to sample", file=sys.stderr)
    model, what = _open(args)
    status(f"[{what}]")
    tok = model.tokenizer or ByteTokenizer()        # a Session's, or a checkpoint's (None: the byte tokenizer)
    decoder = tok.stream_decoder()
    stream = not args.json
    if stream:
        sys.stdout.write(args.prompt)
        sys.stdout.flush()
    start, pieces, count = time.perf_counter(), [], 0
    for token in model.generate(tok.encode(args.prompt, add_bos=True), args.max_new_tokens,
                                temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, seed=args.seed,
                                stop_tokens=tok.stop_ids):
        count += 1
        if token in tok.stop_ids:      # the end of the text, not part of it (as the server does)
            break
        pieces.append(decoder.push(token))
        if stream:
            sys.stdout.write(pieces[-1])
            sys.stdout.flush()
    pieces.append(decoder.flush())
    elapsed = time.perf_counter() - start
    if args.json:
        print(json.dumps({"model": what, "prompt": args.prompt, "text": "".join(pieces), "tokens": count,
                          "seconds": round(elapsed, 4), "tokens_per_s": round(count / max(elapsed, 1e-9), 2)}))
    else:
        sys.stdout.write(pieces[-1] + "\n")
    status(f"[{count} tokens, {count / max(elapsed, 1e-9):.1f} tokens/s]")
    return 0
