"""Optimizers (AdamW, SGD with momentum, a hand-written Lion) and learning-rate schedules.

The schedule is a pure function of the step (:func:`lr_factor`), so a checkpoint needs no
scheduler state: the engine sets every group's ``lr`` before each optimizer step.
"""
from __future__ import annotations

import math
import re
from typing import Any, Callable, Iterable, Sequence

import torch
from torch import nn

from torchslim.train.config import OptimizerKind, ParamGroup, ScheduleKind, TrainConfig


class Lion(torch.optim.Optimizer):
    """Lion: EvoLved Sign Momentum (Chen et al. 2023, "Symbolic Discovery of Optimization Algorithms").

    Per parameter, with gradient ``g`` and momentum ``m``::

        c = beta1 * m + (1 - beta1) * g
        p = p - lr * (sign(c) + weight_decay * p)
        m = beta2 * m + (1 - beta2) * g

    Lion's update has unit magnitude per element, so it wants a learning rate about
    3-10x smaller than AdamW's (and a correspondingly larger weight decay).
    """

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 1e-4,
        betas: tuple[float, float] = (0.9, 0.99),
        weight_decay: float = 0.0,
    ) -> None:
        if lr <= 0:
            raise ValueError(f"Lion: lr must be positive, got {lr}")
        if not all(0.0 <= b < 1.0 for b in betas):
            raise ValueError(f"Lion: betas must be in [0, 1), got {betas}")
        super().__init__(params, {"lr": lr, "betas": tuple(betas), "weight_decay": weight_decay})

    @torch.no_grad()
    def step(self, closure: Callable[[], torch.Tensor] | None = None) -> torch.Tensor | None:  # type: ignore[override]
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, wd = group["lr"], group["weight_decay"]
            beta1, beta2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if "exp_avg" not in state:
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                m = state["exp_avg"]
                update = (m * beta1).add_(p.grad, alpha=1 - beta1).sign_()
                if wd:
                    p.mul_(1 - lr * wd)
                p.add_(update, alpha=-lr)
                m.mul_(beta2).add_(p.grad, alpha=1 - beta2)
        return loss


def param_groups(model: nn.Module, config: TrainConfig, extra: Sequence[ParamGroup] = ()) -> list[dict[str, Any]]:
    """Trainable parameters in optimizer groups, in a deterministic order.

    Each parameter goes to the first :class:`ParamGroup` whose ``params`` regex matches its name
    (``extra`` rules, from the technique, before the config's), else to the default group; within
    each, matrices/kernels get the weight decay and biases and norm scales (ndim < 2) none.
    """
    rules = [*extra, *config.param_groups]
    buckets: dict[tuple[int, bool], list[nn.Parameter]] = {}
    for name, p in model.named_parameters():
        if p.requires_grad:
            idx = next((i for i, r in enumerate(rules) if re.fullmatch(r.params, name)), -1)
            buckets.setdefault((idx, p.ndim >= 2), []).append(p)
    groups = []
    for (idx, decay), params in buckets.items():
        rule = rules[idx] if idx >= 0 else None
        lr, wd = config.lr, config.weight_decay
        if rule is not None:
            lr = rule.lr if rule.lr is not None else config.lr * (rule.lr_scale if rule.lr_scale is not None else 1.0)
            wd = rule.weight_decay if rule.weight_decay is not None else wd
        groups.append({"params": params, "weight_decay": wd if decay else 0.0, "base_lr": lr,
                       "group": rule.params if rule is not None else "default"})
    return groups


def build_optimizer(model: nn.Module, config: TrainConfig, extra: Sequence[ParamGroup] = ()) -> torch.optim.Optimizer:
    """The optimizer ``config.optimizer`` over ``model``'s trainable parameters (see :func:`param_groups`)."""
    groups = param_groups(model, config, extra)
    if not groups:
        from torchslim.core.errors import TorchSlimError

        raise TorchSlimError("the model has no trainable parameters (all have requires_grad=False)")
    kind = config.optimizer
    if kind is OptimizerKind.ADAMW:
        opt: torch.optim.Optimizer = torch.optim.AdamW(groups, lr=config.lr, betas=config.resolved_betas())
    elif kind is OptimizerKind.SGD:
        opt = torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum)
    else:
        opt = Lion(groups, lr=config.lr, betas=config.resolved_betas())
    return opt


def lr_factor(step: int, config: TrainConfig) -> float:
    """Multiplier of ``config.lr`` for optimizer step ``step`` (0-based).

    Linear warm-up ``(step + 1) / warmup_steps`` for the first ``warmup_steps`` steps, then
    ``constant`` (1), ``linear`` or ``cosine`` decay from 1 towards ``min_lr_ratio``, which
    is reached after the last step.
    """
    w, total = config.warmup_steps, config.steps
    if step < w:
        return (step + 1) / w
    if config.schedule is ScheduleKind.CONSTANT:
        return 1.0
    progress = min(1.0, (step - w) / max(1, total - w))
    lo = config.min_lr_ratio
    if config.schedule is ScheduleKind.LINEAR:
        return 1.0 - (1.0 - lo) * progress
    return lo + (1.0 - lo) * 0.5 * (1.0 + math.cos(math.pi * progress))


def set_lr(optimizer: torch.optim.Optimizer, step: int, config: TrainConfig) -> float:
    """Set every group's ``lr`` for optimizer step ``step``; returns the factor applied."""
    f = lr_factor(step, config)
    for g in optimizer.param_groups:
        g["lr"] = g.get("base_lr", config.lr) * f
    return f
