"""CIRCO (miccunifi/CIRCO): reader, protocol and test-server submission file.

Layout: `annotations/{val,test}.json`, `COCO2017_unlabeled/annotations/image_info_unlabeled2017.json`
and the images `COCO2017_unlabeled/unlabeled2017/{file_name}`. The gallery is every image listed in
image_info_unlabeled2017.json (about 123k); the reference is not removed.

Protocol (miccunifi/CIRCO src/evaluation.py, the server's code): the top 50 by cosine;
AP@k = sum_{i<=k} P@i * rel_i / min(#gt, k) with `gt_img_ids` (target first) as the relevant set;
mAP@{5,10,25,50}; Recall@k of the target alone; mAP@10 per semantic aspect, where a query counts once
per listing of the aspect in its `semantic_aspects` (the official loop appends its AP@10 per listing).
"""

# ruff: noqa: E741 -- `I` is FAISS's name for the [Q, K] ranking of gallery indices

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import ClassVar

import numpy as np

from zscir_eval.images import ImageRef
from zscir_eval.metrics import exact_search, mean_average_precision_at_k, recall_at_k
from zscir_eval.splits import DatasetError, LayoutError, SharedGallerySplit, read_json

SPLITS = ("val", "test")
MAP_KS = (5, 10, 25, 50)
SEMANTIC_K = 10
TOP = 50  # the evaluation and the server use the top 50
COCO_DIR = "COCO2017_unlabeled"
IMAGE_INFO = f"{COCO_DIR}/annotations/image_info_unlabeled2017.json"


@dataclass(frozen=True)
class CircoQuery:
    id: int
    reference: int  # COCO image id
    caption: str  # relative_caption
    shared_concept: str
    target: int | None = None  # target_img_id (val only)
    gt: tuple[int, ...] = ()  # gt_img_ids, target first (val only)
    semantic_aspects: tuple[str, ...] = ()

    @property
    def reference_key(self) -> str:
        return str(self.reference)


@dataclass(frozen=True)
class CircoSplit(SharedGallerySplit):
    benchmark: ClassVar[str] = "circo"
    split: str
    gallery: list[ImageRef]  # keys are the COCO ids as strings
    queries: list[CircoQuery]

    def without(self, missing: set[str]) -> tuple[CircoSplit, dict[str, int]]:
        """Drop queries whose reference or target is missing; missing ground truths leave the gt list."""
        queries = [
            replace(q, gt=tuple(g for g in q.gt if str(g) not in missing))
            for q in self.queries
            if str(q.reference) not in missing and str(q.target) not in missing
        ]
        gallery = [ref for ref in self.gallery if ref.key not in missing]
        dropped = {"queries": len(self.queries) - len(queries), "gallery": len(self.gallery) - len(gallery)}
        return CircoSplit(self.split, gallery, queries), dropped


def find_circo_dir(root: Path, split: str) -> Path:
    """The CIRCO folder: ROOT itself, or ROOT/circo (ROOT/CIRCO) when ROOT holds several datasets."""
    return next(
        (
            base
            for base in (root / "circo", root / "CIRCO")
            if (base / "annotations" / f"{split}.json").is_file()
        ),
        root,
    )


def read_circo(root: str | Path, split: str = "val") -> CircoSplit:
    if split not in SPLITS:
        raise DatasetError(f"CIRCO split '{split}' is not one of {SPLITS}.")
    root = find_circo_dir(Path(root), split)
    annotations, info = root / "annotations" / f"{split}.json", root / IMAGE_INFO
    for path, what in (
        (annotations, "clone github.com/miccunifi/CIRCO"),
        (info, "unzip COCO's unlabeled2017 annotations"),
    ):
        if not path.is_file():
            raise LayoutError(f"No CIRCO file {path}: {what} under {root}.")
    images = read_json(info)["images"]
    gallery = [ImageRef(str(im["id"]), root / COCO_DIR / "unlabeled2017" / im["file_name"]) for im in images]
    queries = [
        CircoQuery(
            id=int(a["id"]),
            reference=int(a["reference_img_id"]),
            caption=a["relative_caption"],
            shared_concept=a.get("shared_concept", ""),
            target=int(a["target_img_id"]) if "target_img_id" in a else None,
            gt=tuple(int(g) for g in a.get("gt_img_ids", ())),
            semantic_aspects=tuple(a.get("semantic_aspects", ())),
        )
        for a in read_json(annotations)
    ]
    return CircoSplit(split, gallery, queries)


def circo_rankings(data: CircoSplit, xq: np.ndarray, xb: np.ndarray) -> np.ndarray:
    """I [Q, 50]: the top 50 gallery indices by cosine, the reference left in."""
    _, I = exact_search(xq, xb, TOP)
    return I


def circo_metrics(data: CircoSplit, I: np.ndarray) -> dict[str, float]:
    index_of = {ref.key: i for i, ref in enumerate(data.gallery)}
    relevant = [np.array([index_of.get(str(g), -2) for g in q.gt], dtype=np.int64) for q in data.queries]
    metrics = {f"mAP@{k}": v for k, v in mean_average_precision_at_k(I, relevant, MAP_KS).items()}
    targets = np.array([index_of[str(q.target)] for q in data.queries], dtype=np.int64)
    metrics |= {f"R@{k}": v for k, v in recall_at_k(I, targets, MAP_KS).items()}
    rows_of: dict[str, list[int]] = {}  # aspect -> query rows, a row once per listing of the aspect
    for i, q in enumerate(data.queries):
        for aspect in q.semantic_aspects:
            rows_of.setdefault(aspect, []).append(i)
    for aspect, rows in sorted(rows_of.items()):
        value = mean_average_precision_at_k(I[rows], [relevant[i] for i in rows], (SEMANTIC_K,))[SEMANTIC_K]
        metrics[f"semantic_mAP@{SEMANTIC_K}/{aspect}"] = value
    return metrics


def circo_submission(data: CircoSplit, I: np.ndarray) -> dict[str, list[int]]:
    """`{query id: top-50 COCO image ids}`, the file the CIRCO server takes (ids unique by construction)."""
    ids = [int(ref.key) for ref in data.gallery]
    return {str(q.id): [ids[i] for i in row[:TOP] if i >= 0] for q, row in zip(data.queries, I, strict=True)}
