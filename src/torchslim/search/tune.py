"""Accuracy-aware tuning: the smallest per-layer mix of actions that keeps quality within a budget, verified end
to end, written as a recipe that ``torchslim run`` reproduces.

From a sensitivity scan, each group (layer or block) may keep its weights or take one scanned action. For a
trade-off weight ``lam``, every group independently takes the option minimizing ``bytes + lam * cost`` (the
scan's costs treated as additive: a Lagrangian relaxation of "fewest bytes under a total cost"). ``lam = 0`` is
the most compressed mix and a large ``lam`` keeps everything; the mixes in between are the breakpoints where a
group's choice flips. A bisection over those breakpoints applies each candidate mix to a copy of the model and
measures the task's metric on its evaluation split, and keeps the most compressed mix within the budget: the
proxy only orders the candidates, the budget is checked end to end.
"""
from __future__ import annotations

import copy
import dataclasses
import re
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from torchslim.core.context import ApplyContext
from torchslim.core.errors import ConfigError
from torchslim.core.progress import track
from torchslim.core.registry import apply_
from torchslim.core.select import Selector
from torchslim.recipes.recipe import Recipe
from torchslim.recipes.stages import stage_from_dict
from torchslim.search.actions import Action
from torchslim.search.sensitivity import Sensitivity, quiet_trial, stored_bytes

VERBS = {"pruning": "prune", "lowrank": "factorize", "quantization": "quantize"}   # also the stage order


@dataclass(frozen=True)
class Budget:
    """How much quality may be lost: ``value`` in the task metric's units, or a share of it (``relative``)."""

    value: float
    relative: bool = False

    @classmethod
    def parse(cls, text: str | float) -> Budget:
        """``"1%"`` (relative) or ``"0.5"`` (absolute, in the metric's units)."""
        t = str(text).strip()
        m = re.fullmatch(r"(\d+(?:\.\d*)?|\.\d+)\s*(%?)", t)
        if not m:
            raise ConfigError(f"a quality budget looks like '1%' (relative) or '0.5' (metric units), got {t!r}")
        return cls(float(m.group(1)) / (100 if m.group(2) else 1), bool(m.group(2)))

    def allows(self, base: float, value: float, higher_is_better: bool) -> bool:
        loss = (base - value) if higher_is_better else (value - base)
        return loss <= (self.value * abs(base) if self.relative else self.value)

    def __str__(self) -> str:
        return f"{100 * self.value:g}%" if self.relative else f"{self.value:g}"


@dataclass
class Trial:
    lam: float
    assignment: dict[str, str]          # group -> action (groups that keep their weights are absent)
    proxy_cost: float
    bytes: int
    quality: float
    within: bool


@dataclass
class Tuned:
    """The most compressed verified mix (``recipe``; None if no mix met the budget) and every trial."""

    recipe: Recipe | None
    budget: str
    metric: str
    base_quality: float
    base_bytes: int
    best: Trial | None
    trials: list[Trial] = field(default_factory=list)


def choice(scan: Sensitivity, lam: float) -> dict[str, str]:
    out = {}
    for r in scan.rows:
        best, score = None, float(r.bytes)
        for a in scan.actions:
            c = r.cells.get(a)
            if c is not None and c.cost is not None and c.bytes is not None:
                s = c.bytes + lam * max(c.cost, 0.0)
                if s < score:
                    best, score = a, s
        if best is not None:
            out[r.group] = best
    return out


def breakpoints(scan: Sensitivity) -> list[float]:
    """Every ``lam`` where some group's choice can flip, ascending, starting at 0."""
    lams = {0.0}
    for r in scan.rows:
        opts = [(float(r.bytes), 0.0)] + [(float(c.bytes), max(c.cost, 0.0)) for c in r.cells.values()
                                          if c.cost is not None and c.bytes is not None]
        for b1, c1 in opts:
            for b2, c2 in opts:
                if c2 > c1 and b2 < b1:
                    lams.add((b1 - b2) / (c2 - c1) * (1 + 1e-9))
    return sorted(lams)


def to_recipe(scan: Sensitivity, actions: list[Action], assignment: dict[str, str], name: str) -> Recipe:
    """One stage per action used, selecting exactly the layers of the groups assigned to it (pruning, then
    factorization, then quantization), and an evaluation."""
    by_name = {a.name: a for a in actions}
    rows = {r.group: r for r in scan.rows}
    stages = []
    for family, verb in VERBS.items():
        for a in scan.actions:
            if a not in by_name or by_name[a].config.family != family:
                continue
            layers = [n for g, act in assignment.items() if act == a for n in rows[g].layers]
            if layers:
                config = dataclasses.replace(by_name[a].config, selector=Selector(include=tuple(layers)))
                stages.append(stage_from_dict({verb: config.to_short_dict()}, f"tuned stage {len(stages) + 1}"))
    other = {by_name[a].config.family for a in set(assignment.values())} - set(VERBS)
    if other:
        raise ConfigError(f"tuning handles quantization, pruning and low-rank actions, not {sorted(other)[0]}")
    stages.append(stage_from_dict({"evaluate": {"label": name}}, "tuned evaluation"))
    return Recipe(name, f"tuned per {scan.granularity}: the most compressed mix of {', '.join(scan.actions)} "
                        "within the quality budget (torchslim tune)", stages)


def measure_recipe(model: nn.Module, task: Any, recipe: Recipe) -> tuple[float, int]:
    trial = copy.deepcopy(model)
    ctx = ApplyContext(task=task, calibration=task)
    with quiet_trial():                     # no progress or warnings of its own (muted inside)
        for stage in recipe.stages:
            config = getattr(stage, "config", None)
            if config is not None:
                trial = apply_(trial, config, ctx)
    quality = float(task.evaluate(trial)[task.metric])
    return quality, stored_bytes([trial])


def tune(model: nn.Module, task: Any, scan: Sensitivity, budget: Budget | str, *, max_evals: int = 8,
         name: str = "tuned") -> Tuned:
    """The most compressed per-group mix of the scan's actions whose measured quality stays within ``budget``
    (module docstring); the model itself is not changed."""
    budget = budget if isinstance(budget, Budget) else Budget.parse(budget)
    if max_evals < 1:
        raise ConfigError("max_evals must be >= 1")
    actions = scan.action_list()
    model.eval()
    higher = getattr(task, "higher_is_better", True)
    base_q, base_b = float(task.evaluate(model)[task.metric]), stored_bytes([model])
    lams, rows = breakpoints(scan), {r.group: r for r in scan.rows}
    result = Tuned(None, str(budget), task.metric, base_q, base_b, None)
    lo, hi, seen = 0, len(lams) - 1, {}
    for _ in track(range(max_evals), "tuning", total=max_evals):
        if lo > hi:
            break
        mid = (lo + hi) // 2
        assignment = choice(scan, lams[mid])
        key = tuple(sorted(assignment.items()))
        if key not in seen:
            recipe = to_recipe(scan, actions, assignment, name) if assignment else None
            quality, size = measure_recipe(model, task, recipe) if recipe else (base_q, base_b)
            cost = sum(rows[g].cells[a].cost for g, a in assignment.items())
            seen[key] = Trial(lams[mid], assignment, cost, size, quality, budget.allows(base_q, quality, higher))
            result.trials.append(seen[key])
        trial = seen[key]
        if trial.within:
            if assignment and (result.best is None or trial.bytes < result.best.bytes):
                result.best, result.recipe = trial, to_recipe(scan, actions, assignment, name)
            hi = mid - 1            # compress more
        else:
            lo = mid + 1            # keep more
    return result
