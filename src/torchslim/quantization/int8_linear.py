"""W8A8 linear layers: int8 weights (per output channel) and int8 activations.

* :class:`Int8DynamicLinear`: activations quantized at run time **per token**. torch's
  ``quantized::linear_dynamic`` (fbgemm/oneDNN, VNNI/AMX) quantizes its input per tensor, so
  each row is first divided by its absmax and the output rows multiplied back: exact for a
  linear map, and it gives per-token precision with the fast per-tensor kernel.
* :class:`Int8StaticLinear`: activations quantized with a range fixed by calibration
  (full-integer W8A8), run by oneDNN's ``qlinear_pointwise`` with float output.

Both can carry SmoothQuant factors: the input is multiplied by ``smooth`` (= 1/s) and the
weight columns were multiplied by ``s`` before quantization.

Neither kernel has a backward: a forward that needs a gradient (adapters trained over a frozen W8A8 base)
runs the kernel through :func:`~torchslim.quantization.frozen_grad.frozen_linear`, whose gradient is the
dequantized float layer's (the input's rounding passed straight through) and which keeps no dense weight.
"""
from __future__ import annotations

import warnings
from typing import Any

import torch
from torch import nn

from torchslim.core.config import BaseConfig, config_from_dict
from torchslim.core.modules import StandIn, register_module_format
from torchslim.core.surgery import stacked_bias
from torchslim.quantization.frozen_grad import frozen_linear, wants_grad
from torchslim.quantization.kernels import act_bits_of, act_qmax, act_qparams, row_absmax


def quantize_weight_int8(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-output-channel symmetric int8: ``(codes [N, K] int8, scale [N])``."""
    scale = (w.detach().abs().amax(dim=1) / 127).clamp_min(1e-12).float()
    q = torch.clamp(torch.round(w.detach() / scale[:, None]), -128, 127).to(torch.int8)
    return q, scale


class _Int8Base(StandIn, nn.Module):
    kernel = ""

    def __init__(self, in_features: int, out_features: int, bias: bool, config: BaseConfig | None):
        super().__init__()
        self.in_features, self.out_features, self.config = in_features, out_features, config
        self.register_buffer("weight_int8", torch.zeros(out_features, in_features, dtype=torch.int8))
        self.register_buffer("weight_scale", torch.ones(out_features))
        self.register_buffer("smooth", torch.ones(in_features))
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None
        self.use_smooth = getattr(config, "smooth_alpha", None) is not None
        self._packed: Any = None

    @classmethod
    def from_linear(cls, lin: nn.Linear, config: BaseConfig | None, smooth: torch.Tensor | None = None, **kw):
        """Quantize ``lin``; with ``smooth`` (= 1/s), weight columns are scaled by ``s`` first."""
        m = cls(lin.in_features, lin.out_features, lin.bias is not None, config, **kw)
        w = lin.weight.detach().float()
        if smooth is not None:
            w = w / smooth[None, :]
            m.smooth.copy_(smooth)
            m.use_smooth = True
        q, s = quantize_weight_int8(w)
        m.weight_int8.copy_(q)
        m.weight_scale.copy_(s)
        if lin.bias is not None:
            m.bias.data.copy_(lin.bias.detach().float())
        return m

    @classmethod
    def concatenated(cls, layers: list["_Int8Base"]) -> "_Int8Base | str":
        """One layer whose outputs are the layers' outputs side by side (they must read the same input the
        same way: equal SmoothQuant factors, and for static layers equal activation ranges), or why not."""
        first = layers[0]
        if any(l.use_smooth != first.use_smooth or not torch.equal(l.smooth, first.smooth) for l in layers):
            return "their SmoothQuant factors differ, so the input would be scaled differently per layer"
        if any(not l._same_activation_grid(first) for l in layers):
            return "their activation ranges differ"
        bias = stacked_bias(layers)
        m = cls(first.in_features, sum(l.out_features for l in layers), bias is not None, first.config,
                **first._init_kwargs())
        m.weight_int8.copy_(torch.cat([l.weight_int8 for l in layers]))
        m.weight_scale.copy_(torch.cat([l.weight_scale for l in layers]))
        m.smooth.copy_(first.smooth)
        m.use_smooth = first.use_smooth
        m._copy_activation_grid(first)
        if bias is not None:
            m.bias.data.copy_(bias)
        return m

    def _init_kwargs(self) -> dict[str, Any]:
        return {}

    def _same_activation_grid(self, other: "_Int8Base") -> bool:
        return True

    def _copy_activation_grid(self, other: "_Int8Base") -> None:
        return None

    def __getstate__(self) -> dict[str, Any]:  # prepacked oneDNN/fbgemm weights cannot be copied
        return {**self.__dict__, "_packed": None}

    def dense_weight(self) -> torch.Tensor:
        """The float weight the layer computes with (SmoothQuant's input scaling folded back in)."""
        w = self.dequantized_weight()
        return w * self.smooth[None, :] if self.use_smooth else w

    def dequantized_weight(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The int8 codes times their scales, ``[out, in]`` (the weight the smoothed input meets)."""
        return (self.weight_int8.float() * self.weight_scale[:, None]).to(dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x2 = self._smoothed(x)
        if wants_grad(x2, self.bias):
            y = frozen_linear(x2, self._run, self.dequantized_weight, self.bias)
        else:
            y = self._run(x2)
        return y.to(x.dtype).reshape(*x.shape[:-1], self.out_features)

    def _run(self, x2: torch.Tensor) -> torch.Tensor:
        """The kernel on the smoothed 2-D float input, bias included."""
        raise NotImplementedError

    def _apply(self, fn, recurse=True):
        self._packed = None
        return super()._apply(fn, recurse)

    def _smoothed(self, x: torch.Tensor) -> torch.Tensor:
        x2 = x.reshape(-1, self.in_features).float()
        return x2 * self.smooth if self.use_smooth else x2

    def torchslim_layer_info(self) -> dict[str, Any]:
        return {"technique": getattr(self.config, "technique", "w8a8"),
                "config": self.config.to_dict() if self.config is not None else None,
                "storage": "int8 PerChannel", "kernel": self.kernel, "shape": [self.out_features, self.in_features],
                "slower_than_fp32": False, "smoothed": self.use_smooth}

    @classmethod
    def from_layer_info(cls, original: nn.Module, info: dict[str, Any]):
        out_f, in_f = info["shape"]
        config = config_from_dict(info["config"]) if info.get("config") else None
        m = cls(in_f, out_f, getattr(original, "bias", None) is not None, config)
        m.use_smooth = bool(info.get("smoothed", m.use_smooth))
        return m

    def extra_repr(self) -> str:
        return f"{self.in_features}->{self.out_features}, kernel={self.kernel}"


@register_module_format
class Int8DynamicLinear(_Int8Base):
    kernel = "quantized::linear_dynamic (per-token rows)"

    def _prepack(self) -> Any:
        if self._packed is None:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                qw = torch.quantize_per_channel(self.weight_int8.float() * self.weight_scale[:, None],
                                                self.weight_scale.double(), torch.zeros(self.out_features, dtype=torch.long),
                                                0, torch.qint8)
                self._packed = torch.ops.quantized.linear_prepack(qw, None)
        return self._packed

    def _run(self, x2: torch.Tensor) -> torch.Tensor:
        if torch.compiler.is_compiling():
            return self._int_mm_rows(x2)
        r = row_absmax(x2)
        y = torch.ops.quantized.linear_dynamic(x2 / r, self._prepack(), False)
        # one pass over the output for the row scales and the bias (addcmul: 2.5x faster than ``y * r + b``)
        return torch.addcmul(self.bias, y, r) if self.bias is not None else y.mul_(r)

    def _int_mm_rows(self, x2: torch.Tensor) -> torch.Tensor:
        """The same per-token W8A8 product in plain aten ops, for ``torch.compile``: each row quantized
        symmetrically to -127..127 (fbgemm's eager kernel rounds on an asymmetric 0..255 grid per row instead),
        ``torch._int_mm`` (int8 x int8 -> int32), one scaled epilogue. Inductor fuses the quantization into one
        kernel and the scales and bias into the GEMM's epilogue, which the fbgemm op cannot join."""
        r = row_absmax(x2) / 127
        xq = torch.round(x2 / r).to(torch.int8)
        y = torch._int_mm(xq, self.weight_int8.t()).float() * (r * self.weight_scale)
        return y + self.bias if self.bias is not None else y


@register_module_format
class Int8StaticLinear(_Int8Base):
    kernel = "onednn::qlinear_pointwise (static u8 x s8)"

    def __init__(self, in_features: int, out_features: int, bias: bool, config: BaseConfig | None, act_bits: int = 8):
        super().__init__(in_features, out_features, bias, config)
        self.register_buffer("act_scale", torch.ones(()))
        self.register_buffer("act_zero", torch.zeros((), dtype=torch.int32))
        self.act_bits = act_bits       # < 8: narrower activation codes (a QAT W4A4 model) run by the same kernel

    def act_qmax(self) -> int:
        return min(2**self.act_bits - 1, act_qmax())

    def torchslim_layer_info(self) -> dict[str, Any]:
        return {**super().torchslim_layer_info(), "act_bits": self.act_bits}

    def _init_kwargs(self) -> dict[str, Any]:
        return {"act_bits": self.act_bits}

    def _same_activation_grid(self, other: "_Int8Base") -> bool:
        return (self.act_bits == other.act_bits and torch.equal(self.act_scale, other.act_scale)
                and torch.equal(self.act_zero, other.act_zero))

    def _copy_activation_grid(self, other: "_Int8Base") -> None:
        self.act_scale.copy_(other.act_scale)
        self.act_zero.copy_(other.act_zero)

    @classmethod
    def from_layer_info(cls, original: nn.Module, info: dict[str, Any]):
        m = super().from_layer_info(original, info)
        m.act_bits = act_bits_of(info)
        return m

    def set_range(self, lo: float, hi: float) -> None:
        """Asymmetric uint8 activation range (always containing 0)."""
        scale, zero = act_qparams(lo, hi, self.act_qmax())
        self.act_scale.fill_(scale)
        self.act_zero.fill_(zero)

    def _run(self, x2: torch.Tensor) -> torch.Tensor:
        if self._packed is None:
            self._packed = torch.ops.onednn.qlinear_prepack(self.weight_int8, [x2.shape[0], self.in_features])
        scale, zp = float(self.act_scale), int(self.act_zero)
        qx = torch.clamp(torch.round(x2 / scale) + zp, 0, self.act_qmax()).to(torch.uint8)
        return torch.ops.onednn.qlinear_pointwise(
            qx, scale, zp, self._packed, self.weight_scale, torch.zeros(self.out_features, dtype=torch.long),
            self.bias, 1.0, 0, torch.float32, "none", [None], "")
