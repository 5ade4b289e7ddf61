"""Building a gallery from image files: `index_images`, what `zscir-infer index` runs.

    from zscir_infer import index_images
    summary = index_images("photos/", bundle="zscir-out/bundle", gallery="zscir-out/gallery")
    summary.count, summary.added, summary.bad                     # an IndexSummary

The policy: a new gallery is created; an existing one is opened for writing and a source it has not
indexed needs `add=True`; re-running an interrupted call resumes it (items already committed are
skipped, the rest decoded and encoded, the index rebuilt from the stored features); `rebuild=True`
rebuilds the index from the stored features without re-encoding (no source needed). Bad files are
reported in the summary and skipped. Decoding runs in a thread pool a few batches ahead of the encoder
(Pillow releases the GIL while decoding and resizing); each batch is committed on its own, so an
interrupted run keeps every batch it finished.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from zscir_infer.contract import PreprocessConfig
from zscir_infer.gallery import METADATA, Gallery, GalleryError
from zscir_infer.preprocess import DEFAULT_MAX_PIXELS, ImageLoadError, load_and_preprocess
from zscir_infer.runtime import DEFAULT_BATCH_SIZE, Runtime
from zscir_infer.search import index_device_for
from zscir_infer.sources import IMAGE_EXTENSIONS, ImageEntry, SourceError, SourceListing, list_images
from zscir_infer.stores import DEFAULT_STORE

PREFETCH_BATCHES = 2  # batches decoding while one is encoded
MAX_DEFAULT_WORKERS = 8
DEFAULT_WORKERS = min(MAX_DEFAULT_WORKERS, os.cpu_count() or 1)
ENGINES = ("local", "ray")


@dataclass
class IndexSummary:
    """What one `index_images` call did (`zscir-infer index --json` prints `to_json()`)."""

    gallery: str
    count: int  # images in the gallery now
    index_spec: str
    index_factory: str | None  # None: the gallery is empty
    added: int = 0
    present: int = 0  # skipped: already in the gallery (a resumed or repeated run)
    bad: list[tuple[str, str]] = field(default_factory=list)  # skipped: (path, reason)
    seconds: float = 0.0

    def to_json(self) -> dict:
        return {**asdict(self), "bad": [{"path": p, "reason": r} for p, r in self.bad]}


def index_images(
    source: str | os.PathLike | None,
    *,
    bundle: str | os.PathLike | Runtime,
    gallery: str | os.PathLike,
    add: bool = False,
    rebuild: bool = False,
    index: str | None = None,
    search_params: dict[str, float] | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    workers: int = DEFAULT_WORKERS,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    backend: str = "ort",
    device: str = "cpu",
    precision: str = "fp32",
    on_progress: Callable[[int, int], None] | None = None,
    on_building: Callable[[str], None] | None = None,
    store: str | None = None,
    uri: str | None = None,
    collection: str | None = None,
    engine: str = "local",
    ray_address: str | None = None,
) -> IndexSummary:
    """Encode the images of `source` into `gallery` and bring its index up to date -> an IndexSummary.

    source: a folder (recursive), a list file (one path per line) or an official image_splits JSON;
    None with rebuild. bundle: a bundle directory, or an open Runtime (its backend, device and
    precision then apply). index: a spec (`auto`, `flat`, `hnsw`, `ivfpq` or a faiss factory string);
    None keeps the gallery's (auto for a new one). search_params: efSearch / nprobe to store.
    on_progress(done, total) after each batch; on_building(spec) before the index is built.
    store: the vector store of a new gallery, `faiss` (default) or `milvus` (uri: a Milvus Lite `.db`,
    relative to the gallery, or http://host:19530; collection: its name); an existing gallery keeps its own.
    engine: `local` (this process) or `ray` (Ray Data actors encode, Parquet shards, then bulk insert;
    `zscir_infer.ray_indexing`), ray_address: a Ray cluster (default: a local one on loopback).
    """
    if engine not in ENGINES:
        raise SourceError(f"--engine {engine!r}: use one of {', '.join(ENGINES)}.")
    if source is None and not rebuild:
        raise SourceError("Give a source (a folder, list file or image_splits JSON), or rebuild=True "
                          "(--rebuild) to rebuild the index only.")
    start, gallery = time.perf_counter(), Path(gallery)
    listing = list_images(source) if source is not None else None
    if listing is not None and not listing.entries and not listing.bad:
        raise SourceError(f"No images in {source} (extensions {', '.join(sorted(IMAGE_EXTENSIONS))}).")
    with contextlib.ExitStack() as stack:
        runtime = None
        if listing is not None:
            runtime = bundle if isinstance(bundle, Runtime) else stack.enter_context(
                Runtime(bundle, backend, device, precision, batch_size))
        bundle_path = bundle.bundle.path if isinstance(bundle, Runtime) else Path(bundle)
        index_device = index_device_for(runtime.device if runtime is not None else device)
        g = stack.enter_context(_open_gallery(gallery, runtime, bundle_path, listing, add, index,
                                              StoreChoice(store, uri, collection), index_device))
        if index is not None or search_params:
            _set_index(g, index, dict(search_params or {}), len(listing.entries) if listing else 0)
        summary = IndexSummary(str(g.root), 0, g.meta["index"]["spec"], None,
                               bad=list(listing.bad) if listing else [])
        if listing is not None:
            plan = plan_additions(g, listing.entries)
            summary.present, summary.bad = plan.present, summary.bad + plan.bad
            if engine == "ray":
                from zscir_infer.ray_indexing import add_images_ray

                summary.added, decode_bad = add_images_ray(
                    g, plan.todo, bundle_path, batch_size=batch_size, max_pixels=max_pixels, address=ray_address,
                    backend=backend, device=device, precision=precision,
                    on_progress=_counter(on_progress, len(plan.todo)))
            else:
                summary.added, decode_bad = add_images(
                    g, plan.todo, runtime.encode_pixels, runtime.bundle.preprocess, batch_size=batch_size,
                    workers=workers, max_pixels=max_pixels, on_progress=_counter(on_progress, len(plan.todo)))
            summary.bad += decode_bad
        if on_building is not None:
            on_building(g.meta["index"]["spec"])
        g.build_index(rebuild=rebuild)
        summary.count, summary.index_factory = g.count, g.meta["index"]["factory"]
    summary.seconds = time.perf_counter() - start
    return summary


def _counter(on_progress: Callable[[int, int], None] | None, total: int) -> Callable[[int], None] | None:
    """A per-batch callback (images in the batch) that reports (done, total) to on_progress."""
    if on_progress is None:
        return None
    done = 0

    def advance(n: int) -> None:
        nonlocal done
        done += n
        on_progress(done, total)

    return advance


def _set_index(gallery: Gallery, spec: str | None, params: dict[str, float], n_new: int) -> None:
    """Store the index spec and search parameters, checked for the size the gallery will have."""
    spec = spec or gallery.meta["index"]["spec"]
    params = {**gallery.meta["index"]["params"], **params}
    gallery.check_index(spec, params, gallery.count + n_new)
    gallery.set_index_spec(spec, params)


@dataclass(frozen=True)
class StoreChoice:
    """--store, --uri, --collection as given (None: not given)."""

    store: str | None = None
    uri: str | None = None
    collection: str | None = None

    def check_against(self, gallery: Gallery) -> None:
        """An existing gallery keeps its store: options that say otherwise are refused, not ignored."""
        kind = gallery.store_kind
        section = gallery.meta["index"]
        wanted = {"store": (self.store, kind), "uri": (self.uri, section.get("uri")),
                  "collection": (self.collection, section.get("collection"))}
        for option, (given, actual) in wanted.items():
            if given is not None and given != actual:
                gallery.close()
                raise GalleryError(
                    f"Gallery {gallery.root} uses {option} {actual!r}, not {given!r}: drop --{option} to use the "
                    "gallery as it is, or choose another --out for a new gallery.")


def _open_gallery(out: Path, runtime: Runtime | None, bundle: Path, listing: SourceListing | None, add: bool,
                  index_spec: str | None, choice: StoreChoice = StoreChoice(),
                  index_device: str = "auto") -> Gallery:
    """The gallery at out, created when absent; a source it has not indexed needs add."""
    source = {"kind": listing.kind, "path": str(listing.root)} if listing else None
    if not (out / METADATA).is_file():
        if runtime is None:
            raise GalleryError(f"No gallery at {out} to rebuild: index a source first (zscir-infer index SRC).")
        options = {"uri": choice.uri, "collection": choice.collection}
        return Gallery.create(out, bundle_id=runtime.bundle_id, embed_dim=runtime.embed_dim,
                              index_spec=index_spec or "auto", bundle=str(bundle), sources=[source],
                              store=choice.store or DEFAULT_STORE,
                              store_options={k: v for k, v in options.items() if v is not None},
                              index_device=index_device)
    gallery = Gallery.open(out, bundle_id=runtime.bundle_id if runtime else None, writable=True,
                           index_device=index_device)
    choice.check_against(gallery)
    if source is not None and source not in gallery.sources:
        if not add:
            gallery.close()
            known = ", ".join(s["path"] for s in gallery.sources) or "none"
            raise GalleryError(
                f"Gallery {out} was built from {known}, not {source['path']}: pass --add to add its images, "
                "or choose another --out."
            )
        gallery.record_source(source)
    return gallery


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
