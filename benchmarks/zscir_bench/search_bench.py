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


def bench_vectors(n: int, d: int, n_queries: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """n clustered gallery vectors, queries from the same clusters, and their exact top-K ids."""
    xb, centers = clustered_vectors(n, d, seed)
    xq, _ = clustered_vectors(n_queries, d, seed + 2, centers)
    return xb, xq, exact_topk(xb, xq)


def run_search_bench(d: int, sizes: Sequence[int] = DEFAULT_SIZES, n_queries: int = DEFAULT_QUERIES,
                     threads: int = 1, seed: int = 0, progress=None,
                     policy1: Policy = BATCH1_POLICY, policy_batch: Policy = THROUGHPUT_POLICY) -> dict:
    """Every index type at every size; `progress(str)` is told what runs next."""
    faiss.omp_set_num_threads(threads)
    results = []
    for n in sizes:
        xb, xq, I_exact = bench_vectors(n, d, n_queries, seed)
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


# --- FAISS vs Milvus Lite on the same vectors, and --engine ray vs in-process indexing (results/scale) -------
STORE_INSERT_CHUNK = 10_000
STORE_QUERIES = 200  # Milvus Lite answers one query in tens of ms: recall over 200 queries, p50 over the policy
STORE_POLICY = Policy(warmup=3, min_reps=30, min_seconds=1.0, max_reps=200)


def bench_store(store: str, xb: np.ndarray, xq: np.ndarray, I_exact: np.ndarray, work, spec: str = "auto",
                policy: Policy = STORE_POLICY) -> dict:
    """One gallery store over xb: insert (the store's add, in chunks), index build (persist), recall@10 of
    xq against I_exact, p50 at batch 1 through the store's search (what `zscir-infer query` calls)."""
    import shutil

    from zscir_infer.gallery import Gallery

    root = work / f"{store}-{len(xb)}"
    shutil.rmtree(root, ignore_errors=True)
    n = len(xb)
    g = Gallery.create(root, bundle_id="bench", embed_dim=xb.shape[1], index_spec=spec, store=store)
    try:
        t0 = time.perf_counter()
        for lo in range(0, n, STORE_INSERT_CHUNK):
            hi = min(n, lo + STORE_INSERT_CHUNK)
            names = [f"v{i}" for i in range(lo, hi)]
            g.store.add(np.arange(lo, hi, dtype=np.int64), xb[lo:hi], names, names)
        t1 = time.perf_counter()
        g.build_index()
        t2 = time.perf_counter()
        _, I = g.store.search(xq, K)  # the first search also loads a faiss index file
        state = {"i": 0}

        def one_query():
            i = state["i"] = (state["i"] + 1) % len(xq)
            g.store.search(xq[i : i + SINGLE_QUERY_BATCH], K)

        single = measure(one_query, SINGLE_QUERY_BATCH, policy)
        return {"store": store, "n": n, "spec": spec, "index": g.meta["index"]["factory"],
                "insert_s": t1 - t0, "insert_per_s": n / (t1 - t0), "build_s": t2 - t1,
                "recall_at_10": recall_at_k(I, I_exact), "p50_ms": single.p50_ms, "batch1": single.to_dict()}
    finally:
        g.close()
        shutil.rmtree(root, ignore_errors=True)


def run_store_bench(d: int, sizes: Sequence[int], stores: Sequence[str], work, n_queries: int = STORE_QUERIES,
                    threads: int = 1, seed: int = 0, spec: str = "auto", progress=None,
                    policy: Policy = STORE_POLICY) -> dict:
    """Every store at every size on the same clustered vectors and queries."""
    faiss.omp_set_num_threads(threads)
    results = []
    for n in sizes:
        xb, xq, I_exact = bench_vectors(n, d, n_queries, seed)
        for store in stores:
            if progress:
                progress(f"store {store} ({spec}) over {n:,} x {d}")
            results.append(bench_store(store, xb, xq, I_exact, work, spec, policy))
        del xb
    return {"d": d, "sizes": list(sizes), "stores": list(stores), "n_queries": n_queries, "k": K, "spec": spec,
            "threads": threads,
            "vectors": {"kind": "synthetic clustered unit vectors", "vectors_per_cluster": VECTORS_PER_CLUSTER,
                        "spread": CLUSTER_SPREAD, "spectrum_decay": SPECTRUM_DECAY, "seed": seed},
            "store_results": results}


def run_engine_bench(bundle, n_images: int, engines: Sequence[str], work, batch_size: int = 32,
                     progress=None) -> dict:
    """`index_images` throughput per engine (local: in-process; ray: Ray Data actors) over the same
    n_images generated PNGs into a faiss gallery; the Ray figure includes starting the local cluster."""
    import shutil

    from PIL import Image

    from zscir_infer.indexing import index_images

    images = work / f"images-{n_images}"
    if not images.is_dir() or len(list(images.glob("*.png"))) != n_images:
        shutil.rmtree(images, ignore_errors=True)
        images.mkdir(parents=True)
        rng = np.random.default_rng(0)
        for i in range(n_images):
            Image.fromarray(rng.integers(0, 256, (96, 128, 3), dtype=np.uint8)).save(images / f"im{i:06d}.png")
    rows = []
    for engine in engines:
        if progress:
            progress(f"index {n_images} images with --engine {engine}")
        out = work / f"gallery-{engine}"
        shutil.rmtree(out, ignore_errors=True)
        summary = index_images(images, bundle=bundle, gallery=out, engine=engine, batch_size=batch_size)
        rows.append({"engine": engine, "images": summary.added, "seconds": summary.seconds,
                     "images_per_s": summary.added / summary.seconds})
        shutil.rmtree(out, ignore_errors=True)
    return {"bundle": str(bundle), "n_images": n_images, "batch_size": batch_size, "image_size": [128, 96],
            "engines": rows}


def scale_markdown(report: dict) -> str:
    cpu = report["machine"]["cpu"]
    lines = [f"# Gallery scale: FAISS vs Milvus Lite, and indexing on Ray ({report['created']})", "",
             f"Command: `{report['command']}`", "",
             f"Machine: {cpu.get('model', '?')}, {cpu.get('usable_cores', '?')} usable cores, instruction sets: "
             f"{', '.join(cpu.get('instruction_sets', [])) or '?'}; threads {report['machine']['threads']}; "
             f"load shared: {report['load']['shared']}.", ""]
    if report.get("store_results"):
        lines += [f"## Search: {report['d']}-d {report['vectors']['kind']}, spec `{report['spec']}`, "
                  f"{report['n_queries']} queries, k = {report['k']}", "",
                  "| store | n | index | insert (vectors/s) | build (s) | recall@10 | p50 batch 1 (ms) |",
                  "| --- | ---: | --- | ---: | ---: | ---: | ---: |"]
        for r in report["store_results"]:
            lines.append(f"| {r['store']} | {r['n']:,} | {r['index']} | {r['insert_per_s']:,.0f} | {r['build_s']:.1f} | "
                         f"{r['recall_at_10']:.3f} | {r['p50_ms']:.2f} |")
        lines.append("")
    if report.get("engine"):
        e = report["engine"]
        lines += [f"## Indexing throughput: {e['n_images']} generated {e['image_size'][0]}x{e['image_size'][1]} PNGs, "
                  f"bundle `{e['bundle']}`, batch {e['batch_size']}, faiss gallery", "",
                  "| engine | images | seconds | images/s |", "| --- | ---: | ---: | ---: |"]
        for r in e["engines"]:
            lines.append(f"| {r['engine']} | {r['images']} | {r['seconds']:.1f} | {r['images_per_s']:.1f} |")
        lines.append("")
    return "\n".join(lines)


def write_scale_report(report: dict, out) -> list:
    from zscir_infer.atomic import atomic_write_json, atomic_write_text

    out.mkdir(parents=True, exist_ok=True)
    paths = [out / f"{report['kind']}.json", out / f"{report['kind']}.md"]
    atomic_write_json(paths[0], report)
    atomic_write_text(paths[1], scale_markdown(report))
    return paths
