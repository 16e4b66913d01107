"""Atomic file writes and in-place staged folder writes: a crash never leaves a half-written file in
place of a good one, and files a writer did not create are never touched."""
from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Iterator

STAGING = ".torchslim-staging"
REPLACED = ".replaced-"
RUN_DIR = ".torchslim-run"
# Entries torchslim itself creates inside an output folder (besides an artifact's own files).
OWNED_NAMES = frozenset({STAGING, RUN_DIR})


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike, mode: str = "w") -> Iterator:
    """Open a temporary file next to ``path``; rename it over ``path`` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield an empty temporary folder beside ``path``; on success it replaces ``path`` (for folders a
    writer owns entirely, such as training checkpoints and caches; the old folder is removed last)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield tmp
        old = None
        if path.exists():
            old = path.with_name(f".{path.name}.old-{os.getpid()}")
            os.replace(path, old)
        os.replace(tmp, path)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


@contextlib.contextmanager
def staged_files(folder: str | os.PathLike, marker: str, stale: list[str] = ()) -> Iterator[Path]:
    """Yield an empty staging folder inside ``folder``; on success move every staged file into ``folder``,
    ``marker`` (the manifest) last, then delete ``stale`` files the new set does not contain.

    Until the marker is renamed the previous ``marker`` stays in place beside the previous files,
    so a reader sees either the old set or (after the last rename) the new one; other files in
    ``folder`` are never touched.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    stage = folder / STAGING
    shutil.rmtree(stage, ignore_errors=True)      # a previous interrupted write (ours)
    stage.mkdir()
    try:
        yield stage
        names = sorted(p.name for p in stage.iterdir())
        for p in stage.iterdir():
            _fsync(p)
        old_marker = folder / marker
        if old_marker.exists() and names != [marker]:
            os.replace(old_marker, folder / f"{REPLACED}{marker}")   # the old set is no longer described
        for name in names:
            if name != marker:
                os.replace(stage / name, folder / name)
        os.replace(stage / marker, folder / marker)
        _fsync(folder)
        for name in set(stale) - set(names):
            with contextlib.suppress(FileNotFoundError, IsADirectoryError):
                (folder / name).unlink()
        with contextlib.suppress(FileNotFoundError):
            (folder / f"{REPLACED}{marker}").unlink()
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def _fsync(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def utc_now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
