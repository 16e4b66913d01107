"""Model-level verbs, one per technique family; each changes the model in place (torch style)."""
from __future__ import annotations

from typing import Any

from torch import nn

from torchslim.core.config import BaseConfig
from torchslim.core.registry import apply_


def quantize_(model: nn.Module, config: BaseConfig, *, calibration: Any = None, **kwargs: Any) -> nn.Module:
    """Quantize ``model`` in place with ``config``; ``calibration`` is a Task or a list of batches."""
    if calibration is not None:
        kwargs["calibration"] = calibration
    return apply_(model, config, family="quantization", **kwargs)


def prune_(model: nn.Module, config: BaseConfig, *, calibration: Any = None, **kwargs: Any) -> nn.Module:
    """Prune ``model`` in place with ``config``."""
    if calibration is not None:
        kwargs["calibration"] = calibration
    return apply_(model, config, family="pruning", **kwargs)
