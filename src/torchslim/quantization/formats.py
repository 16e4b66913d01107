"""Number formats and granularities, as typed values (never strings inside the library).

Formats:
  * :class:`IntFormat` ``(bits, symmetric)``: uniform integers, 2..8 bits, with or without zero point;
  * :class:`Ternary`: {-1, 0, +1} x scale;  :class:`Binary`: {-1, +1} x scale;
  * :class:`NF4`: the 16 normal-float levels of QLoRA x absmax scale;
  * :class:`Codebook` ``(bits)``: 2**bits levels learned by k-means on the weights.

Granularities: :class:`PerTensor`, :class:`PerChannel` (one scale per output row) and
:class:`PerGroup` ``(size)`` (one scale per ``size`` consecutive input elements of a row).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Union

import torch

from torchslim.core.config import BaseConfig, between
from torchslim.core.errors import ConfigError


@dataclass(frozen=True)
class PerTensor(BaseConfig):
    """One scale (and zero point) for the whole tensor."""


@dataclass(frozen=True)
class PerChannel(BaseConfig):
    """One scale per output channel (row of a linear weight)."""


@dataclass(frozen=True)
class PerGroup(BaseConfig):
    """One scale per group of ``size`` consecutive input elements of a row."""

    size: int = between(128, 2, 65536)

    def validate(self) -> None:
        if self.size < 2:
            raise ConfigError(f"PerGroup.size must be at least 2, got {self.size}")


Granularity = Union[PerTensor, PerChannel, PerGroup]


@dataclass(frozen=True)
class IntFormat(BaseConfig):
    """Uniform integer format with ``bits`` bits, symmetric (no zero point) or asymmetric."""

    bits: int = 8
    symmetric: bool = True

    def validate(self) -> None:
        if not 2 <= self.bits <= 8:
            raise ConfigError(f"IntFormat.bits must be between 2 and 8, got {self.bits}")

    @property
    def qmin(self) -> int:
        return -(2 ** (self.bits - 1)) if self.symmetric else 0

    @property
    def qmax(self) -> int:
        return 2 ** (self.bits - 1) - 1 if self.symmetric else 2**self.bits - 1

    @property
    def storage_bits(self) -> int:
        return self.bits

    @property
    def name(self) -> str:
        return f"int{self.bits}{'' if self.symmetric else '-asym'}"


@dataclass(frozen=True)
class Ternary(BaseConfig):
    """{-1, 0, +1} x scale (threshold 0.7 x mean |w|, as in Ternary Weight Networks)."""

    threshold: float = between(0.7, 0.01, 3.0)   # x mean |w|; 3 already zeroes almost every weight
    storage_bits = 2
    name = "ternary"


@dataclass(frozen=True)
class Binary(BaseConfig):
    """{-1, +1} x scale, with scale = mean |w| (XNOR-Net)."""

    storage_bits = 1
    name = "binary"


@dataclass(frozen=True)
class NF4(BaseConfig):
    """4-bit NormalFloat (QLoRA): 16 levels at normal quantiles, scaled by each group's absmax."""

    storage_bits = 4
    name = "nf4"


@dataclass(frozen=True)
class Codebook(BaseConfig):
    """2**bits levels per tensor, learned by k-means on the weights (non-uniform)."""

    bits: int = 4
    iters: int = between(20, 1, 1000)

    def validate(self) -> None:
        if not 1 <= self.bits <= 8:
            raise ConfigError(f"Codebook.bits must be between 1 and 8, got {self.bits}")

    @property
    def storage_bits(self) -> int:
        return self.bits

    @property
    def name(self) -> str:
        return f"codebook{self.bits}"


Format = Union[IntFormat, Ternary, Binary, NF4, Codebook]

# The NF4 levels of QLoRA (Dettmers et al. 2023, Appendix E), normalized to [-1, 1].
NF4_LEVELS = torch.tensor([
    -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635,
    -0.18477343022823334, -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725,
    0.24611230194568634, 0.33791524171829224, 0.44070982933044434, 0.5626170039176941,
    0.7229568362236023, 1.0,
])
