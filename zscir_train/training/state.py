"""Random streams and the resumable training state (`train_state.pt` in the run directory).

Randomness. Data order and per-sample randomness (LinCIR's noise, crops) come from generators keyed by
(seed, step or stream position) via `derived_seed`, so one process and N processes see the same data.
Only dropout uses the per-rank global RNGs (python, numpy, torch), seeded by `seed_rank`.

State. `save_state` writes everything `--resume` needs, atomically, from rank 0: trainable weights,
optimizer, scheduler, grad scaler, step, best validation score, the run's config and the RNG states of
every rank. `load_state` reads it back with a weights-only load (the file cannot run code).
"""

from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from rich.console import Console

from zscir_infer.atomic import atomic_path
from zscir_train.training.config import ConfigError, LoopConfig
from zscir_train.training.distributed import Dist, gather_objects

STATE_FILE = "train_state.pt"
STATE_FORMAT = "zscir-train-state"
STATE_VERSION = 1
RESUME_MUST_MATCH = ("model", "pretrained", "batch_size", "seed")  # they change the data or the weights
ORDER_STREAM = 0x0D0E  # first entropy words of the generators, one per purpose
RANK_STREAM = 0x5EED
AUGMENT_STREAM = 0xA06


def derived_seed(*keys: int) -> int:
    """A 63-bit seed from integer keys (numpy SeedSequence: well mixed, platform independent)."""
    return int(np.random.SeedSequence([int(k) for k in keys]).generate_state(1, dtype=np.uint64)[0] >> 1)


def seed_rank(seed: int, rank: int, step: int) -> None:
    """Per-rank RNG streams (dropout differs between ranks, as in any data-parallel run)."""
    s = derived_seed(RANK_STREAM, seed, rank, step)
    random.seed(s)
    np.random.seed(s % 2**32)
    torch.manual_seed(s)


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


class Trainable(Protocol):
    """What a training state holds of a task: the tensors it trains."""

    def trainable_state(self) -> dict[str, torch.Tensor]: ...
    def load_trainable_state(self, state: dict[str, torch.Tensor]) -> None: ...


@dataclass
class Optimization:
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    scaler: torch.amp.GradScaler


def save_state(path: Path, task: Trainable, opt: Optimization, step: int, best: dict, cfg: LoopConfig,
               d: Dist) -> None:
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


def load_state(path: Path, task: Trainable, opt: Optimization, cfg: LoopConfig, d: Dist,
               console: Console) -> tuple[int, dict]:
    """Restore a saved run; returns (step, best). Weights-only load: the file cannot run code."""
    if not path.is_file():
        raise ConfigError(f"--resume: no training state {path}; start without --resume or point --run-dir at the run.")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if state.get("format") != STATE_FORMAT:
        raise ConfigError(f"{path} is not a zscir training state.")
    saved = state["config"]
    for key in RESUME_MUST_MATCH:
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
