"""Typed, versioned configs of the pruning family (``torchslim.prune_(model, config)``)."""
from __future__ import annotations

import enum
from dataclasses import dataclass, field

from torchslim.core.config import BaseConfig, between
from torchslim.core.errors import ConfigError
from torchslim.core.select import Selector
from torchslim.pruning.importance import Importance
from torchslim.pruning.masks import check_sparsity, parse_nm


def default_selector() -> Selector:
    """Every nn.Linear except an output head (often tied to the embeddings; pruning it hurts most)."""
    return Selector(exclude=("re:(.*\\.)?lm_head",))


class Scope(str, enum.Enum):
    LAYER = "layer"     # the same sparsity in every layer (per output row for Wanda, as in the paper)
    GLOBAL = "global"   # one threshold (or ranking) across layers: per-layer sparsity differs


class Storage(str, enum.Enum):
    AUTO = "auto"        # the smaller of bitmask and CSR
    BITMASK = "bitmask"  # nonzero values + one bit per element
    CSR = "csr"          # nonzero values + column indices + row pointers
    DENSE = "dense"      # zeros stored densely (no size gain; for debugging and comparison)


class SparseKernel(str, enum.Enum):
    AUTO = "auto"        # CSR matmul where it measured faster on this CPU, else dense
    DENSE = "dense"
    CSR = "csr"
    SEMI_STRUCTURED = "semi_structured"  # 2:4 on CUDA (torch.sparse.to_sparse_semi_structured)


class Target(str, enum.Enum):
    CHANNELS = "channels"  # conv filters/channels and linear features, coupled by a dependency graph
    NEURONS = "neurons"    # transformer MLP intermediate neurons
    HEADS = "heads"        # attention heads (GQA-aware: whole key/value groups)
    LAYERS = "layers"      # whole transformer blocks (depth)


@dataclass
class UnstructuredConfig(BaseConfig):
    """Zero individual weights (or N of every M) of the selected linear layers.

    ``importance``: magnitude, Wanda or SparseGPT (one-shot, calibrated), or random;
    Taylor/movement come from a training schedule. ``pattern`` ``"2:4"``/``"4:8"`` makes it N:M
    (then ``sparsity`` is implied). ``storage`` decides how the artifact stores the weights.
    """

    family = "pruning"
    technique = "unstructured"
    sparsity: float = 0.5
    importance: Importance = Importance.MAGNITUDE
    scope: Scope = Scope.LAYER
    pattern: str | None = None
    storage: Storage = Storage.AUTO
    kernel: SparseKernel = SparseKernel.AUTO
    n_samples: int = between(128, 1, 1 << 16)
    sequential: bool = True          # calibrated criteria: block by block, each block sees pruned inputs
    block_size: int = between(128, 1, 1 << 16)  # SparseGPT column block
    damp: float = 0.01               # SparseGPT Hessian dampening (fraction of the mean diagonal)
    seed: int = between(0, 0, 2**63 - 1)  # random importance
    selector: Selector = field(default_factory=default_selector)

    def validate(self) -> None:
        check_sparsity(self.sparsity, "UnstructuredConfig.sparsity")
        if self.pattern is not None:
            n, m = parse_nm(self.pattern)
            self.sparsity = 1 - n / m
        if self.importance is Importance.SPARSEGPT and self.scope is Scope.GLOBAL:
            raise ConfigError("SparseGPT prunes layer by layer; scope must be 'layer'")
        if self.importance is Importance.UNIFORM:
            raise ConfigError("importance 'uniform' keeps evenly spaced blocks (StructuredConfig with targets=['layers'])")
        if self.importance.needs_gradients:
            raise ConfigError(f"{self.importance.value} importance needs training: use a pruning schedule "
                              "(torchslim.pruning.schedules) rather than one-shot prune_")
        if self.n_samples < 1 or self.block_size < 1 or not 0 < self.damp < 1:
            raise ConfigError("UnstructuredConfig: n_samples and block_size must be positive, damp in (0, 1)")

    @property
    def nm(self) -> tuple[int, int] | None:
        return parse_nm(self.pattern) if self.pattern else None


@dataclass
class StructuredConfig(BaseConfig):
    """Remove whole channels, neurons, heads or blocks, leaving a physically smaller model.

    ``ratio`` is the fraction of the targeted units removed (of each group with ``scope=layer``,
    of all of them with ``scope=global``, giving per-layer sizes). ``round_to`` keeps kept counts
    multiples of it (kernels like multiples of 8). Importance: magnitude (L2 of the coupled
    weights), Taylor (gradients of the task loss on calibration batches), Wanda-style activation
    x weight, or random. ``None`` (the default): Taylor when a task with a loss is given, as the shipped
    recipes use (weight magnitude alone can collapse a pretrained LLM), else magnitude_l2 with a warning.
    """

    family = "pruning"
    technique = "structured"
    targets: tuple[Target, ...] = (Target.HEADS, Target.NEURONS)
    ratio: float = 0.25
    importance: Importance | None = None        # None: taylor with a task, else magnitude_l2 (warned)
    scope: Scope = Scope.LAYER
    round_to: int = between(1, 1, 4096)
    n_samples: int = between(32, 1, 1 << 16)
    min_keep: int = between(1, 1, 1 << 20)
    selector: Selector = field(default_factory=lambda: Selector(include=("re:.*",)))

    @property
    def partial_by_design(self) -> bool:
        """Neurons alone change only each block's MLP layers, heads alone only its attention: a stage that leaves
        most weight layers as they were did what was asked (the coverage report then says so without a warning)."""
        return set(self.targets) in ({Target.NEURONS}, {Target.HEADS})

    def validate(self) -> None:
        check_sparsity(self.ratio, "StructuredConfig.ratio")
        if not self.targets:
            raise ConfigError("StructuredConfig.targets is empty")
        if Target.CHANNELS in self.targets and len(self.targets) > 1:
            raise ConfigError("StructuredConfig: 'channels' (dependency graph) cannot be combined with other targets")
        if self.importance in (Importance.SPARSEGPT, Importance.MOVEMENT):
            raise ConfigError(f"{self.importance.value} is not a structured importance; use magnitude_l2, "
                              "magnitude, taylor, wanda or random")
        if self.importance is Importance.UNIFORM and set(self.targets) != {Target.LAYERS}:
            raise ConfigError("importance 'uniform' (evenly spaced blocks kept) applies to targets=['layers'] only")
        if self.round_to < 1 or self.min_keep < 1 or self.n_samples < 1:
            raise ConfigError("StructuredConfig: round_to, min_keep and n_samples must be positive")
