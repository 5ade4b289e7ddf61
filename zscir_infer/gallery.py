"""The gallery: encoded images on disk, an id -> name/path store, and the FAISS index built from them.

A gallery is a directory:
- `gallery.json`: format, bundle identity (`bundle_id`; a gallery is only searched with the bundle that
  encoded it), embed dim, dtype, metric, the sources indexed, and the index (spec, factory, search
  parameter overrides, file, how many vectors it holds). Replaced atomically; it is the commit point
  of the index: a new index file is written first, then gallery.json names it.
- `items.sqlite`: table items(id, name UNIQUE, path), SQLite in WAL mode. SQLite over a JSONL log
  because a transaction makes a whole batch appear or not (no torn lines to detect), UNIQUE(name)
  makes a duplicate impossible rather than merely unlikely, and name -> id lookups (resume, CIRR's
  reference exclusion) need no in-memory copy of a million names. It is in the standard library.
- `features.f32`: float32 rows [N, D], id = row, appended in place. A batch is written and fsynced
  before its rows are committed in SQLite, so the store's count N is the truth: bytes past N rows
  are a batch killed before its commit, cut off at the next writable open.
- `index-{N}-{token}.faiss`: the index over the first N rows, rebuilt or extended from features.f32
  (never re-encoded); stale when N differs from the store's count.
- `lock`: flock'ed by the one writer; SIGKILL releases it.
After SIGKILL at any point every artifact is the previous complete version or the new complete one.
"""

# ruff: noqa: N806, E741 -- xq, D, I: FAISS's names

from __future__ import annotations

import datetime
import fcntl
import itertools
import json
import os
import secrets
import sqlite3
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np

from zscir_infer import search as fsearch
from zscir_infer.atomic import atomic_directory, atomic_path, atomic_write_json
from zscir_infer.preprocess import DEFAULT_MAX_PIXELS, ImageLoadError, PreprocessConfig, load_and_preprocess
from zscir_infer.sources import ImageEntry

FORMAT = "zscir-gallery"
FORMAT_VERSION = 1
METADATA = "gallery.json"
STORE = "items.sqlite"
FEATURES = "features.f32"
LOCK = "lock"
INDEX_PREFIX, INDEX_SUFFIX = "index-", ".faiss"
DTYPE = np.dtype("<f4")
NORM_TOLERANCE = 1e-3  # features must be L2-normalized (inner product = cosine)
SQLITE_MAX_VARIABLES = 900  # below every SQLite build's limit on ? parameters per statement
PREFETCH_BATCHES = 2  # batches decoding while one is encoded
SCHEMA = "CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE, path TEXT NOT NULL)"


class GalleryError(Exception):
    """The gallery cannot be used as asked; the message names the gallery and what to do."""


class GalleryBundleMismatch(GalleryError):
    """The gallery was encoded by another bundle."""


@dataclass(frozen=True)
class GalleryItem:
    id: int
    name: str
    path: str


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def _connect(db: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    return conn


def _chunks(values: Sequence, size: int = SQLITE_MAX_VARIABLES) -> Iterable[Sequence]:
    for lo in range(0, len(values), size):
        yield values[lo : lo + size]


class Gallery:
    """Open with `Gallery.create` or `Gallery.open`; a writable gallery holds the directory's lock."""

    def __init__(self, root: Path, meta: dict, writable: bool):
        self.root, self.meta, self.writable = root, meta, writable
        self._lock_fd = self._acquire_lock() if writable else None
        self._db = _connect(root / STORE)
        self._index: faiss.Index | None = None
        try:
            self.count = self._committed_count()
            self._check_features()
            if writable:
                self._remove_leftovers()
        except BaseException:
            self.close()
            raise

    @classmethod
    def create(
        cls,
        root: str | os.PathLike,
        *,
        bundle_id: str,
        embed_dim: int,
        index_spec: str = "auto",
        bundle: str = "",
        sources: Sequence[dict] = (),
    ) -> Gallery:
        """A new empty gallery at root (which must not exist), open for writing.

        bundle (its path, for messages) and sources ({"kind", "path"} of what is indexed) are recorded.
        """
        root = Path(root)
        fsearch.check_spec(index_spec, embed_dim)
        meta = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "created": _now(),
            "bundle_id": bundle_id,
            "bundle": bundle,
            "embed_dim": int(embed_dim),
            "dtype": DTYPE.name,
            "metric": "inner_product",
            "sources": list(sources),
            "index": {"spec": index_spec, "params": {}, "factory": None, "file": None, "count": 0},
        }
        try:
            with atomic_directory(root) as tmp:
                with _connect(tmp / STORE) as conn:
                    conn.execute(SCHEMA)
                conn.close()
                (tmp / FEATURES).touch()
                atomic_write_json(tmp / METADATA, meta)
        except FileExistsError as exc:
            raise GalleryError(f"{root} already exists: open it, or choose another --out.") from exc
        return cls(root, meta, writable=True)

    @classmethod
    def open(
        cls, root: str | os.PathLike, *, bundle_id: str | None = None, writable: bool = False
    ) -> Gallery:
        """An existing gallery; with bundle_id, refused unless that bundle encoded it."""
        root = Path(root)
        meta = read_metadata(root)
        if bundle_id is not None and meta["bundle_id"] != bundle_id:
            raise GalleryBundleMismatch(
                f"Gallery {root} was encoded by bundle {meta['bundle_id']} ({meta.get('bundle') or 'unknown path'}), "
                f"not by the bundle given ({bundle_id}): features of different encoders are not comparable. "
                f"Use the matching bundle, or build a new gallery with this one: zscir-infer index SRC --out NEW."
            )
        return cls(root, meta, writable)

    def __enter__(self) -> Gallery:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._db.close()
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # releases the flock
            self._lock_fd = None

    def __len__(self) -> int:
        return self.count

    @property
    def embed_dim(self) -> int:
        return self.meta["embed_dim"]

    @property
    def bundle_id(self) -> str:
        return self.meta["bundle_id"]

    @property
    def sources(self) -> list[dict]:
        return self.meta["sources"]

    def _acquire_lock(self) -> int:
        fd = os.open(self.root / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            os.close(fd)
            raise GalleryError(
                f"Gallery {self.root} is being written by another process; wait for it to finish."
            ) from exc
        return fd

    def _committed_count(self) -> int:
        rows, top = self._db.execute("SELECT COUNT(*), MAX(id) FROM items").fetchone()
        if rows and top != rows - 1:
            raise GalleryError(
                f"{self.root / STORE} has ids with gaps ({rows} rows, max id {top}); rebuild the gallery."
            )
        return rows

    def _check_features(self) -> None:
        path, row_bytes = self.root / FEATURES, self.embed_dim * DTYPE.itemsize
        size = path.stat().st_size
        if size < self.count * row_bytes:
            raise GalleryError(
                f"{path} holds {size // row_bytes} vectors but {STORE} commits {self.count}: the gallery is damaged "
                "(files copied separately?); rebuild it with zscir-infer index."
            )
        if self.writable and size > self.count * row_bytes:  # a batch killed before its commit
            with open(path, "r+b") as f:
                f.truncate(self.count * row_bytes)
                os.fsync(f.fileno())

    def _remove_leftovers(self) -> None:
        """Temp files of killed writes, and index files gallery.json no longer names."""
        for path in self.root.iterdir():
            stale_index = path.name.startswith(INDEX_PREFIX) and path.name != self.meta["index"]["file"]
            if stale_index or (path.name.startswith(".") and path.name.endswith(".tmp")):
                path.unlink(missing_ok=True)

    def _save_metadata(self) -> None:
        self.meta["updated"] = _now()
        atomic_write_json(self.root / METADATA, self.meta)

    def record_source(self, source: dict) -> None:
        """Remember a source ({"kind", "path"}) before its images are added."""
        self._require_writable()
        if source not in self.sources:
            self.sources.append(source)
            self._save_metadata()

    def lookup(self, names: Sequence[str]) -> dict[str, GalleryItem]:
        """The stored items among `names`, by name."""
        found: dict[str, GalleryItem] = {}
        for chunk in _chunks(list(names)):
            marks = ",".join("?" * len(chunk))
            for i, name, path in self._db.execute(
                f"SELECT id, name, path FROM items WHERE name IN ({marks})", chunk
            ):
                found[name] = GalleryItem(i, name, path)
        return found

    def items(self, ids: Iterable[int]) -> dict[int, GalleryItem]:
        """The stored items among `ids` (negative ids, FAISS's 'no result', are skipped), by id."""
        wanted = sorted({int(i) for i in ids if i >= 0})
        found: dict[int, GalleryItem] = {}
        for chunk in _chunks(wanted):
            marks = ",".join("?" * len(chunk))
            for i, name, path in self._db.execute(
                f"SELECT id, name, path FROM items WHERE id IN ({marks})", chunk
            ):
                found[i] = GalleryItem(i, name, path)
        return found

    def all_items(self) -> list[GalleryItem]:
        return [GalleryItem(*row) for row in self._db.execute("SELECT id, name, path FROM items ORDER BY id")]

    def features(self) -> np.ndarray:
        """The committed features [N, D] float32, memory-mapped read-only."""
        if self.count == 0:
            return np.empty((0, self.embed_dim), dtype=DTYPE)
        return np.memmap(self.root / FEATURES, dtype=DTYPE, mode="r", shape=(self.count, self.embed_dim))

    def add(
        self, names: Sequence[str], paths: Sequence[str | os.PathLike], features: np.ndarray
    ) -> np.ndarray:
        """Append one batch: features [B, D] (L2-normalized) under new ids, all of it or nothing."""
        self._require_writable()
        features = np.ascontiguousarray(features, dtype=DTYPE)  # [B, D]
        self._check_batch(names, paths, features)
        ids = np.arange(self.count, self.count + len(names), dtype=np.int64)
        row_bytes = self.embed_dim * DTYPE.itemsize
        with open(self.root / FEATURES, "r+b") as f:  # 1. the vectors, past the committed rows
            f.seek(self.count * row_bytes)
            f.write(features.tobytes())
            f.truncate()
            os.fsync(f.fileno())
        rows = [(int(i), n, os.fspath(p)) for i, n, p in zip(ids, names, paths, strict=True)]
        with self._db:  # 2. the commit: rows appear in one transaction, or not at all
            self._db.executemany("INSERT INTO items (id, name, path) VALUES (?, ?, ?)", rows)
        self.count += len(rows)
        self._index = None  # the next search sees the new rows
        return ids

    def _check_batch(self, names: Sequence[str], paths: Sequence, features: np.ndarray) -> None:
        if features.ndim != 2 or features.shape[1] != self.embed_dim:
            raise GalleryError(
                f"Features of shape {features.shape} do not fit gallery {self.root} ([B, {self.embed_dim}])."
            )
        if not len(names) == len(paths) == features.shape[0]:
            raise GalleryError(
                f"add() got {len(names)} names, {len(paths)} paths and {features.shape[0]} vectors."
            )
        norms = np.linalg.norm(features, axis=1)
        if not np.all(np.abs(norms - 1) <= NORM_TOLERANCE):
            raise GalleryError(
                f"Features must be L2-normalized (norms range {norms.min():.4f}..{norms.max():.4f})."
            )
        if len(set(names)) != len(names):
            raise GalleryError("add() got the same name twice in one batch.")
        present = sorted(self.lookup(names))
        if present:
            raise GalleryError(
                f"{len(present)} names are already in gallery {self.root}, e.g. {present[:3]}."
            )

    def _require_writable(self) -> None:
        if not self.writable:
            raise GalleryError(f"Gallery {self.root} was opened read-only.")

    def index_is_fresh(self) -> bool:
        info = self.meta["index"]
        return (
            info["file"] is not None and info["count"] == self.count and (self.root / info["file"]).is_file()
        )

    def set_index_spec(self, spec: str, params: dict[str, float] | None = None) -> None:
        """Choose the index (and search parameter overrides) that the next build_index makes."""
        self._require_writable()
        fsearch.check_spec(spec, self.embed_dim)
        info = self.meta["index"]
        info["spec"], info["params"] = spec, dict(params if params is not None else info["params"])
        self._save_metadata()

    def build_index(self, rebuild: bool = False) -> None:
        """Bring the index file up to date: extend it with the new rows when the factory is unchanged,
        else (or with rebuild) build it from all stored features. Written atomically, then committed."""
        self._require_writable()
        info = self.meta["index"]
        factory = fsearch.resolve_factory(info["spec"], self.count, self.embed_dim) if self.count else None
        if self.index_is_fresh() and factory == info["factory"] and not rebuild:
            return
        xb = self.features()  # [N, D]
        extendable = (
            info["file"] and factory == info["factory"] and info["count"] <= self.count and not rebuild
        )
        if extendable and (self.root / info["file"]).is_file():
            index = faiss.read_index(str(self.root / info["file"]))
            fsearch.add_vectors(index, xb, start=info["count"])
        else:
            index = fsearch.build_index(xb, factory, info["params"]) if self.count else None
        name = None
        if index is not None:
            name = f"{INDEX_PREFIX}{self.count}-{secrets.token_hex(4)}{INDEX_SUFFIX}"
            with atomic_path(self.root / name) as tmp:
                faiss.write_index(fsearch.to_cpu(index), str(tmp))
        info.update(factory=factory, file=name, count=self.count)
        self._save_metadata()
        self._remove_leftovers()
        self._index = None

    @property
    def index(self) -> faiss.Index | None:
        """The search index (on GPU when faiss has GPUs); a stale file is replaced by an in-memory build."""
        if self._index is None and self.count:
            info = self.meta["index"]
            if self.index_is_fresh():
                index = faiss.read_index(str(self.root / info["file"]))
                if index.ntotal != self.count or index.d != self.embed_dim:
                    raise GalleryError(
                        f"{info['file']} does not match {STORE}; run zscir-infer index --rebuild."
                    )
                params = {**fsearch.default_search_params(index), **info["params"]}
                self._index = fsearch.to_gpu(index)
                fsearch.set_search_params(self._index, params)
            else:
                self._index = fsearch.build_index(self.features(), info["spec"], info["params"])
        return self._index

    def set_search_params(self, params: dict[str, float]) -> None:
        """Override efSearch / nprobe / k_factor_rf for this session's searches."""
        if self.index is not None:
            fsearch.set_search_params(self.index, params)

    def search(
        self, xq: np.ndarray, k: int, exclude: Sequence[str | Iterable[str] | None] | None = None
    ) -> tuple[np.ndarray, np.ndarray, list[list[Path | None]]]:
        """Top-k items for queries xq [Q, D] -> scores D [Q, k], ids I [Q, k], paths [Q][k].

        exclude[q] names gallery items query q must not return (CIRR ranks without the reference
        image). Missing ranks (k larger than what is left) have I = -1, D = -inf, path None.
        """
        xq = np.ascontiguousarray(xq, dtype=DTYPE)  # [Q, D]
        if xq.ndim != 2 or xq.shape[1] != self.embed_dim:
            raise GalleryError(
                f"Queries of shape {xq.shape} do not fit gallery {self.root} ([Q, {self.embed_dim}])."
            )
        banned = self._excluded_ids(exclude, xq.shape[0])
        D = np.full((xq.shape[0], k), -np.inf, dtype=np.float32)
        I = np.full((xq.shape[0], k), -1, dtype=np.int64)
        if self.count and k > 0:
            k_search = min(self.count, k + max(map(len, banned), default=0))
            D_all, I_all = self.index.search(xq, k_search)
            for q, (scores, ids) in enumerate(zip(D_all, I_all, strict=True)):
                keep = (ids >= 0) & ~np.isin(ids, list(banned[q]))
                n = min(k, int(keep.sum()))
                D[q, :n], I[q, :n] = scores[keep][:n], ids[keep][:n]
        by_id = self.items(I.ravel())
        paths = [[Path(by_id[i].path) if i >= 0 else None for i in row] for row in I]
        return D, I, paths

    def _excluded_ids(self, exclude, n_queries: int) -> list[set[int]]:
        if exclude is None:
            return [set() for _ in range(n_queries)]
        if len(exclude) != n_queries:
            raise GalleryError(f"exclude has {len(exclude)} entries for {n_queries} queries.")
        per_query = [[e] if isinstance(e, str) else list(e or ()) for e in exclude]
        ids = self.lookup(sorted({name for names in per_query for name in names}))
        return [{ids[name].id for name in names if name in ids} for names in per_query]


def read_metadata(root: Path) -> dict:
    path = root / METADATA
    if not path.is_file():
        raise GalleryError(
            f"{root} is not a gallery (no {METADATA}): build one with zscir-infer index SRC --out {root}."
        )
    meta = json.loads(path.read_text(encoding="utf-8"))
    if meta.get("format") != FORMAT or meta.get("format_version") != FORMAT_VERSION:
        raise GalleryError(
            f"{path} is not a {FORMAT} v{FORMAT_VERSION} gallery (format {meta.get('format')!r} "
            f"v{meta.get('format_version')!r}); rebuild it with this version of zscir-infer index."
        )
    return meta


@dataclass
class IndexPlan:
    todo: list[ImageEntry]  # to decode and encode, in source order
    present: int  # already in the gallery under the same name and path (a resumed or repeated run)
    bad: list[tuple[str, str]]  # (path, reason)


def plan_additions(gallery: Gallery, entries: Sequence[ImageEntry]) -> IndexPlan:
    """Split a source's entries into new ones and those the gallery holds (a name it holds for another
    file is a conflict: reported, never overwritten)."""
    stored = gallery.lookup([e.name for e in entries])
    plan = IndexPlan([], 0, [])
    for entry in entries:
        item = stored.get(entry.name)
        if item is None:
            plan.todo.append(entry)
        elif item.path == os.fspath(entry.path):
            plan.present += 1
        else:
            plan.bad.append(
                (str(entry.path), f"name {entry.name!r} is already in the gallery for {item.path}")
            )
    return plan


def _decode(entry: ImageEntry, cfg: PreprocessConfig, max_pixels: int) -> np.ndarray | str:
    """[3, S, S] pixels, or why the file was skipped."""
    try:
        return load_and_preprocess(entry.path, cfg, max_pixels=max_pixels)
    except ImageLoadError as exc:
        return str(exc)
    except Exception as exc:  # Pillow's decoders raise arbitrary errors on crafted or corrupt files
        return f"{entry.path} could not be decoded ({type(exc).__name__}: {exc}); remove or convert it."


def _decoded_batches(
    entries: Sequence[ImageEntry], cfg: PreprocessConfig, batch_size: int, workers: int, max_pixels: int
) -> Iterator[list[tuple[ImageEntry, np.ndarray | str]]]:
    """Batches in source order, decoded by a thread pool PREFETCH_BATCHES batches ahead of the encoder
    (Pillow releases the GIL while decoding and resizing)."""
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="decode")
    starts = iter(range(0, len(entries), batch_size))
    pending: deque[list[tuple[ImageEntry, Future]]] = deque()

    def submit(lo: int) -> None:
        pending.append([(e, pool.submit(_decode, e, cfg, max_pixels)) for e in entries[lo : lo + batch_size]])

    try:
        for lo in itertools.islice(starts, PREFETCH_BATCHES):
            submit(lo)
        while pending:
            batch = pending.popleft()
            lo = next(starts, None)
            if lo is not None:
                submit(lo)
            yield [(e, f.result()) for e, f in batch]
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def add_images(
    gallery: Gallery,
    entries: Sequence[ImageEntry],
    encode_pixels: Callable[[np.ndarray], np.ndarray],
    preprocess_config: PreprocessConfig,
    *,
    batch_size: int,
    workers: int,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    on_progress: Callable[[int], None] | None = None,
) -> tuple[int, list[tuple[str, str]]]:
    """Decode, encode and add entries batch by batch -> (images added, bad files as (path, reason)).

    encode_pixels: pixels [B, 3, S, S] -> L2-normalized features [B, D] (`Runtime.encode_pixels`).
    Each batch is committed on its own, so an interrupted run keeps every batch it finished.
    """
    added, bad = 0, []
    for batch in _decoded_batches(entries, preprocess_config, batch_size, workers, max_pixels):
        good = [(e, pixels) for e, pixels in batch if not isinstance(pixels, str)]
        bad += [(str(e.path), reason) for e, reason in batch if isinstance(reason, str)]
        if good:
            features = encode_pixels(np.stack([pixels for _, pixels in good]))  # [B, D]
            gallery.add([e.name for e, _ in good], [e.path for e, _ in good], features)
            added += len(good)
        if on_progress is not None:
            on_progress(len(batch))
    return added, bad
