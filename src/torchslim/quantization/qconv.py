"""Weight-only quantized Conv2d (any torchslim format), and the geometry shared by quantized convs.

:class:`QuantConv2d` stores bit-packed codes of any :data:`~torchslim.quantization.formats.Format`
(int2..8, ternary, binary, NF4, codebooks) with per-tensor, per-channel or per-group scales, like
:class:`~torchslim.quantization.qlinear.QuantLinear` does for linears (a conv weight
``[out, in/groups, kh, kw]`` is quantized as the matrix ``[out, in/groups * kh * kw]``). There is
no fast kernel: every forward dequantizes the weight and calls ``F.conv2d``, so the layer saves
storage but runs slower than fp32, and its layer info says so (``slower_than_fp32: True``).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from torchslim.core.config import BaseConfig, config_from_dict
from torchslim.core.errors import ConfigError
from torchslim.core.modules import StandIn, register_module_format
from torchslim.quantization.formats import Format, Granularity, IntFormat, PerGroup, PerTensor
from torchslim.quantization.frozen_grad import frozen_conv2d, wants_grad
from torchslim.quantization.observers import group_range
from torchslim.quantization.packing import from_unsigned, unpack_bits
from torchslim.quantization.primitives import padded_cols, quantize_groups, to_groups
from torchslim.quantization.qlinear import fill_packed, signed_codes


@dataclass(frozen=True)
class ConvGeometry:
    """Shape and hyper-parameters of a 2-D convolution (zero padding, explicit per-side amounts)."""

    in_channels: int
    out_channels: int
    kernel_size: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]
    dilation: tuple[int, int]
    groups: int

    @classmethod
    def of(cls, conv: nn.Conv2d) -> ConvGeometry:
        if conv.padding_mode != "zeros":
            raise ConfigError(f"quantized Conv2d supports zero padding only, not padding_mode='{conv.padding_mode}'")
        pad = conv.padding
        if isinstance(pad, str):
            total = [d * (k - 1) for d, k in zip(conv.dilation, conv.kernel_size)]
            if pad == "same" and any(t % 2 for t in total):
                raise ConfigError("quantized Conv2d: padding='same' with an even kernel pads asymmetrically; "
                                  "pad explicitly instead")
            pad = tuple(t // 2 for t in total) if pad == "same" else (0, 0)
        return cls(conv.in_channels, conv.out_channels, tuple(conv.kernel_size), tuple(conv.stride), tuple(pad),
                   tuple(conv.dilation), conv.groups)

    @property
    def weight_shape(self) -> tuple[int, int, int, int]:
        return (self.out_channels, self.in_channels // self.groups, *self.kernel_size)

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ConvGeometry:
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})

    def conv_args(self) -> tuple[list[int], list[int], list[int], int]:
        return list(self.stride), list(self.padding), list(self.dilation), self.groups


@register_module_format
class QuantConv2d(StandIn, nn.Module):
    """Weight-only quantized Conv2d: packed codes + per-group scales; dequantize, then ``F.conv2d``."""

    kernel = "dequant + F.conv2d"

    def dense_weight(self) -> torch.Tensor:
        return self.dequantize()

    def __init__(self, geometry: ConvGeometry, bias: bool, fmt: Format, gran: Granularity,
                 config: BaseConfig | None = None):
        super().__init__()
        self.geometry, self.fmt, self.gran, self.config = geometry, fmt, gran, config
        rows = 1 if isinstance(gran, PerTensor) else geometry.out_channels
        self.cols = geometry.weight_shape[1] * geometry.kernel_size[0] * geometry.kernel_size[1]
        self.padded = padded_cols(self.cols, gran)
        n_groups = self.padded // gran.size if isinstance(gran, PerGroup) else 1
        numel = geometry.out_channels * self.padded
        self.register_buffer("packed", torch.zeros((numel * fmt.storage_bits + 7) // 8, dtype=torch.uint8))
        self.register_buffer("scale", torch.ones(rows, n_groups))
        asym, table = isinstance(fmt, IntFormat) and not fmt.symmetric, not isinstance(fmt, IntFormat)
        self.register_buffer("offset", torch.zeros(rows, n_groups) if asym else None)
        n_levels = {"ternary": 3, "binary": 2, "nf4": 16}.get(fmt.name, 2**fmt.storage_bits)
        self.register_buffer("levels", torch.zeros(n_levels) if table else None)
        self.bias = nn.Parameter(torch.zeros(geometry.out_channels)) if bias else None

    def codes(self) -> torch.Tensor:
        """Unpacked codes ``[out, padded cols]`` (int8 for symmetric ints, uint8 otherwise)."""
        bits = self.fmt.storage_bits
        u = unpack_bits(self.packed, bits, self.geometry.out_channels * self.padded)
        return from_unsigned(u, bits, signed_codes(self.fmt)).reshape(self.geometry.out_channels, self.padded)

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The dense weight this layer computes with, ``[out, in/groups, kh, kw]``."""
        c = self.codes()
        vals = self.levels[c.long()] if self.levels is not None else c.float()
        w = vals.reshape(self.scale.shape[0], self.scale.shape[1], -1) * self.scale.unsqueeze(-1)
        if self.offset is not None:
            w = w + self.offset.unsqueeze(-1)
        w = w.reshape(self.geometry.out_channels, self.padded)[:, : self.cols]
        return w.reshape(self.geometry.weight_shape).to(dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if wants_grad(x, self.bias):    # frozen under training: the dense weight is rebuilt in backward, not saved
            return frozen_conv2d(x, self._conv, self.dequantize, self.geometry.conv_args(), self.bias)
        return self._conv(x)

    def _conv(self, x: torch.Tensor) -> torch.Tensor:
        stride, pad, dil, groups = self.geometry.conv_args()
        bias = self.bias.to(x.dtype) if self.bias is not None else None
        return F.conv2d(x, self.dequantize(x.dtype), bias, stride, pad, dil, groups)

    def extra_repr(self) -> str:
        g = self.geometry
        return f"{g.in_channels}->{g.out_channels}, k={g.kernel_size}, {self.fmt.name} {type(self.gran).__name__}"

    def torchslim_layer_info(self) -> dict[str, Any]:
        gran = self.gran.to_dict()["_type"] + (f"({self.gran.size})" if isinstance(self.gran, PerGroup) else "")
        return {"technique": getattr(self.config, "technique", "rtn"),
                "config": self.config.to_dict() if self.config is not None else None,
                "storage": f"{self.fmt.name} {gran}", "format": self.fmt.to_dict(), "granularity": self.gran.to_dict(),
                "kernel": self.kernel, "kernel_note": "no fast kernel: the weight is dequantized on every call",
                "slower_than_fp32": True, "shape": list(self.geometry.weight_shape), "conv": self.geometry.to_dict(),
                "bias": self.bias is not None}

    @classmethod
    def from_layer_info(cls, original: nn.Module, info: dict[str, Any]) -> QuantConv2d:
        config = config_from_dict(info["config"]) if info.get("config") else None
        return cls(ConvGeometry.from_dict(info["conv"]), bool(info["bias"]), config_from_dict(info["format"]),
                   config_from_dict(info["granularity"]), config)


def quantize_conv_weight_only(conv: nn.Conv2d, config: Any) -> QuantConv2d:
    """Weight-only (RTN) :class:`QuantConv2d` of ``conv`` with ``config``'s format, granularity and observer."""
    if not isinstance(conv, nn.Conv2d):
        raise ConfigError(f"quantize_conv_weight_only needs an nn.Conv2d, got {type(conv).__name__}")
    kernel = getattr(getattr(config, "kernel", None), "value", "auto")
    if kernel not in ("auto", "dequant"):
        raise ConfigError(f"kernel {kernel} does not support Conv2d layers; use kernel=auto or dequant")
    geometry = ConvGeometry.of(conv)
    w = conv.weight.detach().float().reshape(geometry.out_channels, -1)
    g = to_groups(w, config.granularity)
    lo, hi = group_range(g, config.observer, config.format)
    qt = quantize_groups(g, config.format, lo, hi, w.shape)
    m = QuantConv2d(geometry, conv.bias is not None, config.format, config.granularity, config)
    fill_packed(m, qt)
    if conv.bias is not None:
        m.bias.data.copy_(conv.bias.detach().float())
    return m.to(conv.weight.device)
