"""`zscir-infer index` through CliRunner and as a real process killed with SIGKILL: bad files, resume,
--add, --rebuild, another bundle, and every error path."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from tests.fixtures.eval_layouts import CIRR_NAMES, make_cirr
from tests.fixtures.gallery import kill_when_stored, make_messy_folder, write_image
from zscir_infer import Runtime
from zscir_infer.cli import app
from zscir_infer.gallery import Gallery
from zscir_infer.stores.faiss_sqlite import FEATURES

FEATURE_TOL = 1e-6
runner = CliRunner()


def index(*args: str | Path):
    return runner.invoke(app, ["index", *map(str, args)])


def summary(output: str) -> dict[str, int]:
    """The counts of the summary table: {"added": n, "skipped, already present": n, ...}."""
    counts = {}
    for line in output.splitlines():
        cells = [c.strip() for c in line.strip("│┃ ").split("│")]
        if len(cells) == 2 and cells[1].replace(",", "").isdigit():
            counts[cells[0]] = int(cells[1].replace(",", ""))
    return counts


@pytest.fixture(scope="module")
def runtime(tiny_bundle):
    return Runtime(tiny_bundle)


@pytest.fixture
def messy(tmp_path):
    root = tmp_path / "photos [2024] dir"  # brackets: rich markup must not eat them
    return root, make_messy_folder(root)


def test_bad_files_are_reported_and_skipped_the_rest_encoded(tmp_path, messy, tiny_bundle, runtime):
    root, expected = messy
    result = index(root, "--bundle", tiny_bundle, "--out", tmp_path / "g", "--batch-size", "4")
    assert result.exit_code == 0, result.output
    counts = summary(result.stdout)
    n_bad = len(expected["bad"]) + len(expected["listing_bad"])
    assert counts["added"] == len(expected["good"]) and counts["skipped, bad files"] == n_bad
    for name in expected["bad"] + expected["listing_bad"]:
        assert str(root / name) in result.stdout
    with Gallery.open(tmp_path / "g", bundle_id=runtime.bundle_id) as g:
        items = g.all_items()
        assert sorted(it.name for it in items) == sorted(expected["good"])
        oracle = runtime.encode_images([it.path for it in items])  # [N, D]
        np.testing.assert_allclose(g.features(), oracle, atol=FEATURE_TOL)
        assert g.index_is_fresh() and g.meta["index"]["factory"] == "Flat"


def test_rerun_skips_what_is_present_and_adds_new_files(tmp_path, messy, tiny_bundle):
    root, expected = messy
    args = (root, "--bundle", tiny_bundle, "--out", tmp_path / "g")
    assert index(*args).exit_code == 0
    features = Gallery.open(tmp_path / "g").features().copy()
    again = index(*args)
    assert again.exit_code == 0, again.output
    assert summary(again.stdout)["added"] == 0
    assert summary(again.stdout)["skipped, already present"] == len(expected["good"])
    write_image(root / "sub" / "new one.png", 99)
    more = index(*args)
    assert (
        summary(more.stdout)["added"] == 1
        and summary(more.stdout)["images in the gallery"] == len(features) + 1
    )
    with Gallery.open(tmp_path / "g") as g:
        np.testing.assert_array_equal(g.features()[: len(features)], features)
        assert g.all_items()[-1].name == "sub/new one.png"


def test_json_prints_the_library_summary(tmp_path, messy, tiny_bundle):
    """`--json` is `index_images`' IndexSummary: the same counts as the table, the bad files with reasons."""
    root, expected = messy
    result = index(root, "--bundle", tiny_bundle, "--out", tmp_path / "g", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["added"] == report["count"] == len(expected["good"]) and report["present"] == 0
    assert report["index_spec"] == "auto" and report["index_factory"] == "Flat" and report["seconds"] > 0
    assert sorted(Path(b["path"]).name for b in report["bad"]) == sorted(
        Path(name).name for name in expected["bad"] + expected["listing_bad"])
    again = json.loads(index(root, "--bundle", tiny_bundle, "--out", tmp_path / "g", "--json").stdout)
    assert again["added"] == 0 and again["present"] == report["count"]


def test_another_source_needs_add(tmp_path, tiny_bundle):
    write_image(tmp_path / "one" / "a.png", 0)
    write_image(tmp_path / "two" / "b.png", 1)
    out = tmp_path / "g"
    assert index(tmp_path / "one", "-b", tiny_bundle, "-o", out).exit_code == 0
    refused = index(tmp_path / "two", "-b", tiny_bundle, "-o", out)
    assert refused.exit_code == 1 and "--add" in refused.stderr and str(tmp_path / "one") in refused.stderr
    added = index(tmp_path / "two", "-b", tiny_bundle, "-o", out, "--add")
    assert added.exit_code == 0, added.output
    with Gallery.open(out) as g:
        assert [it.name for it in g.all_items()] == ["a.png", "b.png"]
        assert [s["path"] for s in g.sources] == [str(tmp_path / "one"), str(tmp_path / "two")]


def test_a_gallery_of_another_bundle_is_refused(tmp_path, tiny_bundle, tiny_slerp_bundle):
    write_image(tmp_path / "imgs" / "a.png", 0)
    assert index(tmp_path / "imgs", "-b", tiny_bundle, "-o", tmp_path / "g").exit_code == 0
    refused = index(tmp_path / "imgs", "-b", tiny_slerp_bundle, "-o", tmp_path / "g")
    assert refused.exit_code == 1
    assert "was encoded by bundle" in refused.stderr and "--out NEW" in refused.stderr


def test_rebuild_retunes_the_index_without_the_bundle(tmp_path, tiny_bundle):
    for i in range(12):
        write_image(tmp_path / "imgs" / f"{i}.png", i)
    assert index(tmp_path / "imgs", "-b", tiny_bundle, "-o", tmp_path / "g").exit_code == 0
    xq = Gallery.open(tmp_path / "g").features()[:5].copy()
    exact = Gallery.open(tmp_path / "g").search(xq, 5)[1]
    rebuilt = index(
        "--rebuild", "--index", "hnsw", "--ef-search", "32", "-o", tmp_path / "g", "-b", tmp_path / "none"
    )
    assert rebuilt.exit_code == 0, rebuilt.output
    with Gallery.open(tmp_path / "g") as g:
        assert g.meta["index"]["factory"] == "HNSW32,Flat" and g.index.hnsw.efSearch == 32
        np.testing.assert_array_equal(g.search(xq, 5)[1], exact)  # 12 vectors: HNSW finds them all


def test_official_split_and_list_file_sources(tmp_path, tiny_bundle):
    root = make_cirr(tmp_path / "cirr", "val")
    split = root / "image_splits" / "split.rc2.val.json"
    result = index(split, "-b", tiny_bundle, "-o", tmp_path / "g")
    assert result.exit_code == 0, result.output
    assert [it.name for it in Gallery.open(tmp_path / "g").all_items()] == CIRR_NAMES
    names = json.loads(split.read_text())
    list_file = tmp_path / "cirr" / "img_raw" / "list.txt"
    list_file.write_text("\n".join(rel for rel in names.values()) + "\n")
    result = index(list_file, "-b", tiny_bundle, "-o", tmp_path / "g2")
    assert result.exit_code == 0, result.output
    np.testing.assert_allclose(
        Gallery.open(tmp_path / "g2").features(), Gallery.open(tmp_path / "g").features()
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "Give SRC"),
        (["{tmp}/nowhere"], "does not exist"),
        (["{tmp}/empty"], "No images in"),
        (["{tmp}/imgs", "--index", "IVFx"], "index_factory"),
        (["{tmp}/imgs", "--ef-search", "16"], "efSearch"),
        (["{tmp}/imgs", "--index", "ivfpq"], "--index flat"),
        (["--rebuild"], "No gallery at"),
        (["{tmp}/imgs", "--bundle", "{tmp}/empty"], "manifest.json"),
        (["{tmp}/imgs", "--out", "{tmp}/empty"], "already exists"),
        (["{tmp}/imgs", "--out", "{tmp}/imgs/a.png"], "already exists"),
    ],
)
def test_error_paths_say_what_to_do(tmp_path, tiny_bundle, args, message):
    (tmp_path / "empty").mkdir()
    write_image(tmp_path / "imgs" / "a.png", 0)
    args = [a.format(tmp=tmp_path) for a in args]
    defaults = [] if "--bundle" in args else ["--bundle", str(tiny_bundle)]
    result = index(*args, *defaults, *([] if "--out" in args else ["--out", str(tmp_path / "g")]))
    assert result.exit_code == (2 if not args else 1), result.output  # 2: a usage error, 1: bad input
    assert result.stderr.startswith("Error: ")
    assert message in " ".join(result.stderr.split()), result.stderr


N_IMAGES, KILLS, KILL_BATCH = 100, 4, 4


def _index_process(src: Path, bundle: Path, out: Path) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "zscir_infer.cli", "index", str(src), "--bundle", str(bundle), "--out", str(out),
           "--batch-size", str(KILL_BATCH), "--workers", "2"]  # fmt: skip
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=os.getcwd())


def test_sigkill_at_random_points_then_rerun_equals_an_uninterrupted_run(tmp_path, tiny_bundle, runtime):
    src = tmp_path / "images"
    for i in range(N_IMAGES):
        write_image(src / f"d{i % 3}" / f"img {i:03d}.png", i, size=(20 + i % 13, 24))
    (src / "d0" / "broken.jpg").write_bytes(b"\xff\xd8 not really")
    assert _index_process(src, tiny_bundle, tmp_path / "clean").wait() == 0
    rng = np.random.default_rng(0)
    row_bytes = runtime.embed_dim * 4
    committed = []
    for target in sorted(rng.integers(1, N_IMAGES, KILLS)):
        proc = _index_process(src, tiny_bundle, tmp_path / "killed")
        kill_when_stored(proc, tmp_path / "killed" / FEATURES, target, row_bytes)
        with Gallery.open(tmp_path / "killed") as partial:
            committed.append(len(partial))
    print(f"images committed after each SIGKILL: {committed} of {N_IMAGES}")
    assert any(0 < n < N_IMAGES for n in committed)  # killed mid-run, not after the end
    assert _index_process(src, tiny_bundle, tmp_path / "killed").wait() == 0
    with Gallery.open(tmp_path / "clean") as clean, Gallery.open(tmp_path / "killed") as resumed:
        clean_items, resumed_items = clean.all_items(), resumed.all_items()
        assert (
            len(resumed_items) == len({it.name for it in resumed_items}) == N_IMAGES
        )  # no duplicates, no loss
        assert {(it.name, it.path) for it in resumed_items} == {(it.name, it.path) for it in clean_items}
        by_name = {it.name: it.id for it in resumed_items}
        order = [by_name[it.name] for it in clean_items]
        np.testing.assert_allclose(resumed.features()[order], clean.features(), atol=FEATURE_TOL)
        assert resumed.index_is_fresh() and resumed.index.ntotal == N_IMAGES
    assert not list((tmp_path / "killed").glob(".*.tmp"))
