"""The embedded gallery store: a FAISS index, an SQLite id -> metadata table and a float32 feature file.

Files in the gallery directory (beside `gallery.json`, whose `index` section this store keeps):
- `items.sqlite`: table items(id, name UNIQUE, path), SQLite in WAL mode. SQLite over a JSONL log
  because a transaction makes a whole batch appear or not (no torn lines to detect), UNIQUE(name)
  makes a duplicate impossible rather than merely unlikely, and name -> id lookups (resume, CIRR's
  reference exclusion) need no in-memory copy of a million names. It is in the standard library.
- `features.f32`: float32 rows [N, D], id = row, appended in place. A batch is written and fsynced
  before its rows are committed in SQLite, so the store's count N is the truth: bytes past N rows
  are a batch killed before its commit, cut off at the next writable open.
- `index-{N}-{token}.faiss`: the index over the first N rows, rebuilt or extended from features.f32
  (never re-encoded); stale when N differs from the store's count. A new index file is written first,
  then gallery.json names it (the commit point).
After SIGKILL at any point every artifact is the previous complete version or the new complete one.
"""

# ruff: noqa: N806, E741 -- xq, D, I: FAISS's names

from __future__ import annotations

import os
import secrets
import sqlite3
from collections.abc import Callable, Collection, Iterable, Sequence
from pathlib import Path

import faiss
import numpy as np

from zscir_infer import search as fsearch
from zscir_infer.atomic import atomic_path
from zscir_infer.stores import GalleryError, GalleryItem
from zscir_infer.stores.filters import filter_to_sql

STORE = "items.sqlite"
FEATURES = "features.f32"
INDEX_PREFIX, INDEX_SUFFIX = "index-", ".faiss"
DTYPE = np.dtype("<f4")
SQLITE_MAX_VARIABLES = 900  # below every SQLite build's limit on ? parameters per statement
SCHEMA = "CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE, path TEXT NOT NULL)"


def new_index_section(spec: str) -> dict:
    """The `index` section of a new gallery's gallery.json."""
    return {"spec": spec, "params": {}, "factory": None, "file": None, "count": 0}


def _connect(db: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("PRAGMA case_sensitive_like=ON")  # filters: `like` matches case as Milvus does
    return conn


def _chunks(values: Sequence, size: int = SQLITE_MAX_VARIABLES) -> Iterable[Sequence]:
    for lo in range(0, len(values), size):
        yield values[lo : lo + size]


class FaissSqliteStore:
    """The `faiss` backend of a Gallery (see `zscir_infer.stores.VectorStore`)."""

    kind = "faiss"

    def __init__(self, root: Path, info: dict, dim: int, writable: bool, save_meta: Callable[[], None],
                 index_device: str = "auto"):
        """info: gallery.json's `index` section (changed in place; save_meta writes gallery.json);
        index_device: where the faiss index is built and searched (`zscir_infer.search.INDEX_DEVICES`)."""
        self.root, self.info, self.dim, self.writable = root, info, dim, writable
        self.use_gpu = fsearch.resolve_index_device(index_device)
        self._save_meta = save_meta
        self._db = _connect(root / STORE)
        self._index: faiss.Index | None = None
        self._cpu_copy: tuple[faiss.Index, faiss.Index] | None = None  # (GPU index, its CPU copy) for k > 2048
        try:
            self._count = self._committed_count()
            self._check_features()
            if writable:
                self.remove_leftovers()
        except BaseException:
            self._db.close()
            raise

    @staticmethod
    def new_section(spec: str, dim: int, *, root: Path, bundle_id: str, **options) -> dict:
        """The `index` section of a new gallery (the spec checked now, before hours of encoding)."""
        if any(v is not None for v in options.values()):
            given = ", ".join(f"--{k}" for k, v in options.items() if v is not None)
            raise GalleryError(f"{given} apply to the milvus store (--store milvus), not to the faiss store.")
        fsearch.check_spec(spec, dim)
        return new_index_section(spec)

    def check_index(self, spec: str, params: dict[str, float], n: int) -> None:
        """Raise IndexSpecError now for a spec or search parameter the index of n vectors cannot take."""
        fsearch.check_spec(spec, self.dim)
        fsearch.check_search_params(spec, n, self.dim, params)

    @staticmethod
    def create_files(directory: Path) -> None:
        """The empty store's files in a new gallery directory (before it is renamed into place)."""
        with _connect(directory / STORE) as conn:
            conn.execute(SCHEMA)
        conn.close()
        (directory / FEATURES).touch()

    @property
    def count(self) -> int:
        return self._count

    def close(self) -> None:
        self._db.close()

    def _committed_count(self) -> int:
        rows, top = self._db.execute("SELECT COUNT(*), MAX(id) FROM items").fetchone()
        if rows and top != rows - 1:
            raise GalleryError(
                f"{self.root / STORE} has ids with gaps ({rows} rows, max id {top}); rebuild the gallery."
            )
        return rows

    def _check_features(self) -> None:
        path, row_bytes = self.root / FEATURES, self.dim * DTYPE.itemsize
        size = path.stat().st_size
        if size < self._count * row_bytes:
            raise GalleryError(
                f"{path} holds {size // row_bytes} vectors but {STORE} commits {self._count}: the gallery is damaged "
                "(files copied separately?); rebuild it with zscir-infer index."
            )
        if self.writable and size > self._count * row_bytes:  # a batch killed before its commit
            with open(path, "r+b") as f:
                f.truncate(self._count * row_bytes)
                os.fsync(f.fileno())

    def remove_leftovers(self) -> None:
        """Temp files of killed writes, and index files gallery.json no longer names."""
        for path in self.root.iterdir():
            stale_index = path.name.startswith(INDEX_PREFIX) and path.name != self.info["file"]
            if stale_index or (path.name.startswith(".") and path.name.endswith(".tmp")):
                path.unlink(missing_ok=True)

    # --- metadata ----------------------------------------------------------------------------------------
    def _select(self, column: str, values: Sequence) -> Iterable[tuple[int, str, str]]:
        for chunk in _chunks(list(values)):
            marks = ",".join("?" * len(chunk))
            yield from self._db.execute(f"SELECT id, name, path FROM items WHERE {column} IN ({marks})", chunk)

    def lookup(self, names: Sequence[str]) -> dict[str, GalleryItem]:
        return {name: GalleryItem(i, name, path) for i, name, path in self._select("name", names)}

    def lookup_paths(self, paths: Sequence[str]) -> dict[str, list[GalleryItem]]:
        """The items stored under each of these exact paths, by path."""
        found: dict[str, list[GalleryItem]] = {}
        for i, name, path in self._select("path", paths):
            found.setdefault(path, []).append(GalleryItem(i, name, path))
        return found

    def items(self, ids: Iterable[int]) -> dict[int, GalleryItem]:
        wanted = sorted({int(i) for i in ids if i >= 0})
        return {i: GalleryItem(i, name, path) for i, name, path in self._select("id", wanted)}

    def all_items(self) -> list[GalleryItem]:
        return [GalleryItem(*row) for row in self._db.execute("SELECT id, name, path FROM items ORDER BY id")]

    def filtered_ids(self, expression: str) -> np.ndarray:
        """Ids of the items a filter expression accepts (evaluated by SQLite over items.sqlite)."""
        where, params = filter_to_sql(expression)
        rows = self._db.execute(f"SELECT id FROM items WHERE {where} ORDER BY id", params).fetchall()
        return np.array([r[0] for r in rows], dtype=np.int64)

    # --- vectors -----------------------------------------------------------------------------------------
    def features(self) -> np.ndarray:
        """The committed features [N, D] float32, memory-mapped read-only."""
        if self._count == 0:
            return np.empty((0, self.dim), dtype=DTYPE)
        return np.memmap(self.root / FEATURES, dtype=DTYPE, mode="r", shape=(self._count, self.dim))

    def add(self, ids: np.ndarray, vectors: np.ndarray, names: Sequence[str], paths: Sequence[str]) -> None:
        if len(ids) and (ids[0] != self._count or np.any(np.diff(ids) != 1)):
            raise GalleryError(f"The faiss store takes consecutive ids from {self._count}, got {ids[:3]}...")
        vectors = np.ascontiguousarray(vectors, dtype=DTYPE)  # [B, D]
        row_bytes = self.dim * DTYPE.itemsize
        with open(self.root / FEATURES, "r+b") as f:  # 1. the vectors, past the committed rows
            f.seek(self._count * row_bytes)
            f.write(vectors.tobytes())
            f.truncate()
            os.fsync(f.fileno())
        rows = [(int(i), n, p) for i, n, p in zip(ids, names, paths, strict=True)]
        with self._db:  # 2. the commit: rows appear in one transaction, or not at all
            self._db.executemany("INSERT INTO items (id, name, path) VALUES (?, ?, ?)", rows)
        self._count += len(rows)
        self._index = None  # the next search sees the new rows

    # --- the index -----------------------------------------------------------------------------------------
    def index_is_fresh(self) -> bool:
        info = self.info
        return info["file"] is not None and info["count"] == self._count and (self.root / info["file"]).is_file()

    def set_index_spec(self, spec: str, params: dict[str, float] | None = None) -> None:
        """Choose the index (and search parameter overrides) that the next persist builds."""
        fsearch.check_spec(spec, self.dim)
        self.info["spec"], self.info["params"] = spec, dict(params if params is not None else self.info["params"])
        self._save_meta()

    def persist(self, rebuild: bool = False) -> None:
        """Bring the index file up to date: extend it with the new rows when the factory is unchanged,
        else (or with rebuild) build it from all stored features. Written atomically, then committed."""
        info = self.info
        factory = fsearch.resolve_factory(info["spec"], self._count, self.dim) if self._count else None
        if self.index_is_fresh() and factory == info["factory"] and not rebuild:
            return
        xb = self.features()  # [N, D]
        extendable = info["file"] and factory == info["factory"] and info["count"] <= self._count and not rebuild
        if extendable and (self.root / info["file"]).is_file():
            index = faiss.read_index(str(self.root / info["file"]))
            fsearch.add_vectors(index, xb, start=info["count"])
        else:
            index = fsearch.build_index(xb, factory, info["params"], gpu=self.use_gpu) if self._count else None
        name = None
        if index is not None:
            name = f"{INDEX_PREFIX}{self._count}-{secrets.token_hex(4)}{INDEX_SUFFIX}"
            with atomic_path(self.root / name) as tmp:
                faiss.write_index(fsearch.to_cpu(index), str(tmp))
        info.update(factory=factory, file=name, count=self._count)
        self._save_meta()
        self.remove_leftovers()
        self._index = None

    @property
    def index(self) -> faiss.Index | None:
        """The search index (on the GPUs when the index device says so); a stale file is replaced by an
        in-memory build."""
        if self._index is None and self._count:
            info = self.info
            if self.index_is_fresh():
                index = faiss.read_index(str(self.root / info["file"]))
                if index.ntotal != self._count or index.d != self.dim:
                    raise GalleryError(f"{info['file']} does not match {STORE}; run zscir-infer index --rebuild.")
                params = {**fsearch.default_search_params(index), **info["params"]}
                self._index = fsearch.to_gpu(index) if self.use_gpu else index
                fsearch.set_search_params(self._index, params)
            else:
                self._index = fsearch.build_index(self.features(), info["spec"], info["params"], gpu=self.use_gpu)
        return self._index

    def _cpu_index(self) -> faiss.Index:
        """A CPU copy of the GPU index, made once per index (searches past faiss's GPU k limit use it)."""
        if self._cpu_copy is None or self._cpu_copy[0] is not self.index:
            self._cpu_copy = (self.index, fsearch.to_cpu(self.index))
        return self._cpu_copy[1]

    def set_search_params(self, params: dict[str, float]) -> None:
        """Override efSearch / nprobe / k_factor_rf for this session's searches."""
        if self.index is not None:
            fsearch.set_search_params(self.index, params)

    def search(
        self, xq: np.ndarray, k: int, exclude: Sequence[Collection[int]] | None = None, filter: str | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        banned = fsearch.excluded_matrix(exclude, xq.shape[0])  # [Q, E]
        D, I = fsearch.no_results(xq.shape[0], k)
        if not self._count or k <= 0:
            return D, I
        allowed = self.filtered_ids(filter) if filter is not None else None
        n_candidates = self._count if allowed is None else len(allowed)
        if n_candidates == 0:
            return D, I
        k_search = fsearch.search_depth(banned, k, n_candidates)
        if allowed is None:
            D_all, I_all = fsearch.search(self.index, xq, k_search, self._cpu_index)  # one call
        else:
            D_all, I_all = fsearch.search_subset(self.features(), allowed, xq, k_search)
        return fsearch.drop_excluded(D_all, I_all, banned, k)
