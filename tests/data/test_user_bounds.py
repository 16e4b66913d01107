"""User data is read in bounded chunks, and says so when it stops."""
from __future__ import annotations

import json
import logging
import struct
import zlib

import pytest
import torch

from torchslim.core.errors import ConfigError
from torchslim.data import user
from torchslim.data.user import read_user_data


def test_a_long_text_is_cut_at_the_bound_with_a_warning(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(user, "MAX_TEXT_BYTES", 1000)
    (tmp_path / "a.txt").write_text("é" * 1000)              # 2000 bytes; the cut falls inside no character
    with caplog.at_level(logging.WARNING, logger="torchslim.data"):
        got = read_user_data(tmp_path / "a.txt", limit=999)
    assert got.texts == ["é" * 499]
    assert "is larger than 999 bytes: only its first 999 bytes are used (the bound on user data" in caplog.text
    rows = [json.dumps({"text": f"row {i}"}) for i in range(200)]
    (tmp_path / "d.jsonl").write_text("\n".join(rows))
    assert read_user_data(tmp_path / "d.jsonl", limit=100).texts == [f"row {i}" for i in range(5)]   # 18 bytes a
    # line: the sixth, cut at byte 100, is dropped rather than read as a damaged line


def test_jsonl_lines_and_folder_texts_are_bounded(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(user, "MAX_EXAMPLES", 3)
    (tmp_path / "d.jsonl").write_text("\n".join(json.dumps({"text": str(i)}) for i in range(10)))
    with caplog.at_level(logging.WARNING, logger="torchslim.data"):
        assert read_user_data(tmp_path / "d.jsonl").texts == ["0", "1", "2"]
    assert "only its first 3 examples are used" in caplog.text
    monkeypatch.setattr(user, "MAX_TEXT_BYTES", 10)
    (tmp_path / "f").mkdir()
    for name in ("a", "b", "c"):
        (tmp_path / "f" / f"{name}.txt").write_text(name * 6)
    assert read_user_data(tmp_path / "f").texts == ["aaaaaa", "bbbb"]


def test_special_files_are_refused(tmp_path):
    import os

    os.mkfifo(tmp_path / "fifo.txt")
    with pytest.raises(ConfigError, match="not a regular file: .*fifo.txt"):
        read_user_data(tmp_path / "fifo.txt")
    (tmp_path / "loop.txt").symlink_to(tmp_path / "loop.txt")
    with pytest.raises(ConfigError, match="not a regular file: .*loop.txt"):
        read_user_data(tmp_path / "loop.txt")


def _png_header(w: int, h: int) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\x00")) + chunk(b"IEND", b""))


@pytest.mark.parametrize("w, h, message", [(9000, 9000, "9000 x 9000 pixels, more than the bound of 67,108,864"),
                                           (40000, 40000, "not a readable image")])
def test_huge_images_are_refused_from_their_header(tmp_path, w, h, message):
    from torchslim.tasks.user_data import _image

    (tmp_path / "big.png").write_bytes(_png_header(w, h))
    with pytest.raises(ConfigError, match=message):
        _image(tmp_path / "big.png")


def test_images_are_capped(tmp_path, monkeypatch):
    monkeypatch.setattr(user, "MAX_IMAGES", 3)
    for cls in ("a", "b"):
        (tmp_path / cls).mkdir()
        for i in range(3):
            (tmp_path / cls / f"{i}.png").write_bytes(b"")
    got = read_user_data(tmp_path)
    assert len(got.paths) == 3 and got.labels == ["a", "a", "a"]


def test_long_text_is_tokenized_in_pieces_to_the_same_ids(monkeypatch):
    from torchslim.tasks import causal_lm
    from torchslim.zoo.tiny import EOS, byte_tokenizer

    task = causal_lm.CausalLMTask(byte_tokenizer((EOS,)), seq_len=8)
    text = "line one\nline two is longer\n" * 40
    whole = task._encode(text)
    monkeypatch.setattr(causal_lm, "ENCODE_CHUNK", 50)
    assert torch.equal(task._encode(text), whole) and whole.numel() == len(text.encode())
