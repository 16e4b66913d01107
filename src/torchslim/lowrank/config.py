"""The typed config of the low-rank family (``torchslim.factorize_(model, LowRankConfig(...))``)."""
from __future__ import annotations

import enum
from dataclasses import dataclass, field

from torchslim.core.config import BaseConfig, between
from torchslim.core.errors import ConfigError
from torchslim.core.select import Selector


def default_selector() -> Selector:
    """Every linear layer except the output head (often tied to the embeddings, and the most sensitive) and a
    classifier head (too narrow for a factorization to be smaller)."""
    return Selector(exclude=("re:(.*\\.)?(lm_head|classifier|score)",))


class Method(str, enum.Enum):
    SVD = "svd"         # plain truncated SVD of the weight: no data needed
    ASVD = "asvd"       # activation-aware: input channels scaled by mean |x| ** alpha before the SVD
    WHITEN = "whiten"   # SVD-LLM: truncation in the space whitened by the input Gram matrix (least output error)


class Allocation(str, enum.Enum):
    UNIFORM = "uniform"  # every layer loses the same share of its weights (SVD-LLM's setting)
    GLOBAL = "global"    # one threshold on kept energy per weight across layers: ranks differ per layer


class Budget(str, enum.Enum):
    PARAMS = "params"   # the ratio counts weights
    FLOPS = "flops"     # the ratio counts matmul FLOPs (weights x rows each layer sees per forward; needs data)


@dataclass
class LowRankConfig(BaseConfig):
    """Replace the selected linear layers by two-factor :class:`~torchslim.lowrank.LowRankLinear` layers.

    One rank rule: ``ratio`` (the share of the selected layers' weights, or FLOPs with ``budget="flops"``, removed
    overall, shared out by ``allocation``; 0.2 if no rule is given), ``energy`` (per layer, the smallest rank
    keeping that share of the spectrum's energy: of ``W``, of ``W diag(s)`` for ASVD, of the output on the
    calibration inputs for whitening) or ``rank`` (the same rank everywhere). A layer is only replaced where the
    factors are smaller than the dense weight; ranks are multiples of ``rank_multiple``.
    """

    family = "lowrank"
    technique = "lowrank"
    method: Method = Method.WHITEN
    ratio: float | None = None
    energy: float | None = None
    rank: int | None = None
    allocation: Allocation = Allocation.UNIFORM
    budget: Budget = Budget.PARAMS
    alpha: float = 0.5                 # ASVD: scale = mean|x| ** alpha
    damp: float = 0.01                 # whitening: added to the Gram diagonal, times its mean
    rank_multiple: int = between(8, 1, 1 << 16)
    n_samples: int = between(128, 1, 1 << 16)
    sequential: bool = True            # calibration block by block (memory: one block's activations)
    measure_speed: bool = True         # time each factorized shape against dense at conversion
    only_faster: bool = False          # keep dense the layers measured not faster (the budget may then be missed)
    selector: Selector = field(default_factory=default_selector)

    def validate(self) -> None:
        given = [n for n in ("ratio", "energy", "rank") if getattr(self, n) is not None]
        if len(given) > 1:
            raise ConfigError(f"LowRankConfig takes one rank rule, got {' and '.join(given)}")
        if self.ratio is not None and not 0 < self.ratio < 1:
            raise ConfigError(f"LowRankConfig.ratio (share of weights removed) must be in (0, 1), got {self.ratio}")
        if self.energy is not None and not 0 < self.energy <= 1:
            raise ConfigError(f"LowRankConfig.energy must be in (0, 1], got {self.energy}")
        if self.rank is not None and self.rank < 1:
            raise ConfigError(f"LowRankConfig.rank must be >= 1, got {self.rank}")
        if self.alpha < 0 or not 0 <= self.damp < 1:
            raise ConfigError("LowRankConfig: alpha must be >= 0 and damp in [0, 1)")
        if self.only_faster and not self.measure_speed:
            raise ConfigError("LowRankConfig.only_faster needs measure_speed")

    @property
    def share(self) -> float | None:
        """The share to remove: ``ratio``, or 0.2 when no rank rule is given (the config itself keeps None, so
        it saves and reads back as given)."""
        if self.ratio is not None:
            return self.ratio
        return 0.2 if self.energy is None and self.rank is None else None

    @property
    def needs_data(self) -> bool:
        """Whether this config measures activations (ASVD, whitening, or a FLOP budget shared out globally)."""
        return self.method is not Method.SVD or (self.share is not None and self.budget is Budget.FLOPS
                                                 and self.allocation is Allocation.GLOBAL)

    def rule(self) -> str:
        if self.share is not None:
            return f"remove {self.share:.0%} of {'FLOPs' if self.budget is Budget.FLOPS else 'weights'} " \
                   f"({self.allocation.value})"
        return f"keep {self.energy:.0%} energy" if self.energy is not None else f"rank {self.rank}"
