"""Cached block inputs spill to disk beyond a budget and read back exactly."""
from __future__ import annotations

import torch

from torchslim.calibration.onload import BlockInputs, HiddenStore


def test_hidden_store_spills_beyond_its_budget_and_reads_back_exactly(tmp_path):
    xs = [torch.randn(2, 5, 8, generator=torch.Generator().manual_seed(i)) for i in range(4)]
    store = HiddenStore(budget=2 * xs[0].numel() * 4, folder=tmp_path)
    for x in xs:
        store.append(x)
    assert store.resident == 2 * xs[0].numel() * 4 and store.spilled == 2 * xs[0].numel() * 4
    assert len(list(tmp_path.iterdir())) == 2
    assert all(torch.equal(a, b) for a, b in zip(store, xs))
    store.release()
    assert not list(tmp_path.iterdir())


def test_block_inputs_stand_for_the_caught_list(tmp_path):
    mask = torch.ones(2, 5)
    caught = [((torch.randn(2, 5, 8), mask), {"position_ids": torch.arange(5)}) for _ in range(3)]
    cache = BlockInputs.from_caught(caught, HiddenStore(budget=0, folder=tmp_path))
    assert len(cache) == 3
    for (args, kwargs), (ref_args, ref_kwargs) in zip(cache, caught):
        assert torch.equal(args[0], ref_args[0]) and args[1] is mask and kwargs is ref_kwargs
    nxt = HiddenStore()
    nxt.append(torch.zeros(2, 5, 8))
    assert cache.with_hidden(nxt).hidden is nxt and not list(tmp_path.iterdir())    # the old files are gone
