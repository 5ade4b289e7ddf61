"""The search benchmark: recall against numpy, vectors with neighbourhood structure, index sizes,
and a tiny end-to-end run whose report has every index type and exact search at recall 1."""

import faiss
import numpy as np
import pytest
from zscir_bench import search_bench as sb
from zscir_bench.timing import QUICK_POLICY


def numpy_top_k(xq, xb, k):
    return np.argsort(-(xq @ xb.T), axis=1, kind="stable")[:, :k]


def test_recall_counts_the_shared_ids_of_the_top_k():
    exact = np.array([[0, 1, 2, 3], [4, 5, 6, 7]])
    found = np.array([[3, 2, 9, 8], [4, 5, 6, 7]])
    assert sb.recall_at_k(found, exact, k=4) == pytest.approx((2 / 4 + 4 / 4) / 2)


def test_recall_of_exact_search_is_one_and_matches_numpy():
    xb, centers = sb.clustered_vectors(3000, 32, seed=1)
    xq, _ = sb.clustered_vectors(40, 32, seed=2, centers=centers)
    exact = sb.exact_topk(xb, xq)
    reference = numpy_top_k(xq, xb, sb.K)
    assert sb.recall_at_k(exact, reference) == pytest.approx(1.0, abs=0.01)  # ties may reorder
    shuffled = reference.copy()
    shuffled[:, 5:] = -1  # half of each list lost
    assert sb.recall_at_k(shuffled, reference) == pytest.approx(0.5)


def test_vectors_are_unit_reproducible_and_clustered():
    x, centers = sb.clustered_vectors(2000, 64, seed=0)
    again, _ = sb.clustered_vectors(2000, 64, seed=0)
    assert x.shape == (2000, 64) and x.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(x, axis=1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(x, again)
    sims = x[:200] @ x.T
    np.fill_diagonal(sims[:, :200], -1)
    nearest, typical = sims.max(axis=1).mean(), np.median(sims)
    assert nearest > typical + 0.4  # a neighbourhood structure ANN indexes can use
    assert len(centers) == 2000 // sb.VECTORS_PER_CLUSTER


def test_index_bytes_equal_the_serialized_index():
    xb, _ = sb.clustered_vectors(500, 16)
    index = faiss.IndexHNSWFlat(16, 8)
    index.add(xb)
    assert sb.index_bytes(index) == faiss.serialize_index(index).nbytes


def test_index_specs_are_the_runtimes():
    specs = {s.spec: s for s in sb.index_specs(100_000, 512)}
    assert {"flat", "hnsw", "ivfpq"} <= set(specs)
    assert specs["hnsw"].param == "efSearch" and specs["ivfpq"].param == "nprobe"
    assert any(s.spec.startswith("IVF") and s.spec.endswith(",Flat") for s in specs.values())


@pytest.fixture(scope="module")
def tiny_report():
    return sb.run_search_bench(32, sizes=(10_000,), n_queries=50, threads=1, policy1=QUICK_POLICY,
                               policy_batch=QUICK_POLICY)


def test_a_tiny_run_reports_every_index_with_its_sweep(tiny_report):
    results = tiny_report["results"]
    assert [r["index"] for r in results][0] == "Flat"
    assert len(results) == len(sb.index_specs(10_000, 32))
    for r in results:
        assert r["build_s"] >= 0 and r["memory_bytes"] > 0
        assert r["bytes_per_vector"] == pytest.approx(r["memory_bytes"] / r["n"])
        for point in r["sweep"]:
            assert 0.0 <= point["recall_at_10"] <= 1.0
            assert set(point["batch1"]) == {"1"} and point["p50_threads"] == 1 and point["qps_batch256"] > 0
            assert point["p50_ms"] == point["batch1"]["1"]["p50_ms"]
    flat = results[0]
    assert flat["sweep"][0]["recall_at_10"] == pytest.approx(1.0)
    assert flat["bytes_per_vector"] >= 32 * 4  # the raw float32 vectors
    hnsw = next(r for r in results if r["spec"] == "hnsw")
    recalls = [p["recall_at_10"] for p in hnsw["sweep"]]
    assert recalls[-1] >= 0.9 and recalls[-1] >= recalls[0]  # a larger efSearch finds more


def test_best_meeting_picks_the_fastest_point_above_the_recall(tiny_report):
    best = sb.best_meeting(tiny_report["results"], 10_000, 0.5)
    assert best is not None and best["index"] != "Flat" and best["recall_at_10"] >= 0.5
    candidates = [p["p50_ms"] for r in tiny_report["results"] if r["index"] != "Flat" for p in r["sweep"]
                  if p["recall_at_10"] >= 0.5]
    assert best["p50_ms"] == min(candidates)
    assert sb.best_meeting(tiny_report["results"], 10_000, 1.01) is None
