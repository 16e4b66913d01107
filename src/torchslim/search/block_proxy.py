"""The block-local proxy: a group inside a transformer block is scored by how far that block's output moves on the
block's cached calibration inputs, so a trial runs one block instead of the whole model (about 1/L of the cost for
L blocks). Groups outside the chained blocks (an output head) are scored on the model's output instead."""
from __future__ import annotations

from typing import Any, Callable

import torch
from torch import nn

from torchslim.calibration.pipeline import block_output, calibration_batches, walk_blocks
from torchslim.core.archs import arch_of
from torchslim.core.errors import ConfigError
from torchslim.search.measure import divergence


class BlockScorer:
    """One block's original outputs on its cached inputs, and the block's relative output error now."""

    kind = "block"

    def __init__(self, block: nn.Module, cache: list[tuple], outputs: list[torch.Tensor]) -> None:
        self.block, self.cache = block, cache
        self.refs = [o.detach().float().clone() for o in outputs]

    @torch.no_grad()
    def cost(self) -> float:
        total, count = 0.0, 0
        for (args, kwargs), ref in zip(self.cache, self.refs):
            s, c = divergence(ref, block_output(self.block(*args, **kwargs)), "mse")
            total, count = total + s, count + c
        return total / max(count, 1)


def scan_blocks(model: nn.Module, task: Any, groups: dict[str, list[str]], run: Callable[[str, BlockScorer], None],
                n_samples: int, batch_size: int) -> set[str]:
    """Call ``run(group, scorer)`` for every group whose layers all sit in one chained block, while that block's
    inputs are cached (blocks in order, one block's activations held at a time); the groups done."""
    if arch_of(model) is None:
        raise ConfigError(f"measure 'block' needs transformer blocks; {type(model).__name__} has none a table row "
                          "knows: use measure 'auto'")
    batches, forward = calibration_batches(task, n_samples, batch_size)
    done: set[str] = set()
    for bname, block, cache, outputs in walk_blocks(model, batches, forward, desc="sensitivity (blocks)"):
        inside = [g for g, layers in groups.items() if all(n.startswith(bname + ".") for n in layers)]
        if not inside:
            continue
        scorer = BlockScorer(block, cache, outputs)
        for g in inside:
            run(g, scorer)
            done.add(g)
    return done
