"""``seqedge train``: train a Sequential Attention model (or the matched transformer baseline) on text.

Under ``torchrun --nproc_per_node N -m seqedge.cli.main train ...`` every process joins the process group that
torchrun describes (NCCL on CUDA, gloo on CPU) and the trainer wraps the model in DistributedDataParallel.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from .options import add_json, add_out, add_quiet, note_deprecated


def _schedule(text: str) -> tuple[tuple[int, int], ...]:
    try:
        pairs = tuple(tuple(int(x) for x in part.split(":")) for part in text.split(",") if part)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected STEP:LEN,STEP:LEN,..., got {text!r}") from None
    if any(len(p) != 2 for p in pairs):
        raise argparse.ArgumentTypeError(f"expected STEP:LEN,STEP:LEN,..., got {text!r}")
    return pairs  # type: ignore[return-value]


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a model on text (the Python stdlib by default)",
                       description="Train a Sequential Attention language model (or, with --arch transformer, the "
                                   "matched softmax-attention baseline). Writes checkpoints to OUT/checkpoints, the "
                                   "final model to OUT/model and the metrics to OUT/metrics.json.")
    p.add_argument("--preset", default="tiny", help="model preset: tiny, small or base (default: tiny)")
    p.add_argument("--data", default="stdlib", help="'stdlib' (the running Python's standard library), a text file "
                                                    "or a folder of text files (default: stdlib)")
    p.add_argument("--steps", type=int, required=True, help="optimizer steps")
    add_out(p, "run directory", required=True)
    p.add_argument("--arch", choices=("seqattn", "transformer"), default="seqattn",
                   help="seqattn (default) or the matched transformer baseline")
    p.add_argument("--update-rule", choices=("gated", "delta"), default=None,
                   help="Sequential Attention update rule (default: the preset's, gated)")
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoints/latest, exactly")
    p.add_argument("--batch-size", type=int, default=32, help="sequences per process and micro-step (default 32)")
    p.add_argument("--seq-len", type=int, default=512, help="tokens (bytes) per sequence (default 512)")
    p.add_argument("--seq-len-schedule", type=_schedule, default=(), metavar="STEP:LEN,...",
                   help="sequence-length curriculum, e.g. 0:128,500:512 (default: --seq-len throughout)")
    p.add_argument("--grad-accum", type=int, default=1, help="micro-batches per optimizer step (default 1)")
    p.add_argument("--lr", type=float, default=3e-3, help="peak learning rate (default 3e-3)")
    p.add_argument("--warmup", type=int, default=100, help="warmup steps (default 100)")
    p.add_argument("--weight-decay", type=float, default=0.1, help="AdamW weight decay (default 0.1)")
    p.add_argument("--eval-every", type=int, default=0, help="evaluate every N steps (default: at the end)")
    p.add_argument("--eval-tokens", type=int, default=1 << 18, help="validation tokens per evaluation")
    p.add_argument("--save-every", type=int, default=0, help="checkpoint every N steps (default: at the end)")
    p.add_argument("--val-fraction", type=float, default=0.05, help="share of files held out (default 0.05)")
    p.add_argument("--seed", type=int, default=0, help="seed of the weights and the batches (default 0)")
    p.add_argument("--device", default="auto", help="auto (CUDA if present), cpu, cuda, cuda:1, ...")
    p.add_argument("--no-bf16", action="store_true", help="train in float32 on CUDA (default: bf16 autocast)")
    add_quiet(p, "no progress bar and no status lines")
    p.add_argument("--no-progress", dest="legacy_no_progress", action="store_true", help=argparse.SUPPRESS)
    add_json(p, "the final validation metrics")
    p.set_defaults(run=run)


def _init_distributed() -> None:
    """Join torchrun's process group when launched by it (torchrun sets WORLD_SIZE, RANK, MASTER_ADDR...)."""
    import torch
    import torch.distributed as dist

    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if torch.cuda.is_available() else "gloo")


def build_model(arch: str, config, max_seq_len: int):
    if arch == "transformer":
        from seqedge.training.transformer import TransformerConfig, TransformerModel

        return TransformerModel(TransformerConfig.matching(config, max_seq_len))
    from seqedge.model import SequentialAttentionModel

    return SequentialAttentionModel(config)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from seqedge.config import SequentialAttentionConfig
    from seqedge.training.checkpointing import latest_checkpoint
    from seqedge.training.data import TextDataset
    from seqedge.training.trainer import SequentialTrainer, TrainingArguments

    if args.legacy_no_progress:
        note_deprecated("--no-progress", "-q/--quiet (which also drops the status lines)")
    overrides = {} if args.update_rule is None else {"update_rule": args.update_rule}
    config = SequentialAttentionConfig.preset(args.preset, **overrides)
    targs = TrainingArguments(
        out_dir=args.out, steps=args.steps, batch_size=args.batch_size, seq_len=args.seq_len,
        seq_len_schedule=args.seq_len_schedule, grad_accum=args.grad_accum, lr=args.lr, warmup_steps=args.warmup,
        weight_decay=args.weight_decay, eval_every=args.eval_every, eval_tokens=args.eval_tokens,
        save_every=args.save_every, seed=args.seed, device=args.device, bf16=not args.no_bf16,
        progress=not (args.quiet or args.json or args.legacy_no_progress))
    has_checkpoint = latest_checkpoint(Path(args.out) / "checkpoints") is not None
    if args.resume and not has_checkpoint:
        raise FileNotFoundError(f"--resume: no checkpoint under {args.out}/checkpoints; drop --resume to start")
    if has_checkpoint and not args.resume:
        raise ValueError(f"{args.out} already holds checkpoints; pass --resume to continue or choose another --out")
    data = TextDataset.from_source(args.data, val_fraction=args.val_fraction, seed=args.seed)

    import torch

    _init_distributed()
    torch.manual_seed(args.seed)
    max_len = max([targs.seq_len] + [t for _, t in targs.seq_len_schedule])
    model = build_model(args.arch, config, max(4096, max_len))
    trainer = SequentialTrainer(model, targs, data)
    if args.resume:
        trainer.resume()
    if trainer.is_main and not (args.quiet or args.json):
        info = data.describe()
        print(f"seqedge train: {args.arch} ({config.update_rule if args.arch == 'seqattn' else 'softmax'}), "
              f"{sum(p.numel() for p in model.parameters()):,} parameters, {info['train_tokens']:,} train / "
              f"{info['val_tokens']:,} validation tokens, device {trainer.device}, world size {trainer.world_size}",
              file=sys.stderr)
    result = trainer.train()
    if trainer.is_main and args.json:
        print(json.dumps({"step": trainer.step, "tokens": trainer.tokens_seen, "seconds": round(trainer.elapsed, 2),
                          "model": str(Path(args.out) / "model"), "metrics": result}))
    elif trainer.is_main and not args.quiet:
        metric = "bpb" if "bpb" in result else next(k for k in result if k not in ("step", "tokens", "loss"))
        print(f"seqedge train: step {trainer.step}, validation {metric} {result[metric]:.4f}, "
              f"{trainer.tokens_seen:,} tokens in {trainer.elapsed:.1f} s; model in {Path(args.out) / 'model'}")
    return 0
