"""``LowRankLinear``: a linear layer as two smaller ones, ``in -> rank -> out``.

The two factors are ordinary ``nn.Linear`` children, ``down`` (``[rank, in]``, no bias) and ``up``
(``[out, rank]``, the original bias), so everything that works on linear layers works on them unchanged:
quantizers select them (``quantize_`` after ``factorize_`` packs both factors on the int4/int8 kernels), LoRA
adapts them, distillation and fine-tuning train them. The module itself is therefore *not* a stand-in for
``nn.Linear`` (no ``stands_for``): a type rule selects its factors, never the pair, so nothing quantizes or
factorizes the pair as if it were one dense layer.

Artifacts record ``rank``, the shapes and the speed measured at conversion; loading rebuilds an empty pair whose
children are then filled (or themselves rebuilt as quantized layers from their own records).
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from torchslim.core.config import BaseConfig, config_from_dict
from torchslim.core.errors import ArtifactError, ConfigError
from torchslim.core.modules import register_module_format
from torchslim.lowrank.math import Factors


def _matrix(factor: nn.Module) -> torch.Tensor:
    """The float ``[out, in]`` matrix a factor applies to its raw input: its weight (a packed layer's float view of
    it), times the input scale an equivalence-scaled or AWQ-quantized layer applies first."""
    w = factor.weight.detach().float()
    scale = getattr(factor, "input_scale", None)
    return w * scale.detach().float() if isinstance(scale, torch.Tensor) else w


@register_module_format
class LowRankLinear(nn.Module):
    """``up(down(x))``: ``rank * (in + out)`` weights instead of ``in * out``."""

    # No single weight matrix. Model code that inspects a layer's weight guards with isinstance(..., Tensor) (T5 reads
    # ``wo.weight.dtype`` on every forward): None says "none here" and keeps the pair from looking like one dense
    # layer to adapters and exporters (they reach the two factors instead).
    weight = None

    def __init__(self, in_features: int, out_features: int, rank: int, bias: bool = True, *,
                 config: BaseConfig | None = None, method: str = "svd", speed: dict[str, Any] | None = None,
                 dtype: torch.dtype | None = None, device: torch.device | str | None = None) -> None:
        super().__init__()
        if not 1 <= rank <= min(in_features, out_features):
            raise ConfigError(f"LowRankLinear rank must be between 1 and {min(in_features, out_features)}, "
                              f"got {rank}")
        self.in_features, self.out_features = in_features, out_features
        self.config, self.method, self.speed = config, method, speed
        self.down = nn.Linear(in_features, rank, bias=False, dtype=dtype, device=device)
        self.up = nn.Linear(rank, out_features, bias=bias, dtype=dtype, device=device)

    @property
    def rank(self) -> int:
        return self.down.out_features

    @classmethod
    def from_factors(cls, factors: Factors, bias: torch.Tensor | None, *, config: BaseConfig | None = None,
                     method: str = "svd", like: torch.Tensor | None = None) -> LowRankLinear:
        """A layer computing ``x @ (up @ down)^T + bias``, with the dtype and device of ``like`` (the replaced
        weight; default float32 on CPU)."""
        dtype = like.dtype if like is not None else torch.float32
        device = like.device if like is not None else None
        (out_f, rank), in_f = factors.up.shape, factors.down.shape[1]
        m = cls(in_f, out_f, rank, bias is not None, config=config, method=method, dtype=dtype, device=device)
        with torch.no_grad():
            m.down.weight.copy_(factors.down)
            m.up.weight.copy_(factors.up)
            if bias is not None:
                m.up.bias.copy_(bias)
        return m

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.down.weight if type(self.down) is nn.Linear else None
        if w is not None and x.dtype != w.dtype and x.is_floating_point():   # a pair kept in fp32 in a half model
            return self.up(self.down(x.to(w.dtype))).to(x.dtype)
        return self.up(self.down(x))

    @property
    def params(self) -> int:
        return self.rank * (self.in_features + self.out_features)

    @property
    def dense_params(self) -> int:
        return self.in_features * self.out_features

    @property
    def bias(self) -> torch.Tensor | None:
        """The output bias (the ``up`` factor's)."""
        b = getattr(self.up, "bias", None)
        return b if isinstance(b, torch.Tensor) else None

    def to_linear(self) -> nn.Linear:
        """The dense float ``nn.Linear`` computing what the pair computes (factors quantized later included: their
        dequantized weights), e.g. for an export to a format that has no low-rank layer."""
        up, down = _matrix(self.up), _matrix(self.down)
        dtype = self.down.weight.dtype if type(self.down) is nn.Linear else torch.float32
        lin = nn.Linear(self.in_features, self.out_features, self.bias is not None, device=up.device, dtype=dtype)
        with torch.no_grad():
            lin.weight.copy_((up.double() @ down.double()).to(dtype))
            if self.bias is not None:
                lin.bias.copy_(self.bias)
        return lin.train(self.training)

    def extra_repr(self) -> str:
        return f"{self.in_features}->{self.rank}->{self.out_features}, method={self.method}"

    # -- artifact ------------------------------------------------------------------------
    def torchslim_layer_info(self) -> dict[str, Any]:
        speed = self.speed or {}
        faster = speed.get("faster")
        note = speed.get("note") or "speed not measured"
        return {
            "technique": f"lowrank-{self.method}",
            "config": self.config.to_dict() if self.config is not None else None,
            "storage": f"two factors: down [{self.rank}, {self.in_features}], up [{self.out_features}, {self.rank}]",
            "kernel": "two matmuls" if faster is not False else "two matmuls (smaller, not faster)",
            "kernel_note": note,
            "kernel_faster": faster,
            "method": self.method,
            "rank": self.rank,
            "in_features": self.in_features,
            "out_features": self.out_features,
            "bias": self.bias is not None,
            "dtype": str(self.down.weight.dtype).removeprefix("torch."),
            "params": self.params,
            "dense_params": self.dense_params,
            "speed": speed or None,
        }

    @classmethod
    def from_layer_info(cls, original: nn.Module, info: dict[str, Any]) -> LowRankLinear:
        """An empty pair with the saved rank, shapes and dtype (the state dict fills it). The shapes must be those of
        the layer it replaces, so a record cannot ask for more memory than the dense layer holds."""
        try:
            in_f, out_f, rank = int(info["in_features"]), int(info["out_features"]), int(info["rank"])
            geometry = (getattr(original, "in_features", None), getattr(original, "out_features", None))
            if geometry != (in_f, out_f):
                raise ValueError(f"it records a [{out_f}, {in_f}] layer where the model has a {type(original).__name__}"
                                 f" {list(geometry[::-1])}")
            dtype = getattr(torch, str(info.get("dtype", "float32")), None)
            if not isinstance(dtype, torch.dtype):
                raise ValueError(f"unknown dtype {info.get('dtype')!r}")
            config = config_from_dict(info["config"]) if info.get("config") else None
            speed = info.get("speed") if isinstance(info.get("speed"), dict) else None
            return cls(in_f, out_f, rank, bool(info.get("bias", True)), config=config,
                       method=str(info.get("method", "svd")), speed=speed, dtype=dtype)
        except (KeyError, ValueError, TypeError, ConfigError) as e:
            raise ArtifactError(f"invalid LowRankLinear layer info ({e})") from None
