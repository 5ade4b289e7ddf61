"""Atomic file and directory writes: a reader sees the old complete version or the new one, never half.

Write to a temporary sibling (same filesystem), fsync it, then `os.replace` over the target and fsync
the directory so the rename itself survives a crash.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import secrets
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

FILE_MODE, DIR_MODE = 0o666, 0o777  # less the umask, as open() and mkdir() create them (mkstemp: 0600)


def _sibling(path: Path, suffix: str, make) -> Path:
    """A new, uniquely named `.{name}.{random}{suffix}` beside path, created by make(candidate) (which
    raises FileExistsError on a clash), so it gets the usual umask-based mode rather than tempfile's 0600/0700."""
    for _ in range(100):
        candidate = path.parent / f".{path.name}.{secrets.token_hex(6)}{suffix}"
        try:
            make(candidate)
            return candidate
        except FileExistsError:
            continue
    raise FileExistsError(f"No free temporary name beside {path}.")


def _new_file(candidate: Path) -> None:
    os.close(os.open(candidate, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE))


def fsync_dir(path: str | os.PathLike) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it replaces `path` atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _sibling(path, suffix + ".tmp", _new_file)
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: object) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def recover_directory(path: str | os.PathLike) -> bool:
    """Finish what a killed `atomic_directory` left: returns True when `path` was restored.

    A replace moves the old directory aside (`.{name}.*.old/{name}`) and then renames the new one into
    place; a process killed between the two renames leaves no `path`. The old complete version is
    moved back. Temporary and set-aside siblings of earlier killed writers are removed (one writer per
    target at a time: two concurrent writers of the same directory are not supported anyway).
    """
    path = Path(path)
    restored = False
    aside = sorted(path.parent.glob(f".{glob.escape(path.name)}.*.old"))
    if not path.exists():
        for old in aside:
            if (old / path.name).is_dir():
                os.replace(old / path.name, path)
                fsync_dir(path.parent)
                restored = True
                break
    for stale in (*aside, *path.parent.glob(f".{glob.escape(path.name)}.*.tmp")):
        if stale.is_dir():
            shutil.rmtree(stale, ignore_errors=True)
    return restored


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike, force: bool = False) -> Iterator[Path]:
    """Yield a temporary directory beside `path`; on success it becomes `path` by rename.

    With force, an existing `path` is replaced (moved aside first, removed after the rename). A writer
    killed at any point leaves the old directory or the new one, or (killed between the two renames)
    the old one set aside, which the next writer of `path` restores first (`recover_directory`).
    """
    path = Path(path)
    recover_directory(path)
    if path.exists() and not force:
        raise FileExistsError(f"{path} already exists: pass --force to replace it, or choose another --out.")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _sibling(path, ".tmp", lambda candidate: os.mkdir(candidate, DIR_MODE))
    try:
        yield tmp
        for f in tmp.rglob("*"):
            if f.is_file():
                with open(f, "rb") as fh:
                    os.fsync(fh.fileno())
        old = None
        if path.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".old", dir=path.parent))
            os.replace(path, old / path.name)
        os.replace(tmp, path)
        fsync_dir(path.parent)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
