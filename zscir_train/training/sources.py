"""Training data sources: captions (LinCIR), images (Pic2Word) and image-caption pairs (TAT).

A source is a file, a folder, a glob or a webdataset-style brace range (`shards-{0000..0099}.tar`):
- `.txt`: captions one per line, or (for images) image paths one per line;
- `.csv` / `.tsv`: a column picked by name (header row) or by 0-based index (no header); CC3M's
  `Train_GCC-training.tsv` is headerless with the caption in column 0, Pic2Word's CC3M list has a
  `filepath` column;
- `.jsonl`: one object per line, a field picked by name;
- `.parquet`: a column, read in record batches (never the whole file at once);
- `.tar`: webdataset shards; captions are the `.txt` members, images are read in place from
  uncompressed tars (offset and size are indexed once), pairs group members by their key;
- a folder: for images every image file below it, for captions every supported file in it.
Without a column option, the first known name is used (`caption`/`text`/`title`/`prompt` for text,
`filepath`/`image`/`path`/`file` for images); a CSV/TSV whose first row holds none of them is
read as headerless, column 0.
"""

from __future__ import annotations

import csv
import glob
import io
import json
import re
import sys
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from zscir_infer.errors import ZscirError

TEXT_KEYS = ("caption", "text", "title", "prompt", "TEXT", "Prompt")
IMAGE_KEYS = ("filepath", "image", "path", "file", "img", "image_path")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp")
CAPTION_SUFFIXES = (".txt", ".csv", ".tsv", ".jsonl", ".parquet", ".tar")
TAR_TEXT_SUFFIX = ".txt"
PARQUET_BATCH_ROWS = 65_536
BRACE_RANGE = re.compile(r"\{(\d+)\.\.(\d+)\}")
LIST_BASE_DEPTH = 2  # relative paths in a list file resolve against its folder or the one above


class SourceError(ZscirError, ValueError):
    """A data source cannot be read as given; the message names the file and what to change."""


@dataclass(frozen=True, slots=True)
class ImageLocation:
    """An image file, or a member of an uncompressed tar (offset >= 0: its data bytes in the tar)."""

    path: str
    offset: int = -1
    size: int = 0

    def open(self) -> Image.Image:
        if self.offset < 0:
            with Image.open(self.path) as image:
                return image.convert("RGB")
        with open(self.path, "rb") as f:
            f.seek(self.offset)
            data = f.read(self.size)
        with Image.open(io.BytesIO(data)) as image:
            return image.convert("RGB")


def _expand_braces(spec: str) -> list[str]:
    match = BRACE_RANGE.search(spec)
    if match is None:
        return [spec]
    start, end = match.group(1), match.group(2)
    width = len(start)
    out = []
    for i in range(int(start), int(end) + 1):
        out += _expand_braces(spec[: match.start()] + str(i).zfill(width) + spec[match.end() :])
    return out


def expand_sources(specs: list[str]) -> list[Path]:
    """Files and folders named by the specs: brace ranges and globs expanded, order kept, each checked."""
    paths = []
    for spec in specs:
        for item in _expand_braces(str(spec)):
            matches = sorted(glob.glob(item)) if glob.has_magic(item) else [item]
            if not matches or not all(Path(m).exists() for m in matches):
                raise SourceError(f"Data source '{item}' does not exist (from '{spec}').")
            paths += [Path(m) for m in matches]
    return paths


def _pick_key(keys: list[str], column: str | None, known: tuple[str, ...], path: Path) -> str:
    if column is not None:
        if column not in keys:
            raise SourceError(f"{path} has no column/field '{column}'; it has {keys[:12]}.")
        return column
    for key in known:
        if key in keys:
            return key
    raise SourceError(f"{path}: none of {list(known)} among its columns/fields {keys[:12]}; name one with the column option.")


def _read_table(path: Path, columns: list[str | None], known: list[tuple[str, ...]]) -> Iterator[tuple[str, ...]]:
    """Rows of the chosen columns of a CSV/TSV (by name with a header, by index without one)."""
    csv.field_size_limit(sys.maxsize)
    with open(path, newline="", encoding="utf-8") as f:
        # open_clip's CC3M lists are tab-separated even when named .csv: a tab in the first line decides
        tsv = path.suffix == ".tsv" or "\t" in f.readline()
        f.seek(0)
        # CC3M's TSV is unquoted and has stray quote characters: read TSV without quoting rules
        reader = csv.reader(f, delimiter="\t" if tsv else ",", quoting=csv.QUOTE_NONE if tsv else csv.QUOTE_MINIMAL)
        first = next(reader, None)
        if first is None:
            return
        by_index = any(c is not None and c.isdigit() for c in columns) or (
            all(c is None for c in columns) and not any(k in first for ks in known for k in ks)
        )
        if by_index:
            indices = [int(c) if c is not None else i for i, c in enumerate(columns)]
            rows = [first]
        else:
            indices = [first.index(_pick_key(first, c, k, path)) for c, k in zip(columns, known, strict=True)]
            rows = []
        for line, row in enumerate(_chain(rows, reader), start=1):
            if len(row) <= max(indices):
                raise SourceError(f"{path} line {line}: {len(row)} columns, column {max(indices)} needed.")
            yield tuple(row[i] for i in indices)


def _chain(first: list, rest) -> Iterator:
    yield from first
    yield from rest


def _read_jsonl(path: Path, columns: list[str | None], known: list[tuple[str, ...]]) -> Iterator[tuple[str, ...]]:
    keys = None
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise SourceError(f"{path} line {line_no} is not JSON: {exc}") from exc
            if keys is None:
                keys = [_pick_key(list(record), c, k, path) for c, k in zip(columns, known, strict=True)]
            yield tuple(str(record.get(k, "")) for k in keys)


def _read_parquet(path: Path, columns: list[str | None], known: list[tuple[str, ...]]) -> Iterator[tuple[str, ...]]:
    import pyarrow.parquet as pq

    parquet = pq.ParquetFile(path)
    names = parquet.schema_arrow.names
    keys = [_pick_key(names, c, k, path) for c, k in zip(columns, known, strict=True)]
    for batch in parquet.iter_batches(batch_size=PARQUET_BATCH_ROWS, columns=keys):
        values = [batch.column(k).to_pylist() for k in keys]
        for row in zip(*values, strict=True):
            yield tuple("" if v is None else str(v) for v in row)


def _read_records(path: Path, columns: list[str | None], known: list[tuple[str, ...]]) -> Iterator[tuple[str, ...]]:
    if path.suffix in (".csv", ".tsv"):
        return _read_table(path, columns, known)
    if path.suffix == ".jsonl":
        return _read_jsonl(path, columns, known)
    if path.suffix == ".parquet":
        return _read_parquet(path, columns, known)
    raise SourceError(f"{path}: unsupported suffix '{path.suffix}'.")


def _tar_text_members(path: Path) -> Iterator[str]:
    with tarfile.open(path, "r|*") as tar:  # streaming: gzip-compressed shards work too
        for member in tar:
            if member.isfile() and member.name.endswith(TAR_TEXT_SUFFIX):
                yield tar.extractfile(member).read().decode("utf-8")


def iter_captions(specs: list[str], column: str | None = None) -> Iterator[str]:
    """Every caption of the sources, in order, stripped; blank ones are skipped."""
    for path in expand_sources(specs):
        files = sorted(p for p in path.rglob("*") if p.suffix in CAPTION_SUFFIXES) if path.is_dir() else [path]
        for file in files:
            if file.suffix == ".txt":
                with open(file, encoding="utf-8") as f:
                    lines = (line.rstrip("\n") for line in f)
                    yield from (c.strip() for c in lines if c.strip())
            elif file.suffix == ".tar":
                yield from (c.strip() for c in _tar_text_members(file) if c.strip())
            elif file.suffix in CAPTION_SUFFIXES:
                yield from (row[0].strip() for row in _read_records(file, [column], [TEXT_KEYS]) if row[0].strip())
            else:
                raise SourceError(f"{file}: captions are read from {CAPTION_SUFFIXES}, not '{file.suffix}'.")


def _resolver(list_file: Path, first: str, root: Path | None):
    """A function turning the paths of a list file into files: absolute as they are, relative against
    --image-root or else the list's folder (or the one above), whichever holds the first entry."""
    bases = [root] if root is not None else [list_file.parent, *list(list_file.parents)[1:LIST_BASE_DEPTH]]
    if not Path(first).is_absolute():
        base = next((b for b in bases if (b / first).exists()), None)
        if base is None:
            raise SourceError(
                f"{list_file}: relative image path '{first}' is not under {[str(b) for b in bases]}; "
                "pass the folder it is relative to with --image-root."
            )
        return lambda p: str(p if Path(p).is_absolute() else base / p)
    return str


def _tar_index(path: Path, suffixes: tuple[str, ...]) -> Iterator[tarfile.TarInfo]:
    try:
        tar = tarfile.open(path, "r:")  # random access needs an uncompressed tar
    except tarfile.ReadError as exc:
        raise SourceError(f"{path}: not an uncompressed tar ({exc}); training reads images in place, so unpack "
                          "or re-shard it without compression.") from exc
    with tar:
        for member in tar:
            if member.isfile() and member.name.lower().endswith(suffixes):
                yield member


def _located(paths: Iterator[str], source: Path, root: Path | None) -> list[ImageLocation]:
    paths = [p for p in paths if p]
    if not paths:
        return []
    resolve = _resolver(source, paths[0], root)
    return [ImageLocation(resolve(p)) for p in paths]


def list_images(specs: list[str], column: str | None = None, root: str | Path | None = None) -> list[ImageLocation]:
    """Every training image of the sources, in order (folders sorted by path)."""
    root = Path(root) if root is not None else None
    images: list[ImageLocation] = []
    for path in expand_sources(specs):
        if path.is_dir():
            images += [ImageLocation(str(p)) for p in sorted(path.rglob("*")) if p.suffix.lower() in IMAGE_SUFFIXES]
        elif path.suffix == ".tar":
            images += [ImageLocation(str(path), m.offset_data, m.size) for m in _tar_index(path, IMAGE_SUFFIXES)]
        elif path.suffix == ".txt":
            with open(path, encoding="utf-8") as f:
                images += _located((line.strip() for line in f), path, root)
        elif path.suffix.lower() in IMAGE_SUFFIXES:
            images.append(ImageLocation(str(path)))
        else:
            images += _located((row[0] for row in _read_records(path, [column], [IMAGE_KEYS])), path, root)
    if not images:
        raise SourceError(f"No images found in {specs}.")
    return images


def _webdataset_key(name: str) -> tuple[str, str]:
    """(key, extension) of a webdataset member: 'dir/000123.jpg' -> ('dir/000123', 'jpg')."""
    folder, _, base = name.rpartition("/")
    stem, _, ext = base.partition(".")
    return f"{folder}/{stem}" if folder else stem, ext.lower()


def _tar_pairs(path: Path) -> list[tuple[ImageLocation, str]]:
    images: dict[str, ImageLocation] = {}
    texts: dict[str, str] = {}
    with tarfile.open(path, "r:") as tar:
        for member in tar:
            if not member.isfile():
                continue
            key, ext = _webdataset_key(member.name)
            if f".{ext}" in IMAGE_SUFFIXES:
                images[key] = ImageLocation(str(path), member.offset_data, member.size)
            elif ext == TAR_TEXT_SUFFIX[1:]:
                texts[key] = tar.extractfile(member).read().decode("utf-8").strip()
    return [(images[k], texts[k]) for k in images if texts.get(k)]


def list_pairs(specs: list[str], image_column: str | None = None, caption_column: str | None = None,
               root: str | Path | None = None) -> list[tuple[ImageLocation, str]]:
    """Every (image, caption) pair of the sources, in order; pairs with an empty caption are skipped."""
    root = Path(root) if root is not None else None
    pairs: list[tuple[ImageLocation, str]] = []
    for path in expand_sources(specs):
        if path.suffix == ".tar":
            pairs += _tar_pairs(path)
            continue
        rows = [r for r in _read_records(path, [image_column, caption_column], [IMAGE_KEYS, TEXT_KEYS]) if r[1].strip()]
        if rows:
            resolve = _resolver(path, rows[0][0], root)
            pairs += [(ImageLocation(resolve(image)), caption.strip()) for image, caption in rows]
    if not pairs:
        raise SourceError(f"No image-caption pairs found in {specs}.")
    return pairs
