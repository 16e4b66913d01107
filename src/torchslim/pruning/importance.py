"""Importance criteria (pure math: tensors in, scores out).

Every criterion returns a score per weight element, the same shape as the weight: the higher,
the more the element matters. Structured pruning reduces element scores to one score per
channel, neuron or head with :func:`reduce_scores`.

* magnitude ``|w|`` (L1) or ``w**2`` (L2);
* first-order Taylor ``|w * g|`` (the loss change of zeroing ``w``, to first order; ``g`` the
  gradient, usually accumulated over a few batches);
* movement ``-sum_t w * g_t`` (Sanh et al. 2020: weights moving away from zero during
  fine-tuning are kept), accumulated by a training hook;
* Wanda ``|w| * ||x_j||_2`` (Sun et al. 2023: weight times the L2 norm of its input channel over
  the calibration tokens);
* random, as a control.

SparseGPT is not a score: it prunes with its own second-order solver (``sparsegpt_math``).
"""
from __future__ import annotations

import enum

import torch

from torchslim.core.errors import ConfigError


class Importance(str, enum.Enum):
    MAGNITUDE = "magnitude"      # L1: |w|
    MAGNITUDE_L2 = "magnitude_l2"
    TAYLOR = "taylor"
    MOVEMENT = "movement"
    WANDA = "wanda"
    SPARSEGPT = "sparsegpt"
    RANDOM = "random"
    UNIFORM = "uniform"          # blocks only: keep evenly spaced blocks, first and last (a DistilBERT-style student)

    @property
    def needs_calibration(self) -> bool:
        return self in (Importance.WANDA, Importance.SPARSEGPT)

    @property
    def needs_gradients(self) -> bool:
        return self in (Importance.TAYLOR, Importance.MOVEMENT)


def magnitude(w: torch.Tensor, p: int = 1) -> torch.Tensor:
    w = w.detach().float()
    return w.abs() if p == 1 else w.pow(2)


def taylor(w: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    return (w.detach().float() * grad.detach().float()).abs()


def wanda(w: torch.Tensor, input_norm: torch.Tensor) -> torch.Tensor:
    """``|w_ij| * ||x_j||``; ``input_norm`` has one entry per input feature (``w.shape[1]``)."""
    w = w.detach().float()
    if input_norm.numel() != w.shape[1]:
        raise ConfigError(f"wanda: {input_norm.numel()} input norms for a weight with {w.shape[1]} inputs")
    shape = (1, -1) + (1,) * (w.dim() - 2)
    return w.abs() * input_norm.float().reshape(shape)


def random_scores(w: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    return torch.rand(w.shape, generator=generator)


def scores(w: torch.Tensor, importance: Importance, *, grad: torch.Tensor | None = None,
           movement: torch.Tensor | None = None, input_norm: torch.Tensor | None = None,
           generator: torch.Generator | None = None) -> torch.Tensor:
    """Element scores of ``w`` by ``importance``, given what that criterion needs."""
    if importance is Importance.MAGNITUDE:
        return magnitude(w, 1)
    if importance is Importance.MAGNITUDE_L2:
        return magnitude(w, 2)
    if importance is Importance.RANDOM:
        return random_scores(w, generator)
    if importance is Importance.TAYLOR:
        if grad is None:
            raise ConfigError("Taylor importance needs gradients: accumulate them first (see pruning.schedules)")
        return taylor(w, grad)
    if importance is Importance.MOVEMENT:
        if movement is None:
            raise ConfigError("movement importance is accumulated during fine-tuning: use a pruning schedule")
        return movement.detach().float()
    if importance is Importance.WANDA:
        if input_norm is None:
            raise ConfigError("Wanda importance needs calibration data (input activation norms)")
        return wanda(w, input_norm)
    raise ConfigError(f"{importance.value} is not an element score (SparseGPT prunes with its own solver; uniform "
                      "keeps evenly spaced blocks)")


def reduce_scores(s: torch.Tensor, dim: int, how: str = "sum") -> torch.Tensor:
    """One score per index along ``dim`` (a channel, neuron or head), reducing all other dims."""
    dims = [d for d in range(s.dim()) if d != dim % s.dim()]
    if not dims:
        return s.float()
    if how == "sum":
        return s.float().sum(dims)
    if how == "mean":
        return s.float().mean(dims)
    if how == "max":
        return s.float().amax(dims)
    raise ConfigError(f"unknown score reduction '{how}' (sum, mean, max)")
