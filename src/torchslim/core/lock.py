"""One writer per output folder: a recipe run holds an exclusive ``flock`` on ``<out>/.torchslim-lock``.

A second run on the same folder is refused in one line while the first runs. The kernel releases the lock
when its process ends, however it ends (``kill -9`` included), so a stale lock file never blocks: the next
run simply takes the lock again. The holder removes the file when it is done; a process that locked the
file just before it was removed notices (the path no longer names the file it locked) and tries again.
"""
from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path
from typing import Iterator

from torchslim.core.errors import TorchSlimError
from torchslim.core.io import LOCK
from torchslim.core.paths import refuse_link


def _holder(fd: int) -> str:
    with contextlib.suppress(OSError, ValueError):
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
        if text.isdigit():
            return f" (pid {text})"
    return ""


def _acquire(path: Path) -> int:
    """A descriptor of ``path`` holding its exclusive lock, or an error when another process holds it."""
    for _ in range(20):
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
        except OSError as e:
            raise TorchSlimError(f"cannot create the lock file {path} ({e.strerror})") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            who = _holder(fd)
            os.close(fd)
            raise TorchSlimError(f"{path.parent} is being written by another torchslim run{who}; wait for it to "
                                 "finish or choose another --out") from None
        try:
            same = os.path.samestat(os.fstat(fd), os.stat(path, follow_symlinks=False))
        except FileNotFoundError:
            same = False
        if same:
            os.ftruncate(fd, 0)
            os.pwrite(fd, str(os.getpid()).encode(), 0)
            return fd
        os.close(fd)               # locked a file its holder had just removed: lock the new one
    raise TorchSlimError(f"cannot lock {path}: it keeps being replaced")


@contextlib.contextmanager
def out_lock(out: str | os.PathLike) -> Iterator[Path]:
    """Hold the lock of output folder ``out`` (created if missing, refused if a link) for the block; a folder
    this call created and left empty is removed again."""
    out = refuse_link(Path(out))
    created = not out.exists()
    if not created and not out.is_dir():
        raise TorchSlimError(f"--out {out} is a file, not a folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise TorchSlimError(f"cannot create the output folder {out} ({e.strerror or e})") from None
    path = out / LOCK
    fd = _acquire(path)
    try:
        yield out
    finally:
        with contextlib.suppress(OSError):
            os.unlink(path)
        os.close(fd)
        if created:
            with contextlib.suppress(OSError):
                out.rmdir()            # only if still empty: an early error leaves no folder behind
