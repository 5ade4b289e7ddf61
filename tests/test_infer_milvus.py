"""The Milvus gallery store on real Milvus Lite (embedded, a .db folder): the same results as FAISS,
filters equal a filtered brute force, SIGKILL then resume, reload after a crash, refusals with what to do.

An http:// Milvus server is the same code path; none runs here (see docs/scale.md)."""

# ruff: noqa: N806, E741 -- xq, D, I: FAISS's names

import json
import os
import re
import subprocess
import sys
import time

import numpy as np
import pytest
from typer.testing import CliRunner

pytest.importorskip("pymilvus", reason="the Milvus store needs the [milvus] extra (pymilvus, milvus-lite)")
pytest.importorskip("milvus_lite", reason="the Milvus store's tests run on Milvus Lite (the [milvus] extra)")

from tests.fixtures.gallery import (  # noqa: E402
    brute_force,
    check_committed_prefix,
    clustered_unit_vectors,
    crash_writer,
    write_image,
)
from zscir_infer.cli import app  # noqa: E402
from zscir_infer.gallery import METADATA, Gallery, GalleryBundleMismatch, GalleryError  # noqa: E402
from zscir_infer.search import NO_RESULT, IndexSpecError  # noqa: E402
from zscir_infer.stores import VectorStore  # noqa: E402
from zscir_infer.stores import milvus as mv  # noqa: E402

D_DIM, N, K = 16, 240, 8
runner = CliRunner()
FILTERS = ['name like "red/%"', 'not name like "red/%" and path like "%5.png"', 'name in ["red/000.png", "blue/001.png"]',
           'name == "blue/007.png" or (path like "/photos/red/01%")', 'name != "red/003.png"', 'name like "re_/00%"']


def names_of(n: int) -> list[str]:
    return [f"{'red' if i % 3 == 0 else 'blue'}/{i:03d}.png" for i in range(n)]


def accepts(expression: str, name: str, path: str) -> bool:
    """The filter oracle: the expression evaluated in Python (SQL LIKE: % any run, _ one character)."""
    def like(value: str, pattern: str) -> bool:
        return re.fullmatch("".join(".*" if c == "%" else "." if c == "_" else re.escape(c) for c in pattern),
                            value, re.S) is not None
    py = re.sub(r'(\w+) like ("[^"]*")', r"like(\1, \2)", expression)
    return bool(eval(py, {"like": like, "name": name, "path": path}))  # noqa: S307 -- the test's own literals


@pytest.fixture
def pair(tmp_path):
    """The same items in a faiss gallery and a Milvus Lite gallery (flat: exact)."""
    xb = clustered_unit_vectors(N, D_DIM, seed=3)
    names = names_of(N)
    galleries = []
    for store in ("faiss", "milvus"):
        g = Gallery.create(tmp_path / store, bundle_id="b", embed_dim=D_DIM, index_spec="flat", store=store)
        for lo in range(0, N, 64):
            g.add(names[lo : lo + 64], [f"/photos/{n}" for n in names[lo : lo + 64]], xb[lo : lo + 64])
        g.build_index()
        galleries.append(g)
    yield *galleries, xb, names
    for g in galleries:
        g.close()


def test_milvus_implements_the_protocol_and_round_trips(pair, tmp_path):
    faiss_g, milvus_g, xb, names = pair
    assert isinstance(milvus_g.store, VectorStore) and milvus_g.meta["store"] == "milvus"
    assert (tmp_path / "milvus" / "gallery.db").is_dir()  # Milvus Lite, inside the gallery folder
    assert milvus_g.count == N and milvus_g.all_items() == faiss_g.all_items()
    np.testing.assert_array_equal(milvus_g.features(), xb)  # float32 kept exactly
    assert milvus_g.lookup([names[5], "nope"]) == {names[5]: faiss_g.lookup([names[5]])[names[5]]}
    assert milvus_g.items([3, -1, N - 1, N + 5]) == faiss_g.items([3, N - 1])
    assert milvus_g.ids_of_files(["/photos/" + names[7], "/elsewhere.png"]) == [{7}, set()]
    assert milvus_g.meta["index"]["factory"] == "milvus:FLAT" and milvus_g.index_is_fresh()


def test_flat_milvus_equals_flat_faiss_for_50_queries(pair):
    faiss_g, milvus_g, xb, names = pair
    xq = clustered_unit_vectors(50, D_DIM, seed=11)
    D_f, I_f, _ = faiss_g.search(xq, K)
    D_m, I_m, paths = milvus_g.search(xq, K)
    np.testing.assert_array_equal(I_m, I_f)
    np.testing.assert_allclose(D_m, D_f, atol=1e-5)
    np.testing.assert_array_equal(I_m, brute_force(xq, xb, K)[1])
    exclude = [names[int(I_f[q, 0])] if q % 2 else [int(I_f[q, 1]), int(I_f[q, 2])] for q in range(50)]
    np.testing.assert_array_equal(milvus_g.search(xq, K, exclude=exclude)[1], faiss_g.search(xq, K, exclude=exclude)[1])
    D, I, _ = milvus_g.search(xq[:1], N + 5)  # k past the gallery: padded as faiss pads
    assert (I[0, N:] == NO_RESULT).all() and np.isneginf(D[0, N:]).all() and sorted(I[0, :N]) == list(range(N))


@pytest.mark.parametrize("expression", FILTERS)
def test_filters_equal_a_filtered_brute_force_in_both_stores(pair, expression):
    faiss_g, milvus_g, xb, names = pair
    xq = clustered_unit_vectors(12, D_DIM, seed=12)
    allowed = np.array([i for i, n in enumerate(names) if accepts(expression, n, f"/photos/{n}")])
    assert 0 < len(allowed) < N or expression.startswith("name !=")
    k = min(K, len(allowed))
    _, I_true = brute_force(xq, xb[allowed], k)
    for g in (faiss_g, milvus_g):
        D, I, _ = g.search(xq, k, filter=expression)
        np.testing.assert_array_equal(I, allowed[I_true], err_msg=f"{g.store_kind}: {expression}")


def test_filters_outside_the_shared_subset_are_refused_as_in_faiss(pair):
    _, milvus_g, xb, _ = pair
    for bad in ['split == "test"', 'id > 3', 'name == "x"; drop']:
        with pytest.raises(GalleryError, match="Filter"):
            milvus_g.search(xb[:1], 3, filter=bad)


def test_names_with_quotes_backslashes_and_unicode_are_looked_up_exactly(tmp_path):
    names = ['a "quoted" name.png', "it's.png", "back\\slash.png", "写真 é.png", "percent%_.png"]
    xb = clustered_unit_vectors(len(names), D_DIM, seed=1)
    with Gallery.create(tmp_path / "g", bundle_id="b", embed_dim=D_DIM, store="milvus") as g:
        g.add(names, [f"/p/{n}" for n in names], xb)
        assert sorted(g.lookup(names)) == sorted(names)
        _, I, _ = g.search(xb, 1, filter='name like "percent\\\\%\\\\_%"')  # escaped wildcards: literal % and _
        assert I[:, 0].tolist() == [4] * len(names)


def test_a_reopened_lite_collection_is_loaded_again_and_hnsw_ivf_indexes_answer(tmp_path, monkeypatch):
    """After a restart Milvus Lite starts an indexed collection unloaded: opening loads it. `auto` turns
    from FLAT into IVF_FLAT past AUTO_FLAT_MAX (lowered here), as the faiss store's auto does."""
    monkeypatch.setattr(mv.fsearch, "AUTO_FLAT_MAX", 200)
    xb = clustered_unit_vectors(N, D_DIM, seed=5)
    xq = xb[:40]
    with Gallery.create(tmp_path / "g", bundle_id="b", embed_dim=D_DIM, store="milvus") as g:
        g.add(names_of(N), names_of(N), xb)
        g.build_index()
        assert g.meta["index"]["built"]["index_type"] == "IVF_FLAT"
    script = ("import sys; from pymilvus import MilvusClient; c = MilvusClient(sys.argv[1]); "
              "print(c.get_load_state('zscir_gallery')['state'].name)")
    state = subprocess.run([sys.executable, "-c", script, str(tmp_path / "g" / "gallery.db")], capture_output=True,
                           text=True, check=True).stdout.split()[-1]
    assert state == "NotLoad"  # what a fresh process finds
    with Gallery.open(tmp_path / "g", bundle_id="b", writable=True) as g:
        assert (g.search(xq, 1)[1][:, 0] == np.arange(40)).mean() >= 0.95
        g.set_index_spec("hnsw", {"efSearch": 32})
        g.build_index()
        assert g.meta["index"]["built"]["index_type"] == "HNSW" and g.index_is_fresh()
        assert (g.search(xq, 1)[1][:, 0] == np.arange(40)).mean() >= 0.95
        with pytest.raises(IndexSpecError, match="does not apply"):
            g.set_search_params({"nprobe": 4})


def test_gpu_and_server_only_indexes_are_refused_by_milvus_lite(tmp_path):
    for spec, why in [("gpu_cagra", "silently searches by brute force"), ("ivfpq", "does not implement"),
                      ("DISKANN", "does not implement")]:
        with pytest.raises(IndexSpecError, match=rf"{why}.*http://host:19530"):
            Gallery.create(tmp_path / spec, bundle_id="b", embed_dim=D_DIM, index_spec=spec, store="milvus")
        assert not (tmp_path / spec).exists()
    assert mv.resolve_index("gpu_cagra", 10, 16, lite=False)["index_type"] == "GPU_CAGRA"  # a server may build it
    assert mv.resolve_index("IVF256,Flat", 10, 16, lite=True) == {"index_type": "IVF_FLAT", "params": {"nlist": 256}}
    with pytest.raises(IndexSpecError, match="not an index a Milvus gallery can build"):
        mv.resolve_index("PQ8x4", 10, 16, lite=True)
    with pytest.raises(GalleryError, match="neither a Milvus Lite file"):
        Gallery.create(tmp_path / "u", bundle_id="b", embed_dim=D_DIM, store="milvus", store_options={"uri": "gallery"})
    with pytest.raises(GalleryError, match="not a Milvus collection name"):
        Gallery.create(tmp_path / "c", bundle_id="b", embed_dim=D_DIM, store="milvus",
                       store_options={"collection": "my-photos"})
    with pytest.raises(GalleryError, match="apply to the milvus store"):
        Gallery.create(tmp_path / "f", bundle_id="b", embed_dim=D_DIM, store_options={"uri": "x.db"})


def test_another_bundle_is_refused_by_the_gallery_and_by_the_collection(tmp_path):
    xb = clustered_unit_vectors(5, D_DIM, seed=2)
    shared = str(tmp_path / "shared.db")
    with Gallery.create(tmp_path / "a", bundle_id="bundle-a", embed_dim=D_DIM, store="milvus",
                        store_options={"uri": shared}) as g:
        g.add(names_of(5), names_of(5), xb)
    with pytest.raises(GalleryBundleMismatch, match="--out NEW"):
        Gallery.open(tmp_path / "a", bundle_id="bundle-b")
    with pytest.raises(GalleryBundleMismatch, match="holds features of bundle bundle-a"):  # a second folder, same collection
        Gallery.create(tmp_path / "b", bundle_id="bundle-b", embed_dim=D_DIM, store="milvus",
                       store_options={"uri": shared})
    with pytest.raises(GalleryError, match="16-d vectors.*8-d"):
        Gallery.create(tmp_path / "c", bundle_id="bundle-a", embed_dim=8, store="milvus", store_options={"uri": shared})


def test_one_process_at_a_time_on_a_lite_gallery(tmp_path):
    with Gallery.create(tmp_path / "g", bundle_id="b", embed_dim=D_DIM, store="milvus") as g:
        g.add(names_of(3), names_of(3), clustered_unit_vectors(3, D_DIM))
        script = "import sys; from zscir_infer.gallery import Gallery; Gallery.open(sys.argv[1])"
        other = subprocess.run([sys.executable, "-c", script, str(tmp_path / "g")], capture_output=True, text=True)
        assert other.returncode != 0 and "another process has this Milvus Lite gallery open" in other.stderr
        with Gallery.open(tmp_path / "g") as reader:  # the same process shares its server
            assert reader.count == 3
        assert g.search(clustered_unit_vectors(1, D_DIM), 2)[1].shape == (1, 2)  # still open after the reader closed


# --- SIGKILL at random points, then resume ---------------------------------------------------------------------
N_WRITTEN, WRITE_BATCH, KILLS = 1200, 16, 4


def _writer(root) -> subprocess.Popen:
    return crash_writer(root, N_WRITTEN, WRITE_BATCH, "milvus", stdout=subprocess.PIPE)


def _kill_after(proc: subprocess.Popen, rows: int) -> None:
    """SIGKILL proc right after it reports `rows` committed items (the next insert is then in flight)."""
    for line in proc.stdout:
        if int(line) >= rows:
            break
    proc.kill()
    proc.wait()


def test_sigkill_at_random_points_then_resume_equals_an_uninterrupted_run(tmp_path):
    xb = clustered_unit_vectors(N_WRITTEN, 32, seed=7)
    started = time.monotonic()
    clean = _writer(tmp_path / "clean")
    clean.communicate()
    assert clean.returncode == 0
    full = time.monotonic() - started
    rng = np.random.default_rng(0)
    counts = []
    for target in sorted(rng.integers(1, N_WRITTEN, KILLS)):  # mid-insert, right after a committed batch
        _kill_after(_writer(tmp_path / "killed"), int(target))
        counts.append(check_committed_prefix(tmp_path / "killed", xb))
    proc = _writer(tmp_path / "killed")  # anywhere: imports, the rest of the inserts, the index build
    time.sleep(float(rng.uniform(0.2, 0.9)) * full)
    proc.kill()
    proc.wait()
    counts.append(check_committed_prefix(tmp_path / "killed", xb))
    resumed = _writer(tmp_path / "killed")
    resumed.communicate()
    assert resumed.returncode == 0
    print(f"committed rows after each SIGKILL: {counts} of {N_WRITTEN}")
    assert any(0 < n < N_WRITTEN for n in counts)
    with Gallery.open(tmp_path / "clean") as a, Gallery.open(tmp_path / "killed") as b:
        assert b.all_items() == a.all_items()  # same ids, names, paths: nothing lost or doubled
        np.testing.assert_array_equal(b.features(), a.features())
        assert b.index_is_fresh() and b.meta["index"]["built"]["index_type"] == "HNSW"
        assert (b.search(xb[:50], 1)[1][:, 0] == np.arange(50)).mean() >= 0.95


def test_rows_past_a_missing_id_are_deleted_when_the_writer_opens(tmp_path):
    """What a server that applied part of an interrupted request would leave: ids 0..9, 12, 13."""
    xb = clustered_unit_vectors(14, D_DIM, seed=8)
    with Gallery.create(tmp_path / "g", bundle_id="b", embed_dim=D_DIM, store="milvus") as g:
        g.add(names_of(10), names_of(10), xb[:10])
        rows = [{"id": i, "vector": xb[i], "name": f"x{i}", "path": "p", "bundle_id": "b"} for i in (12, 13)]
        g.store._client.insert(g.store.collection, rows)
    with Gallery.open(tmp_path / "g") as reader:
        assert reader.count == 10 and reader.search(xb[12:13], 14)[1][0, 10:].tolist() == [NO_RESULT] * 4
    with Gallery.open(tmp_path / "g", writable=True) as g:
        assert g.count == 10 and g.store._count_where("") == 10
        ids = g.add(["n10", "n11"], ["p", "p"], xb[10:12])
        assert ids.tolist() == [10, 11] and g.count == 12


# --- the CLI, unchanged for the user ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("photos")
    for i in range(30):
        write_image(root / f"{'red' if i % 3 == 0 else 'blue'}" / f"img {i:02d}.png", i)
    return root


def test_index_and_query_cli_on_milvus_equal_faiss(tmp_path, folder, tiny_bundle):
    out = {}
    for store, extra in (("faiss", []), ("milvus", ["--store", "milvus", "--collection", "photos"])):
        result = runner.invoke(app, ["index", str(folder), "--bundle", str(tiny_bundle), "--out", str(tmp_path / store),
                                     "--index", "flat", "--batch-size", "8", "--json", *extra])
        assert result.exit_code == 0, result.output
        out[store] = json.loads(result.stdout)
    assert out["milvus"]["count"] == out["faiss"]["count"] == 30 and out["milvus"]["index_factory"] == "milvus:FLAT"
    with Gallery.open(tmp_path / "faiss") as a, Gallery.open(tmp_path / "milvus") as b:
        assert [(i.name, i.path) for i in b.all_items()] == [(i.name, i.path) for i in a.all_items()]
        np.testing.assert_allclose(b.features(), a.features(), atol=1e-6)
    answers = {}
    for store in ("faiss", "milvus"):
        result = runner.invoke(app, ["query", str(folder / "red" / "img 03.png"), "as a sketch", "-k", "4", "--json",
                                     "--filter", 'name like "red/%"', "-b", str(tiny_bundle), "-g", str(tmp_path / store)])
        assert result.exit_code == 0, result.output
        answers[store] = [h["name"] for h in json.loads(result.stdout)["results"]]
    assert answers["milvus"] == answers["faiss"] and all(n.startswith("red/") for n in answers["milvus"])
    again = runner.invoke(app, ["index", str(folder), "--bundle", str(tiny_bundle), "--out", str(tmp_path / "milvus"),
                                "--json"])
    assert again.exit_code == 0 and json.loads(again.stdout)["present"] == 30  # a re-run resumes: nothing added
    wrong = runner.invoke(app, ["index", str(folder), "--bundle", str(tiny_bundle), "--out", str(tmp_path / "milvus"),
                                "--store", "faiss"])
    assert wrong.exit_code != 0 and "uses store 'milvus', not 'faiss'" in wrong.output
    lite = runner.invoke(app, ["index", str(folder), "--bundle", str(tiny_bundle), "--out", str(tmp_path / "cagra"),
                               "--store", "milvus", "--index", "gpu_cagra"])
    assert lite.exit_code != 0 and "GPU_CAGRA" in lite.output and not (tmp_path / "cagra").exists()


def _tree_bytes(root) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file()) if root.exists() else 0


@pytest.mark.slow
def test_the_crash_harness_kills_zscir_infer_index_on_milvus_then_resume_is_whole(tmp_path, folder, tiny_bundle):
    """The crash harness's kills (a random time, or a random point of the writes) on the real command."""
    from zscir_bench.crash_harness import _kill, _run

    env = dict(os.environ)

    def cmd(out):
        return [sys.executable, "-m", "zscir_infer.cli", "index", str(folder), "--bundle", str(tiny_bundle),
                "--out", str(out), "--store", "milvus", "--batch-size", "2", "--workers", "1"]

    seconds = _run(cmd(tmp_path / "clean"), env)
    rng = np.random.default_rng(3)
    killed, states = tmp_path / "killed", []
    db = killed / "gallery.db"
    for trial in range(4):
        start = _tree_bytes(db)
        code = _kill(cmd(killed), trial, rng, seconds, lambda start=start: _tree_bytes(db) > start + 4096, env)
        if (killed / METADATA).is_file():
            with Gallery.open(killed) as g:
                names = [it.name for it in g.all_items()]
                assert len(names) == len(set(names)) and [it.id for it in g.all_items()] == list(range(len(g)))
                states.append((code, len(g)))
    _run(cmd(killed), env)
    print(f"(exit code or None if killed, committed items) after each kill: {states}")
    with Gallery.open(tmp_path / "clean") as a, Gallery.open(killed) as b:
        assert sorted((i.name, i.path) for i in b.all_items()) == sorted((i.name, i.path) for i in a.all_items())
        assert len(b) == 30 and b.index_is_fresh()
        order = [{it.name: it.id for it in b.all_items()}[it.name] for it in a.all_items()]
        np.testing.assert_allclose(b.features()[order], a.features(), atol=1e-6)
