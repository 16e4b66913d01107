"""The bottleneck adapter branch (Houlsby et al. 2019, Pfeiffer et al. 2020): ``out + up(act(down(out)))``
on a sub-layer's output, before it joins the residual stream.

``down`` is ``[size, features]`` (initialised as ``nn.Linear`` is), ``up`` ``[features, size]`` and starts at
zero (weight and bias), so the adapted model starts as the base. The update is a non-linear function of the
output, not a change of the layer's weights: the branch cannot be merged (it has no ``merged_weight``).
"""
from __future__ import annotations

from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from torchslim.core.errors import ConfigError
from torchslim.core.kinds import ModuleKind, register_kind
from torchslim.peft.branch import Branch

ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {"relu": F.relu, "gelu": F.gelu, "silu": F.silu}


def check_activation(activation: Any) -> str:
    if activation not in ACTIVATIONS:
        raise ConfigError(f"unknown bottleneck activation {activation!r}; one of {', '.join(ACTIVATIONS)}")
    return activation


class BottleneckBranch(Branch):
    method = "bottleneck"

    def __init__(self, features: int, size: int, activation: str = "relu", *, adapter: str = "default",
                 enabled: bool = True) -> None:
        super().__init__(adapter, enabled)
        for what, n in (("feature count", features), ("bottleneck size", size)):
            if not (isinstance(n, int) and n >= 1):
                raise ConfigError(f"a bottleneck adapter needs a positive {what}, got {n!r}")
        self.features, self.size, self.activation = features, size, check_activation(activation)
        self.down = nn.Linear(features, size)
        self.up = nn.Linear(size, features)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "features": self.features, "size": self.size, "activation": self.activation}

    def on_output(self, layer: nn.Module, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        dt = out.dtype
        h = ACTIVATIONS[self.activation](F.linear(out, self.down.weight.to(dt), self.down.bias.to(dt)))
        return out + F.linear(h, self.up.weight.to(dt), self.up.bias.to(dt))

    def extra_repr(self) -> str:
        return f"bottleneck {self.features}->{self.size}->{self.features} {self.activation}, " + super().extra_repr()


register_kind(ModuleKind(
    "BottleneckBranch", BottleneckBranch, lambda m: m.describe(),
    lambda d: BottleneckBranch(d["features"], d["size"], d["activation"], adapter=d["adapter"],
                               enabled=d["enabled"])))
