"""The one table of module kinds: how to describe, build and slice each kind of module, and how
channels flow through it.

Every place that needs to know about a module's kind asks here: artifacts (rebuild resized and
added modules from a JSON spec), structured pruning (slice a module to kept output/input
indices), the channel dependency graph (the ``channels`` role of a module), and replacement
modules (quantized, sparse), which register a row through
:func:`torchslim.core.modules.register_module_format` saying they cannot be sliced.

A spec is ``{"kind": name, **constructor arguments}``; containers (``Sequential``,
``ModuleList``, ``ModuleDict``) nest their children's specs. Slicing takes sorted kept indices
per axis: ``"out"`` (output features/channels, or a norm's features) and ``"in"``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn

from torchslim.core.errors import ArtifactError, TorchSlimError, first_line

Keep = dict[str, torch.Tensor]


@dataclass(frozen=True)
class ModuleKind:
    name: str
    cls: type[nn.Module]
    describe: Callable[[nn.Module], dict[str, Any]]
    build: Callable[[dict[str, Any]], nn.Module] | None
    slice: Callable[[nn.Module, Keep], nn.Module] | None = None
    axes: Callable[[nn.Module], dict[str, int]] | None = None
    channels: str | None = None      # role in the channel dependency graph: conv, linear, batchnorm, layernorm
    why_not: str = ""                # why it cannot be built or sliced (replacement modules)


_KINDS: dict[str, ModuleKind] = {}


def register_kind(kind: ModuleKind) -> ModuleKind:
    _KINDS[kind.name] = kind
    return kind


def kind_of(m: nn.Module) -> ModuleKind | None:
    """The row for ``type(m)`` exactly (a subclass is a different kind), or ``None``."""
    k = _KINDS.get(type(m).__name__)
    return k if k is not None and k.cls is type(m) else None


def known_kinds() -> list[str]:
    return sorted(_KINDS)


def describe(m: nn.Module) -> dict[str, Any]:
    """``{"kind": ..., **constructor arguments}`` of a module in the table."""
    k = kind_of(m)
    if k is None or k.build is None:
        why = k.why_not if k is not None else f"only {', '.join(n for n, r in _KINDS.items() if r.build)} can be rebuilt"
        raise TorchSlimError(f"cannot record a {type(m).__name__} for rebuilding: {why}")
    return {"kind": k.name, **k.describe(m)}


def build(spec: Any) -> nn.Module:
    """A freshly initialised module from a spec (call under ``torch.device("meta")`` to skip allocation)."""
    if not isinstance(spec, dict) or not isinstance(spec.get("kind"), str):
        raise ArtifactError(f"a module spec must be a mapping with a 'kind', got {str(spec)[:80]}")
    k = _KINDS.get(spec["kind"])
    if k is None or k.build is None:
        raise ArtifactError(f"artifact records a module of unknown kind {spec['kind'][:80]!r}")
    try:
        return k.build(spec)
    except (KeyError, TypeError, ValueError, RuntimeError) as e:
        raise ArtifactError(f"bad spec for a {k.name}: {first_line(e)}") from None


def slice_module(m: nn.Module, keep: Keep) -> nn.Module:
    """A new module of the same kind holding only the kept output/input indices (copies, same device/dtype)."""
    k = kind_of(m)
    if k is None or k.slice is None:
        why = k.why_not if k is not None else "not a kind structured pruning can shrink"
        raise TorchSlimError(f"cannot shrink a {type(m).__name__}: {why}")
    return k.slice(m, keep).train(m.training)


def axis_sizes(m: nn.Module) -> dict[str, int]:
    k = kind_of(m)
    return k.axes(m) if k is not None and k.axes is not None else {}


def channel_role(m: nn.Module) -> str | None:
    k = kind_of(m)
    return k.channels if k is not None else None


# -- helpers -------------------------------------------------------------------------------------
def _param(t: torch.Tensor, like: nn.Parameter) -> nn.Parameter:
    return nn.Parameter(t.detach().clone(), requires_grad=like.requires_grad)


def _idx(keep: Keep, axis: str, n: int, device: torch.device) -> torch.Tensor:
    k = keep.get(axis)
    return torch.arange(n, device=device) if k is None else k.to(device)


def _tuple(v: Any) -> Any:
    return tuple(v) if isinstance(v, list) else v


# -- Linear ------------------------------------------------------------------------------------
def _slice_linear(m: nn.Linear, keep: Keep) -> nn.Linear:
    dev = m.weight.device
    out_k, in_k = _idx(keep, "out", m.out_features, dev), _idx(keep, "in", m.in_features, dev)
    new = nn.Linear(in_k.numel(), out_k.numel(), m.bias is not None, device=dev, dtype=m.weight.dtype)
    new.weight = _param(m.weight[out_k][:, in_k], m.weight)
    if m.bias is not None:
        new.bias = _param(m.bias[out_k], m.bias)
    return new


register_kind(ModuleKind(
    "Linear", nn.Linear,
    lambda m: {"in_features": m.in_features, "out_features": m.out_features, "bias": m.bias is not None},
    lambda d: nn.Linear(d["in_features"], d["out_features"], bias=d["bias"]),
    _slice_linear, lambda m: {"out": m.out_features, "in": m.in_features}, channels="linear"))


# -- convolutions ------------------------------------------------------------------------------
def _conv_describe(m: nn.Module) -> dict[str, Any]:
    return {"in_channels": m.in_channels, "out_channels": m.out_channels, "kernel_size": list(m.kernel_size),
            "stride": list(m.stride), "padding": m.padding if isinstance(m.padding, str) else list(m.padding),
            "dilation": list(m.dilation), "groups": m.groups, "bias": m.bias is not None,
            "padding_mode": m.padding_mode}


def _conv_build(cls: type[nn.Module]) -> Callable[[dict[str, Any]], nn.Module]:
    def build_(d: dict[str, Any]) -> nn.Module:
        return cls(d["in_channels"], d["out_channels"], _tuple(d["kernel_size"]), _tuple(d["stride"]),
                   _tuple(d["padding"]), _tuple(d["dilation"]), d["groups"], d["bias"], d["padding_mode"])
    return build_


def _slice_conv(m: nn.Module, keep: Keep) -> nn.Module:
    dev = m.weight.device
    out_k = _idx(keep, "out", m.out_channels, dev)
    if 1 < m.groups != m.in_channels:
        raise TorchSlimError(f"channel pruning cannot shrink a grouped conv ({m.groups} groups)")
    if m.groups > 1:                       # depthwise: one group per kept input channel
        groups = in_ch = out_k.numel() // (m.out_channels // m.in_channels)
        weight = m.weight[out_k]
    else:
        in_k = _idx(keep, "in", m.in_channels, dev)
        groups, in_ch = 1, in_k.numel()
        weight = m.weight[out_k][:, in_k]
    new = type(m)(in_ch, out_k.numel(), m.kernel_size, m.stride, m.padding, m.dilation, groups,
                  m.bias is not None, m.padding_mode, device=dev, dtype=m.weight.dtype)
    new.weight = _param(weight, m.weight)
    if m.bias is not None:
        new.bias = _param(m.bias[out_k], m.bias)
    return new


for _cls in (nn.Conv1d, nn.Conv2d):
    register_kind(ModuleKind(_cls.__name__, _cls, _conv_describe, _conv_build(_cls), _slice_conv,
                             lambda m: {"out": m.out_channels, "in": m.in_channels}, channels="conv"))


# -- norms ---------------------------------------------------------------------------------------
def _bn_describe(m: nn.Module) -> dict[str, Any]:
    return {"num_features": m.num_features, "eps": m.eps, "momentum": m.momentum, "affine": m.affine,
            "track_running_stats": m.track_running_stats}


def _slice_bn(m: nn.Module, keep: Keep) -> nn.Module:
    ref = m.weight if m.affine else m.running_mean
    dev = ref.device if ref is not None else torch.device("cpu")
    k = _idx(keep, "out", m.num_features, dev)
    new = type(m)(k.numel(), m.eps, m.momentum, m.affine, m.track_running_stats, device=dev,
                  dtype=ref.dtype if ref is not None else None)
    if m.affine:
        new.weight, new.bias = _param(m.weight[k], m.weight), _param(m.bias[k], m.bias)
    if m.track_running_stats and m.running_mean is not None:
        new.running_mean.copy_(m.running_mean[k])
        new.running_var.copy_(m.running_var[k])
        new.num_batches_tracked.copy_(m.num_batches_tracked)
    return new


for _cls in (nn.BatchNorm1d, nn.BatchNorm2d):
    register_kind(ModuleKind(
        _cls.__name__, _cls, _bn_describe,
        lambda d, c=_cls: c(d["num_features"], d["eps"], d["momentum"], d["affine"], d["track_running_stats"]),
        _slice_bn, lambda m: {"out": m.num_features}, channels="batchnorm"))


def _slice_ln(m: nn.LayerNorm, keep: Keep) -> nn.LayerNorm:
    ref = m.weight if m.weight is not None else None
    dev = ref.device if ref is not None else torch.device("cpu")
    k = _idx(keep, "out", m.normalized_shape[0], dev)
    new = nn.LayerNorm(k.numel(), m.eps, m.elementwise_affine, bias=m.bias is not None, device=dev,
                       dtype=ref.dtype if ref is not None else None)
    if m.weight is not None:
        new.weight = _param(m.weight[k], m.weight)
    if m.bias is not None:
        new.bias = _param(m.bias[k], m.bias)
    return new


register_kind(ModuleKind(
    "LayerNorm", nn.LayerNorm,
    lambda m: {"normalized_shape": list(m.normalized_shape), "eps": m.eps, "elementwise_affine": m.elementwise_affine,
               "bias": m.bias is not None},
    lambda d: nn.LayerNorm(tuple(d["normalized_shape"]), d["eps"], d["elementwise_affine"], bias=d["bias"]),
    _slice_ln, lambda m: {"out": m.normalized_shape[0]} if len(m.normalized_shape) == 1 else {}, channels="layernorm"))

register_kind(ModuleKind(
    "RMSNorm", nn.RMSNorm,
    lambda m: {"normalized_shape": list(m.normalized_shape), "eps": m.eps, "elementwise_affine": m.elementwise_affine},
    lambda d: nn.RMSNorm(tuple(d["normalized_shape"]), d["eps"], d["elementwise_affine"])))


# -- embeddings ----------------------------------------------------------------------------------
def _slice_embedding(m: nn.Embedding, keep: Keep) -> nn.Embedding:
    dev = m.weight.device
    rows, dims = _idx(keep, "in", m.num_embeddings, dev), _idx(keep, "out", m.embedding_dim, dev)
    pad = m.padding_idx
    if pad is not None and keep.get("in") is not None:
        hit = (rows == pad).nonzero()
        pad = int(hit[0]) if hit.numel() else None
    new = nn.Embedding(rows.numel(), dims.numel(), pad, device=dev, dtype=m.weight.dtype)
    new.weight = _param(m.weight[rows][:, dims], m.weight)
    return new


register_kind(ModuleKind(
    "Embedding", nn.Embedding,
    lambda m: {"num_embeddings": m.num_embeddings, "embedding_dim": m.embedding_dim, "padding_idx": m.padding_idx},
    lambda d: nn.Embedding(d["num_embeddings"], d["embedding_dim"], d["padding_idx"]),
    _slice_embedding, lambda m: {"out": m.embedding_dim, "in": m.num_embeddings}))


# -- Hugging Face Conv1D (GPT-2): a linear layer with its weight stored [in, out] ---------------------
def _slice_conv1d(m: nn.Module, keep: Keep) -> nn.Module:
    dev = m.weight.device
    out_k, in_k = _idx(keep, "out", m.nf, dev), _idx(keep, "in", m.nx, dev)
    new = type(m)(out_k.numel(), in_k.numel()).to(device=dev, dtype=m.weight.dtype)
    new.weight = _param(m.weight[in_k][:, out_k], m.weight)
    new.bias = _param(m.bias[out_k], m.bias)
    return new


try:
    from transformers.pytorch_utils import Conv1D as _Conv1D
except ImportError:  # pragma: no cover - transformers is a dependency; the row is skipped without it
    _Conv1D = None
if _Conv1D is not None:
    register_kind(ModuleKind("Conv1D", _Conv1D, lambda m: {"nf": m.nf, "nx": m.nx},
                             lambda d: _Conv1D(d["nf"], d["nx"]), _slice_conv1d, lambda m: {"out": m.nf, "in": m.nx}))


# -- parameter-free modules and containers (what added heads are made of) -------------------------
_SIMPLE = {cls.__name__: cls for cls in (nn.ReLU, nn.GELU, nn.SiLU, nn.Tanh, nn.Sigmoid, nn.Identity, nn.Flatten)}
for _n, _cls in _SIMPLE.items():
    register_kind(ModuleKind(_n, _cls, lambda m: {}, lambda d, c=_cls: c()))
register_kind(ModuleKind("Dropout", nn.Dropout, lambda m: {"p": m.p}, lambda d: nn.Dropout(d["p"])))
register_kind(ModuleKind("Sequential", nn.Sequential, lambda m: {"children": [describe(c) for c in m]},
                         lambda d: nn.Sequential(*[build(c) for c in d["children"]])))
register_kind(ModuleKind("ModuleList", nn.ModuleList, lambda m: {"children": [describe(c) for c in m]},
                         lambda d: nn.ModuleList([build(c) for c in d["children"]])))
register_kind(ModuleKind("ModuleDict", nn.ModuleDict,
                         lambda m: {"children": {k: describe(c) for k, c in m.items()}},
                         lambda d: nn.ModuleDict({k: build(c) for k, c in d["children"].items()})))
