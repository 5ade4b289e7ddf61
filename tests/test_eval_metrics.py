"""The shared ranking and metric functions, on rankings and scores chosen by hand."""

# ruff: noqa: E741 -- `I` is FAISS's name for the [Q, K] ranking

import numpy as np
import pytest

from zscir_eval.metrics import (
    average_precision_at_k,
    exact_search,
    mean_average_precision_at_k,
    recall_at_k,
    search_excluding,
    search_subsets,
    set_recall_at_k,
)


def unit_rows(scores: list[float]) -> np.ndarray:
    """Gallery vectors whose cosine with the query [1, 0] is exactly `scores`."""
    s = np.array(scores, dtype=np.float32)
    return np.stack([s, np.sqrt(1 - s**2)], axis=1)


XQ = np.array([[1.0, 0.0]], dtype=np.float32)
XB = unit_rows([0.5, 0.9, 0.1, 0.7, 0.3])  # ranking by score: 1, 3, 0, 4, 2


def test_exact_search_orders_by_cosine_and_pads():
    D, I = exact_search(XQ, XB, 7)
    assert I.tolist() == [[1, 3, 0, 4, 2, -1, -1]]
    np.testing.assert_allclose(D[0, :5], [0.9, 0.7, 0.5, 0.3, 0.1], atol=1e-6)


def test_search_excluding_removes_only_the_given_index():
    _, I = search_excluding(XQ, XB, 3, np.array([3]))
    assert I.tolist() == [[1, 0, 4]]  # 3 removed, the 4th result moves up
    _, I = search_excluding(XQ, XB, 3, np.array([2]))
    assert I.tolist() == [[1, 3, 0]]  # 2 was not in the top 3: nothing changes
    _, I = search_excluding(XQ, XB, 3, np.array([-1]))
    assert I.tolist() == [[1, 3, 0]]
    D, I = search_excluding(XQ, XB, 5, np.array([1]))  # whole gallery: one slot stays empty
    assert I.tolist() == [[3, 0, 4, 2, -1]] and D[0, -1] == -np.inf


def test_search_subsets_ranks_each_query_within_its_own_items():
    xq = np.concatenate([XQ, XQ])
    _, I = search_subsets(xq, XB, [np.array([0, 2, 4]), np.array([2, 1])], 3)
    assert I.tolist() == [[0, 4, 2], [1, 2, -1]]


def test_recall_at_k_by_hand():
    # 3 queries over 8 gallery items; targets at rank 2, rank 5 and nowhere in the top 5
    I = np.array([[3, 1, 7, 0, 2], [5, 4, 6, 2, 0], [2, 7, 1, 3, 6]])
    targets = np.array([1, 0, 4])
    r = recall_at_k(I, targets, (1, 2, 5))
    assert r[1] == pytest.approx(0.0)
    assert r[2] == pytest.approx(100 / 3)  # query 0 only
    assert r[5] == pytest.approx(200 / 3)  # queries 0 and 1


def test_average_precision_by_hand():
    # query 0: relevant {1, 2, 3} (3 ground truths) found at ranks 2 and 4:
    #   AP@1 = 0 / min(3,1) = 0; AP@2 = (1/2) / min(3,2) = 0.25; AP@5 = (1/2 + 2/4) / min(3,5) = 1/3
    # query 1: its single ground truth at rank 1: AP@k = 1 for every k
    I = np.array([[4, 1, 7, 2, 5], [6, 0, 3, 1, 2]])
    relevant = [np.array([1, 2, 3]), np.array([6])]
    ap = average_precision_at_k(I, relevant, (1, 2, 5))
    np.testing.assert_allclose(ap, [[0.0, 0.25, 1 / 3], [1.0, 1.0, 1.0]])
    m = mean_average_precision_at_k(I, relevant, (1, 2, 5))
    assert m[1] == pytest.approx(50.0)
    assert m[2] == pytest.approx(62.5)
    assert m[5] == pytest.approx(100 * (1 / 3 + 1) / 2)


def test_average_precision_never_counts_padding_or_exceeds_one():
    I = np.array([[2, -1, -1]])
    ap = average_precision_at_k(I, [np.array([2, -1])], (3,))  # a -1 in the list must not match padding
    assert ap[0, 0] == pytest.approx(1 / 2)


def circo_official_ap(predictions, gt_ids, rank):
    """The lines of miccunifi/CIRCO src/evaluation.py, as an oracle."""
    ap_labels = np.isin(predictions, gt_ids)
    precisions = np.cumsum(ap_labels, axis=0) * ap_labels
    precisions = precisions / np.arange(1, ap_labels.shape[0] + 1)
    return float(np.sum(precisions[:rank]) / min(len(gt_ids), rank))


def test_average_precision_matches_the_official_formula_on_random_rankings():
    rng = np.random.default_rng(0)
    I = np.stack([rng.permutation(200)[:50] for _ in range(20)])
    relevant = [rng.choice(200, size=rng.integers(1, 24), replace=False) for _ in range(20)]
    ks = (5, 10, 25, 50)
    ours = average_precision_at_k(I, relevant, ks)
    official = [[circo_official_ap(row, r, k) for k in ks] for row, r in zip(I, relevant, strict=True)]
    np.testing.assert_allclose(ours, official, rtol=1e-12)


def test_set_recall_by_hand():
    # gallery labels: class + 1000 * domain; queries ask for domain 0 of classes 0, 1, 2
    gallery_labels = np.array([0, 1000, 0, 1, 2000, 0, 1000, 1])
    query_labels = np.array([0, 1, 2])
    # query 0: 3 relevant (0, 2, 5); top 2 holds 0 -> 1/3; top 5 holds 0, 5, 2 -> 3/3
    # query 1: 2 relevant (3, 7); both in the top 2 -> 1
    # query 2: nothing relevant in the gallery -> 0, still counted
    I = np.array([[0, 1, 5, 3, 2], [7, 3, 0, 1, 2], [4, 0, 1, 2, 3]])
    r = set_recall_at_k(I, query_labels, gallery_labels, (2, 5))
    assert r[2] == pytest.approx(100 * (1 / 3 + 1 + 0) / 3)
    assert r[5] == pytest.approx(100 * (1 + 1 + 0) / 3)
