"""The training loop shared by LinCIR, Pic2Word and TAT: data order, AMP, DDP, validation, checkpoints.

Reads top to bottom in `run`: micro-batches, forward, loss, backward (gradients synced on the last
micro-batch only), optimizer and scheduler step, log, validate (rank 0; the best artifact is kept),
checkpoint. A method supplies a `Task`: the trainable module, its parameter groups, a dataset, the loss
of a micro-batch, its validation, and how to save its artifact. Options and presets are in `config`,
ranks and devices in `distributed`, random streams and the resumable state in `state`.

Determinism: the order of samples depends only on (seed, step), not on the number of ranks; step s
uses stream positions [s*B, (s+1)*B) of a concatenation of seeded epoch permutations, B the global
batch. Rank r takes, for micro-batch m, the slice starting at (m * world + r) * micro. Per-sample
randomness is keyed by (seed, step or position) (see `state`), so one process and N processes see the
same data; only dropout uses the per-rank global torch RNG, whose state is checkpointed per rank.
`--resume` restores trainable weights, optimizer, scheduler, grad scaler, step, best validation score
and the python/numpy/torch RNG states of every rank.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from collections.abc import Iterator
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
import torch.distributed as dist
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from torch import nn

from zscir_infer.atomic import atomic_path
from zscir_train.training.config import ConfigError, LoopConfig
from zscir_train.training.distributed import Dist, setup_distributed
from zscir_train.training.state import (
    ORDER_STREAM,
    STATE_FILE,
    Optimization,
    Trainable,
    load_state,
    save_state,
    seed_rank,
)

LOG_FILE = "log.jsonl"
BEST_FILE = "best.safetensors"
LAST_FILE = "last.safetensors"


class GlobalOrder:
    """Sample indices of each step's global batch: seeded epoch permutations, concatenated."""

    def __init__(self, num_samples: int, global_batch: int, seed: int):
        self.n, self.batch, self.seed = num_samples, global_batch, seed
        self._perms: dict[int, np.ndarray] = {}

    def _perm(self, epoch: int) -> np.ndarray:
        if epoch not in self._perms:
            self._perms = {e: p for e, p in self._perms.items() if e >= epoch - 1}
            self._perms[epoch] = np.random.default_rng([ORDER_STREAM, self.seed, epoch]).permutation(self.n)
        return self._perms[epoch]

    def step_positions(self, step: int) -> np.ndarray:
        return np.arange(step * self.batch, (step + 1) * self.batch, dtype=np.int64)

    def step_indices(self, step: int) -> np.ndarray:  # [B]
        positions = self.step_positions(step)
        epochs, offsets = np.divmod(positions, self.n)
        out = np.empty_like(positions)
        for epoch in np.unique(epochs):
            rows = epochs == epoch
            out[rows] = self._perm(int(epoch))[offsets[rows]]
        return out


@dataclass(frozen=True)
class MicroBatch:
    step: int
    offset: int  # first position of this micro-batch within the global batch
    size: int
    global_batch: int


def micro_batches(order: GlobalOrder, start: int, steps: int, accum: int, d: Dist) -> Iterator[list[tuple[int, int]]]:
    """This rank's micro-batches from step `start` on: lists of (sample index, stream position)."""
    micro = order.batch // (accum * d.world_size)
    for step in range(start, steps):
        indices, positions = order.step_indices(step), order.step_positions(step)
        for m in range(accum):
            s = (m * d.world_size + d.rank) * micro
            yield list(zip(indices[s:s + micro].tolist(), positions[s:s + micro].tolist(), strict=True))


class Task(Trainable, Protocol):
    name: str  # the method, shown on the progress bar
    module: nn.Module  # what is trained (wrapped in DDP when world_size > 1)
    dataset: object  # __len__, __getitem__ or __getitems__ over (index, position), and `collate`

    def param_groups(self) -> list[dict]: ...
    def train_mode(self) -> None: ...
    def loss(self, model: nn.Module, batch, micro: MicroBatch) -> torch.Tensor: ...
    def validate(self, validator) -> dict[str, float]: ...
    def save(self, path: Path, training: dict) -> None: ...


def lr_factor(step: int, schedule: str, warmup: int, total: int) -> float:
    """Linear warmup over `warmup` steps, then constant or cosine to 0 at `total` (Pic2Word's cosine_lr)."""
    if step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    return 0.5 * (1.0 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


def decay_groups(module: nn.Module, weight_decay: float, exempt_1d: bool) -> list[dict]:
    """AdamW groups; with exempt_1d, biases, norms and scalars get no weight decay (open_clip's rule)."""
    decay, no_decay = [], []
    for _, p in module.named_parameters():
        if p.requires_grad:
            (no_decay if exempt_1d and p.ndim < 2 else decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}]
    return groups + ([{"params": no_decay, "weight_decay": 0.0}] if no_decay else [])


def autocast_for(cfg: LoopConfig, device: torch.device):
    precision = cfg.precision
    if precision == "auto":
        precision = "bf16" if device.type == "cuda" else "fp32"
    if precision == "fp32":
        return nullcontext, precision
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return (lambda: torch.autocast(device.type, dtype=dtype)), precision


class JsonlLog:
    """Append-only metrics log (one JSON object per line), flushed every record."""

    def __init__(self, path: Path | None):
        self.file = open(path, "a", encoding="utf-8") if path is not None else None

    def write(self, record: dict) -> None:
        if self.file is not None:
            self.file.write(json.dumps(record) + "\n")
            self.file.flush()

    def close(self) -> None:
        if self.file is not None:
            self.file.close()


def progress_bar(cfg: LoopConfig, d: Dist, console: Console) -> Progress:
    columns = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("loss {task.fields[loss]}"), TextColumn("{task.fields[rate]} samples/s"),
               TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn())
    return Progress(*columns, console=console, disable=not (cfg.progress and d.is_main))


def prepare_run(cfg: LoopConfig) -> Dist:
    """Distributed setup, threads, the run directory, and the seed of the weights' initialisation."""
    d = setup_distributed()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    per_step = cfg.grad_accum * d.world_size
    if cfg.batch_size % per_step:
        raise ConfigError(f"--batch-size {cfg.batch_size} (global) is not divisible by grad_accum x ranks = "
                          f"{cfg.grad_accum} x {d.world_size}; pick a multiple of {per_step}.")
    state = cfg.run_path / STATE_FILE
    if state.exists() and not cfg.resume:
        raise ConfigError(f"{cfg.run_path} already holds a run ({STATE_FILE}): pass --resume to continue it, or "
                          "choose another --run-dir (or --out).")
    if d.is_main:
        cfg.run_path.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)  # the same initial weights on every rank
    return d


def make_loader(task: Task, order: GlobalOrder, start: int, cfg: LoopConfig, d: Dist) -> Iterator:
    from torch.utils.data import DataLoader

    batches = micro_batches(order, start, cfg.steps, cfg.grad_accum, d)
    # a private generator: creating the iterator must not draw from the checkpointed global RNG
    loader = DataLoader(task.dataset, batch_sampler=batches, num_workers=cfg.num_workers,
                        collate_fn=task.dataset.collate, generator=torch.Generator(),
                        pin_memory=d.device.type == "cuda")
    return iter(loader)


def _validate(task: Task, validator, cfg: LoopConfig, step: int, best: dict, log: JsonlLog,
              console: Console) -> dict:
    """Score the current weights; keep the artifact when the selection metric improves."""
    started = time.perf_counter()
    metrics = task.validate(validator)
    metric = cfg.val_metric or validator.default_metric
    if metric not in metrics:
        raise ConfigError(f"--val-metric '{metric}' is not among the validation metrics {sorted(metrics)}.")
    improved = metrics[metric] > best.get("value", -math.inf)
    log.write({"event": "val", "step": step, "metric": metric, "value": metrics[metric], "metrics": metrics,
               "best": improved, "seconds": round(time.perf_counter() - started, 2)})
    console.print(f"step {step}: {metric} = {metrics[metric]:.2f}" + (" (best)" if improved else ""))
    if improved:
        best = {"step": step, "metric": metric, "value": metrics[metric], "metrics": metrics}
        task.save(cfg.run_path / BEST_FILE, {"config": asdict(cfg), "step": step, "best": best})
    return best


def make_optimization(task: Task, cfg: LoopConfig, device: torch.device) -> tuple[Optimization, object, str]:
    """AdamW over the task's groups, the lr schedule, the grad scaler (fp16 only), and the autocast."""
    optimizer = torch.optim.AdamW(task.param_groups(), lr=cfg.lr, betas=cfg.betas, eps=cfg.eps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, cfg.schedule, cfg.warmup_steps, cfg.steps))
    autocast, precision = autocast_for(cfg, device)
    opt = Optimization(optimizer, scheduler, torch.amp.GradScaler(device.type, enabled=precision == "fp16"))
    return opt, autocast, precision


def train_step(task: Task, model: nn.Module, loader: Iterator, opt: Optimization, autocast, step: int,
               cfg: LoopConfig, d: Dist) -> torch.Tensor:
    """One optimizer step over cfg.grad_accum micro-batches; returns this rank's summed loss (a tensor)."""
    micro = cfg.batch_size // (cfg.grad_accum * d.world_size)
    task.train_mode()
    loss_sum = torch.zeros((), device=d.device)
    for m in range(cfg.grad_accum):
        batch = next(loader)
        last = m == cfg.grad_accum - 1
        with model.no_sync() if d.world_size > 1 and not last else nullcontext():  # sync on the last only
            with autocast():
                loss = task.loss(model, batch, MicroBatch(step, (m * d.world_size + d.rank) * micro, micro,
                                                          cfg.batch_size))
            opt.scaler.scale(loss / cfg.grad_accum).backward()
        loss_sum += loss.detach().float()
    opt.scaler.step(opt.optimizer)
    opt.scaler.update()
    opt.optimizer.zero_grad(set_to_none=True)
    opt.scheduler.step()
    return loss_sum


def mean_loss(loss_sum: torch.Tensor, cfg: LoopConfig, d: Dist) -> float:
    """The step's loss averaged over micro-batches and ranks (a collective: every rank calls it)."""
    mean = loss_sum / cfg.grad_accum
    if d.world_size > 1:
        dist.all_reduce(mean)
        mean /= d.world_size
    return mean.item()


def write_artifact(task: Task, cfg: LoopConfig, summary: dict) -> Path:
    """last.safetensors, then cfg.out = a copy of the best validated artifact, else of the last."""
    last = cfg.run_path / LAST_FILE
    task.save(last, {"config": asdict(cfg), "step": cfg.steps, **summary})
    source = cfg.run_path / BEST_FILE if summary["best"] else last
    with atomic_path(cfg.out) as tmp:
        shutil.copyfile(source, tmp)
    return source


def run(task: Task, cfg: LoopConfig, d: Dist, validator=None, console: Console | None = None) -> dict:
    """Train `task` for cfg.steps optimizer steps; returns a summary. Rank 0 writes every file."""
    console = console or Console(stderr=True)
    model = task.module
    if d.world_size > 1:
        model = nn.parallel.DistributedDataParallel(model, device_ids=[d.device.index] if d.device.type == "cuda" else None)
    opt, autocast, precision = make_optimization(task, cfg, d.device)
    if d.is_main and cfg.warmup_steps >= cfg.steps:
        console.print(f"[yellow]--warmup-steps {cfg.warmup_steps} >= --steps {cfg.steps}: the learning rate never "
                      "reaches its peak.[/yellow]")
    start, best = 0, {}
    if cfg.resume:
        start, best = load_state(cfg.run_path / STATE_FILE, task, opt, cfg, d, console)
    else:
        seed_rank(cfg.seed, d.rank, 0)
    loader = make_loader(task, GlobalOrder(len(task.dataset), cfg.batch_size, cfg.seed), start, cfg, d)
    log = JsonlLog(cfg.run_path / LOG_FILE if d.is_main else None)
    log.write({"event": "start", "step": start, "world_size": d.world_size, "device": str(d.device),
               "precision": precision, "micro_batch": cfg.batch_size // (cfg.grad_accum * d.world_size),
               "samples": len(task.dataset), "config": asdict(cfg)})
    train_seconds, rate, loss_text = 0.0, 0.0, "-"
    with progress_bar(cfg, d, console) as progress:
        bar = progress.add_task(task.name, total=cfg.steps, completed=start, loss="-", rate="-")
        for step in range(start, cfg.steps):
            started = time.perf_counter()
            loss_sum = train_step(task, model, loader, opt, autocast, step, cfg, d)
            done = step + 1
            logged = done % cfg.log_every == 0 or done == cfg.steps
            if logged:
                loss_text = f"{mean_loss(loss_sum, cfg, d):.4f}"
            train_seconds += time.perf_counter() - started
            rate = (done - start) * cfg.batch_size / train_seconds
            if logged:
                log.write({"event": "train", "step": done, "loss": float(loss_text),
                           "lr": opt.scheduler.get_last_lr()[0], "samples_per_s": round(rate, 2),
                           "train_seconds": round(train_seconds, 2)})
            progress.update(bar, completed=done, loss=loss_text, rate=f"{rate:.1f}")
            if cfg.val_every and (done % cfg.val_every == 0 or done == cfg.steps):
                if validator is not None:
                    best = _validate(task, validator, cfg, done, best, log, console)
                d.barrier()
            if done % cfg.checkpoint_every == 0 or done == cfg.steps:
                save_state(cfg.run_path / STATE_FILE, task, opt, done, best, cfg, d)
    summary = {"steps": cfg.steps, "resumed_from": start, "world_size": d.world_size, "precision": precision,
               "samples_per_s": round(rate, 2), "train_seconds": round(train_seconds, 2), "best": best}
    if d.is_main:
        source = write_artifact(task, cfg, summary)
        log.write({"event": "end", "out": str(cfg.out), "from": source.name, **summary})
    log.close()
    d.barrier()
    return summary
