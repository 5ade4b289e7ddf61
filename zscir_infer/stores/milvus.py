"""The Milvus gallery store: a collection in Milvus Lite (embedded, a `.db` folder) or a Milvus server.

Needs the `[milvus]` extra (pymilvus, milvus-lite), imported only when a Milvus gallery is opened.

The gallery directory keeps `gallery.json` (store `milvus`; its `index` section names the `uri`, the
`collection`, the index spec and what was built); the items live in the collection:

    id INT64 (primary key) | vector FLOAT_VECTOR(D) | name VARCHAR | path VARCHAR | bundle_id VARCHAR

Vectors are float32 (Milvus Lite has no FLOAT16 vectors), the metric is IP on unit vectors (= cosine).
A `.db` uri is Milvus Lite, embedded in this process with no server (relative: inside the gallery
directory; one process at a time may open it); an `http(s)://` uri is Milvus standalone or a cluster.

Crash safety, the same contract as the faiss store: the committed items are ids 0 .. N-1. A batch is one
insert request (one WAL record in Milvus Lite, acknowledged once durable on a server), so after SIGKILL
it is all there or absent; should rows exist past the first missing id (a server that applied part of
an interrupted request), the writer deletes every row from that id on when it opens the gallery, and the
re-run encodes them again. Servers get `upsert` (a re-sent id replaces, never duplicates); Milvus Lite's
`insert` already keeps the last row of an id. A collection with an index starts unloaded after a restart:
the store loads it on open.
"""

# ruff: noqa: N806, E741 -- xq, D, I: FAISS's names

from __future__ import annotations

import json
import os
import re
import threading
from collections.abc import Callable, Collection, Iterable, Sequence
from pathlib import Path

import numpy as np

from zscir_infer import search as fsearch
from zscir_infer.stores import GalleryError, GalleryItem
from zscir_infer.stores.filters import filter_to_sql

DTYPE = np.dtype("<f4")
DEFAULT_URI = "gallery.db"
DEFAULT_COLLECTION = "zscir_gallery"
COLLECTION_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,254}$")
MAX_VARCHAR = 65_535  # Milvus's VARCHAR limit, in bytes
BUNDLE_ID_LENGTH = 256
ID_CHUNK = 1000  # ids or names per `in [...]` expression
INSERT_CHUNK = 2000  # rows per insert request when a batch is larger (bulk adds)
PAGE = 4000  # rows per query when reading the whole collection (by id range)
SCALAR_INDEXED = ("name", "path")
MAX_TOPK = 16_384  # Milvus's limit on k per search
# The `--index` vocabulary: zscir's named specs (as for faiss), Milvus index types, and faiss-style factories.
LITE_INDEXES = ("FLAT", "HNSW", "IVF_FLAT", "IVF_SQ8", "HNSW_SQ")
SERVER_ONLY_INDEXES = ("IVF_PQ", "DISKANN", "SCANN", "GPU_CAGRA", "GPU_IVF_FLAT", "GPU_IVF_PQ", "GPU_BRUTE_FORCE")
NAMED = {"auto": None, "flat": "FLAT", "hnsw": "HNSW", "ivf_flat": "IVF_FLAT", "ivfpq": "IVF_PQ", "ivf_pq": "IVF_PQ"}
# Milvus builds one index per segment: IVF lists follow FAISS's rule for a segment's rows, not the gallery's.
LITE_SEGMENT_ROWS = 100_000  # milvus_lite.constants.MAX_SEGMENT_ROWS
SERVER_SEGMENT_ROWS = 500_000  # a server seals segments at ~1 GiB: ~500k 512-d float32 vectors
HNSW_EF_CONSTRUCTION = 40  # faiss's default, so `hnsw` builds the same graph in both stores
SEARCH_PARAM_OF = {"HNSW": ("efSearch", "ef"), "HNSW_SQ": ("efSearch", "ef"), "IVF_FLAT": ("nprobe", "nprobe"),
                   "IVF_SQ8": ("nprobe", "nprobe"), "IVF_PQ": ("nprobe", "nprobe"), "GPU_IVF_FLAT": ("nprobe", "nprobe"),
                   "GPU_IVF_PQ": ("nprobe", "nprobe"), "GPU_CAGRA": ("efSearch", "itopk_size"),
                   "DISKANN": ("efSearch", "search_list"), "SCANN": ("nprobe", "nprobe")}


def is_lite(uri: str) -> bool:
    return uri.endswith(".db") and "://" not in uri


def resolve_uri(uri: str, root: Path) -> str:
    """A relative Milvus Lite path is inside the gallery directory; server URIs are used as they are."""
    if is_lite(uri):
        return str((root / uri) if not os.path.isabs(uri) else Path(uri))
    return uri


def check_uri(uri: str) -> None:
    if is_lite(uri) or re.match(r"^(https?|tcp|unix)://\S+$", uri):
        return
    raise GalleryError(f"--uri {uri!r} is neither a Milvus Lite file (ending in .db, e.g. ./gallery.db) nor a server "
                       "address (http://host:19530).")


def default_collection(root: Path) -> str:
    return DEFAULT_COLLECTION


def check_collection(name: str) -> None:
    if not COLLECTION_NAME.match(name):
        raise GalleryError(f"--collection {name!r} is not a Milvus collection name: use letters, digits and "
                           "underscores, starting with a letter or underscore (at most 255).")


def resolve_index(spec: str, n: int, d: int, lite: bool) -> dict:
    """The Milvus index for a spec at n vectors of dimension d -> {"index_type", "params"}.

    auto: FLAT below search.AUTO_FLAT_MAX vectors, IVF_FLAT above (nlist by faiss's rule for one segment's
    rows: Milvus indexes each segment on its own); faiss
    factory strings `Flat`, `IVF{n},Flat`, `HNSW{M}[,Flat]` map to their Milvus twins. Raises
    IndexSpecError for what the target cannot build."""
    text = spec.strip()
    name = text.lower()
    if name in NAMED:
        kind = NAMED[name] or ("IVF_FLAT" if n >= fsearch.AUTO_FLAT_MAX else "FLAT")
    elif text.upper() in LITE_INDEXES + SERVER_ONLY_INDEXES:
        kind = text.upper()
    elif name == "flat":
        kind = "FLAT"
    elif match := re.fullmatch(r"ivf(\d+),flat", name):
        return _target_check({"index_type": "IVF_FLAT", "params": {"nlist": int(match[1])}}, spec, lite)
    elif match := re.fullmatch(r"hnsw(\d+)(,flat)?", name):
        return _target_check({"index_type": "HNSW", "params": {"M": int(match[1]),
                                                                "efConstruction": HNSW_EF_CONSTRUCTION}}, spec, lite)
    else:
        raise fsearch.IndexSpecError(
            f"--index {spec!r} is not an index a Milvus gallery can build: use auto, flat, hnsw, ivf_flat, ivfpq, "
            f"a Milvus index type ({', '.join(LITE_INDEXES + SERVER_ONLY_INDEXES)}) or a faiss-style 'IVF1024,Flat' / "
            "'HNSW32'.")
    nlist = fsearch.ivf_lists(min(max(n, 1), LITE_SEGMENT_ROWS if lite else SERVER_SEGMENT_ROWS))
    params = {"FLAT": {}, "HNSW": {"M": fsearch.HNSW_M, "efConstruction": HNSW_EF_CONSTRUCTION},
              "HNSW_SQ": {"M": fsearch.HNSW_M, "efConstruction": HNSW_EF_CONSTRUCTION, "sq_type": "SQ8"},
              "IVF_FLAT": {"nlist": nlist}, "IVF_SQ8": {"nlist": nlist},
              "IVF_PQ": {"nlist": nlist, "m": fsearch.pq_subquantizers(d), "nbits": fsearch.PQ_BITS},
              "GPU_IVF_FLAT": {"nlist": nlist},
              "GPU_IVF_PQ": {"nlist": nlist, "m": fsearch.pq_subquantizers(d), "nbits": fsearch.PQ_BITS},
              "GPU_CAGRA": {"intermediate_graph_degree": 64, "graph_degree": 32}}.get(kind, {})
    return _target_check({"index_type": kind, "params": params}, spec, lite)


def _target_check(index: dict, spec: str, lite: bool) -> dict:
    if lite and index["index_type"] not in LITE_INDEXES:
        kind = index["index_type"]
        why = ("it accepts GPU indexes at creation and then silently searches by brute force"
               if kind.startswith("GPU_") else "it does not implement it")
        raise fsearch.IndexSpecError(
            f"--index {spec!r} ({kind}) cannot be built by Milvus Lite ({why}). Use one of "
            f"{', '.join(i.lower() for i in LITE_INDEXES)} or auto with a .db uri, or a Milvus server "
            f"(--uri http://host:19530{', with GPU query nodes' if kind.startswith('GPU_') else ''}) for {kind}.")
    return index


def search_params_for(index_type: str, params: dict[str, float], k: int) -> dict:
    """Milvus search parameters from zscir's faiss-named ones (efSearch, nprobe) for this index type."""
    ours, theirs = SEARCH_PARAM_OF.get(index_type, (None, None))
    out: dict = {}
    if ours == "efSearch":
        out[theirs] = max(int(params.get("efSearch", fsearch.HNSW_EF_SEARCH)), k)  # HNSW needs ef >= k
    elif ours == "nprobe":
        out[theirs] = int(params.get("nprobe", fsearch.IVF_NPROBE))
    return {"metric_type": "IP", "params": out}


def check_search_params(index_type: str, params: dict[str, float]) -> None:
    ours = SEARCH_PARAM_OF.get(index_type, (None, None))[0]
    for name in params:
        if name != ours:
            raise fsearch.IndexSpecError(
                f"Search parameter {name} does not apply to a Milvus {index_type} index "
                f"({'it takes ' + ours if ours else 'it takes none'}); HNSW takes --ef-search, IVF takes --nprobe.")


def quote(value: str) -> str:
    """A Milvus expression string literal (double quotes, backslash escapes)."""
    return json.dumps(value, ensure_ascii=False)


# --- one Milvus Lite server per .db in this process, shared by the stores that open it -------------------------
_lite_lock = threading.Lock()
_lite_users: dict[str, int] = {}


def _require_pymilvus(uri: str):
    try:
        from pymilvus import MilvusClient

        if is_lite(uri):
            import milvus_lite  # noqa: F401
    except ImportError as exc:
        raise GalleryError("This gallery uses the Milvus store, which needs pymilvus and milvus-lite: "
                           "pip install 'zscir[milvus]'.") from exc
    return MilvusClient


def _client(uri: str):
    MilvusClient = _require_pymilvus(uri)  # noqa: N806 -- the class
    if is_lite(uri):
        Path(uri).parent.mkdir(parents=True, exist_ok=True)
        with _lite_lock:
            _lite_users[os.path.abspath(uri)] = _lite_users.get(os.path.abspath(uri), 0) + 1
    try:
        return MilvusClient(uri=uri)
    except Exception as exc:
        _release(uri)
        hint = ("another process has this Milvus Lite gallery open (one process at a time: stop the other "
                "zscir-infer command first)" if is_lite(uri) and _locked(uri) else
                "check the address, and that the server is up" if not is_lite(uri) else "see the error above")
        raise GalleryError(f"Cannot open Milvus at {uri}: {type(exc).__name__}: {_message(exc)}; {hint}.") from exc


def _locked(uri: str) -> bool:
    import fcntl

    lock = Path(uri) / "LOCK"
    if not lock.exists():
        return False
    with open(lock, "rb") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return True
        fcntl.flock(f, fcntl.LOCK_UN)
    return False


def _release(uri: str) -> None:
    """Stop this process's Milvus Lite server for uri when its last store closes (frees the .db lock)."""
    if not is_lite(uri):
        return
    key = os.path.abspath(uri)
    with _lite_lock:
        _lite_users[key] = _lite_users.get(key, 1) - 1
        last = _lite_users[key] <= 0
        if last:
            del _lite_users[key]
    if last:
        from milvus_lite import server_manager_instance

        server_manager_instance.release_server(key)


def _message(exc: Exception) -> str:
    return getattr(exc, "message", None) or str(exc)


class MilvusStore:
    """The `milvus` backend of a Gallery (see `zscir_infer.stores.VectorStore`)."""

    kind = "milvus"

    def __init__(self, root: Path, info: dict, dim: int, writable: bool, save_meta: Callable[[], None],
                 index_device: str = "auto"):
        """info: gallery.json's `index` section (uri, collection, bundle_id, spec, params, built, count).
        index_device is not used: Milvus places its indexes itself (a GPU index type is a --index spec)."""
        self.root, self.info, self.dim, self.writable = root, info, dim, writable
        self._save_meta = save_meta
        self.uri = resolve_uri(info["uri"], root)
        self.lite = is_lite(self.uri)
        self.collection = info["collection"]
        self._session_params: dict[str, float] = {}
        self._exists = False
        self._client = _client(self.uri)
        try:
            self._open()
        except BaseException:
            self.close()
            raise

    # --- creation (Gallery.create) -----------------------------------------------------------------------------
    @staticmethod
    def new_section(spec: str, dim: int, *, root: Path, bundle_id: str, uri: str | None = None,
                    collection: str | None = None) -> dict:
        """The `index` section of a new Milvus gallery, every option checked before anything is written."""
        uri = uri or DEFAULT_URI
        check_uri(uri)
        collection = collection or default_collection(root)
        check_collection(collection)
        resolve_index(spec, 0, dim, is_lite(uri))
        if len(bundle_id.encode()) > BUNDLE_ID_LENGTH:
            raise GalleryError(f"Bundle id {bundle_id[:40]!r}... is longer than {BUNDLE_ID_LENGTH} bytes.")
        _require_pymilvus(uri)
        if not is_lite(uri):  # a wrong address fails now, before a gallery folder names it
            client = _client(uri)
            client.close()
        return {"spec": spec, "params": {}, "uri": uri, "collection": collection, "bundle_id": bundle_id,
                "built": None, "factory": None, "count": 0}

    @staticmethod
    def create_files(directory: Path) -> None:
        """Nothing yet: the collection is created by the first writable open (a .db inside the gallery
        directory must be opened at its final path, after the directory is renamed into place)."""

    def _schema(self):
        from pymilvus import DataType, MilvusClient

        schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field("id", DataType.INT64, is_primary=True)
        schema.add_field("vector", DataType.FLOAT_VECTOR, dim=self.dim)
        schema.add_field("name", DataType.VARCHAR, max_length=MAX_VARCHAR)
        schema.add_field("path", DataType.VARCHAR, max_length=MAX_VARCHAR)
        schema.add_field("bundle_id", DataType.VARCHAR, max_length=BUNDLE_ID_LENGTH)
        return schema

    def _index_params(self, index: dict, scalar: bool = False):
        """The vector index; with scalar, INVERTED indexes on name and path too (resume and exclusion look
        names and paths up per batch: without them every lookup scans the collection)."""
        params = self._client.prepare_index_params()
        params.add_index(field_name="vector", index_type=index["index_type"], metric_type="IP",
                         params=dict(index["params"]))
        if scalar:
            for field in SCALAR_INDEXED:
                params.add_index(field_name=field, index_type="INVERTED")
        return params

    def _call(self, what: str, fn, *args, **kwargs):
        """A Milvus call, its errors turned into a GalleryError naming the gallery and the operation."""
        try:
            return fn(*args, **kwargs)
        except GalleryError:
            raise
        except Exception as exc:
            if type(exc).__name__ not in ("MilvusException", "ParamError", "DataTypeNotMatchException",
                                          "MilvusUnavailableException", "DataNotMatchException"):
                raise
            raise GalleryError(f"Milvus ({self.uri}, collection {self.collection}) refused to {what}: "
                               f"{_message(exc)}") from exc

    def _open(self) -> None:
        c, name = self._client, self.collection
        if not self.exists:
            if self.info["count"]:
                raise GalleryError(f"Gallery {self.root} had {self.info['count']} items in Milvus collection {name} at "
                                   f"{self.uri}, which no longer exists: rebuild it with zscir-infer index.")
            self._count = 0
            if not self.writable:
                return
            index = resolve_index(self.info["spec"], 0, self.dim, self.lite)
            self._call("create the collection", c.create_collection, name, schema=self._schema(),
                       index_params=self._index_params(index, scalar=True), consistency_level="Strong")
            self._exists = True
            self.info["built"] = index
            self._save_meta()
        else:
            self._check_schema()
        self._ensure_loaded()
        self._count = self._committed_count()
        self._check_bundle()

    @property
    def exists(self) -> bool:
        """Whether the collection exists (asked once: only this store's writer creates it)."""
        if not self._exists:
            self._exists = self._call("list collections", self._client.has_collection, self.collection)
        return self._exists

    def _check_schema(self) -> None:
        desc = self._call("describe the collection", self._client.describe_collection, self.collection)
        fields = {f["name"]: f for f in desc["fields"]}
        vector = fields.get("vector")
        missing = {"id", "vector", "name", "path", "bundle_id"} - set(fields)
        if missing:
            raise GalleryError(f"Milvus collection {self.collection} at {self.uri} is not a zscir gallery (no field "
                               f"{sorted(missing)[0]!r}): choose another --collection.")
        if int(vector["params"]["dim"]) != self.dim:
            raise GalleryError(f"Milvus collection {self.collection} at {self.uri} holds {vector['params']['dim']}-d "
                               f"vectors, this gallery's bundle makes {self.dim}-d ones: choose another --collection.")

    def _check_bundle(self) -> None:
        if not self._count:
            return
        rows = self._call("read an item", self._client.query, self.collection, filter="id >= 0",
                          output_fields=["bundle_id"], limit=1)
        if rows and rows[0]["bundle_id"] != self.info["bundle_id"]:
            from zscir_infer.gallery import GalleryBundleMismatch

            raise GalleryBundleMismatch(
                f"Milvus collection {self.collection} at {self.uri} holds features of bundle {rows[0]['bundle_id']}, "
                f"not of this gallery's bundle {self.info['bundle_id']}: features of different encoders are not "
                "comparable. Choose another --collection.")

    def _ensure_loaded(self) -> None:
        """Load the collection (after a restart, or a crash, Milvus Lite starts it unloaded)."""
        from pymilvus.client.types import LoadState

        state = self._call("report its load state", self._client.get_load_state, self.collection)["state"]
        if state != LoadState.Loaded:
            self._call("load the collection", self._client.load_collection, self.collection)

    def _count_where(self, expression: str) -> int:
        rows = self._call("count items", self._client.query, self.collection, filter=expression,
                          output_fields=["count(*)"])
        return int(rows[0]["count(*)"])

    def _committed_count(self) -> int:
        """N, with the committed items ids 0 .. N-1; a writer deletes rows past the first missing id.

        Ids are unique (a primary key that Milvus Lite overwrites, upserts on a server), so ids 0 .. m-1 are
        all present exactly when m rows have an id below m: the first missing id is found by bisection."""
        n = self._count_where("")
        if n == 0 or self._count_where(f"id >= {n}") == 0:
            return n  # n rows, every id < n, ids unique: exactly 0 .. n-1
        lo, hi = 0, n  # ids 0 .. lo-1 present; some id below hi missing
        while hi - lo > 1:
            mid = (lo + hi) // 2
            lo, hi = (mid, hi) if self._count_where(f"id < {mid}") == mid else (lo, mid)
        first = lo  # ids 0 .. lo-1 present, id lo missing
        if self.writable:  # a reader sees the contiguous prefix; the writer removes the rest
            self._call("delete an interrupted batch", self._client.delete, self.collection, filter=f"id >= {first}")
        return first

    @property
    def count(self) -> int:
        return self._count

    def close(self) -> None:
        client, self._client = getattr(self, "_client", None), None
        if client is not None:
            try:
                client.close()
            finally:
                _release(self.uri)

    def remove_leftovers(self) -> None:
        """Nothing to remove: Milvus keeps no temporary files of zscir's."""

    # --- metadata ------------------------------------------------------------------------------------------------
    def _query(self, expression: str, fields: Sequence[str] = ("id", "name", "path")) -> list[dict]:
        if not self.exists:
            return []
        return self._call("query items", self._client.query, self.collection, filter=expression,
                          output_fields=list(fields))

    def _select(self, column: str, values: Sequence) -> Iterable[GalleryItem]:
        values = list(values)
        for lo in range(0, len(values), ID_CHUNK):
            chunk = values[lo : lo + ID_CHUNK]
            literals = ",".join(quote(v) if isinstance(v, str) else str(int(v)) for v in chunk)
            for row in self._query(f"{column} in [{literals}]"):
                if row["id"] < self._count:
                    yield GalleryItem(int(row["id"]), row["name"], row["path"])

    def lookup(self, names: Sequence[str]) -> dict[str, GalleryItem]:
        return {item.name: item for item in self._select("name", names)}

    def lookup_paths(self, paths: Sequence[str]) -> dict[str, list[GalleryItem]]:
        found: dict[str, list[GalleryItem]] = {}
        for item in sorted(self._select("path", paths), key=lambda it: it.id):
            found.setdefault(item.path, []).append(item)
        return found

    def items(self, ids: Iterable[int]) -> dict[int, GalleryItem]:
        wanted = sorted({int(i) for i in ids if 0 <= i < self._count})
        return {item.id: item for item in self._select("id", wanted)}

    def _iterate(self, fields: Sequence[str], expression: str | None = None) -> Iterable[dict]:
        """The committed rows (ids 0 .. N-1) a page of ids at a time, in id order within each page."""
        for lo in range(0, self._count, PAGE):
            where = f"id >= {lo} and id < {min(lo + PAGE, self._count)}"
            rows = self._query(where + (f" and ({expression})" if expression else ""), fields)
            yield from sorted(rows, key=lambda r: r["id"])

    def all_items(self) -> list[GalleryItem]:
        return [GalleryItem(int(r["id"]), r["name"], r["path"]) for r in self._iterate(["id", "name", "path"])]

    def filtered_ids(self, expression: str) -> np.ndarray:
        filter_to_sql(expression)  # the same subset (and the same errors) as the faiss store
        return np.array([int(r["id"]) for r in self._iterate(["id"], expression)], dtype=np.int64)

    # --- vectors -------------------------------------------------------------------------------------------------
    def features(self) -> np.ndarray:
        """The stored vectors [N, D] float32 in id order (read from Milvus: one pass over the collection)."""
        out = np.empty((self._count, self.dim), dtype=DTYPE)
        for row in self._iterate(["id", "vector"]):
            out[row["id"]] = row["vector"]
        return out

    def add(self, ids: np.ndarray, vectors: np.ndarray, names: Sequence[str], paths: Sequence[str]) -> None:
        if len(ids) and (ids[0] != self._count or np.any(np.diff(ids) != 1)):
            raise GalleryError(f"The milvus store takes consecutive ids from {self._count}, got {ids[:3]}...")
        for text in (*names, *paths):
            if len(text.encode("utf-8")) > MAX_VARCHAR:
                raise GalleryError(f"{text[:60]!r}... is longer than Milvus's {MAX_VARCHAR} bytes per string: "
                                   "shorten the file name or path.")
        if not len(ids):
            return
        if not self.exists:
            raise GalleryError(f"Gallery {self.root} has no collection yet: open it writable to add items.")
        vectors = np.ascontiguousarray(vectors, dtype=DTYPE)  # [B, D] float32: Milvus Lite has no FLOAT16
        write = self._client.insert if self.lite else self._client.upsert
        bundle = self.info["bundle_id"]
        for lo in range(0, len(ids), INSERT_CHUNK):  # one request per chunk: each all there or absent
            rows = [{"id": int(ids[i]), "vector": vectors[i], "name": names[i], "path": paths[i], "bundle_id": bundle}
                    for i in range(lo, min(lo + INSERT_CHUNK, len(ids)))]
            self._call("insert items", write, self.collection, rows)
            self._count += len(rows)

    # --- the index -----------------------------------------------------------------------------------------------
    def check_index(self, spec: str, params: dict[str, float], n: int) -> None:
        index = resolve_index(spec, n, self.dim, self.lite)
        check_search_params(index["index_type"], params)

    def index_is_fresh(self) -> bool:
        built = self.info.get("built")
        wanted = resolve_index(self.info["spec"], self._count, self.dim, self.lite)
        return built == wanted and self.info["count"] == self._count

    def set_index_spec(self, spec: str, params: dict[str, float] | None = None) -> None:
        params = dict(params if params is not None else self.info["params"])
        self.check_index(spec, params, self._count)
        self.info["spec"], self.info["params"] = spec, params
        self._save_meta()

    def persist(self, rebuild: bool = False) -> None:
        """Flush, and (re)create the index when the spec resolves to another one at this size (auto turns
        FLAT into IVF_FLAT past search.AUTO_FLAT_MAX) or with rebuild; then load."""
        if not self.exists:
            return
        c, name = self._client, self.collection
        self._call("flush", c.flush, name)
        wanted = resolve_index(self.info["spec"], self._count, self.dim, self.lite)
        if wanted != self.info.get("built") or rebuild:
            self._call("release the collection", c.release_collection, name)
            for index_name in self._call("list indexes", c.list_indexes, name, field_name="vector"):
                self._call("drop the old index", c.drop_index, name, index_name)
            self._call(f"create a {wanted['index_type']} index", c.create_index, name, self._index_params(wanted))
            self.info["built"] = wanted
        self._ensure_loaded()
        self.info["count"], self.info["factory"] = self._count, self.factory
        self._save_meta()

    @property
    def index(self) -> None:
        """No in-process index: Milvus holds it."""
        return None

    @property
    def factory(self) -> str | None:
        built = self.info.get("built")
        return f"milvus:{built['index_type']}" if built and self._count else None

    def set_search_params(self, params: dict[str, float]) -> None:
        """Override efSearch / nprobe for this session's searches."""
        built = self.info.get("built") or {"index_type": "FLAT"}
        check_search_params(built["index_type"], params)
        self._session_params.update(params)

    def search(
        self, xq: np.ndarray, k: int, exclude: Sequence[Collection[int]] | None = None, filter: str | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        banned = fsearch.excluded_matrix(exclude, xq.shape[0])  # [Q, E]
        D, I = fsearch.no_results(xq.shape[0], k)
        if filter is not None:
            filter_to_sql(filter)  # only the name/path subset both stores share; errors as the faiss store's
        if not self._count or k <= 0:
            return D, I
        k_search = fsearch.search_depth(banned, k, self._count)
        if k_search > MAX_TOPK:
            raise GalleryError(f"k = {k} (plus excluded items) exceeds Milvus's limit of {MAX_TOPK} results per query.")
        built = self.info.get("built") or {"index_type": "FLAT"}
        params = search_params_for(built["index_type"], {**self.info["params"], **self._session_params}, k_search)
        # Items past the committed count (a writer's batch in flight) are never returned.
        expression = f"id < {self._count}" + (f" and ({filter})" if filter is not None else "")
        hits = self._call("search", self._client.search, self.collection, data=np.ascontiguousarray(xq, dtype=DTYPE),
                          limit=k_search, filter=expression, output_fields=["id"], search_params=params)
        D_all, I_all = fsearch.no_results(xq.shape[0], k_search)
        for q, row in enumerate(hits):
            for r, hit in enumerate(row):
                D_all[q, r], I_all[q, r] = hit["distance"], hit["id"]
        return fsearch.drop_excluded(D_all, I_all, banned, k)
