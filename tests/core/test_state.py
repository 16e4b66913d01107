import copy

import torch
from torch import nn

from torchslim.core.state import HistoryEntry, history_lines, move_state, snapshot, state_of, touched


def test_state_is_created_once_survives_deepcopy_and_stays_out_of_state_dict():
    m = nn.Linear(2, 2)
    s = state_of(m)
    assert state_of(m) is s and s.history == [] and s.source is None
    s.source = {"kind": "test"}
    s.add_entry("quantization", "X", {"_type": "X"})
    assert set(m.state_dict()) == {"weight", "bias"}
    clone = copy.deepcopy(m)
    assert state_of(clone).source == {"kind": "test"} and state_of(clone) is not s


def test_touched_counts_replaced_and_added_layers_not_containers():
    m = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Sequential(nn.Linear(4, 4)))
    before, params = snapshot(m), sum(p.numel() for p in m.parameters())
    m[0] = nn.Linear(4, 3)
    m[2][0] = nn.Linear(3, 4)
    what, changed = touched(before, m, params)
    assert sorted(changed) == ["0", "2.0"] and what["by_type"] == {"Linear": 2} and what["layers"] == 2
    assert what["params_before"] == 40 and what["params_after"] == 15 + 16


def test_the_parts_of_a_new_replacement_module_count_as_that_one_layer():
    class Pair(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.down, self.up = nn.Linear(4, 2, bias=False), nn.Linear(2, 4)

        def torchslim_layer_info(self) -> dict:
            return {}

    m = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4))
    before, params = snapshot(m), sum(p.numel() for p in m.parameters())
    m[0] = Pair()
    m[1].add_module("extra", nn.Linear(4, 4))          # added inside a layer that is not new: still counted
    what, changed = touched(before, m, params)
    assert sorted(changed) == ["0", "1.extra"] and what["by_type"] == {"Pair": 1, "Linear": 1}


def test_rename_and_forget_move_every_record():
    m = nn.Linear(1, 1)
    s = state_of(m)
    s.layer_stage = {"blocks.2.q": 0, "blocks.3.q": 1}
    s.resized["modules"] = {"blocks.3.q": {"kind": "Linear"}}
    s.forget("blocks.2")
    s.rename("blocks.3", "blocks.2")
    assert s.layer_stage == {"blocks.2.q": 1} and list(s.resized["modules"]) == ["blocks.2.q"]


def test_history_entries_round_trip_and_print():
    e = HistoryEntry(0, "pruning", "UnstructuredConfig", {"_type": "UnstructuredConfig"},
                     touched={"layers": 3, "by_type": {"SparseLinear": 3}}, seconds=1.25, metrics={"ppl": 22.5})
    again = HistoryEntry.from_dict(e.to_dict())
    assert again == e
    (line,) = history_lines([e.to_dict()])
    assert "3 SparseLinear" in line and "ppl=22.5" in line and "pruning" in line


def test_move_state_follows_a_new_root_module():
    a, b = nn.Linear(1, 1), nn.Linear(1, 1)
    state_of(a).source = {"kind": "x"}
    move_state(a, b)
    assert state_of(b).source == {"kind": "x"}
    assert torch.equal(a.weight, a.weight)
