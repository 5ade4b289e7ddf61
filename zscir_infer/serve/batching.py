"""Dynamic batching for the server: requests that arrive together run together, on one worker thread.

A `Batcher` owns one worker thread and one function `fn(payloads) -> results` that takes a list of
payloads and returns one result per payload, in order (an exception instance as a result fails that
payload's request alone; an exception raised by `fn` fails the whole batch). `await batcher.submit(payload)` queues the
payload and waits for its result. The worker takes the first payload waiting, then keeps collecting
until it has `max_batch` of them or `max_wait_s` has passed since the first, and calls `fn` once for
all of them. `max_batch=1` is unbatched serving: one call per request, in arrival order.

The wait is for company that can come: with `pending()` given (the requests in flight in the server),
the worker stops waiting as soon as every request in flight is in the batch, so a lone request (one
client, or a quiet moment) never pays `max_wait_s` at each of its stages.

The queue is bounded (`max_queue`): a full queue raises `Overloaded` at once, and the HTTP layer turns
that into 503 with Retry-After, so memory never grows without bound. A request that stopped waiting
(its timeout passed, or the client left) is dropped before its batch runs.

A worker thread is also where thread-bound resources live: the gallery's SQLite connection may only be
used by the thread that opened it, so the gallery's batcher opens it in `on_start` on its own thread.
"""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

_STOP = object()


class Overloaded(RuntimeError):
    """The batcher's queue is full: the caller should answer 503 and ask the client to retry."""


@dataclass
class _Job:
    payload: Any
    future: asyncio.Future
    loop: asyncio.AbstractEventLoop


def _settle(future: asyncio.Future, result: Any, error: BaseException | None) -> None:
    if future.done():  # the request timed out or its client went away
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)


class Batcher:
    """One graph (or the gallery) behind a queue; see the module doc."""

    def __init__(
        self,
        name: str,
        fn: Callable[[list[Any]], Sequence[Any]],
        *,
        max_batch: int,
        max_wait_s: float,
        max_queue: int,
        on_batch: Callable[[str, int, float], None] | None = None,
        on_start: Callable[[], None] | None = None,
        on_stop: Callable[[], None] | None = None,
        pending: Callable[[], int] | None = None,
    ):
        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, got {max_batch}.")
        self.name, self.fn = name, fn
        self.max_batch, self.max_wait_s = max_batch, max(0.0, max_wait_s)
        self._queue: queue.Queue = queue.Queue(maxsize=max_queue)
        self._on_batch, self._on_start, self._on_stop = on_batch, on_start, on_stop
        self._pending = pending
        self._started = threading.Event()
        self._start_error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name=f"zscir-batcher-{name}", daemon=True)
        self._thread.start()
        self._started.wait()
        if self._start_error is not None:
            self._thread.join()
            raise self._start_error

    @property
    def depth(self) -> int:
        """Payloads waiting (not counting the batch running now)."""
        return self._queue.qsize()

    async def submit(self, payload: Any) -> Any:
        loop = asyncio.get_running_loop()
        job = _Job(payload, loop.create_future(), loop)
        try:
            self._queue.put_nowait(job)
        except queue.Full:
            raise Overloaded(f"the {self.name} queue is full ({self._queue.maxsize} waiting)") from None
        return await job.future

    def close(self, timeout: float | None = 30.0) -> None:
        """Finish what is queued, then stop the thread."""
        if self._thread.is_alive():
            self._queue.put(_STOP)
            self._thread.join(timeout)

    # --- the worker thread -----------------------------------------------------------------------------------
    def _run(self) -> None:
        try:
            if self._on_start is not None:
                self._on_start()
        except BaseException as exc:  # reported to the constructor, which raises it
            self._start_error = exc
            self._started.set()
            return
        self._started.set()
        try:
            while (batch := self._collect()) is not None:
                self._run_batch(batch)
        finally:
            if self._on_stop is not None:
                self._on_stop()

    def _collect(self) -> list[_Job] | None:
        first = self._queue.get()
        if first is _STOP:
            return None
        batch, deadline = [first], time.monotonic() + self.max_wait_s
        while len(batch) < self.max_batch:
            try:
                remaining = deadline - time.monotonic()
                if self._pending is not None and self._pending() <= len(batch):
                    remaining = 0  # nobody else in flight: take what is queued, wait for no one
                job = self._queue.get(timeout=remaining) if remaining > 0 else self._queue.get_nowait()
            except queue.Empty:
                break
            if job is _STOP:
                self._queue.put(_STOP)  # stop after this batch
                break
            batch.append(job)
        return batch

    def _run_batch(self, batch: list[_Job]) -> None:
        live = [job for job in batch if not job.future.done()]
        if not live:
            return
        start = time.perf_counter()
        try:
            results = self.fn([job.payload for job in live])
            if len(results) != len(live):
                raise RuntimeError(f"batcher {self.name}: {len(results)} results for {len(live)} payloads")
            outcomes = [(None, r) if isinstance(r, BaseException) else (r, None) for r in results]
        except BaseException as exc:  # every waiting request gets the error; the thread lives on
            outcomes = [(None, exc)] * len(live)
        if self._on_batch is not None:
            self._on_batch(self.name, len(live), time.perf_counter() - start)
        for job, (result, error) in zip(live, outcomes, strict=True):
            job.loop.call_soon_threadsafe(_settle, job.future, result, error)
