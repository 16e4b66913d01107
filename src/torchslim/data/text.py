"""Real English text that is available offline: Debian's ``/usr/share/common-licenses``.

The split is fixed and never changes between runs:

* EVALUATION text: ``GPL-3`` only (:data:`EVAL_FILES`).
* CALIBRATION / TRAINING text: ``Apache-2.0``, ``MPL-2.0``, ``Artistic``, ``BSD``, ``LGPL-2.1``,
  ``CC0-1.0`` (:data:`CALIBRATION_FILES`), concatenated in that order.

No file is in both splits. Texts are read as UTF-8 exactly as shipped (no normalisation), and
files are joined with one blank line. :func:`sentences` cuts a split into sentences for the
embedding task; calibration sentences that also occur in the evaluation text are dropped, so
the two sentence sets are disjoint as well.

Set ``TORCHSLIM_TEXT_DIR`` to read the same file names from another folder.

A second domain ships with every CPython: the language reference's topic pages (``pydoc_data.topics``,
technical prose about Python). Its topics are split by a fixed rule (every fourth in name order is held out):

* ``pydoc-eval``: the held-out topics (a second evaluation text of another domain);
* ``pydoc-calibration``: the other topics;
* ``broad-calibration``: the license calibration text followed by ``pydoc-calibration`` (a broader default for
  calibration and distillation; disjoint from both evaluation texts).

A third source, of neither evaluation text (:mod:`torchslim.data.docstrings`):

* ``docstrings``: the docstrings of the Python standard library, parsed from its sources, minus any that shares a
  12-word run with either evaluation text;
* ``mixed-calibration``: the license calibration text followed by :data:`DOCSTRING_SHARE` times as many characters
  of ``docstrings``, taken at an even stride through the library (a quarter legal prose, three quarters programming
  prose, about 280 KB; neither evaluation text's source).
"""
from __future__ import annotations

import functools
import os
import re
from pathlib import Path

from torchslim.core.errors import ConfigError, TorchSlimError
from torchslim.data import docstrings

DEFAULT_TEXT_DIR = Path("/usr/share/common-licenses")
EVAL_FILES: tuple[str, ...] = ("GPL-3",)
CALIBRATION_FILES: tuple[str, ...] = ("Apache-2.0", "MPL-2.0", "Artistic", "BSD", "LGPL-2.1", "CC0-1.0")
SPLITS: dict[str, tuple[str, ...]] = {"eval": EVAL_FILES, "calibration": CALIBRATION_FILES}
MIN_WORDS = 6
MAX_WORDS = 40
DOCSTRING_SHARE = 3  # characters of docstrings per character of license text in mixed-calibration

DATA_NOTE = (
    f"Debian common-licenses texts: evaluation = {', '.join(EVAL_FILES)}; "
    f"calibration/training = {', '.join(CALIBRATION_FILES)} (disjoint files)"
)

_SENTENCE_END = re.compile(r"(?<=[.!?])[\"')\]]?\s+(?=[\"'(\[]?[A-Z])")
_PARAGRAPH = re.compile(r"\n\s*\n")


def text_dir() -> Path:
    """The folder holding the license texts (``$TORCHSLIM_TEXT_DIR`` or :data:`DEFAULT_TEXT_DIR`)."""
    return Path(os.environ.get("TORCHSLIM_TEXT_DIR") or DEFAULT_TEXT_DIR)


def _files(split: str) -> tuple[str, ...]:
    if split not in SPLITS:
        raise ConfigError(f"unknown text split '{split}'; use one of: {', '.join((*SPLITS, *PYDOC_SPLITS))}")
    return SPLITS[split]


@functools.lru_cache(maxsize=8)
def _read(folder: Path, names: tuple[str, ...]) -> str:
    missing = [n for n in names if not (folder / n).is_file()]
    if missing:
        raise TorchSlimError(
            f"text data not found: {', '.join(str(folder / n) for n in missing)} "
            "(install Debian's base-files, or set TORCHSLIM_TEXT_DIR to a folder with these files)"
        )
    return "\n\n".join((folder / n).read_text(encoding="utf-8") for n in names)


PYDOC_SPLITS = ("pydoc-eval", "pydoc-calibration", "broad-calibration", "docstrings", "mixed-calibration")
ALL_SPLITS = (*SPLITS, *PYDOC_SPLITS)


@functools.lru_cache(maxsize=4)
def pydoc_text(held_out: bool) -> str:
    """Python's reference topics (``pydoc_data.topics``): the held-out quarter, or the rest."""
    try:
        from pydoc_data.topics import topics
    except ImportError as e:  # a Python built without its docs
        raise TorchSlimError(f"this Python has no pydoc_data.topics ({e}): the pydoc text splits are unavailable") \
            from None
    names = sorted(topics)
    return "\n\n".join(topics[n].strip() for i, n in enumerate(names) if (i % 4 == 0) == held_out)


def split_text(split: str) -> str:
    """The whole text of ``split`` (one of :data:`ALL_SPLITS`), files joined by a blank line."""
    if split == "pydoc-eval":
        return pydoc_text(True)
    if split == "pydoc-calibration":
        return pydoc_text(False)
    if split == "broad-calibration":
        return split_text("calibration") + "\n\n" + pydoc_text(False)
    if split == "docstrings":
        return "\n\n".join(_docstrings())
    if split == "mixed-calibration":
        licenses = split_text("calibration")
        return licenses + "\n\n" + "\n\n".join(docstrings.spread(_docstrings(), DOCSTRING_SHARE * len(licenses)))
    return _read(text_dir(), _files(split))


def _docstrings() -> tuple[str, ...]:
    try:
        held_out: tuple[str, ...] = (split_text("eval"), pydoc_text(True))
    except TorchSlimError:  # no license texts here: only the pydoc evaluation text is held out
        held_out = (pydoc_text(True),)
    return docstrings.stdlib_docstrings(held_out)


def eval_text() -> str:
    """The evaluation text (GPL-3)."""
    return split_text("eval")


def calibration_text() -> str:
    """The calibration / training text (every file of :data:`CALIBRATION_FILES`)."""
    return split_text("calibration")


def _clean_sentence(s: str) -> str | None:
    """``s`` if it looks like an English sentence of MIN_WORDS..MAX_WORDS words, else ``None``."""
    words = s.split()
    if not MIN_WORDS <= len(words) <= MAX_WORDS:
        return None
    if not re.match(r"[\"'(\[]?[A-Z]", s) or not re.search(r"[.!?][\"')\]]?$", s):
        return None
    if any(mark in s for mark in ("<", ">", "http", "@", "(C)")):
        return None
    letters = sum(ch.isalpha() for ch in s)
    if letters < 0.7 * len(s.replace(" ", "")):
        return None
    return s


def split_sentences(text: str) -> list[str]:
    """Cut ``text`` into sentences: paragraphs (blank lines) first, then ``.``/``!``/``?`` followed by a capital.

    Whitespace inside a sentence collapses to single spaces; only sentences of
    :data:`MIN_WORDS` to :data:`MAX_WORDS` words that start with a capital, end with
    punctuation, are mostly letters and hold no URL / e-mail / copyright mark are kept.
    Duplicates are dropped; order is kept.
    """
    out: dict[str, None] = {}
    for para in _PARAGRAPH.split(text):
        flat = " ".join(para.split())
        for piece in _SENTENCE_END.split(flat):
            s = _clean_sentence(piece.strip())
            if s is not None:
                out.setdefault(s, None)
    return list(out)


@functools.lru_cache(maxsize=8)
def _sentences_cached(folder: Path, split: str) -> tuple[str, ...]:
    found = split_sentences(split_text(split) if split in PYDOC_SPLITS else _read(folder, _files(split)))
    if "eval" not in split:
        held_out = set(split_sentences(_read(folder, EVAL_FILES)))
        if split != "calibration":
            held_out |= set(split_sentences(pydoc_text(True)))
        found = [s for s in found if s not in held_out]
    return tuple(found)


def sentences(split: str) -> list[str]:
    """Real English sentences of ``split`` (deterministic order; disjoint between splits)."""
    return list(_sentences_cached(text_dir(), split))


def eval_sentences() -> list[str]:
    """Sentences of the evaluation text (GPL-3)."""
    return sentences("eval")


def calibration_sentences() -> list[str]:
    """Sentences of the calibration text, minus any that also occur in the evaluation text."""
    return sentences("calibration")
