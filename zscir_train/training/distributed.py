"""Where this process runs: rank and device from torchrun's environment (NCCL on GPU, gloo on CPU).

One process without torchrun is rank 0 of 1; nothing here initializes a process group then.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TypeVar

import torch
import torch.distributed as dist

DIST_TIMEOUT = timedelta(minutes=60)  # rank 0 validates while the others wait at a barrier

T = TypeVar("T")


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


def main_first(d: Dist, build: Callable[[], T]) -> T:
    """Run `build` on rank 0 first (it fills caches), then on the other ranks (they read them)."""
    if d.is_main:
        result = build()
        d.barrier()
        return result
    d.barrier()
    return build()


def gather_objects(obj, d: Dist) -> list:
    """`obj` of every rank, in rank order (picklable objects; a list of one without a process group)."""
    if d.world_size == 1:
        return [obj]
    out = [None] * d.world_size
    dist.all_gather_object(out, obj)
    return out
