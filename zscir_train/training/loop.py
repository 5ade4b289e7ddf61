"""The training loop shared by LinCIR, Pic2Word and TAT: DDP, data order, AMP, checkpoints, resume,
validation, progress bar and JSONL log.

Reads top to bottom in `run`: micro-batches, forward, loss, backward (gradients synced on the last
micro-batch only), optimizer and scheduler step, log, validate (rank 0; the best artifact is kept),
checkpoint. A method supplies a `Task`: the trainable module, its parameter groups, a dataset, the loss
of a micro-batch, a reference encoder for validation, and how to save its artifact.

Determinism: the order of samples depends only on (seed, step), not on the number of ranks; step s
uses stream positions [s*B, (s+1)*B) of a concatenation of seeded epoch permutations, B the global
batch. Rank r takes, for micro-batch m, the slice starting at (m * world + r) * micro. Per-sample
randomness (LinCIR's noise, crops) is drawn from generators keyed by (seed, step or position), so one
process and N processes see the same data; only dropout uses the per-rank global torch RNG, whose
state is checkpointed per rank. `--resume` restores trainable weights, optimizer, scheduler, grad
scaler, step, best validation score and the python/numpy/torch RNG states of every rank.
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import time
from collections.abc import Iterator
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field, fields
from datetime import timedelta
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

PRESET_DIR = Path(__file__).parent / "presets"
STATE_FILE = "train_state.pt"
LOG_FILE = "log.jsonl"
STATE_FORMAT = "zscir-train-state"
STATE_VERSION = 1
DIST_TIMEOUT = timedelta(minutes=60)  # rank 0 validates while the others wait at a barrier
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
SCHEDULES = ("constant", "cosine")
ORDER_STREAM = 0x0D0E  # first entropy words of the generators, one per purpose
RANK_STREAM = 0x5EED
AUGMENT_STREAM = 0xA06


class ConfigError(ValueError):
    """A training option is invalid; the message names it and what to change."""


@dataclass
class LoopConfig:
    """Options every method shares. `batch_size` is the global batch of one optimizer step."""

    model: str = "zscir-tiny"
    pretrained: str | None = None
    out: str = "phi.safetensors"
    run_dir: str | None = None  # default: <out without suffix>-run next to --out
    steps: int = 1000
    batch_size: int = 512
    grad_accum: int = 1
    lr: float = 1e-4
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    schedule: str = "constant"
    warmup_steps: int = 0
    precision: str = "auto"  # auto: bf16 autocast on CUDA, fp32 on CPU
    seed: int = 0
    log_every: int = 10
    checkpoint_every: int = 500
    val_every: int = 0  # 0: no validation (the last weights are the artifact)
    val_world: str | None = None  # a shapes world: its cirr/ and circo/ val splits
    val_cirr: str | None = None
    val_circo: str | None = None
    val_metric: str | None = None  # e.g. "cirr/R@1" (LinCIR's choice); default: the first set's headline
    val_batch_size: int = 64
    num_workers: int = 0
    threads: int | None = None  # torch CPU threads per process
    resume: bool = False
    progress: bool = True
    preset: str | None = None  # recorded, not read: presets are applied by `resolve_config`

    def __post_init__(self):
        self.betas = tuple(self.betas)
        if self.precision not in PRECISIONS:
            raise ConfigError(f"precision '{self.precision}' is not one of {PRECISIONS}.")
        if self.schedule not in SCHEDULES:
            raise ConfigError(f"schedule '{self.schedule}' is not one of {SCHEDULES}.")
        for name in ("steps", "batch_size", "grad_accum", "log_every", "checkpoint_every"):
            if getattr(self, name) < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}.")

    @property
    def run_path(self) -> Path:
        out = Path(self.out)
        return Path(self.run_dir) if self.run_dir else out.with_name(out.name.split(".")[0] + "-run")


def list_presets() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.json"))


def load_preset(name: str) -> dict:
    """A preset by name (presets/NAME.json) or path: {"method", "description", "config": {...}}."""
    path = Path(name) if name.endswith(".json") else PRESET_DIR / f"{name}.json"
    if not path.is_file():
        raise ConfigError(f"Unknown preset '{name}': use a path to a JSON file or one of {list_presets()}.")
    return json.loads(path.read_text())


def resolve_config(cls, method: str, preset: str | None, overrides: dict):
    """cls(...) from its defaults, then the preset's values, then the options given (None = not given)."""
    values = {}
    if preset is not None:
        data = load_preset(preset)
        if data.get("method") != method:
            raise ConfigError(f"Preset '{preset}' is for '{data.get('method')}', not '{method}'.")
        values.update(data["config"])
        values["preset"] = preset
    values.update({k: v for k, v in overrides.items() if v is not None})
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(f"Unknown {method} option(s) {unknown} (from preset '{preset}').")
    return cls(**values)


@dataclass
class Dist:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world_size > 1:
            dist.barrier()


def setup_distributed() -> Dist:
    """Rank and device from torchrun's environment; NCCL on GPU, gloo on CPU."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    cuda = torch.cuda.is_available()
    device = torch.device("cuda", local_rank) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo", timeout=DIST_TIMEOUT)
    return Dist(rank, world_size, local_rank, device)


def main_first(d: Dist, build):
    """Run `build` on rank 0 first (it fills caches), then on the other ranks (they read them)."""
    if d.is_main:
        result = build()
        d.barrier()
        return result
    d.barrier()
    return build()


def derived_seed(*keys: int) -> int:
    """A 63-bit seed from integer keys (numpy SeedSequence: well mixed, platform independent)."""
    return int(np.random.SeedSequence([int(k) for k in keys]).generate_state(1, dtype=np.uint64)[0] >> 1)


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


class Task(Protocol):
    module: nn.Module  # what is trained (wrapped in DDP when world_size > 1)
    dataset: object  # __len__, __getitem__ or __getitems__ over (index, position), and `collate`

    def param_groups(self) -> list[dict]: ...
    def train_mode(self) -> None: ...
    def loss(self, model: nn.Module, batch, micro: MicroBatch) -> torch.Tensor: ...
    def validate(self, validator) -> dict[str, float]: ...
    def trainable_state(self) -> dict[str, torch.Tensor]: ...
    def load_trainable_state(self, state: dict[str, torch.Tensor]) -> None: ...
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


def rng_state() -> dict:
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"python": random.getstate(), "numpy": (name, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached),
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def seed_rank(seed: int, rank: int, step: int) -> None:
    """Per-rank RNG streams (dropout differs between ranks, as in any data-parallel run)."""
    s = derived_seed(RANK_STREAM, seed, rank, step)
    random.seed(s)
    np.random.seed(s % 2**32)
    torch.manual_seed(s)


def gather_objects(obj, d: Dist) -> list:
    if d.world_size == 1:
        return [obj]
    out = [None] * d.world_size
    dist.all_gather_object(out, obj)
    return out


@dataclass
class Optimization:
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    scaler: torch.amp.GradScaler


def save_state(path: Path, task: Task, opt: Optimization, step: int, best: dict, cfg: LoopConfig, d: Dist) -> None:
    """Everything `--resume` needs, written atomically by rank 0 (RNG states gathered from every rank)."""
    rngs = gather_objects(rng_state(), d)
    if not d.is_main:
        return
    state = {"format": STATE_FORMAT, "version": STATE_VERSION, "step": step, "world_size": d.world_size,
             "trainable": task.trainable_state(), "optimizer": opt.optimizer.state_dict(),
             "scheduler": opt.scheduler.state_dict(), "scaler": opt.scaler.state_dict(), "rng": rngs,
             "best": best, "config": json.loads(json.dumps(asdict(cfg)))}
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_state(path: Path, task: Task, opt: Optimization, cfg: LoopConfig, d: Dist, console: Console) -> tuple[int, dict]:
    """Restore a saved run; returns (step, best). Weights-only load: the file cannot run code."""
    if not path.is_file():
        raise ConfigError(f"--resume: no training state {path}; start without --resume or point --run-dir at the run.")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if state.get("format") != STATE_FORMAT:
        raise ConfigError(f"{path} is not a zscir training state.")
    saved = state["config"]
    for key in ("model", "pretrained", "batch_size", "seed"):
        if saved.get(key) != getattr(cfg, key):
            raise ConfigError(f"--resume: {key} was {saved.get(key)!r} in {path}, now {getattr(cfg, key)!r}; "
                              "resume with the same setting or start a new --run-dir.")
    task.load_trainable_state(state["trainable"])
    opt.optimizer.load_state_dict(state["optimizer"])
    opt.scheduler.load_state_dict(state["scheduler"])
    opt.scaler.load_state_dict(state["scaler"])
    if state["world_size"] == d.world_size:
        set_rng_state(state["rng"][d.rank])
    else:
        seed_rank(cfg.seed, d.rank, state["step"])
        if d.is_main:
            console.print(f"[yellow]Resuming with {d.world_size} ranks, saved with {state['world_size']}: data order "
                          "is unchanged, dropout streams are reseeded.[/yellow]")
    return int(state["step"]), dict(state["best"])


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
        task.save(cfg.run_path / "best.safetensors", {"config": asdict(cfg), "step": step, "best": best})
    return best


def run(task: Task, cfg: LoopConfig, d: Dist, validator=None, console: Console | None = None) -> dict:
    """Train `task` for cfg.steps optimizer steps; returns a summary. Rank 0 writes every file."""
    console = console or Console(stderr=True)
    micro = cfg.batch_size // (cfg.grad_accum * d.world_size)
    model = task.module
    if d.world_size > 1:
        model = nn.parallel.DistributedDataParallel(model, device_ids=[d.device.index] if d.device.type == "cuda" else None)
    optimizer = torch.optim.AdamW(task.param_groups(), lr=cfg.lr, betas=cfg.betas, eps=cfg.eps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, cfg.schedule, cfg.warmup_steps, cfg.steps))
    autocast, precision = autocast_for(cfg, d.device)
    opt = Optimization(optimizer, scheduler, torch.amp.GradScaler(d.device.type, enabled=precision == "fp16"))
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
               "precision": precision, "micro_batch": micro, "samples": len(task.dataset), "config": asdict(cfg)})
    train_seconds, rate, loss_text = 0.0, 0.0, "-"
    with progress_bar(cfg, d, console) as progress:
        bar = progress.add_task(task.name, total=cfg.steps, completed=start, loss="-", rate="-")
        for step in range(start, cfg.steps):
            started = time.perf_counter()
            task.train_mode()
            loss_sum = torch.zeros((), device=d.device)
            for m in range(cfg.grad_accum):
                batch = next(loader)
                last = m == cfg.grad_accum - 1
                with model.no_sync() if d.world_size > 1 and not last else nullcontext():
                    with autocast():
                        loss = task.loss(model, batch, MicroBatch(step, (m * d.world_size + d.rank) * micro, micro,
                                                                  cfg.batch_size))
                    opt.scaler.scale(loss / cfg.grad_accum).backward()
                loss_sum += loss.detach().float()
            opt.scaler.step(optimizer)
            opt.scaler.update()
            optimizer.zero_grad(set_to_none=True)
            scheduler.step()
            done = step + 1
            if done % cfg.log_every == 0 or done == cfg.steps:
                mean_loss = loss_sum / cfg.grad_accum
                if d.world_size > 1:
                    dist.all_reduce(mean_loss)
                    mean_loss /= d.world_size
                loss_text = f"{mean_loss.item():.4f}"
            train_seconds += time.perf_counter() - started
            rate = (done - start) * cfg.batch_size / train_seconds
            if done % cfg.log_every == 0 or done == cfg.steps:
                log.write({"event": "train", "step": done, "loss": float(loss_text), "lr": scheduler.get_last_lr()[0],
                           "samples_per_s": round(rate, 2), "train_seconds": round(train_seconds, 2)})
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
        last = cfg.run_path / "last.safetensors"
        task.save(last, {"config": asdict(cfg), "step": cfg.steps, **summary})
        source = cfg.run_path / "best.safetensors" if best else last
        with atomic_path(cfg.out) as tmp:
            shutil.copyfile(source, tmp)
        log.write({"event": "end", "out": str(cfg.out), "from": source.name, **summary})
    log.close()
    d.barrier()
    return summary
