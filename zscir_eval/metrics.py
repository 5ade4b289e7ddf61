"""Ranking and retrieval metrics of the ZS-CIR benchmarks, numpy in / numpy out, in FAISS's vocabulary.

xq [Q, D] query features and xb [N, D] gallery features (L2-normalized: inner product = cosine),
k, and the search results D [Q, K] (scores, best first) and I [Q, K] (gallery indices, -1 where a
row has fewer than K results). Every metric is returned in percent, as the papers report them.
"""

# ruff: noqa: E741 -- `I` is FAISS's name for the [Q, K] ranking of gallery indices

from __future__ import annotations

from collections.abc import Sequence

import faiss
import numpy as np

from zscir_infer.search import NO_RESULT, drop_excluded

PERCENT = 100.0


def exact_search(xq: np.ndarray, xb: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exhaustive inner-product search: D, I [Q, k] (I = -1, D = -inf past the end of a small gallery)."""
    xq = np.ascontiguousarray(xq, dtype=np.float32)
    xb = np.ascontiguousarray(xb, dtype=np.float32)
    index = faiss.IndexFlatIP(xb.shape[1])
    index.add(xb)
    D, I = index.search(xq, k)
    D[I == NO_RESULT] = -np.inf  # FAISS pads with -FLT_MAX
    return D, I


def search_excluding(
    xq: np.ndarray, xb: np.ndarray, k: int, exclude: np.ndarray, search=exact_search
) -> tuple[np.ndarray, np.ndarray]:
    """Search with one gallery index removed per query (CIRR drops the reference image).

    exclude [Q]: the gallery index to remove for each query, or -1 for none.
    """
    D, I = search(xq, xb, k + 1)  # [Q, k + 1]: one spare result replaces the removed one
    # the runtime's one exclusion mechanism (galleries rank through it too); -1 pads "nothing to remove"
    return drop_excluded(D, I, np.asarray(exclude, dtype=np.int64)[:, None], k)


def search_subsets(
    xq: np.ndarray, xb: np.ndarray, subsets: Sequence[np.ndarray], k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Rank, for each query, only its own subset of the gallery (CIRR's subset recall).

    subsets: Q arrays of gallery indices. Returns D, I [Q, k] with global gallery indices.
    """
    D = np.full((len(subsets), k), -np.inf, dtype=np.float32)
    I = np.full((len(subsets), k), NO_RESULT, dtype=np.int64)
    for q, ids in enumerate(subsets):
        ids = np.asarray(ids, dtype=np.int64)
        scores = xb[ids] @ xq[q]  # [len(ids)]
        order = np.argsort(-scores, kind="stable")[:k]
        D[q, : len(order)] = scores[order]
        I[q, : len(order)] = ids[order]
    return D, I


def recall_at_k(I: np.ndarray, targets: np.ndarray, ks: Sequence[int]) -> dict[int, float]:
    """R@k: the percentage of queries whose single target index is among their first k results."""
    hits = I == np.asarray(targets)[:, None]  # [Q, K]
    return {k: float(hits[:, :k].any(axis=1).mean() * PERCENT) for k in ks}


def average_precision_at_k(I: np.ndarray, relevant: Sequence[np.ndarray], ks: Sequence[int]) -> np.ndarray:
    """AP@k per query [Q, len(ks)] as CIRCO defines it.

    AP@k = sum_{i<=k} P@i * rel_i / min(n_gt, k), with n_gt = len(relevant[q]) (the ground-truth
    list as given, target included) and P@i the precision of the first i results.
    """
    rel = np.stack(
        [np.isin(row, np.asarray(r)) & (row != NO_RESULT) for row, r in zip(I, relevant, strict=True)]
    )
    ranks = np.arange(1, I.shape[1] + 1)
    precision = np.cumsum(rel, axis=1) / ranks * rel  # [Q, K]: P@i where rel_i, else 0
    n_gt = np.array([len(r) for r in relevant], dtype=np.float64)
    return np.stack([precision[:, :k].sum(axis=1) / np.minimum(n_gt, k) for k in ks], axis=1)


def mean_average_precision_at_k(
    I: np.ndarray, relevant: Sequence[np.ndarray], ks: Sequence[int]
) -> dict[int, float]:
    """mAP@k in percent: AP@k averaged over the queries."""
    ap = average_precision_at_k(I, relevant, ks)
    return {k: float(ap[:, j].mean() * PERCENT) for j, k in enumerate(ks)}


def _set_hits(
    I: np.ndarray, query_labels: np.ndarray, gallery_labels: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """hits [Q, K] (the result's label is the query's) and n_relevant [Q] (gallery items with that label)."""
    query_labels = np.asarray(query_labels)
    gallery_labels = np.asarray(gallery_labels)
    labels, counts = np.unique(gallery_labels, return_counts=True)
    n_relevant = np.zeros(len(query_labels), dtype=np.int64)
    pos = np.searchsorted(labels, query_labels).clip(max=len(labels) - 1)
    present = labels[pos] == query_labels
    n_relevant[present] = counts[pos[present]]
    hits = (gallery_labels[I] == query_labels[:, None]) & (I != NO_RESULT)  # [Q, K]
    return hits, n_relevant


def set_recall_at_k(
    I: np.ndarray, query_labels: np.ndarray, gallery_labels: np.ndarray, ks: Sequence[int]
) -> dict[int, float]:
    """Pic2Word's domain-conversion recall: relevant items found in the top k / all relevant items.

    An item is relevant when its label equals the query's label; a query with no relevant item
    scores 0 and still counts in the mean (as in the official code). This divides exactly, in float64;
    `official_set_recall_at_k` repeats the official float32 arithmetic (n_relevant + 1e-5).
    """
    hits, n_relevant = _set_hits(I, query_labels, gallery_labels)
    safe = np.maximum(n_relevant, 1).astype(np.float64)
    return {k: float((hits[:, :k].sum(axis=1) / safe).mean() * PERCENT) for k in ks}


OFFICIAL_RECALL_EPS = np.float32(1e-5)  # get_metrics_imgnet: num_correct / (num_total + 1e-5)
OFFICIAL_QUERY_BATCH = 100  # get_metrics_imgnet averages per batch of 100 queries, weighted by its size


def official_set_recall_at_k(
    I: np.ndarray, query_labels: np.ndarray, gallery_labels: np.ndarray, ks: Sequence[int]
) -> dict[int, float]:
    """`set_recall_at_k` in the arithmetic of Pic2Word's get_metrics_imgnet: float32 throughout, each
    query's recall num_correct / (num_total + 1e-5), the mean taken per batch of 100 queries and the
    batches' sums accumulated in float32. It lies below the exact value by at most 1e-3 / n_relevant
    points per query (on the real lists at most 2.5e-4 points per domain); percent as the others."""
    hits, n_relevant = _set_hits(I, query_labels, gallery_labels)
    total = n_relevant.astype(np.float32) + OFFICIAL_RECALL_EPS  # [Q]
    metrics = {}
    for k in ks:
        recall = hits[:, :k].sum(axis=1).astype(np.float32) / total  # [Q] float32
        accumulated = np.float32(0)
        for start in range(0, len(recall), OFFICIAL_QUERY_BATCH):
            batch = recall[start : start + OFFICIAL_QUERY_BATCH]
            accumulated += batch.mean(dtype=np.float32) * np.float32(len(batch))
        metrics[k] = float(accumulated / np.float32(len(recall))) * PERCENT
    return metrics
