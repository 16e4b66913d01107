import pytest
import torch

from torchslim.core.errors import ConfigError
from torchslim.pruning import sparse_format as SF
from torchslim.pruning.config import Storage
from torchslim.pruning.masks import layer_mask


def masked(out_f, in_f, sparsity, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    mask = layer_mask(torch.rand(out_f, in_f, generator=g), sparsity)
    w = torch.randn(out_f, in_f, generator=g).to(dtype) * mask
    return w, mask


@pytest.mark.parametrize("shape", [(1,), (7,), (8,), (9,), (3, 5), (13, 11), (2, 3, 5)])
def test_pack_unpack_round_trip_odd_sizes(shape):
    mask = torch.rand(shape, generator=torch.Generator().manual_seed(1)) > 0.5
    bits = SF.pack_mask(mask)
    assert bits.dtype == torch.uint8 and bits.numel() == (mask.numel() + 7) // 8
    assert torch.equal(SF.unpack_mask(bits, mask.shape), mask)


def test_bit_order_is_little_endian_row_major():
    mask = torch.tensor([[True, False, True], [False, False, False], [False, True, True]])
    # elements 0, 2, 7 -> byte 0 = 1 + 4 + 128; element 8 -> byte 1 = 1
    assert SF.pack_mask(mask).tolist() == [133, 1]


def test_unpack_rejects_wrong_length_or_dtype():
    with pytest.raises(ConfigError, match="uint8 bytes"):
        SF.unpack_mask(torch.zeros(2, dtype=torch.uint8), (4, 5))
    with pytest.raises(ConfigError):
        SF.unpack_mask(torch.zeros(3, dtype=torch.int32), (4, 5))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_bitmask_round_trip_is_exact_and_keeps_kept_zeros(dtype):
    w, mask = masked(13, 19, 0.7, dtype)
    w[mask.nonzero()[0].tolist()] = 0.0  # a kept weight that is exactly zero stays kept
    values, bits = SF.to_bitmask(w, mask)
    assert values.dtype == dtype and values.numel() == int(mask.sum())
    w2, mask2 = SF.from_bitmask(values, bits, w.shape)
    assert torch.equal(mask2, mask) and torch.equal(w2, w) and w2.dtype == dtype


def test_bitmask_rejects_value_count_mismatch():
    w, mask = masked(4, 9, 0.5)
    values, bits = SF.to_bitmask(w, mask)
    with pytest.raises(ConfigError, match="kept elements"):
        SF.from_bitmask(values[:-1], bits, w.shape)


@pytest.mark.filterwarnings("ignore:Sparse CSR tensor support is in beta")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_csr_round_trip_is_exact_and_matches_torch_layout(dtype):
    w, mask = masked(17, 23, 0.8, dtype)
    mask[3] = False  # an empty row
    w = w * mask
    crow, cols, values = SF.to_csr(w, mask)
    assert crow.dtype == torch.int32 and cols.dtype == torch.int16 and values.dtype == dtype
    ref = w.float().to_sparse_csr()  # no kept zeros here, so torch's layout is the same
    assert torch.equal(crow.long(), ref.crow_indices()) and torch.equal(cols.long(), ref.col_indices())
    assert torch.equal(values.float(), ref.values())
    w2, mask2 = SF.from_csr(crow, cols, values, w.shape)
    assert torch.equal(w2, w) and torch.equal(mask2, mask)


def test_csr_column_indices_widen_past_int16():
    mask = torch.zeros(2, 32768, dtype=torch.bool)
    mask[0, 32767] = mask[1, 5] = True
    w = torch.randn(2, 32768) * mask
    crow, cols, values = SF.to_csr(w, mask)
    assert cols.dtype == torch.int32 and cols.tolist() == [32767, 5]
    assert SF.col_index_dtype(32767) == torch.int16
    w2, mask2 = SF.from_csr(crow, cols, values, w.shape)
    assert torch.equal(w2, w) and torch.equal(mask2, mask)


def test_csr_rejects_inconsistent_arrays():
    w, mask = masked(5, 8, 0.5)
    crow, cols, values = SF.to_csr(w, mask)
    with pytest.raises(ConfigError, match="disagree"):
        SF.from_csr(crow, cols[:-1], values[:-1], w.shape)
    with pytest.raises(ConfigError, match="out of range"):
        SF.from_csr(crow, torch.full_like(cols, 8), values, w.shape)
    with pytest.raises(ConfigError, match="row pointers"):
        SF.from_csr(crow[:-1], cols, values, w.shape)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_byte_formula_matches_the_real_tensors(dtype):
    w, mask = masked(37, 29, 0.6, dtype)
    nnz, e = int(mask.sum()), w.element_size()
    assert SF.storage_bytes(Storage.BITMASK, 37, 29, nnz, e) == sum(t.nbytes for t in SF.to_bitmask(w, mask))
    assert SF.storage_bytes(Storage.CSR, 37, 29, nnz, e) == sum(t.nbytes for t in SF.to_csr(w, mask))
    assert SF.storage_bytes(Storage.DENSE, 37, 29, nnz, e) == w.nbytes
    with pytest.raises(ConfigError):
        SF.storage_bytes(Storage.AUTO, 37, 29, nnz, e)


def test_bytes_shrink_with_sparsity_and_auto_picks_the_smaller():
    out_f, in_f, numel = 64, 96, 64 * 96
    picked = set()
    prev = {Storage.BITMASK: None, Storage.CSR: None}
    for sparsity in (0.0, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99):
        nnz = numel - round(numel * sparsity)
        sizes = {s: SF.storage_bytes(s, out_f, in_f, nnz, 4) for s in (Storage.BITMASK, Storage.CSR)}
        for s, b in sizes.items():
            assert prev[s] is None or b < prev[s]
            prev[s] = b
        auto = SF.choose_storage(Storage.AUTO, out_f, in_f, nnz, 4)
        assert sizes[auto] == min(sizes.values())
        picked.add(auto)
        if sparsity >= 0.5:
            assert min(sizes.values()) < SF.storage_bytes(Storage.DENSE, out_f, in_f, nnz, 4)
    assert picked == {Storage.BITMASK, Storage.CSR}  # bitmask at moderate sparsity, CSR when very sparse
    assert SF.choose_storage(Storage.CSR, out_f, in_f, numel, 4) is Storage.CSR  # explicit choices pass through


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_torch_csr_is_the_kept_matrix_with_int32_indices(dtype):
    w, mask = masked(9, 14, 0.6)
    t = SF.torch_csr(w, mask, dtype)
    assert t.layout == torch.sparse_csr and t.dtype == dtype and t.crow_indices().dtype == torch.int32
    assert t._nnz() == int(mask.sum()) and torch.equal(t.to_dense(), w.to(dtype))
