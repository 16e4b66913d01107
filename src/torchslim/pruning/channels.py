"""Structured channel pruning over the dependency graph: score groups, pick channels, slice modules.

:func:`prune_channels_` finds the coupled channel groups (:mod:`torchslim.pruning.depgraph`),
scores each group channel by summing the reduced element scores of every coupled slice
(:func:`group_scores`), keeps the best ones per group (``scope=layer``) or by one ranking of
per-group normalized scores (``scope=global``), and replaces every touched ``nn.Conv2d``,
``nn.Linear``, BatchNorm and LayerNorm by a smaller ordinary module holding the kept slices,
recorded with :func:`torchslim.core.resize.record_resized` so artifacts rebuild it on load.
"""
from __future__ import annotations

import math
from typing import Any, Iterable

import torch
from torch import nn

from torchslim.core import kinds
from torchslim.core.errors import ConfigError, TorchSlimError
from torchslim.core.progress import track
from torchslim.core.resize import record_resized
from torchslim.core.surgery import get_module, replace_module
from torchslim.pruning.config import Scope, StructuredConfig, Target
from torchslim.pruning.depgraph import ChannelGroup, build_groups, eval_mode, example_args
from torchslim.pruning.importance import Importance, reduce_scores, scores
from torchslim.pruning.masks import keep_indices, kept_count, n_pruned
from torchslim.transforms.graph import trace

CHANNEL_IMPORTANCE = (Importance.MAGNITUDE, Importance.MAGNITUDE_L2, Importance.TAYLOR, Importance.RANDOM)

# Parameters scored per member kind: (attribute, dim along which the member's positions run).
_SCORED = {
    "out": (("weight", 0), ("bias", 0)),
    "dw": (("weight", 0), ("bias", 0)),
    "in": (("weight", 1),),
    "bn": (("weight", 0), ("bias", 0)),
    "ln": (("weight", 0), ("bias", 0)),
}


def group_scores(model: nn.Module, group: ChannelGroup, importance: Importance,
                 grads: dict[str, torch.Tensor] | None = None,
                 generator: torch.Generator | None = None) -> torch.Tensor:
    """One score per group channel: the sum over coupled slices of their reduced element scores.

    ``grads`` maps parameter names to accumulated gradients (Taylor, see :func:`accumulate_grads`).
    """
    if importance not in CHANNEL_IMPORTANCE:
        raise ConfigError(f"channel pruning supports {', '.join(i.value for i in CHANNEL_IMPORTANCE)} "
                          f"importance, not {importance.value}")
    if importance is Importance.TAYLOR and grads is None:
        raise ConfigError("Taylor channel importance needs gradients: pass grads=accumulate_grads(model, task)")
    total = torch.zeros(group.size)
    for member in group.members:
        module = get_module(model, member.module)
        for attr, dim in _SCORED[member.kind]:
            w = getattr(module, attr, None)
            if not isinstance(w, torch.Tensor):
                continue
            name = f"{member.module}.{attr}"
            grad = grads.get(name) if grads is not None else None
            if importance is Importance.TAYLOR and grad is None:
                raise ConfigError(f"Taylor importance: no gradient for '{name}' in grads")
            per_pos = reduce_scores(scores(w, importance, grad=grad, generator=generator), dim).cpu()
            total.index_add_(0, member.channels, per_pos[member.positions])
    return total


def accumulate_grads(model: nn.Module, task: Any, batches: Iterable[dict[str, Any]] | None = None, *,
                     n_samples: int = 32, batch_size: int = 8) -> dict[str, torch.Tensor]:
    """``{parameter name: sum of task-loss gradients}`` over ``batches`` (Taylor importance).

    ``batches`` must carry what ``task.loss`` needs (labels too); ``None`` draws ``n_samples``
    training samples from ``task.train_batches``. The model runs in eval mode (BatchNorm
    statistics untouched) and its existing ``.grad`` fields are restored afterwards.
    """
    if batches is None:
        stream = task.train_batches(batch_size, seed=0)
        batches = [next(stream) for _ in range(max(1, math.ceil(n_samples / batch_size)))]
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    saved = {n: p.grad for n, p in params.items()}
    sums = {n: torch.zeros_like(p, dtype=torch.float32) for n, p in params.items()}
    try:
        with eval_mode(model), torch.enable_grad():
            # one backward pass per batch: minutes on a real model, so it shows progress like calibration does
            for batch in track(batches, "gradients (Taylor importance)"):
                for p in params.values():
                    p.grad = None
                try:
                    loss = task.loss(model, batch)
                except KeyError as e:
                    raise ConfigError(f"task.loss needs {e} in every batch: Taylor importance needs labelled "
                                      "batches (batches=None draws training batches)") from None
                loss.backward()
                for n, p in params.items():
                    if p.grad is not None:
                        sums[n] += p.grad.float()
    finally:
        for n, p in params.items():
            p.grad = saved[n]
    return sums


def choose_channels(groups: list[ChannelGroup], group_score: list[torch.Tensor | None],
                    config: StructuredConfig) -> list[torch.Tensor | None]:
    """Sorted kept channel indices per group (``None``: the group is not prunable, all kept)."""
    live = [i for i, s in enumerate(group_score) if s is not None]
    counts: dict[int, int] = {}
    if config.scope is Scope.GLOBAL and live:
        norm = [group_score[i] / group_score[i].mean().clamp_min(1e-12) for i in live]
        flat = torch.cat(norm)
        k = n_pruned(flat.numel(), config.ratio)
        pruned = torch.zeros(flat.numel(), dtype=torch.bool)
        if k:
            pruned[torch.topk(flat, k, largest=False).indices] = True
        for i, part in zip(live, pruned.split([groups[i].size for i in live])):
            counts[i] = groups[i].size - int(part.sum())
    else:
        counts = {i: groups[i].size - n_pruned(groups[i].size, config.ratio) for i in live}
    keeps: list[torch.Tensor | None] = [None] * len(groups)
    for i in live:
        n_keep = kept_count(groups[i].size, counts[i], config.round_to, config.min_keep)
        keeps[i] = keep_indices(group_score[i], n_keep)
    return keeps


def prune_channels_(model: nn.Module, config: StructuredConfig, example_inputs: dict[str, Any],
                    grads: dict[str, torch.Tensor] | None = None) -> dict[str, Any]:
    """Remove channels from ``model`` in place, leaving smaller ordinary modules; returns a summary.

    ``example_inputs``: keyword inputs of one forward (batch >= 2 is safest), used to trace
    shapes. A group is prunable only if the selector picks all its producers (``out``/``dw``).
    """
    if Target.CHANNELS not in config.targets:
        raise ConfigError("prune_channels_ needs StructuredConfig(targets=['channels'])")
    graph = trace(model, "channel pruning")
    args = example_args(graph, example_inputs)
    groups = build_groups(model, graph, args)
    selectable = [all(config.selector.matches(n, get_module(model, n)) for n in g.producers) for g in groups]
    if groups and not any(selectable):
        raise ConfigError("channel pruning: the selector picks no producer of any prunable channel group")
    generator = torch.Generator().manual_seed(0)
    importance = config.importance or Importance.MAGNITUDE_L2      # unresolved default: no task here
    group_score = [group_scores(model, g, importance, grads, generator) if ok else None
                   for g, ok in zip(groups, selectable)]
    keeps = choose_channels(groups, group_score, config)
    before = count_params(model)
    slice_groups_(model, groups, keeps)
    _check_forward(model, args)
    return {"params_before": before, "params_after": count_params(model),
            "groups": [{"producers": list(g.producers), "size": g.size,
                        "kept": g.size if k is None else int(k.numel()), "prunable": k is not None}
                       for g, k in zip(groups, keeps)]}


def slice_groups_(model: nn.Module, groups: list[ChannelGroup], keeps: list[torch.Tensor | None]) -> None:
    """Replace every module the kept channels ``keeps`` (per group; ``None`` keeps all) touch by its smaller
    copy, recorded so artifacts rebuild it on load."""
    for name, removed in removals(groups, keeps).items():
        replace_module(model, name, shrink_module(get_module(model, name), removed))
        record_resized(model, name)


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def removals(groups: list[ChannelGroup], keeps: list[torch.Tensor | None]) -> dict[str, dict[str, torch.Tensor]]:
    """``{module: {kind: removed positions}}`` gathered over all groups."""
    found: dict[str, dict[str, list[torch.Tensor]]] = {}
    for group, keep in zip(groups, keeps):
        if keep is None or keep.numel() == group.size:
            continue
        drop = torch.ones(group.size, dtype=torch.bool)
        drop[keep] = False
        for m in group.members:
            pos = m.positions[drop[m.channels]]
            if pos.numel():
                found.setdefault(m.module, {}).setdefault(m.kind, []).append(pos)
    return {name: {kind: torch.cat(parts) for kind, parts in kinds.items()} for name, kinds in found.items()}


def shrink_module(module: nn.Module, removed: dict[str, torch.Tensor]) -> nn.Module:
    """A new module of the same kind without the ``removed`` positions (per member kind), from the
    module-kind table: producers' ``out``/``dw`` and norms' ``bn``/``ln`` positions are its output axis."""
    sizes = kinds.axis_sizes(module)
    out = next((removed[k] for k in ("out", "dw", "bn", "ln") if k in removed), None)
    keep = {axis: _kept(sizes[axis], r) for axis, r in (("out", out), ("in", removed.get("in")))
            if r is not None and axis in sizes}
    return kinds.slice_module(module, keep)


def _kept(n: int, removed: torch.Tensor) -> torch.Tensor:
    keep = torch.ones(n, dtype=torch.bool)
    keep[removed] = False
    return keep.nonzero().flatten()


def _check_forward(model: nn.Module, args: list[Any]) -> None:
    """Run the pruned model once: a failure here is a bug in the graph, reported rather than left silent."""
    try:
        with eval_mode(model), torch.no_grad():
            model(*args)
    except Exception as e:  # noqa: BLE001
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise TorchSlimError(f"channel pruning left a model that does not run ({first[:160]}); please report it") from None
