"""LoRA (Hu et al. 2021), rsLoRA (Kalajdzievski 2023) and DoRA (Liu et al. 2024) as a training technique.

``torchslim.finetune_(model, LoraConfig(r=8, selector=Selector(include="re:.*\\.(q|v)_proj")), task=task,
train=TrainConfig(...))`` adds a :class:`~torchslim.peft.lora.branch.LoraBranch` to every selected layer
(float, GPT-2 ``Conv1D``, convolution, packed int4/int8/NF4, sparse or structurally pruned), freezes the
rest and trains the branches. Over a packed base this is QLoRA: the base stays packed and a frozen packed
layer passes gradients to its input without keeping a dense copy of its weight.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from torch import nn

from torchslim.core.config import between
from torchslim.core.errors import ConfigError
from torchslim.peft.branch import Branch
from torchslim.peft.config import AdapterConfig
from torchslim.peft.lora.branch import LoraBranch
from torchslim.peft.weights import geometry


@dataclass
class LoraConfig(AdapterConfig):
    """``r``: rank; ``alpha``: the update is scaled by ``alpha / r`` (``alpha / sqrt(r)`` with ``rslora``);
    ``dropout`` on the branch's input; ``dora``: learn a magnitude per output as well (DoRA)."""

    technique: ClassVar[str] = "lora"
    method: ClassVar[str] = "lora"
    r: int = between(8, 1, 1 << 16)
    alpha: float = 16.0
    dropout: float = 0.0
    rslora: bool = False
    dora: bool = False

    def validate(self) -> None:
        super().validate()
        if not (isinstance(self.alpha, (int, float)) and self.alpha > 0):
            raise ConfigError(f"LoraConfig.alpha must be positive, got {self.alpha!r}")
        if not (isinstance(self.dropout, (int, float)) and 0.0 <= self.dropout < 1.0):
            raise ConfigError(f"LoraConfig.dropout must be in [0, 1), got {self.dropout!r}")

    def make_branch(self, name: str, layer: nn.Module, plan: Any = None) -> Branch | None:
        g = geometry(layer)
        if g is None:
            return None
        branch = LoraBranch(g.in_features, g.out_features, self.r, self.alpha, dropout=self.dropout,
                            rslora=self.rslora, dora=self.dora, conv=g.conv, adapter=self.adapter)
        branch.init_magnitude(layer)
        return branch
