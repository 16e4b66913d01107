"""One-shot unstructured and N:M pruning of linear layers (model flow).

Magnitude and random need no data. Wanda and SparseGPT are calibrated through the shared
pipeline (:mod:`torchslim.calibration.pipeline`): block by block for transformers, so each
block is measured on the outputs of the already-pruned blocks before it. Pruned layers become
:class:`~torchslim.pruning.sparse_linear.SparseLinear`, which stores only the kept weights.
"""
from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn

from torchslim.calibration.pipeline import calibration_batches, pick_runner, run_basic
from torchslim.calibration.stats import HessianAccumulator, InputNormStats
from torchslim.core.context import ApplyContext
from torchslim.core.errors import ConfigError
from torchslim.core.linear import canonical_linear_
from torchslim.core.progress import track
from torchslim.core.registry import register_handler
from torchslim.core.surgery import replace_module
from torchslim.pruning import masks as M
from torchslim.pruning.config import Scope, UnstructuredConfig
from torchslim.pruning.importance import Importance, scores
from torchslim.pruning.sparsegpt_math import sparsegpt_prune

log = logging.getLogger("torchslim.pruning")


def _as_linear(module: nn.Module) -> nn.Linear | None:
    """A plain linear view of ``module``: itself, or a SparseLinear's dense equivalent (re-pruning)."""
    if type(module) is nn.Linear:
        return module
    to_linear = getattr(module, "to_linear", None)
    return to_linear() if callable(to_linear) and hasattr(module, "mask") else None


def selected_layers(model: nn.Module, config: UnstructuredConfig) -> dict[str, tuple[nn.Linear, UnstructuredConfig]]:
    """``{name: (linear, per-layer config)}`` for the layers ``config.selector`` picks."""
    out = {}
    for name, module, cfg in config.selector.resolve(model, config):
        module = canonical_linear_(model, name)          # Conv1D, nn.Linear subclasses -> plain nn.Linear
        if isinstance(module, nn.Conv2d):
            continue  # unstructured conv pruning stores densely and gives nothing: skipped by design
        lin = _as_linear(module)
        if lin is None:
            if sum(1 for _ in module.children()):
                continue  # a container matched by a broad rule
            raise ConfigError(f"{type(config).__name__} applies to nn.Linear layers; '{name}' is a {type(module).__name__}")
        if lin is not module:
            replace_module(model, name, lin)
        out[name] = (lin, cfg)
    if not out:
        raise ConfigError("UnstructuredConfig: the selector matched no nn.Linear layer")
    convs = sum(isinstance(m, nn.Conv2d) for m in model.modules())
    if convs:
        log.warning("UnstructuredConfig: %d Conv2d layer(s) left dense (scattered zeros in a convolution have no sparse "
                    "kernel: stored dense, no faster); StructuredConfig(targets=['channels']) removes whole "
                    "convolution channels", convs)
    return out


def mask_from_scores(s: torch.Tensor, cfg: UnstructuredConfig) -> torch.Tensor:
    """Layer-scope keep-mask: N:M, per output row (Wanda), or over the whole matrix."""
    if cfg.nm is not None:
        return M.nm_mask(s, *cfg.nm)
    if cfg.importance is Importance.WANDA:
        return M.row_mask(s, cfg.sparsity)
    return M.layer_mask(s, cfg.sparsity)


def install(model: nn.Module, name: str, lin: nn.Linear, keep: torch.Tensor, cfg: UnstructuredConfig,
            weight: torch.Tensor | None = None) -> None:
    """Replace ``name`` by a SparseLinear holding ``weight`` (default: ``lin``'s) under ``keep``."""
    from torchslim.pruning.sparse_linear import SparseLinear

    if weight is not None:
        with torch.no_grad():
            lin.weight.copy_(weight.to(lin.weight.dtype))
    new = SparseLinear.from_linear(lin, keep.to(lin.weight.device), storage=cfg.storage, kernel=cfg.kernel,
                                   pattern=cfg.pattern, config=cfg)
    replace_module(model, name, new)


def _prune_by_scores(model: nn.Module, layers: dict, config: UnstructuredConfig,
                     norms: dict[str, torch.Tensor] | None = None) -> None:
    gen = torch.Generator().manual_seed(config.seed)
    all_scores = {n: scores(lin.weight, cfg.importance, input_norm=(norms or {}).get(n), generator=gen)
                  for n, (lin, cfg) in layers.items()}
    if config.scope is Scope.GLOBAL and config.nm is None:
        keeps = M.global_masks(all_scores, config.sparsity)
    else:
        keeps = {n: mask_from_scores(s, layers[n][1]) for n, s in all_scores.items()}
    for n, (lin, cfg) in track(list(layers.items()), "pruning"):
        install(model, n, lin, keeps[n], cfg)


def _calibrated(model: nn.Module, layers: dict, config: UnstructuredConfig, calibration: Any) -> None:
    batches, forward = calibration_batches(calibration, config.n_samples)
    targets = {n: lin for n, (lin, _) in layers.items()}
    sparsegpt = config.importance is Importance.SPARSEGPT
    factory = (lambda _n, m: HessianAccumulator(m.in_features)) if sparsegpt else \
        (lambda _n, m: InputNormStats(m.in_features))

    if config.scope is Scope.GLOBAL:   # Wanda with one threshold: every layer's statistics first
        norms: dict[str, torch.Tensor] = {}
        run_basic(model, targets, batches, forward, factory,
                  lambda measured: norms.update({n: st.norm for n, (_, st) in measured.items()}), "Wanda")
        return _prune_by_scores(model, layers, config, norms)

    def solve(measured: dict) -> None:
        for name, (lin, stats) in measured.items():
            cfg = layers[name][1]
            if sparsegpt:
                w, keep = sparsegpt_prune(lin.weight, stats.H, cfg.sparsity, cfg.nm, cfg.block_size, cfg.damp)
                install(model, name, lin, keep, cfg, weight=w)
            else:
                install(model, name, lin, mask_from_scores(scores(lin.weight, cfg.importance, input_norm=stats.norm),
                                                           cfg), cfg)

    runner = pick_runner(config.sequential, propagate_solved=True)
    runner(model, targets, batches, forward, factory, solve, config.importance.value)


@register_handler(UnstructuredConfig, uses=("calibration", "task"))
def _unstructured(model: nn.Module, config: UnstructuredConfig, ctx: ApplyContext) -> nn.Module:
    calibration = ctx.calibration_data
    layers = selected_layers(model, config)
    if config.importance.needs_calibration:
        if calibration is None:
            raise ConfigError(f"{config.importance.value} pruning needs calibration data: pass calibration=<task>")
        _calibrated(model, layers, config, calibration)
    else:
        _prune_by_scores(model, layers, config)
    return model
