"""Joint search: a multi-objective optuna study over per-group mixes of the scanned actions.

Each trial picks, for every group of a sensitivity scan, to keep it or take one of the actions that applied to it;
the mix becomes a recipe (:func:`torchslim.search.tune.to_recipe`), is applied to a copy of the model and measured
end to end: the task's metric on its evaluation split and the stored bytes; latency comes from the per-layer
latency model (:mod:`torchslim.search.latency`) measured on this machine. Objectives: quality, bytes and (with a
latency model) milliseconds. The result is the Pareto front, each point a recipe ``torchslim run`` reproduces.

- **Warm start from sensitivity**: the study first runs the uncompressed model, each action everywhere it applies,
  and the mixes :func:`tune` would consider (the Lagrangian breakpoints of the scan), so the sampler (NSGA-II)
  starts from a spread of sensible mixes rather than random ones.
- **Hopeless trials pruned early**: with a ``max_loss`` budget, a mix whose summed proxy cost from the scan is at
  least that of a mix already measured beyond the budget is pruned before it is applied (quality is taken as
  monotone in the proxy); pruned trials stay in the study, marked.
- **Shared storage**: ``storage`` is an optuna storage URL; SQLite (a file) by default from the CLI, or a database
  server URL, so several processes (or machines) add trials to one study by its ``study_name``.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from torchslim.core.errors import ConfigError, TorchSlimError, first_line
from torchslim.core.progress import Progress, muted
from torchslim.search.latency import LatencyModel
from torchslim.search.sensitivity import Sensitivity, stored_bytes
from torchslim.search.tune import Budget, breakpoints, choice, measure_recipe, to_recipe

KEEP = "keep"
log = logging.getLogger("torchslim.search")


@dataclass
class Point:
    """One measured mix: ``assignment`` maps group -> action (kept groups absent)."""

    number: int
    assignment: dict[str, str]
    quality: float
    bytes: int
    latency_ms: float | None
    proxy_cost: float
    recipe: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class SearchResult:
    study_name: str
    storage: str | None
    metric: str
    higher_is_better: bool
    objectives: list[str]
    base: Point
    points: list[Point] = field(default_factory=list)
    front: list[Point] = field(default_factory=list)
    pruned: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {k: ([p.to_dict() for p in v] if k in ("points", "front") else v.to_dict() if k == "base" else v)
                for k, v in self.__dict__.items()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SearchResult:
        return cls(**{**d, "base": Point(**d["base"]), "points": [Point(**p) for p in d["points"]],
                      "front": [Point(**p) for p in d["front"]]})


def _options(scan: Sensitivity) -> dict[str, list[str]]:
    return {r.group: [KEEP] + [a for a in scan.actions if r.cells.get(a) and r.cells[a].cost is not None]
            for r in scan.rows}


def _warm_starts(scan: Sensitivity, limit: int) -> list[dict[str, str]]:
    opts = _options(scan)
    mixes = [{}] + [{g: a for g, o in opts.items() if a in o} for a in scan.actions]
    lams = breakpoints(scan)
    step = max(1, len(lams) // max(1, limit - len(mixes)))
    mixes += [choice(scan, lam) for lam in lams[::step]]
    out, seen = [], set()
    for m in mixes:
        key = tuple(sorted(m.items()))
        if key not in seen:
            seen.add(key)
            out.append(m)
    return out[:limit]


def _layers_by_action(scan: Sensitivity, assignment: dict[str, str]) -> dict[str, list[str]]:
    rows = {r.group: r for r in scan.rows}
    out: dict[str, list[str]] = {}
    for g, a in assignment.items():
        out.setdefault(a, []).extend(rows[g].layers)
    return out


def _optuna() -> Any:
    try:
        import optuna
    except ImportError:
        raise TorchSlimError("the joint search needs optuna: pip install optuna (or torchslim[search])") from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna


def _storage(url: str | None, attempts: int = 6) -> Any:
    """The study's RDB storage. Processes starting together on a new database race to create its tables (SQLite:
    "table studies already exists"): the loser retries, and then finds the tables made."""
    optuna = _optuna()
    if url is None:
        return None
    from sqlalchemy.exc import IntegrityError, OperationalError

    # SQLite: several processes on one file wait for the lock instead of failing
    engine = {"connect_args": {"timeout": 120}} if url.startswith("sqlite") else None
    for attempt in range(attempts):
        try:
            return optuna.storages.RDBStorage(url, engine_kwargs=engine)
        except (OperationalError, IntegrityError) as e:
            racing = "already exists" in str(e) or isinstance(e, IntegrityError)
            if not racing or attempt == attempts - 1:
                raise TorchSlimError(f"search storage {url}: {first_line(e.orig or e)}") \
                    from None
            log.info("search storage: another process is creating the tables; retrying (%d)", attempt + 1)
            time.sleep(0.2 * (attempt + 1))
    raise AssertionError("unreachable")


def _study(directions: list[str], storage: str | None, study_name: str, seed: int) -> Any:
    optuna = _optuna()
    sampler = optuna.samplers.NSGAIISampler(seed=seed)
    return optuna.create_study(storage=_storage(storage), study_name=study_name, directions=directions,
                               sampler=sampler, load_if_exists=True)


def search(model: nn.Module, task: Any, scan: Sensitivity, *, n_trials: int = 20,
           latency: LatencyModel | None = None, storage: str | None = None, study_name: str = "torchslim",
           max_loss: Budget | str | None = None, warm_start: bool = True, seed: int = 0,
           name: str = "searched") -> SearchResult:
    """Run ``n_trials`` trials of the study (module docstring) and return every measured point and the front.

    Several processes may call this with one ``storage`` and ``study_name``: each adds its ``n_trials``."""
    optuna = _optuna()

    if n_trials < 1:
        raise ConfigError("n_trials must be >= 1")
    budget = Budget.parse(max_loss) if isinstance(max_loss, (str, float, int)) else max_loss
    actions, rows, opts = scan.action_list(), {r.group: r for r in scan.rows}, _options(scan)
    higher = bool(getattr(task, "higher_is_better", True))
    objectives = ["quality", "bytes"] + (["latency_ms"] if latency is not None else [])
    directions = ["maximize" if higher else "minimize", "minimize"] + (["minimize"] if latency else [])
    model.eval()
    base_q, base_b = float(task.evaluate(model)[task.metric]), stored_bytes([model])
    base = Point(-1, {}, base_q, base_b, latency.base_ms if latency else None, 0.0)
    study = _study(directions, storage, study_name, seed)
    if warm_start and not study.trials:
        for mix in _warm_starts(scan, max(2, n_trials // 2)):
            study.enqueue_trial({g: mix.get(g, KEEP) for g in opts}, skip_if_exists=True)
    failed_proxy: list[float] = []

    def objective(trial: Any) -> tuple[float, ...]:
        assignment = {g: a for g in opts if (a := trial.suggest_categorical(g, opts[g])) != KEEP}
        proxy = sum(rows[g].cells[a].cost for g, a in assignment.items())
        trial.set_user_attr("assignment", assignment)
        trial.set_user_attr("proxy_cost", proxy)
        if budget is not None and failed_proxy and proxy >= min(failed_proxy):
            raise optuna.TrialPruned(f"proxy cost {proxy:.3g} >= that of a mix already beyond the budget")
        recipe = to_recipe(scan, actions, assignment, name) if assignment else None
        with muted():                      # the study's own progress line is enough
            quality, size = measure_recipe(model, task, recipe) if recipe else (base_q, base_b)
        if budget is not None and not budget.allows(base_q, quality, higher):
            failed_proxy.append(proxy)
        values = [quality, float(size)]
        if latency is not None:
            ms = latency.predict(_layers_by_action(scan, assignment))
            trial.set_user_attr("latency_ms", ms)
            values.append(ms)
        return tuple(values)

    with Progress(f"searching ({n_trials} trials)", n_trials, unit="trials") as progress:
        study.optimize(objective, n_trials=n_trials, catch=(ConfigError,),
                       callbacks=[lambda s, t: progress.update(1, f"trial {t.number}: {t.state.name.lower()}")])
    return _result(study, scan, actions, base, objectives, storage, study_name, task, higher, name)


def _result(study: Any, scan: Sensitivity, actions: list, base: Point, objectives: list[str],
            storage: str | None, study_name: str, task: Any, higher: bool, name: str) -> SearchResult:
    optuna = _optuna()

    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    points = [Point(t.number, dict(t.user_attrs["assignment"]), t.values[0], int(t.values[1]),
                    t.values[2] if len(t.values) > 2 else None, float(t.user_attrs["proxy_cost"])) for t in done]
    front_numbers = {t.number for t in study.best_trials}
    front = []
    for p in sorted((p for p in points if p.number in front_numbers), key=lambda p: p.bytes):
        if p.assignment:
            p.recipe = to_recipe(scan, actions, p.assignment, f"{name}-{p.number}").to_dict()
        front.append(p)
    pruned = sum(t.state == optuna.trial.TrialState.PRUNED for t in study.trials)
    return SearchResult(study_name, storage, task.metric, higher, objectives, base, points, front, pruned)
