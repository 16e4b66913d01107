"""FP16 / BF16 weights: the simplest quantization, stored and computed in the half dtype.

Selected ``nn.Linear`` layers become :class:`CastLinear`: weights stored in ``dtype``;
the input is cast to ``dtype``, ``F.linear`` runs in ``dtype`` (on this kind of CPU bf16 uses
AMX through oneDNN) and the output is cast back to the input's dtype, so the rest of the
model is untouched.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from torchslim.core.config import BaseConfig, config_from_dict
from torchslim.core.errors import ConfigError
from torchslim.core.modules import register_module_format
from torchslim.core.registry import register_handler
from torchslim.core.select import Selector
from torchslim.core.surgery import replace_module

_HALF = (torch.float16, torch.bfloat16)


@dataclass
class CastConfig(BaseConfig):
    """Store and run the selected linear layers in ``dtype`` (``torch.bfloat16`` or ``torch.float16``)."""

    family = "quantization"
    dtype: torch.dtype = torch.bfloat16
    selector: Selector = field(default_factory=Selector)

    def validate(self) -> None:
        if self.dtype not in _HALF:
            raise ConfigError(f"CastConfig.dtype must be bfloat16 or float16, got {self.dtype}")


@register_module_format
class CastLinear(nn.Linear):
    """An ``nn.Linear`` whose weights live in a half dtype."""

    def __init__(self, in_features: int, out_features: int, bias: bool, dtype: torch.dtype, config: CastConfig):
        super().__init__(in_features, out_features, bias=bias, dtype=dtype)
        self.config = config

    @classmethod
    def from_linear(cls, linear: nn.Linear, config: CastConfig) -> CastLinear:
        new = cls(linear.in_features, linear.out_features, linear.bias is not None, config.dtype, config)
        with torch.no_grad():
            new.weight.copy_(linear.weight)
            if linear.bias is not None:
                new.bias.copy_(linear.bias)
        return new

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x.to(self.weight.dtype), self.weight, self.bias).to(x.dtype)

    def torchslim_layer_info(self) -> dict[str, Any]:
        dt = str(self.weight.dtype).removeprefix("torch.")
        return {"technique": "cast", "config": self.config.to_dict(), "storage": dt, "kernel": f"aten.linear[{dt}]"}

    @classmethod
    def from_layer_info(cls, original: nn.Module, info: dict[str, Any]) -> CastLinear:
        config = config_from_dict(info["config"], expected=CastConfig)
        return cls(original.in_features, original.out_features, original.bias is not None, config.dtype, config)


@register_handler(CastConfig)
def _cast(model: nn.Module, config: CastConfig, **_: Any) -> nn.Module:
    for name, module, layer_config in list(config.selector.resolve(model, config)):
        if type(module) is not nn.Linear:
            raise ConfigError(f"CastConfig applies to nn.Linear layers; '{name}' is a {type(module).__name__}")
        replace_module(model, name, CastLinear.from_linear(module, layer_config))
    return model
