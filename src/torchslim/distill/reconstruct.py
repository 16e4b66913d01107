"""Block-wise reconstruction as a distillation technique: each transformer block of a compressed model learns to
reproduce the same block of the uncompressed model (the teacher) on cached calibration inputs, one block at a
time (:mod:`torchslim.train.blockwise`). After GPTQ, AWQ or W8A8 the packed layers train as fake-quantized
layers (latent weights, learned step sizes) and pack back into the same formats and kernels; after structured
pruning the smaller float layers train as they are. A shallower student (blocks dropped) learns, block by block,
the teacher's hidden state at the same relative depth (block ``i`` of ``S`` the output of teacher block
``round((i + 1) * T / S) - 1``), unless ``teacher_blocks`` names the teacher block each student block learns
(a sub-network that dropped chosen blocks: the block just before the next kept one, as :mod:`torchslim.search.nas`
sets it).

``torchslim.distill_(model, ReconstructConfig(), task=task, teacher=uncompressed)``, or a recipe stage
``distill: {_type: ReconstructConfig}`` (the teacher is then the uncompressed model). Per block it costs
``steps`` forward/backward passes of that block alone: no whole-model pass, no teacher pass per step.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import ClassVar

from torch import nn

from torchslim.core.config import BaseConfig, between
from torchslim.core.context import ApplyContext
from torchslim.core.errors import ConfigError
from torchslim.core.registry import register_handler

log = logging.getLogger("torchslim")


@dataclass
class ReconstructConfig(BaseConfig):
    """``steps`` per block, each on one cached batch of ``batch_size`` calibration windows out of ``n_samples``;
    AdamW with cosine decay at ``lr`` (weights, norms) and ``quantizer_lr`` (step sizes, offsets). With
    ``checkpoint_dir`` finished blocks are saved and a killed run resumes after the last one. ``teacher_blocks``:
    the teacher block whose output each student block learns, increasing (None: evenly spaced)."""

    family: ClassVar[str] = "distillation"
    technique: ClassVar[str] = "reconstruct"
    steps: int = between(64, 0, 1 << 20)
    n_samples: int = between(128, 1, 1 << 16)
    batch_size: int = between(2, 1, 1024)
    # measured on SmolLM2-135M int4 g128 (one block, 48 steps, held-out batches): (5e-4, 5e-3) lowered the block's
    # error 47%, (1e-3, 1e-2) 35%, (1e-4, 1e-3) 12%, weights or step sizes alone 22%
    lr: float = between(5e-4, 0.0, 1.0)
    quantizer_lr: float = between(5e-3, 0.0, 1.0)
    max_grad_norm: float = between(1.0, 1e-6, 1e6)
    # False: packed layers keep their latent weights (a GPTQ result keeps its rounding decisions) and only their
    # step sizes, offsets and the block's norms and float layers train
    train_weights: bool = True
    seed: int = between(0, 0, 1 << 31)
    checkpoint_dir: str | None = None
    teacher_blocks: tuple[int, ...] | None = None

    def validate(self) -> None:
        if self.teacher_blocks is not None:
            tb = tuple(int(b) for b in self.teacher_blocks)
            if not tb or tb[0] < 0 or any(b <= a for a, b in zip(tb, tb[1:])):
                raise ConfigError(f"ReconstructConfig.teacher_blocks must be increasing block indices from 0, "
                                  f"got {list(self.teacher_blocks)}")
            self.teacher_blocks = tb

    def needs_teacher(self) -> bool:
        return True


@register_handler(ReconstructConfig, uses=("task", "calibration", "teacher"), modifies="weights")
def _reconstruct(model: nn.Module, config: ReconstructConfig, ctx: ApplyContext) -> nn.Module:
    from torchslim.calibration.pipeline import calibration_batches
    from torchslim.train.blockwise import BlockPlan, reconstruct

    teacher = ctx.teacher
    if not isinstance(teacher, nn.Module):
        raise ConfigError("block-wise reconstruction needs the uncompressed model as teacher= (a model or an artifact "
                          "folder; a recipe's distill stage passes it)")
    batches, forward = calibration_batches(ctx.calibration_data, config.n_samples, config.batch_size)
    fields = {k: v for k, v in config.to_dict()["_data"].items() if k != "checkpoint_dir"}
    fingerprint = json.dumps({**fields, "batches": len(batches)}, sort_keys=True, default=str)
    plan = BlockPlan(config.steps, config.lr, config.quantizer_lr, config.seed, config.max_grad_norm,
                     config.checkpoint_dir, fingerprint, config.train_weights, config.teacher_blocks)
    was = model.training
    model.eval()
    teacher.eval()
    try:
        rows = reconstruct(model, teacher, batches, forward, plan, config)
    finally:
        model.train(was)
    trained = [r for r in rows if r["kept"].startswith("trained")]
    if not trained:
        log.warning("reconstruction: no block improved; the model is unchanged")
    second = sum("second try" in r["kept"] for r in rows)
    ctx.record.details.update({"blocks_trained": len(trained), "blocks_second_try": second,
                               "blocks": rows, "steps": sum(r["steps"] for r in rows),
                               "wall_s": sum(r.get("s", 0.0) for r in rows)})
    ctx.record.metrics["block_error_before"] = sum(r["error_before"] for r in rows) / len(rows)
    ctx.record.metrics["block_error_after"] = sum(r["error_after"] for r in rows) / len(rows)
    return model
