"""The exit head: a small classifier reading one block's output, plus a gate for the learned exit policy.

All heads of a model live in one added ``nn.ModuleList`` named :data:`HEADS` at the model's root (added with
:func:`torchslim.core.resize.add_module`, so artifacts record and rebuild them), each naming the block it reads.
They sit outside every block (a child added to an ``nn.Sequential`` stage would join its forward), so the model's
own forward computes exactly what it did: only :class:`~torchslim.early_exit.runtime.ExitRuntime` and training call
them.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from torchslim.core.errors import ConfigError
from torchslim.core.kinds import ModuleKind, register_kind
from torchslim.early_exit.math import POOLS, confidence_features, pool

HEADS = "exit_heads"


class ExitHead(nn.Module):
    """``block`` output -> pooled features ``[B, F]`` -> (``hidden`` > 0: linear + tanh) -> class logits; the gate
    reads the features and the logits' entropy and top probability and returns one logit per row."""

    def __init__(self, block: str, in_features: int, num_classes: int, pool: str = "tokens", hidden: int = 0) -> None:
        super().__init__()
        if pool not in POOLS:
            raise ConfigError(f"ExitHead pool must be one of {', '.join(POOLS)}, got {pool!r}")
        self.block, self.pool, self.hidden = str(block), pool, int(hidden)
        self.in_features, self.num_classes = int(in_features), int(num_classes)
        width = self.hidden or self.in_features
        self.body = nn.Sequential(nn.Linear(self.in_features, width), nn.Tanh()) if self.hidden else nn.Identity()
        self.classifier = nn.Linear(width, self.num_classes)
        self.gate = nn.Linear(self.in_features + 2, 1)

    def forward(self, h: torch.Tensor, mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``mask`` ``[B, T]``: which tokens the ``tokens`` pooling averages (an encoder's attention mask)."""
        f = pool(h, self.pool, mask)
        logits = self.classifier(self.body(f))
        gate = self.gate(torch.cat([f, confidence_features(logits.detach())], -1)).squeeze(-1)
        return logits, gate

    def describe(self) -> dict[str, Any]:
        return {"block": self.block, "in_features": self.in_features, "num_classes": self.num_classes,
                "pool": self.pool, "hidden": self.hidden}

    def extra_repr(self) -> str:
        return f"after {self.block!r}, {self.in_features}->{self.num_classes}, pool={self.pool}"


register_kind(ModuleKind("ExitHead", ExitHead, lambda m: m.describe(),
                         lambda d: ExitHead(d["block"], d["in_features"], d["num_classes"], d["pool"], d["hidden"])))


def exit_heads(model: nn.Module) -> list[ExitHead]:
    """The model's exit heads in block order (empty when it has none)."""
    heads = getattr(model, HEADS, None)
    return [h for h in heads if isinstance(h, ExitHead)] if isinstance(heads, nn.ModuleList) else []
