"""White-box knowledge distillation as a training technique: ``torchslim.distill_(student, DistillConfig(...),
task=task, teacher=teacher)`` or a ``distill:`` recipe stage (the teacher defaults to the uncompressed model).

Per micro-batch the loss is a weighted sum of named terms (each logged): ``task`` (the task's own loss),
``kd_output`` (KL of temperature-softened logits; cosine of hidden states for models without logits),
``kd_hidden`` (MSE of mapped block outputs relative to the teacher's mean square, through learned projections
when widths differ) and
``kd_relation`` (MiniLM-v2 self-relations of the last mapped block's states). Projections are added to
the student for training and removed by ``convert``: the result has the student's own architecture.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from torch import nn

from torchslim.core.config import between
from torchslim.core.context import ApplyContext
from torchslim.core.errors import ConfigError
from torchslim.core.registry import register_handler
from torchslim.train.transform import TRAINING_USES, Prepared, TrainingConfig, run_transform


@dataclass
class DistillConfig(TrainingConfig):
    """Weights of the loss terms (0 leaves a term out) and how layers map (``uniform``: student block ``i`` of
    ``S`` learns teacher block ``round((i + 1) * T / S) - 1``; ``last``: only the last blocks)."""

    family: ClassVar[str] = "distillation"
    task_weight: float = between(0.0, 0.0, 1e6)
    output_weight: float = between(1.0, 0.0, 1e6)
    temperature: float = between(2.0, 0.05, 100.0)
    hidden_weight: float = between(0.0, 0.0, 1e6)
    relation_weight: float = between(0.0, 0.0, 1e6)
    relation_heads: int = between(4, 1, 256)
    layer_map: str = "uniform"
    teacher_cache: str | None = None             # a folder: teacher top-k logits cached on disk across epochs
    cache_topk: int = between(64, 1, 1 << 20)

    def validate(self) -> None:
        if self.layer_map not in ("uniform", "last"):
            raise ConfigError(f"DistillConfig.layer_map must be 'uniform' or 'last', got {self.layer_map!r}")
        if not (self.task_weight or self.output_weight or self.hidden_weight or self.relation_weight):
            raise ConfigError("DistillConfig: every loss weight is 0; nothing to train on")

    def needs_teacher(self) -> bool:
        return True

    def prepare(self, model: nn.Module, ctx: ApplyContext) -> Prepared:
        from torchslim.distill.hook import DistillHook

        if ctx.teacher is None:
            raise ConfigError("distillation needs a teacher: pass teacher=<model, artifact folder or callable> "
                              "(a recipe's distill stage uses the uncompressed model)")
        teacher = resolve_teacher(ctx.teacher)
        hook = DistillHook(self, model, teacher)
        return Prepared(hooks=[hook], state={"hook": hook}, teacher=teacher)

    def convert(self, model: nn.Module, prepared: Prepared) -> nn.Module:
        prepared.state["hook"].detach(model)
        return model


def resolve_teacher(teacher: Any) -> Any:
    """A teacher model or a callable, as given (a folder is loaded by the caller: ``torchslim.distill_`` and
    recipes load an artifact folder before the technique sees it)."""
    if isinstance(teacher, nn.Module) or callable(teacher):
        return teacher
    raise ConfigError(f"a teacher is a model, an artifact folder (through torchslim.distill_ or a recipe) or a "
                      f"callable, got {type(teacher).__name__}")


@register_handler(DistillConfig, uses=TRAINING_USES, modifies="weights")
def _distill(model: nn.Module, config: DistillConfig, ctx: ApplyContext) -> nn.Module:
    return run_transform(model, config, ctx)

