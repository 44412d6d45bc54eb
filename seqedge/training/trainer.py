"""The trainer: AdamW, warmup + cosine, clipping, accumulation, bf16 autocast on CUDA, a sequence-length
curriculum, evaluation, atomic checkpoints and exact resume; DistributedDataParallel under ``torchrun``.

A *task* is anything with ``metric`` (``"bpb"``, ``"accuracy"`` or ``"exact_match"``),
``train_batch(index, batch_size, seq_len) -> (inputs, labels)`` and
``eval_batches(batch_size, seq_len, max_tokens)``: :class:`~seqedge.training.data.TextDataset`,
:class:`~seqedge.training.synthetic.MQARTask`, :class:`~seqedge.training.synthetic.PasskeyTask`.
Micro-batch ``(step * grad_accum + micro) * world_size + rank`` is what every process reads, so the data position
is the step and a resumed run sees exactly the batches an uninterrupted one would.

    >>> args = TrainingArguments(out_dir="runs/x", steps=1000, batch_size=32, seq_len=512)
    >>> trainer = SequentialTrainer(model, args, TextDataset.from_source("stdlib"))
    >>> trainer.train()
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

from seqedge.fsutil import write_json_atomic

from . import checkpointing
from .data import IGNORE_INDEX

METRICS = ("bpb", "accuracy", "exact_match")


@dataclass(frozen=True)
class TrainingArguments:
    """Everything a run needs besides the model and the data; ``batch_size`` is per process and micro-step."""

    out_dir: str
    steps: int
    batch_size: int = 32
    seq_len: int = 512
    grad_accum: int = 1
    lr: float = 3e-3
    min_lr_ratio: float = 0.1
    warmup_steps: int = 100
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0
    seq_len_schedule: tuple[tuple[int, int], ...] = ()   # ((first_step, seq_len), ...): curriculum; () = seq_len
    eval_every: int = 0                                   # 0: evaluate at the end only
    eval_tokens: int = 1 << 18
    eval_batch_size: int = 16
    save_every: int = 0                                   # 0: checkpoint at the end only
    keep_checkpoints: int = 2
    seed: int = 0
    bf16: bool = True                                     # autocast to bfloat16 on CUDA (ignored on CPU)
    device: str = "auto"
    log_every: int = 10
    progress: bool = True

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "seq_len", "grad_accum", "eval_batch_size", "eval_tokens", "log_every"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        for name in ("warmup_steps", "eval_every", "save_every", "keep_checkpoints"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if not (self.lr > 0 and 0 <= self.min_lr_ratio <= 1):
            raise ValueError(f"lr must be > 0 and min_lr_ratio in [0, 1], got {self.lr}, {self.min_lr_ratio}")
        if not (0 <= self.beta1 < 1 and 0 <= self.beta2 < 1 and self.weight_decay >= 0 and self.grad_clip >= 0):
            raise ValueError("beta1, beta2 must lie in [0, 1); weight_decay and grad_clip must be >= 0")
        sched = self.seq_len_schedule
        if sched and (sched[0][0] != 0 or any(a[0] >= b[0] for a, b in zip(sched, sched[1:]))
                      or any(t <= 0 for _, t in sched)):
            raise ValueError(f"seq_len_schedule must start at step 0 with increasing steps and positive lengths, "
                             f"got {sched}")

    def seq_len_at(self, step: int) -> int:
        length = self.seq_len
        for first, t in self.seq_len_schedule:
            if step >= first:
                length = t
        return length

    def lr_at(self, step: int) -> float:
        """Linear warmup to ``lr``, then cosine decay to ``lr * min_lr_ratio`` at the last step."""
        if step < self.warmup_steps:
            return self.lr * (step + 1) / self.warmup_steps
        span = max(1, self.steps - self.warmup_steps)
        progress = min(1.0, (step - self.warmup_steps) / span)
        return self.lr * (self.min_lr_ratio + (1 - self.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class _LossHead(nn.Module):
    """Wraps a model so DDP sees one module: ``(inputs, labels) -> (summed NLL, labelled tokens)``."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, inputs: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return lm_loss(self.model, inputs, labels)


def model_logits(model: nn.Module, inputs: torch.Tensor) -> torch.Tensor:
    """``[B, T] -> [B, T, V]`` float32 for both the Sequential Attention model and the transformer."""
    out = model(inputs)
    return out[0] if isinstance(out, tuple) else out


def lm_loss(model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    logits = model_logits(model, inputs)
    nll = F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten(), ignore_index=IGNORE_INDEX, reduction="sum")
    return nll, (labels != IGNORE_INDEX).sum()


def _param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Matrices (and the embedding) decay; norms, biases, gains and conv kernels do not."""
    decay, plain = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (decay if p.dim() == 2 else plain).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": plain, "weight_decay": 0.0}]


class SequentialTrainer:
    """Trains ``model`` on ``task`` as ``args`` says; ``train()`` returns the metrics history."""

    def __init__(self, model: nn.Module, args: TrainingArguments, task: Any) -> None:
        if task.metric not in METRICS:
            raise ValueError(f"task metric must be one of {METRICS}, got {task.metric!r}")
        self.args, self.task = args, task
        self.distributed = dist.is_available() and dist.is_initialized()
        self.rank = dist.get_rank() if self.distributed else 0
        self.world_size = dist.get_world_size() if self.distributed else 1
        self.device = self._pick_device(args.device)
        self.model = model.to(self.device)
        self.head: nn.Module = _LossHead(self.model)
        if self.distributed:
            from torch.nn.parallel import DistributedDataParallel

            ids = [self.device.index] if self.device.type == "cuda" else None
            self.head = DistributedDataParallel(self.head, device_ids=ids)
        self.optimizer = torch.optim.AdamW(_param_groups(self.model, args.weight_decay), lr=args.lr,
                                           betas=(args.beta1, args.beta2))
        self.step = 0
        self.tokens_seen = 0
        self.elapsed = 0.0
        self.history: list[dict[str, Any]] = []
        self.evals: list[dict[str, Any]] = []
        self.checkpoint_dir = Path(args.out_dir) / "checkpoints"

    def _pick_device(self, name: str) -> torch.device:
        if name == "auto":
            name = "cuda" if torch.cuda.is_available() else "cpu"
        device = torch.device(name)
        if device.type == "cuda" and device.index is None:
            # torchrun's LOCAL_RANK is the GPU on this host (the global rank is not, across several hosts)
            local = int(os.environ.get("LOCAL_RANK", self.rank))
            index = local % torch.cuda.device_count() if self.distributed else torch.cuda.current_device()
            device = torch.device("cuda", index)
        if device.type == "cuda":
            torch.cuda.set_device(device)
        return device

    def _autocast(self):
        if self.device.type == "cuda" and self.args.bf16:
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    # training -------------------------------------------------------------------------------------------------
    def train_step(self) -> float:
        """One optimizer step (``grad_accum`` micro-batches per process); returns the mean loss per token."""
        a = self.args
        seq_len = a.seq_len_at(self.step)
        lr = a.lr_at(self.step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.head.train()
        total_nll, total_count = 0.0, 0
        for micro in range(a.grad_accum):
            index = (self.step * a.grad_accum + micro) * self.world_size + self.rank
            inputs, labels = self.task.train_batch(index, a.batch_size, seq_len)
            inputs, labels = inputs.to(self.device), labels.to(self.device)
            last = micro == a.grad_accum - 1
            sync = contextlib.nullcontext() if (last or not self.distributed) else self.head.no_sync()
            with sync, self._autocast():
                nll, count = self.head(inputs, labels)
                loss = nll / count.clamp(min=1) / a.grad_accum
            with sync:
                loss.backward()
            total_nll += float(nll.detach())
            total_count += int(count)
            self.tokens_seen += inputs.numel() * self.world_size
        if a.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), a.grad_clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        return total_nll / max(total_count, 1)

    def train(self) -> dict[str, Any]:
        """Run until ``args.steps``; evaluates and checkpoints as configured; writes ``<out>/model`` at the end."""
        a = self.args
        bar = self._progress_bar()
        start, tokens0 = time.perf_counter(), self.tokens_seen
        elapsed0 = self.elapsed
        while self.step < a.steps:
            loss = self.train_step()
            self.elapsed = elapsed0 + time.perf_counter() - start
            tok_s = (self.tokens_seen - tokens0) / max(self.elapsed - elapsed0, 1e-9)
            if self.step % a.log_every == 0 or self.step == a.steps:
                self.history.append({"step": self.step, "loss": loss, "lr": a.lr_at(self.step - 1),
                                     "seq_len": a.seq_len_at(self.step - 1), "tokens": self.tokens_seen,
                                     "elapsed_s": round(self.elapsed, 3)})
            if bar is not None:
                post = {"loss": f"{loss:.3f}", "tok/s": f"{tok_s:,.0f}"}
                if self.task.metric == "bpb":
                    post["bpb"] = f"{loss / math.log(2):.3f}"
                bar.set_postfix(post, refresh=False)
                bar.update(1)
            if a.eval_every and self.step % a.eval_every == 0 and self.step < a.steps:
                self._record_eval()
            if a.save_every and self.step % a.save_every == 0 and self.step < a.steps:
                self.save()
        if bar is not None:
            bar.close()
        result = self._record_eval()
        self.save()
        if self.is_main:
            self.model.save_pretrained(Path(a.out_dir) / "model")
            write_json_atomic(Path(a.out_dir) / "metrics.json", self.summary(), indent=1)
        return result

    def _progress_bar(self):
        if not (self.args.progress and self.is_main):
            return None
        from tqdm.auto import tqdm

        return tqdm(total=self.args.steps, initial=self.step, desc="train", unit="step", dynamic_ncols=True)

    def _record_eval(self) -> dict[str, Any]:
        result = {"step": self.step, "tokens": self.tokens_seen, **self.evaluate()}
        self.evals.append(result)
        if self.args.progress and self.is_main:
            from tqdm.auto import tqdm

            tqdm.write(f"eval @ step {self.step}: " + ", ".join(f"{k} {v:.4f}" for k, v in result.items()
                                                                 if isinstance(v, float)))
        return result

    # evaluation -----------------------------------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self, seq_len: int | None = None) -> dict[str, float]:
        """The task's metric on its evaluation data (every process computes it on the same data)."""
        a = self.args
        seq_len = seq_len or a.seq_len_at(max(self.step - 1, 0))
        was_training = self.model.training
        self.model.eval()
        try:
            return evaluate_model(self.model, self.task, seq_len, a.eval_batch_size, a.eval_tokens, self.device,
                                  self._autocast)
        finally:
            self.model.train(was_training)

    # checkpoints ----------------------------------------------------------------------------------------------
    def summary(self) -> dict[str, Any]:
        return {"step": self.step, "data_position": self.step * self.args.grad_accum * self.world_size,
                "tokens_seen": self.tokens_seen, "elapsed_s": round(self.elapsed, 3), "world_size": self.world_size,
                "args": self.args.to_dict(), "history": self.history, "evals": self.evals,
                "num_parameters": sum(p.numel() for p in self.model.parameters())}

    def save(self) -> Path | None:
        """Write a checkpoint of the current step (main process only; others wait for it)."""
        path = None
        if self.is_main:
            path = checkpointing.save_checkpoint(self.checkpoint_dir, self.step, self.model, self.optimizer,
                                                 self.summary(), self.args.keep_checkpoints)
        if self.distributed:
            dist.barrier()
        return path

    def resume(self) -> bool:
        """Load the newest checkpoint under ``<out>/checkpoints``; False when there is none."""
        path = checkpointing.latest_checkpoint(self.checkpoint_dir)
        if path is None:
            return False
        tensors, state, optim, rng = checkpointing.load_checkpoint(path)
        saved = state["args"]
        for key in ("batch_size", "grad_accum", "seed"):
            if saved[key] != getattr(self.args, key):
                raise ValueError(f"cannot resume {path}: it was trained with {key}={saved[key]}, this run has "
                                 f"{getattr(self.args, key)}; exact resume needs the same batch geometry and seed")
        if state["world_size"] != self.world_size:
            raise ValueError(f"cannot resume {path}: it was trained on {state['world_size']} processes, this run "
                             f"has {self.world_size}; exact resume needs the same number")
        self.model.load_state_dict({k: v.to(self.device) for k, v in tensors.items()})
        self.optimizer.load_state_dict(optim)
        checkpointing.restore_rng(rng)
        self.step, self.tokens_seen, self.elapsed = state["step"], state["tokens_seen"], state["elapsed_s"]
        self.history, self.evals = state["history"], state["evals"]
        return True


@torch.no_grad()
def evaluate_model(model: nn.Module, task: Any, seq_len: int, batch_size: int, max_tokens: int,
                   device: torch.device | str, autocast=contextlib.nullcontext) -> dict[str, float]:
    """``{"loss", "bpb"}`` for text (bpb over byte targets only), ``{"loss", metric}`` for synthetic tasks."""
    nll_sum, count, right, rows_right, examples = 0.0, 0, 0, 0, 0
    for inputs, labels in task.eval_batches(batch_size, seq_len, max_tokens):
        inputs, labels = inputs.to(device), labels.to(device)
        with autocast():
            logits = model_logits(model, inputs)
        if task.metric == "bpb":
            labels = torch.where(labels < 256, labels, torch.full_like(labels, IGNORE_INDEX))
        mask = labels != IGNORE_INDEX
        nll_sum += float(F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten(), ignore_index=IGNORE_INDEX,
                                         reduction="sum"))
        count += int(mask.sum())
        hit = (logits.argmax(-1) == labels) | ~mask                      # [B, T]: right or not scored
        right += int((hit & mask).sum())
        rows_right += int(hit.all(dim=1).sum())
        examples += inputs.shape[0]
    loss = nll_sum / max(count, 1)
    out = {"loss": loss}
    if task.metric == "bpb":
        out["bpb"] = loss / math.log(2)
    elif task.metric == "accuracy":
        out["accuracy"] = right / max(count, 1)
    else:
        out["exact_match"] = rows_right / max(examples, 1)
    return out
