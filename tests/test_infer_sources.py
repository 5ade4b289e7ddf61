"""Image sources: folder walk (symlink loops, odd names, non-files), list files, CIRR and FashionIQ splits."""

import json
import os
from pathlib import Path

import pytest

from tests.fixtures.eval_layouts import CIRR_NAMES, make_cirr, make_fashioniq
from tests.fixtures.gallery import write_image
from zscir_infer.sources import IMAGE_EXTENSIONS, SourceError, list_images


def test_folder_walk_is_recursive_sorted_and_names_are_relative_posix_paths(messy_folder):
    root, expected = messy_folder
    listing = list_images(root)
    names = [e.name for e in listing.entries]
    assert listing.kind == "folder"
    assert sorted(names) == sorted(expected["good"] + expected["bad"])  # readme.txt filtered out
    assert len(names) == len(set(names))  # the symlink loop did not list anything twice
    assert list_images(root).entries == listing.entries  # deterministic
    for e in listing.entries:
        assert e.path.is_absolute() and e.path == root / e.name
    # each folder's files in sorted order before its subfolders (os.walk top-down, sorted)
    assert names.index("a.png") < names.index("sub/d.PNG") < names.index("sub/deeper/e.jpeg")


def test_folder_walk_reports_loops_and_dangling_links_instead_of_failing(messy_folder):
    root, expected = messy_folder
    bad = dict(list_images(root).bad)
    assert set(bad) == {str(root / p) for p in expected["listing_bad"]}
    assert "already walked" in bad[str(root / "sub/loop")]
    assert "broken symlink" in bad[str(root / "dangling.png")]


def test_a_second_link_to_a_folder_is_walked_once(tmp_path):
    write_image(tmp_path / "real" / "x.png", 0)
    (tmp_path / "alias").symlink_to(tmp_path / "real", target_is_directory=True)
    listing = list_images(tmp_path)
    assert [e.name for e in listing.entries] == ["alias/x.png"]  # sorted: alias before real
    assert [p for p, _ in listing.bad] == [str(tmp_path / "real")]


def test_non_regular_files_and_undecodable_names_are_reported(tmp_path):
    write_image(tmp_path / "ok.png", 0)
    os.mkfifo(tmp_path / "pipe.jpg")  # opening it would block the decoder forever
    with open(os.path.join(os.fsencode(tmp_path), b"latin1-\xe9.png"), "wb") as f:
        f.write((tmp_path / "ok.png").read_bytes())
    listing = list_images(tmp_path)
    assert [e.name for e in listing.entries] == ["ok.png"]
    reasons = sorted(reason for _, reason in listing.bad)
    assert len(reasons) == 2
    assert "not valid UTF-8" in reasons[0] and "not a regular file" in reasons[1]


def test_extension_filter_is_case_insensitive(tmp_path):
    for i, ext in enumerate(sorted(IMAGE_EXTENSIONS)):
        write_image(tmp_path / f"img{i}{ext.upper()}", i)
    (tmp_path / "x.svg").write_text("<svg/>")
    names = [e.name for e in list_images(tmp_path).entries]
    assert sorted(names) == sorted(f"img{i}{ext.upper()}" for i, ext in enumerate(sorted(IMAGE_EXTENSIONS)))


def test_list_file_paths_are_relative_to_the_list_and_lines_are_names(tmp_path):
    write_image(tmp_path / "imgs" / "a b.png", 0)
    write_image(tmp_path / "other" / "c.png", 1)
    absolute = write_image(tmp_path / "elsewhere" / "d.png", 2)
    list_file = tmp_path / "imgs" / "list.txt"
    list_file.write_text(f"# gallery\na b.png\n\n  ../other/c.png  \n{absolute}\na b.png\nmissing.png\n")
    listing = list_images(list_file)
    assert listing.kind == "list"
    assert [e.name for e in listing.entries] == ["a b.png", "../other/c.png", str(absolute), "missing.png"]
    assert listing.entries[1].path == Path(os.path.abspath(tmp_path / "imgs/../other/c.png"))
    assert listing.entries[2].path == absolute
    assert listing.bad == [("a b.png", "listed twice in list.txt")]  # missing.png is the decoder's to report


def test_list_file_that_is_not_utf8_is_a_clear_error(tmp_path):
    (tmp_path / "list.txt").write_bytes(b"caf\xe9.png\n")
    with pytest.raises(SourceError, match="not UTF-8"):
        list_images(tmp_path / "list.txt")


@pytest.mark.parametrize("layout", ["official", "searle"])
def test_cirr_image_splits_give_cirr_names_and_existing_paths(tmp_path, layout):
    root = make_cirr(tmp_path, "val", layout)
    ann = root if layout == "official" else root / "cirr"
    listing = list_images(ann / "image_splits" / "split.rc2.val.json")
    assert listing.kind == "cirr"
    assert [e.name for e in listing.entries] == CIRR_NAMES
    assert all(e.path.is_file() and e.path.stem == e.name for e in listing.entries)


def test_fashioniq_split_gives_ids_and_images_folder_paths(tmp_path):
    root = make_fashioniq(tmp_path, suffix=".png")
    split = json.loads((root / "image_splits" / "split.shirt.val.json").read_text())
    listing = list_images(root / "image_splits" / "split.shirt.val.json")
    assert listing.kind == "fashioniq"
    assert [e.name for e in listing.entries] == split
    assert all(e.path == root / "images" / f"{e.name}.png" and e.path.is_file() for e in listing.entries)


@pytest.mark.parametrize("content", ['{"a": 1}', "[1, 2]", "{not json", '"text"'])
def test_other_json_is_refused_with_what_was_expected(tmp_path, content):
    (tmp_path / "split.json").write_text(content)
    with pytest.raises(SourceError, match="JSON|image_splits"):
        list_images(tmp_path / "split.json")


def test_missing_source_is_a_clear_error(tmp_path):
    with pytest.raises(SourceError, match="does not exist"):
        list_images(tmp_path / "nope")
