"""FashionIQ (XiaoxiaoGuo/fashion-iq): reader and protocol, per category dress / shirt / toptee.

Layout: `captions/cap.{category}.{split}.json` (entries `{candidate, target, captions[2]}`; Pic2Word's
tree names the folder `json/`), `image_splits/split.{category}.{split}.json` (image ids), and the images
`images/{id}.jpg` (or `.png`, as Pic2Word stores them).

Protocol (SEARLE/LinCIR validate.py): per category, the gallery is that category's split images and
the query image the candidate; no reference removal; Recall@10 and @50 of the target, their means over
the three categories, and the mean of those two. The two captions are joined with " and ", stripped
of leading and trailing `.?, ` first (LinCIR, SEARLE) or raw (Pic2Word's data.py); which orders are
encoded and whether captions are cleaned depend on the method (see templates.py). A split file that
lists a target twice is refused, as the official assertion (one match per query) refuses it.
The test split has no targets and no public server, so only val is evaluated.
"""

# ruff: noqa: E741 -- `I` is FAISS's name for the [Q, K] ranking of gallery indices

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path
from typing import ClassVar

import numpy as np

from zscir_eval.images import ImageRef
from zscir_eval.metrics import exact_search, recall_at_k
from zscir_eval.splits import DatasetError, LayoutError, PartedSplit, read_json

CATEGORIES = ("dress", "shirt", "toptee")
SPLITS = ("val",)
RECALL_KS = (10, 50)
CAPTION_STRIP = ".?, "
CAPTION_DIRS = ("captions", "json")
IMAGE_SUFFIXES = (".jpg", ".png")


@dataclass(frozen=True)
class FashionIQQuery:
    candidate: str
    target: str
    captions: tuple[str, str]  # stripped of `.?, ` (LinCIR, SEARLE)
    raw_captions: tuple[str, str]  # as the file has them (Pic2Word)


@dataclass(frozen=True)
class FashionIQCategory:
    name: str  # dress | shirt | toptee
    gallery: list[ImageRef]  # the category's split images
    queries: list[FashionIQQuery]
    images: dict[str, ImageRef]  # every image id this category names (gallery and candidates)

    def references(self) -> list[ImageRef]:
        return [self.images[q.candidate] for q in self.queries]

    def image_refs(self) -> list[ImageRef]:
        return list(self.images.values())

    def without(self, missing: set[str]) -> tuple[FashionIQCategory, dict[str, int]]:
        gallery = [ref for ref in self.gallery if ref.key not in missing]
        in_gallery = {ref.key for ref in gallery}
        queries = [q for q in self.queries if q.candidate not in missing and q.target in in_gallery]
        dropped = {"queries": len(self.queries) - len(queries), "gallery": len(self.gallery) - len(gallery)}
        return replace(self, gallery=gallery, queries=queries), dropped


@dataclass(frozen=True)
class FashionIQSplit(PartedSplit):
    parts_field: ClassVar[str] = "categories"
    split: str
    categories: list[FashionIQCategory]


def clean_caption(caption: str) -> str:
    return caption.strip(CAPTION_STRIP)


def _image_ref(images_dir: Path, image_id: str) -> ImageRef:
    paths = [images_dir / f"{image_id}{suffix}" for suffix in IMAGE_SUFFIXES]
    return ImageRef(image_id, next((p for p in paths if p.is_file()), paths[0]))


def _captions_file(root: Path, category: str, split: str) -> Path:
    paths = [root / d / f"cap.{category}.{split}.json" for d in CAPTION_DIRS]
    path = next((p for p in paths if p.is_file()), None)
    if path is None:
        raise LayoutError(
            f"No FashionIQ captions for {category}/{split}: expected {paths[0]} (or {paths[1]}). "
            "Get captions/ and image_splits/ from github.com/XiaoxiaoGuo/fashion-iq."
        )
    return path


def read_category(root: Path, category: str, split: str) -> FashionIQCategory:
    entries = read_json(_captions_file(root, category, split))
    split_file = root / "image_splits" / f"split.{category}.{split}.json"
    if not split_file.is_file():
        raise LayoutError(f"No FashionIQ image split {split_file}.")
    images_dir = root / "images"
    gallery_ids = read_json(split_file)
    images = {i: _image_ref(images_dir, i) for i in gallery_ids}
    queries = []
    for e in entries:
        images.setdefault(e["candidate"], _image_ref(images_dir, e["candidate"]))
        c1, c2 = e["captions"]
        queries.append(
            FashionIQQuery(e["candidate"], e["target"], (clean_caption(c1), clean_caption(c2)), (c1, c2))
        )
    targets = {q.target for q in queries}
    outside = sorted(targets - set(gallery_ids))[:3]
    if outside:
        raise DatasetError(f"FashionIQ {category}/{split}: targets {outside} are not in {split_file}.")
    twice = sorted(i for i, n in Counter(gallery_ids).items() if n > 1 and i in targets)
    if twice:
        raise DatasetError(
            f"{split_file} lists the target image(s) {twice[:3]} more than once: a target must be one gallery "
            "item (the official evaluation asserts one match per query). Remove the repeated entries."
        )
    return FashionIQCategory(category, [images[i] for i in gallery_ids], queries, images)


def read_fashioniq(
    root: str | Path, split: str = "val", categories: tuple[str, ...] = CATEGORIES
) -> FashionIQSplit:
    if split not in SPLITS:
        raise DatasetError(
            f"FashionIQ split '{split}': only {SPLITS} can be evaluated (test targets are not public and "
            "there is no evaluation server)."
        )
    return FashionIQSplit(split, [read_category(Path(root), c, split) for c in categories])


def joined_captions(query: FashionIQQuery, order: tuple[int, int], clean: bool = True) -> str:
    """The two captions in the given order, joined as LinCIR and Pic2Word do: "c_a and c_b";
    cleaned (LinCIR, SEARLE) or raw (Pic2Word)."""
    captions = query.captions if clean else query.raw_captions
    return f"{captions[order[0]]} and {captions[order[1]]}"


def category_rankings(category: FashionIQCategory, xq: np.ndarray, xb: np.ndarray) -> np.ndarray:
    _, I = exact_search(xq, xb, max(RECALL_KS))
    return I


def category_metrics(category: FashionIQCategory, I: np.ndarray) -> dict[str, float]:
    index_of = {ref.key: i for i, ref in enumerate(category.gallery)}
    targets = np.array([index_of[q.target] for q in category.queries], dtype=np.int64)
    return {f"R@{k}": v for k, v in recall_at_k(I, targets, RECALL_KS).items()}


def fashioniq_metrics(per_category: dict[str, dict[str, float]]) -> dict[str, float]:
    """Per-category R@10/R@50 flattened as `dress/R@10`, their means `avg/R@10`, and `avg` of those."""
    metrics = {f"{c}/{name}": v for c, m in per_category.items() for name, v in m.items()}
    for k in RECALL_KS:
        metrics[f"avg/R@{k}"] = float(np.mean([m[f"R@{k}"] for m in per_category.values()]))
    metrics["avg"] = float(np.mean([metrics[f"avg/R@{k}"] for k in RECALL_KS]))
    return metrics
