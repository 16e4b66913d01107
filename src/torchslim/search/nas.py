"""Hardware-aware search for a compact sub-network of a given model: ``torchslim.search.nas(model, task, NASConfig())``.

1. The space (:mod:`torchslim.search.arch_space`): which blocks to keep and heads/neurons per block for a
   transformer, kept channels per coupled group for a convnet. Importance is measured once on the full model.
2. ``n_candidates`` shapes (the uniform widths first, then random draws) are each built by structured pruning of
   a copy, timed end to end at ``shape`` interleaved with the full model on this machine (medians), and scored by
   a zero-cost proxy: the divergence of their outputs from the full model's on calibration batches right after
   pruning (KL of logits, or relative squared error of hidden states), lower is better.
   With a parameter budget (``max_params`` and/or ``max_param_ratio`` of the full model's parameters, counted by
   :func:`torchslim.eval.size.count_parameters` on the built candidate), a shape over it is rejected right after
   it is built, neither timed nor scored, and does not count towards ``n_candidates`` (draws go on, up to
   ``50 * n_candidates``); so is one below ``min_param_use`` of the budget. Without a latency constraint nothing
   is timed.
3. Among the candidates meeting the constraints (latency: ``max_latency_ms`` and/or ``min_speedup``; parameters), the
   ``n_recover`` best by proxy, plus ``n_validate`` others drawn at random (so the proxy is checked beyond its own
   favourites), are recovered with the same fixed budget (distillation from the full model, ``recover``) and
   evaluated on the task; the best recovered one is returned. The Spearman rank correlation between proxy and
   recovered quality over the recovered candidates is reported.

Latency figures come from the machine the search runs on: on a shared machine they move with its load, which is
why each candidate is timed against the full model in the same interleaved run.
"""
from __future__ import annotations

import dataclasses
import logging
import random
from dataclasses import dataclass, field
from typing import Any, Iterator

import torch
from torch import nn

from torchslim.core.archs import find_blocks
from torchslim.core.config import BaseConfig, between
from torchslim.core.errors import ConfigError
from torchslim.core.progress import Progress, muted
from torchslim.core.select import Selector
from torchslim.distill.config import DistillConfig
from torchslim.distill.reconstruct import ReconstructConfig
from torchslim.pruning.importance import Importance
from torchslim.search.arch_space import ArchShape, ArchSpace, Scores, build, space_of
from torchslim.train.config import TrainConfig

log = logging.getLogger("torchslim.search")


def default_recovery() -> DistillConfig:
    return DistillConfig(output_weight=1.0, train=TrainConfig(steps=50, batch_size=16, lr=1e-4, warmup_steps=5,
                                                              max_grad_norm=1.0, eval_at_end=False, progress=False))


@dataclass
class NASConfig(BaseConfig):
    """What to search and under which constraints (see the module docstring): latency (``max_latency_ms``,
    ``min_speedup``), parameters (``max_params``, ``max_param_ratio`` of the full model's), any of them alone or
    together. ``shape``: ``(batch, seq_len)`` the latency is measured at (``seq_len`` ignored by image tasks).
    ``widths``: fractions a searched unit may keep; ``min_depth``: fewest blocks kept, as a fraction (1: depth not
    searched). ``min_param_use``: with a parameter budget, shapes below this fraction of it are skipped unscored.
    ``recover``: the fixed recovery every recovered candidate gets (distillation, or block-wise reconstruction,
    each student block then learning the teacher's output just before the next kept block); ``None``: no
    recovery, the proxy alone picks."""

    family = "search"
    max_latency_ms: float | None = None
    min_speedup: float | None = None
    max_params: int | None = None
    max_param_ratio: float | None = None
    min_param_use: float = between(0.0, 0.0, 1.0)
    shape: tuple[int, int | None] = (1, 128)
    widths: tuple[float, ...] = (0.25, 0.5, 0.75, 1.0)
    min_depth: float = between(0.5, 0.0, 1.0)
    heads: bool = True
    neurons: bool = True
    n_candidates: int = between(24, 1, 100000)
    n_recover: int = between(4, 0, 100000)
    n_validate: int = between(0, 0, 100000)
    recover: DistillConfig | ReconstructConfig | None = field(default_factory=default_recovery)
    n_proxy_samples: int = between(32, 1, 1 << 16)
    n_importance_samples: int = between(64, 1, 1 << 16)
    importance: Importance | None = None      # None: taylor with a task that has a loss, else magnitude_l2
    round_to: int = between(1, 1, 4096)
    latency_iters: int = between(15, 1, 10000)
    seed: int = between(0, 0, 2**63 - 1)
    selector: Selector | None = None

    def validate(self) -> None:
        if self.max_latency_ms is None and self.min_speedup is None and not self.has_param_budget():
            raise ConfigError("NASConfig: give a constraint: max_latency_ms=..., min_speedup=..., max_params=... "
                              "and/or max_param_ratio=...")
        if self.max_params is not None and (isinstance(self.max_params, bool) or not isinstance(self.max_params, int)
                                            or self.max_params <= 0):
            raise ConfigError(f"NASConfig.max_params must be a positive whole number of parameters, "
                              f"got {self.max_params!r}")
        if self.max_param_ratio is not None and not 0 < self.max_param_ratio <= 1:
            raise ConfigError(f"NASConfig.max_param_ratio must be a fraction of the full model's parameters in "
                              f"(0, 1], got {self.max_param_ratio}")
        if self.min_param_use > 0 and not self.has_param_budget():
            raise ConfigError("NASConfig.min_param_use needs a parameter budget (max_params or max_param_ratio)")
        if self.max_latency_ms is not None and self.max_latency_ms <= 0:
            raise ConfigError(f"NASConfig.max_latency_ms must be positive, got {self.max_latency_ms}")
        if self.min_speedup is not None and self.min_speedup <= 0:
            raise ConfigError(f"NASConfig.min_speedup must be positive, got {self.min_speedup}")
        if not self.widths or any(not 0 < w <= 1 for w in self.widths):
            raise ConfigError(f"NASConfig.widths must be fractions in (0, 1], got {list(self.widths)}")
        if self.importance not in (None, Importance.TAYLOR, Importance.MAGNITUDE_L2, Importance.MAGNITUDE):
            raise ConfigError(f"NASConfig.importance: taylor, magnitude_l2 or magnitude, not {self.importance.value}")
        if len(self.shape) != 2 or int(self.shape[0]) < 1:
            raise ConfigError(f"NASConfig.shape is (batch, seq_len), got {self.shape}")
        self.widths = tuple(sorted({float(w) for w in self.widths}))

    def has_param_budget(self) -> bool:
        return self.max_params is not None or self.max_param_ratio is not None

    def has_latency(self) -> bool:
        return self.max_latency_ms is not None or self.min_speedup is not None

    def param_budget(self, base_params: int) -> int | None:
        """The most parameters a candidate may have (the tighter of ``max_params`` and ``max_param_ratio`` of
        ``base_params``), or None without a parameter budget."""
        limits = [x for x in (self.max_params, None if self.max_param_ratio is None
                              else int(self.max_param_ratio * base_params)) if x is not None]
        return min(limits) if limits else None


@dataclass
class Trial:
    """One candidate: its shape, parameters, measured latency (median, ms) and speed-up over the full model in the
    same interleaved run (None when the search has no latency constraint: nothing is timed), proxy (lower is
    better) and, if recovered, its task metric."""

    number: int
    origin: str
    shape: ArchShape
    params: int
    latency_ms: float | None
    speedup: float | None
    feasible: bool
    proxy: float
    quality: float | None = None
    confirmed_speedup: float | None = None     # the pick's second timing (latency constraints): see confirm_pick

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["shape"], d["label"] = self.shape.to_dict(), self.shape.label()
        return d


@dataclass
class NASResult:
    """The chosen sub-network (a plain pruned, recovered model), its shape and trial, every trial, the full
    model's figures and the proxy's rank correlation with recovered quality. With a parameter budget:
    ``param_budget``, and of the ``n_drawn`` shapes built, ``n_over_budget`` over it and ``n_under_use`` below
    ``min_param_use`` of it (neither kind is a trial)."""

    model: nn.Module | None
    shape: ArchShape | None
    best: Trial | None
    trials: list[Trial]
    metric: str
    higher_is_better: bool
    base_params: int
    base_quality: float | None
    base_ms: float | None
    proxy_spearman: float | None
    config: NASConfig
    machine: dict[str, Any] = field(default_factory=dict)
    param_budget: int | None = None
    n_drawn: int = 0
    n_over_budget: int = 0
    n_under_use: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {"metric": self.metric, "higher_is_better": self.higher_is_better, "base_params": self.base_params,
                "base_quality": self.base_quality, "base_ms": self.base_ms, "proxy_spearman": self.proxy_spearman,
                "param_budget": self.param_budget, "n_drawn": self.n_drawn, "n_over_budget": self.n_over_budget,
                "n_under_use": self.n_under_use,
                "best": self.best.number if self.best else None, "trials": [t.to_dict() for t in self.trials],
                "config": self.config.to_dict(), "machine": self.machine}


def n_params(model: nn.Module) -> int:
    """Logical parameters (tied weights once, packed ones unpacked), as every torchslim report counts them."""
    from torchslim.eval.size import count_parameters

    return count_parameters(model, nonzero=False)[0]


def proxy_reference(model: nn.Module, task: Any, n_samples: int) -> tuple[list[dict], list[torch.Tensor], str]:
    """Calibration batches, the full model's outputs on them and the divergence kind the proxy uses."""
    from torchslim.calibration.pipeline import calibration_batches
    from torchslim.search.measure import output_tensor, reference

    batches, forward = calibration_batches(task, n_samples, batch_size=8)
    with torch.inference_mode():
        outs = [forward(model, b) for b in batches]
    kind = "mse" if getattr(outs[0], "last_hidden_state", None) is not None else "kl"
    return batches, [reference(output_tensor(o), kind) for o in outs], kind


def output_proxy(candidate: nn.Module, task: Any, ref: tuple[list[dict], list[torch.Tensor], str]) -> float:
    """Mean divergence of ``candidate``'s outputs from the full model's (:func:`proxy_reference`)."""
    from torchslim.search.measure import divergence, output_tensor

    batches, outs, kind = ref
    total, count = 0.0, 0
    with torch.inference_mode():
        for b, r in zip(batches, outs):
            s, c = divergence(r, output_tensor(task.forward(candidate, b)).float(), kind)
            total, count = total + s, count + c
    return total / max(count, 1)


def quiet_build(model: nn.Module, space: ArchSpace, shape: ArchShape, scores: Scores) -> nn.Module:
    """:func:`build` without its per-candidate warnings (a pruned config that reloads only through torchslim.load
    is said once per candidate otherwise)."""
    from torchslim.search.sensitivity import quiet_trial

    with quiet_trial():
        return build(model, space, shape, scores)


def feasible(config: NASConfig, ms: float | None, speedup: float | None, params: int | None = None,
             budget: int | None = None) -> bool:
    """Whether a candidate meets every constraint of ``config`` (``budget``: its parameter budget, if any)."""
    if budget is not None and (params is None or params > budget):
        return False
    if not config.has_latency():
        return True
    if ms is None or speedup is None:
        return False
    return (config.max_latency_ms is None or ms <= config.max_latency_ms) and \
        (config.min_speedup is None or speedup >= config.min_speedup)


def candidate_shapes(space: ArchSpace, scores: Scores, config: NASConfig, limit: int | None = None,
                     met: dict[ArchShape, str] | None = None) -> Iterator[tuple[str, ArchShape]]:
    """The uniform widths (every block kept) first, then distinct random draws: ``limit`` shapes at most
    (default ``n_candidates``), fewer if ``50 * n_candidates`` draws find no more distinct ones. ``met``, filled
    by the caller as it measures each shape (the generator is lazy), focuses the draws: see :func:`focus_levels`."""
    rng = random.Random(config.seed)
    limit = config.n_candidates if limit is None else limit
    first = [("uniform", space.uniform(w)) for w in config.widths if w < 1][:limit]
    yield from first
    levels = focus_levels(space, config.widths, met) if met is not None else None
    if levels:
        log.info("NAS: random draws centred on width levels %s, where the uniform shapes cross the constraints",
                 "/".join(f"{w:g}" for w in levels))
    seen, n = {s for _, s in first} | {space.full()}, len(first)
    for _ in range(50 * config.n_candidates):
        if n >= limit:
            return
        s = space.sample(rng, scores.block_order, levels)
        if s not in seen:
            seen.add(s)
            n += 1
            yield "sampled", s


def focus_levels(space: ArchSpace, widths: tuple[float, ...], met: dict[ArchShape, str]) -> list[float] | None:
    """Where random draws are worth spending under a constraint, from how each uniform shape fared (``met``:
    "ok", "over" (too large or too slow) or "under" (below ``min_param_use`` of the budget)): the widest width
    level whose uniform shape met it and the level above (a shape mixing the two can come closer to the
    constraint than either); when none met it, the two levels around the step from "under" to "over" (the two
    narrowest if none was under). None (all levels) when the uniform shapes were not all measured, or all met it
    (no constraint binds)."""
    ws = sorted(widths)
    seen = [met.get(space.uniform(w)) if w < 1 else "over" for w in ws]
    if any(m is None for m in seen) or all(m == "ok" for m in seen[:-1]):
        return None
    ok = [i for i, m in enumerate(seen) if m == "ok"]
    if ok:
        return ws[max(ok):max(ok) + 2]
    under = [i for i, m in enumerate(seen) if m == "under"]
    low = max(under) if under else 0
    return ws[low:low + 2]


@dataclass
class Drawn:
    """What the candidate stage found: the trials, the full model's median ms (None: nothing timed) and, with a
    parameter budget, the shapes built in all and those rejected over it or below ``min_param_use`` of it."""

    trials: list[Trial]
    base_ms: float | None
    budget: int | None = None
    n_drawn: int = 0
    n_over_budget: int = 0
    n_under_use: int = 0


def measure_candidates(model: nn.Module, task: Any, space: ArchSpace, scores: Scores, config: NASConfig) -> Drawn:
    """Build, time (interleaved with the full model, with a latency constraint) and proxy-score every candidate
    shape; with a parameter budget, shapes outside it are rejected once built (module docstring)."""
    from torchslim.search.latency import end_to_end

    budget = config.param_budget(n_params(model))
    floor = config.min_param_use * budget if budget is not None else 0
    ref = proxy_reference(model, task, config.n_proxy_samples)
    met: dict[ArchShape, str] = {}
    shapes = candidate_shapes(space, scores, config, None if budget is None else 50 * config.n_candidates,
                              met if budget is not None or config.has_latency() else None)
    drawn = Drawn([], None, budget)
    base_ms: list[float] = []
    with Progress("NAS: building and scoring candidates", total=config.n_candidates) as bar:
        for origin, shape in shapes:
            if len(drawn.trials) >= config.n_candidates:
                break
            cand = quiet_build(model, space, shape, scores)
            params = n_params(cand)
            drawn.n_drawn += 1
            if budget is not None and (params > budget or params < floor):
                met[shape] = "over" if params > budget else "under"
                drawn.n_over_budget += params > budget
                drawn.n_under_use += params < floor
                continue
            ms: dict[str, float] = {}
            if config.has_latency():
                ms = end_to_end({"full": model, "cand": cand}, task, config.shape, config.latency_iters)
                base_ms.append(ms["full"])
            speedup = ms["full"] / ms["cand"] if ms else None
            trials = drawn.trials
            trials.append(Trial(len(trials), origin, shape, params, ms.get("cand"), speedup,
                                feasible(config, ms.get("cand"), speedup, params, budget),
                                output_proxy(cand, task, ref)))
            met[shape] = "ok" if trials[-1].feasible else "over"
            timing = f"{ms['cand']:.2f} ms, {speedup:.2f}x, " if ms else ""
            bar.update(note=f"{timing}{params / 1e6:.1f}M params, proxy {trials[-1].proxy:.4g}")
    if base_ms:
        drawn.base_ms = sorted(base_ms)[len(base_ms) // 2]
    if budget is not None:
        log.info("NAS: %d of %d shapes built met the parameter budget (%d over it, %d below %.0f%% of it)",
                 drawn.n_drawn - drawn.n_over_budget - drawn.n_under_use, drawn.n_drawn, drawn.n_over_budget,
                 drawn.n_under_use, 100 * config.min_param_use)
    return drawn


def recover(candidate: nn.Module, teacher: nn.Module, task: Any, config: DistillConfig | ReconstructConfig,
            blocks: tuple[int, ...] | None = None) -> nn.Module:
    """Distillation (or block-wise reconstruction) from the full model with ``config``'s fixed budget (the same for
    every candidate). ``blocks``: the full model's blocks the candidate kept; block-wise reconstruction then
    trains each kept block on the teacher's output just before the next kept one (:func:`teacher_targets`)."""
    from torchslim.core.registry import apply_

    if isinstance(config, ReconstructConfig) and blocks and config.teacher_blocks is None:
        n = len(find_blocks(teacher))
        if tuple(blocks) != tuple(range(n)):
            config = dataclasses.replace(config, teacher_blocks=teacher_targets(blocks, n))
    with muted():
        apply_(candidate, config, family="distillation", record=False, task=task, teacher=teacher)
    return candidate.eval()


def teacher_targets(blocks: tuple[int, ...], n_teacher: int) -> tuple[int, ...]:
    """For a candidate that kept the full model's ``blocks`` (sorted), the teacher block whose output each kept
    block learns: the one just before the next kept block (so a kept block also learns the blocks dropped after
    it), the teacher's last for the last kept block."""
    return tuple(b - 1 for b in blocks[1:]) + (n_teacher - 1,)


def quality(model: nn.Module, task: Any) -> float:
    return float(task.evaluate(model)[task.metric])


def to_recover(trials: list[Trial], config: NASConfig) -> list[Trial]:
    """The ``n_recover`` feasible trials best by proxy, then ``n_validate`` other feasible ones at random."""
    ok = sorted((t for t in trials if t.feasible), key=lambda t: t.proxy)
    top, rest = ok[: config.n_recover], ok[config.n_recover:]
    random.Random(config.seed + 1).shuffle(rest)
    return top + rest[: config.n_validate]


def nas(model: nn.Module, task: Any, config: NASConfig | None = None, *, teacher: nn.Module | None = None
        ) -> NASResult:
    """Search ``model``'s sub-networks for the best one within ``config``'s constraints (module docstring).
    ``model`` is left unchanged and is the distillation teacher unless ``teacher`` is given. No candidate within
    a parameter budget (too tight for the space) is a :class:`ConfigError`."""
    from torchslim.search.latency import machine_facts
    from torchslim.tasks.embedding import _spearman

    config = config or NASConfig(min_speedup=2.0)
    if task is None or not hasattr(task, "example_inputs") or not hasattr(task, "evaluate"):
        raise ConfigError("nas needs a task (example inputs to time, calibration batches, a metric): pass task=<task>")
    model.eval()
    space, scores = space_of(model, task, widths=config.widths, min_depth=config.min_depth, heads=config.heads,
                             neurons=config.neurons, selector=config.selector, round_to=config.round_to,
                             n_samples=config.n_importance_samples, importance=config.importance)
    drawn = measure_candidates(model, task, space, scores, config)
    trials = drawn.trials
    if drawn.budget is not None and not trials:
        raise ConfigError(f"NAS: none of the {drawn.n_drawn} shapes built met the parameter budget of "
                          f"{drawn.budget} ({drawn.n_over_budget} over it, {drawn.n_under_use} below "
                          f"min_param_use {config.min_param_use:g} of it); the smallest shape of the space may be "
                          "larger: allow lower widths or min_depth, or raise the budget")
    chosen = to_recover(trials, config) if config.recover is not None else []
    kept: dict[int, nn.Module] = {}                  # only the best recovered model so far (memory)
    sign = 1.0 if task.higher_is_better else -1.0
    with Progress("NAS: recovering candidates", total=len(chosen)) as bar:
        for t in chosen:
            m = recover(quiet_build(model, space, t.shape, scores), teacher or model, task, config.recover,
                        t.shape.blocks or None)
            t.quality = quality(m, task)
            if not kept or sign * t.quality > sign * next(c.quality for c in chosen if c.number in kept):
                kept = {t.number: m}                 # ties keep the first, as _pick does
            bar.update(note=f"{task.metric} {t.quality:.4g}")
    best = _pick(trials, chosen, task)
    if best is not None and chosen and config.has_latency():
        best = confirm_pick(model, task, space, scores, config, chosen, drawn.budget)
    rho = None
    if len(chosen) >= 3:                                   # a low proxy should mean good quality
        rho = _spearman(torch.tensor([-sign * t.proxy for t in chosen]), torch.tensor([t.quality for t in chosen]))
    out = kept.get(best.number) if best else None
    if best is not None and out is None:     # no recovery; or a confirmed runner-up, recovered again (same seed)
        out = quiet_build(model, space, best.shape, scores)
        if best.quality is not None:
            out = recover(out, teacher or model, task, config.recover, best.shape.blocks or None)
    return NASResult(out, best.shape if best else None, best, trials, task.metric, task.higher_is_better,
                     n_params(model), quality(model, task) if chosen else None, drawn.base_ms, rho, config,
                     machine_facts(), drawn.budget, drawn.n_drawn, drawn.n_over_budget, drawn.n_under_use)


def confirm_pick(model: nn.Module, task: Any, space: ArchSpace, scores: Scores, config: NASConfig,
                 recovered: list[Trial], budget: int | None) -> Trial | None:
    """The best recovered trial that meets the latency constraints again in a second interleaved timing: a shape
    near a latency cliff can pass once by the noise of a shared machine. Trials are re-timed best first until one
    passes; each re-timed trial records ``confirmed_speedup``."""
    from torchslim.search.latency import end_to_end

    sign = 1.0 if task.higher_is_better else -1.0
    for t in sorted(recovered, key=lambda t: -sign * t.quality):
        ms = end_to_end({"full": model, "cand": quiet_build(model, space, t.shape, scores)}, task, config.shape,
                        config.latency_iters)
        t.confirmed_speedup = ms["full"] / ms["cand"]
        if feasible(config, ms["cand"], t.confirmed_speedup, t.params, budget):
            return t
        log.warning("NAS: trial %d (%s %.4g) met the latency constraint at %.2fx, not in a second timing "
                    "(%.3g ms, %.2fx): the next best is checked", t.number, task.metric, t.quality, t.speedup,
                    ms["cand"], t.confirmed_speedup)
    log.warning("NAS: no recovered candidate met the latency constraint in a second timing")
    return None


def _pick(trials: list[Trial], recovered: list[Trial], task: Any) -> Trial | None:
    """The best recovered trial by the task metric, else (no recovery) the feasible one with the lowest proxy."""
    if recovered:
        sign = 1.0 if task.higher_is_better else -1.0
        return max(recovered, key=lambda t: sign * t.quality)
    ok = [t for t in trials if t.feasible]
    if not ok:
        timed = [t for t in trials if t.latency_ms is not None]
        if timed:
            log.warning("NAS: no candidate met the latency constraint (fastest measured %.3g ms, %.2fx)",
                        min(t.latency_ms for t in timed), max(t.speedup for t in timed))
        return None
    return min(ok, key=lambda t: t.proxy)
