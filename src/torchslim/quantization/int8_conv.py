"""Static W8A8 Conv2d on oneDNN, and the conversion functions for quantized convs.

:class:`Int8StaticConv2d`: int8 weights (symmetric, per output channel) and uint8 activations
with one calibrated scale and zero point per tensor, run by ``onednn::qconv2d_pointwise`` (the op
torch inductor's x86 quantizer lowers to) with float output. It can also apply the ReLU that
follows it and emit uint8 at the next int8 conv's input scale, so that conv skips quantizing
(see :func:`torchslim.quantization.fuse_int8_relu_`); both are exact rewrites.

:func:`convert_conv` builds it from an ``nn.Conv2d`` (or a BN-folded
:class:`~torchslim.transforms.FoldedConv2d`) and calibration statistics gathered by
:func:`conv_input_stats`; :func:`quantize_conv_weight_only` builds the weight-only
:class:`~torchslim.quantization.qconv.QuantConv2d` (any format; slower than fp32).
"""
from __future__ import annotations

import warnings
from typing import Any

import torch
from torch import nn

from torchslim.calibration.stats import ChannelStats
from torchslim.core.config import BaseConfig, config_from_dict
from torchslim.core.errors import ConfigError, TorchSlimError
from torchslim.core.modules import StandIn, register_module_format
from torchslim.quantization.frozen_grad import frozen_conv2d, wants_grad
from torchslim.quantization.kernels import act_bits_of, act_qmax, act_qparams
from torchslim.quantization.observers import MinMax, static_range
from torchslim.quantization.qconv import ConvGeometry, QuantConv2d, quantize_conv_weight_only


class ConvChannelStats(ChannelStats):
    """:class:`ChannelStats` of a conv's input ``[N, C, H, W]``: one channel per ``C``, rows over N, H, W."""

    def add_batch(self, x: torch.Tensor) -> None:
        super().add_batch(x.detach().movedim(1, -1))


def conv_input_stats(conv: nn.Conv2d) -> ChannelStats:
    """The statistics object static calibration feeds this conv's inputs to."""
    return ConvChannelStats(conv.in_channels)


_QUIET = False


def quantize_u8(x: torch.Tensor, scale: float, zero: int) -> torch.Tensor:
    """``clamp(round(x / scale) + zero, 0, 255)`` as uint8 (torch's fused quantizer, else plain ops)."""
    global _QUIET
    x = x.float()
    try:
        if _QUIET:
            return torch.quantize_per_tensor(x, scale, zero, torch.quint8).int_repr()
        with warnings.catch_warnings():  # torch warns once that quantized dtypes are deprecated
            warnings.simplefilter("ignore")
            q = torch.quantize_per_tensor(x, scale, zero, torch.quint8).int_repr()
        _QUIET = True
        return q
    except (AttributeError, RuntimeError):  # quantized dtypes gone in a future torch
        return torch.mul(x, 1.0 / scale).round_().add_(zero).clamp_(0, 255).to(torch.uint8)


@register_module_format
class Int8StaticConv2d(StandIn, nn.Module):
    """Static W8A8 Conv2d (oneDNN). Build with :func:`convert_conv`; a uint8 input is taken as already quantized."""

    kernel = "onednn::qconv2d_pointwise (static u8 x s8)"

    def dense_weight(self) -> torch.Tensor:
        return self.dequantized_weight()

    def __init__(self, geometry: ConvGeometry, bias: bool, config: BaseConfig | None = None,
                 fused_relu: bool = False, uint8_output: bool = False, act_bits: int = 8):
        super().__init__()
        self.geometry, self.config, self.act_bits = geometry, config, act_bits
        self.fused_relu, self.uint8_output = fused_relu, uint8_output
        self.register_buffer("weight_int8", torch.zeros(geometry.weight_shape, dtype=torch.int8))
        self.register_buffer("weight_scale", torch.ones(geometry.out_channels))
        self.register_buffer("act_scale", torch.ones(()))
        self.register_buffer("act_zero", torch.zeros((), dtype=torch.int32))
        self.register_buffer("out_scale", torch.ones(()))   # used with uint8 output only
        self.register_buffer("out_zero", torch.zeros((), dtype=torch.int32))
        self.bias = nn.Parameter(torch.zeros(geometry.out_channels)) if bias else None
        self._cache: dict[str, Any] = {}

    @classmethod
    def from_conv(cls, conv: nn.Conv2d, config: BaseConfig | None = None) -> Int8StaticConv2d:
        """Per-output-channel symmetric int8 weights of ``conv`` (activation range still to set)."""
        m = cls(ConvGeometry.of(conv), conv.bias is not None, config)
        w = conv.weight.detach().float()
        scale = (w.abs().amax(dim=(1, 2, 3)) / 127).clamp_min(1e-12)
        m.weight_int8.copy_(torch.clamp(torch.round(w / scale[:, None, None, None]), -128, 127).to(torch.int8))
        m.weight_scale.copy_(scale)
        if conv.bias is not None:
            m.bias.data.copy_(conv.bias.detach().float())
        return m

    def act_qmax(self) -> int:
        """Largest activation code: :func:`act_qmax`, or fewer for narrower activations (QAT W4A4)."""
        return min(2**self.act_bits - 1, act_qmax())

    def set_range(self, lo: float, hi: float) -> None:
        """Calibrated input range: uint8 scale and zero point covering ``[lo, hi]`` (and 0)."""
        scale, zero = act_qparams(lo, hi, self.act_qmax())
        self.act_scale.fill_(scale)
        self.act_zero.fill_(zero)
        self._cache = {}

    def fuse_relu(self) -> None:
        """Apply a following ReLU inside the kernel (the caller removes the ReLU module)."""
        self.fused_relu = True
        self._cache = {}

    def set_uint8_output(self, scale: float, zero: int) -> None:
        """Emit uint8 at ``(scale, zero)`` (the next int8 conv's input parameters) instead of float."""
        self.uint8_output = True
        self.out_scale.fill_(scale)
        self.out_zero.fill_(zero)
        self._cache = {}

    def dequantized_weight(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return (self.weight_int8.float() * self.weight_scale[:, None, None, None]).to(dtype)

    def _prepared(self) -> dict[str, Any]:
        if not self._cache:
            stride, pad, dil, groups = self.geometry.conv_args()
            x_scale, x_zero = float(self.act_scale), int(self.act_zero)
            self._cache = {
                "w": torch.ops.onednn.qconv_prepack(self.weight_int8, self.weight_scale, x_scale, x_zero,
                                                    stride, pad, dil, groups, None),
                "x": (x_scale, x_zero), "w_zero": torch.zeros(self.geometry.out_channels, dtype=torch.long),
                "out": (float(self.out_scale), int(self.out_zero), torch.uint8) if self.uint8_output
                else (1.0, 0, torch.float32),
            }
        return self._cache

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.uint8_output:          # integer codes out: no gradient can leave this layer
            if x.requires_grad and torch.is_grad_enabled():
                raise TorchSlimError("an int8 conv chained in uint8 (fuse_int8_relu_) cannot pass gradients: its "
                                     "output is integer codes; train the model before fusing, or run it under no_grad")
        elif wants_grad(x, self.bias):  # oneDNN has no backward: the dequantized conv's gradient, no dense weight kept
            return frozen_conv2d(x, self._run, self.dequantized_weight, self.geometry.conv_args(), self.bias,
                                 relu=self.fused_relu)
        return self._run(x)

    def _run(self, x: torch.Tensor) -> torch.Tensor:
        c = self._prepared()
        x_scale, x_zero = c["x"]
        # float input: codes above act_qmax() (inputs beyond the calibrated range) would saturate without VNNI
        qx = x if x.dtype == torch.uint8 else quantize_u8(x, x_scale, x_zero).clamp_(max=self.act_qmax())
        stride, pad, dil, groups = self.geometry.conv_args()
        y = torch.ops.onednn.qconv2d_pointwise(
            qx, x_scale, x_zero, c["w"], self.weight_scale, c["w_zero"], self.bias, stride, pad, dil, groups,
            *c["out"], "relu" if self.fused_relu else "none", [None] if self.fused_relu else [], "")
        return y if self.uint8_output or x.dtype == torch.uint8 else y.to(x.dtype)

    def _apply(self, fn, recurse=True):  # .to(): drop the packed weight
        self._cache = {}
        return super()._apply(fn, recurse)

    def __getstate__(self) -> dict[str, Any]:  # deepcopy: the packed oneDNN weight cannot be copied
        return {**self.__dict__, "_cache": {}}

    def _load_from_state_dict(self, *args: Any, **kwargs: Any) -> None:
        self._cache = {}
        super()._load_from_state_dict(*args, **kwargs)

    def extra_repr(self) -> str:
        g = self.geometry
        extra = (", relu" if self.fused_relu else "") + (", uint8 out" if self.uint8_output else "")
        return f"{g.in_channels}->{g.out_channels}, k={g.kernel_size}, s={g.stride}{extra}, kernel={self.kernel}"

    def torchslim_layer_info(self) -> dict[str, Any]:
        return {"technique": getattr(self.config, "technique", "w8a8"),
                "config": self.config.to_dict() if self.config is not None else None,
                "storage": "int8 PerChannel", "kernel": self.kernel, "activations": "uint8 PerTensor (static)",
                "shape": list(self.geometry.weight_shape), "conv": self.geometry.to_dict(),
                "bias": self.bias is not None, "fused_relu": self.fused_relu,
                "output": "uint8" if self.uint8_output else "float32", "slower_than_fp32": False,
                "act_bits": self.act_bits,
                "kernel_note": "about 35 us fixed cost per call: tiny feature maps at batch 1 can run slower than fp32"}

    @classmethod
    def from_layer_info(cls, original: nn.Module, info: dict[str, Any]) -> Int8StaticConv2d:
        config = config_from_dict(info["config"]) if info.get("config") else None
        return cls(ConvGeometry.from_dict(info["conv"]), bool(info["bias"]), config,
                   bool(info.get("fused_relu")), info.get("output") == "uint8", act_bits_of(info))


# -- conversion -----------------------------------------------------------------------------
def convert_conv(conv: nn.Conv2d, config: Any, stats: ChannelStats | None) -> nn.Module:
    """Static W8A8 replacement of ``conv`` (``config``: a ``W8A8Config`` with ``mode=static``).

    ``stats`` are the calibration statistics of the conv's input (:func:`conv_input_stats`); the
    activation range comes from them with ``config.observer``, as for linear layers.
    """
    if not isinstance(conv, nn.Conv2d):
        raise ConfigError(f"convert_conv needs an nn.Conv2d, got {type(conv).__name__}")
    if getattr(config, "mode", "static") != "static":
        raise ConfigError("W8A8 on Conv2d layers needs mode=static (dynamic per-token activations are for linears)")
    if getattr(config, "smooth_alpha", None) is not None:
        raise ConfigError("SmoothQuant (smooth_alpha) applies to linear layers; give Conv2d layers a config without it")
    if stats is None or stats.count == 0:
        raise ConfigError("static W8A8 on a Conv2d needs calibration statistics of its input")
    if conv.weight.device.type != "cpu":
        raise ConfigError("static int8 Conv2d runs on CPU (oneDNN): move the model to the CPU before quantizing")
    m = Int8StaticConv2d.from_conv(conv, config)
    m.set_range(*static_range(stats, None, getattr(config, "observer", MinMax())))
    return m


__all__ = ["ConvChannelStats", "ConvGeometry", "Int8StaticConv2d", "QuantConv2d", "act_qparams", "conv_input_stats",
           "convert_conv", "quantize_conv_weight_only", "quantize_u8"]
