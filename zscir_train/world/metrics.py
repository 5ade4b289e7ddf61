"""Retrieval metrics of the world's baseline report, numpy in / numpy out (FAISS vocabulary:
`D` scores [Q, N], `ranked` gallery indices best first [Q, k]). The official harness lives in zscir_eval;
these follow the same definitions (DESIGN §6) so the two can be checked against each other.
"""

from __future__ import annotations

import numpy as np


def rank(D: np.ndarray, k: int, exclude: np.ndarray | None = None) -> np.ndarray:
    """Top-k gallery indices per query by descending score ([Q, k]); `exclude` [Q] (or -1) is removed."""
    D = D.astype(np.float64, copy=True)
    if exclude is not None:
        rows = np.flatnonzero(exclude >= 0)
        D[rows, exclude[rows]] = -np.inf
    k = min(k, D.shape[1])
    top = np.argpartition(-D, k - 1, axis=1)[:, :k]
    order = np.argsort(-np.take_along_axis(D, top, axis=1), axis=1, kind="stable")
    return np.take_along_axis(top, order, axis=1)


def recall_at_k(ranked: np.ndarray, target: np.ndarray, ks: tuple[int, ...]) -> dict[int, float]:
    """CIRR recall: share of queries whose single target is in the top k."""
    hits = ranked == target[:, None]  # [Q, K]
    return {k: float(hits[:, :k].any(axis=1).mean()) for k in ks}


def subset_recall_at_k(D: np.ndarray, members: np.ndarray, reference: np.ndarray, target: np.ndarray,
                       ks: tuple[int, ...]) -> dict[int, float]:
    """CIRR subset recall: rank only the img_set members ([Q, 6] gallery indices) minus the reference."""
    scores = np.take_along_axis(D, members, axis=1).astype(np.float64)  # [Q, 6]
    scores[members == reference[:, None]] = -np.inf
    order = np.argsort(-scores, axis=1, kind="stable")
    ranked = np.take_along_axis(members, order, axis=1)[:, :-1]  # the reference is last
    return recall_at_k(ranked, target, ks)


def average_precision_at_k(ranked: np.ndarray, relevant: set[int], k: int) -> float:
    """CIRCO AP@k = sum_{i<=k} P@i * rel_i / min(#relevant, k)."""
    rel = np.array([int(i) in relevant for i in ranked[:k]], dtype=np.float64)
    precision = np.cumsum(rel) / np.arange(1, len(rel) + 1)
    return float((precision * rel).sum() / min(len(relevant), k))


def map_at_k(ranked: np.ndarray, relevant: list[set[int]], ks: tuple[int, ...]) -> dict[int, float]:
    return {k: float(np.mean([average_precision_at_k(row, rel, k) for row, rel in zip(ranked, relevant, strict=True)]))
            for k in ks}


def domain_recall_at_k(ranked: np.ndarray, relevant: list[set[int]], ks: tuple[int, ...]) -> dict[int, float]:
    """Pic2Word domain conversion: share of all relevant items found in the top k, averaged over queries."""
    return {k: float(np.mean([len(set(row[:k].tolist()) & rel) / len(rel) for row, rel in zip(ranked, relevant, strict=True)]))
            for k in ks}
