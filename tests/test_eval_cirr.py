"""CIRR: the reader on the official and the SEARLE layouts, the protocol by hand, the submission files."""

# ruff: noqa: E741 -- `I` is FAISS's name for the [Q, K] ranking

import json

import numpy as np
import pytest

from tests.fixtures.eval_layouts import CIRR_NAMES, make_cirr
from zscir_eval.cirr import cirr_metrics, cirr_rankings, cirr_submissions, read_cirr

# Query features over a one-hot gallery (xb = identity): query q scores image i with WEIGHTS[q][i].
# q0 (ref 0, target 1):  order 0*, 2, 1, 3, 4, 5, 6, 7 -> without ref: target at rank 2
#                         subset {1..5}: 2, 1, 3 -> target at rank 2
# q1 (ref 2, target 7):  order 2*, 7, 6, 5, ... -> rank 1; subset {3..7}: 7, 6, 5 -> rank 1
# q2 (ref 4, target 6):  order 4*, 0, 1, 2, 3, 5, 7, 6 -> rank 7; subset {0, 1, 6, 3, 2}: 0, 1, 2 -> absent
WEIGHTS = [[8, 6, 7, 5, 4, 3, 2, 1], [1, 2, 8, 3, 4, 5, 6, 7], [7, 6, 5, 4, 8, 3, 1, 2]]
# so R@1 = 1/3, R@5 = 2/3, R@10 = R@50 = 3/3; Rsubset@1 = 1/3, @2 = @3 = 2/3; avg = (R@5 + Rs@1) / 2 = 1/2


def hand_features():
    xq = np.array(WEIGHTS, dtype=np.float32)
    return xq / np.linalg.norm(xq, axis=1, keepdims=True), np.eye(8, dtype=np.float32)


@pytest.mark.parametrize("layout", ["official", "searle"])
def test_reader_resolves_images_in_both_layouts(tmp_path, layout):
    data = read_cirr(make_cirr(tmp_path, layout=layout), "val")
    assert [ref.key for ref in data.gallery] == CIRR_NAMES
    assert all(ref.path.is_file() for ref in data.gallery)
    assert [q.pairid for q in data.queries] == [10, 11, 12]
    assert data.queries[0].members[0] == data.queries[0].reference == CIRR_NAMES[0]
    assert data.queries[1].target == CIRR_NAMES[7] and data.has_targets


def test_test1_has_no_targets(tmp_path):
    data = read_cirr(make_cirr(tmp_path, split="test"), "test")
    assert data.split == "test1" and not data.has_targets
    assert all(q.target is None for q in data.queries)


def test_missing_annotations_say_where_they_were_expected(tmp_path):
    with pytest.raises(FileNotFoundError, match="cap.rc2.val.json"):
        read_cirr(tmp_path, "val")


def test_rankings_remove_the_reference_and_metrics_match_the_hand_values(cirr_root):
    data = read_cirr(cirr_root, "val")
    I, I_subset = cirr_rankings(data, *hand_features())
    assert I[:, :7].tolist() == [[2, 1, 3, 4, 5, 6, 7], [7, 6, 5, 4, 3, 1, 0], [0, 1, 2, 3, 5, 7, 6]]
    assert (I[:, 7:] == -1).all()  # 8 images minus the reference
    assert I_subset.tolist() == [[2, 1, 3], [7, 6, 5], [0, 1, 2]]
    m = cirr_metrics(data, I, I_subset)
    expected = {
        "R@1": 100 / 3,
        "R@5": 200 / 3,
        "R@10": 100,
        "R@50": 100,
        "Rsubset@1": 100 / 3,
        "Rsubset@2": 200 / 3,
        "Rsubset@3": 200 / 3,
        "avg(R@5,Rsubset@1)": 50,
    }
    assert m == pytest.approx(expected)


def test_reference_removal_matters(cirr_root):
    # every query's best match is its own reference: without removal R@1 would be 0 for all three
    data = read_cirr(cirr_root, "val")
    I, _ = cirr_rankings(data, *hand_features())
    refs = [CIRR_NAMES.index(q.reference) for q in data.queries]
    assert not any(ref in row for ref, row in zip(refs, I.tolist(), strict=True))


def test_submission_files_have_the_server_format(tmp_path):
    data = read_cirr(make_cirr(tmp_path, split="test"), "test")
    I, I_subset = cirr_rankings(data, *hand_features())
    subs = cirr_submissions(data, I, I_subset)
    recall, subset = subs["recall"], subs["recall_subset"]
    assert recall["version"] == subset["version"] == "rc2"
    assert recall["metric"] == "recall" and subset["metric"] == "recall_subset"
    names = [ref.key for ref in data.gallery]
    for q, row in zip(data.queries, I, strict=True):
        ranked = recall[str(q.pairid)]
        assert ranked == [names[i] for i in row if i >= 0]  # top 50, here all 7 non-reference images
        assert q.reference not in ranked and len(set(ranked)) == len(ranked) == 7
        top3 = subset[str(q.pairid)]
        assert len(top3) == 3 and set(top3) <= set(q.members) - {q.reference}
    assert subset["12"] == ["test1-0-0-img0", "test1-1-1-img1", "test1-2-2-img0"]
    json.dumps(recall)  # plain JSON types only
