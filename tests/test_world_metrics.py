"""Hand-computed cases for the world report's retrieval metrics."""

from __future__ import annotations

import numpy as np
import pytest

from zscir_train.world import metrics


def test_rank_orders_by_score_and_excludes_the_reference():
    D = np.array([[0.1, 0.9, 0.5, 0.7], [0.3, 0.2, 0.8, 0.1]])
    assert metrics.rank(D, 3).tolist() == [[1, 3, 2], [2, 0, 1]]
    assert metrics.rank(D, 3, exclude=np.array([1, -1])).tolist() == [[3, 2, 0], [2, 0, 1]]


def test_recall_at_k():
    ranked = np.array([[4, 2, 7], [1, 0, 3], [5, 6, 8]])
    assert metrics.recall_at_k(ranked, np.array([2, 1, 9]), (1, 2, 3)) == {1: 1 / 3, 2: 2 / 3, 3: 2 / 3}


def test_subset_recall_ranks_members_without_the_reference():
    # gallery of 6; members [0..5]; reference 0 has the best score but is removed
    D = np.array([[0.99, 0.1, 0.5, 0.3, 0.7, 0.2]])
    members = np.array([[0, 1, 2, 3, 4, 5]])
    out = metrics.subset_recall_at_k(D, members, np.array([0]), np.array([2]), (1, 2, 3))
    assert out == {1: 0.0, 2: 1.0, 3: 1.0}  # order without reference: 4, 2, 3, ...


def test_average_precision_matches_the_circo_definition():
    ranked = np.array([10, 11, 12, 13, 14])
    # relevant at ranks 1 and 3 among 3 relevant: (1/1 + 2/3) / min(3, 5)
    assert metrics.average_precision_at_k(ranked, {10, 12, 99}, 5) == pytest.approx((1 + 2 / 3) / 3)
    # k smaller than #relevant: normalise by k
    assert metrics.average_precision_at_k(ranked, {11, 12, 13, 14, 15}, 2) == pytest.approx((1 / 2) / 2)
    assert metrics.average_precision_at_k(ranked, {99}, 5) == 0.0


def test_map_and_domain_recall_average_over_queries():
    ranked = np.array([[0, 1, 2], [2, 1, 0]])
    relevant = [{0}, {0, 1}]
    assert metrics.map_at_k(ranked, relevant, (3,))[3] == pytest.approx((1.0 + (1 / 2 * 1 + 2 / 3 * 1) / 2) / 2)
    assert metrics.domain_recall_at_k(ranked, relevant, (1, 2)) == {1: pytest.approx(0.5), 2: pytest.approx(0.75)}
