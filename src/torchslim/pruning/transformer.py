"""Structured pruning of transformer blocks from the architecture tables: attention heads
(GQA-aware), MLP neurons and whole blocks. The result is ordinary, smaller modules.

Coupled parameters come from :class:`~torchslim.core.archs.ArchSpec` (data, not code): a head
is its rows of q (and k, v) and its columns of o; a neuron is its rows of every MLP input
projection and its column of the MLP output projection. With grouped-query attention, query
heads are pruned by the same count in every key/value group (so each query keeps its key/value
head), and whole key/value groups can go too; the per-layer head counts are recorded.
"""
from __future__ import annotations

import zlib
from dataclasses import dataclass, field

import torch
from torch import nn

from torchslim.core.archs import ArchSpec
from torchslim.core.errors import ConfigError
from torchslim.core.resize import record_attribute
from torchslim.pruning.config import Scope, StructuredConfig
from torchslim.pruning.importance import Importance, scores
from torchslim.pruning.masks import keep_indices, kept_count
from torchslim.pruning.surgery import slice_linear_, unit_rows


@dataclass
class BlockInfo:
    """Head/neuron geometry of one block."""

    name: str
    heads: int
    kv_heads: int
    head_dim: int
    neurons: int
    attn_path: str | None = None
    extra: dict = field(default_factory=dict)


def block_info(model: nn.Module, spec: ArchSpec, name: str, block: nn.Module) -> BlockInfo:
    if spec.q is None or spec.mlp_out is None:
        raise ConfigError(f"structured pruning of {spec.name} blocks is not supported (no q/k/v table entries)")
    q = block.get_submodule(spec.q)
    attn_path = spec.q.rsplit(".", 1)[0]          # the module that holds the projections and head counts
    attn = block.get_submodule(attn_path)
    cfg = model.config
    head_dim = getattr(attn, "head_dim", None) or getattr(attn, "attention_head_size", None)
    if head_dim is None:
        head_dim = cfg.hidden_size // getattr(cfg, spec.num_heads_attr)
    heads = q.out_features // head_dim
    kv = block.get_submodule(spec.k).out_features // head_dim
    neurons = block.get_submodule(spec.mlp_out).in_features
    return BlockInfo(name, heads, kv, head_dim, neurons, attn_path)


# -- scores -----------------------------------------------------------------------------
def _elem(w: torch.Tensor, name: str, config: StructuredConfig, grads: dict | None,
          norms: dict | None, consumer: bool) -> torch.Tensor:
    imp = config.importance
    if imp is Importance.TAYLOR:
        if not grads or name + ".weight" not in grads:
            raise ConfigError("Taylor importance needs gradients: pass calibration=<task> (the loss is used)")
        return scores(w, imp, grad=grads[name + ".weight"])
    if imp is Importance.WANDA:
        if not consumer:
            return torch.zeros(w.shape)   # activation x weight scores the consuming projection only
        return scores(w, imp, input_norm=norms[name])
    # crc32, not hash(): str hashes change per process, random scores must not
    return scores(w, imp, generator=torch.Generator().manual_seed(zlib.crc32(name.encode()))) \
        if imp is Importance.RANDOM else scores(w, imp)


def unit_scores(model: nn.Module, rows: list[str], cols: list[str], width: int, config: StructuredConfig,
                grads: dict | None, norms: dict | None) -> torch.Tensor:
    """One score per unit of ``width`` rows of the ``rows`` layers and columns of the ``cols`` layers."""
    total = None
    for names, dim in ((rows, 0), (cols, 1)):
        for n in names:
            s = _elem(model.get_submodule(n).weight, n, config, grads, norms, consumer=dim == 1)
            per = s.sum(1 - dim).reshape(-1, width).sum(1)
            total = per if total is None else total + per
    return total


# -- heads ------------------------------------------------------------------------------
def head_plan(info: BlockInfo, ratio: float, min_keep: int) -> tuple[int, int]:
    """``(kv groups kept, query heads kept per group)`` whose product is closest to the target
    head count (ties: keep more heads, then more key/value groups)."""
    per = info.heads // info.kv_heads
    target = info.heads * (1 - ratio)
    if min_keep > info.heads:
        raise ConfigError(f"StructuredConfig.min_keep ({min_keep}) is more than the {info.heads} heads of {info.name}")
    best = min(((g, q) for g in range(1, info.kv_heads + 1) for q in range(1, per + 1) if g * q >= min_keep),
               key=lambda gq: (abs(gq[0] * gq[1] - target), -gq[0] * gq[1], -gq[0]))
    return best


def prune_heads_(model: nn.Module, spec: ArchSpec, info: BlockInfo, q_score: torch.Tensor,
                 kv_keep: int, q_per_keep: int) -> None:
    """Keep the best ``kv_keep`` key/value groups and, in each, the best ``q_per_keep`` query heads."""
    per = info.heads // info.kv_heads
    q_grouped = q_score.reshape(info.kv_heads, per)
    groups = keep_indices(q_grouped.sum(1), kv_keep)
    kept_q = torch.cat([g * per + keep_indices(q_grouped[g], q_per_keep) for g in groups.tolist()])
    b, hd = info.name, info.head_dim
    for proj in (spec.q, spec.o):
        slice_linear_(model, f"{b}.{proj}", 0 if proj == spec.q else 1, unit_rows(kept_q, hd))
    for proj in (spec.k, spec.v):
        slice_linear_(model, f"{b}.{proj}", 0, unit_rows(groups, hd))
    attn = f"{b}.{info.attn_path}"
    module = model.get_submodule(attn)
    if hasattr(module, "num_key_value_groups"):
        record_attribute(model, attn, "num_key_value_groups", q_per_keep)
    for attr in ("num_heads", "num_attention_heads"):
        if hasattr(module, attr):
            record_attribute(model, attn, attr, len(kept_q))
    if hasattr(module, "all_head_size"):
        record_attribute(model, attn, "all_head_size", len(kept_q) * hd)
    if hasattr(module, "num_key_value_heads"):
        record_attribute(model, attn, "num_key_value_heads", len(groups))


def head_scores(model: nn.Module, spec: ArchSpec, info: BlockInfo, config: StructuredConfig,
                grads: dict | None, norms: dict | None) -> torch.Tensor:
    """Per query head: its q rows and o columns, plus its key/value head's k/v rows shared over the group."""
    b = info.name
    q = unit_scores(model, [f"{b}.{spec.q}"], [f"{b}.{spec.o}"], info.head_dim, config, grads, norms)
    kv = unit_scores(model, [f"{b}.{spec.k}", f"{b}.{spec.v}"], [], info.head_dim, config, grads, norms)
    per = info.heads // info.kv_heads
    return q + kv.repeat_interleave(per) / per


# -- neurons ----------------------------------------------------------------------------
def neuron_scores(model: nn.Module, spec: ArchSpec, info: BlockInfo, config: StructuredConfig,
                  grads: dict | None, norms: dict | None) -> torch.Tensor:
    b = info.name
    return unit_scores(model, [f"{b}.{p}" for p in spec.mlp_in], [f"{b}.{spec.mlp_out}"], 1, config, grads, norms)


def prune_neurons_(model: nn.Module, spec: ArchSpec, info: BlockInfo, keep: torch.Tensor) -> None:
    for p in spec.mlp_in:
        slice_linear_(model, f"{info.name}.{p}", 0, keep)
    slice_linear_(model, f"{info.name}.{spec.mlp_out}", 1, keep)


def global_keep_counts(all_scores: dict[str, torch.Tensor], ratio: float, min_keep: int) -> dict[str, int]:
    """Per-block kept counts from one ranking of units across blocks (scores normalized per block)."""
    normed = {n: s / s.sum().clamp_min(1e-12) for n, s in all_scores.items()}
    flat = torch.cat(list(normed.values()))
    k = int(round(flat.numel() * ratio))
    thresh = torch.kthvalue(flat, k).values if k else flat.min() - 1
    return {n: max(min_keep, int((s > thresh).sum())) for n, s in normed.items()}


def prune_blocks_mlp_attn(model: nn.Module, spec: ArchSpec, blocks: list[tuple[str, nn.Module]],
                          config: StructuredConfig, heads: bool, neurons: bool,
                          grads: dict | None, norms: dict | None) -> list[BlockInfo]:
    """Prune heads and/or neurons of every selected block; return the blocks' new geometry."""
    infos = [block_info(model, spec, n, b) for n, b in blocks]
    if neurons:
        ns = {i.name: neuron_scores(model, spec, i, config, grads, norms) for i in infos}
        counts = global_keep_counts(ns, config.ratio, config.min_keep) if config.scope is Scope.GLOBAL else \
            {i.name: kept_count(i.neurons, i.neurons - int(round(i.neurons * config.ratio)), config.round_to,
                                config.min_keep) for i in infos}
        for i in infos:
            prune_neurons_(model, spec, i, keep_indices(ns[i.name], counts[i.name]))
    if heads:
        for i in infos:
            hs = head_scores(model, spec, i, config, grads, norms)
            kv_keep, q_per = head_plan(i, config.ratio, config.min_keep)
            prune_heads_(model, spec, i, hs, kv_keep, q_per)
    return [block_info(model, spec, n, b) for n, b in blocks]
