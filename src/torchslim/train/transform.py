"""prepare -> fit -> convert: the one protocol of training-time techniques.

A training-time technique's config subclasses :class:`TrainingConfig` and implements

* ``prepare(model, ctx) -> Prepared``: insert modules, attach masks or adapters, and return the
  hooks (losses, step callbacks) and, for multi-round methods, what to do around each round;
* ``convert(model, prepared) -> nn.Module``: the deployable form (bake masks into sparse
  layers, merge adapters, pack fake-quantized weights...).

The one :class:`~torchslim.train.engine.Trainer` fits in between; no technique writes a loop.
:func:`run_transform` is the whole sequence, and the registered handler of every
``TrainingConfig`` (``torchslim.finetune_``, ``prune_`` with a schedule, later QAT,
distillation, adapters), which records the final metrics and losses in the model's history.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from torch import nn

from torchslim.core.config import BaseConfig
from torchslim.core.context import ApplyContext
from torchslim.core.errors import ConfigError
from torchslim.core.registry import register_handler
from torchslim.train.config import ParamGroup, TrainConfig
from torchslim.train.engine import Trainer, TrainResult
from torchslim.train.hooks import TrainHook

FROM_CONTEXT: Any = type("FromContext", (), {"__repr__": lambda self: "FROM_CONTEXT"})()
TRAINING_USES = ("task", "calibration", "train", "teacher", "hooks", "device", "train_data")


@dataclass
class Prepared:
    """What :meth:`TrainingConfig.prepare` returns.

    ``hooks`` are used in every round. For ``rounds > 1``, ``before_round(k)`` runs before round
    ``k`` (0-based) and returns hooks for that round only; ``after_round(k, result)`` runs after it
    and may return a record for the history. ``param_groups`` give some parameters their own
    learning rate (or freeze nothing: ``requires_grad`` decides what trains). ``state`` is
    anything ``convert`` needs. ``train_data`` (a callable like ``Task.train_batches`` or an iterable of
    batches) replaces the task's training data, e.g. a corpus the technique built; ``teacher`` replaces
    the context's teacher for the Trainer (a model the technique loaded, or None when it used the teacher
    itself); left at ``FROM_CONTEXT`` the Trainer gets the context's.
    """

    hooks: list[TrainHook] = field(default_factory=list)
    rounds: int = 1
    before_round: Callable[[int], list[TrainHook]] | None = None
    after_round: Callable[[int, TrainResult], dict[str, Any] | None] | None = None
    param_groups: tuple[ParamGroup, ...] = ()
    state: dict[str, Any] = field(default_factory=dict)
    records: list[dict[str, Any]] = field(default_factory=list)
    train_data: Any = None
    teacher: Any = FROM_CONTEXT


@dataclass
class TrainingConfig(BaseConfig):
    """Base of every training-time technique's config. ``train`` (a TrainConfig) overrides the
    context's; one of them is needed, else the TrainConfig defaults are used."""

    family = "training"
    train: TrainConfig | None = None

    def prepare(self, model: nn.Module, ctx: ApplyContext) -> Prepared:
        return Prepared()

    def convert(self, model: nn.Module, prepared: Prepared) -> nn.Module:
        return model

    def needs_teacher(self) -> bool:
        """Whether training uses a teacher (a recipe then passes the uncompressed model as ``teacher``)."""
        return False

    def train_config(self, ctx: ApplyContext) -> TrainConfig:
        train = self.train if self.train is not None else ctx.train
        train = TrainConfig() if train is None else train
        if not isinstance(train, TrainConfig):
            raise ConfigError(f"{type(self).__name__}: train must be a TrainConfig, got {type(train).__name__}")
        return train


@dataclass
class FinetuneConfig(TrainingConfig):
    """Plain fine-tuning on the task's loss (recovery after compression): no hooks, nothing to convert."""


def round_train(train: TrainConfig, k: int) -> TrainConfig:
    """``train`` with its checkpoints (if any) in a per-round subfolder ``round-<k>``."""
    if not train.checkpoint_dir:
        return train
    return dataclasses.replace(train, checkpoint_dir=str(Path(train.checkpoint_dir) / f"round-{k}"))


def training_task(config: BaseConfig, ctx: ApplyContext) -> Any:
    task = ctx.training_task
    if task is None or not hasattr(task, "loss"):
        raise ConfigError(f"{type(config).__name__} trains the model: pass task=<Task> (with a loss and training data)")
    return task


def fit_round(model: nn.Module, config: TrainingConfig, ctx: ApplyContext, prepared: Prepared, k: int,
              extra: list[TrainHook] = ()) -> TrainResult:
    """One Trainer run (round ``k``) with the prepared hooks, the round's hooks and the context's."""
    train = config.train_config(ctx)
    train = round_train(train, k) if prepared.rounds > 1 else train
    trainer = Trainer(model, training_task(config, ctx), train, hooks=[*prepared.hooks, *extra, *ctx.hooks],
                      train_data=prepared.train_data if prepared.train_data is not None else ctx.train_data,
                      device=ctx.device, teacher=ctx.teacher if prepared.teacher is FROM_CONTEXT else prepared.teacher,
                      param_groups=prepared.param_groups)
    return trainer.fit()


def fit(model: nn.Module, config: TrainingConfig, prepared: Prepared, ctx: ApplyContext) -> list[TrainResult]:
    """All rounds of a prepared technique; records returned by ``after_round`` go to ``prepared.records``."""
    results = []
    for k in range(prepared.rounds):
        extra = prepared.before_round(k) if prepared.before_round is not None else []
        result = fit_round(model, config, ctx, prepared, k, extra)
        results.append(result)
        rec = prepared.after_round(k, result) if prepared.after_round is not None else None
        if rec is not None:
            prepared.records.append(rec)
    return results


def run_transform(model: nn.Module, config: TrainingConfig, ctx: ApplyContext) -> nn.Module:
    """prepare -> fit -> convert, reporting final metrics and per-term losses to ``ctx.record``."""
    training_task(config, ctx)
    prepared = config.prepare(model, ctx)
    results = fit(model, config, prepared, ctx)
    out = config.convert(model, prepared)
    out.eval()
    last = results[-1]
    ctx.record.metrics.update({k: v for k, v in last.final_metrics.items() if k != "step"})
    ctx.record.details.update({"steps": sum(r.final_step for r in results), "rounds": len(results),
                               "final_loss": last.losses[-1] if last.losses else None,
                               "final_loss_terms": last.loss_terms[-1] if last.loss_terms else {},
                               "wall_s": sum(r.wall_s for r in results), "world_size": last.world_size,
                               "parallel": last.parallel})
    if prepared.records:
        ctx.record.details["records"] = prepared.records
    return out


@register_handler(TrainingConfig, uses=TRAINING_USES, modifies="weights")
def _training(model: nn.Module, config: TrainingConfig, ctx: ApplyContext) -> nn.Module:
    return run_transform(model, config, ctx)
