"""Confinement of what torchslim writes: every path resolves inside the folder the user named.

* :func:`refuse_link` refuses an output folder (``--out``) that is a symbolic link;
* :func:`confined` joins a relative name under that folder, refusing absolute names, ``..``, NUL bytes,
  over-long names and any link on the way (links are never followed out of the folder);
* :func:`check_entry_name` is the rule for one folder name a recipe picks (a ``save`` stage's path);
* :func:`rebase_folders` places the folders a recipe's configs name (``checkpoint_dir``, ``teacher_cache``)
  inside the output folder.
"""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path, PurePosixPath
from typing import Any

from torchslim.core.errors import ConfigError, TorchSlimError

NAME_MAX = 200           # bytes of one name (file systems allow 255; temporary siblings add a prefix and suffix)
PATH_MAX = 1024          # bytes of a relative path a recipe names
# Config fields that name a folder a stage writes: inside a recipe they are relative to the output folder.
FOLDER_FIELDS = ("checkpoint_dir", "teacher_cache")


def shown_path(p: Any) -> str:
    """A path quoted for an error line: repr (NUL and control characters escaped), cut to 120 characters."""
    text = repr(str(p))
    return text if len(text) <= 120 else text[:117] + "..."


def refuse_link(path: str | os.PathLike, what: str = "--out") -> Path:
    """``path``, refused when it is a symbolic link (torchslim would write where the link points)."""
    path = Path(path)
    if path.is_symlink():
        raise TorchSlimError(f"{what} {path} is a symbolic link; name the folder it points to "
                             f"({os.path.realpath(path)}) or a new folder")
    return path


def check_relative(rel: Any, what: str) -> PurePosixPath:
    """``rel`` as a relative path of plain names: no absolute path, no ``.``/``..``, no NUL, bounded sizes."""
    if not isinstance(rel, str) or not rel.strip():
        raise ConfigError(f"{what} must be a non-empty relative folder name, got {shown_path(rel)}")
    if "\x00" in rel or any(ord(c) < 32 for c in rel) or "\\" in rel:
        raise ConfigError(f"{what} holds a NUL, control or backslash character: {shown_path(rel)}")
    if len(rel.encode("utf-8", "surrogatepass")) > PATH_MAX:
        raise ConfigError(f"{what} is longer than {PATH_MAX} bytes: {shown_path(rel)}")
    p = PurePosixPath(rel)
    if p.is_absolute() or rel.startswith("~"):
        raise ConfigError(f"{what} must be relative to the output folder, got {shown_path(rel)}")
    for part in p.parts:
        if part in (".", "..") or len(part.encode("utf-8", "surrogatepass")) > NAME_MAX:
            raise ConfigError(f"{what} must stay inside the output folder with names of at most {NAME_MAX} "
                              f"bytes, got {shown_path(rel)}")
    return p


def check_entry_name(name: Any, what: str, reserved: frozenset[str] | set[str] = frozenset()) -> str:
    """One folder name directly inside the output folder: not nested, not hidden, not a reserved name."""
    p = check_relative(name, what)
    if len(p.parts) != 1:
        raise ConfigError(f"{what} must be one folder name directly inside the output folder (not nested), "
                          f"got {shown_path(name)}")
    if name.startswith(".") or name in reserved:
        raise ConfigError(f"{what} {shown_path(name)} is reserved (a hidden name or a file torchslim writes "
                          f"into the output folder)")
    return name


def confined(root: str | os.PathLike, rel: str | os.PathLike, what: str = "path") -> Path:
    """``root / rel`` after checking that no existing part of it below ``root`` (nor ``root``) is a link and
    that it resolves inside ``root``."""
    root = Path(root)
    refuse_link(root, "the output folder")
    parts = check_relative(str(rel), what).parts
    cur = root
    for part in parts:
        cur = cur / part
        if cur.is_symlink():
            raise TorchSlimError(f"{what}: {cur} is a symbolic link; torchslim does not write through links "
                                 f"out of {root}")
    real_root = os.path.realpath(root)
    if os.path.commonpath([real_root, os.path.realpath(cur)]) != real_root:
        raise TorchSlimError(f"{what}: {cur} resolves outside {root}")
    return cur


def rebase_folders(config: Any, root: Path, where: str) -> Any:
    """``config`` with every folder field (:data:`FOLDER_FIELDS`, in nested configs too) placed inside
    ``root``; the recipe's value must be relative. Returns ``config`` itself when nothing names a folder."""
    if not dataclasses.is_dataclass(config) or isinstance(config, type):
        return config
    changes: dict[str, Any] = {}
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if f.name in FOLDER_FIELDS and value is not None:
            changes[f.name] = str(confined(root, value, f"{where}: {type(config).__name__}.{f.name}"))
        elif dataclasses.is_dataclass(value) and not isinstance(value, type):
            new = rebase_folders(value, root, where)
            if new is not value:
                changes[f.name] = new
    return dataclasses.replace(config, **changes) if changes else config


def folder_fields(config: Any) -> list[tuple[str, Any]]:
    """``(Config.field, value)`` of every folder ``config`` (and its nested configs) names in :data:`FOLDER_FIELDS`."""
    if not dataclasses.is_dataclass(config) or isinstance(config, type):
        return []
    found = []
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if f.name in FOLDER_FIELDS and value is not None:
            found.append((f"{type(config).__name__}.{f.name}", value))
        elif dataclasses.is_dataclass(value):
            found += folder_fields(value)
    return found
