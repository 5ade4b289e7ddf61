"""`zscir-infer index --engine ray` on a real local Ray cluster (loopback, 2 CPUs): the same gallery as the
in-process indexer (ids, names, paths; vectors within 1e-6), into FAISS and Milvus Lite, bad files
reported alike, and a killed run's finished shards inserted on resume."""

import json

import numpy as np
import pytest
from typer.testing import CliRunner

pytest.importorskip("ray", reason="--engine ray needs the [ray] extra (ray[data], pyarrow)")

from tests.fixtures.gallery import make_messy_folder, write_image  # noqa: E402
from zscir_infer import Runtime  # noqa: E402
from zscir_infer.cli import app  # noqa: E402
from zscir_infer.gallery import Gallery  # noqa: E402
from zscir_infer.ray_indexing import SHARD_DIR, read_shard, shard_key, write_shard  # noqa: E402
from zscir_infer.sources import ImageEntry  # noqa: E402

FEATURE_TOL = 1e-6
runner = CliRunner()
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("ray") / "photos"
    messy = make_messy_folder(root)
    for i in range(40):
        write_image(root / f"d{i % 4}" / f"img {i:02d}.png", 100 + i, size=(30 + i % 7, 28))
    return root, messy


def _index(folder, bundle, out, *extra):
    result = runner.invoke(app, ["index", str(folder), "--bundle", str(bundle), "--out", str(out), "--batch-size",
                                 "8", "--json", *extra])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def _same_gallery(a_root, b_root):
    with Gallery.open(a_root) as a, Gallery.open(b_root) as b:
        assert [(i.id, i.name, i.path) for i in b.all_items()] == [(i.id, i.name, i.path) for i in a.all_items()]
        np.testing.assert_allclose(b.features(), a.features(), atol=FEATURE_TOL, rtol=0)
        return len(a)


@pytest.mark.parametrize("store", ["faiss", "milvus"])
def test_a_ray_index_equals_an_in_process_index(tmp_path, folder, tiny_bundle, store):
    if store == "milvus":
        pytest.importorskip("milvus_lite", reason="the Milvus store needs the [milvus] extra")
    root, messy = folder
    local = _index(root, tiny_bundle, tmp_path / "local", "--store", store)
    ray = _index(root, tiny_bundle, tmp_path / "ray", "--store", store, "--engine", "ray")
    assert ray["added"] == local["added"] == 40 + len(messy["good"])
    assert sorted(b["path"] for b in ray["bad"]) == sorted(b["path"] for b in local["bad"])
    assert _same_gallery(tmp_path / "local", tmp_path / "ray") == ray["count"]
    assert not list((tmp_path / "ray" / SHARD_DIR).iterdir())  # every shard inserted, then removed


def test_a_killed_runs_finished_shard_is_inserted_on_resume(tmp_path, folder, tiny_bundle):
    """A shard written but not inserted (the driver killed in between): the re-run inserts its rows
    without re-encoding them, then encodes the rest; ids follow source order as an uninterrupted run's."""
    root, _ = folder
    local = tmp_path / "local"
    _index(root, tiny_bundle, local)
    with Gallery.open(local) as g:
        items, xb = g.all_items(), np.array(g.features())
    first = items[:10]
    killed = tmp_path / "killed"
    runtime = Runtime(tiny_bundle)
    Gallery.create(killed, bundle_id=runtime.bundle_id, embed_dim=runtime.embed_dim, bundle=str(tiny_bundle),
                   sources=[{"kind": "folder", "path": str(root)}]).close()  # killed before any insert
    (killed / SHARD_DIR).mkdir()
    marker = xb[[it.id for it in first]][:, ::-1].copy()  # not what the encoder makes: proves no re-encoding
    marker /= np.linalg.norm(marker, axis=1, keepdims=True)
    write_shard(killed / SHARD_DIR / f"shard-000000-{shard_key([])}.parquet",
                {"name": [it.name for it in first], "path": [it.path for it in first], "vector": marker,
                 "error": [""] * len(first)})
    names, _, vectors, _ = read_shard(next((killed / SHARD_DIR).iterdir()))
    assert names == [it.name for it in first] and np.array_equal(vectors, marker)
    summary = _index(root, tiny_bundle, killed, "--engine", "ray")
    assert summary["added"] == len(items)
    with Gallery.open(killed) as g:
        assert [(i.id, i.name, i.path) for i in g.all_items()] == [(i.id, i.name, i.path) for i in items]
        np.testing.assert_array_equal(g.features()[:10], marker)
        np.testing.assert_allclose(g.features()[10:], xb[10:], atol=FEATURE_TOL, rtol=0)
    assert not list((killed / SHARD_DIR).iterdir())


def test_shard_keys_follow_content():
    a = [ImageEntry("x", "/p/x"), ImageEntry("y", "/p/y")]
    assert shard_key(a) == shard_key(list(a)) != shard_key(a[::-1])
