"""What the harness asks of every benchmark split, shared by the two shapes splits come in.

`SharedGallerySplit` (CIRR, CIRCO): all queries rank one gallery that holds every image they name.
`PartedSplit` (FashionIQ categories, GeneCIS tasks): independent parts, each with its own queries.
Both give `query_counts` (per part), `image_refs` (every image needed, to check for missing files)
and `without(missing keys)` -> (the split without them, {"queries": n, "gallery": n} left out).

The readers' errors a user can act on: `LayoutError` (a file of the official layout is absent) and
`DatasetError` (a split the benchmark does not have, or annotations that contradict each other).
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import ClassVar

from zscir_eval.images import ImageRef
from zscir_infer.errors import ZscirError


class LayoutError(ZscirError, FileNotFoundError):
    """A dataset folder is not in the official layout; the message names the file and where to get it."""


class DatasetError(ZscirError, ValueError):
    """A split, task or annotation the benchmark cannot be evaluated on; the message says which."""


def read_json(path: Path):
    """An annotation file's content; an absent file is a LayoutError, one that is not JSON a DatasetError."""
    if not path.is_file():
        raise LayoutError(f"No annotation file {path}: the dataset folder is incomplete.")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise DatasetError(f"{path} is not valid JSON ({exc}): download it again.") from exc


class SharedGallerySplit:
    """Mixin for a dataclass with `gallery: list[ImageRef]` and `queries` whose items have
    `reference_key` and `target` (None on a test split)."""

    benchmark: ClassVar[str]

    @property
    def query_counts(self) -> dict[str, int]:
        return {self.benchmark: len(self.queries)}

    @property
    def has_targets(self) -> bool:
        return all(q.target is not None for q in self.queries)

    def image_refs(self) -> list[ImageRef]:
        """Every image the split needs: references and targets are gallery images too."""
        return list(self.gallery)

    def references(self) -> list[ImageRef]:
        by_key = {ref.key: ref for ref in self.gallery}
        return [by_key[q.reference_key] for q in self.queries]


class PartedSplit:
    """Mixin for a dataclass whose field `parts_field` lists parts with `name`, `queries`,
    `image_refs()` and `without(missing)`."""

    parts_field: ClassVar[str]

    @property
    def parts(self) -> list:
        return getattr(self, self.parts_field)

    @property
    def query_counts(self) -> dict[str, int]:
        return {part.name: len(part.queries) for part in self.parts}

    def image_refs(self) -> list[ImageRef]:
        return [ref for part in self.parts for ref in part.image_refs()]

    def without(self, missing: set[str]):
        results = [part.without(missing) for part in self.parts]
        dropped = {k: sum(d[k] for _, d in results) for k in ("queries", "gallery")}
        return replace(self, **{self.parts_field: [part for part, _ in results]}), dropped
