"""CIRCO: the reader on the official layout, mAP@k by hand, the submission file."""

# ruff: noqa: E741 -- `I` is FAISS's name for the [Q, K] ranking

import json

import numpy as np
import pytest

from tests.fixtures.eval_layouts import CIRCO_IDS, write_json
from zscir_eval.circo import circo_metrics, circo_rankings, circo_submission, read_circo

# One-hot gallery of the 8 images; query weights fix the order (the reference is NOT removed).
# q0 (ref idx 0, gt idx [2, 4, 7]): order 0, 2, 1, 4, 3, 5, 6, 7 -> relevant at ranks 2, 4, 8
#    AP@5 = (1/2 + 2/4) / min(3, 5) = 1/3;  AP@10 = AP@25 = AP@50 = (1/2 + 2/4 + 3/8) / 3 = 11/24
# q1 (ref idx 1, gt idx [5]): order 5, ... -> AP@k = 1
# mAP@5 = (1/3 + 1) / 2 = 2/3;  mAP@10 = (11/24 + 1) / 2 = 35/48
WEIGHTS = [[8, 6, 7, 4, 5, 3, 2, 1], [1, 7, 2, 3, 4, 8, 5, 6]]


def hand_features():
    xq = np.array(WEIGHTS, dtype=np.float32)
    return xq / np.linalg.norm(xq, axis=1, keepdims=True), np.eye(8, dtype=np.float32)


def test_reader(circo_root):
    data = read_circo(circo_root, "val")
    assert [ref.key for ref in data.gallery] == [str(i) for i in CIRCO_IDS]
    assert all(ref.path.is_file() for ref in data.gallery)
    q0 = data.queries[0]
    assert (q0.id, q0.reference, q0.target, q0.gt) == (0, 101, 103, (103, 105, 108))
    assert q0.gt[0] == q0.target and q0.semantic_aspects == ("cardinality",)
    test = read_circo(circo_root, "test")
    assert not test.has_targets and test.queries[1].reference == 102


def test_metrics_match_the_hand_values(circo_root):
    data = read_circo(circo_root, "val")
    I = circo_rankings(data, *hand_features())
    assert I.shape == (2, 50)
    assert I[0, :8].tolist() == [0, 2, 1, 4, 3, 5, 6, 7]  # the reference stays in the ranking
    m = circo_metrics(data, I)
    assert m["mAP@5"] == pytest.approx(100 * 2 / 3)
    assert m["mAP@10"] == m["mAP@25"] == m["mAP@50"] == pytest.approx(100 * 35 / 48)
    assert m["R@5"] == pytest.approx(100.0)  # targets at ranks 2 and 1
    assert m["semantic_mAP@10/cardinality"] == pytest.approx(100 * 35 / 48)
    assert m["semantic_mAP@10/addition"] == pytest.approx(100.0)


def test_submission_format(circo_root):
    data = read_circo(circo_root, "test")
    sub = circo_submission(data, circo_rankings(data, *hand_features()))
    assert set(sub) == {"0", "1"}
    assert sub["0"] == [101, 103, 102, 105, 104, 106, 107, 108]
    for ids in sub.values():
        assert all(type(i) is int for i in ids) and len(set(ids)) == len(ids) <= 50
    assert json.loads(json.dumps(sub)) == sub


def test_a_query_counts_once_per_listing_of_an_aspect(circo_root):
    # miccunifi/CIRCO evaluation.py: `for aspect in semantic_aspects: semantic_aps_at10[aspect].append(ap)`,
    # so a query that lists an aspect twice weighs twice in that aspect's mean
    annotations = json.loads((circo_root / "annotations" / "val.json").read_text())
    annotations[1]["semantic_aspects"] = ["cardinality", "addition", "cardinality"]
    write_json(circo_root / "annotations" / "val.json", annotations)
    data = read_circo(circo_root, "val")
    m = circo_metrics(data, circo_rankings(data, *hand_features()))
    assert m["semantic_mAP@10/cardinality"] == pytest.approx(100 * (11 / 24 + 1 + 1) / 3)  # q0 once, q1 twice
    assert m["semantic_mAP@10/addition"] == pytest.approx(100.0)
    assert m["mAP@10"] == pytest.approx(100 * 35 / 48)  # the overall mean counts each query once
