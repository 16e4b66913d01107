"""Bottleneck adapters (Houlsby et al. 2019; Pfeiffer et al. 2020) as a training technique.

``torchslim.finetune_(model, BottleneckConfig(size=16, placement="pfeiffer"), task=task, train=...)`` adds a
:class:`~torchslim.peft.bottleneck.branch.BottleneckBranch` on the output of the sub-layers that feed the
residual stream, found through the architecture table (:mod:`torchslim.core.archs`): Houlsby places one after
each block's attention output projection and one after its feed-forward output projection, Pfeiffer only the
latter. A ``selector`` replaces the placement (any linear-like layer's output can be adapted). Adapters stay
branches: they cannot be merged into the weights.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from torch import nn

from torchslim.core.archs import arch_of, find_blocks, resolve
from torchslim.core.config import between
from torchslim.core.errors import ConfigError, TorchSlimError
from torchslim.core.select import Selector
from torchslim.peft.bottleneck.branch import BottleneckBranch, check_activation
from torchslim.peft.branch import Branch
from torchslim.peft.config import AdapterConfig
from torchslim.peft.weights import geometry

# placement -> the architecture roles (core.archs.ArchSpec fields) whose outputs get an adapter
PLACEMENTS: dict[str, tuple[str, ...]] = {
    "houlsby": ("o", "mlp_out"),       # after the attention output projection and the feed-forward output
    "pfeiffer": ("mlp_out",),          # after the feed-forward output only
}


@dataclass
class BottleneckConfig(AdapterConfig):
    """``size``: the bottleneck width; ``placement``: ``"houlsby"`` or ``"pfeiffer"`` (used when ``selector``
    is None); ``activation``: ``"relu"``, ``"gelu"`` or ``"silu"``."""

    technique: ClassVar[str] = "bottleneck"
    method: ClassVar[str] = "bottleneck"
    size: int = between(64, 1, 1 << 16)
    placement: str = "houlsby"
    activation: str = "relu"

    def validate(self) -> None:
        super().validate()
        if self.placement not in PLACEMENTS:
            raise ConfigError(f"BottleneckConfig.placement must be one of {', '.join(PLACEMENTS)}, "
                              f"got {self.placement!r}")
        check_activation(self.activation)

    def default_selector(self, model: nn.Module) -> Selector:
        spec = arch_of(model)
        try:
            blocks = find_blocks(model)
        except TorchSlimError as e:
            raise ConfigError(f"BottleneckConfig places adapters by architecture: {e}; pass selector=") from None
        names = tuple(f"{b}.{p}" for b, block in blocks for role in PLACEMENTS[self.placement]
                      if (p := resolve(block, getattr(spec, role))) is not None)
        if not names:
            raise ConfigError(f"BottleneckConfig: the {spec.name} table row names no layer for {self.placement} "
                              "placement; pass selector=")
        return Selector(include=names)

    def make_branch(self, name: str, layer: nn.Module, plan: Any = None) -> Branch | None:
        g = geometry(layer)
        if g is None or g.conv is not None:
            return None
        return BottleneckBranch(g.out_features, self.size, self.activation, adapter=self.adapter)
