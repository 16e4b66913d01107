"""A third offline text: the docstrings of the Python standard library, read from its source files.

Every CPython ships its library as source, and its docstrings are English prose about programming (with code
examples) written by many hands: a training and calibration text broader than the license texts and of another
source than both evaluation texts. The files are parsed with :mod:`ast`, never imported (importing a stdlib module
can have side effects), in sorted path order, so the text is fixed for a given Python installation.

Left out: tests, IDLE, lib2to3, turtledemo, ensurepip, encodings, ``pydoc_data`` (the pydoc evaluation text's
source) and installed packages; docstrings under :data:`MIN_WORDS` words; repeats; and any docstring sharing a run
of :data:`SHINGLE` words with either evaluation text (GPL-3 or the held-out Python reference topics), so the two
stay held out word for word.
"""
from __future__ import annotations

import ast
import functools
import math
import sysconfig
from collections.abc import Iterable
from pathlib import Path

from torchslim.core.errors import TorchSlimError

SKIP_DIRS = frozenset({"test", "tests", "idlelib", "lib2to3", "turtledemo", "ensurepip", "encodings", "pydoc_data",
                       "site-packages", "dist-packages", "__pycache__"})
MIN_WORDS = 8
SHINGLE = 12
_DOC_NODES = (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)


def stdlib_dir() -> Path:
    """Where this Python's standard library sources live."""
    return Path(sysconfig.get_paths()["stdlib"])


def _sources(root: Path) -> list[Path]:
    return [p for p in sorted(root.rglob("*.py")) if not SKIP_DIRS.intersection(p.relative_to(root).parts[:-1])]


def _docstrings_of(path: Path) -> Iterable[str]:
    try:
        tree = ast.parse(path.read_bytes())
    except (SyntaxError, ValueError, OSError):  # a file of another Python version, or unreadable: skipped
        return
    for node in ast.walk(tree):
        if isinstance(node, _DOC_NODES):
            doc = ast.get_docstring(node, clean=True)
            if doc and len(doc.split()) >= MIN_WORDS:
                yield doc


def shingles(text: str, n: int = SHINGLE) -> set[str]:
    """Every run of ``n`` consecutive words of ``text`` (whitespace-normalised)."""
    words = text.split()
    return {" ".join(words[i:i + n]) for i in range(len(words) - n + 1)}


@functools.lru_cache(maxsize=2)
def stdlib_docstrings(held_out: tuple[str, ...] = ()) -> tuple[str, ...]:
    """The standard library's docstrings in path order, minus repeats and any that shares a :data:`SHINGLE`-word run
    with one of the ``held_out`` texts."""
    root = stdlib_dir()
    if not root.is_dir():
        raise TorchSlimError(f"this Python's standard library sources are not at {root}: the docstrings text is "
                             "unavailable")
    banned = set().union(*(shingles(t) for t in held_out)) if held_out else set()
    flat = "\n".join(" ".join(t.split()) for t in held_out)   # for docstrings shorter than a shingle

    def held(doc: str) -> bool:
        runs = shingles(doc)
        return bool(runs & banned) if runs else " ".join(doc.split()) in flat

    out: dict[str, None] = {}
    for path in _sources(root):
        for doc in _docstrings_of(path):
            if doc not in out and not (held_out and held(doc)):
                out[doc] = None
    if not out:
        raise TorchSlimError(f"no docstrings found under {root}")
    return tuple(out)


def spread(docs: tuple[str, ...], max_chars: int) -> list[str]:
    """About ``max_chars`` of ``docs``, taken at an even stride so every part of the library is represented."""
    total = sum(len(d) + 2 for d in docs)
    if total <= max_chars:
        return list(docs)
    stride = total / max_chars
    return [d for i, d in enumerate(docs) if math.floor(i / stride) > math.floor((i - 1) / stride)]
