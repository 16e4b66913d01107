"""The offline text split: fixed files, disjoint splits, real sentences, clean errors."""
from __future__ import annotations

from pathlib import Path

import pytest

from torchslim.core.errors import ConfigError, TorchSlimError
from torchslim.data import text

LICENSES = Path("/usr/share/common-licenses")


def test_split_is_fixed_and_disjoint():
    assert text.EVAL_FILES == ("GPL-3",)
    assert text.CALIBRATION_FILES == ("Apache-2.0", "MPL-2.0", "Artistic", "BSD", "LGPL-2.1", "CC0-1.0")
    assert not set(text.EVAL_FILES) & set(text.CALIBRATION_FILES)
    for name in text.EVAL_FILES + text.CALIBRATION_FILES:
        assert name in text.DATA_NOTE


def test_texts_are_the_files_verbatim():
    assert text.eval_text() == (LICENSES / "GPL-3").read_text()
    cal = text.calibration_text()
    parts = [(LICENSES / n).read_text() for n in text.CALIBRATION_FILES]
    assert cal == "\n\n".join(parts)
    assert len(text.eval_text()) == 35149


def test_sentences_are_real_deterministic_and_disjoint():
    ev, cal = text.eval_sentences(), text.calibration_sentences()
    assert ev == text.eval_sentences() and cal == text.calibration_sentences()
    assert len(ev) >= 100 and len(cal) >= 150
    assert ev[0] == "The GNU General Public License is a free, copyleft license for software and other kinds of works."
    assert not set(ev) & set(cal)
    flat_eval = " ".join(text.eval_text().split())
    flat_cal = " ".join(text.calibration_text().split())
    for s in ev + cal:
        assert text.MIN_WORDS <= len(s.split()) <= text.MAX_WORDS
        assert s[0].isupper() or s[0] in "\"'(["
    assert all(s in flat_eval for s in ev)
    assert all(s in flat_cal for s in cal)
    assert len(set(ev)) == len(ev)


def test_split_sentences_rules():
    got = text.split_sentences(
        "Title\n\nThis is the first real sentence here. this stays in it, e.g. here too. Short one.\n"
        "The third sentence\nspans two lines! See <https://x.org> for more details on it.\n\n"
        "This is the first real sentence here. this stays in it, e.g. here too."
    )
    assert got == [
        "This is the first real sentence here. this stays in it, e.g. here too.",
        "The third sentence spans two lines!",
    ]


def test_missing_folder_is_a_clean_error(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCHSLIM_TEXT_DIR", str(tmp_path / "nowhere"))
    with pytest.raises(TorchSlimError, match="text data not found: .*GPL-3"):
        text.eval_text()
    with pytest.raises(TorchSlimError, match="TORCHSLIM_TEXT_DIR"):
        text.calibration_sentences()


def test_other_folder_and_unknown_split(tmp_path, monkeypatch):
    (tmp_path / "GPL-3").write_text("A sentence with exactly seven words here. Tiny.")
    monkeypatch.setenv("TORCHSLIM_TEXT_DIR", str(tmp_path))
    assert text.eval_sentences() == ["A sentence with exactly seven words here."]
    with pytest.raises(ConfigError, match="unknown text split 'test'"):
        text.split_text("test")


def test_pydoc_splits_are_a_second_domain_held_out_by_a_fixed_rule():
    from pydoc_data.topics import topics

    from torchslim.data import text as t

    held, rest = t.split_text("pydoc-eval"), t.split_text("pydoc-calibration")
    names = sorted(topics)
    assert topics[names[0]].strip() in held and topics[names[1]].strip() in rest
    assert topics[names[0]].strip() not in rest and topics[names[4]].strip() in held
    broad = t.split_text("broad-calibration")
    assert broad.startswith(t.split_text("calibration")) and broad.endswith(rest)
    ev = set(t.sentences("eval")) | set(t.sentences("pydoc-eval"))
    train = t.sentences("broad-calibration")
    assert len(train) > 5 * len(t.sentences("calibration")) and not ev & set(train)
