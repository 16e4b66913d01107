"""Calibrated methods as plans, so consecutive methods can share one calibration pass.

A calibrated method (GPTQ, AWQ, ...) registers a *planner*: ``planner(model, config, ctx) ->
CalibrationPlan`` says, without changing the model, which layers it measures, with what
statistics, and what it does once they are measured. Its handler runs :func:`execute`.

Sharing: when a method that preserves the model's function (AWQ's equivalence scaling with
``scale_only``) is followed by another calibrated method whose statistics do not depend on its
own solving (GPTQ without ``propagate_quantized``), the first pass also measures the second
method's statistics; the second method then solves from them without a pass of its own. The
statistics are those of each layer's *input*: a layer the first method rescaled exposes its
``input_scale`` and the second transforms its statistics (``Hessian.scaled``), which is exact.
:func:`apply_sequence_` applies a list of configs this way (the recipe runner uses it).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import nn

from torchslim.calibration.pipeline import Forward, Solver, StatsFactory, pick_runner
from torchslim.core.config import BaseConfig
from torchslim.core.context import ApplyContext
from torchslim.core.surgery import get_module

log = logging.getLogger("torchslim.calibration")


@dataclass
class CalibrationPlan:
    config: BaseConfig
    label: str
    targets: dict[str, nn.Module]
    factory: StatsFactory
    solve: Solver                      # receives {name: (current module, stats)}
    batches: list[dict[str, Any]]
    forward: Forward
    data_key: tuple[Any, ...]          # (calibration source, samples): plans share only identical data
    sequential: bool = True
    propagate_solved: bool = True
    autocast_dtype: torch.dtype | None = None
    preserves_function: bool = False   # an exact equivalence transform: later plans may share its pass


Planner = Callable[[nn.Module, Any, ApplyContext], "CalibrationPlan | None"]
_PLANNERS: dict[type[BaseConfig], Planner] = {}


def register_planner(config_type: type[BaseConfig]) -> Callable[[Planner], Planner]:
    def decorator(fn: Planner) -> Planner:
        _PLANNERS[config_type] = fn
        return fn
    return decorator


def planner_for(config: BaseConfig) -> Planner | None:
    return next((_PLANNERS[k] for k in type(config).__mro__ if k in _PLANNERS), None)


@dataclass
class SharedCalibration:
    """Plans whose statistics the current pass also measures, and the statistics measured for them."""

    lookahead: list[CalibrationPlan] = field(default_factory=list)
    stats: dict[int, dict[str, Any]] = field(default_factory=dict)   # id(config) -> {layer: stats}

    def take(self, config: BaseConfig) -> dict[str, Any] | None:
        return self.stats.pop(id(config), None)


def can_share(first: CalibrationPlan, then: CalibrationPlan) -> bool:
    """Whether ``then``'s statistics can be measured during ``first``'s pass."""
    return (first.preserves_function and not then.propagate_solved and first.data_key == then.data_key
            and first.sequential == then.sequential and first.autocast_dtype == then.autocast_dtype)


class _Multi:
    """Statistics of several plans fed the same inputs."""

    def __init__(self, parts: list[Any]) -> None:
        self.parts = parts

    def add_batch(self, x: torch.Tensor) -> None:
        for p in self.parts:
            p.add_batch(x)


def execute(model: nn.Module, plan: CalibrationPlan | None, ctx: ApplyContext) -> None:
    """Run ``plan``: from statistics an earlier shared pass measured for it, else with its own pass
    (also measuring the statistics of any plans waiting in ``ctx.shared``)."""
    if plan is None:
        return
    shared = ctx.shared
    measured = shared.take(plan.config) if shared is not None else None
    if measured is not None and set(plan.targets) <= set(measured):
        log.info("%s: statistics from the previous stage's calibration pass (no pass of its own)", plan.label)
        plan.solve({n: (get_module(model, n), measured[n]) for n in plan.targets})
        return
    later = [p for p in (shared.lookahead if shared is not None else []) if p.config is not plan.config]
    plans = [plan, *later]
    targets = dict(plan.targets)
    for p in later:
        targets.update({n: m for n, m in p.targets.items() if n not in targets})

    def factory(name: str, module: nn.Module) -> _Multi:
        return _Multi([p.factory(name, module) for p in plans])

    def solve(group: dict[str, tuple[nn.Module, _Multi]]) -> None:
        own = {n: (m, st.parts[0]) for n, (m, st) in group.items() if n in plan.targets}
        if own:
            plan.solve(own)
        for i, p in enumerate(later, start=1):
            store = shared.stats.setdefault(id(p.config), {})
            store.update({n: st.parts[i] for n, (_, st) in group.items() if n in p.targets})

    desc = plan.label + "".join(f" + {p.label}" for p in later)
    pick_runner(plan.sequential, plan.propagate_solved, plan.autocast_dtype)(
        model, targets, plan.batches, plan.forward, factory, solve, desc)


def apply_sequence_(model: nn.Module, configs: list[BaseConfig], ctx: ApplyContext,
                    family: str | None = None) -> nn.Module:
    """Apply ``configs`` in order; consecutive calibrated configs share one pass where :func:`can_share` allows."""
    from torchslim.core.registry import apply_

    i = 0
    while i < len(configs):
        group = sharing_group(model, configs[i:], ctx)
        shared = SharedCalibration(lookahead=group[1:]) if len(group) > 1 else None
        for cfg in configs[i:i + max(1, len(group))]:
            model = apply_(model, cfg, ApplyContext(**{**ctx.__dict__, "shared": shared}), family=family)
        i += max(1, len(group))
    return model


def sharing_group(model: nn.Module, configs: list[BaseConfig], ctx: ApplyContext) -> list[CalibrationPlan]:
    """Plans of the leading configs that can run on one calibration pass (empty or one: no sharing)."""
    plans: list[CalibrationPlan] = []
    for cfg in configs:
        planner = planner_for(cfg)
        plan = planner(model, cfg, ctx) if planner is not None else None
        if plan is None or (plans and not can_share(plans[-1], plan)):
            break
        plans.append(plan)
        if not plan.preserves_function:
            break
    return plans
