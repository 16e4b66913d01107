"""Exit policies: which rows of a batch leave at an exit. Each is a small typed config (so a recipe or the CLI can
name one) with per-batch state that the runtime compacts together with the batch.

* :class:`EntropyPolicy` (DeeBERT): exit when the normalized entropy of the exit's prediction is below ``threshold``.
* :class:`PatiencePolicy` (PABEE): exit when ``patience`` consecutive exits predicted the same class.
* :class:`LearnedPolicy`: exit when the head's trained gate says the exit agrees with the final layer with
  probability above ``threshold``.

``never()`` gives a setting that never fires (the runtime then computes exactly what the model computes).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from torchslim.core.config import BaseConfig
from torchslim.core.errors import ConfigError
from torchslim.early_exit.math import entropy_exit, gate_exit, patience_step


@dataclass
class ExitPolicy(BaseConfig):
    """Base of exit policies (runtime settings, not a technique: no verb applies them)."""

    def start(self, rows: int, device: torch.device) -> dict[str, Any]:
        """Fresh per-row state for a batch of ``rows``."""
        return {}

    def decide(self, k: int, logits: torch.Tensor, gate: torch.Tensor, state: dict[str, Any]) -> torch.Tensor:
        """Bool ``[rows]``: which rows leave at exit ``k`` (state updated in place)."""
        raise NotImplementedError


def compact_state(state: dict[str, Any], keep: torch.Tensor) -> dict[str, Any]:
    return {k: v[keep] if isinstance(v, torch.Tensor) else v for k, v in state.items()}


@dataclass
class EntropyPolicy(ExitPolicy):
    threshold: float = 0.1

    def validate(self) -> None:
        if not 0.0 <= self.threshold <= 1.0:
            raise ConfigError(f"EntropyPolicy.threshold (normalized entropy) must be in [0, 1], got {self.threshold}")

    @classmethod
    def never(cls) -> EntropyPolicy:
        return cls(threshold=0.0)

    def decide(self, k: int, logits: torch.Tensor, gate: torch.Tensor, state: dict[str, Any]) -> torch.Tensor:
        return entropy_exit(logits, self.threshold)


@dataclass
class PatiencePolicy(ExitPolicy):
    patience: int = 2

    def validate(self) -> None:
        if not isinstance(self.patience, int) or self.patience < 1:
            raise ConfigError(f"PatiencePolicy.patience must be a positive integer, got {self.patience!r}")

    @classmethod
    def never(cls) -> PatiencePolicy:
        return cls(patience=1 << 20)

    def start(self, rows: int, device: torch.device) -> dict[str, Any]:
        return {"last": torch.full((rows,), -1, dtype=torch.long, device=device),
                "count": torch.zeros(rows, dtype=torch.long, device=device)}

    def decide(self, k: int, logits: torch.Tensor, gate: torch.Tensor, state: dict[str, Any]) -> torch.Tensor:
        pred = logits.argmax(-1)
        state["count"] = patience_step(pred, state["last"], state["count"])
        state["last"] = pred
        return state["count"] >= self.patience


@dataclass
class LearnedPolicy(ExitPolicy):
    threshold: float = 0.9

    def validate(self) -> None:
        if not 0.0 <= self.threshold <= 1.0:
            raise ConfigError(f"LearnedPolicy.threshold (gate probability) must be in [0, 1], got {self.threshold}")

    @classmethod
    def never(cls) -> LearnedPolicy:
        return cls(threshold=1.0)

    def decide(self, k: int, logits: torch.Tensor, gate: torch.Tensor, state: dict[str, Any]) -> torch.Tensor:
        return gate_exit(gate, self.threshold)
