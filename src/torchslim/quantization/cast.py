"""FP16 / BF16 weights: the simplest quantization, stored and computed in the half dtype.

Selected ``nn.Linear`` layers become :class:`CastLinear`: weights stored in ``dtype``;
the input is cast to ``dtype``, ``F.linear`` runs in ``dtype`` (on this kind of CPU bf16 uses
AMX through oneDNN) and the output is cast back to the input's dtype, so the rest of the
model is untouched. Selected ``nn.Embedding`` layers become :class:`CastEmbedding` (half
storage, float output). Weights shared between layers (tied embeddings) stay shared.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from torchslim.core.config import BaseConfig, config_from_dict
from torchslim.core.context import ApplyContext
from torchslim.core.errors import ConfigError
from torchslim.core.linear import LinearLike, canonical_linear_
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
    selector: Selector = field(default_factory=lambda: Selector(include=(LinearLike, nn.Embedding)))

    def validate(self) -> None:
        if self.dtype not in _HALF:
            raise ConfigError(f"CastConfig.dtype must be bfloat16 or float16, got {self.dtype}")


@register_module_format
class CastLinear(nn.Linear):
    """An ``nn.Linear`` whose weights live in a half dtype."""

    def __init__(self, in_features: int, out_features: int, bias: bool, dtype: torch.dtype, config: CastConfig):
        super().__init__(in_features, out_features, bias=bias, dtype=dtype)
        self.config = config

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x.to(self.weight.dtype), self.weight, self.bias).to(x.dtype)

    def torchslim_layer_info(self) -> dict[str, Any]:
        dt = str(self.weight.dtype).removeprefix("torch.")
        return {"technique": "cast", "config": self.config.to_dict(), "storage": dt, "kernel": f"aten.linear[{dt}]"}

    @classmethod
    def from_layer_info(cls, original: nn.Module, info: dict[str, Any]) -> CastLinear:
        config = config_from_dict(info["config"], expected=CastConfig)
        return cls(original.in_features, original.out_features, original.bias is not None, config.dtype, config)


@register_module_format
class CastEmbedding(nn.Embedding):
    """An ``nn.Embedding`` whose table lives in a half dtype; lookups are returned as float32."""

    def __init__(self, num_embeddings: int, embedding_dim: int, padding_idx: int | None, dtype: torch.dtype,
                 config: CastConfig):
        super().__init__(num_embeddings, embedding_dim, padding_idx=padding_idx, dtype=dtype)
        self.config = config

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return super().forward(ids).float()

    def torchslim_layer_info(self) -> dict[str, Any]:
        dt = str(self.weight.dtype).removeprefix("torch.")
        return {"technique": "cast", "config": self.config.to_dict(), "storage": dt, "kernel": f"aten.embedding[{dt}]"}

    @classmethod
    def from_layer_info(cls, original: nn.Module, info: dict[str, Any]) -> CastEmbedding:
        config = config_from_dict(info["config"], expected=CastConfig)
        return cls(original.num_embeddings, original.embedding_dim, original.padding_idx, config.dtype, config)


_CASTS = {nn.Linear: CastLinear, nn.Embedding: CastEmbedding}


def _cast_module(module: nn.Module, config: CastConfig) -> nn.Module:
    if isinstance(module, nn.Linear):
        return CastLinear(module.in_features, module.out_features, module.bias is not None, config.dtype, config)
    return CastEmbedding(module.num_embeddings, module.embedding_dim, module.padding_idx, config.dtype, config)


@register_handler(CastConfig)
def _cast(model: nn.Module, config: CastConfig, ctx: ApplyContext) -> nn.Module:
    converted: dict[int, nn.Parameter] = {}  # id(original weight) -> its half copy, to keep ties
    chosen = list(config.selector.resolve(model, config))
    if not chosen:
        raise ConfigError("CastConfig: the selector matched no layer")
    for name, module, layer_config in chosen:
        module = canonical_linear_(model, name)
        if type(module) not in _CASTS:
            raise ConfigError(f"CastConfig applies to nn.Linear and nn.Embedding; '{name}' is a {type(module).__name__}")
        new = _cast_module(module, layer_config)
        with torch.no_grad():
            shared = converted.get(id(module.weight))
            if shared is not None and shared.dtype == layer_config.dtype:
                new.weight = shared
            else:
                new.weight.copy_(module.weight)
                converted[id(module.weight)] = new.weight
            if getattr(module, "bias", None) is not None:
                new.bias.copy_(module.bias)
        replace_module(model, name, new)
    return model
