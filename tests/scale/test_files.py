"""Merged safetensors files are the bytes safetensors writes; tensors read one by one are exact."""
from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from torchslim.core.errors import ConfigError
from torchslim.core.io import sha256
from torchslim.scale.files import TensorFiles, merge, parse_bytes


def test_merge_is_byte_identical_to_save_file_and_reads_back_exactly(tmp_path):
    g = torch.Generator().manual_seed(0)
    t = {"b": torch.ones(3, dtype=torch.int8), "a": torch.randn(2, 5, generator=g), "c": torch.ones(7, dtype=torch.bfloat16),
         "d": torch.arange(3), "e": torch.zeros(0), "z": torch.randn(5, 3, generator=g).half(), "m": torch.tensor(True)}
    save_file(t, str(tmp_path / "all"), metadata={"format": "torchslim"})
    save_file({k: t[k] for k in "abm"}, str(tmp_path / "p1"))
    save_file({k: t[k] for k in "cdez"}, str(tmp_path / "p2"))
    merge([tmp_path / "p1", tmp_path / "p2"], tmp_path / "merged", {"format": "torchslim"}, chunk=3)
    assert sha256(tmp_path / "merged") == sha256(tmp_path / "all")
    files = TensorFiles([tmp_path / "merged"])
    assert all(torch.equal(files.read(k), v) and files.read(k).dtype == v.dtype for k, v in t.items())


def test_parse_bytes():
    assert parse_bytes("700MB") == 700_000_000 and parse_bytes("1.5GiB") == 3 << 29 and parse_bytes(4096) == 4096
    with pytest.raises(ConfigError, match="memory size"):
        parse_bytes("lots")
    with pytest.raises(ConfigError, match="positive"):
        parse_bytes("0MB")
