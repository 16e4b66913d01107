"""Stage types of a recipe: one YAML key each, a typed body, and what running it does.

A recipe's ``stages`` list holds one-key mappings::

    - prune: {_type: StructuredConfig, targets: [neurons], ratio: 0.25, importance: wanda}
    - train: {steps: 60, lr: 5.0e-5, batch_size: 4}
    - quantize: {_type: GPTQConfig, weight: {format: {_type: IntFormat, bits: 4}}}
    - evaluate: {}
    - save: {path: int4}

``quantize``, ``prune``, ``finetune``, ``distill``, ``factorize``, ``attention`` and ``early_exit`` apply a config of that family, ``apply`` one of any
family; ``train`` is shorthand for ``finetune`` with a plain :class:`TrainConfig`; ``evaluate``
records the task's quality metrics (and the model's size) in the history; ``save`` writes an
artifact inside the output folder; ``checkpoint`` marks a resume point. A later technique adds
its own stage type with :func:`register_stage`.
"""
from __future__ import annotations

import dataclasses

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from torch import nn

from torchslim.core.codec import decode_dataclass, shown
from torchslim.core.config import BaseConfig, config_from_dict
from torchslim.core.context import ApplyContext
from torchslim.core.errors import ConfigError

_STAGES: dict[str, type[Stage]] = {}


def register_stage(cls: type[Stage]) -> type[Stage]:
    """Make ``cls`` available under its ``kind`` key in recipe files."""
    _STAGES[cls.kind] = cls
    return cls


def stage_kinds() -> list[str]:
    return sorted(_STAGES)


@dataclass
class RunContext:
    """What a running stage sees: the model (a stage may replace it), the data context, the output folder."""

    model: nn.Module
    ctx: ApplyContext
    out: Path
    console: Any = None
    saved: list[Path] = field(default_factory=list)
    teacher: nn.Module | None = None       # the uncompressed model, for stages that learn from it
    max_steps: int | None = None           # cap on the steps of training stages (a trial run)
    parallel: str | None = None            # how torchrun processes share training stages (TrainConfig.parallel)
    owned: tuple[str, ...] = ()            # folders of the run inside ``out`` (recipe folder fields) a save keeps

    def say(self, text: str) -> None:
        if self.console is not None:
            self.console.print(text)


class Stage:
    """Base of stage types. ``changes_model``: the runner keeps a resume checkpoint after it."""

    kind: ClassVar[str] = ""
    changes_model: ClassVar[bool] = False

    def body(self) -> Any:
        """The YAML/JSON value under this stage's key."""
        raise NotImplementedError

    @classmethod
    def from_body(cls, body: Any, where: str) -> Stage:
        raise NotImplementedError

    def run(self, run: RunContext) -> None:
        raise NotImplementedError

    def describe(self) -> str:
        return self.kind

    def to_dict(self) -> dict[str, Any]:
        return {self.kind: self.body()}

    def short_body(self) -> Any:
        """The body as a recipe file writes it: configs in their short form (fields that differ from defaults)."""
        return self.body()

    def to_short_dict(self) -> dict[str, Any]:
        return {self.kind: self.short_body()}


def stage_from_dict(d: Any, where: str) -> Stage:
    """A stage from ``{kind: body}``; errors name the stage (``stage 2 (prune): ...``)."""
    if not isinstance(d, dict) or len(d) != 1:
        raise ConfigError(f"{where}: a stage is a mapping with one key ({', '.join(stage_kinds())}), got {shown(d)}")
    (kind, body), = d.items()
    cls = _STAGES.get(kind) if isinstance(kind, str) else None
    if cls is None:
        raise ConfigError(f"{where}: unknown stage {shown(kind)}; known: {', '.join(stage_kinds())}")
    try:
        return cls.from_body(body, f"{where} ({kind})")
    except ConfigError as e:
        msg = str(e)
        prefix = f"{where} ({kind})"
        raise ConfigError(msg if msg.startswith(prefix) else f"{prefix}: {msg}") from None


def capped(config: BaseConfig, max_steps: int | None) -> BaseConfig:
    """``config`` with its training steps capped at ``max_steps`` (warm-up shortened to fit), if it trains (a
    ``train`` TrainConfig, or its own ``steps`` per unit, such as block-wise reconstruction's steps per block)."""
    from torchslim.train.config import TrainConfig

    own = getattr(config, "steps", None)
    if max_steps is not None and isinstance(own, int) and dataclasses.is_dataclass(config) and own > max_steps:
        return dataclasses.replace(config, steps=max_steps)
    train = getattr(config, "train", None)
    if max_steps is None or not isinstance(train, TrainConfig) or train.steps <= max_steps:
        return config
    short = dataclasses.replace(train, steps=max_steps, warmup_steps=min(train.warmup_steps, max_steps - 1))
    return dataclasses.replace(config, train=short)


def with_parallel(config: BaseConfig, parallel: str | None) -> BaseConfig:
    """``config`` with its training ``parallel`` set (``ddp``, ``fsdp``, ``auto``), if it trains with a TrainConfig."""
    from torchslim.train.config import TrainConfig

    if parallel is None or not dataclasses.is_dataclass(config) or "train" not in {f.name for f in
                                                                                   dataclasses.fields(config)}:
        return config
    train = config.train if isinstance(config.train, TrainConfig) else TrainConfig()   # None: the defaults
    return dataclasses.replace(config, train=dataclasses.replace(train, parallel=parallel))


def needs_teacher(config: BaseConfig) -> bool:
    """Whether ``config`` trains against a teacher (distillation, QAT with a distillation loss)."""
    fn = getattr(config, "needs_teacher", None)
    return bool(fn()) if callable(fn) else False


# -- apply a config --------------------------------------------------------------------------------
_FAMILY = {"quantize": "quantization", "prune": "pruning", "finetune": "training", "distill": "distillation",
           "factorize": "lowrank", "attention": "attention", "early_exit": "early_exit", "apply": None}


@dataclass
class ApplyStage(Stage):
    """Apply one config (``quantize``/``prune``/``finetune``/``distill`` check its family)."""

    config: BaseConfig
    verb: str = "apply"
    changes_model: ClassVar[bool] = True

    def __post_init__(self) -> None:
        family = _FAMILY.get(self.verb)
        if family is not None and self.config.family != family:
            raise ConfigError(f"{type(self.config).__name__} is a {self.config.family or 'generic'} config, "
                              f"not for a '{self.verb}' stage")

    @property
    def kind(self) -> str:  # type: ignore[override]
        return self.verb

    def body(self) -> Any:
        return self.config.to_dict()

    def short_body(self) -> Any:
        return self.config.to_short_dict()

    @classmethod
    def from_body(cls, body: Any, where: str) -> Stage:
        raise NotImplementedError  # one subclass per verb (below) parses its key

    def run(self, run: RunContext) -> None:
        from torchslim.core.registry import apply_

        from torchslim.core.paths import rebase_folders

        ctx, config = run.ctx, capped(rebase_folders(self.config, run.out, self.describe()), run.max_steps)
        config = with_parallel(config, run.parallel)
        if needs_teacher(config):
            if run.teacher is None:
                raise ConfigError(f"{type(self.config).__name__} learns from a teacher, and this run has none")
            ctx = dataclasses.replace(ctx, teacher=run.teacher)
        run.model = apply_(run.model, config, ctx, family=_FAMILY.get(self.verb))

    def describe(self) -> str:
        return f"{self.verb} {type(self.config).__name__}"


def _verb_stage(verb: str) -> type[Stage]:
    def from_body(cls: type, body: Any, where: str) -> Stage:
        return cls(config_from_dict(body), verb)

    return type(f"{verb.title()}Stage", (ApplyStage,), {"kind": verb, "from_body": classmethod(from_body)})


for _verb in _FAMILY:
    register_stage(_verb_stage(_verb))


@register_stage
@dataclass
class TrainStage(ApplyStage):
    """``train: {TrainConfig fields}``: plain fine-tuning on the task (recovery)."""

    kind: ClassVar[str] = "train"

    def body(self) -> Any:
        return self.config.train.to_dict()["_data"]

    def short_body(self) -> Any:
        return {k: v for k, v in self.config.train.to_short_dict().items() if not k.startswith("_")}

    @classmethod
    def from_body(cls, body: Any, where: str) -> Stage:
        from torchslim.train import FinetuneConfig, TrainConfig

        if not isinstance(body, dict):
            raise ConfigError(f"{where}: expected a mapping of TrainConfig fields, got {shown(body)}")
        return cls(FinetuneConfig(train=config_from_dict(body, expected=TrainConfig)), "finetune")

    def describe(self) -> str:
        t = self.config.train
        return f"train {t.steps} steps (lr {t.lr:g}, batch {t.batch_size})"

    def to_dict(self) -> dict[str, Any]:
        return {"train": self.body()}


# -- evaluate, save, checkpoint --------------------------------------------------------------------
def reserved_names() -> frozenset[str]:
    """Names torchslim writes directly inside an output folder: a ``save`` stage may not take them."""
    from torchslim.artifact.hf_files import COMPANIONS, REAL_CONFIG

    return frozenset({"manifest.json", "model.safetensors", "config.json", REAL_CONFIG, "report.md", "report.json",
                      "report.html", *COMPANIONS})


class _FieldsStage(Stage):
    """A stage whose body is its dataclass fields (an empty body takes the defaults)."""

    @classmethod
    def from_body(cls, body: Any, where: str) -> Stage:
        return decode_dataclass(cls, body or {}, where)


@register_stage
@dataclass
class EvaluateStage(_FieldsStage):
    """Record the task's quality metrics and the model's size in the history (``label`` names the point)."""

    label: str | None = None
    kind: ClassVar[str] = "evaluate"

    def body(self) -> Any:
        return {"label": self.label} if self.label else {}

    def run(self, run: RunContext) -> None:
        from torchslim.recipes.report import quick_eval

        quick_eval(run.model, run.ctx.task, self.label or "evaluate")

    def describe(self) -> str:
        return f"evaluate{f' ({self.label})' if self.label else ''}"


@register_stage
@dataclass
class SaveStage(_FieldsStage):
    """Write the current model as an artifact at ``path`` inside the output folder (default: the folder itself)."""

    path: str | None = None
    kind: ClassVar[str] = "save"

    def __post_init__(self) -> None:
        if self.path is not None:   # one plain folder name, checked before any stage runs
            from torchslim.core.paths import check_entry_name

            check_entry_name(self.path, "save.path", reserved_names())

    def body(self) -> Any:
        return {"path": self.path} if self.path else {}

    def run(self, run: RunContext) -> None:
        from torchslim.artifact import save

        from rich.markup import escape

        from torchslim.core.paths import confined, refuse_link

        target = confined(run.out, self.path, "save.path") if self.path else refuse_link(run.out)
        save(run.model, target, keep=run.owned)
        run.saved.append(target)
        run.say(escape(f"saved {target}"))

    def describe(self) -> str:
        return f"save {self.path or '(output folder)'}"


@register_stage
@dataclass
class CheckpointStage(_FieldsStage):
    """A resume point: the runner keeps the model as it is here (after every model-changing stage anyway)."""

    kind: ClassVar[str] = "checkpoint"
    changes_model: ClassVar[bool] = True

    def body(self) -> Any:
        return {}

    def run(self, run: RunContext) -> None:
        pass

