"""Gallery search: flat, HNSW, IVF-Flat and IVF-PQ over 10k-1M vectors at the bundle's D.

Indexes are built by the runtime's own `zscir_infer.search.build_index` (what `zscir-infer` ships:
inner product, its training sample, polysemous training off, its default search parameters); then the
search parameter (efSearch, nprobe) is swept. Per index and size: build time (train + add), memory (the
serialized index, counted without copying it), and per parameter value p50 latency at batch 1,
throughput at batch 256 and recall@10 against exact search. Uniform random vectors make every
approximate index look bad (no neighbourhood structure), so the gallery is clustered with an
anisotropic spread, as real CLIP embeddings are; the report says the vectors are synthetic.
"""

# ruff: noqa: E741 -- `I` is FAISS's name for the [Q, K] ranking of gallery indices

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import faiss
import numpy as np

from zscir_bench.timing import Policy, measure
from zscir_infer import search

K = 10  # recall@10
SINGLE_QUERY_BATCH = 1
THROUGHPUT_BATCH = 256
DEFAULT_SIZES = (10_000, 100_000, 1_000_000)
DEFAULT_QUERIES = 1000
VECTORS_PER_CLUSTER = 500  # clusters grow with the gallery (a bigger gallery holds more kinds of image)
CLUSTER_SPREAD = 0.7  # noise norm relative to the unit cluster centre
SPECTRUM_DECAY = 0.5  # noise variance along the i-th principal direction ~ i^-decay (anisotropic, like CLIP)
CHUNK = 65_536  # vectors generated per step, bounding temporary memory
HNSW_EF_SEARCH = (16, 32, 64, 128, 256)
IVF_NPROBE = (1, 4, 8, 16, 32, 64)
BATCH1_POLICY = Policy(warmup=5, min_reps=50, min_seconds=1.0, max_reps=1000)
THROUGHPUT_POLICY = Policy(warmup=1, min_reps=3, min_seconds=1.0, max_reps=50)


@dataclass(frozen=True)
class IndexSpec:
    name: str  # what the report calls it
    spec: str  # a zscir_infer.search spec: a named one or a faiss.index_factory string
    param: str | None  # the ParameterSpace name swept, or None (exact)
    values: tuple[int, ...] = ()


def index_specs(n: int, d: int) -> list[IndexSpec]:
    """Exact, the runtime's `hnsw` and `ivfpq` (IVF-PQ re-ranked with the exact vectors), IVF-Flat, and
    IVF-PQ without re-ranking (to show why the runtime re-ranks)."""
    nlist = search.ivf_lists(n)
    nprobe = tuple(p for p in IVF_NPROBE if p <= nlist)
    ivfpq = search.resolve_factory("ivfpq", n, d)
    bare_pq = ivfpq.removesuffix(",RFlat")
    return [
        IndexSpec("Flat", "flat", None),
        IndexSpec(search.resolve_factory("hnsw", n, d), "hnsw", "efSearch", HNSW_EF_SEARCH),
        IndexSpec(f"IVF{nlist},Flat", f"IVF{nlist},Flat", "nprobe", nprobe),
        IndexSpec(bare_pq, bare_pq, "nprobe", nprobe),
        IndexSpec(ivfpq, "ivfpq", "nprobe", nprobe),
    ]


def clustered_vectors(n: int, d: int, seed: int = 0, centers: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Unit vectors [n, d] float32 around cluster centres, with anisotropic noise; returns (x, centers).

    Pass the gallery's centers to draw queries from the same distribution.
    """
    rng = np.random.default_rng(seed)
    if centers is None:
        n_clusters = max(1, n // VECTORS_PER_CLUSTER)
        centers = rng.standard_normal((n_clusters, d), dtype=np.float32)
        centers /= np.linalg.norm(centers, axis=1, keepdims=True)
    scales = (1.0 + np.arange(d)) ** (-SPECTRUM_DECAY / 2)  # std per direction
    scales *= CLUSTER_SPREAD / np.linalg.norm(scales)  # expected noise norm = CLUSTER_SPREAD
    basis = np.linalg.qr(np.random.default_rng(seed + 1).standard_normal((d, d)))[0]  # fixed rotation
    mixing = (scales[:, None] * basis).astype(np.float32)  # [d, d]
    x = np.empty((n, d), dtype=np.float32)
    for start in range(0, n, CHUNK):
        rows = min(CHUNK, n - start)
        labels = rng.integers(0, len(centers), rows)
        chunk = centers[labels] + rng.standard_normal((rows, d), dtype=np.float32) @ mixing
        x[start : start + rows] = chunk / np.linalg.norm(chunk, axis=1, keepdims=True)
    return x, centers


def recall_at_k(I: np.ndarray, I_exact: np.ndarray, k: int = K) -> float:
    """k-recall@k: the mean share of the exact top-k found in the approximate top-k."""
    found = [len(np.intersect1d(a[:k], b[:k])) for a, b in zip(I, I_exact, strict=True)]
    return float(np.mean(found)) / k


def index_bytes(index: faiss.Index) -> int:
    """Size of the serialized index, counted by a writer that keeps nothing (no 2 GB copy at 1M)."""
    total = 0

    def count(chunk: bytes) -> int:
        nonlocal total
        total += len(chunk)
        return len(chunk)

    faiss.write_index(index, faiss.PyCallbackIOWriter(count))
    return total


def build(spec: IndexSpec, xb: np.ndarray) -> tuple[faiss.Index, float]:
    """(index, seconds to train and add), built on CPU as the runtime builds it."""
    t0 = time.perf_counter()
    index = search.build_index(xb, spec.spec, gpu=False)
    return index, time.perf_counter() - t0


def _search_timings(index: faiss.Index, xq: np.ndarray, threads: int, policy1: Policy, policy_batch: Policy) -> dict:
    """Batch 1 on one thread and on all (best of the two is `p50_ms`), batch 256 on all threads.

    A single query mostly runs on one thread anyway; on a busy machine waking an OpenMP team for it can
    cost more than the search, so both figures are kept."""
    state = {"i": 0}

    def one_query():
        i = state["i"] = (state["i"] + 1) % len(xq)
        index.search(xq[i : i + SINGLE_QUERY_BATCH], K)

    single = {}
    for n in sorted({1, threads}):
        faiss.omp_set_num_threads(n)
        single[n] = measure(one_query, SINGLE_QUERY_BATCH, policy1)
    faiss.omp_set_num_threads(threads)
    batch = xq[:THROUGHPUT_BATCH]
    many = measure(lambda: index.search(batch, K), len(batch), policy_batch)
    best = min(single, key=lambda n: single[n].p50_ms)
    return {"p50_ms": single[best].p50_ms, "p50_threads": best,
            "batch1": {str(n): s.to_dict() for n, s in single.items()},
            "qps_batch256": many.items_per_s, "batch256": many.to_dict()}


def bench_index(spec: IndexSpec, xb: np.ndarray, xq: np.ndarray, I_exact: np.ndarray, threads: int,
                policy1: Policy = BATCH1_POLICY, policy_batch: Policy = THROUGHPUT_POLICY) -> dict:
    index, build_s = build(spec, xb)
    size = index_bytes(index)
    defaults = search.default_search_params(index)
    sweep = []
    for value in spec.values or (None,):
        if value is not None:
            search.set_search_params(index, {spec.param: value})
        _, I = index.search(xq, K)
        timings = _search_timings(index, xq, threads, policy1, policy_batch)
        sweep.append({"param": spec.param, "value": value, "recall_at_10": recall_at_k(I, I_exact), **timings})
    del index
    return {"n": len(xb), "index": spec.name, "spec": spec.spec, "defaults": defaults, "build_s": build_s,
            "memory_bytes": size, "bytes_per_vector": size / len(xb), "sweep": sweep}


def exact_topk(xb: np.ndarray, xq: np.ndarray) -> np.ndarray:
    flat = faiss.IndexFlatIP(xb.shape[1])
    flat.add(xb)
    return flat.search(xq, K)[1]


def run_search_bench(d: int, sizes: Sequence[int] = DEFAULT_SIZES, n_queries: int = DEFAULT_QUERIES,
                     threads: int = 1, seed: int = 0, progress=None,
                     policy1: Policy = BATCH1_POLICY, policy_batch: Policy = THROUGHPUT_POLICY) -> dict:
    """Every index type at every size; `progress(str)` is told what runs next."""
    faiss.omp_set_num_threads(threads)
    results = []
    for n in sizes:
        xb, centers = clustered_vectors(n, d, seed)
        xq, _ = clustered_vectors(n_queries, d, seed + 2, centers)
        I_exact = exact_topk(xb, xq)
        for spec in index_specs(n, d):
            if progress:
                progress(f"search {spec.name} over {n:,} x {d}")
            results.append(bench_index(spec, xb, xq, I_exact, threads, policy1, policy_batch))
        del xb
    return {
        "d": d, "sizes": list(sizes), "n_queries": n_queries, "k": K, "threads": threads,
        "vectors": {"kind": "synthetic clustered unit vectors", "vectors_per_cluster": VECTORS_PER_CLUSTER,
                    "spread": CLUSTER_SPREAD, "spectrum_decay": SPECTRUM_DECAY, "seed": seed},
        "results": results,
    }


def best_meeting(results: list[dict], n: int, min_recall: float) -> dict | None:
    """The fastest approximate configuration at size n with recall@10 >= min_recall (p50 at batch 1)."""
    candidates = [
        {"index": r["index"], "build_s": r["build_s"], "memory_bytes": r["memory_bytes"], **point}
        for r in results if r["n"] == n and r["index"] != "Flat"
        for point in r["sweep"] if point["recall_at_10"] >= min_recall
    ]
    return min(candidates, key=lambda c: c["p50_ms"], default=None)
