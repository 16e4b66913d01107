"""GGML block packing against the gguf package's own (llama.cpp-reference) quantizers and dequantizers."""
from __future__ import annotations

import gguf
import numpy as np
import pytest
import torch

from torchslim.artifact.gguf_blocks import TYPES, dequantize, llama_rope_rows, pack, round_to_grid


@pytest.mark.parametrize("name", sorted(TYPES))
def test_round_to_grid_writes_the_bytes_of_the_reference_quantizer(name: str) -> None:
    torch.manual_seed(0)
    w = torch.randn(8, 96) * torch.rand(8, 1) * 3
    w[0, :32] = 0.0                                   # an all-zero block
    t = TYPES[name]
    ours = pack(t, *round_to_grid(t, w))
    ref = gguf.quants.quantize(w.numpy(), getattr(gguf.GGMLQuantizationType, name))
    assert ours.shape == ref.shape and ours.dtype == np.uint8
    np.testing.assert_array_equal(ours, ref)


@pytest.mark.parametrize("name", sorted(TYPES))
def test_packed_codes_read_back_as_the_same_grid(name: str) -> None:
    torch.manual_seed(1)
    t = TYPES[name]
    lo, hi = (-(1 << (t.bits - 1)), (1 << (t.bits - 1)) - 1) if t.signed else (0, 15)
    codes = torch.randint(lo, hi + 1, (4, 64))
    scale = torch.rand(4, 2) + 0.01
    minimum = -torch.rand(4, 2) if t.has_min else None
    blocks = pack(t, codes, scale, minimum)
    back = gguf.quants.dequantize(blocks, getattr(gguf.GGMLQuantizationType, name))
    np.testing.assert_array_equal(back, dequantize(t, codes, scale, minimum).numpy())


def test_pack_refuses_codes_off_the_grid_and_ragged_rows() -> None:
    with pytest.raises(ValueError, match="outside"):
        pack(TYPES["Q4_0"], torch.full((1, 32), 8), torch.ones(1, 1))
    with pytest.raises(ValueError, match="multiple|cols"):
        pack(TYPES["Q8_0"], torch.zeros(1, 40, dtype=torch.int8), torch.ones(1, 1))


def test_rope_rows_invert_the_permutation_transformers_undoes() -> None:
    from transformers.modeling_gguf_pytorch_utils import LlamaTensorProcessor

    w = torch.arange(3 * 8 * 2, dtype=torch.float32).reshape(24, 2)
    stored = w[llama_rope_rows(24, 3)]
    back = LlamaTensorProcessor()._reverse_permute_weights(stored.numpy(), 3, 3)
    np.testing.assert_array_equal(back, w.numpy())
