"""Depth pruning: remove whole transformer blocks.

Block importance is the Block Influence of ShortGPT (Men et al., 2024): ``1 - cos(x_in, x_out)``
averaged over calibration tokens; a block that barely changes its input is the cheapest to
drop. Removing blocks rebuilds the block list, renumbers each attention's ``layer_idx`` (the
KV cache slot) and updates ``config.num_hidden_layers`` (and ``layer_types`` where present).
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from torchslim.calibration.pipeline import calibration_batches, walk_blocks
from torchslim.core.archs import arch_of, find_blocks
from torchslim.core.errors import ConfigError
from torchslim.core.resize import forget_modules, rename_prefix
from torchslim.pruning.config import StructuredConfig
from torchslim.pruning.importance import Importance


@torch.no_grad()
def block_influence(model: nn.Module, calibration: Any, n_samples: int) -> list[float]:
    """Mean ``1 - cos(input, output)`` of every block over the calibration tokens."""
    batches, forward = calibration_batches(calibration, n_samples)
    out = []
    for _, _, inputs, outputs in walk_blocks(model, batches, forward, "block influence"):
        total, count = 0.0, 0
        for (args, _), y in zip(inputs, outputs):
            cos = torch.nn.functional.cosine_similarity(args[0].float(), y.float(), dim=-1)
            total += (1 - cos).sum().item()
            count += cos.numel()
        out.append(total / max(count, 1))
    return out


def blocks_to_drop(model: nn.Module, config: StructuredConfig, calibration: Any) -> list[int]:
    spec = arch_of(model)
    if spec is not None:
        spec.check("layers")
    n = len(find_blocks(model))
    k = int(round(n * config.ratio))
    if k >= n:
        raise ConfigError(f"depth pruning would remove all {n} blocks; use a smaller ratio")
    if config.importance is Importance.UNIFORM:   # keep n - k evenly spaced blocks, the first and the last included
        keep = set(torch.linspace(0, n - 1, n - k).round().long().tolist()) if n - k > 1 else {n - 1}
        return [i for i in range(n) if i not in keep]
    if config.importance is Importance.RANDOM:
        g = torch.Generator().manual_seed(0)
        return sorted(torch.randperm(n, generator=g)[:k].tolist())
    if calibration is None:
        raise ConfigError("depth pruning ranks blocks by their influence on calibration data: pass calibration=<task>")
    bi = torch.tensor(block_influence(model, calibration, config.n_samples))
    return sorted(torch.topk(bi, k, largest=False).indices.tolist())


def drop_blocks_(model: nn.Module, drop: list[int]) -> None:
    """Remove blocks ``drop`` (indices) from the model's block list and fix indices and config."""
    blocks = find_blocks(model)
    path = blocks[0][0].rsplit(".", 1)[0]
    keep = [i for i in range(len(blocks)) if i not in set(drop)]
    for i in drop:
        forget_modules(model, f"{path}.{i}")
    for new_i, old_i in enumerate(keep):
        if new_i != old_i:
            rename_prefix(model, f"{path}.{old_i}", f"{path}.{new_i}")
    kept = [blocks[i][1] for i in keep]
    for new_i, block in enumerate(kept):
        for m in block.modules():
            if hasattr(m, "layer_idx") and isinstance(m.layer_idx, int):
                m.layer_idx = new_i
    parent = model.get_submodule(path.rsplit(".", 1)[0]) if "." in path else model
    setattr(parent, path.rsplit(".", 1)[-1], nn.ModuleList(kept))
    cfg = getattr(model, "config", None)
    if cfg is not None:
        cfg.num_hidden_layers = len(kept)
        if isinstance(getattr(cfg, "layer_types", None), list) and len(cfg.layer_types) == len(blocks):
            cfg.layer_types = [cfg.layer_types[i] for i in keep]
