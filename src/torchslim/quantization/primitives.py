"""Pure quantization math: tensors in, tensors out. No modules, no model walking.

A weight ``w`` of shape ``[rows, cols]`` is viewed as groups ``[rows, n_groups, group]``
(:func:`to_groups`); a format quantizes each group with its own scale (and offset) into
integer codes; :class:`QTensor` keeps codes + parameters and can :meth:`QTensor.dequantize`.

Asymmetric integers use a float offset: ``w ~ q * scale + offset`` with ``q`` in
``[0, 2**bits - 1]`` (the form torch's int4 CPU kernel consumes); symmetric integers use
``w ~ q * scale`` with ``q`` in ``[-2**(bits-1), 2**(bits-1) - 1]``.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from torchslim.core.errors import ConfigError
from torchslim.quantization.formats import (
    NF4, NF4_LEVELS, Binary, Codebook, Format, Granularity, IntFormat, PerChannel, PerGroup, PerTensor, Ternary,
)

_EPS = 1e-12


def padded_cols(cols: int, gran: Granularity) -> int:
    """Input width after padding to whole groups (e.g. 576 -> 640 for groups of 128)."""
    return -(-cols // gran.size) * gran.size if isinstance(gran, PerGroup) else cols


def to_groups(w: torch.Tensor, gran: Granularity) -> torch.Tensor:
    """View ``w`` (any shape; dim 0 = output channels) as ``[rows, n_groups, group]``.

    When the group size does not divide the input width, the last group is padded with
    zero columns (the layer's input is padded with zeros to match, so outputs are exact).
    """
    w2 = w.reshape(w.shape[0], -1) if w.dim() > 1 else w.reshape(1, -1)
    rows, cols = w2.shape
    if isinstance(gran, PerTensor):
        return w2.reshape(1, 1, -1)
    if isinstance(gran, PerChannel):
        return w2.reshape(rows, 1, cols)
    if isinstance(gran, PerGroup):
        pad = padded_cols(cols, gran) - cols
        if pad:
            w2 = torch.cat([w2, w2.new_zeros(rows, pad)], dim=1)
        return w2.reshape(rows, -1, gran.size)
    raise ConfigError(f"unknown granularity {gran!r}")


@dataclass
class QTensor:
    """Integer codes with their quantization parameters (codes are unpacked, one per int8/uint8)."""

    codes: torch.Tensor              # [rows, n_groups, group], int8 (symmetric) or uint8
    scale: torch.Tensor              # [rows, n_groups, 1]
    offset: torch.Tensor | None      # [rows, n_groups, 1] float offset (asymmetric ints), else None
    levels: torch.Tensor | None      # lookup table for NF4 / codebook / ternary / binary
    fmt: Format
    shape: torch.Size

    def values(self) -> torch.Tensor:
        """The quantized values before scaling (levels looked up for non-uniform formats)."""
        if self.levels is not None:
            return self.levels[self.codes.long()]
        return self.codes.float()

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        w = self.values() * self.scale
        if self.offset is not None:
            w = w + self.offset
        rows = self.shape[0] if len(self.shape) > 1 else 1
        w = w.reshape(rows, -1)[:, : self.shape.numel() // rows]  # drop group padding
        return w.reshape(self.shape).to(dtype)


def dequantize_groups(values: torch.Tensor, scale: torch.Tensor, offset: torch.Tensor | None) -> torch.Tensor:
    """``values * scale + offset`` for codes' values ``[rows, groups, group]`` (float) and per-group ``scale`` /
    ``offset`` ``[rows or 1, groups]``. With no gradient recorded, ``values`` is consumed (overwritten in place: two
    fewer passes over a weight-sized tensor, which dominated int4 layers' dequantized matmuls at prefill)."""
    if torch.is_grad_enabled():        # scales or offsets may be trained (QAT, block reconstruction)
        w = values * scale.unsqueeze(-1)
        return w + offset.unsqueeze(-1) if offset is not None else w
    w = values.mul_(scale.unsqueeze(-1))
    return w.add_(offset.unsqueeze(-1)) if offset is not None else w


# -- per-format quantizers (groups in, QTensor out) ---------------------------------------------
def quantize_int(groups: torch.Tensor, fmt: IntFormat, lo: torch.Tensor, hi: torch.Tensor, shape) -> QTensor:
    """Round-to-nearest onto ``fmt``'s grid spanning ``[lo, hi]`` per group."""
    if fmt.symmetric:
        scale = (torch.maximum(lo.abs(), hi.abs()) / fmt.qmax).clamp_min(_EPS)
        q = torch.clamp(torch.round(groups / scale), fmt.qmin, fmt.qmax).to(torch.int8)
        return QTensor(q, scale, None, None, fmt, shape)
    scale = ((hi - lo) / fmt.qmax).clamp_min(_EPS)
    q = torch.clamp(torch.round((groups - lo) / scale), 0, fmt.qmax).to(torch.uint8)
    return QTensor(q, scale, lo.clone(), None, fmt, shape)


def quantize_levels(groups: torch.Tensor, levels: torch.Tensor, scale: torch.Tensor, fmt: Format, shape) -> QTensor:
    """Nearest level of ``levels * scale`` (non-uniform formats)."""
    normed = groups / scale
    codes = torch.bucketize(normed, (levels[1:] + levels[:-1]) / 2).to(torch.uint8)
    return QTensor(codes, scale, None, levels, fmt, shape)


def kmeans_1d(x: torch.Tensor, k: int, iters: int = 20) -> torch.Tensor:
    """Sorted k-means centroids of the values ``x`` (initialized at quantiles; deterministic)."""
    x = x.flatten().float()
    if x.numel() > 1 << 20:
        x = x[torch.linspace(0, x.numel() - 1, 1 << 20).long()]
    qs = torch.linspace(0, 1, k + 2)[1:-1]
    centroids = torch.quantile(x, qs) if x.numel() <= 1 << 24 else x.sort().values[(qs * (x.numel() - 1)).long()]
    for _ in range(iters):
        idx = torch.bucketize(x, (centroids[1:] + centroids[:-1]) / 2)
        sums = torch.zeros(k).index_add_(0, idx, x)
        counts = torch.zeros(k).index_add_(0, idx, torch.ones_like(x))
        centroids = torch.where(counts > 0, sums / counts.clamp_min(1), centroids).sort().values
    return centroids


def quantize_groups(groups: torch.Tensor, fmt: Format, lo: torch.Tensor, hi: torch.Tensor, shape) -> QTensor:
    """Quantize ``groups`` with ``fmt`` given each group's clipping range ``[lo, hi]``."""
    amax = torch.maximum(lo.abs(), hi.abs()).clamp_min(_EPS)
    if isinstance(fmt, IntFormat):
        return quantize_int(groups, fmt, lo, hi, shape)
    if isinstance(fmt, NF4):
        return quantize_levels(groups, NF4_LEVELS.to(groups.dtype), amax, fmt, shape)
    if isinstance(fmt, Ternary):
        thr = fmt.threshold * groups.abs().mean(dim=-1, keepdim=True)
        mask = groups.abs() > thr
        scale = ((groups.abs() * mask).sum(-1, keepdim=True) / mask.sum(-1, keepdim=True).clamp_min(1)).clamp_min(_EPS)
        codes = (torch.sign(groups) * mask + 1).to(torch.uint8)  # -1, 0, +1 -> 0, 1, 2
        return QTensor(codes, scale, None, torch.tensor([-1.0, 0.0, 1.0]), fmt, shape)
    if isinstance(fmt, Binary):
        scale = groups.abs().mean(dim=-1, keepdim=True).clamp_min(_EPS)
        codes = (groups >= 0).to(torch.uint8)  # -1, +1 -> 0, 1
        return QTensor(codes, scale, None, torch.tensor([-1.0, 1.0]), fmt, shape)
    if isinstance(fmt, Codebook):
        levels = kmeans_1d(groups / amax, 2**fmt.bits, fmt.iters)
        return quantize_levels(groups, levels, amax, fmt, shape)
    raise ConfigError(f"unknown format {fmt!r}")


def fake_quantize(w: torch.Tensor, fmt: Format, gran: Granularity, lo=None, hi=None) -> torch.Tensor:
    """Quantize then dequantize ``w`` (min-max range unless given). A training/analysis tool only."""
    g = to_groups(w, gran)
    lo = g.amin(-1, keepdim=True) if lo is None else lo
    hi = g.amax(-1, keepdim=True) if hi is None else hi
    return quantize_groups(g, fmt, lo, hi, w.shape).dequantize(w.dtype)


def sqnr_db(ref: torch.Tensor, approx: torch.Tensor) -> float:
    """Signal-to-quantization-noise ratio in dB (higher is better)."""
    noise = (ref.float() - approx.float()).pow(2).sum()
    return float(10 * torch.log10(ref.float().pow(2).sum() / noise.clamp_min(1e-30)))
