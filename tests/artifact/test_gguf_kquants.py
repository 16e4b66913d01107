"""K-quant super-blocks: our bytes read back by the gguf package's (llama.cpp-layout) dequantizers."""
from __future__ import annotations

import gguf
import numpy as np
import pytest
import torch

from torchslim.artifact.gguf_blocks import TYPES, dequantize, round_to_grid
from torchslim.artifact.gguf_kquants import pack_q4_k, pack_q6_k, pack_rounded, round_q4_k, round_q6_k


def _back(blocks: np.ndarray, name: str) -> torch.Tensor:
    return torch.from_numpy(gguf.quants.dequantize(blocks, getattr(gguf.GGMLQuantizationType, name)).copy())


def test_q4_k_bytes_hold_the_codes_scales_and_minimums() -> None:
    g = torch.Generator().manual_seed(0)
    rows, cols = 3, 512
    codes = torch.randint(0, 16, (rows, cols), generator=g)
    sc, m = torch.randint(0, 64, (rows, cols // 32), generator=g), torch.randint(0, 64, (rows, cols // 32), generator=g)
    d, dmin = torch.rand(rows, 2, generator=g) / 50, torch.rand(rows, 2, generator=g) / 50
    blocks = pack_q4_k(codes, d, dmin, sc, m)
    assert blocks.shape == (rows, 2 * 144)
    d16, dm16 = d.half().float().repeat_interleave(8, 1), dmin.half().float().repeat_interleave(8, 1)
    want = (d16 * sc)[..., None] * codes.float().reshape(rows, -1, 32) - (dm16 * m)[..., None]
    torch.testing.assert_close(_back(blocks, "Q4_K"), want.reshape(rows, cols))


def test_q6_k_bytes_hold_the_codes_and_scales() -> None:
    g = torch.Generator().manual_seed(1)
    rows, cols = 2, 768
    codes = torch.randint(-32, 32, (rows, cols), generator=g)
    sc = torch.randint(-128, 128, (rows, cols // 16), generator=g)
    d = torch.rand(rows, 3, generator=g) / 100
    blocks = pack_q6_k(codes, d, sc)
    assert blocks.shape == (rows, 3 * 210)
    want = (d.half().float().repeat_interleave(16, 1) * sc)[..., None] * codes.float().reshape(rows, -1, 16)
    torch.testing.assert_close(_back(blocks, "Q6_K"), want.reshape(rows, cols))


def _rmse(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).pow(2).mean().sqrt())


def test_rounding_is_as_good_as_the_neighbouring_block_types() -> None:
    torch.manual_seed(2)
    w = torch.randn(16, 1024) * torch.rand(16, 1) + 0.3 * torch.randn(16, 1)    # rows with offsets and scales
    w[0, :256] = 0.0                                                            # an all-zero super-block
    q4k = _back(pack_rounded("Q4_K", w), "Q4_K")
    q6k = _back(pack_rounded("Q6_K", w), "Q6_K")
    assert torch.equal(q4k[0, :256], torch.zeros(256)) and torch.equal(q6k[0, :256], torch.zeros(256))
    q41 = dequantize(TYPES["Q4_1"], *round_to_grid(TYPES["Q4_1"], w))
    q50 = dequantize(TYPES["Q5_0"], *round_to_grid(TYPES["Q5_0"], w))
    q80 = dequantize(TYPES["Q8_0"], *round_to_grid(TYPES["Q8_0"], w))
    # Q4_K (4.5 bits) within 15% of Q4_1's error (5 bits, exact fp16 scales); Q6_K between Q5_0 and Q8_0
    assert _rmse(q4k, w) < 1.15 * _rmse(q41, w)
    assert _rmse(q80, w) < _rmse(q6k, w) < 0.6 * _rmse(q50, w)


def test_round_functions_return_codes_on_the_grid() -> None:
    w = torch.randn(2, 256)
    q, d, dmin, sc, m = round_q4_k(w)
    assert q.dtype == torch.uint8 and int(q.max()) <= 15 and sc.shape == (2, 8) and int(sc.max()) <= 63
    q6, d6, sc6 = round_q6_k(w)
    assert int(q6.min()) >= -32 and int(q6.max()) <= 31 and sc6.shape == (2, 16)


def test_k_quants_refuse_partial_super_blocks_and_codes_off_the_grid() -> None:
    with pytest.raises(ValueError, match="super-blocks"):
        pack_rounded("Q4_K", torch.randn(1, 576))
    with pytest.raises(ValueError, match="outside"):
        pack_q6_k(torch.full((1, 256), 40), torch.ones(1, 1), torch.ones(1, 16))
    with pytest.raises(ValueError, match="6-bit"):
        pack_q4_k(torch.zeros(1, 256, dtype=torch.long), torch.ones(1, 1), torch.ones(1, 1),
                  torch.full((1, 8), 64), torch.zeros(1, 8))
