"""GGML block formats as pure math: integer codes and per-block scales in, the bytes llama.cpp reads out.

Each type stores a row in blocks of 32 weights (row length must be a multiple of 32):

* ``Q8_0``: ``d`` (fp16), 32 int8 codes; ``w = d * q``.
* ``Q4_0``: ``d`` (fp16), 16 bytes of nibbles (byte ``j``: weight ``j`` low, ``j + 16`` high); ``w = d * (q - 8)``.
* ``Q4_1``: ``d``, ``m`` (fp16), the same nibbles; ``w = d * q + m``.
* ``Q5_0``: ``d`` (fp16), 4 bytes holding each weight's fifth bit (weight ``j`` at bit ``j``), the low nibbles
  as in Q4_0; ``w = d * (q - 16)``.

Super-blocks of 256 (the K-quants) are in :mod:`torchslim.artifact.gguf_kquants`.

:func:`pack` writes codes a quantizer already chose (GPTQ/AWQ codes on exactly this grid are kept);
:func:`round_to_grid` chooses codes by round-to-nearest the way llama.cpp's reference quantizer does, for
weights that are not on the grid. Both return ``uint8 [rows, bytes per row]``.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

BLOCK = 32


@dataclass(frozen=True)
class BlockType:
    name: str
    bits: int
    signed: bool         # codes centred on zero (Q8_0, Q4_0 as q - 8) or from zero with a minimum (Q4_1)
    has_min: bool
    block_bytes: int


TYPES: dict[str, BlockType] = {
    "Q8_0": BlockType("Q8_0", 8, True, False, 34),
    "Q4_0": BlockType("Q4_0", 4, True, False, 18),
    "Q4_1": BlockType("Q4_1", 4, False, True, 20),
    "Q5_0": BlockType("Q5_0", 5, True, False, 22),
}


def _f16_bytes(x: torch.Tensor) -> np.ndarray:
    return x.to(torch.float16).contiguous().numpy().view(np.uint8).reshape(*x.shape[:-1], -1)


def _nibbles(q: torch.Tensor) -> np.ndarray:
    """``q`` ``[..., 32]`` in 0..15 as 16 bytes: weight ``j`` in the low nibble of byte ``j``, ``j + 16`` high."""
    q = q.to(torch.uint8)
    return (q[..., :16] | (q[..., 16:] << 4)).contiguous().numpy()


def pack(t: BlockType, codes: torch.Tensor, scale: torch.Tensor, minimum: torch.Tensor | None = None) -> np.ndarray:
    """Blocks of type ``t`` from ``codes [rows, cols]`` (signed for Q8_0/Q4_0: -128..127 / -8..7; 0..15 for
    Q4_1) and per-block ``scale`` (and Q4_1's ``minimum``) ``[rows, cols / 32]``."""
    rows, cols = codes.shape
    if cols % BLOCK or scale.shape != (rows, cols // BLOCK):
        raise ValueError(f"{t.name}: {rows}x{cols} codes need cols % 32 == 0 and scales [{rows}, {cols // BLOCK}]")
    c = codes.reshape(rows, cols // BLOCK, BLOCK)
    lo, hi = (-(1 << (t.bits - 1)), (1 << (t.bits - 1)) - 1) if t.signed else (0, (1 << t.bits) - 1)
    if int(c.min()) < lo or int(c.max()) > hi:
        raise ValueError(f"{t.name}: codes outside {lo}..{hi}")
    parts = [_f16_bytes(scale.unsqueeze(-1))]
    if t.has_min:
        if minimum is None:
            raise ValueError(f"{t.name} needs a per-block minimum")
        parts.append(_f16_bytes(minimum.unsqueeze(-1)))
    if t.bits == 8:
        parts.append(c.to(torch.int8).contiguous().numpy().view(np.uint8))
    elif t.bits == 5:
        q = (c + 16).to(torch.uint8)
        parts.append(np.packbits((q >> 4).numpy(), axis=-1, bitorder="little"))
        parts.append(_nibbles(q & 15))
    else:
        parts.append(_nibbles(c + 8 if t.signed else c))
    return np.concatenate(parts, axis=-1).reshape(rows, -1)


def round_to_grid(t: BlockType, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Round-to-nearest codes, scales (and minimums) of ``w [rows, cols]`` on ``t``'s grid, as llama.cpp's
    reference quantizer chooses them (Q4_0 / Q5_0: the signed largest-magnitude weight maps to -8 / -16)."""
    rows, cols = w.shape
    b = w.float().reshape(rows, cols // BLOCK, BLOCK)
    if t.name == "Q8_0":
        d = b.abs().amax(-1) / 127
        q = torch.round(b / torch.where(d == 0, 1, d).unsqueeze(-1))
        return q.clamp(-128, 127).reshape(rows, cols).to(torch.int8), d, None
    if t.name in ("Q4_0", "Q5_0"):
        half = 1 << (t.bits - 1)
        idx = b.abs().argmax(-1, keepdim=True)
        d = torch.gather(b, -1, idx).squeeze(-1) / -half
        inv = torch.where(d == 0, 0, 1 / torch.where(d == 0, 1, d)).unsqueeze(-1)
        q = torch.trunc(b * inv + (half + 0.5)).clamp(0, 2 * half - 1) - half
        return q.reshape(rows, cols).to(torch.int8), d, None
    lo, hi = b.amin(-1), b.amax(-1)
    d = (hi - lo) / 15
    inv = torch.where(d == 0, 0, 1 / torch.where(d == 0, 1, d)).unsqueeze(-1)
    q = torch.trunc((b - lo.unsqueeze(-1)) * inv + 0.5).clamp(0, 15)
    return q.reshape(rows, cols).to(torch.uint8), d, lo


def dequantize(t: BlockType, codes: torch.Tensor, scale: torch.Tensor, minimum: torch.Tensor | None) -> torch.Tensor:
    """The float weight the blocks hold (scales rounded to fp16 as stored)."""
    rows, cols = codes.shape
    d = scale.to(torch.float16).float().unsqueeze(-1)
    c = codes.float().reshape(rows, cols // BLOCK, BLOCK)
    w = c * d + (minimum.to(torch.float16).float().unsqueeze(-1) if minimum is not None else 0)
    return w.reshape(rows, cols)


def llama_rope_rows(n_rows: int, n_head: int) -> torch.Tensor:
    """The row order llama.cpp stores q/k projections in: Hugging Face's rotary layout (each head's first half,
    then its second half) interleaved into pairs, as llama.cpp's converter permutes them."""
    dim = n_rows // n_head // 2
    return torch.arange(n_rows).reshape(n_head, 2, dim).transpose(1, 2).reshape(-1)
