"""The gallery backend interface: the FAISS + SQLite store implements it, filters, one exclusion mechanism."""

# ruff: noqa: N806, E741 -- xq, D, I: FAISS's names

import sqlite3

import numpy as np
import pytest

from tests.fixtures.gallery import brute_force, clustered_unit_vectors
from zscir_infer.gallery import Gallery
from zscir_infer.search import NO_RESULT, drop_excluded, excluded_matrix, search_subset
from zscir_infer.stores import GalleryError, VectorStore
from zscir_infer.stores.filters import FilterError, filter_to_sql

D_DIM, N = 16, 120


@pytest.fixture
def gallery(tmp_path):
    xb = clustered_unit_vectors(N, D_DIM, seed=3)
    g = Gallery.create(tmp_path / "g", bundle_id="b", embed_dim=D_DIM, index_spec="hnsw")
    names = [f"{'red' if i % 3 == 0 else 'blue'}/{i:03d}.png" for i in range(N)]
    g.add(names, [f"/photos/{n}" for n in names], xb)
    g.build_index()
    yield g, xb, names
    g.close()


def test_the_faiss_store_implements_the_backend_protocol(gallery):
    g, _, _ = gallery
    assert isinstance(g.store, VectorStore) and g.meta["store"] == "faiss"
    assert g.store.count == N == len(g)


def test_drop_excluded_equals_filtering_a_brute_force_ranking():
    rng = np.random.default_rng(0)
    xb, xq, k = clustered_unit_vectors(50, 8, seed=1), clustered_unit_vectors(6, 8, seed=2), 5
    exclude = [set(rng.choice(50, size=int(rng.integers(0, 4)), replace=False).tolist()) for _ in range(6)]
    D_all, I_all = brute_force(xq, xb, 50)
    D, I = drop_excluded(D_all[:, : k + 3], I_all[:, : k + 3], excluded_matrix(exclude, 6), k)
    for q in range(6):
        expected = [i for i in I_all[q] if i not in exclude[q]][:k]
        assert I[q].tolist() == expected
        np.testing.assert_allclose(D[q], xb[expected] @ xq[q], rtol=1e-5)
    D, I = drop_excluded(D_all[:, :2], I_all[:, :2], excluded_matrix([{int(I_all[0, 0])}] * 6, 6), 3)
    assert I[0, 1:].tolist() == [NO_RESULT, NO_RESULT] and np.isneginf(D[0, 2])  # padded past the candidates


def test_filters_translate_to_bound_sql_and_reject_what_they_cannot_read():
    where, params = filter_to_sql('name like "red/%" and not (path == "x" or name in ["red/a", \'b\'])')
    assert params == ["red/%", "x", "red/a", "b"] and "?" in where and "red" not in where  # bound, not pasted
    db = sqlite3.connect(":memory:")
    db.execute("PRAGMA case_sensitive_like=ON")
    db.execute("CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT, path TEXT)")
    db.executemany("INSERT INTO items VALUES (?, ?, ?)",
                   [(0, "red/a", "p"), (1, "red/b", "x"), (2, "red/c", "p"), (3, "blue/d", "p"), (4, "RED/e", "p")])
    assert [r[0] for r in db.execute(f"SELECT id FROM items WHERE {where} ORDER BY id", params)] == [2]
    for bad, what in [("", "empty"), ("owner == 'x'", "unknown field"),
                      ("name == x", "expected string"), ("name == 'x' and", "expected word"), ("name like_ 'x'", "expected ==, !=, in or like"),
                      ("name == 'x'; DROP TABLE items", "cannot read")]:
        with pytest.raises(FilterError, match=what):
            filter_to_sql(bad)


def test_a_filtered_search_is_exact_over_the_accepted_items(gallery):
    g, xb, names = gallery
    xq = xb[[1, 2, 4]]  # blue items: a red-only search must not return them
    D, I, paths = g.search(xq, 5, filter='name like "red/%"', exclude=[None, [names[3]], None])
    red = np.array([i for i, n in enumerate(names) if n.startswith("red/")])
    D_red, I_red = brute_force(xq, xb[red], len(red))
    for q in range(3):
        expected = [int(red[i]) for i in I_red[q] if not (q == 1 and red[i] == 3)][:5]
        assert I[q].tolist() == expected
        assert all(p.parent.name == "red" for p in paths[q])
    D, I, _ = g.search(xq, 5, filter='name == "nothing"')
    assert (I == NO_RESULT).all() and np.isneginf(D).all()
    with pytest.raises(GalleryError, match="unknown field"):
        g.search(xq, 5, filter='colour == "red"')


def test_search_subset_matches_a_sorted_scan_in_chunks():
    xb, xq = clustered_unit_vectors(40, 8, seed=5), clustered_unit_vectors(3, 8, seed=6)
    allowed = np.arange(0, 40, 3)
    D, I = search_subset(xb, allowed, xq, 4, chunk=5)
    scores = xq @ xb[allowed].T
    order = np.argsort(-scores, axis=1, kind="stable")[:, :4]
    assert I.tolist() == allowed[order].tolist()
    np.testing.assert_allclose(D, np.take_along_axis(scores, order, axis=1), rtol=1e-6)


def test_ids_of_files_match_by_path_and_through_hard_links(tmp_path):
    xb = clustered_unit_vectors(3, D_DIM, seed=4)
    files = []
    for i in range(3):
        files.append(tmp_path / f"img{i}.png")
        files[-1].write_bytes(bytes([i]) * 10)
    (tmp_path / "link.png").hardlink_to(files[1])
    with Gallery.create(tmp_path / "g", bundle_id="b", embed_dim=D_DIM) as g:
        g.add([f.name for f in files], [str(f) for f in files], xb)
        assert g.ids_of_files([files[2], tmp_path / "link.png", tmp_path / "elsewhere.png"]) == [{2}, {1}, set()]


BASE_INSTALL = """
import importlib.abc, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("pymilvus", "milvus_lite", "ray", "pyarrow"):
            raise ModuleNotFoundError(f"No module named {name!r} (blocked)", name=name)
sys.meta_path.insert(0, Block())
import numpy as np
import zscir_infer.cli, zscir_infer.index_cli, zscir_infer.ray_indexing
from zscir_infer.gallery import STORES, Gallery, GalleryError
assert set(STORES) == {"faiss", "milvus"}
root = sys.argv[1]
with Gallery.create(root + "/f", bundle_id="b", embed_dim=4) as g:
    g.add(["a"], ["/a"], np.eye(4, dtype=np.float32)[:1])
    assert g.search(np.eye(4, dtype=np.float32)[:1], 1)[1][0, 0] == 0
try:
    Gallery.create(root + "/m", bundle_id="b", embed_dim=4, store="milvus")
except GalleryError as exc:
    print(exc)
import os
assert not os.path.exists(root + "/m")  # refused before the folder is made
assert not [m for m in sys.modules if m.split(".")[0] in ("pymilvus", "milvus_lite", "ray", "pyarrow")]
"""


def test_the_base_install_runs_without_pymilvus_or_ray_and_says_what_to_install(tmp_path):
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", BASE_INSTALL, str(tmp_path)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "pip install 'zscir[milvus]'" in done.stdout
