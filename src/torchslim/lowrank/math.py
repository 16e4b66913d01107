"""Low-rank factorization of a weight matrix as pure functions: tensors in, two factors out.

A linear layer ``y = x W^T`` (``W [out, in]``) is replaced by ``y = (x down^T) up^T`` with ``up [out, r]`` and
``down [r, in]``: ``r (out + in)`` weights instead of ``out * in``. Three ways to pick the two factors, all of the
form "decompose ``A = W T``, truncate, map back with ``T^-1``" for an input transform ``T``:

* plain truncated SVD (``T = I``): the best rank-``r`` approximation of ``W`` itself (Eckart-Young);
* activation-aware SVD (ASVD, Yuan et al. 2023; ``T = diag(s)``, ``s_j = mean|x_j|^alpha``): input channels that
  carry large activations are kept more faithfully;
* whitened SVD (SVD-LLM, Wang et al. 2024; ``T = L``, the Cholesky factor of the input Gram matrix
  ``X^T X = L L^T``): since ``||(W - W') X^T||_F = ||(W - W') L||_F``, truncating ``W L`` gives the rank-``r``
  matrix with the smallest output error on the calibration inputs (exactly so without damping).

Singular values are split evenly (``sqrt(S)`` into each factor), so the two factors have similar ranges (they are
quantized alike later). Decompositions run in float64; factors come back in float32.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, NamedTuple

import torch

from torchslim.core.errors import ConfigError


class Factors(NamedTuple):
    up: torch.Tensor     # [out, r]
    down: torch.Tensor   # [r, in]

    @property
    def rank(self) -> int:
        return self.down.shape[0]

    def product(self) -> torch.Tensor:
        return self.up @ self.down


@dataclass(frozen=True)
class InputTransform:
    """A right transform ``T`` of the weight: ``apply(W) = W T`` and ``undo(M) = M T^-1``."""

    name: str
    apply: Callable[[torch.Tensor], torch.Tensor]
    undo: Callable[[torch.Tensor], torch.Tensor]


def identity() -> InputTransform:
    return InputTransform("svd", lambda w: w, lambda m: m)


def activation_scaling(absmean: torch.Tensor, alpha: float = 0.5) -> InputTransform:
    """ASVD's ``T = diag(mean|x|^alpha)`` (channels that never fire are clamped to a tiny positive scale)."""
    if alpha < 0:
        raise ConfigError(f"ASVD alpha must be >= 0, got {alpha}")
    a = absmean.detach().double().abs()
    floor = a.max().clamp_min(1e-12) * 1e-6
    s = a.clamp_min(floor).pow(alpha)
    return InputTransform("asvd", lambda w: w * s, lambda m: m / s)


def whitening(gram: torch.Tensor, damp: float = 0.01) -> InputTransform:
    """SVD-LLM's ``T = L`` with ``L L^T = G + damp * mean(diag G) * I`` (lower Cholesky factor of the input Gram
    matrix ``G``, any positive multiple of ``X^T X``). The dampening grows until the factorization succeeds."""
    if damp < 0:
        raise ConfigError(f"whitening damp must be >= 0, got {damp}")
    g = gram.detach().double()
    g = (g + g.T) / 2
    mean_diag = g.diagonal().mean().clamp_min(1e-12)
    eye = torch.eye(g.shape[0], dtype=g.dtype, device=g.device)
    step = damp if damp > 0 else 1e-8
    extra = damp
    for _ in range(8):
        L, info = torch.linalg.cholesky_ex(g + extra * mean_diag * eye)
        if int(info) == 0:
            return InputTransform(
                "whiten", lambda w: w @ L,
                lambda m: torch.linalg.solve_triangular(L, m, upper=False, left=False))
        step *= 10
        extra = step
    raise ConfigError("whitened SVD: the input Gram matrix is not positive definite even after dampening; "
                      "use more calibration data")


def spectrum(w: torch.Tensor, t: InputTransform | None = None) -> torch.Tensor:
    """Singular values (descending, float64) of ``W T``."""
    t = t or identity()
    return torch.linalg.svdvals(t.apply(w.detach().double()))


def factorize(w: torch.Tensor, rank: int, t: InputTransform | None = None) -> Factors:
    """Rank-``rank`` factors of ``W`` truncated in the space of ``T`` (``up @ down ~ W``)."""
    t = t or identity()
    out_f, in_f = w.shape
    if not 1 <= rank <= min(out_f, in_f):
        raise ConfigError(f"rank must be between 1 and {min(out_f, in_f)} for a [{out_f}, {in_f}] weight, got {rank}")
    u, s, vh = torch.linalg.svd(t.apply(w.detach().double()), full_matrices=False)
    root = s[:rank].sqrt()
    up = u[:, :rank] * root
    down = t.undo(root[:, None] * vh[:rank])
    return Factors(up.float(), down.float())


def svd_factors(w: torch.Tensor, rank: int) -> Factors:
    """Plain truncated SVD."""
    return factorize(w, rank)


def asvd_factors(w: torch.Tensor, absmean: torch.Tensor, rank: int, alpha: float = 0.5) -> Factors:
    """Activation-aware SVD: truncate ``W diag(s)``, ``s = mean|x|^alpha`` per input channel."""
    return factorize(w, rank, activation_scaling(absmean, alpha))


def whitened_factors(w: torch.Tensor, gram: torch.Tensor, rank: int, damp: float = 0.01) -> Factors:
    """Whitened SVD: truncate ``W L`` (``L L^T`` = the input Gram matrix), map back with ``L^-1``."""
    return factorize(w, rank, whitening(gram, damp))


def output_error(w: torch.Tensor, f: Factors, x: torch.Tensor) -> float:
    """``||x W^T - x (up down)^T||_F / ||x W^T||_F`` on input rows ``x [n, in]``."""
    x = x.double()
    ref = x @ w.double().T
    return float((ref - x @ f.product().double().T).norm() / ref.norm().clamp_min(1e-30))
