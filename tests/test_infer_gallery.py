"""The gallery store: atomic batches, ids -> names/paths, index freshness, bundle identity, exclusion, SIGKILL."""

# ruff: noqa: N806, E741 -- xq, D, I: FAISS's names

import json
import os
import signal
import subprocess
import time

import numpy as np
import pytest

from tests.fixtures.gallery import (
    brute_force,
    check_committed_prefix,
    clustered_unit_vectors,
    crash_writer,
    kill_when_stored,
)
from zscir_infer.gallery import METADATA, Gallery, GalleryBundleMismatch, GalleryError
from zscir_infer.indexing import plan_additions
from zscir_infer.search import IndexSpecError
from zscir_infer.sources import ImageEntry
from zscir_infer.stores.faiss_sqlite import FEATURES

D_DIM = 32
BUNDLE = "bundle-a"
K = 5


def names_of(n: int, start: int = 0) -> list[str]:
    return [f"img {i:05d} é.png" for i in range(start, start + n)]


def paths_of(names: list[str]) -> list[str]:
    return [f"/data/photos/{n}" for n in names]


def filled(root, n: int = 300, batch: int = 64, spec: str = "auto") -> tuple[Gallery, np.ndarray]:
    xb = clustered_unit_vectors(n, D_DIM, seed=3)
    g = Gallery.create(root, bundle_id=BUNDLE, embed_dim=D_DIM, index_spec=spec, bundle="bundles/a")
    names = names_of(n)
    for lo in range(0, n, batch):
        g.add(names[lo : lo + batch], paths_of(names[lo : lo + batch]), xb[lo : lo + batch])
    return g, xb


def test_round_trip_ids_names_paths_and_features(tmp_path):
    g, xb = filled(tmp_path / "g")
    g.build_index()
    g.close()
    with Gallery.open(tmp_path / "g", bundle_id=BUNDLE) as g:
        assert len(g) == 300 and g.embed_dim == D_DIM
        np.testing.assert_array_equal(g.features(), xb)
        items = g.all_items()
        assert [it.id for it in items] == list(range(300))
        assert [it.name for it in items] == names_of(300)
        assert g.lookup(["img 00007 é.png", "nope"])["img 00007 é.png"].path == "/data/photos/img 00007 é.png"
    meta = json.loads((tmp_path / "g" / METADATA).read_text())
    assert meta["bundle_id"] == BUNDLE and meta["embed_dim"] == D_DIM and meta["dtype"] == "float32"
    assert meta["index"]["count"] == 300 and meta["index"]["factory"] == "Flat"


def test_flat_search_equals_brute_force_and_returns_paths(tmp_path):
    g, xb = filled(tmp_path / "g")
    xq = clustered_unit_vectors(20, D_DIM, seed=4)
    D, I, paths = g.search(xq, K)  # no index file yet: built in memory
    D_true, I_true = brute_force(xq, xb, K)
    np.testing.assert_array_equal(I, I_true)
    np.testing.assert_allclose(D, D_true, atol=1e-5)
    assert [str(p) for p in paths[3]] == [paths_of(names_of(300))[i] for i in I_true[3]]


def test_exclude_removes_the_reference_and_still_returns_k(tmp_path):
    g, xb = filled(tmp_path / "g")
    names = names_of(300)
    xq = xb[[10, 20, 30]]  # each query's nearest item is itself, as a CIRR reference would be
    D, I, _ = g.search(xq, K, exclude=[names[10], [names[20], names[21]], None])
    D_all, I_all = brute_force(xq, xb, K + 2)
    assert 10 not in I[0] and I[0].tolist() == [i for i in I_all[0] if i != 10][:K]
    assert not {20, 21} & set(I[1]) and I[1].tolist() == [i for i in I_all[1] if i not in (20, 21)][:K]
    assert I[2, 0] == 30 and I[2].tolist() == I_all[2, :K].tolist()
    with pytest.raises(GalleryError, match="exclude has 1 entries for 3 queries"):
        g.search(xq, K, exclude=[names[0]])


def test_k_larger_than_the_gallery_pads_with_minus_one(tmp_path):
    g, xb = filled(tmp_path / "g", n=4, batch=4)
    D, I, paths = g.search(xb[:1], 6, exclude=[names_of(1)])
    assert sorted(I[0, :3].tolist()) == [1, 2, 3] and I[0, 3:].tolist() == [-1, -1, -1]
    assert np.all(np.isneginf(D[0, 3:])) and paths[0][3:] == [None, None, None]


def test_a_rejected_batch_changes_nothing(tmp_path):
    g, xb = filled(tmp_path / "g", n=100, batch=50)
    extra = clustered_unit_vectors(3, D_DIM, seed=9)
    bad_batches = [
        (names_of(3, 100), paths_of(names_of(3, 100)), extra[:, :16], "do not fit"),
        (names_of(3, 100), paths_of(names_of(3, 100)), extra * 2, "L2-normalized"),
        (["x", "x", "y"], ["a", "b", "c"], extra, "same name twice"),
        (names_of(3, 98), paths_of(names_of(3, 98)), extra, "already in gallery"),
        (names_of(2, 100), paths_of(names_of(3, 100)), extra, "2 names, 3 paths"),
    ]
    for names, paths, x, message in bad_batches:
        with pytest.raises(GalleryError, match=message):
            g.add(names, paths, x)
        assert len(g) == 100
    g.add(names_of(3, 100), paths_of(names_of(3, 100)), extra)
    np.testing.assert_array_equal(g.features(), np.concatenate([xb, extra]))
    assert (tmp_path / "g" / FEATURES).stat().st_size == 103 * D_DIM * 4


def test_bytes_of_an_uncommitted_batch_are_dropped_on_reopen(tmp_path):
    """A process killed between writing a batch's vectors and committing its rows."""
    g, xb = filled(tmp_path / "g", n=100, batch=50)
    g.close()
    with open(tmp_path / "g" / FEATURES, "ab") as f:
        f.write(np.ones((7, D_DIM), np.float32).tobytes())
    with Gallery.open(tmp_path / "g") as ro:  # a reader ignores the tail
        assert len(ro) == 100 and ro.features().shape == (100, D_DIM)
    with Gallery.open(tmp_path / "g", writable=True) as g:
        assert (tmp_path / "g" / FEATURES).stat().st_size == 100 * D_DIM * 4
        np.testing.assert_array_equal(g.features(), xb)


def test_missing_feature_rows_are_reported_as_damage(tmp_path):
    g, _ = filled(tmp_path / "g", n=100, batch=50)
    g.close()
    os.truncate(tmp_path / "g" / FEATURES, 10 * D_DIM * 4)
    with pytest.raises(GalleryError, match="damaged"):
        Gallery.open(tmp_path / "g")


def test_another_bundle_is_refused_with_what_to_do(tmp_path):
    filled(tmp_path / "g")[0].close()
    with pytest.raises(GalleryBundleMismatch, match=r"bundles/a.*--out NEW"):
        Gallery.open(tmp_path / "g", bundle_id="bundle-b")


def test_one_writer_at_a_time_readers_always(tmp_path):
    g, _ = filled(tmp_path / "g")
    with pytest.raises(GalleryError, match="another process"):
        Gallery.open(tmp_path / "g", writable=True)
    with Gallery.open(tmp_path / "g") as reader:
        assert len(reader) == 300
        with pytest.raises(GalleryError, match="read-only"):
            reader.add(["n"], ["p"], clustered_unit_vectors(1, D_DIM))
    g.close()
    Gallery.open(tmp_path / "g", writable=True).close()


def test_create_refuses_an_existing_path_and_open_a_non_gallery(tmp_path):
    filled(tmp_path / "g")[0].close()
    with pytest.raises(GalleryError, match="already exists"):
        Gallery.create(tmp_path / "g", bundle_id=BUNDLE, embed_dim=D_DIM)
    with pytest.raises(GalleryError, match="not a gallery"):
        Gallery.open(tmp_path)
    with pytest.raises(IndexSpecError):
        Gallery.create(tmp_path / "h", bundle_id=BUNDLE, embed_dim=D_DIM, index_spec="NoSuchIndex")


def test_index_file_is_extended_rebuilt_or_flagged_stale(tmp_path):
    g, xb = filled(tmp_path / "g")
    assert not g.index_is_fresh()
    g.build_index()
    first = g.meta["index"]["file"]
    assert g.index_is_fresh() and (tmp_path / "g" / first).is_file()
    more = clustered_unit_vectors(50, D_DIM, seed=5)
    assert g.search(more[:1], 1)[1][0, 0] < 300  # loads (and caches) the index of 300 rows
    g.add(names_of(50, 300), paths_of(names_of(50, 300)), more)
    assert not g.index_is_fresh()  # the store moved on: searches rebuild in memory until build_index
    xq = clustered_unit_vectors(10, D_DIM, seed=6)
    I_true = brute_force(xq, np.concatenate([xb, more]), K)[1]
    np.testing.assert_array_equal(g.search(xq, K)[1], I_true)
    assert g.search(more[:1], 1)[1][0, 0] == 300  # the cached index was dropped by add
    g.build_index()  # same factory: the old file extended with the 50 new rows
    info = g.meta["index"]
    assert info["count"] == 350 and info["file"] != first and not (tmp_path / "g" / first).exists()
    g.set_index_spec("hnsw", {"efSearch": 128})
    g.build_index()
    assert g.meta["index"]["factory"] == "HNSW32,Flat" and g.index.hnsw.efSearch == 128
    assert [p.name for p in (tmp_path / "g").glob("index-*")] == [g.meta["index"]["file"]]
    g.close()
    with Gallery.open(tmp_path / "g") as reader:  # the stored spec and parameters come back
        assert reader.index.hnsw.efSearch == 128
        np.testing.assert_array_equal(reader.search(xq, K)[1], I_true)


def test_plan_skips_present_items_and_reports_name_conflicts(tmp_path):
    g, _ = filled(tmp_path / "g", n=10, batch=10)
    names = names_of(12)
    entries = [ImageEntry(n, p) for n, p in zip(names, paths_of(names), strict=True)]
    entries[3] = ImageEntry(names[3], "/elsewhere/other.png")
    plan = plan_additions(g, entries)
    assert [e.name for e in plan.todo] == names[10:]
    assert plan.present == 9
    assert plan.bad == [
        ("/elsewhere/other.png", f"name {names[3]!r} is already in the gallery for {paths_of(names)[3]}")
    ]


N_WRITTEN, WRITE_BATCH, KILLS = 4000, 16, 4


def _writer(root) -> subprocess.Popen:
    return crash_writer(root, N_WRITTEN, WRITE_BATCH, "faiss")


def test_sigkill_at_random_points_then_resume_equals_an_uninterrupted_run(tmp_path):
    xb = clustered_unit_vectors(N_WRITTEN, 32, seed=7)
    started = time.monotonic()
    assert _writer(tmp_path / "clean").wait() == 0
    full = time.monotonic() - started
    rng = np.random.default_rng(0)
    counts = []
    for target in sorted(rng.integers(1, N_WRITTEN, KILLS)):  # mid-add, right after a batch's vectors
        kill_when_stored(_writer(tmp_path / "killed"), tmp_path / "killed" / FEATURES, target, 32 * 4)
        counts.append(check_committed_prefix(tmp_path / "killed", xb))
    proc = _writer(tmp_path / "killed")  # anywhere: the rest of the adds, the index build, the end
    time.sleep(float(rng.uniform(0.2, 0.9)) * full)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    counts.append(check_committed_prefix(tmp_path / "killed", xb))
    assert _writer(tmp_path / "killed").wait() == 0
    print(f"committed rows after each SIGKILL: {counts} of {N_WRITTEN}")
    assert any(0 < n < N_WRITTEN for n in counts)
    with Gallery.open(tmp_path / "clean") as clean, Gallery.open(tmp_path / "killed") as resumed:
        assert resumed.all_items() == clean.all_items()  # same ids, names, paths: nothing lost or doubled
        np.testing.assert_array_equal(resumed.features(), clean.features())
        assert resumed.index_is_fresh() and resumed.index.ntotal == N_WRITTEN
        xq = xb[:50]
        np.testing.assert_array_equal(resumed.search(xq, 1)[1][:, 0], np.arange(50))
    assert not list((tmp_path / "killed").glob(".*.tmp"))
