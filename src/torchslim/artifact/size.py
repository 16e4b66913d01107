"""Bytes on disk of an artifact: the files its manifest lists (a folder may also hold reports), measured on an
existing folder or on a model saved to a temporary one. The evaluation harness receives :func:`artifact_size` as
its sizer (it sits below the artifact format and does not import it)."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

from torch import nn

from torchslim.artifact.format import read_manifest, save
from torchslim.core.errors import TorchSlimError


def folder_bytes(path: str | os.PathLike) -> int:
    """Bytes of the artifact at ``path``: the files its manifest lists (a folder may also hold reports and
    other files that are not part of it); for a folder without such a list, every regular file under it."""
    path = Path(path)
    if path.is_file():
        return path.stat().st_size
    if not path.is_dir():
        raise TorchSlimError(f"artifact path {path} does not exist")
    files = _artifact_files(path)
    if files is not None:
        return sum((path / f).stat().st_size for f in files if (path / f).is_file())
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


def _artifact_files(path: Path) -> list[str] | None:
    try:
        files = read_manifest(path).get("files")
    except TorchSlimError:
        return None
    return [f for f in files if isinstance(f, str) and "/" not in f] if isinstance(files, list) else None


def artifact_bytes(model: nn.Module, *, source: dict[str, Any] | None = None) -> tuple[int | None, str]:
    """Save ``model`` with ``torchslim.artifact.save`` to a temporary folder and measure it."""
    with tempfile.TemporaryDirectory(prefix="torchslim-eval-") as tmp:
        out = save(model, Path(tmp) / "artifact", source=source)
        return folder_bytes(out), "saved with torchslim.artifact.save to a temporary folder"


def artifact_size(model: nn.Module, artifact_dir: str | os.PathLike | None = None,
                  source: dict[str, Any] | None = None) -> tuple[int | None, str]:
    """The evaluation harness's sizer: the existing artifact at ``artifact_dir``, else ``model`` saved."""
    if artifact_dir is not None:
        return folder_bytes(artifact_dir), f"existing artifact at {artifact_dir}"
    return artifact_bytes(model, source=source)
