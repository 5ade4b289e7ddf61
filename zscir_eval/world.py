"""The shapes world's test splits with their ground truth (DESIGN §7), read once for every scorer.

A world written by `zscir-train world` holds its CIRR test1 and CIRCO test splits as the official test
files (no targets) and the same queries with their targets under `<world>/ground_truth/` (in the val
layouts). `world_test_splits` reads the official files with the benchmark readers and fills the targets
in from the ground truth, so the test queries are scored with the val protocols (`score_split`).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from zscir_eval.circo import CircoSplit, read_circo
from zscir_eval.cirr import CirrSplit, read_cirr
from zscir_eval.splits import DatasetError, LayoutError, read_json

GROUND_TRUTH = "ground_truth"
CIRR_TRUTH = "cirr/cap.rc2.test1.json"
CIRCO_TRUTH = "circo/test.json"


def _truth(world: Path, name: str):
    path = world / GROUND_TRUTH / name
    if not path.is_file():
        raise LayoutError(
            f"{world} has no {GROUND_TRUTH}/{name}: it is not a shapes world, or an incomplete one; "
            f"generate it with `zscir-train world --out {world}`."
        )
    return read_json(path)


def _by_id(queries: list[dict], key: str, path: str, wanted: list[int]) -> dict[int, dict]:
    by_id = {int(q[key]): q for q in queries}
    lacking = sorted(set(wanted) - set(by_id))[:3]
    if lacking:
        raise DatasetError(f"{GROUND_TRUTH}/{path} lacks the test queries {lacking}: regenerate the world.")
    return by_id


def world_test_splits(world: str | Path) -> tuple[CirrSplit, CircoSplit]:
    """The world's CIRR test1 and CIRCO test splits, their targets filled in from the ground truth."""
    world = Path(world)
    cirr = read_cirr(world / "cirr", "test1")
    truth = _by_id(_truth(world, CIRR_TRUTH), "pairid", CIRR_TRUTH, [q.pairid for q in cirr.queries])
    cirr = replace(cirr, queries=[replace(q, target=truth[q.pairid]["target_hard"]) for q in cirr.queries])
    circo = read_circo(world / "circo", "test")
    truth = _by_id(_truth(world, CIRCO_TRUTH), "id", CIRCO_TRUTH, [q.id for q in circo.queries])
    circo = replace(circo, queries=[
        replace(
            q,
            target=int(truth[q.id]["target_img_id"]),
            gt=tuple(int(g) for g in truth[q.id]["gt_img_ids"]),
            semantic_aspects=tuple(truth[q.id].get("semantic_aspects", ())),
        )
        for q in circo.queries
    ])
    return cirr, circo
