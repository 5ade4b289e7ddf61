"""The gallery: encoded images in a directory, searched with the bundle that encoded them.

A gallery is a directory with `gallery.json` (format, bundle identity `bundle_id` — a gallery is only
searched with the bundle that encoded it —, embed dim, dtype, metric, the sources indexed, the vector
store and its settings), replaced atomically, and the files of its vector store (see
`zscir_infer.stores`; the default `faiss` store keeps an SQLite id -> name/path table, a float32
feature file and FAISS index files, and documents its crash safety; the `milvus` store keeps its items
in a Milvus collection, by default Milvus Lite in `gallery.db` inside the directory). `lock` is flock'ed by the one
writer; SIGKILL releases it.

    with Gallery.open("zscir-out/gallery", bundle_id=runtime.bundle_id) as g:
        D, I, paths = g.search(xq, k=10, exclude=[["dev-190-0-img0"]])   # xq [Q, D] unit vectors

`Gallery` keeps what every backend shares (metadata, the bundle check, names and files -> ids, the
checks on added batches); the store does storage and search. Building a gallery from image files is
`zscir_infer.indexing.index_images`.
"""

# ruff: noqa: N806, E741 -- xq, D, I: FAISS's names

from __future__ import annotations

import datetime
import fcntl
import json
import os
from collections.abc import Collection, Iterable, Sequence
from pathlib import Path

import faiss
import numpy as np

from zscir_infer.atomic import atomic_directory, atomic_write_json
from zscir_infer.stores import DEFAULT_STORE, GalleryError, GalleryItem, VectorStore
from zscir_infer.stores.faiss_sqlite import DTYPE, FaissSqliteStore
from zscir_infer.stores.milvus import MilvusStore

FORMAT = "zscir-gallery"
FORMAT_VERSION = 1
METADATA = "gallery.json"
LOCK = "lock"
NORM_TOLERANCE = 1e-3  # features must be L2-normalized (inner product = cosine)
STORES = {FaissSqliteStore.kind: FaissSqliteStore, MilvusStore.kind: MilvusStore}  # milvus: pymilvus on open

__all__ = ["METADATA", "Gallery", "file_key", "GalleryBundleMismatch", "GalleryError", "GalleryItem", "read_metadata"]


class GalleryBundleMismatch(GalleryError):
    """The gallery was encoded by another bundle."""


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def file_key(path: str | os.PathLike) -> tuple | str:
    """One key per file: (device, inode), so hard links and symlinks match; the real path if absent."""
    try:
        st = os.stat(path)
    except OSError:
        return os.path.realpath(path)
    return st.st_dev, st.st_ino


class Gallery:
    """Open with `Gallery.create` or `Gallery.open`; a writable gallery holds the directory's lock."""

    def __init__(self, root: Path, meta: dict, writable: bool, index_device: str = "auto"):
        self.root, self.meta, self.writable = root, meta, writable
        self._lock_fd = self._acquire_lock() if writable else None
        self._file_ids: dict | None = None  # (device, inode) -> ids, built on first need
        kind = meta.get("store", DEFAULT_STORE)
        if kind not in STORES:
            self.close()
            raise GalleryError(f"Gallery {root} uses store {kind!r}, which this zscir does not have ({sorted(STORES)}).")
        try:
            self.store: VectorStore = STORES[kind](root, meta["index"], meta["embed_dim"], writable,
                                                   self._save_metadata, index_device=index_device)
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
        store: str = DEFAULT_STORE,
        store_options: dict | None = None,
        index_device: str = "auto",
    ) -> Gallery:
        """A new empty gallery at root (which must not exist), open for writing.

        bundle (its path, for messages) and sources ({"kind", "path"} of what is indexed) are recorded.
        store: `faiss` (embedded, default) or `milvus`; store_options: the milvus store's `uri` (a `.db`
        for Milvus Lite, relative to root, or http://host:19530) and `collection`. index_device: as in `open`.
        """
        root = Path(root)
        if store not in STORES:
            raise GalleryError(f"Unknown gallery store {store!r}: use one of {sorted(STORES)}.")
        if root.exists():
            raise GalleryError(f"{root} already exists: open it, or choose another --out.")
        section = STORES[store].new_section(index_spec, int(embed_dim), root=root, bundle_id=bundle_id,
                                            **(store_options or {}))
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
            "store": store,
            "index": section,
        }
        try:
            with atomic_directory(root) as tmp:
                STORES[store].create_files(tmp)
                atomic_write_json(tmp / METADATA, meta)
        except FileExistsError as exc:
            raise GalleryError(f"{root} already exists: open it, or choose another --out.") from exc
        return cls(root, meta, writable=True, index_device=index_device)

    @classmethod
    def open(cls, root: str | os.PathLike, *, bundle_id: str | None = None, writable: bool = False,
             index_device: str = "auto") -> Gallery:
        """An existing gallery; with bundle_id, refused unless that bundle encoded it.

        index_device: where a faiss index is built and searched: `auto` (the GPUs when faiss has them),
        `cpu`, `gpu`; `zscir_infer.search.index_device_for(runtime_device)` matches a runtime's --device."""
        root = Path(root)
        meta = read_metadata(root)
        if bundle_id is not None and meta["bundle_id"] != bundle_id:
            raise GalleryBundleMismatch(
                f"Gallery {root} was encoded by bundle {meta['bundle_id']} ({meta.get('bundle') or 'unknown path'}), "
                f"not by the bundle given ({bundle_id}): features of different encoders are not comparable. "
                f"Use the matching bundle, or build a new gallery with this one: zscir-infer index SRC --out NEW."
            )
        return cls(root, meta, writable, index_device)

    def __enter__(self) -> Gallery:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        store = getattr(self, "store", None)
        if store is not None:
            store.close()
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # releases the flock
            self._lock_fd = None

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

    def _save_metadata(self) -> None:
        self.meta["updated"] = _now()
        atomic_write_json(self.root / METADATA, self.meta)

    def _require_writable(self) -> None:
        if not self.writable:
            raise GalleryError(f"Gallery {self.root} was opened read-only.")

    # --- what the gallery is -------------------------------------------------------------------------------
    @property
    def count(self) -> int:
        return self.store.count

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

    def record_source(self, source: dict) -> None:
        """Remember a source ({"kind", "path"}) before its images are added."""
        self._require_writable()
        if source not in self.sources:
            self.sources.append(source)
            self._save_metadata()

    # --- items -----------------------------------------------------------------------------------------------
    def lookup(self, names: Sequence[str]) -> dict[str, GalleryItem]:
        """The stored items among `names`, by name."""
        return self.store.lookup(names)

    def items(self, ids: Iterable[int]) -> dict[int, GalleryItem]:
        """The stored items among `ids` (negative ids, FAISS's 'no result', are skipped), by id."""
        return self.store.items(ids)

    def all_items(self) -> list[GalleryItem]:
        return self.store.all_items()

    def features(self) -> np.ndarray:
        """The committed features [N, D] float32 (memory-mapped read-only by the faiss store)."""
        return self.store.features()

    def ids_of_files(self, paths: Sequence[str | os.PathLike]) -> list[set[int]]:
        """For each file, the ids of the items that are that same file: by stored path, else by (device,
        inode), so a hard link or symlink elsewhere still matches (the shapes world hard-links its CIRR
        layout). The inode map is built once per open gallery, and only when a file has other links."""
        strings = [os.fspath(p) for p in paths]
        candidates = {s: {s, os.path.abspath(s), os.path.realpath(s)} for s in strings}
        by_path = self.store.lookup_paths(sorted({c for cs in candidates.values() for c in cs}))
        found = []
        for s in strings:
            ids = {item.id for c in candidates[s] for item in by_path.get(c, ())}
            if not ids and _has_other_links(s):
                ids = set(self._ids_byfile_key().get(file_key(s), ()))
            found.append(ids)
        return found

    def _ids_byfile_key(self) -> dict:
        if self._file_ids is None:
            self._file_ids = {}
            for item in self.all_items():
                self._file_ids.setdefault(file_key(item.path), []).append(item.id)
        return self._file_ids

    # --- adding ------------------------------------------------------------------------------------------------
    def add(self, names: Sequence[str], paths: Sequence[str | os.PathLike], features: np.ndarray) -> np.ndarray:
        """Append one batch: features [B, D] (L2-normalized) under new ids, all of it or nothing."""
        self._require_writable()
        features = np.ascontiguousarray(features, dtype=DTYPE)  # [B, D]
        self._check_batch(names, paths, features)
        ids = np.arange(self.count, self.count + len(names), dtype=np.int64)
        self.store.add(ids, features, list(names), [os.fspath(p) for p in paths])
        self._file_ids = None
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

    # --- the store's index (zscir-infer index --index / --rebuild) ---------------------------------------------
    @property
    def store_kind(self) -> str:
        return self.meta.get("store", DEFAULT_STORE)

    def check_index(self, spec: str, params: dict[str, float], n: int) -> None:
        """Raise IndexSpecError now for a spec or search parameter this store cannot use at n items."""
        self.store.check_index(spec, params, n)

    def index_is_fresh(self) -> bool:
        return self.store.index_is_fresh()

    def set_index_spec(self, spec: str, params: dict[str, float] | None = None) -> None:
        """Choose the index (and search parameter overrides) that the next build_index makes."""
        self._require_writable()
        self.store.set_index_spec(spec, params)

    def build_index(self, rebuild: bool = False) -> None:
        """Make every added item searchable from a new process (the store's persist)."""
        self._require_writable()
        self.store.persist(rebuild=rebuild)

    @property
    def index(self) -> faiss.Index | None:
        """The faiss store's search index; None for a store whose index lives in a server (milvus)."""
        return self.store.index

    def set_search_params(self, params: dict[str, float]) -> None:
        """Override efSearch / nprobe / k_factor_rf for this session's searches."""
        self.store.set_search_params(params)

    # --- searching -----------------------------------------------------------------------------------------------
    def search_items(
        self,
        xq: np.ndarray,
        k: int,
        exclude: Sequence[str | Collection[str | int] | None] | None = None,
        filter: str | None = None,
    ) -> tuple[np.ndarray, np.ndarray, list[list[GalleryItem | None]]]:
        """Top-k items for queries xq [Q, D] -> scores D [Q, k], ids I [Q, k], items [Q][k].

        exclude[q]: gallery items query q must not return, by name (str) or id (int) (CIRR ranks without
        the reference image); filter: an expression over the items' name and path (`stores.filters`).
        Missing ranks (k larger than what is left) have I = -1, D = -inf, item None. One batch search and
        one id -> item lookup for all queries.
        """
        xq = np.ascontiguousarray(xq, dtype=DTYPE)  # [Q, D]
        if xq.ndim != 2 or xq.shape[1] != self.embed_dim:
            raise GalleryError(
                f"Queries of shape {xq.shape} do not fit gallery {self.root} ([Q, {self.embed_dim}])."
            )
        D, I = self.store.search(xq, k, self._excluded_ids(exclude, xq.shape[0]), filter)
        by_id = self.items(I.ravel())
        return D, I, [[by_id.get(int(i)) for i in row] for row in I]

    def search(
        self,
        xq: np.ndarray,
        k: int,
        exclude: Sequence[str | Collection[str | int] | None] | None = None,
        filter: str | None = None,
    ) -> tuple[np.ndarray, np.ndarray, list[list[Path | None]]]:
        """`search_items` with paths [Q][k] (None for a missing rank) instead of items."""
        D, I, items = self.search_items(xq, k, exclude, filter)
        return D, I, [[Path(item.path) if item is not None else None for item in row] for row in items]

    def _excluded_ids(self, exclude, n_queries: int) -> list[set[int]] | None:
        if exclude is None:
            return None
        if len(exclude) != n_queries:
            raise GalleryError(f"exclude has {len(exclude)} entries for {n_queries} queries.")
        per_query = [[e] if isinstance(e, str | int) else list(e or ()) for e in exclude]
        names = sorted({e for entries in per_query for e in entries if isinstance(e, str)})
        by_name = self.lookup(names)
        return [{by_name[e].id if isinstance(e, str) else int(e) for e in entries
                 if not isinstance(e, str) or e in by_name} for entries in per_query]


def _has_other_links(path: str) -> bool:
    try:
        return os.stat(path).st_nlink > 1 or os.path.islink(path)
    except OSError:
        return False


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
