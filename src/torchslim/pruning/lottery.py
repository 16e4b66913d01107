"""Multi-round pruning on the one Trainer: iterative prune/fine-tune, and lottery tickets with rewinding.

* :func:`iterative_prune` (:class:`IterativeConfig`): ``rounds`` rounds; round ``k`` prunes to
  ``1 - (1 - s)**(k / rounds)`` (the same fraction of the remaining weights each round) and
  fine-tunes for ``train.steps`` steps with the masks held (Han et al. 2015).
* :func:`lottery_ticket` (:class:`LotteryConfig`): train densely, remembering the weights at
  ``rewind_step``; then per round prune the smallest-magnitude surviving weights, rewind the
  survivors to those early weights and retrain (Frankle & Carbin 2019; rewinding to an early
  step rather than initialization: Frankle et al. 2019, "Stabilizing the Lottery Ticket Hypothesis").

Both are training transforms (:mod:`torchslim.train.transform`): ``prepare`` returns the
rounds, the shared ``fit`` runs them on the Trainer and ``convert`` bakes the masks. Each round
adds a record (target and reached sparsity, task metrics) to the stage's entry in the model's
history (``details["records"]``).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Sequence

import torch
from torch import nn

from torchslim.core.config import between
from torchslim.core.context import ApplyContext
from torchslim.core.errors import ConfigError
from torchslim.core.registry import register_handler
from torchslim.core.select import Selector
from torchslim.pruning import masks as M
from torchslim.pruning.config import Scope, SparseKernel, Storage, default_selector
from torchslim.pruning.importance import Importance
from torchslim.pruning.schedules import MASK, SCORE, MaskHook, check_importance, convert, select_prunable
from torchslim.train.hooks import TrainHook
from torchslim.train.transform import TRAINING_USES, Prepared, TrainingConfig, fit, fit_round, run_transform, training_task

if TYPE_CHECKING:
    from torchslim.tasks.base import Task
    from torchslim.train.config import TrainConfig
    from torchslim.train.engine import Trainer


def round_sparsity(sparsity: float, k: int, rounds: int) -> float:
    """Sparsity after round ``k`` of ``rounds`` when each round prunes the same fraction of what remains."""
    return 1.0 - (1.0 - sparsity) ** (k / rounds)


def _check_rounds(cfg: Any, name: str) -> None:
    M.check_sparsity(cfg.sparsity, f"{name}.sparsity")
    if not isinstance(cfg.rounds, int) or cfg.rounds < 1:
        raise ConfigError(f"{name}.rounds must be a positive integer, got {cfg.rounds!r}")


@dataclass
class IterativeConfig(TrainingConfig):
    """Prune to ``sparsity`` in ``rounds`` equal-ratio steps, fine-tuning (``train.steps``) after each.

    Magnitude/random prune at the start of each round; movement and Taylor first accumulate
    gradient scores for ``score_steps`` steps of the round, then prune.
    """

    family: ClassVar[str] = "pruning"
    technique: ClassVar[str] = "iterative"
    sparsity: float = 0.5
    rounds: int = between(3, 1, 1000)
    importance: Importance = Importance.MAGNITUDE
    scope: Scope = Scope.LAYER
    score_steps: int = between(10, 1, 10**9)
    storage: Storage = Storage.AUTO
    kernel: SparseKernel = SparseKernel.AUTO
    seed: int = between(0, 0, 2**63 - 1)
    selector: Selector = field(default_factory=default_selector)

    def validate(self) -> None:
        _check_rounds(self, "IterativeConfig")
        check_importance(self.importance, "IterativeConfig")
        if self.score_steps < 1:
            raise ConfigError(f"IterativeConfig.score_steps must be >= 1, got {self.score_steps}")

    def round_sparsity(self, k: int) -> float:
        return round_sparsity(self.sparsity, k, self.rounds)

    def prune_step(self) -> int:
        """The step of each round after which the masks are recomputed (0: before training)."""
        return self.score_steps if self.importance.needs_gradients else 0

    def prepare(self, model: nn.Module, ctx: ApplyContext) -> Prepared:
        """``rounds`` Trainer runs sharing one :class:`RoundHook`; round 0 of the history is before pruning."""
        task = training_task(self, ctx)
        hook = RoundHook(select_prunable(model, self.selector), self)
        prepared = Prepared(hooks=[hook], rounds=self.rounds, state={"hook": hook})
        prepared.records.append(_record(hook, 0, 0.0, task.evaluate(model)))

        def before(k: int) -> list[TrainHook]:
            hook.target = self.round_sparsity(k + 1)
            return []

        prepared.before_round = before
        prepared.after_round = lambda k, result: _record(hook, k + 1, hook.target, result.final_metrics)
        return prepared

    def convert(self, model: nn.Module, prepared: Prepared) -> nn.Module:
        return convert(model, prepared.state["hook"])


@dataclass
class LotteryConfig(TrainingConfig):
    """Lottery ticket with rewinding: ``rounds`` rounds reaching ``sparsity`` by global magnitude.

    Each round prunes ``per_round`` of the remaining weights, rewinds the survivors (and every
    other parameter and buffer) to their values after ``rewind_step`` steps of the dense run
    (0: the initialization) and retrains with the same TrainConfig.
    """

    family: ClassVar[str] = "pruning"
    technique: ClassVar[str] = "lottery"
    sparsity: float = 0.8
    rounds: int = between(3, 1, 1000)
    rewind_step: int = 0
    scope: Scope = Scope.GLOBAL
    storage: Storage = Storage.AUTO
    kernel: SparseKernel = SparseKernel.AUTO
    selector: Selector = field(default_factory=default_selector)

    def validate(self) -> None:
        _check_rounds(self, "LotteryConfig")
        if not isinstance(self.rewind_step, int) or self.rewind_step < 0:
            raise ConfigError(f"LotteryConfig.rewind_step must be >= 0, got {self.rewind_step!r}")

    @property
    def per_round(self) -> float:
        """Fraction of the remaining weights pruned each round."""
        return round_sparsity(self.sparsity, 1, self.rounds)

    def round_sparsity(self, k: int) -> float:
        return round_sparsity(self.sparsity, k, self.rounds)

    def prepare(self, model: nn.Module, ctx: ApplyContext) -> Prepared:
        """Round 0 trains densely (recording the rewind weights); rounds 1.. prune, rewind and retrain."""
        ticket = LotteryTicket(model, self, training_task(self, ctx), self.train_config(ctx))
        return ticket.prepared

    def convert(self, model: nn.Module, prepared: Prepared) -> nn.Module:
        return convert(model, prepared.state["hook"])


def _record(hook: MaskHook, k: int, target: float, metrics: dict[str, float]) -> dict[str, Any]:
    return {"round": k, "target": target, "sparsity": hook.sparsity(),
            **{n: v for n, v in metrics.items() if n != "step"}}


# -- iterative ------------------------------------------------------------------------------
class RoundHook(MaskHook):
    """:class:`MaskHook` that prunes once per Trainer run: to ``target`` after step ``at`` (0: at the start)."""

    def __init__(self, modules: dict[str, nn.Module], config: IterativeConfig) -> None:
        super().__init__(modules, config.importance, config.scope, None, config.seed, config)
        self.target, self.at = 0.0, config.prune_step()

    def on_start(self, trainer: Trainer) -> None:
        if self.at >= trainer.config.steps:
            raise ConfigError(f"IterativeConfig.score_steps ({self.at}) must be below train.steps "
                              f"({trainer.config.steps})")
        super().on_start(trainer)
        if trainer.step == 0 and self.at == 0:
            self.update_masks(self.target)

    def on_step_end(self, trainer: Trainer, step: int) -> None:
        self.step = step
        if step == self.at:
            self.update_masks(self.target)
        self.apply_masks()


def iterative_prune(model: nn.Module, config: IterativeConfig, task: Task, train: TrainConfig,
                    hooks: Sequence[TrainHook] = (), **trainer_kwargs: Any) -> tuple[RoundHook, list[dict[str, Any]]]:
    """Run the rounds; returns the mask hook (for ``convert``) and the history (round 0: before pruning)."""
    ctx = ApplyContext(task=task, train=train, hooks=tuple(hooks), **trainer_kwargs)
    prepared = config.prepare(model, ctx)
    fit(model, config, prepared, ctx)
    return prepared.state["hook"], prepared.records


@register_handler(IterativeConfig, uses=TRAINING_USES, modifies="layers")
def _iterative(model: nn.Module, config: IterativeConfig, ctx: ApplyContext) -> nn.Module:
    return run_transform(model, config, ctx)


# -- lottery ticket -------------------------------------------------------------------------
class _Snapshot(TrainHook):
    """Copies the model's state (schedule buffers excluded) after optimizer step ``at`` (0: before training)."""

    supports_sharding = False     # masks and snapshots act on whole weights (see TrainHook)

    def __init__(self, at: int) -> None:
        self.at = at
        self.state: dict[str, torch.Tensor] | None = None

    def on_start(self, trainer: Trainer) -> None:
        if self.at == 0 and trainer.step == 0:
            self.state = model_state(trainer.model)

    def on_step_end(self, trainer: Trainer, step: int) -> None:
        if step == self.at:
            self.state = model_state(trainer.model)


def model_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """A detached copy of ``model``'s parameters and buffers, without the pruning masks and scores."""
    skip = (f".{MASK}", f".{SCORE}")
    return {k: v.detach().clone() for k, v in model.state_dict().items() if not k.endswith(skip)}


class LotteryTicket:
    """The steps of a lottery ticket, callable one by one (``train``, ``prune``, ``rewind``) or as the
    rounds of a :class:`~torchslim.train.transform.Prepared` (``prepared``) that the shared ``fit`` runs."""

    def __init__(self, model: nn.Module, config: LotteryConfig, task: Task, train: TrainConfig,
                 hooks: Sequence[TrainHook] = (), **trainer_kwargs: Any) -> None:
        if config.rewind_step >= train.steps:
            raise ConfigError(f"LotteryConfig.rewind_step ({config.rewind_step}) must be below "
                              f"train.steps ({train.steps})")
        if train.resume:
            raise ConfigError("lottery tickets cannot resume a checkpoint (the rewind weights are not saved); "
                              "set train.resume=False")
        self.model, self.config = model, config
        self.ctx = ApplyContext(task=task, train=train, hooks=tuple(hooks), **trainer_kwargs)
        self.mask_hook = MaskHook(select_prunable(model, config.selector), Importance.MAGNITUDE, config.scope,
                                  config=config)
        self.early: dict[str, torch.Tensor] | None = None
        self._snap: _Snapshot | None = None
        self.prepared = Prepared(hooks=[self.mask_hook], rounds=config.rounds + 1, state={"hook": self.mask_hook},
                                 before_round=self._before, after_round=self._after)

    def _before(self, k: int) -> list[TrainHook]:
        if k == 0:
            self._snap = _Snapshot(self.config.rewind_step)
            return [self._snap]
        self.prune(k)
        self.rewind()
        return []

    def _after(self, k: int, result: Any) -> dict[str, Any]:
        if k == 0 and self._snap is not None:
            self.early = self._snap.state
        return _record(self.mask_hook, k, self.config.round_sparsity(k) if k else 0.0, result.final_metrics)

    def train(self, k: int) -> dict[str, float]:
        """Train round ``k`` (0: dense, recording the rewind weights); returns the final metrics."""
        extra = [_Snapshot(self.config.rewind_step)] if k == 0 else []
        result = fit_round(self.model, self.config, self.ctx, self.prepared, k, extra)
        if extra:
            self.early = extra[0].state
        return result.final_metrics

    def prune(self, k: int) -> None:
        """Prune to round ``k``'s sparsity by magnitude of the current (trained) weights."""
        self.mask_hook.update_masks(self.config.round_sparsity(k))

    @torch.no_grad()
    def rewind(self) -> None:
        """Reset every parameter and buffer to the recorded early state, then zero the pruned weights."""
        if self.early is None:
            raise ConfigError("lottery ticket: rewind before the dense training recorded the early weights")
        current = self.model.state_dict()
        for name, value in self.early.items():
            current[name].copy_(value)
        self.mask_hook.apply_masks()

    def run(self) -> list[dict[str, Any]]:
        """Dense training, then ``rounds`` x (prune, rewind, retrain); one history entry per round."""
        fit(self.model, self.config, self.prepared, self.ctx)
        return self.prepared.records


def lottery_ticket(model: nn.Module, config: LotteryConfig, task: Task, train: TrainConfig,
                   hooks: Sequence[TrainHook] = (), **trainer_kwargs: Any) -> tuple[MaskHook, list[dict[str, Any]]]:
    """Find and retrain a winning ticket; returns the mask hook (for ``convert``) and the history."""
    ticket = LotteryTicket(model, config, task, train, hooks, **trainer_kwargs)
    return ticket.mask_hook, ticket.run()


@register_handler(LotteryConfig, uses=TRAINING_USES, modifies="layers")
def _lottery(model: nn.Module, config: LotteryConfig, ctx: ApplyContext) -> nn.Module:
    return run_transform(model, config, ctx)
