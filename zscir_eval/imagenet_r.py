"""ImageNet -> ImageNet-R domain conversion (Pic2Word, google-research/composed_image_retrieval).

Layout (Pic2Word's data/): `imgnet/imgnet_real_query.txt` (ImageNet val photos, `path class` per line)
and `imgnet/imgnet_targets.txt` (ImageNet-R images, `path class + 1000 * domain` per line), the paths
relative to ROOT (`imgnet/real/...`, `imgnet/imagenet-r/...`). ROOT may also be the `imgnet` folder.

Protocol (eval_utils.evaluate_imgnet_retrieval / get_metrics_imgnet): for each domain of
cartoon, origami, toy, sculpture (label offsets 0, 1000, 2000, 3000), every real photo is a query with
the prompt `a {domain} of *`; the gallery is every image of imgnet_targets.txt: the 6,983 ImageNet-R
images of the four domains and the 10,000 real query photos themselves (labelled class + 6000, a
domain no prompt asks for, so never relevant, but ranked: they compete with the targets);
relevant = same class and the requested domain; R@k = relevant items in the top k / all relevant
items, averaged over queries (a query whose class has no image in that domain scores 0 and counts);
reported per domain and averaged over domains.

Arithmetic: the official code divides by (relevant + 1e-5) in float32. `domain_metrics` divides
exactly by default; `recall=official_set_recall_at_k` repeats the official arithmetic. On the real
lists the two differ by at most 2.5e-4 points per domain (origami, whose smallest classes have one
image), invisible at the two decimals the papers report.
"""

# ruff: noqa: E741 -- `I` is FAISS's name for the [Q, K] ranking of gallery indices

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from zscir_eval.images import ImageRef
from zscir_eval.metrics import exact_search, set_recall_at_k
from zscir_eval.splits import DatasetError, LayoutError

DOMAINS = ("cartoon", "origami", "toy", "sculpture")  # the prompt order fixes the label offsets
DOMAIN_LABEL_OFFSET = 1000  # Pic2Word's n_class: target label = class + 1000 * domain index
SPLITS = ("val",)
RECALL_KS = (10, 50)
QUERY_FILE, TARGET_FILE = "imgnet_real_query.txt", "imgnet_targets.txt"


@dataclass(frozen=True)
class ImagenetRSplit:
    split: str
    queries: list[ImageRef]  # real photos
    query_classes: np.ndarray  # [Q] class index
    gallery: list[ImageRef]  # every image of imgnet_targets.txt: ImageNet-R and the real photos
    gallery_labels: np.ndarray  # [N] class + 1000 * domain index (6 for the real photos)

    @property
    def query_counts(self) -> dict[str, int]:
        return {"imagenet-r": len(self.queries)}

    def references(self) -> list[ImageRef]:
        return self.queries

    def image_refs(self) -> list[ImageRef]:
        return self.queries + self.gallery

    def without(self, missing: set[str]) -> tuple[ImagenetRSplit, dict[str, int]]:
        keep_q = [i for i, ref in enumerate(self.queries) if ref.key not in missing]
        keep_g = [i for i, ref in enumerate(self.gallery) if ref.key not in missing]
        data = ImagenetRSplit(
            self.split,
            [self.queries[i] for i in keep_q],
            self.query_classes[keep_q],
            [self.gallery[i] for i in keep_g],
            self.gallery_labels[keep_g],
        )
        return data, {"queries": len(self.queries) - len(keep_q), "gallery": len(self.gallery) - len(keep_g)}


def _read_list(path: Path, base: Path) -> tuple[list[ImageRef], np.ndarray]:
    refs, labels = [], []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 2:
            raise DatasetError(f"{path}:{n}: expected 'relative/path label', got {line!r}.")
        refs.append(ImageRef(parts[0], base / parts[0]))
        labels.append(int(parts[1]))
    return refs, np.array(labels, dtype=np.int64)


def read_imagenet_r(root: str | Path, split: str = "val") -> ImagenetRSplit:
    if split not in SPLITS:
        raise DatasetError(f"ImageNet-R domain conversion has one split, 'val' (got '{split}').")
    root = Path(root)
    if (root / "imgnet" / QUERY_FILE).is_file():
        lists, base = root / "imgnet", root
    elif (root / QUERY_FILE).is_file():
        lists, base = root, root.parent
    else:
        raise LayoutError(
            f"No {QUERY_FILE} under {root} or {root / 'imgnet'}: copy data/imgnet/ of "
            "github.com/google-research/composed_image_retrieval there, with the images it lists."
        )
    queries, classes = _read_list(lists / QUERY_FILE, base)
    gallery, labels = _read_list(lists / TARGET_FILE, base)
    return ImagenetRSplit(split, queries, classes, gallery, labels)


def domain_rankings(data: ImagenetRSplit, xq: np.ndarray, xb: np.ndarray) -> np.ndarray:
    _, I = exact_search(xq, xb, max(RECALL_KS))
    return I


def domain_metrics(
    data: ImagenetRSplit, domain: str, I: np.ndarray, recall=set_recall_at_k
) -> dict[str, float]:
    """R@k for one requested domain: relevant = same class, that domain.

    recall: `set_recall_at_k` (exact) or `official_set_recall_at_k` (Pic2Word's float32 + 1e-5).
    """
    query_labels = data.query_classes + DOMAIN_LABEL_OFFSET * DOMAINS.index(domain)
    return {f"R@{k}": v for k, v in recall(I, query_labels, data.gallery_labels, RECALL_KS).items()}


def imagenet_r_metrics(per_domain: dict[str, dict[str, float]]) -> dict[str, float]:
    metrics = {f"{d}/{name}": v for d, m in per_domain.items() for name, v in m.items()}
    for k in RECALL_KS:
        metrics[f"avg/R@{k}"] = float(np.mean([m[f"R@{k}"] for m in per_domain.values()]))
    return metrics
