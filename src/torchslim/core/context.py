"""The typed context a technique's handler receives: data, teacher, training settings, device.

Handlers are ``handler(model, config, ctx: ApplyContext)``. The verbs build the context from
their keyword arguments (``quantize_(model, cfg, calibration=task)``); an unknown keyword is a
:class:`ConfigError`, never ignored. Recipes build one context and pass it to every stage.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from torchslim.core.errors import ConfigError


@dataclass
class StageRecord:
    """What a handler reports about its stage, beyond what the registry measures itself."""

    metrics: dict[str, Any] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)


@dataclass
class ApplyContext:
    """Everything a technique may need besides the model and its config.

    Attributes:
        task: a :class:`torchslim.tasks.Task`: evaluation, loss and training data (and the
            default calibration data).
        calibration: calibration data: a Task or a list of batches (dicts of model inputs);
            ``None`` uses ``task``.
        teacher: a teacher model (``nn.Module``) or callable, for distillation losses.
        train: a :class:`torchslim.train.TrainConfig` for techniques that train (their own
            ``train`` field, if set, wins).
        example_inputs: keyword inputs of one forward, for techniques that trace the model.
        device: where training runs (default: where the model is).
        hooks: extra :class:`torchslim.train.TrainHook` objects for training techniques.
        train_data: training batches replacing ``task.train_batches`` (an iterable or a callable).
        record: filled by the handler during one stage (set by the registry).
        shared: statistics one calibration pass measures for the next stages
            (:class:`torchslim.calibration.plan.SharedCalibration`, set by :func:`apply_sequence_`).
    """

    task: Any = None
    calibration: Any = None
    teacher: Any = None
    train: Any = None
    example_inputs: dict[str, Any] | None = None
    device: Any = None
    hooks: tuple[Any, ...] = ()
    train_data: Any = None
    record: StageRecord = field(default_factory=StageRecord, repr=False, compare=False)
    shared: Any = field(default=None, repr=False, compare=False)   # calibration shared with the next stages

    @classmethod
    def fields(cls) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls) if f.name not in ("record", "shared"))

    @classmethod
    def from_kwargs(cls, **kwargs: Any) -> ApplyContext:
        """A context from keyword arguments; an unknown keyword is an error naming the accepted ones."""
        unknown = sorted(set(kwargs) - set(cls.fields()))
        if unknown:
            raise ConfigError(f"unexpected argument '{unknown[0]}'; accepted: {', '.join(cls.fields())}")
        hooks = kwargs.get("hooks")
        if hooks is not None:
            kwargs["hooks"] = tuple(hooks)
        return cls(**{k: v for k, v in kwargs.items() if v is not None})

    def for_stage(self) -> ApplyContext:
        """A copy with a fresh :class:`StageRecord` (the same data objects)."""
        return dataclasses.replace(self, record=StageRecord())

    def given(self) -> set[str]:
        """Names of the fields that are set."""
        return {n for n in self.fields() if getattr(self, n) not in (None, ())}

    @property
    def calibration_data(self) -> Any:
        """Calibration data: ``calibration``, else the task (``None`` if neither is given)."""
        return self.calibration if self.calibration is not None else self.task

    @property
    def training_task(self) -> Any:
        """The task whose loss and training data are used: ``task``, else a Task given as ``calibration``."""
        if self.task is not None:
            return self.task
        return self.calibration if hasattr(self.calibration, "loss") else None
