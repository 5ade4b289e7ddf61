"""Distributed indexing on Ray Data: `zscir-infer index SRC --engine ray [--ray-address auto]`.

Needs the `[ray]` extra (ray[data], pyarrow), imported only here. The images left to add (after the
gallery's resume plan) are cut into shards of SHARD_IMAGES in source order; a Ray Data pipeline
(`from_items` file list -> `map_batches` with an actor pool, each actor holding the runtime's image
encoder: one per CPU, or one per GPU with --device cuda) decodes and encodes them; the driver writes each
finished shard as one Parquet file (name, path, vector float32[D], error), atomically, under
`G/ray-shards/`, then inserts it into the gallery's store (FAISS or Milvus) in source order and deletes it.

Resumable by shard: a killed run leaves finished shard files; the next run inserts what they hold that the
gallery still lacks before encoding the rest. Ids are given at insertion in source order, so a Ray index
equals an in-process one (the same ids; the same vectors up to the encoder's run-to-run noise).

Locally Ray starts on loopback (`_node_ip_address="127.0.0.1"`: it otherwise probes an outside
address), with this machine's CPUs, and is shut down at the end; with --ray-address the job joins that
cluster (every node then needs zscir and the bundle at the same path).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from zscir_infer.atomic import atomic_path
from zscir_infer.errors import ZscirError
from zscir_infer.gallery import Gallery
from zscir_infer.preprocess import DEFAULT_MAX_PIXELS
from zscir_infer.sources import ImageEntry

SHARD_DIR = "ray-shards"
SHARD_IMAGES = 1024
SHARD_PREFIX, SHARD_SUFFIX = "shard-", ".parquet"


class RayIndexingError(ZscirError):
    """Ray is missing or could not run the job; the message says what to do."""


def _import_ray():
    try:
        import pyarrow  # noqa: F401
        import ray
        import ray.data  # noqa: F401
    except ImportError as exc:
        raise RayIndexingError("--engine ray needs Ray Data: pip install 'zscir[ray]' (ray[data], pyarrow).") from exc
    return ray


class ImageEncoder:
    """A Ray Data actor: the runtime's image encoder, decoding and encoding one batch of files at a time."""

    def __init__(self, bundle: str, backend: str, device: str, precision: str, batch_size: int, max_pixels: int,
                 threads: int):
        from zscir_infer.runtime import Runtime

        self.runtime = Runtime(bundle, backend, device, precision, batch_size, threads=threads)
        self.max_pixels = max_pixels

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from zscir_infer.indexing import _decode

        names, paths = [str(n) for n in batch["name"]], [str(p) for p in batch["path"]]
        decoded = [_decode(ImageEntry(n, Path(p)), self.runtime.bundle.preprocess, self.max_pixels)
                   for n, p in zip(names, paths, strict=True)]
        good = [i for i, d in enumerate(decoded) if not isinstance(d, str)]
        vectors = np.zeros((len(names), self.runtime.embed_dim), dtype=np.float32)  # [B, D]
        if good:
            vectors[good] = self.runtime.encode_pixels(np.stack([decoded[i] for i in good]))
        errors = np.array([d if isinstance(d, str) else "" for d in decoded], dtype=object)
        return {"name": np.array(names, dtype=object), "path": np.array(paths, dtype=object), "vector": vectors,
                "error": errors, "shard": batch["shard"]}


def shard_key(entries: Sequence[ImageEntry]) -> str:
    digest = hashlib.sha256()
    for e in entries:
        digest.update(f"{e.name}\0{e.path}\n".encode("utf-8", "surrogateescape"))
    return digest.hexdigest()[:16]


def write_shard(path: Path, rows: dict[str, list]) -> None:
    """One shard as Parquet (name, path, vector list<float32>[D], error), written atomically."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    vectors = np.asarray(rows["vector"], dtype=np.float32)  # [S, D]
    table = pa.table({
        "name": pa.array(rows["name"], pa.string()),
        "path": pa.array(rows["path"], pa.string()),
        "vector": pa.FixedSizeListArray.from_arrays(pa.array(vectors.ravel(), pa.float32()), vectors.shape[1]),
        "error": pa.array(rows["error"], pa.string()),
    })
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)


def read_shard(path: Path) -> tuple[list[str], list[str], np.ndarray, list[str]]:
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    vectors = table.column("vector").combine_chunks()
    dim = vectors.type.list_size
    flat = vectors.values.to_numpy(zero_copy_only=False)
    return (table.column("name").to_pylist(), table.column("path").to_pylist(),
            flat.reshape(-1, dim).astype(np.float32, copy=False), table.column("error").to_pylist())


def _insert_shard(gallery: Gallery, path: Path, wanted: dict[str, str], batch_size: int) -> tuple[int, list]:
    """Insert a shard's rows the gallery still lacks (wanted: name -> path), in order; then delete it."""
    names, paths, vectors, errors = read_shard(path)
    keep = [i for i, (n, p) in enumerate(zip(names, paths, strict=True)) if wanted.get(n) == p]
    bad = [(paths[i], errors[i]) for i in keep if errors[i]]
    good = [i for i in keep if not errors[i]]
    for lo in range(0, len(good), batch_size):
        rows = good[lo : lo + batch_size]
        gallery.add([names[i] for i in rows], [paths[i] for i in rows], vectors[rows])
    for i in keep:
        wanted.pop(names[i], None)
    path.unlink()
    return len(good), bad


def add_images_ray(
    gallery: Gallery,
    entries: Sequence[ImageEntry],
    bundle: str | os.PathLike,
    *,
    batch_size: int,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    address: str | None = None,
    backend: str = "ort",
    device: str = "cpu",
    precision: str = "fp32",
    actors: int | None = None,
    shard_images: int = SHARD_IMAGES,
    on_progress: Callable[[int], None] | None = None,
) -> tuple[int, list[tuple[str, str]]]:
    """`indexing.add_images` on Ray Data -> (images added, bad files as (path, reason)); see the module doc."""
    ray = _import_ray()
    shard_dir = gallery.root / SHARD_DIR
    shard_dir.mkdir(exist_ok=True)
    wanted = {e.name: os.fspath(e.path) for e in entries}
    added, bad = 0, []
    for leftover in sorted(shard_dir.glob(f"{SHARD_PREFIX}*{SHARD_SUFFIX}")):  # a killed run's finished shards
        n, b = _insert_shard(gallery, leftover, wanted, batch_size)
        added, bad = added + n, bad + b
        if on_progress is not None:
            on_progress(n + len(b))
    todo = [e for e in entries if e.name in wanted]
    shards = [todo[lo : lo + shard_images] for lo in range(0, len(todo), shard_images)]
    if not shards:
        return added, bad
    started = _start_ray(ray, address)
    try:
        n, b = _encode_shards(ray, gallery, shards, shard_dir, wanted, os.fspath(bundle), batch_size, max_pixels,
                              backend, device, precision, actors, on_progress)
    finally:
        if started:
            ray.shutdown()
    return added + n, bad + b


def _start_ray(ray, address: str | None) -> bool:
    """Connect to (or start) Ray -> whether this call started it (and so shuts it down)."""
    if ray.is_initialized():
        return False
    try:
        if address is None:
            ray.init(address="local", _node_ip_address="127.0.0.1", num_cpus=os.cpu_count() or 1,
                     include_dashboard=False, log_to_driver=False, configure_logging=False)
        else:
            ray.init(address=address, log_to_driver=False, configure_logging=False)
    except Exception as exc:
        raise RayIndexingError(f"Ray could not start{' at ' + address if address else ''}: {exc}. Check "
                               "--ray-address (auto joins this machine's cluster; omit it for a local one).") from exc
    return True


def _encode_shards(ray, gallery, shards, shard_dir, wanted, bundle, batch_size, max_pixels, backend, device,
                   precision, actors, on_progress) -> tuple[int, list]:
    """Encode every shard on an actor pool; each shard is written, then inserted, as soon as it is complete."""
    from ray.data import DataContext

    DataContext.get_current().execution_options.preserve_order = True  # rows come back in source order
    gpus = device.startswith("cuda")
    resources = ray.cluster_resources()
    pool = actors or max(1, int(resources.get("GPU" if gpus else "CPU", 1)))
    keys = [shard_key(s) for s in shards]
    items = [{"name": e.name, "path": os.fspath(e.path), "shard": k} for k, s in zip(keys, shards, strict=True)
             for e in s]
    ds = ray.data.from_items(items, override_num_blocks=max(1, min(len(items) // max(batch_size, 1), 4 * pool)))
    ds = ds.map_batches(
        ImageEncoder, fn_constructor_args=(bundle, backend, device, precision, batch_size, max_pixels,
                                           1 if not gpus else None),
        batch_size=batch_size, batch_format="numpy", concurrency=pool,
        num_cpus=0 if gpus else 1, num_gpus=1 if gpus else 0)
    added, bad = 0, []
    pending: dict[str, list] = {"name": [], "path": [], "vector": [], "error": []}
    current = 0  # index of the shard being filled
    try:
        for batch in ds.iter_batches(batch_size=batch_size, batch_format="numpy"):
            for i in range(len(batch["name"])):
                if batch["shard"][i] != keys[current]:
                    raise RayIndexingError("Ray Data returned rows out of source order; re-run the command.")
                for column in pending:
                    pending[column].append(batch[column][i])
                if len(pending["name"]) == len(shards[current]):
                    path = shard_dir / f"{SHARD_PREFIX}{current:06d}-{keys[current]}{SHARD_SUFFIX}"
                    write_shard(path, pending)
                    n, b = _insert_shard(gallery, path, wanted, batch_size)
                    added, bad = added + n, bad + b
                    if on_progress is not None:
                        on_progress(len(shards[current]))
                    pending = {column: [] for column in pending}
                    current += 1
    except ZscirError:
        raise
    except Exception as exc:
        if type(exc).__module__.startswith("ray"):
            raise RayIndexingError(f"The Ray job failed: {exc}. Every shard inserted so far is kept: re-run the "
                                   "same command to resume.") from exc
        raise
    return added, bad
