"""Where gallery images come from: a folder, a list file, or an official split file.

`list_images(src)` returns the images in a deterministic order (the indexer's resume relies on it),
each with its gallery name (the key search results and benchmarks use) and its absolute path:
- a folder, walked recursively (symlinks followed, each real directory visited once, so a symlink loop
  ends), files kept by extension; name = the path relative to the folder, with '/' separators;
- a list file: one path per line, relative to the list file's folder (or absolute); blank lines and
  lines starting with '#' are ignored; name = the line as written;
- a CIRR `image_splits/split.rc2.{split}.json` ({name: "./dev/....png"}): name = the CIRR image name;
  paths resolve under `img_raw/`, the CIRR folder or its parent, as the evaluation reader does;
- a FashionIQ `image_splits/split.{category}.{split}.json` ([ids]): name = the id, path
  `images/{id}.jpg` (or `.png`) beside `image_splits/`.

What cannot be an image entry (a dangling symlink, a FIFO named x.jpg, an unreadable folder, a file
name that is not valid UTF-8, a name listed twice) is returned in `bad` with the reason, not raised.
"""

from __future__ import annotations

import json
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

from zscir_infer.errors import ZscirError

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"})
CIRR_IMAGE_DIRS = ("img_raw", ".")  # under the CIRR folder; its parent is tried last
FASHIONIQ_SUFFIXES = (".jpg", ".png")
COMMENT = "#"


class SourceError(ZscirError, ValueError):
    """SRC cannot be listed at all; the message says what was expected."""


@dataclass(frozen=True)
class ImageEntry:
    name: str  # the gallery key: relative path, list line, or the dataset's image name / id
    path: Path  # absolute


@dataclass
class SourceListing:
    kind: str  # folder | list | cirr | fashioniq
    root: Path  # the folder, or the file that was read
    entries: list[ImageEntry] = field(default_factory=list)
    bad: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)


def list_images(src: str | os.PathLike, extensions: frozenset[str] = IMAGE_EXTENSIONS) -> SourceListing:
    """The images SRC names, in a deterministic order (see the module doc)."""
    src = Path(os.path.abspath(src))
    if src.is_dir():
        return walk_folder(src, extensions)
    if not src.is_file():
        raise SourceError(
            f"{src} does not exist: pass a folder of images, a list file or an image_splits JSON."
        )
    if src.suffix.lower() == ".json":
        return read_split_file(src)
    return read_list_file(src)


def _valid_utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # os.fsdecode's surrogates for undecodable bytes
        return False
    return True


def walk_folder(root: Path, extensions: frozenset[str] = IMAGE_EXTENSIONS) -> SourceListing:
    listing = SourceListing("folder", root)
    visited = {_dir_key(root)}

    def on_error(exc: OSError) -> None:
        listing.bad.append((str(exc.filename), f"folder cannot be read ({exc.strerror})"))

    for dirpath, dirnames, filenames in os.walk(root, onerror=on_error, followlinks=True):
        kept = []
        for d in sorted(dirnames):
            path = os.path.join(dirpath, d)
            try:
                key = _dir_key(Path(path))
            except OSError as exc:
                listing.bad.append((path, f"folder cannot be read ({exc.strerror})"))
                continue
            if key in visited:  # a symlink loop, or a second link to a folder already walked
                listing.bad.append((path, "folder already walked through another path (symlink loop?)"))
                continue
            visited.add(key)
            kept.append(d)
        dirnames[:] = kept
        for f in sorted(filenames):
            if os.path.splitext(f)[1].lower() in extensions:
                _add_file(listing, Path(dirpath, f), Path(dirpath, f).relative_to(root).as_posix())
    return listing


def _dir_key(path: Path) -> tuple[int, int]:
    st = path.stat()
    return st.st_dev, st.st_ino


def _add_file(listing: SourceListing, path: Path, name: str) -> None:
    if not _valid_utf8(str(path)):
        listing.bad.append((repr(str(path)), "file name is not valid UTF-8: rename the file"))
        return
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        listing.bad.append((str(path), "broken symlink (its target does not exist)"))
        return
    except OSError as exc:
        listing.bad.append((str(path), f"cannot be read ({exc.strerror})"))
        return
    if not stat.S_ISREG(mode):
        listing.bad.append((str(path), "not a regular file"))
        return
    listing.entries.append(ImageEntry(name, path))


def read_list_file(list_file: Path) -> SourceListing:
    listing = SourceListing("list", list_file)
    try:
        lines = list_file.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as exc:
        raise SourceError(
            f"List file {list_file} is not UTF-8 text ({exc}): write one image path per line."
        ) from exc
    seen: set[str] = set()
    for line in lines:
        name = line.strip()
        if not name or name.startswith(COMMENT):
            continue
        if name in seen:
            listing.bad.append((name, f"listed twice in {list_file.name}"))
            continue
        seen.add(name)
        path = Path(name) if os.path.isabs(name) else list_file.parent / name
        _add_named(listing, name, path)
    return listing


def _add_named(listing: SourceListing, name: str, path: Path) -> None:
    """An entry whose file may be missing: the decoder reports it then, with the other bad files."""
    listing.entries.append(ImageEntry(name, Path(os.path.abspath(path))))


def read_split_file(split_file: Path) -> SourceListing:
    try:
        split = json.loads(split_file.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SourceError(f"{split_file} is not valid JSON ({exc}).") from exc
    if isinstance(split, dict) and all(isinstance(v, str) for v in split.values()):
        return _cirr_split(split_file, split)
    if isinstance(split, list) and all(isinstance(v, str) for v in split):
        return _fashioniq_split(split_file, split)
    raise SourceError(
        f"{split_file} is neither a CIRR image_splits file ({{name: relative path}}) nor a FashionIQ "
        "image_splits file ([image ids]); for other lists write one image path per line in a text file."
    )


def _cirr_split(split_file: Path, name_to_relpath: dict[str, str]) -> SourceListing:
    listing = SourceListing("cirr", split_file)
    cirr_dir = split_file.parent.parent  # <cirr>/image_splits/split.rc2.{split}.json
    top = Path(next(iter(name_to_relpath.values()), "dev")).parts[0]
    bases = [cirr_dir / d for d in CIRR_IMAGE_DIRS] + [cirr_dir.parent]
    base = next((b for b in bases if (b / top).is_dir()), bases[0])
    for name, relpath in name_to_relpath.items():
        _add_named(listing, name, base / relpath)
    return listing


def _fashioniq_split(split_file: Path, image_ids: list[str]) -> SourceListing:
    listing = SourceListing("fashioniq", split_file)
    images_dir = split_file.parent.parent / "images"  # <root>/image_splits/split.{cat}.{split}.json
    seen: set[str] = set()
    for image_id in image_ids:
        if image_id in seen:
            listing.bad.append((image_id, f"listed twice in {split_file.name}"))
            continue
        seen.add(image_id)
        paths = [images_dir / f"{image_id}{suffix}" for suffix in FASHIONIQ_SUFFIXES]
        _add_named(listing, image_id, next((p for p in paths if p.is_file()), paths[0]))
    return listing
