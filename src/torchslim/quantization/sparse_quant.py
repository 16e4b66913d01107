"""``SparseQuantLinear``: pruned *and* quantized. Only the kept weights are stored, as symmetric
per-channel integer codes (8 or 4 bits) under the pruning bitmask, so the artifact shrinks with
both sparsity and bit width, and its manifest records both techniques.

At run time the codes are expanded once into a weight-only quantized layer
(:class:`~torchslim.quantization.qlinear.QuantLinear`) and its kernel runs (int8: torch's
``_weight_int8pack_mm``); pruned weights are exact zeros there. Built by ``quantize_`` with a
:class:`~torchslim.quantization.WeightOnlyConfig` on a model that holds pruned layers (pruning's SparseLinear,
read through its ``weight``, ``mask``, ``bias``, ``pattern`` and ``config``: this family does not import pruning).
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from torchslim.core.bits import pack_mask, unpack_mask
from torchslim.core.config import BaseConfig, config_from_dict
from torchslim.core.errors import ConfigError
from torchslim.core.modules import StandIn, register_module_format
from torchslim.quantization.formats import IntFormat, PerChannel
from torchslim.quantization.kernels import Kernel, choose
from torchslim.quantization.packing import from_unsigned, pack_bits, packed_numel, to_unsigned, unpack_bits
from torchslim.quantization.primitives import QTensor
from torchslim.quantization.qlinear import QuantLinear


def check_scheme(cfg: Any) -> IntFormat:
    """The weight-only schemes a sparse layer supports: symmetric 4/8-bit integers per channel (RTN)."""
    fmt = getattr(cfg, "format", None)
    if not (isinstance(fmt, IntFormat) and fmt.symmetric and fmt.bits in (4, 8)
            and isinstance(cfg.granularity, PerChannel)):
        raise ConfigError("a pruned (sparse) layer quantizes with symmetric int8 or int4 per-channel weights "
                          "(WeightOnlyConfig(format=IntFormat(8), granularity=PerChannel())), so that pruned "
                          "weights stay exactly zero")
    return fmt


@register_module_format
class SparseQuantLinear(StandIn, nn.Module):
    def __init__(self, in_features: int, out_features: int, bias: bool, bits: int, nnz: int,
                 pattern: str | None = None, config: BaseConfig | None = None,
                 prune_config: BaseConfig | None = None, kernel: Kernel = Kernel.AUTO):
        super().__init__()
        self.in_features, self.out_features, self.bits, self.nnz = in_features, out_features, bits, nnz
        self.pattern, self.config, self.prune_config = pattern, config, prune_config
        self.fmt = IntFormat(bits, symmetric=True)
        self.register_buffer("codes", torch.zeros(packed_numel(nnz, bits), dtype=torch.uint8))
        self.register_buffer("scale", torch.ones(out_features))
        self.register_buffer("mask_bits", torch.zeros((out_features * in_features + 7) // 8, dtype=torch.uint8))
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None
        self.choice = choose(self.fmt, PerChannel(), in_features, "cpu", kernel)
        self._inner: list[QuantLinear] = []       # derived at first use, never saved

    @classmethod
    def from_sparse(cls, sparse: nn.Module, cfg: BaseConfig) -> SparseQuantLinear:
        """Quantize a SparseLinear's kept weights by round-to-nearest, per output channel."""
        fmt = check_scheme(cfg)
        w, mask = sparse.weight.detach().float() * sparse.mask, sparse.mask
        qmax = 2 ** (fmt.bits - 1) - 1
        scale = (w.abs().amax(1) / qmax).clamp_min(1e-12)
        q = torch.clamp(torch.round(w / scale[:, None]), -qmax - 1, qmax).to(torch.int8)
        m = cls(sparse.in_features, sparse.out_features, sparse.bias is not None, fmt.bits, int(mask.sum()),
                sparse.pattern, cfg, sparse.config, cfg.kernel)
        m.codes.copy_(pack_bits(to_unsigned(q[mask], fmt.bits, True), fmt.bits))
        m.scale.copy_(scale)
        m.mask_bits.copy_(pack_mask(mask))
        if sparse.bias is not None:
            m.bias.data.copy_(sparse.bias.detach().float())
        return m

    def mask(self) -> torch.Tensor:
        return unpack_mask(self.mask_bits, (self.out_features, self.in_features))

    def dense_codes(self) -> torch.Tensor:
        """``[out, in]`` int8 codes with zeros at pruned positions."""
        vals = from_unsigned(unpack_bits(self.codes, self.bits, self.nnz), self.bits, True)
        dense = torch.zeros(self.out_features, self.in_features, dtype=torch.int8)
        dense[self.mask()] = vals
        return dense

    def dense_weight(self) -> torch.Tensor:
        return self.dequantize()

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return (self.dense_codes().float() * self.scale[:, None]).to(dtype)

    def _quant_linear(self) -> QuantLinear:
        if not self._inner:
            qt = QTensor(self.dense_codes().reshape(self.out_features, 1, -1), self.scale.reshape(-1, 1, 1),
                         None, None, self.fmt, torch.Size((self.out_features, self.in_features)))
            # without the bias: this layer adds its own, so a trained bias gets its gradient and stays current
            self._inner.append(QuantLinear.from_qtensor(qt, PerChannel(), None, self.choice.kernel, self.config))
        return self._inner[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self._quant_linear()(x)        # a frozen packed layer: gradients reach x, no dense weight is kept
        return y + self.bias.to(y.dtype) if self.bias is not None else y

    def _apply(self, fn, recurse=True):
        self._inner = []
        return super()._apply(fn, recurse)

    def extra_repr(self) -> str:
        return (f"{self.in_features}->{self.out_features}, int{self.bits} per-channel, "
                f"sparsity {1 - self.nnz / (self.in_features * self.out_features):.2f}, kernel={self.choice.kernel.value}")

    def torchslim_layer_info(self) -> dict[str, Any]:
        return {
            "technique": f"{getattr(self.prune_config, 'technique', 'pruned')}+{getattr(self.config, 'technique', 'rtn')}",
            "config": self.config.to_dict() if self.config is not None else None,
            "prune_config": self.prune_config.to_dict() if self.prune_config is not None else None,
            "storage": f"int{self.bits} codes of kept weights + bitmask",
            "shape": [self.out_features, self.in_features], "bits": self.bits, "nnz": self.nnz,
            "sparsity": 1 - self.nnz / (self.in_features * self.out_features), "pattern": self.pattern,
            "kernel": self.choice.kernel.value, "kernel_note": self.choice.reason,
            "slower_than_fp32": self.choice.slower_than_fp32,
            "weight_nonzero": self.nnz,    # torchslim.eval.size: a 50% sparse int8 model has half its weights non-zero
        }

    @classmethod
    def from_layer_info(cls, original: nn.Module, info: dict[str, Any]) -> SparseQuantLinear:
        out_f, in_f = info["shape"]
        cfg = config_from_dict(info["config"]) if info.get("config") else None
        pcfg = config_from_dict(info["prune_config"]) if info.get("prune_config") else None
        return cls(in_f, out_f, getattr(original, "bias", None) is not None, int(info["bits"]), int(info["nnz"]),
                   info.get("pattern"), cfg, pcfg, Kernel(info["kernel"]))
