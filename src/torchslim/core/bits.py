"""Bit-level packing of boolean masks (row-major; element ``8k + j`` is bit ``j`` of byte ``k``): the layout
pruning's bitmask storage and quantization's sparse-quantized layers share."""
from __future__ import annotations

import math

import torch

from torchslim.core.errors import ConfigError

_BIT_WEIGHTS = [1 << j for j in range(8)]


def pack_mask(mask: torch.Tensor) -> torch.Tensor:
    """Flatten ``mask`` (row-major) into uint8 bytes; element ``8k + j`` is bit ``j`` of byte ``k``."""
    flat = mask.reshape(-1).to(torch.bool)
    pad = (-flat.numel()) % 8
    if pad:
        flat = torch.cat([flat, flat.new_zeros(pad)])
    weights = torch.tensor(_BIT_WEIGHTS, dtype=torch.uint8, device=flat.device)
    return (flat.reshape(-1, 8).to(torch.uint8) * weights).sum(dim=1, dtype=torch.uint8)


def unpack_mask(bits: torch.Tensor, shape: tuple[int, ...] | torch.Size) -> torch.Tensor:
    """Inverse of :func:`pack_mask`: a bool tensor of ``shape``."""
    numel = math.prod(shape)
    if bits.dtype != torch.uint8 or bits.dim() != 1 or bits.numel() != (numel + 7) // 8:
        raise ConfigError(f"mask bits for shape {tuple(shape)} must be {(numel + 7) // 8} uint8 bytes, "
                          f"got {tuple(bits.shape)} {bits.dtype}")
    weights = torch.tensor(_BIT_WEIGHTS, dtype=torch.uint8, device=bits.device)
    flat = (bits.unsqueeze(1) & weights) != 0
    return flat.reshape(-1)[:numel].reshape(tuple(shape))
