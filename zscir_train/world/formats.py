"""Writing the world's query sets in the official CIRR and CIRCO layouts (DESIGN §6), plus the
ImageNet -> ImageNet-R style domain-conversion set and full ground truth for the test splits.

CIRR root (`<world>/cirr`): `captions/cap.rc2.{val,test1}.json`, `image_splits/split.rc2.{val,test1}.json`
(name -> "./dev/<name>.png", relative to the root), images in `dev/` and `test1/`.
CIRCO root (`<world>/circo`): `annotations/{val,test}.json`,
`COCO2017_unlabeled/annotations/image_info_unlabeled2017.json`, images in `COCO2017_unlabeled/unlabeled2017/`.
Official test files carry no targets; `<world>/ground_truth/` holds the same queries with them
(in the val layout) so the test splits can be scored here.
"""

from __future__ import annotations

import json
from pathlib import Path

from zscir_infer.atomic import atomic_write_text
from zscir_train.world.attributes import ShapeSpec
from zscir_train.world.captions import article
from zscir_train.world.queries import Query

CIRR_SPLIT_DIRS = {"val": "dev", "test1": "test1"}
CIRCO_IMAGE_DIR = "COCO2017_unlabeled/unlabeled2017"
CIRCO_IMAGE_INFO = "COCO2017_unlabeled/annotations/image_info_unlabeled2017.json"

CIRR_QUERY_KEYS = ("pairid", "reference", "target_hard", "target_soft", "caption", "img_set")
CIRR_TEST_QUERY_KEYS = ("pairid", "reference", "caption", "img_set")
CIRR_IMG_SET_KEYS = ("id", "members", "reference_rank", "target_rank")
CIRR_TEST_IMG_SET_KEYS = ("id", "members", "reference_rank")
CIRCO_QUERY_KEYS = (
    "id", "reference_img_id", "target_img_id", "relative_caption", "shared_concept", "gt_img_ids", "semantic_aspects",
)
CIRCO_TEST_QUERY_KEYS = ("id", "reference_img_id", "relative_caption", "shared_concept")


def write_json(path: Path, obj) -> None:
    """Atomic compact JSON, as the official files are written; sorted output is not wanted here because
    key order is part of the official layouts."""
    atomic_write_text(path, json.dumps(obj))


def cirr_query(query: Query, pairid: int, set_id: int, with_target: bool) -> dict:
    """One entry of cap.rc2.{split}.json; `target_soft` gives every correct member a score of 1.0."""
    members = query.members
    img_set = {"id": set_id, "members": members, "reference_rank": members.index(query.reference)}
    if not with_target:
        return {"pairid": pairid, "reference": query.reference, "caption": query.text, "img_set": img_set}
    img_set["target_rank"] = members.index(query.target)
    correct = set(query.targets)
    soft = {query.target: 1.0, **{m: 1.0 for m in members if m in correct and m != query.target}}
    return {
        "pairid": pairid,
        "reference": query.reference,
        "target_hard": query.target,
        "target_soft": soft,
        "caption": query.text,
        "img_set": img_set,
    }


def cirr_split_file(names: list[str], split: str) -> dict[str, str]:
    folder = CIRR_SPLIT_DIRS[split]
    return {name: f"./{folder}/{name}.png" for name in names}


def shared_concept(reference: ShapeSpec, changed: list[str]) -> str:
    """What reference and target share, in words: the unchanged attributes (CIRCO `shared_concept`)."""
    kept = {a: getattr(reference, a) for a in ("size", "color", "shape", "background", "style") if a not in changed}
    noun = " ".join(w for w in (kept.get("size"), kept.get("color"), kept.get("shape", "shape")) if w)
    text = f"{article(noun)} {noun}"
    if "background" in kept:
        text += f" on a {kept['background']} background"
    if "style" in kept:
        text += f", {kept['style']} style"
    return text


def circo_query(query: Query, query_id: int, image_ids: dict[str, int], gt_names: list[str], with_target: bool) -> dict:
    """One entry of annotations/{split}.json; `gt_names` are all correct gallery images, target first."""
    entry = {
        "id": query_id,
        "reference_img_id": image_ids[query.reference],
        "relative_caption": query.text,
        "shared_concept": shared_concept(query.reference_spec, query.changed),
    }
    if not with_target:
        return entry
    return {
        "id": query_id,
        "reference_img_id": image_ids[query.reference],
        "target_img_id": image_ids[query.target],
        "relative_caption": query.text,
        "shared_concept": entry["shared_concept"],
        "gt_img_ids": [image_ids[n] for n in gt_names],
        "semantic_aspects": list(query.changed),
    }


def circo_image_info(image_ids: dict[str, int], image_size: int) -> dict:
    """COCO-style image list: {"images": [{"id", "file_name", "height", "width"}]}."""
    return {
        "images": [
            {"id": image_id, "file_name": f"{image_id:012d}.png", "height": image_size, "width": image_size}
            for image_id in image_ids.values()
        ]
    }
