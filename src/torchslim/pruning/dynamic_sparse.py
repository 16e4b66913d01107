"""Dynamic sparse training: sparse from the first step, at a constant number of weights (RigL and SET).

:class:`DynamicSparseConfig` is a training transform (:mod:`torchslim.train.transform`) on the one Trainer:

* ``prepare`` picks the layers (the one :class:`~torchslim.core.select.Selector`), gives each a density (ERK or
  uniform, :mod:`torchslim.pruning.dynamic_sparse_math`) and an initial mask with exactly that many kept weights
  (random, or the largest magnitudes), as the ``prune_mask`` buffers of :mod:`torchslim.pruning.schedules`;
* :class:`DynamicSparseHook` (a :class:`~torchslim.pruning.schedules.MaskHook`: masked gradients, masks re-applied
  after every step) changes the masks every ``update_every`` steps until ``end_fraction`` of training: drop the
  ``f(t)`` fraction of smallest-magnitude kept weights of each layer, grow as many where the dense gradient is
  largest (RigL, Evci et al. 2020) or at random (SET, Mocanu et al. 2018). Grown weights start at zero; the
  optimizer state of every changed position is zeroed. ``f`` decays with a cosine from ``drop_fraction``;
* ``convert`` bakes the masks like every pruning schedule (``SparseLinear``; convs keep their zeros), so the
  result saves and loads as any pruned model.

RigL's dense gradient is read in the optimizer step pre-hook of the update step, before the mask zeroes it.
"""
from __future__ import annotations

import enum
import logging
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import nn

from torchslim.core.config import between
from torchslim.core.context import ApplyContext
from torchslim.core.errors import ConfigError
from torchslim.core.linear import LinearLike
from torchslim.core.registry import register_handler
from torchslim.core.rng import mix_seed
from torchslim.core.select import Selector
from torchslim.pruning import dynamic_sparse_math as D
from torchslim.pruning import masks as M
from torchslim.pruning.config import Scope, SparseKernel, Storage
from torchslim.pruning.importance import Importance
from torchslim.pruning.schedules import MASK, MaskHook, convert, select_prunable
from torchslim.train.transform import TRAINING_USES, Prepared, TrainingConfig, run_transform

if TYPE_CHECKING:
    from torchslim.train.engine import Trainer

log = logging.getLogger("torchslim.pruning")


class Method(str, enum.Enum):
    RIGL = "rigl"    # grow where |dense gradient| is largest
    SET = "set"      # grow at random


class Distribution(str, enum.Enum):
    ERK = "erk"          # Erdős–Rényi-Kernel: small layers denser, layers that would exceed 1 kept dense
    UNIFORM = "uniform"  # the same density in every selected layer


class MaskInit(str, enum.Enum):
    RANDOM = "random"        # from scratch: uniformly random kept weights
    MAGNITUDE = "magnitude"  # from a trained model: the largest weights of each layer


def dst_selector() -> Selector:
    """Linear layers and 2-D convs, except an output head named ``lm_head`` (often tied to the embeddings)."""
    return Selector(include=(LinearLike, nn.Conv2d), exclude=("re:(.*\\.)?lm_head",))


@dataclass
class DynamicSparseConfig(TrainingConfig):
    """Train with ``sparsity`` of the selected weights zero at every step, moving them by RigL or SET.

    ``distribution`` sets each layer's density (the budget is over the selected layers); ``drop_fraction``,
    ``update_every`` and ``end_fraction`` are RigL's alpha, delta-T and stop point (defaults: the paper's 0.3,
    100 and 75% of training). ``init`` draws the first masks (``random``: from scratch; ``magnitude``: from a
    trained model). ``storage``/``kernel``: how ``convert`` stores the sparse linear layers.
    """

    family: ClassVar[str] = "pruning"
    technique: ClassVar[str] = "dynamic_sparse"
    method: Method = Method.RIGL
    sparsity: float = 0.9
    distribution: Distribution = Distribution.ERK
    drop_fraction: float = 0.3
    update_every: int = between(100, 1, 10**9)
    end_fraction: float = 0.75
    init: MaskInit = MaskInit.RANDOM
    storage: Storage = Storage.AUTO
    kernel: SparseKernel = SparseKernel.AUTO
    seed: int = between(0, 0, 2**63 - 1)
    selector: Selector = field(default_factory=dst_selector)

    def validate(self) -> None:
        M.check_sparsity(self.sparsity, "DynamicSparseConfig.sparsity")
        if self.sparsity == 0:
            raise ConfigError("DynamicSparseConfig.sparsity is 0: nothing would be sparse (use FinetuneConfig)")
        if not 0.0 <= self.drop_fraction <= 1.0:
            raise ConfigError(f"DynamicSparseConfig.drop_fraction must be in [0, 1], got {self.drop_fraction}")
        if not 0.0 < self.end_fraction <= 1.0:
            raise ConfigError(f"DynamicSparseConfig.end_fraction must be in (0, 1], got {self.end_fraction}")

    def densities(self, shapes: list[tuple[int, ...]]) -> list[float]:
        """Per-layer densities of weights with these shapes."""
        if self.distribution is Distribution.ERK:
            return D.erk_densities(shapes, 1.0 - self.sparsity)
        return D.uniform_densities(shapes, 1.0 - self.sparsity)

    def prepare(self, model: nn.Module, ctx: ApplyContext) -> Prepared:
        hook = prepare_dynamic(model, self)
        return Prepared(hooks=[hook], state={"hook": hook}, records=[hook.summary()])

    def convert(self, model: nn.Module, prepared: Prepared) -> nn.Module:
        hook = prepared.state["hook"]
        prepared.records.extend([*hook.history, {"final_sparsity": hook.sparsity()}])
        return convert(model, hook)


class DynamicSparseHook(MaskHook):
    """Masks with a fixed number of kept weights per layer, moved every ``update_every`` steps (see the module)."""

    def __init__(self, modules: dict[str, nn.Module], config: DynamicSparseConfig) -> None:
        super().__init__(modules, Importance.MAGNITUDE, Scope.LAYER, None, config.seed, config)
        self.dst = config
        shapes = [tuple(m.weight.shape) for m in self.modules.values()]
        counts = D.active_counts([math.prod(s) for s in shapes], config.densities(shapes))
        self.counts = dict(zip(self.modules, counts))
        self.end_step: int | None = None
        self._grads: dict[str, torch.Tensor] = {}
        self.init_masks()
        log.info("%s", self.describe())

    # -- masks ---------------------------------------------------------------------------
    @torch.no_grad()
    def init_masks(self) -> None:
        """Draw each layer's first mask with exactly its count of kept weights and zero the rest."""
        for i, (name, m) in enumerate(self.modules.items()):
            mask, shape = getattr(m, MASK), tuple(m.weight.shape)
            if self.dst.init is MaskInit.MAGNITUDE:
                new = D.top_mask(m.weight.detach().abs(), self.counts[name])
            else:
                new = D.random_mask(shape, self.counts[name], torch.Generator().manual_seed(mix_seed(self.seed, 0, i)))
            mask.copy_(new.to(mask.device))
        self.apply_masks()

    def is_due(self, step: int) -> bool:
        return self.end_step is not None and D.is_update_step(step, self.dst.update_every, self.end_step)

    @torch.no_grad()
    def update(self, step: int) -> int:
        """One drop-and-grow of every layer that has zeros; returns how many weights were grown."""
        frac = D.drop_fraction(step, self.dst.drop_fraction, self.end_step or 0)
        grown_total = 0
        for i, (name, m) in enumerate(self.modules.items()):
            old = getattr(m, MASK)
            n = D.n_swapped(int(old.sum()), frac)
            if n == 0 or bool(old.all()):
                continue
            new = D.drop_and_grow(old, m.weight, n, self._grow_scores(i, name, m, step))
            grown = new & ~old
            m.weight.masked_fill_(~new | grown, 0)        # dropped and grown weights are zero
            self._zero_optimizer_state(m.weight, old & new)  # their momentum too
            old.copy_(new)
            grown_total += int(grown.sum())
        self._grads = {}
        self.history.append({"step": step, "drop_fraction": round(frac, 6), "grown": grown_total,
                             "sparsity": self.sparsity()})
        return grown_total

    def _grow_scores(self, index: int, name: str, m: nn.Module, step: int) -> torch.Tensor:
        if self.dst.method is Method.RIGL:
            g = self._grads.get(name)
            if g is None:
                raise ConfigError(f"RigL: layer '{name}' had no gradient at step {step}; exclude it from the selector")
            return g
        gen = torch.Generator().manual_seed(mix_seed(self.seed, step, index))
        return torch.rand(tuple(m.weight.shape), generator=gen).to(m.weight.device)

    # -- reporting -----------------------------------------------------------------------
    def densities(self) -> dict[str, float]:
        return {n: c / getattr(self.modules[n], MASK).numel() for n, c in self.counts.items()}

    def summary(self) -> dict[str, Any]:
        dens = self.densities()
        return {"method": self.dst.method.value, "distribution": self.dst.distribution.value, "layers": len(dens),
                "dense_layers": sum(d >= 1.0 for d in dens.values()), "sparsity": round(self.sparsity(), 6),
                "density": {n: round(d, 6) for n, d in dens.items()}}

    def describe(self) -> str:
        s = self.summary()
        per = ", ".join(f"{n} {d:.3f}" for n, d in s["density"].items())
        return (f"dynamic sparse training ({s['method']}, {s['distribution']}): {s['layers']} layers sparse "
                f"({s['dense_layers']} kept dense), {100 * s['sparsity']:.2f}% of their weights zero; "
                f"density per layer: {per}")

    # -- TrainHook -----------------------------------------------------------------------
    def on_start(self, trainer: Trainer) -> None:
        steps = trainer.config.steps
        self.end_step = int(round(self.dst.end_fraction * steps))
        if not any(D.is_update_step(s, self.dst.update_every, self.end_step) for s in range(1, self.end_step)):
            log.warning("dynamic sparse training: no mask update before step %d of %d (update_every=%d): the masks "
                        "stay as drawn (static sparse training)", self.end_step, steps, self.dst.update_every)
        super().on_start(trainer)

    def on_step_end(self, trainer: Trainer, step: int) -> None:
        self.step = step
        self.apply_masks()
        if self.is_due(step):
            self.update(step)

    @torch.no_grad()
    def _before_step(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        """Keep RigL's dense |gradient| of the update step, then mask the gradients."""
        if self.dst.method is Method.RIGL and self.is_due(self.step + 1):
            self._grads = {n: m.weight.grad.detach().abs().float().clone() for n, m in self.modules.items()
                           if m.weight.grad is not None}
        super()._before_step(optimizer, args, kwargs)


def prepare_dynamic(model: nn.Module, config: DynamicSparseConfig) -> DynamicSparseHook:
    """Sparse masks on the layers ``config.selector`` picks; pass the hook to a Trainer, then
    ``convert(model, hook)``."""
    if not isinstance(config, DynamicSparseConfig):
        raise ConfigError(f"prepare_dynamic expects a DynamicSparseConfig, got {type(config).__name__}")
    return DynamicSparseHook(select_prunable(model, config.selector), config)


@register_handler(DynamicSparseConfig, uses=TRAINING_USES, modifies="layers")
def _dynamic_sparse(model: nn.Module, config: DynamicSparseConfig, ctx: ApplyContext) -> nn.Module:
    return run_transform(model, config, ctx)
