"""The training config shared by every training-time technique (fine-tuning, distillation, QAT...)."""
from __future__ import annotations

import enum
import math
from dataclasses import dataclass

from torchslim.core.config import BaseConfig, between
from torchslim.core.errors import ConfigError


class OptimizerKind(str, enum.Enum):
    """Which optimizer the engine builds."""

    ADAMW = "adamw"
    SGD = "sgd"      # with (Nesterov-free) momentum ``TrainConfig.momentum``
    LION = "lion"    # sign momentum (Chen et al. 2023), see :class:`torchslim.train.optim.Lion`


class ParallelKind(str, enum.Enum):
    """How several ``torchrun`` processes share training (one process ignores it).

    ``ddp``: every rank holds the whole model and averages gradients (DistributedDataParallel).
    ``fsdp``: parameters, gradients and optimizer state are sharded over the ranks (FSDP2, ``fully_shard`` per
    transformer block and the root; :mod:`torchslim.train.fsdp`). ``auto``: FSDP when a whole replica's training
    state (weights, gradients, two optimizer moments) would take more than half the memory of one process, else
    DDP."""

    AUTO = "auto"
    DDP = "ddp"
    FSDP = "fsdp"


class ScheduleKind(str, enum.Enum):
    """Learning-rate shape after the linear warm-up."""

    CONSTANT = "constant"
    LINEAR = "linear"
    COSINE = "cosine"


@dataclass
class ParamGroup(BaseConfig):
    """Parameters (names matching the regular expression ``params``, in full) trained with their own
    learning rate (``lr``, or ``lr_scale`` x the config's) and weight decay. The first matching group wins;
    unmatched parameters use the config's settings."""

    params: str = ".*"
    lr: float | None = None
    lr_scale: float | None = None
    weight_decay: float | None = None

    def validate(self) -> None:
        import re

        try:
            re.compile(self.params)
        except re.error as e:
            raise ConfigError(f"ParamGroup.params: bad regular expression {self.params!r}: {e}") from None
        for name in ("lr", "lr_scale"):
            v = getattr(self, name)
            if v is not None and not (isinstance(v, (int, float)) and math.isfinite(v) and v >= 0):
                raise ConfigError(f"ParamGroup.{name} must be a non-negative number or null, got {v!r}")
        if self.lr is not None and self.lr_scale is not None:
            raise ConfigError("ParamGroup: give lr or lr_scale, not both")
        if self.weight_decay is not None and not self.weight_decay >= 0:
            raise ConfigError(f"ParamGroup.weight_decay must be >= 0, got {self.weight_decay!r}")


@dataclass
class TrainConfig(BaseConfig):
    """How to train: steps, batch, optimizer, schedule, precision, evaluation and checkpoints.

    ``batch_size`` is the *global* batch of one optimizer step. It is split over
    ``world_size`` processes and ``grad_accum`` micro-steps, so changing either leaves the
    mathematics unchanged (for models without batch norm): each rank runs micro-batches of
    ``batch_size // (world_size * grad_accum)`` samples. Batch-norm layers see only a
    micro-batch, so BN models match closely rather than exactly across those settings.
    """

    steps: int = between(100, 1, 10**9)
    batch_size: int = between(32, 1, 1 << 20)
    grad_accum: int = between(1, 1, 1 << 16)
    lr: float = 1e-3
    weight_decay: float = 0.0
    optimizer: OptimizerKind = OptimizerKind.ADAMW
    betas: tuple[float, float] | None = None   # None: (0.9, 0.999) for AdamW, (0.9, 0.99) for Lion
    momentum: float = 0.9                       # SGD only
    schedule: ScheduleKind = ScheduleKind.COSINE
    warmup_steps: int = 0
    min_lr_ratio: float = 0.0                   # final LR of linear/cosine, as a fraction of ``lr``
    bf16: bool = False                          # bfloat16 autocast for forward + loss
    # Recompute each transformer block's activations in backward instead of keeping them: activation memory
    # of about one hidden state per block, for about one extra forward per step. Hugging Face models use their
    # own switch (use_reentrant=False, undone after fit); others checkpoint the blocks the architecture table
    # finds, and a model without any is warned about. The same loss and gradients: not a resume setting.
    gradient_checkpointing: bool = False
    # How several torchrun processes share the work: ddp, fsdp or auto (see ParallelKind). Not a resume setting:
    # checkpoints hold whole tensors, so a run resumes with another kind or number of processes.
    parallel: ParallelKind = ParallelKind.AUTO
    max_grad_norm: float | None = None          # clip the global gradient norm; None: no clipping
    eval_every: int = 0                         # evaluate every N steps (0: only at the end)
    eval_at_end: bool = True
    log_every: int = between(10, 1, 10**9)
    checkpoint_dir: str | None = None
    checkpoint_every: int = 0                   # 0: only the final checkpoint (when checkpoint_dir is set)
    keep_checkpoints: int = between(2, 1, 1000)  # newest checkpoints kept on disk
    resume: bool = False                        # continue from the newest checkpoint in checkpoint_dir
    force_resume: bool = False                  # resume even if settings that change the math differ
    seed: int = between(0, 0, 2**63 - 1)
    progress: bool = True                       # progress on rank 0: a bar on a terminal, else lines (TORCHSLIM_PROGRESS)
    param_groups: tuple[ParamGroup, ...] = ()   # per-parameter-group learning rates / weight decay

    def validate(self) -> None:
        _positive(self, "steps", "batch_size", "grad_accum")
        _non_negative(self, "weight_decay", "warmup_steps", "eval_every", "checkpoint_every")
        if not (isinstance(self.lr, (int, float)) and math.isfinite(self.lr) and self.lr > 0):
            raise ConfigError(f"TrainConfig.lr must be a positive number, got {self.lr!r}")
        if self.batch_size % self.grad_accum:
            raise ConfigError(
                f"TrainConfig.batch_size ({self.batch_size}) must be divisible by grad_accum ({self.grad_accum})"
            )
        if self.warmup_steps >= self.steps and self.warmup_steps > 0:
            raise ConfigError(f"TrainConfig.warmup_steps ({self.warmup_steps}) must be < steps ({self.steps})")
        if self.betas is not None:
            if len(self.betas) != 2 or not all(0.0 <= b < 1.0 for b in self.betas):
                raise ConfigError(f"TrainConfig.betas must be two numbers in [0, 1), got {self.betas!r}")
        if not 0.0 <= self.momentum < 1.0:
            raise ConfigError(f"TrainConfig.momentum must be in [0, 1), got {self.momentum!r}")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ConfigError(f"TrainConfig.min_lr_ratio must be in [0, 1], got {self.min_lr_ratio!r}")
        if self.max_grad_norm is not None and not self.max_grad_norm > 0:
            raise ConfigError(f"TrainConfig.max_grad_norm must be positive or null, got {self.max_grad_norm!r}")
        if self.log_every < 1 or self.keep_checkpoints < 1:
            raise ConfigError("TrainConfig.log_every and keep_checkpoints must be >= 1")
        if self.resume and not self.checkpoint_dir:
            raise ConfigError("TrainConfig.resume=True needs a checkpoint_dir")

    # Settings a resumed run must share with the checkpoint, or it silently computes something else.
    RESUME_FIELDS = ("optimizer", "lr", "batch_size", "grad_accum", "weight_decay", "betas", "momentum", "schedule",
                     "warmup_steps", "min_lr_ratio", "bf16", "max_grad_norm", "seed", "param_groups")

    def resume_differences(self, saved: dict) -> list[str]:
        """``"lr 0.001 -> 0.01"`` for every resume-relevant setting that differs from a saved config dict."""
        now, then = self.to_dict()["_data"], saved.get("_data", saved) if isinstance(saved, dict) else {}
        return [f"{k} {then.get(k)!r} -> {now[k]!r}" for k in self.RESUME_FIELDS if k in then and then[k] != now[k]]

    def resolved_betas(self) -> tuple[float, float]:
        """``betas``, or the optimizer's usual default."""
        if self.betas is not None:
            return (float(self.betas[0]), float(self.betas[1]))
        return (0.9, 0.99) if self.optimizer is OptimizerKind.LION else (0.9, 0.999)


def _positive(cfg: TrainConfig, *names: str) -> None:
    for n in names:
        v = getattr(cfg, n)
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise ConfigError(f"TrainConfig.{n} must be a positive integer, got {v!r}")


def _non_negative(cfg: TrainConfig, *names: str) -> None:
    for n in names:
        v = getattr(cfg, n)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0:
            raise ConfigError(f"TrainConfig.{n} must be >= 0, got {v!r}")
