"""Vector stores behind a `Gallery`: the small interface a gallery backend implements.

A gallery (`zscir_infer.gallery.Gallery`) owns what is the same for every backend: the gallery
directory and its `gallery.json` (format, the bundle that encoded it, the sources indexed), the check
that queries come from that bundle, and the turn of names and files into item ids. What differs per
backend sits behind `VectorStore`: storing vectors with their ids and metadata, searching them
(k, per-query exclusions, an optional filter), counting, persisting, closing.

`faiss`: FAISS index + SQLite id -> metadata store + a float32 feature file, embedded, crash-safe
(`stores.faiss_sqlite`). `milvus`: a Milvus collection, in Milvus Lite (embedded, a `.db` folder) or a
Milvus server or cluster (`stores.milvus`, the `[milvus]` extra). Both register in
`zscir_infer.gallery.STORES`; the CLIs and the runtime do not change. Besides the protocol below, a store
class has `new_section(spec, dim, root=, bundle_id=, **options)` (gallery.json's `index` section of a new
gallery, every option checked) and `create_files(directory)`, and a store has `check_index`,
`set_index_spec`, `index_is_fresh`, `set_search_params` and `index` (the faiss index, or None).
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np

from zscir_infer.errors import ZscirError

DEFAULT_STORE = "faiss"


class GalleryError(ZscirError):
    """The gallery cannot be used as asked; the message names the gallery and what to do."""


@dataclass(frozen=True)
class GalleryItem:
    id: int
    name: str
    path: str


@runtime_checkable
class VectorStore(Protocol):
    """What a gallery backend does. Vectors are float32 [N, D], L2-normalized; scores are inner products.

    Every method raises `GalleryError` (a ZscirError) for what the user can fix.
    """

    dim: int

    @property
    def count(self) -> int:
        """Committed items (ids are 0 .. count - 1)."""

    def add(self, ids: np.ndarray, vectors: np.ndarray, names: Sequence[str], paths: Sequence[str]) -> None:
        """Store one batch, all of it or nothing: ids [B] int64, vectors [B, D], and each item's metadata."""

    def search(
        self, xq: np.ndarray, k: int, exclude: Sequence[Collection[int]] | None = None, filter: str | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top k per query -> scores D [Q, k] (best first), ids I [Q, k] (-1 / -inf past the results).

        exclude[q]: item ids query q must not return; filter: an expression over the items' metadata
        (see `stores.filters`): only items it accepts are returned."""

    def items(self, ids: Iterable[int]) -> dict[int, GalleryItem]:
        """The stored items among ids (negative ids skipped), by id."""

    def lookup(self, names: Sequence[str]) -> dict[str, GalleryItem]:
        """The stored items among names, by name."""

    def lookup_paths(self, paths: Sequence[str]) -> dict[str, list[GalleryItem]]:
        """The items stored under each of these exact paths, by path."""

    def all_items(self) -> list[GalleryItem]:
        """Every item, by id."""

    def features(self) -> np.ndarray:
        """The stored vectors [N, D] in id order (the evaluation harness and `--rebuild` read them)."""

    def persist(self, rebuild: bool = False) -> None:
        """Make every added item durable and searchable from a new process (build or extend the index)."""

    def close(self) -> None:
        """Release files, locks and connections."""
