"""Bit packing of integer codes into bytes: 2 int4 per byte, 4 int2 per byte, 8 int3 in 3 bytes, ...

Codes are unsigned (``0 <= c < 2**bits``); symmetric int codes are shifted by ``2**(bits-1)``
first (:func:`to_unsigned`). Packing is little-endian in bits: code ``i`` occupies bits
``[i*bits, (i+1)*bits)`` of the stream.
"""
from __future__ import annotations

import sys

import torch

from torchslim.core.errors import ConfigError


def to_unsigned(codes: torch.Tensor, bits: int, signed: bool) -> torch.Tensor:
    return (codes.to(torch.int16) + (1 << (bits - 1))).to(torch.uint8) if signed else codes.to(torch.uint8)


def from_unsigned(codes: torch.Tensor, bits: int, signed: bool) -> torch.Tensor:
    return (codes.to(torch.int16) - (1 << (bits - 1))).to(torch.int8) if signed else codes


def packed_numel(numel: int, bits: int) -> int:
    return (numel * bits + 7) // 8


def pack_bits(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Pack unsigned ``codes`` (any shape) into a flat uint8 tensor of ``ceil(numel*bits/8)`` bytes."""
    if not 1 <= bits <= 8:
        raise ConfigError(f"can pack 1 to 8 bits per code, not {bits}")
    c = codes.flatten().to(torch.uint8)
    if bits == 8:
        return c.clone()
    if c.numel() and int(c.max()) >= 1 << bits:
        raise ConfigError(f"a code does not fit in {bits} bits")
    if 8 % bits == 0:  # fast path: 1, 2, 4 bits, in bytes throughout (widening to int32 and summing into int64
        per = 8 // bits  # took 12 bytes per code: 400 MB at once for SmolLM2's 49152 x 576 head)
        pad = (-c.numel()) % per
        c = (torch.cat([c, c.new_zeros(pad)]) if pad else c).reshape(-1, per)
        out = c[:, 0].clone()
        for i in range(1, per):
            out |= c[:, i] << (i * bits)
        return out
    bit_idx = torch.arange(bits, dtype=torch.uint8)
    stream = ((c.unsqueeze(1) >> bit_idx) & 1).flatten()
    stream = torch.cat([stream, stream.new_zeros((-stream.numel()) % 8)]).reshape(-1, 8).to(torch.int32)
    return (stream << torch.arange(8, dtype=torch.int32)).sum(dim=1).to(torch.uint8)


def unpack_bits(packed: torch.Tensor, bits: int, numel: int) -> torch.Tensor:
    """Inverse of :func:`pack_bits`: the first ``numel`` codes, flat uint8."""
    if packed.numel() < packed_numel(numel, bits):
        raise ConfigError(f"packed tensor holds {packed.numel()} bytes, {packed_numel(numel, bits)} needed")
    if bits == 8:
        return packed.flatten()[:numel].to(torch.uint8)
    n_bytes = packed_numel(numel, bits)
    eager = not torch.compiler.is_compiling()    # compiled graphs take the int32 form below, which inductor fuses
    # into one loop: the eager forms here gave all-NaN logits in a compiled SmolLM2 prefill (inductor 2.13)
    if bits == 4 and packed.dtype == torch.uint8 and sys.byteorder == "little" and eager:
        # each byte hi:lo widened to the int16 ``lo | hi << 8``, whose two bytes in memory are the two codes in
        # order: contiguous passes only, 6x faster than broadcasting int32 shifts (which dominated the dequantized
        # matmul of int4 layers at prefill) and 1.6x faster than strided byte writes
        b = packed.flatten()[:n_bytes].to(torch.int16)
        return torch.bitwise_or(b & 0x0F, (b & 0xF0) << 4).view(torch.uint8)[:numel]
    if 8 % bits == 0 and packed.dtype == torch.uint8 and eager:
        # one strided uint8 write per code position in a byte: 4x faster than broadcasting int32 shifts
        per, mask = 8 // bits, (1 << bits) - 1
        p = packed.flatten()[:n_bytes]
        out = torch.empty(n_bytes, per, dtype=torch.uint8, device=packed.device)
        for j in range(per):
            torch.bitwise_and(p >> (j * bits) if j else p, mask, out=out[:, j])
        return out.flatten()[:numel]
    p = packed.flatten().to(torch.int32)
    if 8 % bits == 0:
        per = 8 // bits
        shifts = torch.arange(per, dtype=torch.int32) * bits
        return ((p.unsqueeze(1) >> shifts) & ((1 << bits) - 1)).flatten()[:numel].to(torch.uint8)
    stream = ((p.unsqueeze(1) >> torch.arange(8, dtype=torch.int32)) & 1).flatten()[: numel * bits]
    stream = stream.reshape(numel, bits)
    return (stream << torch.arange(bits, dtype=torch.int32)).sum(dim=1).to(torch.uint8)
