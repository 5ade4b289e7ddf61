"""CIRR (Cuberick-Orion/CIRR, rc2): reader, protocol and test-server submission files.

Layout: `captions/cap.rc2.{split}.json` and `image_splits/split.rc2.{split}.json` (name -> relative
path such as `./dev/dev-0-0-img0.png`) in the CIRR folder; the images under it, under `img_raw/` (the
official tree) or beside it (the SEARLE/LinCIR tree, `--root` above `cirr/`). Splits: val, test1.

Protocol (SEARLE/LinCIR validate.py, the reference for published numbers): rank the whole split's
images by cosine, remove the reference image from the ranking, Recall@{1,5,10,50} of `target_hard`;
subset recall ranks only `img_set.members` minus the reference, Recall_s@{1,2,3}.
"""

# ruff: noqa: E741 -- `I` is FAISS's name for the [Q, K] ranking of gallery indices

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import ClassVar

import numpy as np

from zscir_eval.images import ImageRef
from zscir_eval.metrics import recall_at_k, search_excluding, search_subsets
from zscir_eval.splits import DatasetError, LayoutError, SharedGallerySplit, read_json

VERSION = "rc2"
SPLITS = {"val": "val", "test": "test1", "test1": "test1"}
RECALL_KS = (1, 5, 10, 50)
SUBSET_KS = (1, 2, 3)
SUBMISSION_TOP = 50  # the server takes the top 50 for recall ...
SUBSET_SUBMISSION_TOP = 3  # ... and the top 3 for recall_subset
IMAGE_DIRS = ("img_raw", ".")  # under the CIRR folder; its parent is tried last


@dataclass(frozen=True)
class CirrQuery:
    pairid: int
    reference: str
    caption: str
    members: tuple[str, ...]  # img_set.members: six images, the reference among them
    target: str | None  # target_hard; None in test1

    @property
    def reference_key(self) -> str:
        return self.reference


@dataclass(frozen=True)
class CirrSplit(SharedGallerySplit):
    benchmark: ClassVar[str] = "cirr"
    split: str  # val | test1
    gallery: list[ImageRef]  # every image of the split, in image_splits order
    queries: list[CirrQuery]

    def without(self, missing: set[str]) -> tuple[CirrSplit, dict[str, int]]:
        """The split without missing images: queries needing one are dropped, members filtered."""
        queries = [
            replace(q, members=tuple(m for m in q.members if m not in missing))
            for q in self.queries
            if q.reference not in missing and q.target not in missing
        ]
        gallery = [ref for ref in self.gallery if ref.key not in missing]
        dropped = {"queries": len(self.queries) - len(queries), "gallery": len(self.gallery) - len(gallery)}
        return CirrSplit(self.split, gallery, queries), dropped


def find_cirr_dir(root: Path, split: str) -> Path:
    """The folder holding `captions/` (ROOT itself, or ROOT/cirr as SEARLE and LinCIR expect)."""
    name = f"captions/cap.{VERSION}.{split}.json"
    for base in (root, root / "cirr", root / "CIRR"):
        if (base / name).is_file():
            return base
    raise LayoutError(
        f"No CIRR annotations under {root}: expected {root / name} (or cirr/{name}). "
        "Clone the cirr_dataset branch of github.com/Cuberick-Orion/CIRR there."
    )


def _image_base(cirr_dir: Path, relpaths: list[str]) -> Path:
    """Where the relative paths of image_splits resolve: the first base holding their top folder."""
    top = Path(relpaths[0]).parts[0] if relpaths else "dev"
    bases = [cirr_dir / d for d in IMAGE_DIRS] + [cirr_dir.parent]
    return next((b for b in bases if (b / top).is_dir()), bases[0])


def read_cirr(root: str | Path, split: str = "val") -> CirrSplit:
    if split not in SPLITS:
        raise DatasetError(f"CIRR split '{split}' is not one of {sorted(SPLITS)}.")
    split = SPLITS[split]
    cirr_dir = find_cirr_dir(Path(root), split)
    captions = read_json(cirr_dir / f"captions/cap.{VERSION}.{split}.json")
    name_to_relpath = read_json(cirr_dir / f"image_splits/split.{VERSION}.{split}.json")
    base = _image_base(cirr_dir, list(name_to_relpath.values()))
    gallery = [ImageRef(name, base / rel) for name, rel in name_to_relpath.items()]
    queries = [
        CirrQuery(
            pairid=int(c["pairid"]),
            reference=c["reference"],
            caption=c["caption"],
            members=tuple(c["img_set"]["members"]),
            target=c.get("target_hard"),
        )
        for c in captions
    ]
    unknown = sorted({q.reference for q in queries} - set(name_to_relpath))[:3]
    if unknown:
        raise DatasetError(
            f"CIRR {split}: reference images {unknown} are not in image_splits/split.{VERSION}.{split}.json."
        )
    return CirrSplit(split, gallery, queries)


def cirr_rankings(data: CirrSplit, xq: np.ndarray, xb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """I [Q, 50] over the whole gallery without the reference, and I_subset [Q, 3] over the members."""
    index_of = {ref.key: i for i, ref in enumerate(data.gallery)}
    exclude = np.array([index_of[q.reference] for q in data.queries], dtype=np.int64)
    _, I = search_excluding(xq, xb, SUBMISSION_TOP, exclude)
    subsets = [
        np.array(
            [index_of[m] for m in dict.fromkeys(q.members) if m != q.reference and m in index_of],
            dtype=np.int64,
        )
        for q in data.queries
    ]
    _, I_subset = search_subsets(xq, xb, subsets, SUBSET_SUBMISSION_TOP)
    return I, I_subset


def cirr_metrics(data: CirrSplit, I: np.ndarray, I_subset: np.ndarray) -> dict[str, float]:
    """Recall@{1,5,10,50}, Recall_subset@{1,2,3} and their customary mean (R@5 + R_s@1) / 2."""
    index_of = {ref.key: i for i, ref in enumerate(data.gallery)}
    targets = np.array([index_of[q.target] for q in data.queries], dtype=np.int64)
    recall = recall_at_k(I, targets, RECALL_KS)
    subset = recall_at_k(I_subset, targets, SUBSET_KS)
    metrics = {f"R@{k}": v for k, v in recall.items()} | {f"Rsubset@{k}": v for k, v in subset.items()}
    metrics["avg(R@5,Rsubset@1)"] = (recall[5] + subset[1]) / 2
    return metrics


def cirr_submissions(data: CirrSplit, I: np.ndarray, I_subset: np.ndarray) -> dict[str, dict]:
    """The two files the CIRR test server takes: top-50 names for `recall`, top-3 for `recall_subset`."""
    names = [ref.key for ref in data.gallery]

    def ranked(row: np.ndarray, top: int) -> list[str]:
        return [names[i] for i in row[:top] if i >= 0]

    recall = {"version": VERSION, "metric": "recall"}
    subset = {"version": VERSION, "metric": "recall_subset"}
    for q, row, row_subset in zip(data.queries, I, I_subset, strict=True):
        recall[str(q.pairid)] = ranked(row, SUBMISSION_TOP)
        subset[str(q.pairid)] = ranked(row_subset, SUBSET_SUBMISSION_TOP)
    return {"recall": recall, "recall_subset": subset}
