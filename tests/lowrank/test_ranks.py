"""Rank rules: energy kept, and parameter / FLOP budgets across layers."""
import pytest
import torch

from torchslim.core.errors import ConfigError
from torchslim.lowrank import ranks as R

SHAPES = {"q": (64, 64), "k": (32, 64), "gate": (128, 64), "down": (64, 128), "big": (576, 1536)}


def _spectra(seed=0):
    """Spectra decaying at different speeds: some layers are nearly low-rank, some are not."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for i, (n, (o, k)) in enumerate(SHAPES.items()):
        decay = [0.3, 0.9, 0.05, 0.6, 0.1][i]
        out[n] = (torch.exp(-decay * torch.arange(min(o, k)).double() / 4) * (1 + 0.01 * torch.rand(min(o, k),
                                                                                                      generator=g)))
        out[n] = out[n].sort(descending=True).values
    return out


def _lost_energy(spectra, ranks):
    lost = 0.0
    for n, s in spectra.items():
        e = s.pow(2)
        r = ranks[n]
        lost += 0.0 if r is None else float(e[r:].sum() / e.sum())
    return lost


def test_max_useful_rank_is_the_last_rank_that_saves_weights():
    for o, i in [(64, 64), (32, 64), (576, 1536), (1, 10)]:
        r = R.max_useful_rank(o, i)
        assert r * (o + i) < o * i <= (r + 1) * (o + i)


def test_energy_rank_keeps_at_least_the_share_asked_and_no_more_than_needed():
    s = torch.tensor([4.0, 3.0, 2.0, 1.0]).double()          # energies 16, 9, 4, 1 of 30
    assert R.rank_for_energy(s, 16 / 30) == 1
    assert R.rank_for_energy(s, 0.54) == 2
    assert R.rank_for_energy(s, 25 / 30) == 2
    assert R.rank_for_energy(s, 1.0) == 4
    with pytest.raises(ConfigError, match="energy"):
        R.rank_for_energy(s, 0)


@pytest.mark.parametrize("ratio", [0.1, 0.2, 0.3, 0.5])
@pytest.mark.parametrize("multiple", [1, 8])
def test_uniform_ratio_removes_the_share_asked_within_the_rounding(ratio, multiple):
    ranks = R.uniform_ranks(SHAPES, ratio, multiple)
    got = R.removed_fraction(SHAPES, ranks)
    slack = multiple * max(o + i for o, i in SHAPES.values()) / sum(o * i for o, i in SHAPES.values())
    assert ratio <= got <= ratio + slack
    assert all(r is None or r % multiple == 0 for r in ranks.values())


@pytest.mark.parametrize("ratio", [0.2, 0.4])
def test_global_allocation_meets_the_budget_and_loses_less_energy_than_uniform(ratio):
    spectra = _spectra()
    glob = R.allocate_ranks(spectra, SHAPES, ratio, 1)
    uni = R.uniform_ranks(SHAPES, ratio, 1)
    got = R.removed_fraction(SHAPES, glob)
    assert ratio <= got <= ratio + 0.01
    assert _lost_energy(spectra, glob) < _lost_energy(spectra, uni)


def _twins(decay_a: float, decay_b: float) -> dict[str, torch.Tensor]:
    i = torch.arange(64).double()
    return {"a": torch.exp(-decay_a * i / 4), "b": torch.exp(-decay_b * i / 4)}


def test_global_allocation_cuts_the_faster_decaying_of_two_equal_layers_more():
    shapes = {"a": (64, 128), "b": (64, 128)}
    ranks = R.allocate_ranks(_twins(0.8, 0.2), shapes, 0.3, 1)
    assert ranks["a"] < (ranks["b"] or 10**9)            # the slow one may even stay dense
    assert R.removed_fraction(shapes, ranks) >= 0.3
    same = R.allocate_ranks(_twins(0.5, 0.5), shapes, 0.3, 1)
    assert abs(same["a"] - same["b"]) <= 1


def test_a_flop_budget_cuts_the_layer_that_sees_more_rows():
    shapes = {"a": (64, 128), "b": (64, 128)}
    rows = {"a": 100.0, "b": 1.0}                        # "b" runs on one row per forward (a pooler, a head)
    ranks = R.allocate_ranks(_twins(0.5, 0.5), shapes, 0.3, 1, rows)
    assert R.removed_fraction(shapes, ranks, rows) >= 0.3
    assert ranks["a"] < (ranks["b"] or 10**9)           # FLOPs come from "a"; weights alone would cut both alike


def test_a_rounded_rank_that_would_not_save_weights_keeps_the_layer_dense():
    assert R.round_rank(31, (64, 64), 8) == 24
    assert R.round_rank(31, (64, 64), 8, up=True) is None     # 32 * 128 = 64 * 64: not smaller
    assert R.round_rank(3, (64, 64), 8) == 8                  # at least one multiple


def test_ratios_outside_0_1_are_errors():
    for bad in (0, 1, -0.1):
        with pytest.raises(ConfigError, match="ratio"):
            R.uniform_ranks(SHAPES, bad)
