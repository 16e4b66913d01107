"""Training hooks: how distillation, QAT and pruning schedules plug into the one training loop.

A hook is a strategy object; every method is a no-op by default. Per optimizer step the
engine computes, for each micro-batch, named loss terms::

    terms = {"task": task.loss(model, batch)}
    for h in hooks:
        terms[h.name] = h.extra_loss(trainer, batch)       # if not None
        h.update_losses(trainer, batch, terms)              # may re-weight, replace or drop terms
    loss = sum(terms.values())

then calls ``on_step_end(trainer, step)`` after the optimizer step. Every term is logged
separately (``TrainResult.loss_terms``). During ``extra_loss`` and ``update_losses``,
``trainer.last_output`` holds the model's output for ``batch`` (so a distillation hook can
compare it with ``trainer.teacher_output(batch)`` without a second student forward, and
``trainer.task.loss_from_output(output, batch)`` reuses the task's label shifting and masks).

Change the model's structure (e.g. insert fake-quant modules) *before* constructing the
:class:`~torchslim.train.engine.Trainer`: the optimizer is built from the parameters that
exist then. Hooks that keep counters must return them from :meth:`TrainHook.checkpoint_state`
so ``resume=True`` continues exactly.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

import torch

from torchslim.train.trainer_view import TrainerView as Trainer

if TYPE_CHECKING:
    from torchslim.tasks.base import Batch


class TrainHook:
    """Base class of training hooks (all methods optional).

    ``supports_sharding``: whether the hook works when ``TrainConfig.parallel`` shards the model with FSDP, where
    each rank holds only a slice of every parameter outside forward and backward. Loss hooks (they see whole
    outputs) do; a hook that reads or edits whole weights in place (pruning masks) sets it False, and the
    engine then uses DDP (``auto``) or refuses (``fsdp``)."""

    supports_sharding: bool = True

    def on_start(self, trainer: Trainer) -> None:
        """Called once before the first step (after resuming, optimizer and DDP are set up)."""

    @property
    def name(self) -> str:
        """The name of this hook's loss term."""
        return type(self).__name__

    def extra_loss(self, trainer: Trainer, batch: Batch) -> torch.Tensor | None:
        """A scalar added to the task loss of this micro-batch (as the term ``name``), or ``None``."""
        return None

    def update_losses(self, trainer: Trainer, batch: Batch, terms: dict[str, torch.Tensor]) -> None:
        """Change this micro-batch's loss terms in place: weight them (``terms["task"] *= 0.5``), replace or
        drop them (the total is their sum)."""

    def on_step_end(self, trainer: Trainer, step: int) -> None:
        """Called after optimizer step ``step`` (1-based count of completed steps)."""

    def on_eval(self, trainer: Trainer, step: int, metrics: dict[str, float]) -> None:
        """Called on every rank after an evaluation at ``step``."""

    def on_end(self, trainer: Trainer) -> None:
        """Called once after the last step."""

    def checkpoint_state(self) -> dict[str, Any]:
        """JSON-serializable state saved with checkpoints."""
        return {}

    def restore_state(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`checkpoint_state` returned (called after ``on_start`` on resume)."""


class LambdaHook(TrainHook):
    """A hook from plain functions, for quick experiments and tests."""

    def __init__(
        self,
        *,
        extra_loss: Callable[[Trainer, Batch], torch.Tensor | None] | None = None,
        on_step_end: Callable[[Trainer, int], None] | None = None,
    ) -> None:
        self._extra_loss = extra_loss
        self._on_step_end = on_step_end

    def extra_loss(self, trainer: Trainer, batch: Batch) -> torch.Tensor | None:
        return self._extra_loss(trainer, batch) if self._extra_loss else None

    def on_step_end(self, trainer: Trainer, step: int) -> None:
        if self._on_step_end:
            self._on_step_end(trainer, step)
