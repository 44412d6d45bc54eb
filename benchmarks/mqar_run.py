"""A dedicated MQAR run of one 2-layer model (the target cell: d_model 256, length 256, 64 pairs).

    python benchmarks/mqar_run.py --out DIR [--d 256] [--rule gated] [--budget-s 480] [--lr 2e-3]

Trains on Zoology's MQAR mixture (4-64 pairs, whichever fit the current length) with a length curriculum
64 -> 128 -> 256, fitted to the time box (benchmarks/quality.py's lockstep), evaluating the 256x64 cell along the
way and the quality table's whole grid at the end. Writes DIR/mqar_run.json; prints progress.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import quality  # noqa: E402  (benchmarks/quality.py: _args, lockstep, _OneCell, environment)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--d", type=int, default=256)
    ap.add_argument("--rule", default="gated", choices=("gated", "delta"))
    ap.add_argument("--budget-s", type=float, default=480.0)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--eval-every", type=int, default=250)
    ap.add_argument("--work", default="/tmp/seqedge-mqar", help="scratch folder for the run's checkpoints")
    ap.add_argument("--cost-factor", type=float, default=1.2,
                    help="later steps' cost relative to the first 20 (longer sequences), used to fit the step count "
                         "to --budget-s; the recorded run used 2.5, which stopped it after 123 s of a 420 s box")
    args = ap.parse_args(argv)

    import torch

    from seqedge.config import SequentialAttentionConfig
    from seqedge.model import SequentialAttentionModel
    from seqedge.scan import dispatch
    from seqedge.training.synthetic import MQARTask
    from seqedge.training.trainer import SequentialTrainer, evaluate_model

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    deadline = time.time() + args.budget_s
    torch.manual_seed(0)
    task = MQARTask(pairs=(4, 8, 16, 32, 64), eval_examples=512)
    cfg = SequentialAttentionConfig(vocab_size=8192, hidden_size=args.d, num_layers=2, num_heads=args.d // 64,
                                    head_k_dim=64, head_v_dim=64, update_rule=args.rule)
    schedule = lambda n: ((0, 64), (int(0.15 * n), 128), (int(0.3 * n), 256))
    targs = quality._args(Path(args.work), 20000, args.batch_size, 256, args.lr, 100, schedule=schedule(20000),
                          eval_bs=64)
    trainer = SequentialTrainer(SequentialAttentionModel(cfg), targs, task)
    curve = []

    def log(msg: str) -> None:
        print(f"[mqar {time.strftime('%H:%M:%S')}] {msg}", flush=True)

    def cell(seq_len: int, pairs: int) -> float:
        trainer.model.eval()
        acc = evaluate_model(trainer.model, quality._OneCell(task, pairs), seq_len, 64, 0, trainer.device,
                             trainer._autocast)["accuracy"]
        trainer.model.train()
        return acc

    original_step = trainer.train_step

    def train_step():                                   # lockstep drives train_step; evaluate along the way
        loss = original_step()
        if trainer.step % args.eval_every == 0:
            acc = cell(256, 64)
            curve.append(dict(step=trainer.step, loss=loss, acc_256x64=acc, wall_s=round(time.time() - start, 1)))
            log(f"step {trainer.step} loss {loss:.4f} acc 256x64 {acc:.3f}")
        return loss

    trainer.train_step = train_step
    start = time.time()
    run = quality.lockstep({"mqar": trainer}, deadline, log, cost_factor=args.cost_factor, schedule=schedule)
    trainer.model.eval()
    grid = {f"{s}x{p}": cell(s, p) for s, p in quality.MQAR["grid"]}
    c = cfg
    state_floats = c.num_layers * (c.num_heads * c.head_k_dim * c.head_v_dim + c.conv_channels * (c.conv_kernel - 1))
    result = dict(env=quality.environment(), command="python " + " ".join(sys.argv), model=f"d{args.d}-{args.rule}",
                  cost_factor=args.cost_factor,
                  lr=args.lr, batch_size=args.batch_size, steps=trainer.step, schedule=trainer.args.seq_len_schedule,
                  train_wall_s=round(run["train_wall_s"]["mqar"], 1), curve=curve, accuracy=grid,
                  parameters=trainer.model.num_parameters(), state_bytes_fp32=4 * state_floats,
                  scan_paths=sorted(dispatch._TOLD))       # which scan ran (Triton kernel or chunked PyTorch form)
    (out / "mqar_run.json").write_text(json.dumps(result, indent=1))
    log(f"final grid: {grid}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
