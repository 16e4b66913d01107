"""Structured pruning of transformer blocks from the architecture tables: attention heads (GQA-aware,
separate or fused projections), MLP neurons (separate or fused gate/up) and whole blocks. The result is
ordinary, smaller modules.

A unit (a query head, a key/value group, a neuron) owns *parts*: index sets along one axis of one
linear layer (a head's rows of q and columns of o; in a fused ``[q; k; v]`` projection its rows at the
right offsets; a neuron's row of every MLP input and column of the MLP output). Scores sum over a
unit's parts; slicing keeps the kept units' parts, in order, so fused layouts stay valid. With
grouped-query attention, query heads are pruned by the same count in every key/value group (so each
query keeps its key/value head), and whole groups can go too. Head counts are recorded on the
attention module and, when uniform, in the config.
"""
from __future__ import annotations

import logging
import zlib
from dataclasses import dataclass, field

import torch
from torch import nn

from torchslim.core.archs import ArchSpec, resolve
from torchslim.core.errors import ConfigError, TorchSlimError
from torchslim.core.linear import is_conv1d, is_linear_like, out_in, weight_matrix
from torchslim.core.resize import record_attribute
from torchslim.pruning.config import Scope, StructuredConfig
from torchslim.pruning.importance import Importance, scores
from torchslim.pruning.masks import keep_indices, kept_count
from torchslim.pruning.surgery import slice_linear_, unit_rows

log = logging.getLogger("torchslim.pruning")

# Attributes attention modules keep their geometry in (set where present after heads are removed).
HEAD_ATTRS = ("num_heads", "num_attention_heads", "n_heads")
KV_HEAD_ATTRS = ("num_key_value_heads", "num_kv_heads")
WIDTH_ATTRS = ("all_head_size", "inner_dim", "split_size")
HEAD_DIM_ATTRS = ("head_dim", "attention_head_size", "head_size", "key_value_proj_dim")


@dataclass
class Part:
    """Indices along ``dim`` (0: output rows, 1: input columns) of linear ``layer``, one row per unit."""

    layer: str
    dim: int
    units: torch.Tensor      # [n_units, width]


@dataclass
class BlockInfo:
    """Head/neuron geometry of one block, and where its parts are."""

    name: str
    heads: int
    kv_heads: int
    head_dim: int
    neurons: int
    attn_path: str | None = None
    extra: dict = field(default_factory=dict)


def _layer(model: nn.Module, block: str, path: str | None) -> str | None:
    """Full name of the linear(-like) layer at ``path`` (alternatives allowed) in ``block``."""
    rel = resolve(model.get_submodule(block), path)
    if rel is None:
        return None
    name = f"{block}.{rel}"
    m = model.get_submodule(name)
    if not is_linear_like(m):
        raise TorchSlimError(f"structured pruning slices linear layers; '{name}' is a {type(m).__name__} "
                             "(prune before quantizing)")
    return name


def _out(model: nn.Module, name: str) -> int:
    return out_in(model.get_submodule(name))[0]


def block_info(model: nn.Module, spec: ArchSpec, name: str, block: nn.Module) -> BlockInfo:
    if (spec.q is None and spec.qkv is None) or spec.mlp_out is None:
        raise ConfigError(f"structured pruning of {spec.name} blocks is not supported (no projection table entries)")
    attn_rel = resolve(block, spec.attention) if spec.attention else None
    attn = block.get_submodule(attn_rel) if attn_rel else block
    head_dim = next((getattr(attn, a) for a in HEAD_DIM_ATTRS if isinstance(getattr(attn, a, None), int)), None)
    cfg = getattr(model, "config", None)
    if head_dim is None:
        head_dim = cfg.hidden_size // getattr(cfg, spec.num_heads_attr)
    if spec.qkv is not None:
        fused = _out(model, _layer(model, name, spec.qkv))
        per = 3 * head_dim
        heads = kv = fused // per           # the fused layouts torchslim slices are multi-head (q, k, v equal)
    else:
        heads = _out(model, _layer(model, name, spec.q)) // head_dim
        kv = _out(model, _layer(model, name, spec.k)) // head_dim
    neurons = out_in(model.get_submodule(_layer(model, name, spec.mlp_out)))[1]
    return BlockInfo(name, heads, kv, head_dim, neurons, attn_rel)


# -- parts ----------------------------------------------------------------------------------
def head_parts(model: nn.Module, spec: ArchSpec, info: BlockInfo) -> tuple[list[Part], list[Part]]:
    """``(query-head parts, key/value-group parts)`` of one block."""
    b, hd, H, G = info.name, info.head_dim, info.heads, info.kv_heads
    heads, groups = unit_rows(torch.arange(H), hd).reshape(H, hd), unit_rows(torch.arange(G), hd).reshape(G, hd)
    o = Part(_layer(model, b, spec.o), 1, heads)
    if spec.qkv is None:
        return [Part(_layer(model, b, spec.q), 0, heads), o], [Part(_layer(model, b, spec.k), 0, groups),
                                                               Part(_layer(model, b, spec.v), 0, groups)]
    qkv = _layer(model, b, spec.qkv)
    if spec.qkv_layout == "concat":            # rows [q (H*hd); k (G*hd); v (G*hd)]
        return [Part(qkv, 0, heads), o], [Part(qkv, 0, groups + H * hd), Part(qkv, 0, groups + (H + G) * hd)]
    if spec.qkv_layout == "per_head":          # rows [q_h; k_h; v_h] for each head h
        return [Part(qkv, 0, unit_rows(torch.arange(H), 3 * hd).reshape(H, 3 * hd)), o], []
    raise TorchSlimError(f"{spec.name}: no rule to slice its fused {spec.qkv} layout")


def neuron_parts(model: nn.Module, spec: ArchSpec, info: BlockInfo) -> list[Part]:
    b, n = info.name, info.neurons
    units = torch.arange(n).reshape(n, 1)
    parts = [Part(name, 0, units) for name in (_layer(model, b, p) for p in spec.mlp_in) if name is not None]
    if spec.mlp_in_fused is not None:           # rows [gate (n); up (n)], chunked in two by the model
        parts.append(Part(_layer(model, b, spec.mlp_in_fused), 0, torch.stack([units[:, 0], units[:, 0] + n], 1)))
    return [*parts, Part(_layer(model, b, spec.mlp_out), 1, units)]


# -- scores ---------------------------------------------------------------------------------
def _elem(model: nn.Module, part: Part, config: StructuredConfig, grads: dict | None,
          norms: dict | None) -> torch.Tensor:
    """Element scores of ``part.layer``'s weight (zeros where the criterion does not score this side)."""
    module, name, imp = model.get_submodule(part.layer), part.layer, config.importance or Importance.MAGNITUDE_L2
    w = weight_matrix(module)                 # [out, in], whatever the storage layout
    if imp is Importance.TAYLOR:
        if not grads or name + ".weight" not in grads:
            raise ConfigError("Taylor importance needs gradients: pass task=<task> (the loss is used)")
        g = grads[name + ".weight"]
        return scores(w, imp, grad=g.t() if is_conv1d(module) else g)
    if imp is Importance.WANDA:
        if part.dim == 0 or norms is None or name not in norms:
            return torch.zeros(w.shape)   # activation x weight scores the consuming projection only
        return scores(w, imp, input_norm=norms[name])
    # crc32, not hash(): str hashes change per process, random scores must not
    return scores(w, imp, generator=torch.Generator().manual_seed(zlib.crc32(name.encode()))) \
        if imp is Importance.RANDOM else scores(w, imp)


def part_scores(model: nn.Module, parts: list[Part], config: StructuredConfig, grads: dict | None,
                norms: dict | None) -> torch.Tensor:
    """One score per unit: the summed element scores of all its parts."""
    total = None
    for part in parts:
        s = _elem(model, part, config, grads, norms).float()
        along = s.sum(1 - part.dim).cpu()                   # one score per index along the part's axis
        per_unit = along[part.units].sum(1)
        total = per_unit if total is None else total + per_unit
    return total


def slice_parts_(model: nn.Module, parts: list[Part], kept: torch.Tensor) -> None:
    """Keep units ``kept`` (sorted) of every part; parts on the same layer and axis keep their order."""
    by_layer: dict[tuple[str, int], list[torch.Tensor]] = {}
    for part in parts:
        by_layer.setdefault((part.layer, part.dim), []).append(part.units[kept].reshape(-1))
    for (layer, dim), idx in by_layer.items():
        slice_linear_(model, layer, dim, torch.cat(idx))


# -- heads ----------------------------------------------------------------------------------
def head_plan(info: BlockInfo, ratio: float, min_keep: int) -> tuple[int, int]:
    """``(kv groups kept, query heads kept per group)`` whose product is closest to the target
    head count (ties: keep more heads, then more key/value groups)."""
    per = info.heads // info.kv_heads
    target = info.heads * (1 - ratio)
    if min_keep > info.heads:
        raise ConfigError(f"StructuredConfig.min_keep ({min_keep}) is more than the {info.heads} heads of {info.name}")
    return min(((g, q) for g in range(1, info.kv_heads + 1) for q in range(1, per + 1) if g * q >= min_keep),
               key=lambda gq: (abs(gq[0] * gq[1] - target), -gq[0] * gq[1], -gq[0]))


def prune_heads_(model: nn.Module, spec: ArchSpec, info: BlockInfo, q_parts: list[Part], kv_parts: list[Part],
                 q_score: torch.Tensor, kv_keep: int, q_per_keep: int) -> int:
    """Keep the best ``kv_keep`` key/value groups and, in each, the best ``q_per_keep`` query heads;
    returns the number of query heads kept."""
    per = info.heads // info.kv_heads
    q_grouped = q_score.reshape(info.kv_heads, per)
    groups = keep_indices(q_grouped.sum(1), kv_keep)
    kept_q = torch.cat([g * per + keep_indices(q_grouped[g], q_per_keep) for g in groups.tolist()]).sort().values
    _slice_heads(model, q_parts, kv_parts, kept_q, groups)
    _record_heads(model, info, len(kept_q), len(groups), q_per_keep)
    return len(kept_q)


def prune_scored_heads_(model: nn.Module, spec: ArchSpec, info: BlockInfo, config: StructuredConfig,
                        grads: dict | None, norms: dict | None, kv_keep: int, q_per_keep: int) -> int:
    """Score one block's query heads (their own parts plus their key/value group's, shared by the group's heads)
    and keep ``kv_keep`` groups of ``q_per_keep`` heads; returns the number of query heads kept."""
    q_parts, kv_parts = head_parts(model, spec, info)
    hs = part_scores(model, q_parts, config, grads, norms)
    if kv_parts:
        per = info.heads // info.kv_heads
        hs = hs + part_scores(model, kv_parts, config, grads, norms).repeat_interleave(per) / per
    return prune_heads_(model, spec, info, q_parts, kv_parts, hs, kv_keep, q_per_keep)


def _slice_heads(model: nn.Module, q_parts: list[Part], kv_parts: list[Part], kept_q: torch.Tensor,
                 groups: torch.Tensor) -> None:
    """Kept query heads of the q parts, kept groups of the k/v parts; a fused [q; k; v] layer is sliced once,
    its q, k and v rows concatenated in that order."""
    by_layer: dict[tuple[str, int], list[torch.Tensor]] = {}
    for parts, kept in ((q_parts, kept_q), (kv_parts, groups)):
        for part in parts:
            by_layer.setdefault((part.layer, part.dim), []).append(part.units[kept].reshape(-1))
    for (layer, dim), idx in by_layer.items():
        slice_linear_(model, layer, dim, torch.cat(idx))


def _record_heads(model: nn.Module, info: BlockInfo, heads: int, kv: int, q_per: int) -> None:
    attn = f"{info.name}.{info.attn_path}" if info.attn_path else info.name
    module = model.get_submodule(attn)
    if isinstance(getattr(module, "num_key_value_groups", None), int):
        record_attribute(model, attn, "num_key_value_groups", q_per)
    for attrs, value in ((HEAD_ATTRS, heads), (KV_HEAD_ATTRS, kv), (WIDTH_ATTRS, heads * info.head_dim)):
        for attr in attrs:
            if isinstance(getattr(module, attr, None), int) and not isinstance(getattr(module, attr), bool):
                record_attribute(model, attn, attr, value)


# -- neurons --------------------------------------------------------------------------------
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
    if heads:
        spec.check("heads")
    infos = [block_info(model, spec, n, b) for n, b in blocks]
    if neurons:
        parts = {i.name: neuron_parts(model, spec, i) for i in infos}
        ns = {i.name: part_scores(model, parts[i.name], config, grads, norms) for i in infos}
        counts = global_keep_counts(ns, config.ratio, config.min_keep) if config.scope is Scope.GLOBAL else \
            {i.name: kept_count(i.neurons, i.neurons - int(round(i.neurons * config.ratio)), config.round_to,
                                config.min_keep) for i in infos}
        for i in infos:
            slice_parts_(model, parts[i.name], keep_indices(ns[i.name], counts[i.name]).sort().values)
    if heads:
        kept = []
        for i in infos:
            kv_keep, q_per = head_plan(i, config.ratio, config.min_keep)
            kept.append(prune_scored_heads_(model, spec, i, config, grads, norms, kv_keep, q_per))
        if all(k == i.heads for k, i in zip(kept, infos)) and config.ratio > 0:
            log.warning("heads: a ratio of %g keeps every head (%d per block, in groups of %d): nothing removed",
                        config.ratio, infos[0].heads, infos[0].heads // infos[0].kv_heads)
    return [block_info(model, spec, n, b) for n, b in blocks]
