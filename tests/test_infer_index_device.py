"""Where a gallery's faiss index lives: --device cpu keeps it on the CPU; with GPUs a full copy per GPU
when it fits one, sharded over the GPUs when it does not, on the CPU (with a warning) when neither fits.

faiss-cpu has no GPU classes, so the GPU side is reproduced with what faiss itself makes for several GPUs:
`index_cpu_to_all_gpus` gives an IndexReplicas (a copy per GPU) or, with the cloner option `shard`, an
IndexShards (the vectors split); faiss-cpu has both classes, so the wrappers searched here are real."""

# ruff: noqa: N806, E741 -- xb, xq, D, I: FAISS's names

import types

import faiss
import numpy as np
import pytest

from tests.fixtures.gallery import brute_force, clustered_unit_vectors
from zscir_infer import search as fsearch
from zscir_infer.gallery import Gallery

D_DIM, N = 32, 3000
GIB = 2**30


def test_placement_replicates_when_one_gpu_holds_it_and_shards_when_only_all_do():
    need = 10 * GIB  # codes; x1.5 headroom -> 15 GiB
    assert fsearch.plan_gpu_placement(need, [80 * GIB, 80 * GIB], 2) == "replicate"
    assert fsearch.plan_gpu_placement(need, [10 * GIB, 10 * GIB], 2) == "shard"  # 7.5 GiB per GPU
    assert fsearch.plan_gpu_placement(need, [10 * GIB], 1) == "cpu"  # one GPU, too small
    assert fsearch.plan_gpu_placement(need, [5 * GIB, 5 * GIB], 2) == "cpu"  # even split does not fit
    assert fsearch.plan_gpu_placement(need, [80 * GIB, 5 * GIB], 2) == "cpu"  # the smallest GPU decides
    assert fsearch.plan_gpu_placement(need, None, 2) == "replicate"  # unknown memory: try, fall back on OOM
    assert fsearch.plan_gpu_placement(0, [GIB], 1) == "replicate"  # unknown size
    assert fsearch.plan_gpu_placement(need, [80 * GIB], 0) == "cpu"


def test_index_bytes_counts_the_codes():
    flat = faiss.index_factory(D_DIM, "Flat", faiss.METRIC_INNER_PRODUCT)
    flat.add(clustered_unit_vectors(100, D_DIM, seed=1))
    assert fsearch.index_bytes(flat) == 100 * D_DIM * 4
    assert fsearch.index_bytes(flat, rows=1_000_000) == 1_000_000 * D_DIM * 4
    pq = faiss.index_factory(D_DIM, "IVF16,PQ8", faiss.METRIC_INNER_PRODUCT)  # 8 bytes per vector (+ list id)
    assert 8 * 500 <= fsearch.index_bytes(pq, rows=500) <= 16 * 500


def test_index_device_names(monkeypatch):
    monkeypatch.setattr(fsearch, "gpu_count", lambda: 0)
    assert fsearch.resolve_index_device("cpu") is False and fsearch.resolve_index_device("auto") is False
    with pytest.raises(fsearch.IndexSpecError, match="faiss-gpu"):
        fsearch.resolve_index_device("gpu")
    with pytest.raises(fsearch.IndexSpecError, match="not one of"):
        fsearch.resolve_index_device("cuda:0")
    monkeypatch.setattr(fsearch, "gpu_count", lambda: 2)
    assert fsearch.resolve_index_device("auto") is True and fsearch.resolve_index_device("cpu") is False
    assert fsearch.index_device_for("cpu") == "cpu"
    assert fsearch.index_device_for("cuda:1") == fsearch.index_device_for("tensorrt") == "auto"


class FakeGpus:
    """faiss.index_cpu_to_all_gpus as faiss-gpu behaves on n GPUs of `capacity` bytes each: a copy per GPU
    (IndexReplicas) or the vectors split (IndexShards); a GPU asked to hold more raises faiss's
    out-of-memory RuntimeError."""

    def __init__(self, n: int, capacity: int):
        self.n, self.capacity, self.calls, self.keep = n, capacity, [], []

    def __call__(self, index, co=None, ngpu=-1):
        shard = bool(co is not None and co.shard)
        self.calls.append("shard" if shard else "replicate")
        per_gpu = fsearch.index_bytes(index) / (self.n if shard else 1)
        if per_gpu > self.capacity:
            raise RuntimeError("Error in virtual void* faiss::gpu::StandardGpuResourcesImpl::allocMemory: "
                               "cudaMalloc error 2 [out of memory]")
        xb = index.reconstruct_n(0, index.ntotal)
        wrapper = faiss.IndexShards(index.d, False, True) if shard else faiss.IndexReplicas(index.d)
        bounds = np.linspace(0, index.ntotal, self.n + 1).astype(int)  # successive ids: contiguous row blocks
        for g in range(self.n):
            part = faiss.IndexFlatIP(index.d)
            part.add(xb[bounds[g]:bounds[g + 1]] if shard else xb)
            self.keep.append(part)  # the Python objects must outlive the wrapper
            wrapper.add_shard(part) if shard else wrapper.add_replica(part)
        return wrapper


@pytest.fixture
def gpus(monkeypatch):
    def make(n: int, capacity: int, free: list[int] | None):
        fake = FakeGpus(n, capacity)
        monkeypatch.setattr(fsearch, "gpu_count", lambda: n)
        monkeypatch.setattr(fsearch, "gpu_free_memory", lambda: free)
        monkeypatch.setattr(fsearch, "_cloner_options", lambda shard: types.SimpleNamespace(shard=shard))
        monkeypatch.setattr(faiss, "index_cpu_to_all_gpus", fake)
        return fake
    return make


@pytest.fixture(scope="module")
def data():
    x = clustered_unit_vectors(N + 50, D_DIM, seed=7)
    return x[:N], x[N:]


def flat(xb):
    index = faiss.IndexFlatIP(xb.shape[1])
    index.add(xb)
    return index


@pytest.mark.parametrize("capacity_rows, free_rows, expected_calls", [
    (N * 2, [N * 2, N * 2], ["replicate"]),  # fits one GPU: a copy each
    (N, [N, N], ["shard"]),  # 1.5x headroom does not fit one GPU but fits half on each
    (N - 1, None, ["replicate", "shard"]),  # memory unknown: the copy runs out of memory, the shards fit
])
def test_to_gpu_replicates_or_shards_and_search_stays_exact(gpus, data, capacity_rows, free_rows, expected_calls):
    xb, xq = data
    row = D_DIM * 4
    fake = gpus(2, capacity_rows * row, None if free_rows is None else [r * row for r in free_rows])
    index = fsearch.to_gpu(flat(xb))
    assert fake.calls == expected_calls
    kind = faiss.IndexShards if expected_calls[-1] == "shard" else faiss.IndexReplicas
    assert isinstance(faiss.downcast_index(index), kind)
    D, I = index.search(xq, 10)
    D_true, I_true = brute_force(xq, xb, 10)
    np.testing.assert_array_equal(I, I_true)
    np.testing.assert_allclose(D, D_true, atol=1e-5)


def test_an_index_no_gpu_holds_stays_on_the_cpu_with_a_warning(gpus, data):
    xb, _ = data
    fake = gpus(2, 100 * D_DIM * 4, None)
    index = flat(xb)
    with pytest.warns(RuntimeWarning, match="does not fit the 2 GPU"):
        assert fsearch.to_gpu(index) is index
    assert fake.calls == ["replicate", "shard"]


def test_build_index_places_by_the_rows_it_will_hold(gpus, data):
    """An empty index has no codes yet: the placement must count the rows about to be added."""
    xb, xq = data
    row = D_DIM * 4
    fake = gpus(2, N * row, [N * row, N * row])
    index = fsearch.build_index(xb, "flat", gpu=True)
    assert fake.calls == ["shard"]
    assert isinstance(faiss.downcast_index(index), faiss.IndexShards)
    assert [faiss.downcast_index(index).at(i).ntotal for i in range(2)] == [N // 2, N // 2]
    D, I = index.search(xq, 5)
    np.testing.assert_array_equal(I, brute_force(xq, xb, 5)[1])


def test_gallery_index_device_cpu_never_touches_the_gpus(gpus, tmp_path, data):
    xb, xq = data
    fake = gpus(2, 1 << 40, None)
    g = Gallery.create(tmp_path / "g", bundle_id="b" * 64, embed_dim=D_DIM, index_spec="flat", index_device="cpu")
    g.add([f"{i}.png" for i in range(500)], [f"/p/{i}.png" for i in range(500)], xb[:500])
    g.build_index()
    g.close()
    with Gallery.open(tmp_path / "g", index_device="cpu") as g:
        ranked = g.search(xq[:2], k=3)
        assert not fsearch.on_gpu(g.store.index)
    assert fake.calls == []  # neither the build nor the search went to the GPUs
    with Gallery.open(tmp_path / "g") as g:  # auto: the GPUs faiss has
        again = g.search(xq[:2], k=3)
    assert fake.calls == ["replicate"]
    np.testing.assert_array_equal(np.asarray(ranked[1]), np.asarray(again[1]))


def test_gpu_free_memory_asks_each_device_and_restores_the_current_one(monkeypatch):
    """cuda-python's runtime API returns (error, values...) tuples; the caller's device is restored."""
    import enum
    import sys

    class Err(enum.IntEnum):
        cudaSuccess = 0  # noqa: N815 -- cuda-python's name

    state = {"device": 1, "set": []}
    free = {0: 7 * GIB, 1: 3 * GIB}

    def set_device(d):
        state["set"].append(d)
        state["device"] = d
        return (Err.cudaSuccess,)

    runtime = types.SimpleNamespace(
        cudaGetDevice=lambda: (Err.cudaSuccess, state["device"]), cudaSetDevice=set_device,
        cudaMemGetInfo=lambda: (Err.cudaSuccess, free[state["device"]], 80 * GIB))
    bindings = types.ModuleType("cuda.bindings")
    bindings.runtime = runtime
    monkeypatch.setitem(sys.modules, "cuda", types.ModuleType("cuda"))
    monkeypatch.setitem(sys.modules, "cuda.bindings", bindings)
    monkeypatch.setitem(sys.modules, "cuda.bindings.runtime", runtime)
    monkeypatch.setattr(fsearch, "gpu_count", lambda: 2)
    assert fsearch.gpu_free_memory() == [7 * GIB, 3 * GIB]
    assert state["set"] == [0, 1, 1] and state["device"] == 1
