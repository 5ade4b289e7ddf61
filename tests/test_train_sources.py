"""Caption, image and pair sources in every supported format, read back exactly."""

import io
import json
import tarfile

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from zscir_train.training.sources import (
    SourceError,
    expand_sources,
    iter_captions,
    list_images,
    list_pairs,
)

CAPTIONS = ["a red star", 'a "quoted" caption, with a comma', "a blue circle on white"]


def png_bytes(value: int) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.full((8, 8, 3), value, dtype=np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def write_tar(path, members: dict[str, bytes]) -> None:
    with tarfile.open(path, "w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def test_captions_from_every_format(tmp_path):
    (tmp_path / "a.txt").write_text(CAPTIONS[0] + "\n\n" + CAPTIONS[1] + "\n")
    # CC3M: headerless TSV, caption first, unquoted (stray quotes are text)
    (tmp_path / "cc3m.tsv").write_text("".join(f"{c}\thttp://x/{i}.jpg\n" for i, c in enumerate(CAPTIONS)))
    (tmp_path / "b.csv").write_text('id,caption\n1,"a red star"\n2,"a ""quoted"" caption, with a comma"\n')
    (tmp_path / "c.jsonl").write_text("".join(json.dumps({"text": c, "n": i}) + "\n" for i, c in enumerate(CAPTIONS)))
    pq.write_table(pa.table({"prompt": CAPTIONS, "x": [1, 2, 3]}), tmp_path / "d.parquet")
    write_tar(tmp_path / "shard-000.tar", {f"{i:03d}.txt": c.encode() for i, c in enumerate(CAPTIONS)}
              | {"000.jpg": b"not read"})
    assert list(iter_captions([str(tmp_path / "a.txt")])) == CAPTIONS[:2]
    assert list(iter_captions([str(tmp_path / "cc3m.tsv")])) == CAPTIONS
    assert list(iter_captions([str(tmp_path / "cc3m.tsv")], column="0")) == CAPTIONS
    assert list(iter_captions([str(tmp_path / "b.csv")])) == CAPTIONS[:2]
    assert list(iter_captions([str(tmp_path / "c.jsonl")])) == CAPTIONS
    assert list(iter_captions([str(tmp_path / "d.parquet")])) == CAPTIONS
    assert list(iter_captions([str(tmp_path / "d.parquet")], column="prompt")) == CAPTIONS
    assert list(iter_captions([str(tmp_path / "shard-{000..000}.tar")])) == CAPTIONS
    with pytest.raises(SourceError, match="no column/field 'missing'"):
        list(iter_captions([str(tmp_path / "b.csv")], column="missing"))


def test_brace_ranges_globs_and_missing_files(tmp_path):
    for i in range(3):
        (tmp_path / f"part-{i:02d}.txt").write_text(f"caption {i}\n")
    assert [p.name for p in expand_sources([str(tmp_path / "part-{00..02}.txt")])] == [
        "part-00.txt", "part-01.txt", "part-02.txt"]
    assert list(iter_captions([str(tmp_path / "part-*.txt")])) == ["caption 0", "caption 1", "caption 2"]
    with pytest.raises(SourceError, match="does not exist"):
        expand_sources([str(tmp_path / "part-{00..03}.txt")])


def test_images_from_folders_lists_tables_and_tar_shards(tmp_path):
    folder = tmp_path / "images" / "sub"
    folder.mkdir(parents=True)
    for i in range(3):
        (folder / f"{i}.png").write_bytes(png_bytes(10 * i))
    (tmp_path / "images" / "notes.txt").write_text("not an image")
    from_folder = list_images([str(tmp_path / "images")])
    assert [p.path.split("/")[-1] for p in from_folder] == ["0.png", "1.png", "2.png"]
    # a list file whose paths are relative to the folder above it (as the world's train/unlabeled.txt)
    (tmp_path / "lists").mkdir()
    (tmp_path / "lists" / "unlabeled.txt").write_text("images/sub/1.png\nimages/sub/2.png\n")
    from_list = list_images([str(tmp_path / "lists" / "unlabeled.txt")])
    assert np.asarray(from_list[0].open())[0, 0, 0] == 10
    # open_clip's CC3M list: tab-separated although named .csv, with a filepath column
    (tmp_path / "cc3m.csv").write_text("filepath\ttitle\nimages/sub/2.png\ta title\n")
    assert np.asarray(list_images([str(tmp_path / "cc3m.csv")])[0].open())[0, 0, 0] == 20
    write_tar(tmp_path / "shard.tar", {"a/000.png": png_bytes(7), "a/000.txt": b"x", "a/001.png": png_bytes(9)})
    shards = list_images([str(tmp_path / "shard.tar")])
    assert [np.asarray(p.open())[0, 0, 0] for p in shards] == [7, 9]  # read in place at their offsets
    (tmp_path / "bad.txt").write_text("nowhere/0.png\n")
    with pytest.raises(SourceError, match="--image-root"):
        list_images([str(tmp_path / "bad.txt")])


def test_pairs_from_jsonl_csv_and_webdataset(tmp_path):
    (tmp_path / "im").mkdir()
    for i in range(2):
        (tmp_path / "im" / f"{i}.png").write_bytes(png_bytes(i + 1))
    (tmp_path / "pairs.jsonl").write_text(json.dumps({"image": "im/0.png", "caption": "zero"}) + "\n"
                                          + json.dumps({"image": "im/1.png", "caption": "one"}) + "\n")
    pairs = list_pairs([str(tmp_path / "pairs.jsonl")])
    assert [(np.asarray(im.open())[0, 0, 0], c) for im, c in pairs] == [(1, "zero"), (2, "one")]
    (tmp_path / "pairs.tsv").write_text("im/1.png\tone\nim/0.png\tzero\n")
    assert [c for _, c in list_pairs([str(tmp_path / "pairs.tsv")], image_column="0", caption_column="1")] == ["one", "zero"]
    write_tar(tmp_path / "laion.tar", {"k1.jpg": png_bytes(5), "k1.txt": b" five ", "k2.jpg": png_bytes(6),
                                       "k3.txt": b"no image"})
    shard = list_pairs([str(tmp_path / "laion.tar")])
    assert [(np.asarray(im.open())[0, 0, 0], c) for im, c in shard] == [(5, "five")]
