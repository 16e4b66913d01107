"""Two real labelled text tasks built from text available offline: *which source does this passage come from*.

* ``licenses``: passages of Debian's ``/usr/share/common-licenses`` labelled with their license
  (:data:`LICENSE_CLASSES`: seven licenses of different wording; GPL-2, LGPL-3 and MPL-1.1 are left out because
  they copy whole paragraphs of GPL-3 / LGPL-2.1 / MPL-2.0, so their passages have no single right label).
* ``pydoc``: passages of Python's language reference topics (``pydoc_data.topics``) labelled with their topic
  (:data:`PYDOC_CLASSES`: the eight largest topics of CPython 3.x's reference).

A passage is :data:`PASSAGE_WORDS` consecutive words of one source (whitespace collapsed; the last, shorter piece
of each source is dropped). Passages are numbered per source in reading order and split by a fixed rule that never
changes between runs: number ``i % 10`` in ``{0, 5}`` -> ``test``, ``{3}`` -> ``val``, the rest -> ``train``
(so each split samples the whole of every source). A passage whose text also occurs in another split is dropped
from the later split (test, then val, keep priority), so the splits are disjoint. No downloads.
"""
from __future__ import annotations

import functools

from torchslim.core.errors import ConfigError, TorchSlimError
from torchslim.data.text import _read, text_dir

LICENSE_CLASSES: tuple[str, ...] = ("Apache-2.0", "Artistic", "CC0-1.0", "GFDL-1.3", "GPL-3", "LGPL-2.1", "MPL-2.0")
PYDOC_CLASSES: tuple[str, ...] = ("specialnames", "compound", "types", "debugger", "string-methods", "typesseq",
                                  "formatstrings", "attribute-access")
TASKS = ("licenses", "pydoc")
SPLITS = ("train", "val", "test")
PASSAGE_WORDS = 16
_SPLIT_OF = {0: "test", 5: "test", 3: "val"}


def _sources(task: str) -> list[tuple[str, str]]:
    """``(label name, text)`` of every source of ``task``."""
    if task == "licenses":
        return [(name, _read(text_dir(), (name,))) for name in LICENSE_CLASSES]
    if task == "pydoc":
        try:
            from pydoc_data.topics import topics
        except ImportError as e:
            raise TorchSlimError(f"this Python has no pydoc_data.topics ({e}): the 'pydoc' task is unavailable") from None
        missing = [n for n in PYDOC_CLASSES if n not in topics]
        if missing:
            raise TorchSlimError(f"this Python's pydoc_data.topics lacks {', '.join(missing)}")
        return [(name, topics[name]) for name in PYDOC_CLASSES]
    raise ConfigError(f"unknown labelled text task {task!r}; use one of: {', '.join(TASKS)}")


def passages(text: str, words: int = PASSAGE_WORDS) -> list[str]:
    """``text`` cut into pieces of ``words`` consecutive words (the shorter tail is dropped)."""
    w = text.split()
    return [" ".join(w[i:i + words]) for i in range(0, len(w) - words + 1, words)]


@functools.lru_cache(maxsize=4)
def _splits(task: str) -> dict[str, tuple[tuple[str, ...], tuple[int, ...]]]:
    out: dict[str, tuple[list[str], list[int]]] = {s: ([], []) for s in SPLITS}
    seen: set[str] = set()
    for order in ("test", "val", "train"):
        for label, (_, text) in enumerate(_sources(task)):
            for i, p in enumerate(passages(text)):
                if _SPLIT_OF.get(i % 10, "train") == order and p not in seen:
                    seen.add(p)
                    out[order][0].append(p)
                    out[order][1].append(label)
    return {s: (tuple(t), tuple(y)) for s, (t, y) in out.items()}


def labelled_split(task: str, split: str) -> tuple[list[str], list[int]]:
    """``(texts, labels)`` of ``split`` (``train``, ``val`` or ``test``) of ``task`` (``licenses`` or ``pydoc``)."""
    if split not in SPLITS:
        raise ConfigError(f"unknown split {split!r}; use one of: {', '.join(SPLITS)}")
    texts, labels = _splits(task)[split]
    return list(texts), list(labels)


def class_names(task: str) -> tuple[str, ...]:
    if task not in TASKS:
        raise ConfigError(f"unknown labelled text task {task!r}; use one of: {', '.join(TASKS)}")
    return LICENSE_CLASSES if task == "licenses" else PYDOC_CLASSES
