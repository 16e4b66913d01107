"""Rank selection as pure functions: per layer by energy kept, or across layers to meet a parameter or FLOP budget.

A layer ``[out, in]`` at rank ``r`` costs ``r (out + in)`` weights; it is only worth factorizing while that is below
``out * in`` (:func:`max_useful_rank`). A rank of ``None`` means "keep the layer dense". Costs can be weighted per
layer (``weights``): by 1 the budget counts parameters; by the rows a layer sees per forward it counts FLOPs (a
matmul of ``rows x in`` by ``in x out`` is ``2 rows in out``), which differ between layers when some see fewer
rows (a pooler, a decoder head fed one position).
"""
from __future__ import annotations

import math

import torch

from torchslim.core.errors import ConfigError

Shape = tuple[int, int]          # (out, in)
Ranks = dict[str, int | None]    # None: kept dense


def max_useful_rank(out_f: int, in_f: int) -> int:
    """The largest rank whose two factors hold fewer weights than the dense matrix (0 when none does)."""
    return (out_f * in_f - 1) // (out_f + in_f)


def layer_cost(shape: Shape, rank: int | None) -> int:
    """Weights of a layer at ``rank`` (``None``: dense)."""
    out_f, in_f = shape
    return out_f * in_f if rank is None else rank * (out_f + in_f)


def rank_for_energy(s: torch.Tensor, energy: float) -> int:
    """The smallest rank whose singular values keep ``energy`` of the total ``sum(s^2)`` (0 < energy <= 1)."""
    if not 0 < energy <= 1:
        raise ConfigError(f"energy must be in (0, 1], got {energy}")
    e = s.double().pow(2)
    total = float(e.sum())
    if total <= 0:
        return 1
    kept = torch.cumsum(e, 0) / total
    return min(int(torch.searchsorted(kept, torch.tensor(energy - 1e-12, dtype=kept.dtype))) + 1, s.numel())


def round_rank(rank: int, shape: Shape, multiple: int, up: bool = False) -> int | None:
    """``rank`` rounded to a multiple of ``multiple`` (at least one multiple, at most ``min(out, in)``), or ``None``
    when the rounded rank would not make the layer smaller."""
    full = min(shape)
    r = (math.ceil(rank / multiple) if up else rank // multiple) * multiple
    r = min(max(r, min(multiple, full)), full)
    return r if r <= max_useful_rank(*shape) else None


def _fill(ranks: Ranks, shapes: dict[str, Shape], weights: dict[str, float], budget: float, multiple: int,
          order: list[str]) -> Ranks:
    """Give layers, in ``order`` (repeatedly), one more ``multiple`` of rank while the total cost stays within
    ``budget`` and the layer stays smaller than dense."""
    ranks = dict(ranks)
    total = sum(weights[n] * layer_cost(shapes[n], r) for n, r in ranks.items())
    grew = True
    while grew:
        grew = False
        for n in order:
            r = ranks[n]
            if r is None or r + multiple > max_useful_rank(*shapes[n]):
                continue
            extra = weights[n] * multiple * sum(shapes[n])
            if total + extra <= budget:
                ranks[n], total, grew = r + multiple, total + extra, True
    return ranks


def uniform_ranks(shapes: dict[str, Shape], ratio: float, multiple: int = 1) -> Ranks:
    """Remove ``ratio`` of every layer's weights (so of its FLOPs too), ranks rounded down to ``multiple``, then
    the rounding slack handed back (largest remainder first) so the total removed is as close to ``ratio`` as the
    multiple allows, never less."""
    _check_ratio(ratio)
    exact = {n: (1 - ratio) * o * i / (o + i) for n, (o, i) in shapes.items()}
    ranks = {n: round_rank(max(1, int(r)), shapes[n], multiple) for n, r in exact.items()}
    ones = {n: 1.0 for n in shapes}
    budget = (1 - ratio) * sum(o * i for o, i in shapes.values())
    order = sorted(shapes, key=lambda n: -(exact[n] - (ranks[n] or 0)))
    return _fill(ranks, shapes, ones, budget, multiple, order)


def allocate_ranks(spectra: dict[str, torch.Tensor], shapes: dict[str, Shape], ratio: float, multiple: int = 1,
                   weights: dict[str, float] | None = None) -> Ranks:
    """Ranks across layers that remove ``ratio`` of the weighted cost while losing the least relative energy.

    Each singular value ``s_j`` of layer ``i`` is worth ``s_j^2 / sum(s_i^2)`` (the share of the layer's energy it
    keeps) per unit of cost ``weights[i] * (out_i + in_i)``; one threshold on that worth across layers (found by
    bisection: the cost is monotone in it, a layer capped at its dense cost) picks the ranks."""
    _check_ratio(ratio)
    weights = weights or {n: 1.0 for n in shapes}
    budget = (1 - ratio) * sum(weights[n] * o * i for n, (o, i) in shapes.items())
    worth = {}
    for n, s in spectra.items():
        e = s.double().pow(2)
        worth[n] = e / e.sum().clamp_min(1e-300) / (weights[n] * sum(shapes[n]))

    def ranks_at(tau: float) -> Ranks:
        out: Ranks = {}
        for n, w in worth.items():
            r = int((w >= tau).sum())
            out[n] = round_rank(max(r, 1), shapes[n], multiple)
        return out

    def cost(r: Ranks) -> float:
        return sum(weights[n] * layer_cost(shapes[n], k) for n, k in r.items())

    candidates = torch.cat([w for w in worth.values()]).unique().sort(descending=True).values
    lo, hi = 0, candidates.numel() - 1            # find the lowest threshold (most rank) that fits the budget
    best = ranks_at(float("inf"))
    while lo <= hi:
        mid = (lo + hi) // 2
        r = ranks_at(float(candidates[mid]))
        if cost(r) <= budget:
            best, lo = r, mid + 1
        else:
            hi = mid - 1
    order = sorted(shapes, key=lambda n: -float(worth[n][best[n]]) if best[n] is not None
                   and best[n] < worth[n].numel() else 0.0)
    return _fill(best, shapes, weights, budget, multiple, order)


def removed_fraction(shapes: dict[str, Shape], ranks: Ranks, weights: dict[str, float] | None = None) -> float:
    """The weighted share of cost the ranks remove."""
    weights = weights or {n: 1.0 for n in shapes}
    dense = sum(weights[n] * o * i for n, (o, i) in shapes.items())
    return 1 - sum(weights[n] * layer_cost(shapes[n], ranks.get(n)) for n in shapes) / dense


def _check_ratio(ratio: float) -> None:
    if not 0 < ratio < 1:
        raise ConfigError(f"ratio (the share of weights removed) must be in (0, 1), got {ratio}")
