"""Training-time pruning: masks kept by a :class:`~torchslim.train.hooks.TrainHook` on the one Trainer.

Every schedule follows *prepare -> train with a mask hook -> convert*:

* :func:`prepare` attaches a boolean ``prune_mask`` buffer (and, for movement/Taylor, a float
  ``prune_score`` buffer) to each selected ``nn.Linear``/conv and returns the hook. Buffers live
  in the model's ``state_dict``, so Trainer checkpoints carry them and resume is exact.
* :class:`MaskHook` zeroes the gradients of pruned weights and accumulates gradient scores in an
  optimizer *step pre-hook* (the moment the final, synchronized and clipped gradients and the
  pre-step weights are both available), re-applies the masks after every optimizer step and
  zeroes the optimizer state of newly pruned weights. Masks only ever lose elements.
* :class:`GradualPruningHook` raises the sparsity along Zhu & Gupta's cubic schedule (2017,
  "To prune, or not to prune") every ``frequency`` steps.
* :func:`convert` replaces masked ``nn.Linear`` layers by ``SparseLinear`` (convs stay dense,
  with zeros) and removes the buffers.

Iterative pruning and lottery tickets (several Trainer runs) live in :mod:`torchslim.pruning.lottery`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import nn

from torchslim.core.config import BaseConfig, between
from torchslim.core.context import ApplyContext
from torchslim.core.errors import ConfigError
from torchslim.core.linear import canonical_linear_, is_linear_like
from torchslim.core.registry import register_handler
from torchslim.core.rng import mix_seed
from torchslim.core.select import Selector
from torchslim.core.surgery import replace_module
from torchslim.pruning import masks as M
from torchslim.pruning.config import Scope, SparseKernel, Storage, default_selector
from torchslim.pruning.importance import Importance, scores
from torchslim.train.hooks import TrainHook
from torchslim.train.transform import TRAINING_USES, Prepared, TrainingConfig, run_transform

if TYPE_CHECKING:
    from torchslim.train.engine import Trainer

MASK, SCORE = "prune_mask", "prune_score"
PRUNABLE: tuple[type[nn.Module], ...] = (nn.Linear, nn.modules.conv._ConvNd)
TRAINING_IMPORTANCE = (Importance.MAGNITUDE, Importance.MAGNITUDE_L2, Importance.MOVEMENT,
                       Importance.TAYLOR, Importance.RANDOM)


def cubic_sparsity(step: int, initial: float, final: float, start: int, end: int) -> float:
    """Zhu & Gupta's schedule ``s_f + (s_i - s_f) * (1 - (t - t0) / (end - t0))**3``, clamped to [start, end]."""
    if end < start:
        raise ConfigError(f"pruning schedule: end step ({end}) is before start step ({start})")
    if step >= end:
        return float(final)
    if step <= start:
        return float(initial)
    frac = (step - start) / (end - start)
    return float(final + (initial - final) * (1.0 - frac) ** 3)


def check_importance(imp: Importance, where: str) -> None:
    """Raise unless a training schedule can use ``imp`` (enum fields are coerced by BaseConfig)."""
    if imp not in TRAINING_IMPORTANCE:
        allowed = ", ".join(i.value for i in TRAINING_IMPORTANCE)
        raise ConfigError(f"{where}: {imp.value} importance is one-shot (use UnstructuredConfig); choose {allowed}")


@dataclass
class GradualConfig(TrainingConfig):
    """Gradual magnitude/movement/Taylor pruning during training (Zhu & Gupta 2017).

    The sparsity follows :func:`cubic_sparsity` from ``initial_sparsity`` at ``start_step`` to
    ``sparsity`` at ``end_step`` (``None``: the last training step); masks are recomputed every
    ``frequency`` steps. ``pattern`` (``"2:4"``) makes the final masks N:M (``sparsity`` is then
    implied): along the way only weights the N:M mask would drop are pruned. ``storage`` and
    ``kernel`` are used by :func:`convert`.
    """

    family: ClassVar[str] = "pruning"
    technique: ClassVar[str] = "gradual"
    sparsity: float = 0.5
    initial_sparsity: float = 0.0
    start_step: int = 0
    end_step: int | None = None
    frequency: int = between(10, 1, 10**9)
    importance: Importance = Importance.MAGNITUDE
    scope: Scope = Scope.LAYER
    pattern: str | None = None
    storage: Storage = Storage.AUTO
    kernel: SparseKernel = SparseKernel.AUTO
    seed: int = between(0, 0, 2**63 - 1)
    selector: Selector = field(default_factory=default_selector)

    def validate(self) -> None:
        check_importance(self.importance, "GradualConfig")
        M.check_sparsity(self.sparsity, "GradualConfig.sparsity")
        M.check_sparsity(self.initial_sparsity, "GradualConfig.initial_sparsity")
        if self.pattern is not None:
            n, m = M.parse_nm(self.pattern)
            self.sparsity = 1 - n / m
        if self.initial_sparsity > self.sparsity:
            raise ConfigError(f"GradualConfig: initial_sparsity ({self.initial_sparsity}) "
                              f"exceeds sparsity ({self.sparsity})")
        if self.start_step < 0 or self.frequency < 1:
            raise ConfigError("GradualConfig: start_step must be >= 0 and frequency >= 1")
        if self.end_step is not None and self.end_step < self.start_step:
            raise ConfigError(f"GradualConfig: end_step ({self.end_step}) is before start_step ({self.start_step})")
        if self.importance.needs_gradients and self.initial_sparsity > 0 and self.start_step == 0:
            raise ConfigError(f"GradualConfig: {self.importance.value} scores come from training steps; "
                              "use start_step >= 1 when initial_sparsity > 0")

    def prepare(self, model: nn.Module, ctx: ApplyContext) -> Prepared:
        hook = prepare(model, self)
        return Prepared(hooks=[hook], state={"hook": hook})

    def convert(self, model: nn.Module, prepared: Prepared) -> nn.Module:
        hook = prepared.state["hook"]
        prepared.records.extend([*hook.history, {"final_sparsity": hook.sparsity()}])
        return convert(model, hook)


# -- masks on modules -----------------------------------------------------------------------
def select_prunable(model: nn.Module, selector: Selector) -> dict[str, nn.Module]:
    """``{name: module}`` of the selected ``nn.Linear`` and conv layers (containers are skipped)."""
    found = {name: canonical_linear_(model, name) for name, m, _ in selector.resolve(model, True)
             if isinstance(m, PRUNABLE) or is_linear_like(m)}
    if not found:
        raise ConfigError("pruning schedule: the selector matched no nn.Linear or conv layer")
    return found


def attach_masks(modules: dict[str, nn.Module], with_scores: bool) -> None:
    """Give each module a ``prune_mask`` buffer (``weight != 0`` unless present) and optionally ``prune_score``."""
    for m in modules.values():
        w = m.weight
        if getattr(m, MASK, None) is None:
            m.register_buffer(MASK, (w.detach() != 0))
        if with_scores and getattr(m, SCORE, None) is None:
            m.register_buffer(SCORE, torch.zeros(w.shape, dtype=torch.float32, device=w.device))


def detach_masks(module: nn.Module) -> torch.Tensor | None:
    """Remove the schedule buffers of ``module``; returns its mask (``None`` if it had none)."""
    mask = module._buffers.pop(MASK, None)
    module._buffers.pop(SCORE, None)
    return mask


class MaskHook(TrainHook):
    """Keeps the masks of ``modules`` during training and recomputes them on :meth:`update_masks`.

    Gradients are read in an optimizer step pre-hook: movement accumulates ``-W * g`` (Sanh et
    al. 2020), Taylor ``|W * g|`` (averaged over the steps since the last mask update). Those
    gradients are then masked, and after the step the masks are re-applied to the weights, so
    pruned weights stay exactly zero. ``history`` lists every mask update.
    """

    supports_sharding = False     # masks and snapshots act on whole weights (see TrainHook)

    def __init__(self, modules: dict[str, nn.Module], importance: Importance = Importance.MAGNITUDE,
                 scope: Scope = Scope.LAYER, pattern: str | None = None, seed: int = 0,
                 config: BaseConfig | None = None) -> None:
        self.modules = dict(modules)
        self.importance, self.scope, self.seed, self.config = importance, scope, seed, config
        self.nm = M.parse_nm(pattern) if pattern else None
        if self.nm and any(not isinstance(m, nn.Linear) for m in self.modules.values()):
            raise ConfigError(f"an N:M pattern ({pattern}) applies to nn.Linear layers only; exclude the convs")
        attach_masks(self.modules, importance.needs_gradients)
        self.step = 0
        self.score_steps = 0
        self.history: list[dict[str, Any]] = []
        self._optimizer: torch.optim.Optimizer | None = None
        self._handle: Any = None

    # -- TrainHook ---------------------------------------------------------------------
    def on_start(self, trainer: Trainer) -> None:
        self.step = trainer.step
        self._optimizer = trainer.optimizer
        assert trainer.optimizer is not None
        self._handle = trainer.optimizer.register_step_pre_hook(self._before_step)
        self.apply_masks()

    def on_step_end(self, trainer: Trainer, step: int) -> None:
        self.step = step
        self.apply_masks()

    def on_end(self, trainer: Trainer) -> None:
        if self._handle is not None:
            self._handle.remove()
        self._handle, self._optimizer = None, None

    def checkpoint_state(self) -> dict[str, Any]:
        return {"step": self.step, "score_steps": self.score_steps, "history": self.history}

    def restore_state(self, state: dict[str, Any]) -> None:
        if state:
            self.step = int(state["step"])
            self.score_steps = int(state["score_steps"])
            self.history = list(state["history"])

    # -- masks -------------------------------------------------------------------------
    def masks(self) -> dict[str, torch.Tensor]:
        return {n: getattr(m, MASK) for n, m in self.modules.items()}

    def sparsity(self) -> float:
        """Fraction of pruned weights over all masked layers."""
        ms = self.masks().values()
        return 1.0 - sum(int(m.sum()) for m in ms) / max(1, sum(m.numel() for m in ms))

    def layer_sparsity(self) -> dict[str, float]:
        return {n: M.sparsity_of(m) for n, m in self.masks().items()}

    @torch.no_grad()
    def apply_masks(self) -> None:
        """Zero the pruned weights."""
        for m in self.modules.values():
            m.weight.masked_fill_(~getattr(m, MASK), 0)

    @torch.no_grad()
    def update_masks(self, sparsity: float) -> None:
        """Prune to ``sparsity`` (per layer or overall, by ``scope``); already pruned weights stay pruned."""
        s = {n: self._scores(i, n, m) for i, (n, m) in enumerate(self.modules.items())}
        if self.scope is Scope.GLOBAL:
            new = M.global_masks(s, sparsity)
        else:
            new = {n: M.layer_mask(v, sparsity) for n, v in s.items()}
        for n, m in self.modules.items():
            mask = getattr(m, MASK)
            mask &= new[n].to(mask.device)
            self._zero_optimizer_state(m.weight, mask)
            if self.importance is Importance.TAYLOR:
                getattr(m, SCORE).zero_()
        self.score_steps = 0 if self.importance is Importance.TAYLOR else self.score_steps
        self.apply_masks()
        self.history.append({"step": self.step, "target": float(sparsity), "sparsity": self.sparsity()})

    def _scores(self, index: int, name: str, m: nn.Module) -> torch.Tensor:
        """Element scores of one layer: pruned elements ``-inf``; with N:M, elements it keeps ``+inf``."""
        w = m.weight.detach()
        if self.importance is Importance.RANDOM:
            g = torch.Generator().manual_seed(mix_seed(self.seed, self.step, index))
            s = scores(w, self.importance, generator=g).to(w.device)
        elif self.importance is Importance.TAYLOR:
            s = getattr(m, SCORE) / max(1, self.score_steps)
        elif self.importance is Importance.MOVEMENT:
            s = scores(w, self.importance, movement=getattr(m, SCORE))
        else:
            s = scores(w, self.importance)
        s = s.float().masked_fill(~getattr(m, MASK), float("-inf"))
        if self.nm is not None:
            s = s.masked_fill(M.nm_mask(s, *self.nm), float("inf"))
        return s

    def _zero_optimizer_state(self, weight: torch.Tensor, mask: torch.Tensor) -> None:
        state = self._optimizer.state.get(weight, {}) if self._optimizer is not None else {}
        for v in state.values():
            if isinstance(v, torch.Tensor) and v.shape == weight.shape:
                v.masked_fill_(~mask, 0)

    @torch.no_grad()
    def _before_step(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        """Optimizer step pre-hook: accumulate gradient scores, then mask the gradients."""
        seen = False
        for m in self.modules.values():
            w, g = m.weight, m.weight.grad
            if g is None:
                continue
            seen = True
            if self.importance is Importance.MOVEMENT:
                getattr(m, SCORE).sub_((w * g).float())
            elif self.importance is Importance.TAYLOR:
                getattr(m, SCORE).add_((w * g).float().abs())
            g.masked_fill_(~getattr(m, MASK), 0)
        self.score_steps += int(seen and self.importance is Importance.TAYLOR)


class GradualPruningHook(MaskHook):
    """:class:`MaskHook` whose masks follow :func:`cubic_sparsity` (see :class:`GradualConfig`)."""

    def __init__(self, modules: dict[str, nn.Module], config: GradualConfig) -> None:
        super().__init__(modules, config.importance, config.scope, config.pattern, config.seed, config)
        self.gradual = config
        self.end_step = config.end_step

    def on_start(self, trainer: Trainer) -> None:
        cfg, steps = self.gradual, trainer.config.steps
        self.end_step = cfg.end_step if cfg.end_step is not None else steps
        if self.end_step > steps or cfg.start_step > steps:
            raise ConfigError(f"GradualConfig: the schedule ends at step {self.end_step}, after the last "
                              f"training step ({steps}); lower end_step or train longer")
        super().on_start(trainer)
        if trainer.step == 0 and self.is_due(0):
            self._update(0)

    def on_step_end(self, trainer: Trainer, step: int) -> None:
        self.step = step
        if self.is_due(step):
            self._update(step)
        self.apply_masks()

    def target(self, step: int) -> float:
        """The scheduled sparsity at ``step``."""
        cfg = self.gradual
        end = self.end_step if self.end_step is not None else cfg.start_step
        return cubic_sparsity(step, cfg.initial_sparsity, cfg.sparsity, cfg.start_step, end)

    def is_due(self, step: int) -> bool:
        """Whether the masks are recomputed after ``step`` (every ``frequency`` steps, and at the end)."""
        start, end = self.gradual.start_step, self.end_step
        if end is None or not start <= step <= end:
            return False
        return (step - start) % self.gradual.frequency == 0 or step == end

    def _update(self, step: int) -> None:
        target = self.target(step)
        if target > 0:
            self.update_masks(target)


def prepare(model: nn.Module, config: GradualConfig) -> GradualPruningHook:
    """Attach masks to the layers ``config.selector`` picks; pass the hook to a Trainer, then :func:`convert`."""
    if not isinstance(config, GradualConfig):
        raise ConfigError(f"prepare expects a GradualConfig, got {type(config).__name__}")
    return GradualPruningHook(select_prunable(model, config.selector), config)


def convert(model: nn.Module, source: MaskHook | BaseConfig | None = None) -> nn.Module:
    """Bake the masks: masked ``nn.Linear`` -> ``SparseLinear``; convs stay dense with zeros; buffers removed.

    ``source`` is the hook (its layers and config) or a config (its ``storage``/``kernel``/
    ``pattern``; layers are those carrying masks, else the selected ones masked by their zeros).
    Returns the model (a new module when ``model`` itself was a linear layer).
    """
    config = source.config if isinstance(source, MaskHook) else source
    if isinstance(source, MaskHook):
        modules = source.modules
    else:
        modules = {n: m for n, m in model.named_modules() if getattr(m, MASK, None) is not None}
        if not modules and isinstance(getattr(config, "selector", None), Selector):
            modules = select_prunable(model, config.selector)  # type: ignore[union-attr]
    for name, m in modules.items():
        mask = detach_masks(m)
        mask = m.weight.detach() != 0 if mask is None else mask
        with torch.no_grad():
            m.weight.masked_fill_(~mask, 0)
        if type(m) is nn.Linear:
            new = _sparse_linear(m, mask, config)
            if not name:
                return new
            replace_module(model, name, new)
    return model


def _sparse_linear(lin: nn.Linear, mask: torch.Tensor, config: BaseConfig | None) -> nn.Module:
    from torchslim.pruning.sparse_linear import SparseLinear

    return SparseLinear.from_linear(
        lin, mask.to(lin.weight.device), storage=getattr(config, "storage", Storage.AUTO),
        kernel=getattr(config, "kernel", SparseKernel.AUTO), pattern=getattr(config, "pattern", None), config=config,
    )


# -- the prune_ handler: prepare -> fit -> convert on the shared protocol -------------------------
@register_handler(GradualConfig, uses=TRAINING_USES, modifies="layers")
def _gradual(model: nn.Module, config: GradualConfig, ctx: ApplyContext) -> nn.Module:
    return run_transform(model, config, ctx)
