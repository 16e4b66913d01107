"""What a training hook may read from the trainer: a structural type, so that hooks (``train.hooks``) need not
import the engine that calls them (``train.engine`` imports the hooks)."""
from __future__ import annotations

from typing import Any, Protocol

import torch
from torch import nn


class TrainerView(Protocol):
    """The :class:`~torchslim.train.engine.Trainer` attributes hooks use."""

    model: nn.Module
    task: Any                    # torchslim.tasks.base.Task
    config: Any                  # torchslim.train.config.TrainConfig
    device: torch.device
    step: int
    optimizer: torch.optim.Optimizer | None
    last_output: Any

    def teacher_output(self, batch: Any) -> Any:
        """The frozen teacher's output for ``batch``."""
        ...
