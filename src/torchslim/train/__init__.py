"""The training engine: one loop (``Trainer``) that fine-tuning, distillation, QAT and pruning share.

Techniques plug in through :class:`TrainHook` (extra losses, per-step callbacks); the loop
handles optimizers (AdamW / SGD / Lion), schedules, bf16 autocast, gradient accumulation and
clipping, evaluation, atomic safetensors+JSON checkpoints with exact resume, progress, and
``torchrun`` multi-process data parallelism.
"""
from torchslim.train.config import OptimizerKind, ParallelKind, ParamGroup, ScheduleKind, TrainConfig
from torchslim.train.engine import Trainer, TrainResult
from torchslim.train.hooks import LambdaHook, TrainHook
from torchslim.train.optim import Lion, build_optimizer, lr_factor
from torchslim.train.transform import FinetuneConfig, Prepared, TrainingConfig, run_transform

__all__ = [
    "FinetuneConfig",
    "ParamGroup",
    "Prepared",
    "TrainingConfig",
    "run_transform",
    "LambdaHook",
    "Lion",
    "OptimizerKind",
    "ParallelKind",
    "ScheduleKind",
    "TrainConfig",
    "TrainHook",
    "TrainResult",
    "Trainer",
    "build_optimizer",
    "lr_factor",
]
