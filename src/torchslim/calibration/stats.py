"""Statistics accumulators fed a layer's inputs during calibration (``add_batch(x)``)."""
from __future__ import annotations

import torch


class ChannelStats:
    """Per-input-channel min, max and mean |x| of a layer's inputs, plus a strided sample of rows.

    SmoothQuant needs the per-channel absmax, AWQ the per-channel mean magnitude and sample rows
    to score candidate scalings, static quantization the range of (scaled) inputs.
    """

    def __init__(self, in_features: int, max_rows: int = 4096):
        self.lo = torch.full((in_features,), float("inf"))
        self.hi = torch.full((in_features,), float("-inf"))
        self.abs_sum = torch.zeros(in_features, dtype=torch.float64)
        self.count = 0
        self.rows: list[torch.Tensor] = []
        self.max_rows = max_rows

    def add_batch(self, x: torch.Tensor) -> None:
        x = x.detach().reshape(-1, x.shape[-1]).float()
        if x.shape[0] == 0:
            return
        self.lo = torch.minimum(self.lo, x.amin(0))
        self.hi = torch.maximum(self.hi, x.amax(0))
        self.abs_sum += x.abs().sum(0, dtype=torch.float64)
        self.count += x.shape[0]
        self.rows.append(x[:: max(1, x.shape[0] // 64)].clone())
        if sum(r.shape[0] for r in self.rows) > self.max_rows:
            self.rows = [torch.cat(self.rows)[::2]]

    @property
    def absmax(self) -> torch.Tensor:
        return torch.maximum(self.lo.abs(), self.hi.abs())

    @property
    def absmean(self) -> torch.Tensor:
        return (self.abs_sum / max(self.count, 1)).float()

    def sample(self) -> torch.Tensor:
        return torch.cat(self.rows)

    def scaled(self, d: torch.Tensor) -> ChannelStats:
        """The statistics of ``x * d`` (``d > 0`` per channel), as if measured on the scaled inputs."""
        out = ChannelStats(self.lo.numel(), self.max_rows)
        out.lo, out.hi, out.abs_sum, out.count = self.lo * d, self.hi * d, self.abs_sum * d.double(), self.count
        out.rows = [r * d for r in self.rows]
        return out


class HessianAccumulator:
    """Running ``H = 2/n * sum(x x^T)`` over the rows of a layer's inputs."""

    def __init__(self, in_features: int):
        self.H = torch.zeros(in_features, in_features, dtype=torch.float32)
        self.n = 0

    def add_batch(self, x: torch.Tensor) -> None:
        x = x.detach().reshape(-1, x.shape[-1]).float()
        m = x.shape[0]
        if m == 0:
            return
        self.H.mul_(self.n / (self.n + m))
        self.n += m
        x = x * (2.0 / self.n) ** 0.5
        self.H.addmm_(x.T, x)

    def scaled(self, d: torch.Tensor) -> HessianAccumulator:
        """The Hessian of ``x * d`` (per-channel ``d``): ``diag(d) H diag(d)``."""
        out = HessianAccumulator(self.H.shape[0])
        d = d.to(self.H.dtype)
        out.H, out.n = self.H * d[:, None] * d[None, :], self.n
        return out


class InputNormStats:
    """Per-input-channel sum of squares of a layer's inputs: ``norm`` is ``||x_j||_2`` over all rows (Wanda)."""

    def __init__(self, in_features: int):
        self.sumsq = torch.zeros(in_features, dtype=torch.float64)
        self.count = 0

    def add_batch(self, x: torch.Tensor) -> None:
        x = x.detach().reshape(-1, x.shape[-1]).float()
        self.sumsq += x.pow(2).sum(0, dtype=torch.float64)
        self.count += x.shape[0]

    @property
    def norm(self) -> torch.Tensor:
        return self.sumsq.sqrt().float()
