"""Deterministic seeds derived from a base seed and counters (no RNG state to save or restore)."""
from __future__ import annotations


def mix_seed(seed: int, step: int, index: int = 0) -> int:
    """A seed for ``(seed, step, index)``: training step and rank, or schedule step and layer index.

    Different counters give different seeds; the same counters always give the same seed, in
    every process, so a resumed run draws what an uninterrupted one would have.
    """
    return (seed * 1_000_003 + step * 7_919 + index * 104_729) % (2**63 - 1)
