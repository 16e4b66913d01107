"""A poisoned teacher cache (garbage, wrong shapes, bad indices, links) is a warning and a recomputed entry."""
from __future__ import annotations

import copy
import logging

import pytest
import torch
from safetensors.torch import save_file

import torchslim
from torchslim import DistillConfig, TrainConfig
from torchslim.distill.cache import read_entry
from torchslim.zoo.tiny import tiny_llama


def _poison(path, how: str, outside) -> None:
    if how == "garbage":
        path.write_bytes(b"\x00" * 64)
    elif how == "shape":
        save_file({"values": torch.zeros(1, 2), "indices": torch.zeros(1, 2, dtype=torch.int32)}, str(path))
    elif how == "indices":
        from safetensors.torch import load_file

        got = load_file(str(path))
        save_file({"values": got["values"], "indices": got["indices"] + 10**6}, str(path))
    else:
        path.unlink()
        path.symlink_to(outside)


def test_a_poisoned_cache_is_recomputed_and_never_written_through(tmp_path, caplog):
    loaded = tiny_llama(0)
    teacher = copy.deepcopy(loaded.model).eval()
    torch.nn.init.normal_(loaded.model.lm_head.weight, std=0.02)
    cfg = DistillConfig(teacher_cache=str(tmp_path / "cache"), cache_topk=8,
                        train=TrainConfig(steps=4, batch_size=4, lr=3e-3, progress=False, seed=1, eval_at_end=False))
    s1, s2 = copy.deepcopy(loaded.model), copy.deepcopy(loaded.model)
    torchslim.distill_(s1, cfg, task=loaded.task, teacher=teacher)
    entries = sorted((tmp_path / "cache").iterdir())
    assert len(entries) == 4
    outside = tmp_path / "outside.safetensors"
    outside.write_bytes(b"a user's file")
    for path, how in zip(entries, ("garbage", "shape", "indices", "link")):
        _poison(path, how, outside)
    with caplog.at_level(logging.WARNING, logger="torchslim"):
        torchslim.distill_(s2, cfg, task=loaded.task, teacher=teacher)       # every entry a miss: same as s1
    damaged = [r.getMessage() for r in caplog.records if "teacher cache entry" in r.getMessage()]
    assert len(damaged) == 4 and all("recomputing it" in m for m in damaged)
    assert outside.read_bytes() == b"a user's file" and not any(p.is_symlink() for p in entries)
    for a, b in zip(s1.parameters(), s2.parameters()):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("values,indices,size", [
    (torch.full((2, 3), float("nan")), torch.zeros(2, 3, dtype=torch.int32), None),
    (torch.zeros(2, 3, dtype=torch.float16), torch.zeros(2, 3, dtype=torch.int32), None),
    (torch.zeros(2, 3), torch.full((2, 3), -1, dtype=torch.int32), None),
    (torch.zeros(2, 3), torch.zeros(2, 3, dtype=torch.int32), 10**6),
    (torch.ones(2, 3), torch.zeros(2, 3, dtype=torch.int32), None),          # logits, not log-probabilities
])
def test_read_entry_checks_every_field(tmp_path, values, indices, size):
    path = tmp_path / "e.safetensors"
    save_file({"values": values, "indices": indices}, str(path))
    if size is not None:
        with open(path, "ab") as f:
            f.write(b"\x00" * size)
    assert read_entry(path, (2, 3), 10) is None
    save_file({"values": torch.zeros(2, 3), "indices": torch.zeros(2, 3, dtype=torch.int32)}, str(path))
    assert read_entry(path, (2, 3), 10) is not None and read_entry(tmp_path / "missing", (2, 3), 10) is None
