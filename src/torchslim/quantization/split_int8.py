"""Split-activation int8 kernel: int8 weights x bf16/fp32 activations on the int8 dot-product units, exactly.

An int8 weight-only layer (per-channel symmetric codes) normally runs ``torch._weight_int8pack_mm``, which
converts every weight to bf16 and multiplies in floating point. The int8 units (VNNI, AMX) multiply int8 by
int8, four or more times the rate, but quantizing the activation costs quality (about +1% perplexity on a
language model's head, whose input carries outlier channels). This kernel quantizes the activation twice:
``x ~ a * hi + b * lo`` where ``hi`` is ``x`` on a grid of ``a = max|x| / 127`` and ``lo`` the rounding residual
on its own grid; both rows go through one dynamic int8 GEMM (fbgemm/oneDNN, the weight read once), and the
two results are recombined in float. The activation keeps about 15 bits: measured relative error 2e-4 on a
head with an outlier channel, against 2.5e-3 for the bf16 path it replaces and 2.5e-2 for one int8 pass.

The dynamic GEMM chooses its own activation grid from the input's min and max, so one extra row holding the
grid's two ends (``-half`` and ``half - 1`` code units) pins that grid to exactly one code unit per step:
``hi`` and ``lo``, already integers, then pass through unchanged. Without AVX512 the u8 x s8 products go
through 16-bit saturating adds, so the codes use 7 bits there (``reduce_range``), as fbgemm's own callers do.

Pure kernel math: which layers use it is the runtime's decision (``torchslim.runtime.split``), measured.
"""
from __future__ import annotations

import itertools
import weakref
from typing import Any

import torch

from torchslim.quantization.kernels import act_qmax, row_absmax

MAX_ROWS = 4   # rows up to which a layer with the kernel uses it (decode of a few sequences; measured at 1 row)


def half_range() -> int:
    """Half the activation code range: 128 where the int8 units multiply u8 x s8 exactly, 64 elsewhere."""
    return 128 if act_qmax() == 255 else 64


def prepare(codes: torch.Tensor, scale: torch.Tensor) -> Any:
    """The dynamic GEMM's packed weight from int8 codes ``[N, K]`` and per-row scales ``[N]`` (codes kept exact)."""
    q = torch._make_per_channel_quantized_tensor(codes.to(torch.int8).contiguous(), scale.double().reshape(-1),
                                                  torch.zeros(codes.shape[0], dtype=torch.long), 0)
    return torch.ops.quantized.linear_prepack(q, None)


def matmul(x2: torch.Tensor, packed: Any) -> torch.Tensor:
    """``x2 @ W.T`` in fp32 for a 2-D ``x2`` with at least two columns (the grid row needs two)."""
    half = half_range()
    x = x2.float()
    m, k = x.shape
    a = row_absmax(x) / (half - 1)
    hi = torch.round(x / a)
    res = x - hi * a
    b = row_absmax(res) / (half - 1)
    lo = torch.round(res / b)
    grid = x.new_zeros(1, k)
    grid[0, 0], grid[0, 1] = -half, half - 1
    y = torch.ops.quantized.linear_dynamic(torch.cat([hi, lo, grid]), packed, half == 64)
    return torch.addcmul(y[:m] * a, y[m:2 * m], b)


# -- a custom op, so that a compiled graph calls the kernel instead of breaking around it --------------------
_PACKED: dict[int, Any] = {}
_HANDLES = itertools.count(1)


def register(owner: object, packed: Any) -> int:
    """A handle for ``packed`` that :func:`matmul_op` accepts; released when ``owner`` is collected."""
    handle = next(_HANDLES)
    _PACKED[handle] = packed
    weakref.finalize(owner, release, handle)
    return handle


def release(handle: int | None) -> None:
    """Drop the packed weight behind ``handle`` (a layer switching the kernel off, or moving)."""
    if handle is not None:
        _PACKED.pop(handle, None)


@torch.library.custom_op("torchslim::split_int8_mm", mutates_args=())
def matmul_op(x2: torch.Tensor, handle: int, out_features: int) -> torch.Tensor:
    """:func:`matmul` on the weight registered as ``handle`` (fp32 ``[M, out_features]``)."""
    return matmul(x2, _PACKED[handle])


@matmul_op.register_fake
def _(x2: torch.Tensor, handle: int, out_features: int) -> torch.Tensor:
    return x2.new_empty(x2.shape[0], out_features, dtype=torch.float32)
