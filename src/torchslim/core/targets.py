"""Where an export may write (``torchslim export hf|gguf|onnx -o OUT``).

Refused: an output that is a link; one that is the source or lies inside it (or holds it), whatever
``--force`` says; without ``--force``, another torchslim artifact (or a path inside one), an existing
non-empty folder and an existing file. A folder export is written into a temporary sibling folder and
renamed into place only once complete, so a failure never leaves a half-written folder (with ``--force``
the old folder is set aside first and removed last). File exports are written to a temporary sibling
file and renamed the same way by their writers.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

from torchslim.core.errors import TorchSlimError
from torchslim.core.paths import refuse_link

MANIFEST = "manifest.json"


def _inside(a: str, b: str) -> bool:
    """Real path ``a`` is ``b`` or lies under it."""
    return os.path.commonpath([a, b]) == b


def _check_source(out: Path, source: str | os.PathLike) -> None:
    src = Path(source)
    if not src.exists():
        return                                   # a zoo name, not a path
    real_src, real_out = os.path.realpath(src), os.path.realpath(out)
    if _inside(real_out, real_src) or _inside(real_src, real_out):
        raise TorchSlimError(f"--out {out} is the source {src} (or inside it, or holds it); exporting there would "
                             "destroy the source: choose another folder")


def _artifact_at(path: Path) -> bool:
    return (path / MANIFEST).is_file()


def check_export(out: str | os.PathLike, source: str | os.PathLike, force: bool, folder: bool) -> Path:
    """Refuse an export to ``out`` (see the module docstring); returns ``out`` as a Path."""
    out = refuse_link(Path(out))
    _check_source(out, source)
    if folder and out.exists() and not out.is_dir():
        raise TorchSlimError(f"--out {out} is a file; name a folder to write")
    if not folder and out.is_dir():
        raise TorchSlimError(f"--out {out} is a folder; name the file to write")
    if force:
        return out
    if folder and out.is_dir() and _artifact_at(out):
        raise TorchSlimError(f"--out {out} is another torchslim artifact; choose a new folder (or pass --force "
                             "to replace it)")
    if folder and out.is_dir() and any(out.iterdir()):
        raise TorchSlimError(f"--out {out} is a non-empty folder; choose an empty or new folder (or pass --force "
                             "to replace it)")
    if not folder and out.exists():
        raise TorchSlimError(f"--out {out} exists; pass --force to replace it")
    if _artifact_at(out.parent):
        raise TorchSlimError(f"--out {out} lies inside the torchslim artifact {out.parent}; choose a path outside "
                             "it (or pass --force)")
    return out


def check_new_artifact(out: str | os.PathLike | None, source: str | os.PathLike, force: bool) -> None:
    """Before a verb that saves an artifact at ``out`` does any work: never through a link, and never over an
    artifact (``source`` itself included) unless ``force``: a finished run's folder is not silently replaced."""
    if out is None:
        return
    out = refuse_link(Path(out))
    if not force and out.is_dir() and _artifact_at(out):
        raise TorchSlimError(f"--out {out} already holds a torchslim artifact; choose a new folder (or pass --force "
                             "to replace it)")


@contextlib.contextmanager
def folder_export(out: str | os.PathLike, source: str | os.PathLike, force: bool) -> Iterator[Path]:
    """Check ``out`` (:func:`check_export`), then yield an empty temporary sibling folder that replaces
    ``out`` only if the block succeeds."""
    out = check_export(out, source, force, folder=True)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    except OSError as e:
        raise TorchSlimError(f"cannot write next to {out} ({e.strerror or e})") from None
    try:
        yield tmp
        aside = None
        if out.exists():
            aside = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".old", dir=out.parent))
            os.replace(out, aside / "old")
        os.replace(tmp, out)
        if aside is not None:
            shutil.rmtree(aside, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
