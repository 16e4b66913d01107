"""The search space of compact sub-networks of one model, and building a candidate by structured pruning.

A transformer's space (blocks from the architecture tables) is which blocks to keep (depth) and, per kept block,
how many attention heads (GQA-aware: counts that whole key/value groups allow) and MLP neurons stay. A convolutional
network's space (no transformer blocks) is the kept channels of every coupled channel group of the dependency graph
(:mod:`torchslim.pruning.depgraph`); its depth is not searched. Bits per layer are not part of the space.

Importance is measured once on the full model (:class:`Scores`: Taylor ``|w * dL/dw|`` from the task loss where the
task has one, as the shipped recipes do, else L2 magnitude; the Block Influence of each block for depth), and every
candidate is a pruned deep copy built from those scores, so two candidates differ only by their shape.
"""
from __future__ import annotations

import copy
import math
import random
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from torchslim.core.archs import arch_of, find_blocks
from torchslim.core.errors import ConfigError
from torchslim.core.select import Selector
from torchslim.pruning.config import StructuredConfig, Target
from torchslim.pruning.importance import Importance
from torchslim.pruning.masks import keep_indices, kept_count


@dataclass(frozen=True)
class ArchShape:
    """One sub-network: ``blocks`` kept (indices into the full model's blocks), ``heads`` and ``neurons`` kept per
    block of the full model (entries of dropped blocks unused), or ``channels`` kept per channel group."""

    blocks: tuple[int, ...] = ()
    heads: tuple[int, ...] = ()
    neurons: tuple[int, ...] = ()
    channels: tuple[int, ...] = ()

    def label(self) -> str:
        if self.channels:
            return "channels " + "/".join(map(str, self.channels))
        return (f"blocks {','.join(map(str, self.blocks))}; heads " + "/".join(str(self.heads[i]) for i in self.blocks)
                + "; mlp " + "/".join(str(self.neurons[i]) for i in self.blocks))

    def to_dict(self) -> dict[str, Any]:
        d = {"blocks": list(self.blocks), "heads": list(self.heads), "neurons": list(self.neurons)}
        return {"channels": list(self.channels)} if self.channels else d


@dataclass
class ArchSpace:
    """The choices: full sizes per block (or per channel group), which of them are searched, and the width
    fractions a searched unit may keep (mapped to valid counts)."""

    kind: str                                   # "transformer" or "channels"
    widths: tuple[float, ...]
    heads: tuple[int, ...] = ()                 # per block, full model
    kv_heads: tuple[int, ...] = ()
    neurons: tuple[int, ...] = ()
    searched: tuple[int, ...] = ()              # blocks (or channel groups) whose width is searched
    min_blocks: int = 0                         # 0: depth not searched
    groups: tuple[int, ...] = ()                # channel group sizes
    round_to: int = 1
    search_heads: bool = True
    search_neurons: bool = True

    @property
    def n_blocks(self) -> int:
        return len(self.heads)

    def head_options(self, i: int) -> list[int]:
        """Query-head counts block ``i`` can keep: whole key/value groups times heads per group."""
        per = self.heads[i] // self.kv_heads[i]
        return sorted({g * q for g in range(1, self.kv_heads[i] + 1) for q in range(1, per + 1)})

    def _heads(self, i: int, f: float) -> int:
        if not self.search_heads or i not in self.searched:
            return self.heads[i]
        return min(self.head_options(i), key=lambda k: (abs(k - f * self.heads[i]), -k))

    def _count(self, size: int, f: float) -> int:
        return kept_count(size, int(round(size * f)), self.round_to, 1)

    def _neurons(self, i: int, f: float) -> int:
        return self._count(self.neurons[i], f) if self.search_neurons and i in self.searched else self.neurons[i]

    def shape(self, blocks: tuple[int, ...] | None, head_f: list[float], mlp_f: list[float]) -> ArchShape:
        """The shape keeping ``blocks`` (None: all) with per-block head and MLP fractions (channel groups for a
        convnet: ``mlp_f`` per group)."""
        if self.kind == "channels":
            return ArchShape(channels=tuple(self._count(s, mlp_f[g]) if g in self.searched else s
                                            for g, s in enumerate(self.groups)))
        keep = tuple(range(self.n_blocks)) if blocks is None else tuple(sorted(blocks))
        return ArchShape(keep, tuple(self._heads(i, head_f[i]) for i in range(self.n_blocks)),
                         tuple(self._neurons(i, mlp_f[i]) for i in range(self.n_blocks)))

    def uniform(self, fraction: float) -> ArchShape:
        """Every searched unit keeps ``fraction`` (uniform structured pruning), every block kept."""
        n = len(self.groups) if self.kind == "channels" else self.n_blocks
        return self.shape(None, [fraction] * n, [fraction] * n)

    def full(self) -> ArchShape:
        return self.uniform(1.0)

    def sample(self, rng: random.Random, order: list[int] | None = None,
               levels: list[float] | None = None) -> ArchShape:
        """A random shape: an overall width level drawn from ``levels`` (default: all of ``widths``), each unit's
        width one step around it, and (depth searched) a number of blocks, chosen with ``order`` (most important
        first) favoured."""
        n = len(self.groups) if self.kind == "channels" else self.n_blocks
        ws = sorted(self.widths)

        def one() -> float:
            j = ws.index(level) + rng.choice((-1, 0, 0, 1))
            return ws[min(max(j, 0), len(ws) - 1)]
        level = rng.choice(sorted(levels) if levels else ws)
        head_f, mlp_f = [one() for _ in range(n)], [one() for _ in range(n)]
        blocks = None
        if self.kind == "transformer" and self.min_blocks:
            k = rng.randint(self.min_blocks, self.n_blocks)
            rank = order or list(range(self.n_blocks))
            weights = [math.exp(-rank.index(i) / max(1, self.n_blocks / 2)) for i in range(self.n_blocks)]
            keys = {i: rng.random() ** (1 / weights[i]) for i in range(self.n_blocks)}   # weighted draw w/o replacement
            blocks = tuple(sorted(sorted(keys, key=keys.get, reverse=True)[:k]))
        return self.shape(blocks, head_f, mlp_f)


@dataclass
class Scores:
    """Importance measured once on the full model: per-parameter gradients (Taylor) or none (magnitude), channel
    groups and their scores (convnets), and blocks by Block Influence, most important first."""

    importance: Importance
    grads: dict[str, torch.Tensor] | None = None
    groups: list = field(default_factory=list)
    group_scores: list = field(default_factory=list)
    block_order: list[int] = field(default_factory=list)


def _score_config(scores: Scores) -> StructuredConfig:
    return StructuredConfig(targets=(Target.HEADS, Target.NEURONS), importance=scores.importance)


def space_of(model: nn.Module, task: Any, *, widths: tuple[float, ...], min_depth: float, heads: bool,
             neurons: bool, selector: Selector | None, round_to: int, n_samples: int,
             importance: Importance | None = None) -> tuple[ArchSpace, Scores]:
    """The space of ``model``'s sub-networks and the importance scores candidates are built from (``importance``
    None: Taylor where the task has a loss, else L2 magnitude)."""
    from torchslim.pruning.structured import gradients

    has_loss = callable(getattr(task, "loss", None)) and hasattr(task, "train_batches")
    imp = importance or (Importance.TAYLOR if has_loss else Importance.MAGNITUDE_L2)
    spec = arch_of(model)
    blocks = find_blocks(model) if spec is not None else []
    if blocks:
        space = _transformer_space(model, spec, blocks, widths, min_depth, heads, neurons, selector, round_to)
        grads = gradients(model, task, n_samples) if imp is Importance.TAYLOR and (heads or neurons) else None
        order = _block_order(model, task, n_samples) if space.min_blocks else list(range(len(blocks)))
        return space, Scores(imp, grads, block_order=order)
    return _channel_space(model, task, widths, selector, round_to, n_samples, imp)


def _transformer_space(model: nn.Module, spec: Any, blocks: list, widths: tuple[float, ...], min_depth: float,
                       heads: bool, neurons: bool, selector: Selector | None, round_to: int) -> ArchSpace:
    from torchslim.pruning.transformer import block_info

    infos = [block_info(model, spec, n, b) for n, b in blocks]
    searched = tuple(i for i, (n, b) in enumerate(blocks) if selector is None or selector.matches(n, b))
    if not searched and (heads or neurons):
        raise ConfigError("NASConfig: the selector matches no transformer block of the model")
    min_blocks = max(1, math.ceil(min_depth * len(blocks))) if min_depth < 1 else 0
    if not (heads or neurons or min_blocks):
        raise ConfigError("NASConfig: nothing to search (heads, neurons and depth all off)")
    if heads:
        spec.check("heads")
    return ArchSpace("transformer", widths, tuple(i.heads for i in infos), tuple(i.kv_heads for i in infos),
                     tuple(i.neurons for i in infos), searched, min_blocks, round_to=round_to,
                     search_heads=heads, search_neurons=neurons)


def _block_order(model: nn.Module, task: Any, n_samples: int) -> list[int]:
    from torchslim.pruning.depth import block_influence

    bi = block_influence(model, task, n_samples)
    return sorted(range(len(bi)), key=lambda i: -bi[i])


def _channel_space(model: nn.Module, task: Any, widths: tuple[float, ...], selector: Selector | None,
                   round_to: int, n_samples: int, imp: Importance) -> tuple[ArchSpace, Scores]:
    from torchslim.core.surgery import get_module
    from torchslim.pruning.channels import accumulate_grads, group_scores
    from torchslim.pruning.depgraph import channel_groups

    try:
        groups = channel_groups(model, task.example_inputs(2))
    except Exception as e:  # noqa: BLE001 - a model the graph cannot trace has no channel space
        raise ConfigError(f"NASConfig: {type(model).__name__} has no transformer blocks and its channel graph "
                          f"could not be built ({str(e).splitlines()[0][:120] if str(e) else type(e).__name__})") from None
    searched = tuple(g for g, grp in enumerate(groups)
                     if selector is None or all(selector.matches(n, get_module(model, n)) for n in grp.producers))
    if not searched:
        raise ConfigError(f"NASConfig: no prunable channel group in {type(model).__name__} matches the search space")
    grads = accumulate_grads(model, task, n_samples=n_samples, batch_size=min(64, n_samples)) \
        if imp is Importance.TAYLOR else None
    gen = torch.Generator().manual_seed(0)
    gs = [group_scores(model, g, imp, grads, gen) for g in groups]
    space = ArchSpace("channels", widths, searched=searched, groups=tuple(g.size for g in groups), round_to=round_to)
    return space, Scores(imp, grads, groups, gs)


def build(model: nn.Module, space: ArchSpace, shape: ArchShape, scores: Scores) -> nn.Module:
    """A pruned deep copy of ``model`` at ``shape`` (the full model is left as it is)."""
    m = copy.deepcopy(model).eval()
    if space.kind == "channels":
        from torchslim.pruning.channels import slice_groups_

        keeps = [None if k >= g.size else keep_indices(s, k)
                 for g, s, k in zip(scores.groups, scores.group_scores, shape.channels)]
        slice_groups_(m, scores.groups, keeps)
        return m
    _prune_widths(m, shape, scores)
    from torchslim.pruning.depth import drop_blocks_
    from torchslim.pruning.structured import record_layer_sizes
    from torchslim.pruning.transformer import block_info

    drop = [i for i in range(space.n_blocks) if i not in set(shape.blocks)]
    if drop:
        drop_blocks_(m, drop)
    spec = arch_of(m)
    record_layer_sizes(m, spec, [block_info(m, spec, n, b) for n, b in find_blocks(m)])
    return m


def _prune_widths(m: nn.Module, shape: ArchShape, scores: Scores) -> None:
    from torchslim.pruning.transformer import (block_info, head_plan, neuron_parts, part_scores, prune_scored_heads_,
                                               slice_parts_)

    spec, cfg = arch_of(m), _score_config(scores)
    for i, (name, b) in enumerate(find_blocks(m)):
        if i not in shape.blocks:
            continue
        info = block_info(m, spec, name, b)
        if shape.neurons[i] < info.neurons:
            parts = neuron_parts(m, spec, info)
            s = part_scores(m, parts, cfg, scores.grads, None)
            slice_parts_(m, parts, keep_indices(s, shape.neurons[i]))
        if shape.heads[i] < info.heads:
            kv, q = head_plan(info, 1 - shape.heads[i] / info.heads, 1)
            prune_scored_heads_(m, spec, info, cfg, scores.grads, None, kv, q)
