"""Dynamic sparse training math: ERK/uniform densities, exact kept counts, cosine drop fraction, drop-and-grow."""
from __future__ import annotations

import math

import pytest
import torch

from torchslim.core.errors import ConfigError
from torchslim.pruning import dynamic_sparse_math as D

# a digits-cnn-like mix: a tiny first conv, 3x3 convs, a 1x1 shortcut, a small head, a wide linear
SHAPES = [(32, 1, 3, 3), (32, 32, 3, 3), (64, 32, 3, 3), (64, 64, 3, 3), (64, 32, 1, 1), (10, 64), (256, 512)]
NUMELS = [math.prod(s) for s in SHAPES]


@pytest.mark.parametrize("density", [0.05, 0.1, 0.25, 0.5])
def test_erk_hits_the_global_budget_and_clamps_dense_layers(density: float) -> None:
    dens = D.erk_densities(SHAPES, density)
    budget = density * sum(NUMELS)
    assert sum(d * n for d, n in zip(dens, NUMELS)) == pytest.approx(budget, rel=1e-12)
    assert all(0 < d <= 1 for d in dens)
    raw = [D.erk_scores(s) for s in SHAPES]
    sparse = [i for i, d in enumerate(dens) if d < 1]
    dense = [i for i, d in enumerate(dens) if d == 1]
    # among sparse layers density is proportional to the ERK score; every clamped layer scores above every sparse one
    ratios = [dens[i] / raw[i] for i in sparse]
    assert max(ratios) == pytest.approx(min(ratios), rel=1e-12)
    assert all(raw[i] > raw[j] for i in dense for j in sparse)
    counts = D.active_counts(NUMELS, dens)
    assert sum(counts) == round(budget)                                  # exact, not within rounding
    assert all(counts[i] == NUMELS[i] for i in dense)


def test_erk_clamps_the_first_conv_at_ninety_percent() -> None:
    dens = D.erk_densities(SHAPES, 0.1)
    assert dens[0] == 1.0                       # 288 weights, ERK score 39/288: would exceed 1
    assert dens[3] < dens[2] < dens[1]      # bigger 3x3 convs are sparser
    # a hand-solved case without clamping: two linear layers, density ∝ (in + out) / (in * out)
    two = D.erk_densities([(100, 100), (100, 400)], 0.2)
    eps = 0.2 * 50_000 / (200 / 10_000 * 10_000 + 500 / 40_000 * 40_000)
    assert two == pytest.approx([eps * 200 / 10_000, eps * 500 / 40_000])


def test_erk_power_zero_is_uniform_and_uniform_is_flat() -> None:
    assert D.erk_densities(SHAPES, 0.3, power=0.0) == pytest.approx([0.3] * len(SHAPES))
    assert D.uniform_densities(SHAPES, 0.3) == [0.3] * len(SHAPES)
    assert D.erk_densities([(4, 4)], 1.0) == [1.0]
    with pytest.raises(ConfigError, match="density"):
        D.erk_densities(SHAPES, 0.0)


def test_active_counts_distribute_an_exact_total() -> None:
    counts = D.active_counts([10, 10, 10], [0.25, 0.25, 0.25])        # 7.5 in all: rounds to 8
    assert sum(counts) == 8 and all(2 <= c <= 3 for c in counts)
    assert D.active_counts([10, 10], [1.0, 0.01], total=12) == [10, 2]  # the dense layer stays full
    assert D.active_counts([5, 100], [0.01, 0.1]) == [1, 9]    # total 10 still: the 1-weight floor comes from the other
    with pytest.raises(ConfigError, match="cannot keep"):
        D.active_counts([4, 4], [0.5, 0.5], total=9)
    with pytest.raises(ConfigError, match="cannot keep"):
        D.active_counts([5, 100], [0.001, 0.001])                        # 0 weights for 2 layers


def test_drop_fraction_is_cosine_decayed_and_stops_at_the_end() -> None:
    assert D.drop_fraction(0, 0.3, 100) == pytest.approx(0.3)
    assert D.drop_fraction(50, 0.3, 100) == pytest.approx(0.15)
    assert D.drop_fraction(25, 0.3, 100) == pytest.approx(0.15 * (1 + math.cos(math.pi / 4)))
    assert D.drop_fraction(100, 0.3, 100) == 0.0 and D.drop_fraction(500, 0.3, 100) == 0.0
    vals = [D.drop_fraction(t, 0.3, 100) for t in range(101)]
    assert all(b <= a for a, b in zip(vals, vals[1:]))
    assert [s for s in range(1, 400) if D.is_update_step(s, 100, 300)] == [100, 200]   # not at the end step


def test_random_mask_is_exact_and_seeded() -> None:
    a = D.random_mask((30, 7), 41, torch.Generator().manual_seed(3))
    b = D.random_mask((30, 7), 41, torch.Generator().manual_seed(3))
    c = D.random_mask((30, 7), 41, torch.Generator().manual_seed(4))
    assert int(a.sum()) == 41 and torch.equal(a, b) and not torch.equal(a, c)


def test_drop_and_grow_drops_smallest_kept_and_grows_highest_scores_among_the_rest() -> None:
    g = torch.Generator().manual_seed(0)
    w = torch.randn(20, 30, generator=g)
    mask = D.random_mask(w.shape, 120, g)
    w = w * mask
    scores = torch.rand(w.shape, generator=g)
    n = 25
    new = D.drop_and_grow(mask, w, n, scores)
    assert int(new.sum()) == int(mask.sum()) == 120                    # constant budget
    kept_mags = w.abs()[mask].sort().values
    remaining = mask & (w.abs() > kept_mags[n - 1])                    # the n smallest kept weights are dropped
    assert int(remaining.sum()) == 120 - n and torch.all(new[remaining])
    grown = new & ~remaining
    candidates = scores.masked_fill(remaining, -1.0)
    assert torch.equal(grown, candidates >= candidates.flatten().topk(n).values.min())   # highest |grad| grown
    assert torch.equal(D.drop_and_grow(mask, w, 0, scores), mask)
    with pytest.raises(ConfigError, match="one shape"):
        D.drop_and_grow(mask, w, n, scores[:2])


def test_swapped_count_is_rounded_and_bounded() -> None:
    assert D.n_swapped(100, 0.3) == 30 and D.n_swapped(7, 0.0) == 0 and D.n_swapped(3, 2.0) == 3
