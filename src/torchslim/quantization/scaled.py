"""``ScaledLinear``: a float linear layer after an equivalence scaling (AWQ's search without quantizing).

It stores ``W * s`` and multiplies its input by ``input_scale = 1/s``: the same function as the
original layer, with salient input channels enlarged so that a *later* quantization stage
(round-to-nearest or GPTQ) rounds them more finely. Quantizers keep ``input_scale`` in the
quantized layer; GPTQ transforms its Hessian to the scaled inputs (``H' = D H D``, ``D = diag(1/s)``).
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from torchslim.core.config import BaseConfig, config_from_dict
from torchslim.core.modules import register_module_format


@register_module_format
class ScaledLinear(nn.Module):
    """``F.linear(x * input_scale, weight, bias)`` in floating point."""

    stands_for = nn.Linear

    def __init__(self, in_features: int, out_features: int, bias: bool, config: BaseConfig | None = None) -> None:
        super().__init__()
        self.in_features, self.out_features, self.config = in_features, out_features, config
        self.weight = nn.Parameter(torch.zeros(out_features, in_features))
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None
        self.register_buffer("input_scale", torch.ones(in_features))

    @classmethod
    def from_linear(cls, lin: nn.Linear, scale: torch.Tensor, config: BaseConfig | None = None) -> ScaledLinear:
        """``lin`` with its weight columns multiplied by ``scale`` and its input by ``1 / scale``."""
        m = cls(lin.in_features, lin.out_features, lin.bias is not None, config).to(lin.weight.device)
        with torch.no_grad():
            m.weight.copy_(lin.weight.float() * scale.to(lin.weight.device))
            m.input_scale.copy_(1.0 / scale)
            if lin.bias is not None:
                m.bias.copy_(lin.bias)
        return m

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x * self.input_scale.to(x.dtype), self.weight.to(x.dtype),
                        None if self.bias is None else self.bias.to(x.dtype))

    def torchslim_layer_info(self) -> dict[str, Any]:
        info: dict[str, Any] = {"technique": "awq-scale", "storage": "float32, input-scaled",
                                "kernel": "aten.linear + input scale"}
        if self.config is not None:
            info["config"] = self.config.to_dict()
        return info

    @classmethod
    def from_layer_info(cls, original: nn.Module, info: dict[str, Any]) -> ScaledLinear:
        config = config_from_dict(info["config"]) if info.get("config") else None
        return cls(original.in_features, original.out_features, original.bias is not None, config)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, input-scaled"


def input_scale_of(module: nn.Module) -> torch.Tensor | None:
    """The ``1/s`` input scaling of an equivalence-scaled layer, else ``None``."""
    return module.input_scale if isinstance(module, ScaledLinear) else None
