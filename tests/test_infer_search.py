"""FAISS index specs against the numpy brute-force oracle: flat is exact, HNSW and IVF-PQ+refine recall@10."""

# ruff: noqa: N806, E741 -- xb, xq, D, I: FAISS's names

import faiss
import numpy as np
import pytest

from tests.fixtures.gallery import brute_force, clustered_unit_vectors, recall_at_k
from zscir_infer.search import (
    AUTO_FLAT_MAX,
    MIN_PQ_TRAIN_POINTS,
    IndexSpecError,
    build_index,
    check_search_params,
    check_spec,
    default_search_params,
    gpu_count,
    pq_subquantizers,
    resolve_factory,
    set_search_params,
    to_cpu,
    to_gpu,
)

K = 10
N, D_DIM, N_QUERIES = 20_000, 64, 200
MIN_RECALL = 0.9  # HNSW32 and IVF-PQ + exact re-ranking on clustered vectors (both measure ~0.97-1.0)


@pytest.fixture(scope="module")
def data():
    x = clustered_unit_vectors(N + N_QUERIES, D_DIM, seed=1, n_clusters=100)
    xb, xq = x[:N], x[N:]
    return xb, xq, brute_force(xq, xb, K)


def test_flat_equals_numpy_brute_force(data):
    xb, xq, (D_true, I_true) = data
    index = build_index(xb, "flat")
    D, I = index.search(xq, K)
    np.testing.assert_array_equal(I, I_true)
    np.testing.assert_allclose(D, D_true, atol=1e-5)


def test_auto_is_exact_below_the_threshold_and_ivf_flat_above():
    assert resolve_factory("auto", AUTO_FLAT_MAX - 1, 512) == "Flat"
    assert resolve_factory("auto", AUTO_FLAT_MAX, 512) == "IVF1024,Flat"
    assert resolve_factory("ivfpq", 200_000, 512) == "IVF2048,PQ64x8,RFlat"
    assert resolve_factory("IVF256,Flat", 10, 512) == "IVF256,Flat"  # factory strings pass through


def test_pq_subquantizers_divide_the_dimension():
    for d, m in [(512, 64), (768, 96), (48, 6), (1024, 128), (50, 5)]:
        assert pq_subquantizers(d) == m and d % m == 0


def test_hnsw_recall_at_10(data):
    xb, xq, (_, I_true) = data
    index = build_index(xb, "hnsw")
    assert default_search_params(index) == {"efSearch": 64}
    recall = recall_at_k(index.search(xq, K)[1], I_true)
    print(f"HNSW32 efSearch=64 recall@10 = {recall:.3f}")
    assert recall >= MIN_RECALL
    set_search_params(index, {"efSearch": 8})
    assert recall_at_k(index.search(xq, K)[1], I_true) < recall  # the parameter reached the index


def test_ivfpq_needs_its_refine_stage(data):
    xb, xq, (D_true, I_true) = data
    index = build_index(xb, "ivfpq")
    params = default_search_params(index)
    assert set(params) == {"nprobe", "k_factor_rf"}
    D, I = index.search(xq, K)
    recall = recall_at_k(I, I_true)
    np.testing.assert_allclose(D[I == I_true], D_true[I == I_true], atol=1e-5)  # re-ranked by exact scores
    set_search_params(index, {"k_factor_rf": 1})  # re-ranks only PQ's own top k: PQ's recall
    pq_recall = recall_at_k(index.search(xq, K)[1], I_true)
    print(
        f"IVF-PQ recall@10 = {pq_recall:.3f} without refine, {recall:.3f} with RFlat (k_factor {params['k_factor_rf']})"
    )
    assert recall >= MIN_RECALL and recall > pq_recall


def test_ivfpq_refuses_galleries_too_small_to_train():
    with pytest.raises(IndexSpecError, match="--index flat"):
        resolve_factory("ivfpq", MIN_PQ_TRAIN_POINTS - 1, 64)


def test_ivf_flat_factory_string_with_nprobe_override(data):
    xb, xq, (_, I_true) = data
    index = build_index(xb, "IVF64,Flat", {"nprobe": 64})
    assert faiss.extract_index_ivf(index).nprobe == 64
    np.testing.assert_array_equal(index.search(xq, K)[1], I_true)  # every list probed: exact


@pytest.mark.parametrize("spec", ["IVF", "HNSWx", "Flat,Flat", "PQ7x8"])  # PQ7 does not divide 64
def test_unknown_or_unbuildable_specs_are_refused_before_any_work(spec):
    with pytest.raises(IndexSpecError, match="index_factory"):
        check_spec(spec, 64)


def test_search_parameters_that_do_not_apply_are_refused():
    with pytest.raises(IndexSpecError, match="efSearch"):
        check_search_params("flat", 1000, 64, {"efSearch": 32})
    with pytest.raises(IndexSpecError, match="nprobe"):
        check_search_params("hnsw", AUTO_FLAT_MAX, 64, {"nprobe": 4})
    with pytest.raises(IndexSpecError, match="efSearch"):
        check_search_params("auto", AUTO_FLAT_MAX, 64, {"efSearch": 32})
    check_search_params("auto", AUTO_FLAT_MAX, 64, {"nprobe": 4})
    check_search_params("hnsw", AUTO_FLAT_MAX, 64, {"efSearch": 32})


def test_without_gpus_indexes_stay_on_the_cpu(data):
    if gpu_count() > 0:
        pytest.skip("faiss has GPUs here: test_gpu_flat_equals_cpu_flat covers it")
    index = build_index(data[0][:100], "flat")
    assert to_gpu(index) is index and to_cpu(index) is index


def test_wrappers_faiss_makes_for_gpus_keep_the_ivf_training_sample_and_parameters():
    """Several GPUs give an IndexReplicas / IndexShards around the IVF (faiss-cpu has both classes): the
    k-means sample and the search parameters must come through them, as from the CPU index (a 1M
    gallery with IVF4096 trained on 65,536 rows on GPU before this)."""
    import faiss

    from zscir_infer import search as fsearch

    n, d = 2_000_000, 8
    ivf = faiss.index_factory(d, "IVF4096,Flat", faiss.METRIC_INNER_PRODUCT)
    expected = fsearch._training_sample(n, ivf)
    assert len(expected) == 4096 * fsearch.MAX_TRAIN_POINTS_PER_CENTROID
    for wrapper in (faiss.IndexReplicas(d), faiss.IndexShards(d)):
        wrapper.add_replica(ivf) if isinstance(wrapper, faiss.IndexReplicas) else wrapper.add_shard(ivf)
        np.testing.assert_array_equal(fsearch._training_sample(n, wrapper), expected)
        assert default_search_params(wrapper) == {"nprobe": 16}
        assert not fsearch.on_gpu(wrapper) and to_cpu(wrapper) is wrapper  # CPU classes stay as they are
    chain = faiss.index_factory(d, "PCA4,IVF64,Flat", faiss.METRIC_INNER_PRODUCT)
    assert not fsearch.on_gpu(chain) and to_cpu(chain) is chain


def test_k_above_the_gpu_limit_searches_as_usual_on_the_cpu(data):
    from zscir_infer import search as fsearch

    xb, xq, _ = data
    index = build_index(xb[:5000], "flat", gpu=False)
    D, I = fsearch.search(index, xq[:3], fsearch.GPU_MAX_K + 10)
    D_ref, I_ref = index.search(xq[:3], fsearch.GPU_MAX_K + 10)
    np.testing.assert_array_equal(I, I_ref)


@pytest.mark.gpu
def test_gpu_flat_equals_cpu_flat(data):
    if gpu_count() == 0:
        pytest.skip("faiss has no GPU here (faiss-cpu, or no CUDA device)")
    xb, xq, (D_true, I_true) = data
    index = build_index(xb, "flat", gpu=True)
    D, I = index.search(xq, K)
    np.testing.assert_array_equal(I, I_true)
    assert to_cpu(index).ntotal == N


@pytest.mark.parametrize("n_queries", [1, 2, 7, 64])
@pytest.mark.parametrize("k", [1, 10, 999, 1000, 1500])
def test_flat_search_by_matrix_product_equals_faiss(n_queries, k):
    """search() answers a CPU flat index's batches with one matrix product + partial selection: the same
    ids and scores as faiss's own IndexFlatIP search, also for k at and above the gallery size."""
    from zscir_infer import search as fsearch

    x = clustered_unit_vectors(1000 + n_queries, 32, seed=11)
    xb, xq = x[:1000], x[1000:]
    index = build_index(xb, "flat", gpu=False)
    assert fsearch.flat_vectors(index) is not None
    D, I = fsearch.search(index, xq, k)
    D_faiss, I_faiss = index.search(xq, k)
    found = I_faiss >= 0  # faiss pads with -FLT_MAX, zscir with -inf (both with id -1)
    assert ((I >= 0) == found).all() and (D[~found] <= np.finfo(np.float32).min).all()
    np.testing.assert_allclose(D[found], D_faiss[found], atol=1e-5)
    differ = I != I_faiss  # only where two candidates score the same to float precision (BLAS vs faiss sums)
    assert differ.mean() < 1e-3
    exact = (xq[:, None, :] * xb[np.where(I >= 0, I, 0)]).sum(-1), (xq[:, None, :] * xb[np.where(I_faiss >= 0, I_faiss, 0)]).sum(-1)
    np.testing.assert_allclose(exact[0][differ], exact[1][differ], atol=1e-5)
    assert D.dtype == np.float32 and I.dtype == np.int64


def test_exact_topk_orders_ties_by_id_and_pads_like_faiss():
    from zscir_infer import search as fsearch

    xb = np.array([[1, 0], [0, 1], [1, 0], [0.6, 0.8], [1, 0]], dtype=np.float32)
    xq = np.array([[1, 0]], dtype=np.float32)
    D, I = fsearch.exact_topk(xq, xb, 4, chunk=2)  # ties across chunks
    assert I.tolist() == [[0, 2, 4, 3]]
    np.testing.assert_allclose(D, [[1, 1, 1, 0.6]])
    D, I = fsearch.exact_topk(xq, xb, 7)
    assert I[0, 5:].tolist() == [fsearch.NO_RESULT] * 2 and np.isneginf(D[0, 5:]).all()
    assert fsearch.flat_vectors(build_index(xb[:, :2], "IVF1,Flat", gpu=False)) is None  # only flat IP
