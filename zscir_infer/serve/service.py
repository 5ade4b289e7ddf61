"""What the HTTP layer calls: a loaded bundle and gallery, their batchers, and hot reload.

A `Generation` is one loaded bundle (a `Runtime` and one `Batcher` per graph) plus a gallery worker
(a `Batcher` whose thread owns the `Gallery`: SQLite connections are bound to the thread that opened
them). Requests enter a generation with `Service.use()` and leave it when answered; `reload` builds
a new generation, swaps it in for new requests, and closes the old one once its last request left, so
no request is dropped. A writable gallery holds the directory's writer lock: a reload that keeps the
same writable gallery keeps its worker instead of opening it twice.

Every composed query runs the same steps as `Runtime.encode_queries` (the same graphs, the same
prompt filling and the same composition functions), one request per row of a batch; so the server's
results equal `zscir-infer query`'s (tested, <= 1e-6 on scores).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from zscir_infer.contract import (
    IMAGE,
    IMAGE_ENCODER,
    IMAGE_FEATURES,
    PHI,
    QUERY_ENCODER,
    TEXT,
    TEXT_ENCODER,
    TOKEN_IDS,
    fill_template,
)
from zscir_infer.errors import InputError, ZscirError
from zscir_infer.gallery import Gallery, GalleryError, GalleryItem
from zscir_infer.preprocess import DEFAULT_MAX_PIXELS, load_and_preprocess
from zscir_infer.runtime import Runtime
from zscir_infer.search import index_device_for
from zscir_infer.serve.batching import Batcher
from zscir_infer.serve.metrics import Metrics

DUPLICATE_COS = 1 - 1e-5  # an uploaded reference "is" a gallery item when their image vectors agree this well
DUPLICATE_PROBE = 16  # gallery items compared with an uploaded reference for exclude_ref
MAX_SHOWN_TEXT = 60


@dataclass
class ServeConfig:
    bundle: Path
    gallery: Path
    backend: str = "ort"
    device: str = "cpu"
    precision: str = "fp32"
    threads: int | None = None
    max_batch: int = 32  # 1 = unbatched serving
    max_wait_ms: float = 5.0
    max_queue: int = 256  # requests waiting per stage before 503
    request_timeout_s: float = 30.0
    max_upload_bytes: int = 20 << 20
    max_image_pixels: int = 40_000_000
    max_k: int = 1000
    max_items: int = 256  # texts, images or queries in one /v1/embeddings request
    writable: bool = False  # POST /v1/gallery/images (holds the gallery's writer lock)
    token: str | None = None  # bearer token for /admin and the write endpoints
    examples: Path | None = None  # a query batch file (reference, text, targets) the page offers

    def __post_init__(self) -> None:
        self.bundle, self.gallery = Path(self.bundle), Path(self.gallery)
        if self.max_batch < 1:
            raise InputError(f"--max-batch must be at least 1, got {self.max_batch}.")
        if self.max_image_pixels > DEFAULT_MAX_PIXELS:
            raise InputError(f"--max-image-pixels above {DEFAULT_MAX_PIXELS:,} (Pillow's own limit) is refused.")


# --- what the gallery worker does ------------------------------------------------------------------------------
@dataclass
class Search:
    vector: np.ndarray  # [D] unit query
    k: int
    filter: str | None = None
    exclude_name: str | None = None  # a gallery reference: leave out the items of its file, as the CLI does
    exclude_like: np.ndarray | None = None  # an uploaded reference: its unit image vector


@dataclass
class Lookup:
    names: list[str]


@dataclass
class Listing:
    offset: int
    limit: int
    prefix: str = ""


@dataclass
class Add:
    names: list[str]
    paths: list[str]
    vectors: np.ndarray  # [B, D] unit


@dataclass
class Hit:
    rank: int
    score: float
    id: int
    name: str


class GalleryWorker:
    """The gallery, owned by one thread; searches that arrive together are grouped by (k, filter)."""

    def __init__(self, root: Path, bundle_id: str, config: ServeConfig, metrics: Metrics,
                 pending: Callable[[], int] | None = None):
        self.root, self.writable = root, config.writable
        self.index_device = index_device_for(config.device)
        self.gallery: Gallery | None = None
        self._items_cache: tuple[int, list[GalleryItem]] | None = None
        self.bundle_id = bundle_id
        self.batcher = Batcher("search", self._run, max_batch=config.max_batch, max_wait_s=config.max_wait_ms / 1e3,
                               max_queue=config.max_queue, on_batch=metrics.on_batch, on_start=self._open,
                               on_stop=self._close, pending=pending)
        self.users = 1  # generations using this worker

    def _open(self) -> None:
        self.gallery = Gallery.open(self.root, bundle_id=self.bundle_id, writable=self.writable,
                                    index_device=self.index_device)

    def _close(self) -> None:
        if self.gallery is not None:
            self.gallery.close()

    @property
    def count(self) -> int:
        return self.gallery.count if self.gallery is not None else 0

    @property
    def embed_dim(self) -> int:
        return self.gallery.embed_dim

    async def submit(self, job):
        return await self.batcher.submit(job)

    def _run(self, jobs: list) -> list:
        results: list = [None] * len(jobs)
        groups: dict[tuple, list[int]] = defaultdict(list)
        for i, job in enumerate(jobs):
            if isinstance(job, Search):
                groups[(job.k, job.filter)].append(i)
            else:
                results[i] = self._one(job)
        for (k, flt), rows in groups.items():
            try:
                found = self._search([jobs[i] for i in rows], k, flt)
            except ZscirError as exc:
                found = [exc] * len(rows)
            for i, hits in zip(rows, found, strict=True):
                results[i] = hits
        return results

    def _one(self, job):
        g = self.gallery
        try:
            if isinstance(job, Lookup):
                return g.lookup(job.names)
            if isinstance(job, Listing):
                return self._listing(job)
            if isinstance(job, Add):
                ids = g.add(job.names, job.paths, job.vectors)
                g.build_index()  # the index file follows, so a restart serves the new items at once
                self._items_cache = None
                return ids
        except ZscirError as exc:
            return exc
        raise TypeError(f"unknown gallery job {type(job).__name__}")

    def _listing(self, job: Listing) -> tuple[int, list[GalleryItem]]:
        if self._items_cache is None or self._items_cache[0] != self.gallery.count:
            items = sorted(self.gallery.all_items(), key=lambda item: item.name)
            self._items_cache = (self.gallery.count, items)
        items = self._items_cache[1]
        if job.prefix:
            items = [item for item in items if item.name.startswith(job.prefix)]
        return len(items), items[job.offset : job.offset + job.limit]

    def _search(self, jobs: list[Search], k: int, flt: str | None) -> list[list[Hit]]:
        g = self.gallery
        exclude: list[set[int]] = [set() for _ in jobs]
        named = [(i, j.exclude_name) for i, j in enumerate(jobs) if j.exclude_name is not None]
        if named:
            items = g.lookup([name for _, name in named])
            files = [items[name].path for _, name in named]
            for (i, _), ids in zip(named, g.ids_of_files(files), strict=True):
                exclude[i] |= set(ids)
        uploads = [i for i, j in enumerate(jobs) if j.exclude_like is not None]
        if uploads:
            probe = np.stack([jobs[i].exclude_like for i in uploads])  # [U, D]
            scores, ids, _ = g.search_items(probe, DUPLICATE_PROBE)
            for i, row_scores, row_ids in zip(uploads, scores, ids, strict=True):
                exclude[i] |= {int(x) for s, x in zip(row_scores, row_ids, strict=True) if x >= 0 and s >= DUPLICATE_COS}
        xq = np.stack([j.vector for j in jobs]).astype(np.float32)  # [Q, D]
        scores, ids, items = g.search_items(xq, k, exclude=exclude if any(exclude) else None, filter=flt)
        out = []
        for row_scores, row_ids, row_items in zip(scores, ids, items, strict=True):
            hits = []
            for score, i, item in zip(row_scores, row_ids, row_items, strict=True):
                if item is not None:
                    hits.append(Hit(len(hits) + 1, float(score), int(i), item.name))
            out.append(hits)
        return out

    def close(self) -> None:
        self.batcher.close()


# --- one loaded bundle -------------------------------------------------------------------------------------------
def _shown(text: str) -> str:
    return repr(text if len(text) <= MAX_SHOWN_TEXT else text[:MAX_SHOWN_TEXT] + "...")


async def _ready(value):
    """await an awaitable; pass None through (a feature a method does not use)."""
    return None if value is None else await value


@dataclass
class Query:
    """One composed query as the server receives it: pixels (None for the text method) and text."""

    pixels: np.ndarray | None  # [3, S, S]
    text: str
    method: str
    template: str | None = None
    alpha: float | None = None
    warnings: list[str] = field(default_factory=list)


class Generation:
    """A Runtime with one batcher per graph, and the gallery worker; see the module doc."""

    def __init__(self, config: ServeConfig, metrics: Metrics, gallery: GalleryWorker | None = None,
                 pending: Callable[[], int] | None = None):
        self.config, self.metrics = config, metrics
        self.runtime = Runtime(config.bundle, config.backend, config.device, config.precision,
                               batch_size=config.max_batch, threads=config.threads)
        self.batchers: dict[str, Batcher] = {}
        self.gallery: GalleryWorker | None = None
        try:
            common = {"max_batch": config.max_batch, "max_wait_s": config.max_wait_ms / 1e3,
                      "max_queue": config.max_queue, "on_batch": metrics.on_batch, "pending": pending}
            self.batchers[IMAGE_ENCODER] = Batcher(IMAGE_ENCODER, self._images, **common)
            self.batchers[TEXT_ENCODER] = Batcher(TEXT_ENCODER, self._texts, **common)
            if self.runtime.bundle.has_phi:
                self.batchers[QUERY_ENCODER] = Batcher(QUERY_ENCODER, self._queries, **common)
            if gallery is not None:
                if gallery.bundle_id != self.runtime.bundle_id:
                    raise GalleryError(f"Gallery {gallery.root} was encoded by bundle {gallery.bundle_id}, not by "
                                       f"{config.bundle} ({self.runtime.bundle_id}): reload with a gallery of that bundle.")
                gallery.users += 1
                self.gallery = gallery
            else:
                self.gallery = GalleryWorker(config.gallery, self.runtime.bundle_id, config, metrics, pending)
        except BaseException:
            self.close()
            raise
        self.in_flight = 0
        self.retired = False
        self._lock = threading.Lock()

    # --- batch functions (worker threads) ----------------------------------------------------------------------
    def _images(self, pixels: list[np.ndarray]) -> list[np.ndarray]:
        return list(self.runtime.image_features(np.stack(pixels)))  # unnormalized [D] each

    def _texts(self, ids: list[np.ndarray]) -> list[np.ndarray]:
        return list(self.runtime.run_graph(TEXT_ENCODER, {TOKEN_IDS: np.stack(ids)}))

    def _queries(self, rows: list[tuple[np.ndarray, np.ndarray]]) -> list[np.ndarray]:
        v_img = np.stack([r[0] for r in rows]).astype(np.float32)  # [B, D]
        ids = np.stack([r[1] for r in rows])  # [B, 77]
        return list(self.runtime.run_graph(QUERY_ENCODER, {IMAGE_FEATURES: v_img, TOKEN_IDS: ids}))

    # --- encoding (event loop) ---------------------------------------------------------------------------------
    def decode(self, source) -> np.ndarray:
        """Bytes or a path -> [3, S, S] pixels (in a thread pool: Pillow releases the GIL)."""
        return load_and_preprocess(source, self.runtime.bundle.preprocess, max_pixels=self.config.max_image_pixels)

    def token_ids(self, text: str, warnings: list[str]) -> np.ndarray:
        ids, truncated = self.runtime.tokenizer.encode([text], return_truncated=True)  # [1, 77], [1]
        if truncated[0]:
            warnings.append(f"Text {_shown(text)} is longer than {self.runtime.bundle.context_length} CLIP tokens: "
                            "the rest was dropped.")
        return ids[0]

    async def image_features(self, pixels: np.ndarray) -> np.ndarray:
        return await self.batchers[IMAGE_ENCODER].submit(pixels)

    async def text_features(self, text: str, warnings: list[str]) -> np.ndarray:
        return await self.batchers[TEXT_ENCODER].submit(self.token_ids(text, warnings))

    async def encode(self, q: Query) -> tuple[np.ndarray, np.ndarray | None]:
        """The unit query vector [D], and the unnormalized image feature [D] (None for the text method).

        The caller has checked method and alpha (`Runtime.check_method`) before decoding any image."""
        if q.method == PHI:
            prompt = fill_template(self.runtime.template(q.template), q.text, self.runtime.placeholder)
            ids = self.token_ids(prompt, q.warnings)
            if not (ids == self.runtime.bundle.placeholder_id).any():
                q.warnings.append(f"Prompt {_shown(prompt)} lost its placeholder {self.runtime.placeholder!r} to "
                                  "truncation: the reference image does not reach this query.")
            v_img = await self.image_features(q.pixels)
            return await self.batchers[QUERY_ENCODER].submit((v_img, ids)), v_img
        v_img = self.image_features(q.pixels) if q.method != TEXT else None
        v_txt = self.text_features(q.text, q.warnings) if q.method != IMAGE else None
        v_img, v_txt = await asyncio.gather(*(_ready(v) for v in (v_img, v_txt)))
        one = self.runtime.compose(q.method, None if v_img is None else v_img[None],
                                   None if v_txt is None else v_txt[None], q.alpha)  # [1, D]
        return one[0], v_img

    # --- lifetime ----------------------------------------------------------------------------------------------
    def try_enter(self) -> bool:
        """Count a request in; False once retired (the caller takes the newer generation)."""
        with self._lock:
            if self.retired:
                return False
            self.in_flight += 1
            return True

    def leave(self) -> None:
        with self._lock:
            self.in_flight -= 1
            done = self.retired and self.in_flight == 0
        if done:
            self.close()

    def retire(self) -> None:
        """No new requests come here; close once the last one in flight leaves."""
        with self._lock:
            self.retired = True
            done = self.in_flight == 0
        if done:
            self.close()

    def queue_depths(self) -> dict[str, int]:
        depths = {name: b.depth for name, b in self.batchers.items()}
        if self.gallery is not None:
            depths["search"] = self.gallery.batcher.depth
        return depths

    def close(self) -> None:
        for batcher in self.batchers.values():
            batcher.close()
        self.batchers = {}
        if self.gallery is not None:
            self.gallery.users -= 1
            if self.gallery.users <= 0:
                self.gallery.close()
            self.gallery = None
        self.runtime.close()


class Service:
    """The current generation, and reload."""

    def __init__(self, config: ServeConfig, metrics: Metrics | None = None):
        self.metrics = metrics or Metrics()
        self.config = config
        self.in_flight = 0  # requests being answered, over all generations (the admission limit reads it)
        self._reload_lock = threading.Lock()
        self.metrics.in_flight.set_function(lambda: self.in_flight)
        self.current = Generation(config, self.metrics, pending=lambda: self.in_flight)

    @contextlib.contextmanager
    def use(self):
        """The generation a request runs on, held until the request is answered."""
        while not (generation := self.current).try_enter():
            pass  # a reload retired it between the read and the count: the next read is the new one
        self.in_flight += 1  # only the event loop's thread counts: no lock needed
        try:
            yield generation
        finally:
            self.in_flight -= 1
            generation.leave()

    def reload(self, bundle: str | os.PathLike | None = None, gallery: str | os.PathLike | None = None) -> Generation:
        """Load a new bundle and/or gallery (default: the same paths again) and swap it in; see the module doc."""
        with self._reload_lock:
            old = self.current
            config = replace(self.config, bundle=Path(bundle or self.config.bundle),
                             gallery=Path(gallery or self.config.gallery))
            for what, path in (("bundle", config.bundle), ("gallery", config.gallery)):
                if not path.is_dir():
                    raise InputError(f"The {what} to reload, {path}, is not a directory.")
            keep = old.gallery if (config.writable and old.gallery is not None
                                   and config.gallery.resolve() == old.gallery.root.resolve()) else None
            new = Generation(config, self.metrics, gallery=keep, pending=lambda: self.in_flight)
            self.current, self.config = new, config
            old.retire()
            self.metrics.reloads.inc()
            return new

    def close(self) -> None:
        self.current.retire()

