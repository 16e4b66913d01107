"""Compressed storage of a masked (sparse) weight matrix: pure functions, no modules.

Element order is row-major throughout, so the ``values`` of the bitmask and CSR layouts are the
same tensor: the kept weights of row 0, then row 1, ... . The layout is defined by the MASK, not by
the zeros of the weight: a kept weight that happens to be exactly zero is still stored.

Stored bytes of an ``[out, in]`` weight with ``nnz`` kept elements of ``e`` bytes each:

* dense:   ``out * in * e``
* bitmask: ``nnz * e + ceil(out * in / 8)``                    (values + one bit per element)
* csr:     ``nnz * e + nnz * c + (out + 1) * r``               (values + column indices + row pointers)
  with ``c = 2`` (int16) when ``in <= 32767`` else 4 (int32), and ``r = 4`` (int32) unless
  ``nnz`` needs int64 row pointers (``r = 8``).
"""
from __future__ import annotations

import warnings

import torch

from torchslim.core.bits import pack_mask, unpack_mask  # noqa: F401 - the bitmask layout's bits
from torchslim.core.errors import ConfigError
from torchslim.pruning.config import Storage

INT16_MAX = 32767
INT32_MAX = 2**31 - 1


# -- bitmask -----------------------------------------------------------------------------
def to_bitmask(weight: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(values [nnz] in the weight's dtype, packed mask bits)`` of a 2-D ``weight``."""
    _check_pair(weight, mask)
    return weight[mask].contiguous(), pack_mask(mask)


def from_bitmask(values: torch.Tensor, bits: torch.Tensor,
                 shape: tuple[int, int] | torch.Size) -> tuple[torch.Tensor, torch.Tensor]:
    """``(dense weight, bool mask)`` from :func:`to_bitmask`'s output; pruned entries are zero."""
    mask = unpack_mask(bits, shape)
    nnz = int(mask.sum().item())
    if values.dim() != 1 or values.numel() != nnz:
        raise ConfigError(f"bitmask has {nnz} kept elements but {values.numel()} values")
    weight = torch.zeros(tuple(shape), dtype=values.dtype, device=values.device)
    weight[mask.to(values.device)] = values
    return weight, mask


# -- CSR ---------------------------------------------------------------------------------
def col_index_dtype(in_features: int) -> torch.dtype:
    """int16 column indices when every column fits, else int32."""
    return torch.int16 if in_features <= INT16_MAX else torch.int32


def row_index_dtype(nnz: int) -> torch.dtype:
    return torch.int32 if nnz <= INT32_MAX else torch.int64


def to_csr(weight: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(crow_indices [out + 1], col_indices [nnz], values [nnz])`` of the kept elements."""
    _check_pair(weight, mask)
    out_f, in_f = mask.shape
    counts = mask.sum(dim=1)
    nnz = int(counts.sum().item())
    crow = torch.cat([counts.new_zeros(1), counts.cumsum(dim=0)])
    cols = mask.nonzero()[:, 1]
    return crow.to(row_index_dtype(nnz)), cols.to(col_index_dtype(in_f)), weight[mask].contiguous()


def from_csr(crow: torch.Tensor, cols: torch.Tensor, values: torch.Tensor,
             shape: tuple[int, int] | torch.Size) -> tuple[torch.Tensor, torch.Tensor]:
    """``(dense weight, bool mask)`` from :func:`to_csr`'s output."""
    out_f, in_f = tuple(shape)
    if crow.dim() != 1 or crow.numel() != out_f + 1:
        raise ConfigError(f"CSR row pointers for {out_f} rows must have {out_f + 1} entries, got {crow.numel()}")
    nnz = values.numel()
    if cols.numel() != nnz or int(crow[-1].item()) != nnz or int(crow[0].item()) != 0:
        raise ConfigError(f"CSR arrays disagree: {nnz} values, {cols.numel()} columns, "
                          f"last row pointer {int(crow[-1])}")
    counts = (crow[1:] - crow[:-1]).long()
    if nnz and (bool((counts < 0).any()) or int(cols.min()) < 0 or int(cols.long().max()) >= in_f):
        raise ConfigError(f"CSR indices are out of range for shape {tuple(shape)}")
    rows = torch.repeat_interleave(torch.arange(out_f, device=crow.device), counts)
    flat = rows * in_f + cols.long().to(crow.device)
    mask = torch.zeros(out_f * in_f, dtype=torch.bool, device=crow.device)
    mask[flat] = True
    weight = torch.zeros(out_f * in_f, dtype=values.dtype, device=values.device)
    weight[flat.to(values.device)] = values
    return weight.reshape(out_f, in_f), mask.reshape(out_f, in_f)


def torch_csr(weight: torch.Tensor, mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The kept elements as a ``torch.sparse_csr`` tensor (int32 indices, int64 if needed) for matmul."""
    crow, cols, values = to_csr(weight, mask)
    idx = torch.int32 if crow.dtype == torch.int32 else torch.int64  # torch wants both index arrays alike
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*Sparse CSR tensor support is in beta.*")
        return torch.sparse_csr_tensor(crow.to(idx), cols.to(idx), values.to(dtype), size=tuple(weight.shape),
                                       check_invariants=False)


def _check_pair(weight: torch.Tensor, mask: torch.Tensor) -> None:
    if weight.dim() != 2 or mask.shape != weight.shape or mask.dtype != torch.bool:
        raise ConfigError(f"expected a 2-D weight and a bool mask of its shape, got {tuple(weight.shape)} "
                          f"and {tuple(mask.shape)} {mask.dtype}")


# -- sizes -------------------------------------------------------------------------------
def storage_bytes(storage: Storage, out_features: int, in_features: int, nnz: int, element_size: int) -> int:
    """Stored bytes of the weight (bias excluded) under ``storage``; see the module docstring."""
    if storage is Storage.DENSE:
        return out_features * in_features * element_size
    if storage is Storage.BITMASK:
        return nnz * element_size + (out_features * in_features + 7) // 8
    if storage is Storage.CSR:
        col = torch.empty((), dtype=col_index_dtype(in_features)).element_size()
        row = torch.empty((), dtype=row_index_dtype(nnz)).element_size()
        return nnz * (element_size + col) + (out_features + 1) * row
    raise ConfigError(f"storage_bytes needs a concrete storage, got {storage.value!r}")


def choose_storage(storage: Storage, out_features: int, in_features: int, nnz: int, element_size: int) -> Storage:
    """Resolve ``AUTO`` to the smaller of bitmask and CSR (bitmask on a tie); others pass through."""
    storage = Storage(storage)
    if storage is not Storage.AUTO:
        return storage
    bitmask = storage_bytes(Storage.BITMASK, out_features, in_features, nnz, element_size)
    csr = storage_bytes(Storage.CSR, out_features, in_features, nnz, element_size)
    return Storage.CSR if csr < bitmask else Storage.BITMASK
