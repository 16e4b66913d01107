import pytest
import torch

from torchslim.core.errors import ConfigError
from torchslim.quantization.packing import from_unsigned, pack_bits, packed_numel, to_unsigned, unpack_bits


@pytest.mark.parametrize("bits", range(1, 9))
@pytest.mark.parametrize("n", [1, 7, 64, 1001])
def test_pack_round_trip_and_size(bits, n):
    g = torch.Generator().manual_seed(bits * 1000 + n)
    codes = torch.randint(0, 2**bits, (n,), generator=g, dtype=torch.uint8)
    packed = pack_bits(codes, bits)
    assert packed.dtype == torch.uint8 and packed.numel() == packed_numel(n, bits) == (n * bits + 7) // 8
    assert torch.equal(unpack_bits(packed, bits, n), codes)


def test_int4_layout_two_per_byte_low_nibble_first():
    packed = pack_bits(torch.tensor([1, 2, 15, 0], dtype=torch.uint8), 4)
    assert packed.tolist() == [0x21, 0x0F]


def test_signed_shift_and_errors():
    q = torch.tensor([-8, -1, 0, 7], dtype=torch.int8)
    u = to_unsigned(q, 4, signed=True)
    assert u.tolist() == [0, 7, 8, 15]
    assert torch.equal(from_unsigned(unpack_bits(pack_bits(u, 4), 4, 4), 4, signed=True), q)
    with pytest.raises(ConfigError, match="does not fit"):
        pack_bits(torch.tensor([4], dtype=torch.uint8), 2)
    with pytest.raises(ConfigError, match="bytes"):
        unpack_bits(torch.zeros(1, dtype=torch.uint8), 4, 5)
