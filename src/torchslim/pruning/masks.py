"""Masks from scores (pure math). ``True`` keeps an element, ``False`` prunes it.

* :func:`layer_mask`: unstructured, the lowest-scored ``sparsity`` fraction of one tensor;
* :func:`global_masks`: unstructured with one threshold across tensors (layers then get
  different sparsities, the total hits the target);
* :func:`nm_mask`: N:M semi-structured, keep ``n`` of every ``m`` consecutive inputs of a row;
* :func:`keep_indices`: structured, which channels/neurons/heads to keep from group scores.
"""
from __future__ import annotations

import math

import torch

from torchslim.core.errors import ConfigError


def check_sparsity(sparsity: float, name: str = "sparsity") -> None:
    if not 0.0 <= sparsity < 1.0:
        raise ConfigError(f"{name} must be in [0, 1), got {sparsity}")


def n_pruned(numel: int, sparsity: float) -> int:
    return int(round(numel * sparsity))


def layer_mask(scores: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Prune exactly ``round(numel * sparsity)`` lowest-scored elements (ties broken by position)."""
    check_sparsity(sparsity)
    k = n_pruned(scores.numel(), sparsity)
    mask = torch.ones(scores.numel(), dtype=torch.bool, device=scores.device)
    if k:
        idx = torch.topk(scores.reshape(-1).float(), k, largest=False, sorted=False).indices
        mask[idx] = False
    return mask.reshape(scores.shape)


def row_mask(scores: torch.Tensor, sparsity: float) -> torch.Tensor:
    """The same fraction pruned in every output row (Wanda's per-output comparison group)."""
    check_sparsity(sparsity)
    s = scores.reshape(scores.shape[0], -1).float()
    k = n_pruned(s.shape[1], sparsity)
    mask = torch.ones_like(s, dtype=torch.bool)
    if k:
        idx = torch.topk(s, k, dim=1, largest=False, sorted=False).indices
        mask.scatter_(1, idx, False)
    return mask.reshape(scores.shape)


def global_masks(scores: dict[str, torch.Tensor], sparsity: float) -> dict[str, torch.Tensor]:
    """One threshold over all tensors: exactly ``round(total * sparsity)`` elements pruned overall."""
    check_sparsity(sparsity)
    flat = torch.cat([s.reshape(-1).float() for s in scores.values()])
    k = n_pruned(flat.numel(), sparsity)
    keep = torch.ones(flat.numel(), dtype=torch.bool)
    if k:
        keep[torch.topk(flat, k, largest=False, sorted=False).indices] = False
    out, start = {}, 0
    for name, s in scores.items():
        out[name] = keep[start:start + s.numel()].reshape(s.shape)
        start += s.numel()
    return out


def parse_nm(pattern: str) -> tuple[int, int]:
    """``"2:4"`` -> ``(2, 4)``."""
    try:
        n, m = (int(p) for p in pattern.split(":"))
    except ValueError:
        raise ConfigError(f"an N:M pattern looks like '2:4', got '{pattern}'") from None
    if not 0 < n < m:
        raise ConfigError(f"N:M pattern needs 0 < N < M, got '{pattern}'")
    return n, m


def nm_mask(scores: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """Keep the ``n`` highest of every ``m`` consecutive elements along the last dim (inputs)."""
    if scores.shape[-1] % m:
        raise ConfigError(f"{n}:{m} sparsity needs the input size ({scores.shape[-1]}) to be a multiple of {m}")
    s = scores.float().reshape(-1, m)
    idx = torch.topk(s, n, dim=1).indices
    mask = torch.zeros_like(s, dtype=torch.bool).scatter_(1, idx, True)
    return mask.reshape(scores.shape)


def keep_indices(group_scores: torch.Tensor, n_keep: int) -> torch.Tensor:
    """Sorted indices of the ``n_keep`` highest-scored groups (at least one is always kept)."""
    n = group_scores.numel()
    n_keep = max(1, min(n, int(n_keep)))
    return torch.topk(group_scores.float(), n_keep).indices.sort().values


def kept_count(size: int, n_keep: int, round_to: int = 1, min_keep: int = 1) -> int:
    """``n_keep`` rounded to a multiple of ``round_to`` (nearest), within ``[min_keep, size]``, at least 1.
    ``min_keep`` above ``size`` is a user error (it would silently keep everything)."""
    if min_keep > size:
        raise ConfigError(f"min_keep ({min_keep}) is more than the {size} units of the layer being pruned")
    if round_to > 1 and size > round_to:
        n_keep = max(round_to, int(math.floor(n_keep / round_to + 0.5)) * round_to)
    return max(1, min(size, max(min_keep, n_keep)))


def sparsity_of(t: torch.Tensor) -> float:
    """Fraction of exact zeros in ``t`` (or of ``False`` in a mask)."""
    if t.dtype == torch.bool:
        return 1.0 - t.float().mean().item()
    return (t == 0).float().mean().item()
