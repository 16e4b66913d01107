"""Clipping-range observers: min-max, percentile, MSE-optimal search and KL (entropy) calibration.

Each observer is a typed config; :func:`group_range` turns groups ``[rows, n_groups, group]``
into per-group ``(lo, hi)``. :class:`ActivationObserver` streams calibration activations and
applies the same observer to what it saw. :func:`compare_observers` reports, for one layer,
the quantization error each observer leads to.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Union

import torch

from torchslim.calibration.stats import ChannelStats
from torchslim.core.config import BaseConfig, between
from torchslim.core.errors import ConfigError
from torchslim.quantization.formats import NF4, Format, Granularity, IntFormat, PerChannel, PerTensor
from torchslim.quantization.primitives import quantize_groups, sqnr_db, to_groups


@dataclass(frozen=True)
class MinMax(BaseConfig):
    """The full range of the data."""


@dataclass(frozen=True)
class Percentile(BaseConfig):
    """Clip at the ``pct`` percentile of |x| (symmetric) or at (100-pct, pct) percentiles."""

    pct: float = 99.9

    def validate(self) -> None:
        if not 50 < self.pct <= 100:
            raise ConfigError(f"Percentile.pct must be in (50, 100], got {self.pct}")


@dataclass(frozen=True)
class MSE(BaseConfig):
    """Shrink the min-max range by the factor in ``[min_shrink, 1]`` that minimizes the squared error."""

    grid: int = between(40, 2, 10000)
    min_shrink: float = 0.3

    def validate(self) -> None:
        if self.grid < 2 or not 0 < self.min_shrink < 1:
            raise ConfigError("MSE needs grid >= 2 and 0 < min_shrink < 1")


@dataclass(frozen=True)
class KL(BaseConfig):
    """Entropy calibration: the symmetric threshold minimizing KL(P || Q) between the |x| histogram
    and its quantized version (TensorRT-style). One range per tensor or per channel."""

    bins: int = between(2048, 16, 1 << 16)
    stride: int = between(8, 1, 1 << 16)


Observer = Union[MinMax, Percentile, MSE, KL]


def _kth(g: torch.Tensor, q: float) -> torch.Tensor:
    k = min(g.shape[-1], max(1, int(round(q * g.shape[-1]))))
    return g.kthvalue(k, dim=-1, keepdim=True).values


def _kl_threshold(x: torch.Tensor, bins: int, stride: int, levels: int) -> float:
    ax = x.abs().flatten().double()
    amax = float(ax.max())
    if amax == 0:
        return 1e-12
    hist = torch.histc(ax, bins=bins, min=0, max=amax)
    best, best_i = math.inf, bins
    for i in range(max(levels, stride), bins + 1, stride):
        p = hist[:i].clone()
        p[-1] += hist[i:].sum()
        nz = p > 0
        # merge the i bins into `levels` bins, then spread each back over its non-empty bins
        idx = torch.div(torch.arange(i) * levels, i, rounding_mode="floor")
        merged = torch.zeros(levels, dtype=p.dtype).index_add_(0, idx, hist[:i])
        counts = torch.zeros(levels, dtype=p.dtype).index_add_(0, idx, nz.to(p.dtype))
        q = torch.where(nz, merged[idx] / counts[idx].clamp_min(1), torch.zeros_like(p))
        ps, qs = p / p.sum(), q / q.sum().clamp_min(1e-30)
        m = nz & (qs > 0)
        kl = float((ps[m] * torch.log(ps[m] / qs[m])).sum()) + float(ps[nz & (qs == 0)].sum()) * 30
        if kl < best:
            best, best_i = kl, i
    return (best_i + 0.5) * amax / bins


def group_range(groups: torch.Tensor, obs: Observer, fmt: Format) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-group clipping range ``(lo, hi)``, each ``[rows, n_groups, 1]``."""
    lo, hi = groups.amin(-1, keepdim=True), groups.amax(-1, keepdim=True)
    if isinstance(obs, MinMax) or not uses_range(fmt):
        return lo, hi
    if isinstance(obs, Percentile):
        q = obs.pct / 100
        return _kth(groups, 1 - q), _kth(groups, q)
    if isinstance(obs, MSE):
        return _mse_range(groups, obs, fmt, lo, hi)
    if isinstance(obs, KL):
        levels = (fmt.qmax + 1) if isinstance(fmt, IntFormat) else 2 ** fmt.storage_bits // 2
        if groups.shape[0] != 1 or groups.shape[1] != 1:
            raise ConfigError("the KL observer gives one range per tensor: use it with PerTensor granularity")
        t = torch.tensor(_kl_threshold(groups, obs.bins, obs.stride, levels)).reshape(1, 1, 1)
        return torch.maximum(lo, -t), torch.minimum(hi, t)
    raise ConfigError(f"unknown observer {obs!r}")


def uses_range(fmt: Format) -> bool:
    """Whether ``fmt`` is scaled from a clipping range (ternary, binary and codebooks set their own scale)."""
    return isinstance(fmt, (IntFormat, NF4))


def _mse_range(groups, obs: MSE, fmt: Format, lo, hi):
    best_err = torch.full_like(lo, math.inf)
    best_lo, best_hi = lo.clone(), hi.clone()
    for a in torch.linspace(1.0, obs.min_shrink, obs.grid):
        clo, chi = lo * a, hi * a
        deq = quantize_groups(groups, fmt, clo, chi, groups.shape).dequantize()
        err = (deq - groups).pow(2).sum(-1, keepdim=True)
        better = err < best_err
        best_err = torch.where(better, err, best_err)
        best_lo, best_hi = torch.where(better, clo, best_lo), torch.where(better, chi, best_hi)
    return best_lo, best_hi


class ActivationObserver:
    """Streams activations of one layer during calibration and returns a per-tensor range.

    Keeps exact running min/max and a bounded, evenly strided sample of values so that
    percentile, MSE and KL observers see a representative set without storing everything.
    """

    def __init__(self, observer: Observer, fmt: IntFormat, max_samples: int = 1 << 20):
        self.observer, self.fmt, self.max_samples = observer, fmt, max_samples
        self.lo, self.hi = math.inf, -math.inf
        self.samples: list[torch.Tensor] = []
        self.n_seen = 0

    def update(self, x: torch.Tensor) -> None:
        x = x.detach().float().flatten()
        self.lo, self.hi = min(self.lo, float(x.min())), max(self.hi, float(x.max()))
        self.n_seen += x.numel()
        if not isinstance(self.observer, MinMax):
            step = max(1, x.numel() // max(1, self.max_samples // 16))
            self.samples.append(x[::step].clone())
            if sum(s.numel() for s in self.samples) > self.max_samples:
                self.samples = [torch.cat(self.samples)[::2]]

    def range(self) -> tuple[float, float]:
        if self.n_seen == 0:
            raise ConfigError("activation observer saw no data: is the calibration set empty?")
        if isinstance(self.observer, MinMax):
            return self.lo, self.hi
        g = torch.cat(self.samples).reshape(1, 1, -1)
        lo, hi = group_range(g, self.observer, self.fmt)
        return float(lo), float(hi)


def compare_observers(w: torch.Tensor, fmt: Format, gran: Granularity,
                      observers: tuple[Observer, ...] = (MinMax(), Percentile(), MSE(), KL())) -> dict[str, float]:
    """SQNR (dB) of ``w`` quantized with ``fmt``/``gran`` under each applicable observer.

    KL applies to per-tensor ranges only; formats that set their own scale only report ``MinMax``.
    """
    g = to_groups(w, gran)
    out = {}
    for obs in observers:
        if (isinstance(obs, KL) and not isinstance(gran, PerTensor)) or (not uses_range(fmt) and not isinstance(obs, MinMax)):
            continue
        lo, hi = group_range(g, obs, fmt)
        out[type(obs).__name__] = sqnr_db(w, quantize_groups(g, fmt, lo, hi, w.shape).dequantize())
    return out


__all__ = ["KL", "MSE", "ActivationObserver", "MinMax", "Observer", "Percentile", "compare_observers", "group_range",
           "uses_range", "PerChannel"]


# -- activation calibration math (static int8 ranges, SmoothQuant) -------------------------------
def smooth_factors(act_absmax: torch.Tensor, weight: torch.Tensor, alpha: float) -> torch.Tensor:
    """SmoothQuant's ``1 / s`` per input channel, ``s = max|X_j|**alpha / max|W_j|**(1 - alpha)`` (pure)."""
    w_absmax = weight.detach().abs().amax(dim=0).float().clamp_min(1e-5)
    s = (act_absmax.clamp_min(1e-5) ** alpha) / (w_absmax ** (1 - alpha))
    return 1.0 / s.clamp_min(1e-5)


def static_range(stats: ChannelStats, smooth: torch.Tensor | None, observer: Observer) -> tuple[float, float]:
    """Activation range of the (smoothed) input: exact for min-max, from sampled rows otherwise."""
    inv = smooth if smooth is not None else torch.ones_like(stats.lo)
    if isinstance(observer, MinMax):  # min/max of x_j * inv_j over all rows, from per-channel extremes
        lo, hi = stats.lo * inv, stats.hi * inv
        return float(torch.minimum(lo, hi).min()), float(torch.maximum(lo, hi).max())
    sample = (stats.sample() * inv).reshape(1, 1, -1)
    lo, hi = group_range(sample, observer, IntFormat(8, symmetric=False))
    return float(lo), float(hi)
