"""Low-rank factorization of a model's linear layers (model flow around :mod:`torchslim.lowrank.math`).

Plain SVD needs no data. ASVD and whitening measure the inputs of the selected layers through the shared
calibration pipeline (block by block for transformers, each block on the *original* model's activations, which
is what both methods define and what lets an equivalence transform before them share the pass): mean |x| per
input channel for ASVD, the input Gram matrix (GPTQ's Hessian statistic) for whitening.

Ranks that depend on one layer only (a uniform ratio, an energy share, a fixed rank) are applied as soon as a
layer is measured, so only one block's statistics are held; a ratio shared out *globally* needs every layer's
spectrum first, so those statistics are kept to the end (one ``in x in`` Gram matrix per distinct layer input).
"""
from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn

from torchslim.calibration.pipeline import calibration_batches
from torchslim.calibration.plan import CalibrationPlan, execute, register_planner
from torchslim.calibration.stats import HessianAccumulator
from torchslim.core.context import ApplyContext
from torchslim.core.progress import track
from torchslim.core.registry import register_handler
from torchslim.core.surgery import get_module, replace_module
from torchslim.lowrank import math as LM
from torchslim.lowrank import ranks as R
from torchslim.lowrank.config import Allocation, Budget, LowRankConfig, Method
from torchslim.lowrank.module import LowRankLinear
from torchslim.lowrank.select import bias_of, effective_weight, selected_layers
from torchslim.lowrank.speed import measure_shape

log = logging.getLogger("torchslim.lowrank")


class InputStats:
    """What the factorizations need of a layer's inputs: rows seen, mean |x| per channel (ASVD), the Gram
    matrix (whitening, as :class:`HessianAccumulator`: any positive multiple of ``X^T X`` whitens alike)."""

    def __init__(self, in_features: int, gram: bool, absmean: bool) -> None:
        self.rows = 0
        self.hessian = HessianAccumulator(in_features) if gram else None
        self.abs_sum = torch.zeros(in_features, dtype=torch.float64) if absmean else None

    def add_batch(self, x: torch.Tensor) -> None:
        x = x.detach().reshape(-1, x.shape[-1]).float()
        self.rows += x.shape[0]
        if self.hessian is not None:
            if self.hessian.H.device != x.device:
                self.hessian.H = self.hessian.H.to(x.device)
            self.hessian.add_batch(x)
        if self.abs_sum is not None:
            self.abs_sum = self.abs_sum.to(x.device)
            self.abs_sum += x.abs().sum(0, dtype=torch.float64)

    @property
    def absmean(self) -> torch.Tensor:
        return (self.abs_sum / max(self.rows, 1)).float()


def _transform(cfg: LowRankConfig, stats: InputStats | None) -> LM.InputTransform:
    if cfg.method is Method.ASVD:
        return LM.activation_scaling(stats.absmean, cfg.alpha)
    if cfg.method is Method.WHITEN:
        return LM.whitening(stats.hessian.H, cfg.damp)
    return LM.identity()


def _is_global(cfg: LowRankConfig) -> bool:
    return cfg.share is not None and cfg.allocation is Allocation.GLOBAL


class Factorizer:
    """One ``factorize_`` call: replaces layers as their ranks become known and keeps the account."""

    def __init__(self, model: nn.Module, layers: dict[str, tuple[nn.Module, LowRankConfig]]) -> None:
        self.model, self.configs = model, {n: c for n, (_, c) in layers.items()}
        self.uniform = self._uniform_ranks({n: effective_weight(m).shape for n, (m, _) in layers.items()})
        self.waiting: dict[str, InputStats | None] = {}     # global-allocation layers, until every one is measured
        self.done: dict[str, dict[str, Any]] = {}            # name -> what happened
        self._last: tuple[Any, tuple, LM.InputTransform] | None = None

    def _transform(self, name: str, stats: InputStats | None) -> LM.InputTransform:
        """The layer's input transform; layers fed the same input (q/k/v) share one (a Cholesky factor each)."""
        cfg = self.configs[name]
        key = (cfg.method, cfg.alpha, cfg.damp)
        last = self._last       # holds ``stats`` itself, so its id cannot be reused while cached
        if stats is None or last is None or last[0] is not stats or last[1] != key:
            self._last = (stats, key, _transform(cfg, stats))
        return self._last[2]

    def layer(self, name: str, stats: InputStats | None) -> None:
        """A layer measured (or needing no data): factorized now, or kept for the global allocation."""
        cfg = self.configs[name]
        if _is_global(cfg):
            self.waiting[name] = stats
            return
        w = effective_weight(get_module(self.model, name))
        t = self._transform(name, stats)
        shape = (w.shape[0], w.shape[1])
        if cfg.rank is not None:
            rank = min(cfg.rank, min(shape))
            rank = rank if rank <= R.max_useful_rank(*shape) else None
        elif cfg.energy is not None:
            rank = R.round_rank(R.rank_for_energy(LM.spectrum(w, t), cfg.energy), shape, cfg.rank_multiple, up=True)
        else:
            rank = self.uniform[name]
        self._replace(name, w, t, rank, cfg)

    def _uniform_ranks(self, shapes: dict[str, torch.Size]) -> R.Ranks:
        """Uniform ratios are shared out over all their layers at once (shapes are known before any data), so the
        rounding to ``rank_multiple`` is evened out across layers rather than lost in each."""
        groups: dict[tuple, dict[str, R.Shape]] = {}
        for n, c in self.configs.items():
            if c.share is not None and not _is_global(c):
                groups.setdefault((c.share, c.rank_multiple), {})[n] = (shapes[n][0], shapes[n][1])
        out: R.Ranks = {}
        for (ratio, multiple), group in groups.items():
            out.update(R.uniform_ranks(group, ratio, multiple))
        return out

    def finish(self) -> None:
        """Share out the global budgets (one per distinct ratio, budget and multiple) and replace those layers."""
        groups: dict[tuple, list[str]] = {}
        for n in self.waiting:
            c = self.configs[n]
            groups.setdefault((c.share, c.budget, c.rank_multiple), []).append(n)
        for (ratio, budget, multiple), names in groups.items():
            weights = {n: effective_weight(get_module(self.model, n)) for n in names}
            shapes = {n: (w.shape[0], w.shape[1]) for n, w in weights.items()}
            spectra = {n: LM.spectrum(weights[n], self._transform(n, self.waiting[n])) for n in track(names, "spectra")}
            rows = {n: float(self.waiting[n].rows) if budget is Budget.FLOPS else 1.0 for n in names}
            ranks = R.allocate_ranks(spectra, shapes, ratio, multiple, rows)
            for n in track(names, "factorizing"):
                self._replace(n, weights[n], self._transform(n, self.waiting[n]), ranks[n], self.configs[n])
        self.waiting = {}

    def _replace(self, name: str, w: torch.Tensor, t: LM.InputTransform, rank: int | None,
                 cfg: LowRankConfig) -> None:
        dense = w.shape[0] * w.shape[1]
        if rank is None:
            self.done[name] = {"rank": None, "params": dense, "dense_params": dense, "reason": "not smaller"}
            return
        old = get_module(self.model, name)
        factors = LM.factorize(w, rank, t)
        speed = measure_shape(w.shape[0], w.shape[1], rank, w.dtype, w.device.type) if cfg.measure_speed else None
        if cfg.only_faster and not speed["faster"]:
            self.done[name] = {"rank": None, "params": dense, "dense_params": dense, "reason": "not faster",
                               "speed": speed}
            return
        new = LowRankLinear.from_factors(factors, bias_of(old), config=cfg, method=cfg.method.value, like=w)
        new.speed = speed
        new.train(old.training)
        replace_module(self.model, name, new)
        self.done[name] = {"rank": rank, "params": new.params, "dense_params": dense,
                           "faster": None if speed is None else speed["faster"]}


@register_planner(LowRankConfig)
def plan_lowrank(model: nn.Module, config: LowRankConfig, ctx: ApplyContext) -> CalibrationPlan | None:
    """What a low-rank config measures (``None`` when it needs no data); its solve hands each measured layer to
    the :class:`Factorizer` the handler attaches (``plan.sink``), or keeps its statistics when planned ahead."""
    return _plan(model, config, ctx, None)


def _plan(model: nn.Module, config: LowRankConfig, ctx: ApplyContext, run: Factorizer | None) -> CalibrationPlan | None:
    layers = selected_layers(model, config)
    targets = {n: m for n, (m, c) in layers.items() if c.needs_data}
    if not targets:
        return None
    methods = {layers[n][1].method for n in targets}
    batches, forward = calibration_batches(ctx.calibration_data, config.n_samples)

    def factory(_name: str, module: nn.Module) -> InputStats:
        return InputStats(effective_weight(module).shape[1], Method.WHITEN in methods, Method.ASVD in methods)

    def solve(measured: dict[str, tuple[nn.Module, InputStats]]) -> None:
        if run is not None:
            for name, (_, stats) in measured.items():
                run.layer(name, stats)

    return CalibrationPlan(config, f"low-rank ({', '.join(sorted(m.value for m in methods))})", targets, factory,
                           solve, batches, forward, (id(ctx.calibration_data), config.n_samples), config.sequential,
                           propagate_solved=False)


@register_handler(LowRankConfig, uses=("calibration", "task"))
def _factorize(model: nn.Module, config: LowRankConfig, ctx: ApplyContext) -> nn.Module:
    layers = selected_layers(model, config)
    run = Factorizer(model, layers)
    plan = _plan(model, config, ctx, run)
    for name in track([n for n, (_, c) in layers.items() if not c.needs_data], "factorizing"):
        run.layer(name, None)
    execute(model, plan, ctx)
    run.finish()
    _report(run, config, ctx)
    return model


def _report(run: Factorizer, config: LowRankConfig, ctx: ApplyContext) -> None:
    """Parameters removed, layers factorized / kept dense, and how many measured faster: in the stage's record,
    and as a warning where factorized layers are smaller but not faster."""
    done = run.done
    made = {n: d for n, d in done.items() if d["rank"] is not None}
    dense = sum(d["dense_params"] for d in done.values())
    removed = dense - sum(d["params"] for d in done.values())
    faster = sum(1 for d in made.values() if d.get("faster"))
    measured = sum(1 for d in made.values() if d.get("faster") is not None)
    kept = {}
    for d in done.values():
        if d["rank"] is None:
            kept[d["reason"]] = kept.get(d["reason"], 0) + 1
    ctx.record.metrics.update({"params_removed": removed, "removed_fraction": removed / dense if dense else 0.0,
                               "layers_factorized": len(made), "layers_faster": faster})
    ctx.record.details.update({"rule": config.rule(), "method": config.method.value, "kept_dense": kept,
                               "ranks": {n: d["rank"] for n, d in done.items()}})
    log.info("LowRankConfig (%s, %s): %d layer(s) factorized, %d parameters removed (%.1f%% of the selected layers)",
             config.method.value, config.rule(), len(made), removed, 100 * removed / max(dense, 1))
    if kept:
        log.warning("LowRankConfig: %s kept dense", ", ".join(f"{c} layer(s) {r}" for r, c in kept.items()))
    if config.share is not None and config.budget is Budget.PARAMS and removed < (config.share - 0.005) * dense:
        log.warning("LowRankConfig: removed %.1f%% of the selected layers' weights, less than the %.0f%% asked",
                    100 * removed / max(dense, 1), 100 * config.share)
    if measured and faster < measured:
        slow = [n for n, d in made.items() if d.get("faster") is False]
        log.warning("LowRankConfig: %d of %d factorized layers are smaller, not faster (measured against dense at "
                    "conversion; e.g. %s)", len(slow), measured, slow[0])
    elif not measured and made:                 # asked for (a scan's trials turn it off): not a problem to warn of
        log.info("LowRankConfig: speed not measured (measure_speed=False): %d layer(s) smaller, speed unknown",
                 len(made))
