"""Fused int4 x int8 kernel for few rows (decode): the weight's 4-bit codes multiplied on the integer units.

``torch.ops.aten._weight_int4pack_mm`` converts every weight to bf16 and multiplies in floating point, and torch
has no kernel at all for symmetric int4 codes (their layers dequantize the whole weight per call). This kernel
(``runtime/csrc/int4_gemv.cpp``) multiplies 32 codes at a time by one integer dot-product instruction (AVX512-VNNI
``vpdpbusd``; AVX2 ``vpmaddubsw``; plain C++ elsewhere, chosen at run time) with the activation quantized per block
of 32 inputs in two int8 parts, the value and its rounding residual (about 15 bits: SmolLM2 int4's perplexity
stays within 0.1% of the same model computed in fp32; one int8 part, as llama.cpp's Q8_0 activations, cost 4%).
The offset of asymmetric codes multiplies the exact float sum of the activation over its group. Measured at one
row on an AMX Xeon, 2 threads, SmolLM2-135M's layer shapes: 1.0-1.3x ``_weight_int4pack_mm`` on layers of 0.3 MB
and more (the 512-bit path: two blocks per instruction, codes unpacked by one shift and mask), slower on the
smallest (a fixed cost of about 5 us a call); 18x the dequantized path of symmetric int4.

The same extension dequantizes stored int4 and int8 codes to bf16 in one pass (:func:`dequantize_bf16`), for the
many-row matmuls of prefill, which run in bf16 on the weight dequantized per call: bit for bit the tensor-op
dequantization, 20x+ faster on SmolLM2's layers (512-bit path only; elsewhere the tensor ops stay).

The C++ (``torchslim/runtime/csrc``) is built on first use by :mod:`torchslim.runtime.cpu_kernels`; without a
compiler, or with ``TORCHSLIM_CPP_KERNELS=0``, :func:`available` is False and layers keep their other kernels.
Pure kernel math: which layers use it is the runtime's decision, measured
(:func:`torchslim.runtime.int8_units.use_int4_units`).
"""
from __future__ import annotations

from typing import Any

import torch

from torchslim.runtime.cpu_kernels import available

__all__ = ["BLOCK", "MAX_ROWS", "available", "dequantize_bf16", "dequantizes", "level", "matmul", "pack", "prepare",
           "supports"]

BLOCK = 32           # inputs per activation block and per 16 packed weight bytes
MAX_ROWS = 8         # rows up to which a layer with the kernel uses it (decode of a few sequences)


def level() -> int:
    """The instruction set the kernel uses on this CPU: 3 AVX512-VNNI on 512-bit registers, 2 AVX512-VNNI on 256-bit
    registers, 1 AVX2, 0 plain C++."""
    return int(torch.ops.torchslim_cpu.int4_gemv_level())


def supports(in_features: int, group: int) -> bool:
    """Whether a layer of ``in_features`` (padded) inputs in groups of ``group`` fits the kernel's blocks."""
    return group % BLOCK == 0 and in_features % group == 0


def pack(codes: torch.Tensor) -> torch.Tensor:
    """Unsigned 4-bit codes ``[N, K]`` (0..15) as ``[N, K / 2]`` bytes, per pair of blocks of 32 inputs: byte ``j``
    of a pair's 32 holds input ``j`` in its low nibble and input ``j + 32`` in its high nibble, so one mask gives the
    first block's codes in input order and one shift the second's. A last, unpaired block (``K / 32`` odd) keeps
    16 bytes: input ``j`` low, ``j + 16`` high."""
    n, k = codes.shape
    u = codes.to(torch.uint8)
    pairs = (k // BLOCK) // 2 * 2 * BLOCK
    head = u[:, :pairs].reshape(n, -1, 2, BLOCK)
    parts = [(head[:, :, 0] | (head[:, :, 1] << 4)).reshape(n, pairs // 2)]
    if pairs < k:
        tail = u[:, pairs:].reshape(n, 2, BLOCK // 2)
        parts.append(tail[:, 0] | (tail[:, 1] << 4))
    return torch.cat(parts, dim=1).contiguous()


def prepare(codes: torch.Tensor, scale: torch.Tensor, offset: torch.Tensor | None, signed_min: int | None,
            ) -> dict[str, Any]:
    """The kernel's operands from a layer's codes ``[N, K]``, per-group ``scale``/``offset`` ``[N, G]``:
    signed codes (``signed_min``, e.g. -8) are shifted to unsigned and the shift folded into the offset."""
    scale = scale.float().contiguous()
    if signed_min is not None:
        codes = codes.to(torch.int16) - signed_min
        shift = scale * float(signed_min)
        offset = shift if offset is None else offset.float() + shift
    return {"packed": pack(codes), "scale": scale, "offset": None if offset is None else offset.float().contiguous(),
            "group": codes.shape[1] // scale.shape[1]}


def matmul(x2: torch.Tensor, ops: dict[str, Any], use_level: int = -1) -> torch.Tensor:
    """``x2 @ W.T`` in ``x2``'s dtype (float32 or bfloat16) for a 2-D ``x2`` of any rows, whose inputs may stop
    short of the weight's padded width (the rest are zeros). Each row's result depends on that row only, so a
    long input computes what decoding it row by row would. ``use_level``: force a lower instruction set (tests);
    -1 the best here."""
    return torch.ops.torchslim_cpu.int4_gemv(x2, ops["packed"], ops["scale"], ops["offset"], ops["group"],
                                             use_level)


def dequantize_bf16(packed: torch.Tensor, scale: torch.Tensor, offset: torch.Tensor | None, padded_in: int,
                    in_features: int, signed: bool, bits: int = 4) -> torch.Tensor:
    """A stored int4 or int8 layer's weight as bf16 ``[N, in_features]`` in one pass over its codes: ``packed``
    holds the codes as :func:`torchslim.quantization.packing.pack_bits` writes them (rows of ``padded_in``),
    ``scale`` / ``offset`` ``[N, G]``; ``signed``: symmetric codes (stored shifted by half the range). Bit for bit
    what the tensor-op dequantization gives. Needs :func:`dequantizes`."""
    shift = -(1 << (bits - 1)) if signed else 0
    return torch.ops.torchslim_cpu.dequant_bf16(packed, scale.float(), None if offset is None else offset.float(),
                                                padded_in, in_features, shift, bits)


def dequantizes(padded_in: int, groups: int, bits: int = 4) -> bool:
    """Whether :func:`dequantize_bf16` takes a layer: 4 or 8 bits, int4 rows and groups of an even number of
    codes (whole bytes), on a CPU with the 512-bit path (elsewhere its plain C++ loop measured no faster than
    the tensor ops)."""
    whole = bits == 8 or (padded_in % 2 == 0 and (padded_in // max(groups, 1)) % 2 == 0)
    return (bits in (4, 8) and groups > 0 and padded_in % groups == 0 and whole and available() and level() >= 3)

