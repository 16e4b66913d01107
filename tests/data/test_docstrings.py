"""The standard-library docstrings text: parsed, never imported; held out from both evaluation texts."""
from __future__ import annotations

import pytest

from torchslim.core.errors import TorchSlimError
from torchslim.data import docstrings as ds
from torchslim.data import text as t


def test_sources_are_parsed_not_imported_and_skip_tests(tmp_path, monkeypatch):
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "mod.py").write_text(
        '"""A module that would stop the process if it were ever imported by the reader."""\n'
        "raise SystemExit(3)\n"
        "def f():\n    '''Return the answer that this small function computes for its caller.'''\n")
    (tmp_path / "test").mkdir()
    (tmp_path / "test" / "t.py").write_text('"""A test module docstring that must never be read into the text."""\n')
    (tmp_path / "broken.py").write_text('"""Not Python at all, a syntax error follows right here."""\ndef (:\n')
    (tmp_path / "short.py").write_text('"""Too short."""\n')
    monkeypatch.setattr(ds, "stdlib_dir", lambda: tmp_path)
    ds.stdlib_docstrings.cache_clear()
    try:
        docs = ds.stdlib_docstrings()
        assert docs == ("A module that would stop the process if it were ever imported by the reader.",
                        "Return the answer that this small function computes for its caller.")
        held = ds.stdlib_docstrings(("so that it computes for its caller. Return the answer that this small "
                                     "function computes for its caller.",))
        assert held == docs[:1]
    finally:
        ds.stdlib_docstrings.cache_clear()


def test_no_docstrings_is_an_error(tmp_path, monkeypatch):
    monkeypatch.setattr(ds, "stdlib_dir", lambda: tmp_path)
    ds.stdlib_docstrings.cache_clear()
    try:
        with pytest.raises(TorchSlimError, match="no docstrings"):
            ds.stdlib_docstrings()
    finally:
        ds.stdlib_docstrings.cache_clear()


def test_spread_takes_an_even_stride_to_about_the_budget():
    docs = tuple(f"doc {i:03d} " + "x" * 98 for i in range(100))   # 106 characters each, 108 with the separator
    assert ds.spread(docs, 10**6) == list(docs)
    kept = ds.spread(docs, 108 * 25)
    assert 24 <= len(kept) <= 26 and kept[0] == docs[0]
    idx = [docs.index(d) for d in kept]
    assert max(b - a for a, b in zip(idx, idx[1:])) <= 5          # spread through, not the first quarter


def test_real_docstrings_split_is_held_out_from_both_evaluation_texts():
    text = t.split_text("docstrings")
    assert len(text) > 200_000
    mine = ds.shingles(text)
    assert not mine & ds.shingles(t.split_text("eval"))
    assert not mine & ds.shingles(t.split_text("pydoc-eval"))
    mixed = t.split_text("mixed-calibration")
    licenses = t.split_text("calibration")
    assert mixed.startswith(licenses)
    assert 3 * len(licenses) <= len(mixed) <= 5 * len(licenses)
    assert mixed[len(licenses):].strip()[:200] in text
    ev = set(t.sentences("eval")) | set(t.sentences("pydoc-eval"))
    assert not ev & set(t.sentences("mixed-calibration"))
