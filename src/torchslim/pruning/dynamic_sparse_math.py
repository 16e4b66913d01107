"""Dynamic sparse training, pure math: layer densities, the drop-fraction schedule, drop-and-grow masks.

* :func:`erk_densities`: Erdős–Rényi-Kernel (Evci et al. 2020, "Rigging the Lottery", RigL): a layer's
  density is proportional to ``sum(shape) / prod(shape)`` (``(n_in + n_out + k_h + k_w) / (n_in n_out k_h k_w)``
  for a conv), scaled so that the kept weights fill the global budget; a layer whose density would exceed 1 is
  kept dense and the others are rescaled, as in the paper's code.
* :func:`uniform_densities`: the same density everywhere.
* :func:`active_counts`: densities -> integer kept counts that add up to the budget exactly (largest remainder).
* :func:`drop_fraction`: RigL's cosine decay ``f(t) = a / 2 * (1 + cos(pi t / T_end))``, zero from ``T_end``.
* :func:`drop_and_grow`: drop the ``n`` smallest-magnitude kept weights, grow the ``n`` highest-scored among the
  others (|gradient| for RigL, random scores for SET, Mocanu et al. 2018). The kept count never changes.

``True`` in a mask keeps an element, as in :mod:`torchslim.pruning.masks`.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch

from torchslim.core.errors import ConfigError


def _check_density(density: float) -> None:
    if not 0.0 < density <= 1.0:
        raise ConfigError(f"density must be in (0, 1], got {density}")


def erk_scores(shape: Sequence[int]) -> float:
    """ERK's raw density of a weight of ``shape``: ``sum(shape) / prod(shape)`` (Erdős–Rényi for a linear layer)."""
    return float(sum(shape)) / float(math.prod(shape))


def erk_densities(shapes: Sequence[Sequence[int]], density: float, power: float = 1.0) -> list[float]:
    """Per-layer densities whose kept weights total ``density * sum(numel)``; layers that would exceed 1 stay dense.

    Each round solves ``eps`` in ``sum_sparse eps * raw_i * n_i = budget - sum_dense n_i``; while the largest
    ``eps * raw_i`` is above 1, the layers with that raw score join the dense set (RigL's ``get_sparsities``).
    ``power`` scales the raw scores (``raw ** power``; 0 gives uniform).
    """
    _check_density(density)
    if not shapes:
        raise ConfigError("ERK densities need at least one layer")
    numels = [math.prod(s) for s in shapes]
    raw = [erk_scores(s) ** power for s in shapes]
    dense: set[int] = set()
    while True:
        sparse = [i for i in range(len(shapes)) if i not in dense]
        if not sparse:
            return [1.0] * len(shapes)
        rhs = density * sum(numels) - sum(numels[i] for i in dense)
        eps = rhs / sum(raw[i] * numels[i] for i in sparse)
        top = max(raw[i] for i in sparse)
        if eps * top <= 1.0:
            return [1.0 if i in dense else eps * raw[i] for i in range(len(shapes))]
        dense.update(i for i in sparse if raw[i] == top)


def uniform_densities(shapes: Sequence[Sequence[int]], density: float) -> list[float]:
    """The same density in every layer."""
    _check_density(density)
    return [float(density)] * len(shapes)


def active_counts(numels: Sequence[int], densities: Sequence[float], total: int | None = None) -> list[int]:
    """Integer kept counts near ``density * numel`` that add up to ``total`` exactly (default: the rounded sum).

    Largest remainder: every layer gets ``floor(d * n)`` (at least 1, at most ``n``), then the missing units go
    to the largest fractional parts. A layer with density 1 keeps every element.
    """
    if len(numels) != len(densities):
        raise ConfigError(f"{len(numels)} layers but {len(densities)} densities")
    exact = [min(float(n), max(0.0, d * n)) for n, d in zip(numels, densities)]
    total = int(round(sum(exact))) if total is None else int(total)
    if not len(numels) <= total <= sum(numels):
        raise ConfigError(f"cannot keep {total} weights in {len(numels)} layers of {sum(numels)} weights")
    counts = [min(n, max(1, math.floor(e))) for n, e in zip(numels, exact)]
    missing = total - sum(counts)
    order = sorted(range(len(numels)), key=lambda i: exact[i] - math.floor(exact[i]), reverse=missing > 0)
    step = 1 if missing > 0 else -1
    while missing:
        moved = False
        for i in order:
            if missing and 1 <= counts[i] + step <= numels[i] and (step > 0 or densities[i] < 1.0):
                counts[i] += step
                missing -= step
                moved = True
        if not moved:
            raise ConfigError(f"cannot distribute {total} kept weights over layers of sizes {list(numels)}")
    return counts


def drop_fraction(step: int, initial: float, end_step: int) -> float:
    """RigL's cosine-decayed fraction of kept weights swapped at ``step``: ``initial`` at 0, 0 from ``end_step``."""
    if end_step <= 0 or step >= end_step:
        return 0.0
    return float(initial) / 2.0 * (1.0 + math.cos(math.pi * max(step, 0) / end_step))


def is_update_step(step: int, every: int, end_step: int) -> bool:
    """Whether masks change after optimizer step ``step`` (1-based): every ``every`` steps, strictly before
    ``end_step``."""
    return 0 < step < end_step and step % every == 0


def random_mask(shape: Sequence[int], n_keep: int, generator: torch.Generator) -> torch.Tensor:
    """A mask keeping exactly ``n_keep`` uniformly random elements."""
    numel = math.prod(shape)
    keep = torch.zeros(numel, dtype=torch.bool)
    keep[torch.randperm(numel, generator=generator)[:n_keep]] = True
    return keep.reshape(tuple(shape))


def top_mask(scores: torch.Tensor, n_keep: int) -> torch.Tensor:
    """A mask keeping exactly the ``n_keep`` highest-scored elements."""
    keep = torch.zeros(scores.numel(), dtype=torch.bool, device=scores.device)
    if n_keep:
        keep[torch.topk(scores.reshape(-1).float(), n_keep, sorted=False).indices] = True
    return keep.reshape(scores.shape)


def n_swapped(n_active: int, fraction: float) -> int:
    """How many kept weights one update drops (and grows): ``round(fraction * n_active)``, at most ``n_active``."""
    return max(0, min(int(round(fraction * n_active)), n_active))


def drop_and_grow(mask: torch.Tensor, weight: torch.Tensor, n: int, grow_scores: torch.Tensor) -> torch.Tensor:
    """The new mask: the ``n`` smallest-|weight| kept elements dropped, the ``n`` highest ``grow_scores`` among the
    elements not kept after the drop grown (a just-dropped element may come back, as in RigL). Same count as ``mask``.
    """
    if mask.shape != weight.shape or grow_scores.shape != weight.shape:
        raise ConfigError(f"mask {tuple(mask.shape)}, weight {tuple(weight.shape)} and scores "
                          f"{tuple(grow_scores.shape)} must have one shape")
    n_active = int(mask.sum())
    if n <= 0 or n_active == 0:
        return mask.clone()
    n = min(n, n_active)
    keep_scores = weight.detach().abs().float().masked_fill(~mask, float("-inf"))
    remaining = top_mask(keep_scores, n_active - n)
    grow = grow_scores.detach().float().masked_fill(remaining, float("-inf"))
    return remaining | top_mask(grow, n)
