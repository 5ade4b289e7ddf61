"""GeneCIS (facebookresearch/genecis): reader and protocol for its four tasks.

Layout: `genecis/{focus_attribute,change_attribute,focus_object,change_object}.json` (or the JSONs
directly in ROOT), Visual Genome 1.2 images `VG_100K_all/{image_id}.jpg` for the attribute tasks and
COCO val2017 images `val2017/{val_image_id:012d}.jpg` for the object tasks.

Each sample is `{condition, reference, target, gallery[]}`; attribute images are
`{image_id, instance_bbox: [x, y, w, h], ...}` and are cropped around the box (dilation 0.7) and
padded to a square; object images are `{val_image_id}`. Protocol (genecis eval_functions.validate):
each query ranks its own gallery list, the target in slot 0 then the distractors; Recall@{1,2,3} of
slot 0. Slots are ranked, not images: a distractor that is the target's image (change_object has one)
scores exactly as the target, and its slot is not a hit. The official sort leaves such ties in an
unspecified order (torch.sort); here a distractor wins a tie with the target, so a tie is never a hit.
Images are encoded once per task: an attribute crop is keyed by its image and its exact box.
"""

# ruff: noqa: E741 -- `I` is FAISS's name for the [Q, K] ranking (here: slots of each query's list)

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import ClassVar

import numpy as np

from zscir_eval.images import ImageRef
from zscir_eval.metrics import NO_RESULT, recall_at_k
from zscir_eval.splits import DatasetError, LayoutError, PartedSplit, read_json

TASKS = ("focus_attribute", "change_attribute", "focus_object", "change_object")
SPLITS = ("val",)
RECALL_KS = (1, 2, 3)
VG_DIR, COCO_DIR = "VG_100K_all", "val2017"
JSON_DIRS = ("genecis", ".")
TARGET_SLOT = 0  # the official loader puts the target first in each query's gallery list


@dataclass(frozen=True)
class GenecisQuery:
    reference: ImageRef
    condition: str
    target: ImageRef
    distractors: tuple[ImageRef, ...]


@dataclass(frozen=True)
class GenecisTask:
    name: str
    queries: list[GenecisQuery]

    @property
    def gallery(self) -> list[ImageRef]:
        """Every target and distractor image of the task, each once (encoded once, shared by queries)."""
        refs = {ref.key: ref for q in self.queries for ref in (q.target, *q.distractors)}
        return list(refs.values())

    def references(self) -> list[ImageRef]:
        return [q.reference for q in self.queries]

    def image_refs(self) -> list[ImageRef]:
        return [ref for q in self.queries for ref in (q.reference, q.target, *q.distractors)]

    def without(self, missing: set[str]) -> tuple[GenecisTask, dict[str, int]]:
        """Drop queries whose reference or target is missing, and missing distractors from the rest."""
        kept = [q for q in self.queries if q.reference.key not in missing and q.target.key not in missing]
        queries = [
            replace(q, distractors=tuple(d for d in q.distractors if d.key not in missing)) for q in kept
        ]
        n_distractors = sum(len(q.distractors) for q in kept) - sum(len(q.distractors) for q in queries)
        dropped = {"queries": len(self.queries) - len(queries), "gallery": n_distractors}
        return GenecisTask(self.name, queries), dropped


@dataclass(frozen=True)
class GenecisSplit(PartedSplit):
    parts_field: ClassVar[str] = "tasks"
    split: str
    tasks: list[GenecisTask]


def exact_number(value: float) -> str:
    """A box coordinate written exactly: integers without a fraction, others as Python's round-trip repr."""
    return str(int(value)) if value.is_integer() else repr(value)


def attribute_image(root: Path, item: dict) -> ImageRef:
    box = tuple(float(v) for v in item["instance_bbox"])
    key = f"vg/{item['image_id']}@{','.join(exact_number(v) for v in box)}"  # two boxes, two crops
    return ImageRef(key, root / VG_DIR / f"{item['image_id']}.jpg", box)


def object_image(root: Path, item: dict) -> ImageRef:
    image_id = int(item["val_image_id"])
    return ImageRef(f"coco/{image_id}", root / COCO_DIR / f"{image_id:012d}.jpg")


def _task_file(root: Path, task: str) -> Path:
    paths = [root / d / f"{task}.json" for d in JSON_DIRS]
    path = next((p for p in paths if p.is_file()), None)
    if path is None:
        raise LayoutError(
            f"No GeneCIS file for {task}: expected {paths[0]} (or {paths[1]}); download the GeneCIS "
            "JSONs (github.com/facebookresearch/genecis) there."
        )
    return path


def read_task(root: Path, task: str) -> GenecisTask:
    image = attribute_image if "attribute" in task else object_image
    samples = read_json(_task_file(root, task))
    queries = [
        GenecisQuery(
            reference=image(root, s["reference"]),
            condition=s["condition"],
            target=image(root, s["target"]),
            distractors=tuple(image(root, g) for g in s["gallery"]),
        )
        for s in samples
    ]
    return GenecisTask(task, queries)


def read_genecis(root: str | Path, split: str = "val", tasks: tuple[str, ...] = TASKS) -> GenecisSplit:
    if split not in SPLITS:
        raise DatasetError(f"GeneCIS has one split, 'val' (got '{split}').")
    unknown = sorted(set(tasks) - set(TASKS))
    if unknown:
        raise DatasetError(f"Unknown GeneCIS task(s) {unknown}: choose from {TASKS}.")
    return GenecisSplit(split, [read_task(Path(root), t) for t in tasks])


def task_rankings(task: GenecisTask, xq: np.ndarray, xb: np.ndarray) -> np.ndarray:
    """I [Q, 3]: slots of each query's own gallery list (0 = the target, i = distractor i), best first.

    xb [N, D] holds task.gallery's features; a slot scores its image's feature. Ties go against the
    target: a distractor slot with the target's exact score ranks before it. -1 pads a short list.
    """
    index_of = {ref.key: i for i, ref in enumerate(task.gallery)}
    I = np.full((len(task.queries), max(RECALL_KS)), NO_RESULT, dtype=np.int64)
    for q, query in enumerate(task.queries):
        slots = np.array([index_of[r.key] for r in (query.target, *query.distractors)], dtype=np.int64)
        scores = xb[slots] @ xq[q]  # [len(slots)]
        is_target = np.arange(len(slots)) == TARGET_SLOT
        order = np.lexsort((is_target, -scores))[: I.shape[1]]  # by score, then distractors first
        I[q, : len(order)] = order
    return I


def task_metrics(task: GenecisTask, I: np.ndarray) -> dict[str, float]:
    """Recall@{1,2,3} of the target's slot in the slot rankings of `task_rankings`."""
    targets = np.full(len(task.queries), TARGET_SLOT, dtype=np.int64)
    return {f"R@{k}": v for k, v in recall_at_k(I, targets, RECALL_KS).items()}


def genecis_metrics(per_task: dict[str, dict[str, float]]) -> dict[str, float]:
    """Per-task R@{1,2,3} flattened as `focus_attribute/R@1`, and their means over tasks `avg/R@k`."""
    metrics = {f"{t}/{name}": v for t, m in per_task.items() for name, v in m.items()}
    for k in RECALL_KS:
        metrics[f"avg/R@{k}"] = float(np.mean([m[f"R@{k}"] for m in per_task.values()]))
    return metrics
