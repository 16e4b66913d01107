"""Model-level verbs, one per technique family; each changes the model in place (torch style).

Every verb takes the model, one config, and either keyword arguments naming the data it
needs (``calibration=``, ``task=``, ``train=``, ``teacher=``, ``example_inputs=``, ``device=``,
``hooks=``, ``train_data=``; see :class:`torchslim.core.context.ApplyContext`) or one
``ctx=ApplyContext(...)``. An unknown keyword is an error.
"""
from __future__ import annotations

from typing import Any

from torch import nn

from torchslim.core.config import BaseConfig
from torchslim.core.context import ApplyContext
from torchslim.core.registry import apply_


def quantize_(model: nn.Module, config: BaseConfig, ctx: ApplyContext | None = None, **kwargs: Any) -> nn.Module:
    """Quantize ``model`` in place with ``config``; ``calibration`` is a Task or a list of batches."""
    return apply_(model, config, ctx, family="quantization", **kwargs)


def prune_(model: nn.Module, config: BaseConfig, ctx: ApplyContext | None = None, **kwargs: Any) -> nn.Module:
    """Prune ``model`` in place with ``config`` (schedules train it: pass ``task=`` and ``train=``)."""
    return apply_(model, config, ctx, family="pruning", **kwargs)


def finetune_(model: nn.Module, config: BaseConfig, ctx: ApplyContext | None = None, **kwargs: Any) -> nn.Module:
    """Train ``model`` in place on its task (``task=``) with a training config (recovery fine-tuning)."""
    return apply_(model, config, ctx, family="training", **kwargs)
