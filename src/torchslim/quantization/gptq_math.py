"""GPTQ (Frantar et al., 2023) as a pure function: weight + Hessian in, quantized weight out.

Columns are quantized one at a time; each column's rounding error is spread over the
not-yet-quantized columns through the inverse Hessian's Cholesky factor, in blocks of
``block_size`` columns (lazy batch updates). With ``act_order`` columns are visited by
decreasing Hessian diagonal; with groups and ``act_order`` the group parameters are fixed up
front from the original weight ("static groups"), so groups stay contiguous for the kernels.
"""
from __future__ import annotations

import torch

from torchslim.calibration.stats import HessianAccumulator  # noqa: F401 - re-exported
from torchslim.core.errors import ConfigError
from torchslim.quantization.formats import Format, Granularity, IntFormat, PerChannel, PerGroup, PerTensor
from torchslim.quantization.observers import Observer, group_range
from torchslim.quantization.primitives import QTensor, padded_cols


def _params(cols: torch.Tensor, fmt: IntFormat, obs: Observer) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(scale, offset) ``[rows, 1]`` for a slab of columns ``[rows, k]``."""
    lo, hi = group_range(cols.unsqueeze(1), obs, fmt)
    lo, hi = lo.squeeze(-1), hi.squeeze(-1)
    if fmt.symmetric:
        return (torch.maximum(lo.abs(), hi.abs()) / fmt.qmax).clamp_min(1e-12), None
    return ((hi - lo) / fmt.qmax).clamp_min(1e-12), lo


def _q_col(w: torch.Tensor, scale: torch.Tensor, offset: torch.Tensor | None, fmt: IntFormat):
    s = scale.squeeze(-1)
    if offset is None:
        q = torch.clamp(torch.round(w / s), fmt.qmin, fmt.qmax)
        return q, q * s
    o = offset.squeeze(-1)
    q = torch.clamp(torch.round((w - o) / s), 0, fmt.qmax)
    return q, q * s + o


def _inverse_hessian_factor(H: torch.Tensor, damp: float) -> torch.Tensor:
    """The upper Cholesky factor of the dampened ``H``'s inverse. ``H`` is dampened in place (callers pass a copy
    of their own), and each intermediate is freed as soon as the next exists: a 2048-wide layer's Hessian is 17 MB,
    and the chain held six of them at once, the peak of an onloaded GPTQ block."""
    H.diagonal().add_(damp * H.diagonal().mean().clamp_min(1e-8))
    for _ in range(5):
        try:
            inv = torch.cholesky_inverse(torch.linalg.cholesky(H))
            return torch.linalg.cholesky(inv, upper=True)
        except torch.linalg.LinAlgError:
            H.diagonal().add_(damp * H.diagonal().mean())
    raise ConfigError("GPTQ: the Hessian is not positive definite even after dampening; use more calibration data")


ROW_CHUNK = 4096   # rows quantized at a time: GPTQ's rows are independent given the Hessian, so a 49152-row head
# needs a few MB of working copies instead of five full-size fp32 ones (the peak of an onloaded SmolLM2 run)


def gptq_quantize(W: torch.Tensor, H: torch.Tensor, fmt: Format, gran: Granularity, obs: Observer,
                  block_size: int = 128, damp: float = 0.01, act_order: bool = True,
                  row_chunk: int = ROW_CHUNK) -> QTensor:
    """Quantize ``W [rows, cols]`` given the input Hessian ``H [cols, cols]``, ``row_chunk`` rows at a time (the
    same result: each row's updates depend only on that row and the Hessian)."""
    if not isinstance(fmt, IntFormat):
        raise ConfigError(f"GPTQ supports integer formats; got {fmt.name}")
    if isinstance(gran, PerTensor):
        raise ConfigError("GPTQ needs per-channel or per-group granularity")
    rows, true_cols = W.shape
    cols = padded_cols(true_cols, gran)
    H = H.float() if H.dtype != torch.float32 else H.clone()       # one working copy (the caller's stays)
    if cols > true_cols:  # ragged last group: zero columns with zero Hessian (treated as dead inputs)
        H = torch.nn.functional.pad(H, (0, cols - true_cols, 0, cols - true_cols))
    dead = H.diagonal() == 0
    H[dead, dead] = 1
    perm = torch.argsort(H.diagonal(), descending=True) if act_order else torch.arange(cols)
    if act_order:
        H = H.index_select(0, perm).index_select(1, perm)
    Hinv = _inverse_hessian_factor(H, damp)
    del H
    gsize = gran.size if isinstance(gran, PerGroup) else cols
    static = act_order or isinstance(gran, PerChannel)
    parts = [_gptq_rows(W[r:r + row_chunk], cols, dead, perm, Hinv, fmt, gsize, static, obs, block_size)
             for r in range(0, rows, row_chunk)]
    codes, scales = torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
    offsets = None if fmt.symmetric else torch.cat([p[2] for p in parts])
    n_groups = cols // gsize
    return QTensor(codes.reshape(rows, n_groups, gsize), scales.unsqueeze(-1),
                   None if offsets is None else offsets.unsqueeze(-1), None, fmt, torch.Size((rows, true_cols)))


def _gptq_rows(W: torch.Tensor, cols: int, dead: torch.Tensor, perm: torch.Tensor, Hinv: torch.Tensor,
               fmt: IntFormat, gsize: int, static: bool, obs: Observer,
               block_size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """GPTQ of some rows: ``(codes [rows, cols] int8/uint8, scales [rows, groups], offsets or None)``."""
    W = W.detach().float().clone()
    rows, true_cols = W.shape
    if cols > true_cols:
        W = torch.cat([W, W.new_zeros(rows, cols - true_cols)], 1)
    W[:, dead] = 0
    n_groups = cols // gsize
    scales = torch.zeros(rows, n_groups)
    offsets = None if fmt.symmetric else torch.zeros(rows, n_groups)
    if static:  # all group parameters from the original weight
        for g in range(n_groups):
            s, o = _params(W[:, g * gsize:(g + 1) * gsize], fmt, obs)
            scales[:, g] = s.squeeze(-1)
            if offsets is not None:
                offsets[:, g] = o.squeeze(-1)
    W = W[:, perm]
    codes = torch.zeros(rows, cols, dtype=torch.int8 if fmt.symmetric else torch.uint8)
    for i1 in range(0, cols, block_size):
        i2 = min(i1 + block_size, cols)
        W1, Hinv1 = W[:, i1:i2].clone(), Hinv[i1:i2, i1:i2]
        Err1 = torch.zeros_like(W1)
        for i in range(i2 - i1):
            col = int(perm[i1 + i])
            g = col // gsize
            if not static and col % gsize == 0:
                s, o = _params(torch.cat([W1[:, i:], W[:, i2:]], 1)[:, :gsize], fmt, obs)
                scales[:, g] = s.squeeze(-1)
                if offsets is not None:
                    offsets[:, g] = o.squeeze(-1)
            q, deq = _q_col(W1[:, i], scales[:, g:g + 1], None if offsets is None else offsets[:, g:g + 1], fmt)
            codes[:, i1 + i] = q
            err = (W1[:, i] - deq) / Hinv1[i, i]
            W1[:, i:] -= err.unsqueeze(1) * Hinv1[i, i:].unsqueeze(0)
            Err1[:, i] = err
        W[:, i2:] -= Err1 @ Hinv[i1:i2, i2:]
    return codes[:, torch.argsort(perm)], scales, offsets
