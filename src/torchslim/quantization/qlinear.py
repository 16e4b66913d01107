"""``QuantLinear``: a linear layer whose weight is stored quantized and packed.

Persistent state (what the artifact stores): ``packed`` (codes, bit-packed into uint8),
``scale`` and, per format, ``offset`` (asymmetric ints) or ``levels`` (NF4, codebook,
ternary, binary), plus ``bias``. Kernel buffers (torch's int4/int8 layouts) are derived from
that on first use and are not saved, so the file stays portable across kernels and devices.

The layer is frozen: its weight never trains. A forward that needs a gradient to its input (adapters over a
quantized base, QLoRA) runs the same packed kernel through
:func:`~torchslim.quantization.frozen_grad.frozen_linear`, which keeps no dense weight for backward.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from torchslim.core.config import BaseConfig, config_from_dict
from torchslim.core.modules import StandIn, register_module_format
from torchslim.core.surgery import stacked_bias
from torchslim.quantization import kernel_table
from torchslim.quantization import kernels as K
from torchslim.quantization import fused_int4, split_int8
from torchslim.quantization.formats import Format, Granularity, IntFormat, PerGroup, PerTensor
from torchslim.quantization.frozen_grad import frozen_linear
from torchslim.quantization.packing import from_unsigned, pack_bits, to_unsigned, unpack_bits
from torchslim.quantization.primitives import QTensor, dequantize_groups, padded_cols


def signed_codes(fmt: Format) -> bool:
    """Whether codes of ``fmt`` are stored signed (symmetric integers)."""
    return isinstance(fmt, IntFormat) and fmt.symmetric


def fill_packed(m: nn.Module, qt: QTensor) -> None:
    """Copy a QTensor's codes (bit-packed), scales, offsets and levels into a packed module's buffers."""
    bits = qt.fmt.storage_bits
    m.packed.copy_(pack_bits(to_unsigned(qt.codes.reshape(-1), bits, signed_codes(qt.fmt)), bits))
    m.scale.copy_(qt.scale.reshape(m.scale.shape))
    if m.offset is not None:
        m.offset.copy_(qt.offset.reshape(m.offset.shape))
    if m.levels is not None:
        m.levels.copy_(qt.levels)


@register_module_format
class QuantLinear(StandIn, nn.Module):
    """Weight-quantized linear layer. Build with :meth:`from_qtensor`."""

    split_rows = split_int8.MAX_ROWS   # rows up to which an int8 layer switched to the split kernel uses it
    fused_rows = fused_int4.MAX_ROWS   # rows up to which an int4 layer switched to the fused kernel uses it

    def __init__(self, in_features: int, out_features: int, bias: bool, fmt: Format, gran: Granularity,
                 n_groups: int, kernel: K.Kernel = K.Kernel.AUTO, config: BaseConfig | None = None,
                 input_scaled: bool = False):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.fmt, self.gran, self.config = fmt, gran, config
        bits = fmt.storage_bits
        self.padded_in = padded_cols(in_features, gran)  # inputs padded with zeros to whole groups
        numel = self.padded_in * out_features
        rows = 1 if isinstance(gran, PerTensor) else out_features
        self.register_buffer("packed", torch.zeros((numel * bits + 7) // 8, dtype=torch.uint8))
        self.register_buffer("scale", torch.ones(rows, n_groups))
        if isinstance(fmt, IntFormat) and not fmt.symmetric:
            self.register_buffer("offset", torch.zeros(rows, n_groups))
        else:
            self.offset = None
        n_levels = {"ternary": 3, "binary": 2, "nf4": 16}.get(fmt.name, 2**bits)
        if not isinstance(fmt, IntFormat):
            self.register_buffer("levels", torch.zeros(n_levels))
        else:
            self.levels = None
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None
        # Equivalence scaling (AWQ): the stored weight is W * s and inputs are multiplied by 1/s.
        if input_scaled:
            self.register_buffer("input_scale", torch.ones(in_features))
        else:
            self.input_scale = None
        self.choice = K.choose(fmt, gran, in_features, "cpu", kernel)
        self._cache: dict[str, Any] = {}
        self._split: int | None = None   # split-activation int8 kernel's handle, set by the runtime (use_split_int8)
        self._fused: dict[str, Any] | None = None   # fused int4 kernel's operands, set by the runtime (use_fused_int4)

    # -- construction ------------------------------------------------------------------
    @classmethod
    def from_qtensor(cls, qt: QTensor, gran: Granularity, bias: torch.Tensor | None,
                     kernel: K.Kernel = K.Kernel.AUTO, config: BaseConfig | None = None,
                     input_scale: torch.Tensor | None = None) -> QuantLinear:
        out_f, in_f = qt.shape
        m = cls(in_f, out_f, bias is not None, qt.fmt, gran, qt.scale.shape[1], kernel, config, input_scale is not None)
        if input_scale is not None:
            m.input_scale.copy_(input_scale)
        fill_packed(m, qt)
        if bias is not None:
            m.bias.data.copy_(bias.detach().float())
        return m

    @classmethod
    def concatenated(cls, layers: list[QuantLinear]) -> QuantLinear | str:
        """One layer whose outputs are ``layers``' outputs side by side (codes and scales stacked by rows), or
        why not: they must share format, groups, kernel, input scaling and (non-integer formats) levels."""
        a = layers[0]
        same = all(l.fmt == a.fmt and l.gran == a.gran and l.in_features == a.in_features
                   and l.choice.kernel == a.choice.kernel for l in layers)
        if not same:
            return "their formats, groups or kernels differ"
        if isinstance(a.gran, PerTensor):
            return "per-tensor scales cannot be stacked"
        if any((l.input_scale is None) != (a.input_scale is None)
               or (l.input_scale is not None and not torch.equal(l.input_scale, a.input_scale)) for l in layers):
            return "their input scales (AWQ) differ"
        if a.levels is not None and any(not torch.equal(l.levels, a.levels) for l in layers):
            return "their levels differ"
        bias = stacked_bias(layers)
        m = cls(a.in_features, sum(l.out_features for l in layers), bias is not None, a.fmt, a.gran,
                a.scale.shape[1], a.choice.kernel, a.config, a.input_scale is not None)
        bits = a.fmt.storage_bits
        codes = torch.cat([l.codes() for l in layers])
        m.packed.copy_(pack_bits(to_unsigned(codes.reshape(-1), bits, signed_codes(a.fmt)), bits))
        m.scale.copy_(torch.cat([l.scale for l in layers]))
        if m.offset is not None:
            m.offset.copy_(torch.cat([l.offset for l in layers]))
        if m.levels is not None:
            m.levels.copy_(a.levels)
        if m.input_scale is not None:
            m.input_scale.copy_(a.input_scale)
        if bias is not None:
            m.bias.data.copy_(bias)
        return m

    def codes(self) -> torch.Tensor:
        """Unpacked codes ``[out, padded in]`` (int8 for symmetric ints, uint8 otherwise)."""
        bits = self.fmt.storage_bits
        u = unpack_bits(self.packed, bits, self.padded_in * self.out_features)
        return from_unsigned(u, bits, signed_codes(self.fmt)).reshape(self.out_features, self.padded_in)

    def dense_weight(self) -> torch.Tensor:
        return self.dequantize()

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The dense weight this layer computes with, ``[out, in]``."""
        if dtype is torch.bfloat16 and self._one_pass_bf16():   # prefill's dense matmul: bit for bit the same
            return fused_int4.dequantize_bf16(self.packed, self.scale, self.offset, self.padded_in, self.in_features,
                                              signed_codes(self.fmt), self.fmt.storage_bits)
        c = self.codes()
        vals = self.levels[c.long()] if self.levels is not None else c.float()
        groups = self.scale.shape[1]
        w = dequantize_groups(vals.reshape(self.scale.shape[0], groups, -1), self.scale, self.offset)
        return w.reshape(self.out_features, self.padded_in)[:, : self.in_features].to(dtype)

    def _one_pass_bf16(self) -> bool:
        """Whether the C++ one-pass int4/int8 -> bf16 dequantization applies: stored integer codes on the CPU, no
        gradient to record, not inside a compiled graph (measured 23x the tensor ops on SmolLM2's gate/up shape)."""
        return (self.fmt.storage_bits in (4, 8) and isinstance(self.fmt, IntFormat) and self.levels is None
                and self.packed.device.type == "cpu" and not torch.compiler.is_compiling()
                and not (torch.is_grad_enabled() and (self.scale.requires_grad or (
                    self.offset is not None and self.offset.requires_grad)))
                and fused_int4.dequantizes(self.padded_in, self.scale.shape[1], self.fmt.storage_bits))

    # -- execution ---------------------------------------------------------------------
    def _prepared(self) -> dict[str, Any]:
        if not self._cache:
            kernel = self.choice.kernel
            if kernel is K.Kernel.INT8PACK_MM:     # the kernel needs K % 16 == 0: zero columns added
                w = F.pad(self.codes(), (0, K.pad_to(self.in_features, K.INT8_K_ALIGN) - self.in_features))
                self._cache = {"w": w.contiguous(), "s": self.scale.reshape(-1).to(torch.bfloat16)}
            elif kernel is K.Kernel.INT4PACK_MM:   # the kernel needs N % 16 == 0: zero rows added
                extra = K.pad_to(self.out_features, K.INT4_N_ALIGN) - self.out_features
                codes, scale, offset = (F.pad(t, (0, 0, 0, extra)) for t in (self.codes(), self.scale, self.offset))
                packed, sz = K.int4pack_prepare(codes, scale, offset)
                self._cache = {"w": packed, "sz": sz}
            else:
                self._cache = {"none": None}
        return self._cache

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x2 = x.reshape(-1, self.in_features)
        if self.input_scale is not None:
            x2 = x2 * self.input_scale.to(x2.dtype)
        if x2.requires_grad and torch.is_grad_enabled():   # training through this frozen layer (QLoRA, a tied head
            y = frozen_linear(x2, self._matmul, self.dequantize)  # QAT keeps): packed forward, no dense weight saved
        else:
            y = self._matmul(x2)
        if self.bias is not None:
            y = y + self.bias.to(x.dtype)
        return y.reshape(*x.shape[:-1], self.out_features)

    def _matmul(self, x2: torch.Tensor) -> torch.Tensor:
        """``x2 @ W.T`` (2-D, no bias) by this layer's kernel, in ``x2``'s dtype: the packed kernel up to the
        rows the kernel table measured it faster here, else the dequantized bf16 matmul."""
        kernel = self.choice.kernel
        if self._fused is not None and x2.shape[0] <= self.fused_rows and x2.device.type == "cpu":
            y = self._fused_int4(x2, self._fused)
        elif kernel is K.Kernel.DEQUANT:
            y = self._dequant_mm(x2)
        elif x2.shape[0] > self.rows_cut() or x2.device.type != "cpu":
            y = self.dense_matmul(x2)
        else:
            y = self.packed_matmul(x2)
        return y.to(x2.dtype)

    def dense_matmul(self, x2: torch.Tensor) -> torch.Tensor:
        """``x2 @ W.T`` as a bf16 matmul on the weight dequantized now (many rows: compute-bound)."""
        return F.linear(x2.to(torch.bfloat16), self.dequantize(torch.bfloat16))

    def packed_matmul(self, x2: torch.Tensor) -> torch.Tensor:
        """``x2 @ W.T`` by the layer's packed kernel (few rows: bound by reading the weight)."""
        kernel = self.choice.kernel
        if kernel is K.Kernel.INT8PACK_MM and self._split is not None and x2.shape[0] <= self.split_rows:
            return split_int8.matmul_op(x2, self._split, self.out_features)
        if kernel is K.Kernel.INT8PACK_MM:
            return self._int8pack_mm(x2)
        return self._int4pack_mm(x2)

    def _int4pack_mm(self, x2: torch.Tensor) -> torch.Tensor:
        if self.padded_in != self.in_features:
            x2 = F.pad(x2, (0, self.padded_in - self.in_features))
        c = self._prepared()
        return K.int4pack_mm(x2, c["w"], self.gran.size, c["sz"])[:, : self.out_features]

    def _dequant_mm(self, x2: torch.Tensor) -> torch.Tensor:
        return F.linear(x2, self.dequantize(x2.dtype))

    def _fused_int4(self, x2: torch.Tensor, ops: dict[str, Any]) -> torch.Tensor:
        if x2.dtype not in (torch.float32, torch.bfloat16):
            x2 = x2.float()
        return fused_int4.matmul(x2, ops)          # unpadded inputs: the kernel pads with zeros itself

    def _int8pack_mm(self, x2: torch.Tensor) -> torch.Tensor:
        c = self._prepared()
        if c["w"].shape[1] != self.in_features:       # the kernel's input width: a multiple of 16
            x2 = F.pad(x2, (0, c["w"].shape[1] - self.in_features))
        return K.int8pack_mm(x2, c["w"], c["s"])

    def can_split_int8(self) -> bool:
        """Whether the split-activation int8 kernel (:mod:`~torchslim.quantization.split_int8`) can run this layer."""
        return self.choice.kernel is K.Kernel.INT8PACK_MM and self.in_features >= 2

    def use_split_int8(self, on: bool = True) -> None:
        """Run this int8 layer at up to ``split_rows`` rows on the int8 units, activations split in two
        int8 passes (exact to about 2e-4; keeps a packed copy of the weight), or stop doing so."""
        split_int8.release(self._split)
        self._split = None
        if not on:
            return
        if not self.can_split_int8():
            raise ValueError(f"the split int8 kernel needs an int8 per-channel layer of two inputs or more: {self}")
        codes = self.codes()[:, : self.in_features]
        self._split = split_int8.register(self, split_int8.prepare(codes, self.scale.reshape(-1)))

    def split_int8_candidates(self) -> dict[str, Any]:
        """The two kernels this int8 layer can run at few rows, as ``x2 -> y`` callables on a 2-D input, for the
        runtime to time: ``"bf16"`` (the packed bf16 kernel) and ``"split"`` (the split-activation kernel, on the
        packed copy :meth:`use_split_int8` made: switch it on first)."""
        if self._split is None:
            raise ValueError(f"the split int8 kernel is off on this layer (use_split_int8 first): {self}")
        handle = self._split
        return {"bf16": self._int8pack_mm, "split": lambda x2: split_int8.matmul_op(x2, handle, self.out_features)}

    def can_fuse_int4(self) -> bool:
        """Whether the fused int4 x int8 kernel (:mod:`~torchslim.quantization.fused_int4`) can run this layer
        (int4 integer codes in groups of a multiple of 32, and the kernel built here)."""
        return (self.choice.kernel in (K.Kernel.INT4PACK_MM, K.Kernel.DEQUANT) and isinstance(self.fmt, IntFormat)
                and self.fmt.bits == 4 and isinstance(self.gran, PerGroup)
                and fused_int4.supports(self.padded_in, self.gran.size) and fused_int4.available())

    def use_fused_int4(self, on: bool = True) -> None:
        """Run this int4 layer at up to ``fused_rows`` rows on the integer units, activations quantized per
        block of 32 in two int8 parts (about 15 bits; keeps a packed copy of the weight, half a byte per weight),
        or stop doing so."""
        self._fused = None
        if not on:
            return
        if not self.can_fuse_int4():
            raise ValueError(f"the fused int4 kernel needs int4 integer codes in groups of 32k: {self}")
        signed_min = self.fmt.qmin if signed_codes(self.fmt) else None
        self._fused = fused_int4.prepare(self.codes(), self.scale, self.offset, signed_min)

    def fused_int4_candidates(self) -> dict[str, Any]:
        """The two kernels this int4 layer can run at few rows, as ``x2 -> y`` callables for the runtime to time:
        ``"bf16"`` (torch's int4 kernel, or the dequantized matmul of symmetric codes, which it does not take) and
        ``"fused"`` (:meth:`use_fused_int4` first)."""
        if self._fused is None:
            raise ValueError(f"the fused int4 kernel is off on this layer (use_fused_int4 first): {self}")
        ops = self._fused
        other = self._int4pack_mm if self.choice.kernel is K.Kernel.INT4PACK_MM else self._dequant_mm
        return {"bf16": other, "fused": lambda x2: self._fused_int4(x2, ops)}

    def __getstate__(self) -> dict[str, Any]:
        # a copy makes its own packed copy: a shared handle would die with whichever layer is collected first
        return {**self.__dict__, "_split": self._split is not None}

    def __setstate__(self, state: dict[str, Any]) -> None:
        on = bool(state.get("_split"))
        super().__setstate__({**state, "_split": None})
        if on:
            self.use_split_int8(True)

    def table_key(self) -> str | None:
        """This layer's row in the kernel table (formats with a packed kernel), else None."""
        if self.choice.kernel is K.Kernel.INT4PACK_MM:
            return kernel_table.format_key(4, self.gran.size)
        return kernel_table.format_key(8, None) if self.choice.kernel is K.Kernel.INT8PACK_MM else None

    def rows_cut(self) -> int:
        """Rows up to which the packed kernel runs (measured on this machine, else the default)."""
        cut = self.__dict__.get("_rows_cut")
        if cut is None:
            key = self.table_key()
            cut = self._rows_cut = kernel_table.crossover(key) if key else K.LARGE_M
        return cut

    def _apply(self, fn, recurse=True):  # .to()/.cuda(): drop derived kernel buffers
        split_int8.release(getattr(self, "_split", None))
        self._cache, self._rows_cut, self._split, self._fused = {}, None, None, None
        return super()._apply(fn, recurse)

    def extra_repr(self) -> str:
        g = f"g{self.gran.size}" if isinstance(self.gran, PerGroup) else type(self.gran).__name__
        return f"{self.in_features}->{self.out_features}, {self.fmt.name} {g}, kernel={self.choice.kernel.value}"

    # -- artifact ----------------------------------------------------------------------
    def torchslim_layer_info(self) -> dict[str, Any]:
        return {
            "technique": getattr(self.config, "technique", type(self.config).__name__ if self.config else "quantize"),
            "config": self.config.to_dict() if self.config is not None else None,
            "storage": f"{self.fmt.name} {self.gran.to_dict()['_type']}"
                       + (f"({self.gran.size})" if isinstance(self.gran, PerGroup) else ""),
            "format": self.fmt.to_dict(),
            "granularity": self.gran.to_dict(),
            "kernel": self.choice.kernel.value,
            "kernel_note": self.choice.reason,
            "slower_than_fp32": self.choice.slower_than_fp32,
            "measured_speed": kernel_table.short(self.table_key()) if self.table_key() else "slower than fp32",
            "shape": [self.out_features, self.in_features],
            "input_scaled": self.input_scale is not None,
        }

    @classmethod
    def from_layer_info(cls, original: nn.Module, info: dict[str, Any]) -> QuantLinear:
        fmt = config_from_dict(info["format"])
        gran = config_from_dict(info["granularity"])
        out_f, in_f = info["shape"]
        config = config_from_dict(info["config"]) if info.get("config") else None
        n_groups = padded_cols(in_f, gran) // gran.size if isinstance(gran, PerGroup) else 1
        bias = getattr(original, "bias", None) is not None
        return cls(in_f, out_f, bias, fmt, gran, n_groups, K.Kernel(info["kernel"]), config,
                   bool(info.get("input_scaled", False)))
