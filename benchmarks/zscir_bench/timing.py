"""Timing one call: warm-up, repetitions until enough samples and enough seconds, percentiles.

Each figure carries its sample count `n`: a p99 over 5 calls is the maximum, and the report says so.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np

MS = 1e3


@dataclass(frozen=True)
class Policy:
    warmup: int = 2  # untimed calls first: lazy allocations, kernel selection, caches
    min_reps: int = 5
    min_seconds: float = 2.0  # keep repeating until this much time was measured...
    max_reps: int = 200  # ...but never more calls than this


QUICK_POLICY = Policy(warmup=1, min_reps=2, min_seconds=0.0, max_reps=2)  # smoke runs and tests


@dataclass
class LatencyStats:
    batch: int
    n: int  # timed calls
    p50_ms: float
    p95_ms: float
    p99_ms: float
    mean_ms: float
    min_ms: float
    items_per_s: float

    def to_dict(self) -> dict:
        return asdict(self)


def summarize(times_s: list[float], batch: int) -> LatencyStats:
    """Percentiles of per-call wall times (seconds in, milliseconds out); items/s = batch / mean."""
    t = np.asarray(times_s, dtype=np.float64) * MS
    p50, p95, p99 = np.percentile(t, [50, 95, 99])
    mean = float(t.mean())
    return LatencyStats(batch, len(t), float(p50), float(p95), float(p99), mean, float(t.min()),
                        batch / (mean / MS))


def measure(fn: Callable[[], object], batch: int, policy: Policy = Policy()) -> LatencyStats:
    """Call `fn` (which processes `batch` items) under `policy` and summarize its wall times."""
    return measure_interleaved({"": fn}, batch, policy)[""]


def measure_interleaved(calls: dict[str, Callable[[], object]], batch: int,
                        policy: Policy = Policy()) -> dict[str, LatencyStats]:
    """Time several calls alternately, one of each per round, so that load changes hit them alike (A/B
    comparisons in one process); each is warmed up first and the rounds stop when every call has its
    `min_reps` calls and `min_seconds`, or at `max_reps` rounds."""
    for fn in calls.values():
        for _ in range(policy.warmup):
            fn()
    times: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(policy.max_reps):
        for name, fn in calls.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
        if all(len(t) >= policy.min_reps and sum(t) >= policy.min_seconds for t in times.values()):
            break
    return {name: summarize(t, batch) for name, t in times.items()}
