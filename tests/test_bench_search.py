"""The search benchmark: recall against numpy, vectors with neighbourhood structure, index sizes,
and a tiny end-to-end run whose report has every index type and exact search at recall 1."""

import math
import time

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


PAUSE = 0.2


@pytest.mark.parametrize("spec", ["flat", "hnsw", "IVF64,Flat"])
def test_build_times_the_index_it_returns_and_that_index_answers_queries(spec, monkeypatch):
    xb, _ = sb.clustered_vectors(10_000, 32, seed=3)
    build_index = sb.search.build_index

    def slow_build_index(*args, **kwargs):  # a build that takes at least PAUSE: the timer must see it
        time.sleep(PAUSE)
        return build_index(*args, **kwargs)

    monkeypatch.setattr(sb.search, "build_index", slow_build_index)
    start = time.perf_counter()
    index, build_s = sb.build(sb.IndexSpec(spec, spec, None), xb)
    wall = time.perf_counter() - start
    assert math.isfinite(build_s) and PAUSE <= build_s <= wall  # seconds, around the whole train + add
    assert index.ntotal == len(xb) and index.metric_type == faiss.METRIC_INNER_PRODUCT
    _, found = index.search(xb[:200], 1)
    assert (found[:, 0] == np.arange(200)).mean() >= (1.0 if spec == "flat" else 0.95)  # each vector finds itself


@pytest.fixture(scope="module")
def timed_tiny_report():
    start = time.perf_counter()
    report = sb.run_search_bench(32, sizes=(10_000,), n_queries=50, threads=1, policy1=QUICK_POLICY,
                                 policy_batch=QUICK_POLICY)
    return report, time.perf_counter() - start


@pytest.fixture(scope="module")
def tiny_report(timed_tiny_report):
    return timed_tiny_report[0]


def test_a_tiny_run_reports_every_index_with_its_sweep(timed_tiny_report):
    tiny_report, wall = timed_tiny_report
    results = tiny_report["results"]
    assert [r["index"] for r in results][0] == "Flat"
    assert len(results) == len(sb.index_specs(10_000, 32))
    chance = sb.K / 10_000
    for r in results:
        assert math.isfinite(r["build_s"]) and r["build_s"] > 0 and r["memory_bytes"] > 0
        assert r["bytes_per_vector"] == pytest.approx(r["memory_bytes"] / r["n"])
        assert max(p["recall_at_10"] for p in r["sweep"]) > 100 * chance, r["index"]  # the built index answers
        for point in r["sweep"]:
            assert 0.0 <= point["recall_at_10"] <= 1.0
            assert set(point["batch1"]) == {"1"} and point["p50_threads"] == 1 and point["qps_batch256"] > 0
            assert point["p50_ms"] == point["batch1"]["1"]["p50_ms"]
    assert sum(r["build_s"] for r in results) < wall  # builds are a part of the run, timed in seconds
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
