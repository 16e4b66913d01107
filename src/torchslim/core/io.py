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
from typing import Any, Iterator

STAGING = ".torchslim-staging"
REPLACED = ".replaced-"
RUN_DIR = ".torchslim-run"
LOCK = ".torchslim-lock"          # a recipe run holds it while it writes the folder (core.lock)
ONLOAD_DIR = ".torchslim-onload"  # layer-wise onloading's block files and spilled inputs while it runs
# Entries torchslim itself creates inside an output folder (besides an artifact's own files).
OWNED_NAMES = frozenset({STAGING, RUN_DIR, LOCK, ONLOAD_DIR})


def _umask() -> int:
    old = os.umask(0o022)
    os.umask(old)
    return old


def user_mode(path: str | os.PathLike, folder: bool = False) -> None:
    """Give ``path`` the mode a plain ``open``/``mkdir`` would (0666/0777 less the umask): temporary files are
    created 0600/0700, and an artifact, report or export must stay readable by a serving container or a colleague
    where the user's umask allows it."""
    with contextlib.suppress(FileNotFoundError):
        os.chmod(path, (0o777 if folder else 0o666) & ~_umask())


def user_mode_tree(root: str | os.PathLike) -> None:
    """:func:`user_mode` for ``root`` and everything under it (a folder another library wrote)."""
    root = Path(root)
    for p in [root, *root.rglob("*")]:
        if not p.is_symlink():
            user_mode(p, folder=p.is_dir())


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike, mode: str = "w") -> Iterator:
    """Open a temporary file next to ``path``; rename it over ``path`` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    user_mode(tmp)
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
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary path next to ``path`` for a writer that opens files by name; renamed over ``path`` only if
    the block succeeds, removed otherwise."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        user_mode(tmp, folder=Path(tmp).is_dir())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield an empty temporary folder beside ``path``; on success it replaces ``path`` (for folders a
    writer owns entirely, such as training checkpoints and caches; the old folder is removed last).

    Leftovers of an interrupted earlier write are handled first: stale temporary folders are removed,
    and an old folder set aside just before a kill (``path`` missing) is put back."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    recover_dir(path)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    user_mode(tmp, folder=True)
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


def recover_dir(path: Path) -> None:
    """Undo what a kill inside :func:`atomic_dir` left: restore a set-aside old folder if ``path`` is gone,
    delete stale temporary and set-aside folders."""
    olds = sorted(path.parent.glob(f".{glob_escape(path.name)}.old-*"), key=lambda p: p.stat().st_mtime)
    if not path.exists() and olds:
        os.replace(olds.pop(), path)
    for stale in [*olds, *path.parent.glob(f".{glob_escape(path.name)}.*.tmp")]:
        shutil.rmtree(stale, ignore_errors=True)


def glob_escape(name: str) -> str:
    return "".join(f"[{c}]" if c in "*?[" else c for c in name)


@contextlib.contextmanager
def staged_files(folder: str | os.PathLike, marker: str, stale: list[str] = ()) -> Iterator[Path]:
    """Yield an empty staging folder inside ``folder``; on success move every staged file into ``folder``,
    ``marker`` (the manifest) last, then delete ``stale`` files the new set does not contain.

    Until the marker is renamed the previous ``marker`` stays beside the previous files (set aside as
    ``.replaced-<marker>`` only once the commit has begun), and a ``.complete`` flag in the staging
    folder says the new set is whole: :func:`recover_staged` finishes a commit a kill interrupted, or
    discards an incomplete staging folder. Other files in ``folder`` are never touched.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    recover_staged(folder, marker)
    stage = folder / STAGING
    shutil.rmtree(stage, ignore_errors=True)
    stage.mkdir()
    try:
        yield stage
        names = [p.name for p in stage.iterdir()]
        for name in names:
            _fsync(stage / name)
            user_mode(stage / name, folder=(stage / name).is_dir())     # safetensors writes 0600
        (stage / COMPLETE).write_text("")
        _fsync(stage)
        _commit(folder, stage, marker)
        for name in set(stale) - set(names):
            with contextlib.suppress(FileNotFoundError, IsADirectoryError):
                (folder / name).unlink()
    finally:
        shutil.rmtree(stage, ignore_errors=True)


COMPLETE = ".complete"


def _commit(folder: Path, stage: Path, marker: str) -> None:
    """Move the staged files into ``folder``, ``marker`` last (idempotent: a recovery may run it again)."""
    names = sorted(p.name for p in stage.iterdir() if p.name != COMPLETE)
    old_marker, aside = folder / marker, folder / f"{REPLACED}{marker}"
    if old_marker.exists() and (stage / marker).exists():
        os.replace(old_marker, aside)                    # the old set is no longer described
    for name in names:
        if name != marker:
            os.replace(stage / name, folder / name)
    if (stage / marker).exists():
        os.replace(stage / marker, old_marker)
    _fsync(folder)
    with contextlib.suppress(FileNotFoundError):
        aside.unlink()


def recover_staged(folder: str | os.PathLike, marker: str, discard_incomplete: bool = True) -> None:
    """Finish a staged write a kill interrupted after it was complete; discard an incomplete one (a writer
    does, before staging anew; a reader leaves it, as it may belong to a write in progress)."""
    folder = Path(folder)
    stage = folder / STAGING
    if not stage.is_dir():
        return
    if (stage / COMPLETE).exists():
        _commit(folder, stage, marker)
        shutil.rmtree(stage, ignore_errors=True)
    elif discard_incomplete:
        shutil.rmtree(stage, ignore_errors=True)


def _fsync(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def read_text(path: Path, max_bytes: int, missing: str) -> str:
    """A UTF-8 text file, with one-line errors: ``missing`` (``"config file not found"``) when absent, and
    refusals for files over ``max_bytes`` or not UTF-8."""
    from torchslim.core.errors import ConfigError

    if not path.is_file():
        raise ConfigError(f"{missing}: {path}")
    if path.stat().st_size > max_bytes:
        raise ConfigError(f"{path}: larger than {max_bytes >> 20} MB")
    try:
        return path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not UTF-8 text (byte {e.start})") from None


def sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def utc_now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def match_header(path: str | os.PathLike, expected: dict[str, Any], header: dict[str, tuple[Any, Any]], *,
                 mismatch: str = "weights do not match the architecture", holder: str = "the model") -> None:
    """The tensors a safetensors header lists (``{name: (dtype, shape)}``) are exactly ``expected``'s names with
    their shapes and dtype kinds, or an ArtifactError naming the first difference (``mismatch`` for a different
    set of names; ``holder`` is what expects each tensor). A floating-point tensor may be stored in another
    floating dtype (a model saved after ``.half()``); integer codes, masks and counters must keep theirs."""
    from torchslim.core.errors import ArtifactError

    missing, unexpected = sorted(set(expected) - set(header)), sorted(set(header) - set(expected))
    if missing or unexpected:
        what = f"missing {missing[:3]}" if missing else f"unexpected {unexpected[:3]}"
        raise ArtifactError(f"{path}: {mismatch} ({what})")
    for name, ref in expected.items():
        dtype, shape = header[name]
        if tuple(shape) != tuple(ref.shape):
            raise ArtifactError(f"{path}: tensor '{name}' has shape {list(shape)}, {holder} expects {list(ref.shape)}")
        if dtype != ref.dtype and not (dtype.is_floating_point and ref.dtype.is_floating_point):
            raise ArtifactError(f"{path}: tensor '{name}' is {dtype}, {holder} expects {ref.dtype}")
