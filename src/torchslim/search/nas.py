"""Hardware-aware search for a compact sub-network of a given model: ``torchslim.search.nas(model, task, NASConfig())``.

1. The space (:mod:`torchslim.search.arch_space`): which blocks to keep and heads/neurons per block for a
   transformer, kept channels per coupled group for a convnet. Importance is measured once on the full model.
2. ``n_candidates`` shapes (the uniform widths first, then random draws) are each built by structured pruning of
   a copy, timed end to end at ``shape`` interleaved with the full model on this machine (medians), and scored by
   a zero-cost proxy: the divergence of their outputs from the full model's on calibration batches right after
   pruning (KL of logits, or relative squared error of hidden states), lower is better.
3. Among the candidates meeting the latency constraint (``max_latency_ms`` and/or ``min_speedup``), the
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
from typing import Any

import torch
from torch import nn

from torchslim.core.config import BaseConfig, between
from torchslim.core.errors import ConfigError
from torchslim.core.progress import Progress, muted
from torchslim.core.select import Selector
from torchslim.distill.config import DistillConfig
from torchslim.pruning.importance import Importance
from torchslim.search.arch_space import ArchShape, ArchSpace, Scores, build, space_of
from torchslim.train.config import TrainConfig

log = logging.getLogger("torchslim.search")


def default_recovery() -> DistillConfig:
    return DistillConfig(output_weight=1.0, train=TrainConfig(steps=50, batch_size=16, lr=1e-4, warmup_steps=5,
                                                              max_grad_norm=1.0, eval_at_end=False, progress=False))


@dataclass
class NASConfig(BaseConfig):
    """What to search and under which constraint (see the module docstring). ``shape``: ``(batch, seq_len)`` the
    latency is measured at (``seq_len`` ignored by image tasks). ``widths``: fractions a searched unit may keep;
    ``min_depth``: fewest blocks kept, as a fraction (1: depth not searched). ``recover=None``: no recovery, the
    proxy alone picks."""

    family = "search"
    max_latency_ms: float | None = None
    min_speedup: float | None = None
    shape: tuple[int, int | None] = (1, 128)
    widths: tuple[float, ...] = (0.25, 0.5, 0.75, 1.0)
    min_depth: float = between(0.5, 0.0, 1.0)
    heads: bool = True
    neurons: bool = True
    n_candidates: int = between(24, 1, 100000)
    n_recover: int = between(4, 0, 100000)
    n_validate: int = between(0, 0, 100000)
    recover: DistillConfig | None = field(default_factory=default_recovery)
    n_proxy_samples: int = between(32, 1, 1 << 16)
    n_importance_samples: int = between(64, 1, 1 << 16)
    importance: Importance | None = None      # None: taylor with a task that has a loss, else magnitude_l2
    round_to: int = between(1, 1, 4096)
    latency_iters: int = between(15, 1, 10000)
    seed: int = between(0, 0, 2**63 - 1)
    selector: Selector | None = None

    def validate(self) -> None:
        if self.max_latency_ms is None and self.min_speedup is None:
            raise ConfigError("NASConfig: give a latency constraint: max_latency_ms=... and/or min_speedup=...")
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


@dataclass
class Trial:
    """One candidate: its shape, parameters, measured latency (median, ms) and speed-up over the full model in the
    same interleaved run, proxy (lower is better) and, if recovered, its task metric."""

    number: int
    origin: str
    shape: ArchShape
    params: int
    latency_ms: float
    speedup: float
    feasible: bool
    proxy: float
    quality: float | None = None

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["shape"], d["label"] = self.shape.to_dict(), self.shape.label()
        return d


@dataclass
class NASResult:
    """The chosen sub-network (a plain pruned, recovered model), its shape and trial, every trial, the full
    model's figures and the proxy's rank correlation with recovered quality."""

    model: nn.Module | None
    shape: ArchShape | None
    best: Trial | None
    trials: list[Trial]
    metric: str
    higher_is_better: bool
    base_params: int
    base_quality: float | None
    base_ms: float
    proxy_spearman: float | None
    config: NASConfig
    machine: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"metric": self.metric, "higher_is_better": self.higher_is_better, "base_params": self.base_params,
                "base_quality": self.base_quality, "base_ms": self.base_ms, "proxy_spearman": self.proxy_spearman,
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


def feasible(config: NASConfig, ms: float, speedup: float) -> bool:
    return (config.max_latency_ms is None or ms <= config.max_latency_ms) and \
        (config.min_speedup is None or speedup >= config.min_speedup)


def candidate_shapes(space: ArchSpace, scores: Scores, config: NASConfig) -> list[tuple[str, ArchShape]]:
    """The uniform widths (every block kept) first, then distinct random draws, ``n_candidates`` in all."""
    rng = random.Random(config.seed)
    out = [("uniform", space.uniform(w)) for w in config.widths if w < 1][: config.n_candidates]
    seen = {s for _, s in out} | {space.full()}
    for _ in range(50 * config.n_candidates):
        if len(out) >= config.n_candidates:
            break
        s = space.sample(rng, scores.block_order)
        if s not in seen:
            seen.add(s)
            out.append(("sampled", s))
    return out


def measure_candidates(model: nn.Module, task: Any, space: ArchSpace, scores: Scores, config: NASConfig
                       ) -> tuple[list[Trial], float]:
    """Build, time (interleaved with the full model) and proxy-score every candidate shape."""
    from torchslim.search.latency import end_to_end

    ref = proxy_reference(model, task, config.n_proxy_samples)
    shapes = candidate_shapes(space, scores, config)
    trials, base_ms = [], []
    with Progress("NAS: building and timing candidates", total=len(shapes)) as bar:
        for number, (origin, shape) in enumerate(shapes):
            cand = quiet_build(model, space, shape, scores)
            ms = end_to_end({"full": model, "cand": cand}, task, config.shape, config.latency_iters)
            base_ms.append(ms["full"])
            speedup = ms["full"] / ms["cand"]
            trials.append(Trial(number, origin, shape, n_params(cand), ms["cand"], speedup,
                                feasible(config, ms["cand"], speedup), output_proxy(cand, task, ref)))
            bar.update(note=f"{ms['cand']:.2f} ms, {speedup:.2f}x, proxy {trials[-1].proxy:.4g}")
    return trials, sorted(base_ms)[len(base_ms) // 2]


def recover(candidate: nn.Module, teacher: nn.Module, task: Any, config: DistillConfig) -> nn.Module:
    """Distillation from the full model with ``config``'s fixed budget (the same for every candidate)."""
    from torchslim.core.registry import apply_

    with muted():
        apply_(candidate, config, family="distillation", record=False, task=task, teacher=teacher)
    return candidate.eval()


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
    """Search ``model``'s sub-networks for the best one within ``config``'s latency constraint (module docstring).
    ``model`` is left unchanged and is the distillation teacher unless ``teacher`` is given."""
    from torchslim.search.latency import machine_facts
    from torchslim.tasks.embedding import _spearman

    config = config or NASConfig(min_speedup=2.0)
    if task is None or not hasattr(task, "example_inputs") or not hasattr(task, "evaluate"):
        raise ConfigError("nas needs a task (example inputs to time, calibration batches, a metric): pass task=<task>")
    model.eval()
    space, scores = space_of(model, task, widths=config.widths, min_depth=config.min_depth, heads=config.heads,
                             neurons=config.neurons, selector=config.selector, round_to=config.round_to,
                             n_samples=config.n_importance_samples, importance=config.importance)
    trials, base_ms = measure_candidates(model, task, space, scores, config)
    chosen = to_recover(trials, config) if config.recover is not None else []
    kept: dict[int, nn.Module] = {}                  # only the best recovered model so far (memory)
    sign = 1.0 if task.higher_is_better else -1.0
    with Progress("NAS: recovering candidates", total=len(chosen)) as bar:
        for t in chosen:
            m = recover(quiet_build(model, space, t.shape, scores), teacher or model, task, config.recover)
            t.quality = quality(m, task)
            if not kept or sign * t.quality > sign * next(c.quality for c in chosen if c.number in kept):
                kept = {t.number: m}                 # ties keep the first, as _pick does
            bar.update(note=f"{task.metric} {t.quality:.4g}")
    best = _pick(trials, chosen, task)
    rho = None
    if len(chosen) >= 3:                                   # a low proxy should mean good quality
        rho = _spearman(torch.tensor([-sign * t.proxy for t in chosen]), torch.tensor([t.quality for t in chosen]))
    out = kept.get(best.number) if best else None
    if best is not None and out is None:
        out = quiet_build(model, space, best.shape, scores)
    return NASResult(out, best.shape if best else None, best, trials, task.metric, task.higher_is_better,
                     n_params(model), quality(model, task) if chosen else None, base_ms, rho, config,
                     machine_facts())


def _pick(trials: list[Trial], recovered: list[Trial], task: Any) -> Trial | None:
    """The best recovered trial by the task metric, else (no recovery) the feasible one with the lowest proxy."""
    if recovered:
        sign = 1.0 if task.higher_is_better else -1.0
        return max(recovered, key=lambda t: sign * t.quality)
    ok = [t for t in trials if t.feasible]
    if not ok:
        log.warning("NAS: no candidate met the latency constraint (fastest measured %.3g ms, %.2fx)",
                    min(t.latency_ms for t in trials), max(t.speedup for t in trials))
        return None
    return min(ok, key=lambda t: t.proxy)
