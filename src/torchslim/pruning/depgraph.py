"""Channel dependency graph: which parameter slices go together when one channel is removed.

The model is traced with torch.fx and run once on example inputs (``ShapeProp``) for shapes.
Each output channel of a producer (a ``Conv2d`` filter, a ``Linear`` output) is an *element*;
a tensor carries a vector of elements along its channel dim. Element-wise ops between tensors
(residual ``+``, gates ``*``) join the elements they line up (union-find), ``cat`` concatenates
vectors, ``flatten``/``view`` repeat each element over the block of features it becomes,
depthwise convs and norms carry them, pooling and activations leave them alone. Each module
slice reading or writing an element is a :class:`Member` of its group: ``out``, ``in``, ``dw``
(depthwise filters follow their inputs), ``bn``, ``ln``. Elements reaching the outputs, coming
from the inputs or meeting unsliceable tensors (functional parameters) are frozen. An op this
cannot follow raises :class:`TorchSlimError` naming it.
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Any, Iterator

import torch
import torch.fx as fx
from torch import nn
from torch.fx.passes.shape_prop import ShapeProp, TensorMetadata

from torchslim.core import kinds
from torchslim.core.errors import ConfigError, TorchSlimError
from torchslim.transforms.graph import trace

PRODUCER_KINDS = ("out", "dw")

_ELEMENTWISE_FN = frozenset(
    "add sub mul truediv div floordiv mod pow neg abs exp log sqrt rsqrt reciprocal square sign erf sin cos "
    "sigmoid tanh relu relu6 gelu silu mish elu selu celu leaky_relu hardswish hardsigmoid hardtanh softplus "
    "softsign logsigmoid threshold dropout dropout1d dropout2d alpha_dropout feature_alpha_dropout clamp clip "
    "clamp_min clamp_max maximum minimum where masked_fill contiguous clone detach float half double bfloat16 "
    "to type type_as iadd isub imul itruediv rsub".split())
_SPATIAL_FN = frozenset(
    "max_pool1d max_pool2d avg_pool1d avg_pool2d adaptive_avg_pool1d adaptive_avg_pool2d adaptive_max_pool1d "
    "adaptive_max_pool2d lp_pool2d interpolate upsample pad".split())
_RESHAPE_FN = frozenset("flatten view reshape squeeze unsqueeze unflatten expand expand_as view_as reshape_as "
                        "repeat".split())
_PERMUTE_FN = frozenset("permute transpose swapaxes swapdims t".split())
_REDUCE_FN = frozenset("mean sum amax amin std var nansum nanmean softmax log_softmax".split())
_CAT_FN = frozenset("cat concat concatenate".split())
_META_FN = frozenset("size dim numel getattr".split())   # non-tensor results: shapes, dtypes

_ELEMENTWISE_MODULES = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.GELU, nn.SiLU, nn.Sigmoid, nn.Tanh, nn.Hardswish,
                        nn.Hardsigmoid, nn.Hardtanh, nn.ELU, nn.SELU, nn.CELU, nn.Mish, nn.Softplus, nn.Identity,
                        nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.AlphaDropout)
_SPATIAL_MODULES = (nn.MaxPool1d, nn.MaxPool2d, nn.AvgPool1d, nn.AvgPool2d, nn.AdaptiveAvgPool1d,
                    nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.Upsample, nn.ZeroPad2d)


@dataclass(frozen=True)
class Member:
    """``positions`` along ``module``'s pruned dim (per ``kind``) and the group channel of each."""
    module: str
    kind: str                 # 'out' | 'in' | 'dw' | 'bn' | 'ln'
    positions: torch.Tensor
    channels: torch.Tensor


@dataclass(frozen=True)
class ChannelGroup:
    """Coupled channels: removing group channel ``i`` removes every member position mapped to ``i``."""
    size: int
    members: tuple[Member, ...]

    @property
    def producers(self) -> tuple[str, ...]:
        """Modules whose output channels are this group's channels (``out`` and ``dw`` members)."""
        return tuple(dict.fromkeys(m.module for m in self.members if m.kind in PRODUCER_KINDS))

    def __repr__(self) -> str:
        parts = ", ".join(f"{m.module}:{m.kind}" for m in self.members)
        return f"ChannelGroup(size={self.size}, members=[{parts}])"


@dataclass(frozen=True)
class _Chan:
    dim: int              # a tensor's channel dim
    ids: torch.Tensor     # the element at each index along it


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """Every module in eval mode for the block; each module's own flag is restored afterwards."""
    flags = {m: m.training for m in model.modules()}
    model.eval()
    try:
        yield
    finally:
        for m, flag in flags.items():
            m.training = flag


def example_args(graph: fx.Graph, inputs: dict[str, Any]) -> list[Any]:
    """Positional arguments of the traced forward from keyword ``inputs`` (defaults fill the rest)."""
    if not isinstance(inputs, dict):
        raise ConfigError(f"example_inputs must be a dict of forward arguments, got {type(inputs).__name__}")
    holders = [n for n in graph.nodes if n.op == "placeholder"]
    if len(inputs) == 1 and len(holders) == 1:
        return [next(iter(inputs.values()))]
    names = [str(n.target).lstrip("*") for n in holders]
    unknown = sorted(set(inputs) - set(names))
    if unknown:
        raise ConfigError(f"example_inputs has '{unknown[0]}', which forward does not take ({', '.join(names)})")
    missing = [name for n, name in zip(holders, names) if name not in inputs and not n.args]
    if missing:
        raise ConfigError(f"example_inputs lacks '{missing[0]}', a required forward argument")
    return [inputs[name] if name in inputs else n.args[0] for n, name in zip(holders, names)]


def channel_groups(model: nn.Module, example_inputs: dict[str, Any]) -> list[ChannelGroup]:
    """The prunable channel groups of ``model`` (traced with torch.fx, shapes from ``example_inputs``)."""
    graph = trace(model, "channel pruning")
    return build_groups(model, graph, example_args(graph, example_inputs))


def build_groups(model: nn.Module, graph: fx.Graph, args: list[Any]) -> list[ChannelGroup]:
    """Groups of an already traced ``graph`` of ``model``, run on positional ``args`` for shapes."""
    gm = fx.GraphModule(model, graph)
    try:
        with eval_mode(model), torch.no_grad():
            ShapeProp(gm).propagate(*args)
    except Exception as e:  # noqa: BLE001 - any failure of the example run is the user's inputs
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise TorchSlimError(f"channel pruning could not run the model on example_inputs ({first[:160]})") from None
    builder = _Builder(model)
    for node in graph.nodes:
        builder.visit(node)
    return builder.groups()


def reshape_channels(src: list[int], dim: int, dst: list[int]) -> tuple[int, int, int] | None:
    """``(new dim, inner, outer)`` of channel ``dim`` of shape ``src`` reshaped (row-major) to ``dst``:
    each channel becomes ``inner`` consecutive indices, repeated ``outer`` times; ``None`` if split."""
    src, dst = list(src), list(dst)
    if src[:dim + 1] == dst[:dim + 1]:
        return dim, 1, 1
    tail = len(src) - dim
    if len(dst) >= tail and src[dim:] == dst[len(dst) - tail:]:
        return len(dst) - tail, 1, 1
    for start in range(dim, -1, -1):
        if src[:start] != dst[:start] or len(dst) <= start:
            continue
        for end in range(dim, len(src)):
            if math.prod(src[start:end + 1]) == dst[start] and src[end + 1:] == dst[start + 1:]:
                return start, math.prod(src[dim + 1:end + 1]), math.prod(src[start:dim])
    return None


def index_dim(index: Any, ndim: int, dim: int) -> int | None:
    """Output dim of input dim ``dim`` under ``x[index]``, or ``None`` when the index touches it."""
    items = list(index) if isinstance(index, tuple) else [index]
    used = sum(1 for e in items if e is not None and e is not Ellipsis)
    for i, e in enumerate(items):
        if e is Ellipsis:
            items[i:i + 1] = [slice(None)] * (ndim - used)
            break
    items += [slice(None)] * (ndim - sum(1 for e in items if e is not None))
    src = out = 0
    for e in items:
        if e is None:
            out += 1
            continue
        if src == dim:
            return out if isinstance(e, slice) and e == slice(None) else None
        if isinstance(e, slice):
            out += 1
        elif not isinstance(e, int):
            return None   # advanced (tensor) indexing before the channel dim moves dims around
        src += 1
    return None


def _op_name(node: fx.Node) -> str:
    name = node.target if isinstance(node.target, str) else getattr(node.target, "__name__", str(node.target))
    return name.rstrip("_") or name


class _Builder:
    """Walks the fx graph once, tracking channel elements (union-find) and module members."""

    def __init__(self, model: nn.Module) -> None:
        self.modules = dict(model.named_modules())
        self.parent: list[int] = []
        self.frozen: list[int] = []
        self.members: dict[tuple[str, str], torch.Tensor] = {}
        self.outs: dict[str, torch.Tensor] = {}
        self.state: dict[fx.Node, _Chan | None] = {}
        table = ((_ELEMENTWISE_FN, self.elementwise), (_SPATIAL_FN, self.spatial), (_RESHAPE_FN, self.reshape),
                 (_PERMUTE_FN, self.permute), (_REDUCE_FN, self.reduce), (_CAT_FN, self.cat), (("getitem",), self.getitem))
        self.handlers = {op: handler for names, handler in table for op in names}

    def new(self, n: int, frozen: bool = False) -> torch.Tensor:
        start = len(self.parent)
        self.parent.extend(range(start, start + n))
        if frozen:
            self.frozen.extend(range(start, start + n))
        return torch.arange(start, start + n)

    def find(self, i: int) -> int:
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def union(self, a: torch.Tensor, b: torch.Tensor) -> None:
        for x, y in zip(a.tolist(), b.tolist()):
            rx, ry = sorted((self.find(x), self.find(y)))
            self.parent[ry] = rx

    def freeze(self, ids: torch.Tensor) -> None:
        self.frozen.extend(ids.tolist())

    def register(self, name: str, kind: str, ids: torch.Tensor) -> None:
        """``ids[p]`` is the element at position ``p`` of member ``(name, kind)`` (a shared module joins)."""
        self.union(self.members.setdefault((name, kind), ids), ids)

    def out_ids(self, name: str, n: int) -> torch.Tensor:
        if name not in self.outs:
            self.outs[name] = self.new(n)
            self.register(name, "out", self.outs[name])
        return self.outs[name]

    def visit(self, node: fx.Node) -> None:
        if node.op in ("placeholder", "get_attr"):
            state = None
        elif node.op == "output":
            for _, st in self.tracked(node.args):
                self.freeze(st.ids)
            return
        elif node.op == "call_module":
            state = self.module(node)
        else:
            state = self.function(node)
        if state is not None:
            shape = self.shape(node)
            if shape is None or state.dim >= len(shape) or shape[state.dim] != len(state.ids):
                raise self.error(node, _op_name(node))
        self.state[node] = state

    def shape(self, node: Any) -> list[int] | None:
        meta = node.meta.get("tensor_meta") if isinstance(node, fx.Node) else None
        return list(meta.shape) if isinstance(meta, TensorMetadata) else None

    def tracked(self, args: Any) -> list[tuple[fx.Node, _Chan]]:
        return [(n, self.state[n]) for n in _nodes(args) if self.state.get(n) is not None]

    def source(self, node: fx.Node) -> _Chan | None:
        x = node.args[0] if node.args else next(iter(node.kwargs.values()), None)
        return self.state.get(x) if isinstance(x, fx.Node) else None

    def error(self, node: fx.Node, what: str) -> TorchSlimError:
        return TorchSlimError(f"channel pruning cannot follow {what} (fx node '{node.name}') on prunable channels; "
                              "supported: conv/linear/batchnorm/layernorm, element-wise ops, pooling, cat, "
                              "flatten/view, permute")

    def module(self, node: fx.Node) -> _Chan | None:
        name = str(node.target)
        m = self.modules[name]
        kind, role = type(m), kinds.channel_role(m)     # how channels flow through it: the module-kind table
        if role == "conv":
            return self.conv(node, name, m)
        if role == "linear":
            return self.linear(node, name, m)
        if role == "batchnorm":
            return self.channelwise(node, name, "bn", 1)
        if role == "layernorm":
            return self.layer_norm(node, name, m)
        if isinstance(m, _ELEMENTWISE_MODULES) or (kind is nn.PReLU and m.num_parameters == 1):
            return self.elementwise(node)
        if isinstance(m, _SPATIAL_MODULES):
            return self.spatial(node)
        if isinstance(m, (nn.Flatten, nn.Unflatten)):
            return self.reshape(node)
        if isinstance(m, (nn.Softmax, nn.LogSoftmax)):
            return self.reduce(node, m.dim, True)
        if self.tracked((node.args, node.kwargs)):
            raise self.error(node, f"{kind.__name__} module '{name}'")
        return None

    def function(self, node: fx.Node) -> _Chan | None:
        op = _op_name(node)
        if not self.tracked((node.args, node.kwargs)):
            return None           # nothing prunable flows through (its outputs are fixed channels)
        if op in self.handlers:
            return self.handlers[op](node)
        if op in _META_FN and self.shape(node) is None:   # x.size(), x.shape: no tensor comes out
            return None
        raise self.error(node, f"'{op}'")

    def conv(self, node: fx.Node, name: str, m: nn.Conv2d) -> _Chan | None:
        src = self.source(node)
        if src is not None and src.dim != 1:
            raise self.error(node, f"Conv2d '{name}' on a tensor whose channels are not dim 1")
        if m.groups == 1:
            if src is not None:
                self.register(name, "in", src.ids)
            return _Chan(1, self.out_ids(name, m.out_channels))
        if m.groups == m.in_channels:     # depthwise: filter o reads input channel o // multiplier
            if src is None:
                return None
            ids = src.ids.repeat_interleave(m.out_channels // m.in_channels)
            self.register(name, "dw", ids)
            return _Chan(1, self.members[(name, "dw")])
        if src is not None:               # grouped conv: channels stay (a safe, unpruned boundary)
            self.freeze(src.ids)
        return None

    def linear(self, node: fx.Node, name: str, m: nn.Linear) -> _Chan:
        src, shape = self.source(node), self.shape(node.args[0])
        if src is not None and (shape is None or src.dim != len(shape) - 1):
            raise self.error(node, f"Linear '{name}' on a tensor whose channels are not its last dim")
        if src is not None:
            self.register(name, "in", src.ids)
        return _Chan(len(self.shape(node) or [0]) - 1, self.out_ids(name, m.out_features))

    def channelwise(self, node: fx.Node, name: str, kind: str, dim: int) -> _Chan | None:
        src = self.source(node)
        if src is None:
            return None
        if src.dim != dim:
            raise self.error(node, f"{type(self.modules[name]).__name__} '{name}' on channels at dim {src.dim}")
        self.register(name, kind, src.ids)
        return src

    def layer_norm(self, node: fx.Node, name: str, m: nn.LayerNorm) -> _Chan | None:
        src, shape = self.source(node), self.shape(node.args[0])
        if src is None or shape is None or src.dim < len(shape) - len(m.normalized_shape):
            return src                    # normalizes dims other than the channel dim
        if len(m.normalized_shape) != 1:
            raise self.error(node, f"LayerNorm '{name}' over the channel dim and others")
        return self.channelwise(node, name, "ln", src.dim)

    def elementwise(self, node: fx.Node) -> _Chan | None:
        """Broadcasting element-wise op: channels lined up on the same output dim are one channel."""
        out = self.shape(node)
        operands = [n for n in _nodes((node.args, node.kwargs)) if self.shape(n) is not None]
        if out is None:
            raise self.error(node, f"'{_op_name(node)}'")
        dim, ids = None, None
        for n in operands:
            st, shape = self.state.get(n), self.shape(n)
            if st is None:
                continue
            d = st.dim + len(out) - len(shape)
            if shape[st.dim] != out[d]:   # one channel broadcast over many: keep it
                self.freeze(st.ids)
            elif dim is None:
                dim, ids = d, st.ids
            elif d != dim:
                raise self.error(node, f"'{_op_name(node)}' mixing channels of different dims")
            else:
                self.union(ids, st.ids)
        if dim is None:
            return None
        for n in operands:                # an unprunable tensor of full channel size pins the channels
            shape = self.shape(n)
            d = dim - (len(out) - len(shape))
            if self.state.get(n) is None and d >= 0 and shape[d] == out[dim]:
                self.freeze(ids)
        return _Chan(dim, ids)

    def spatial(self, node: fx.Node) -> _Chan | None:
        src, shape, out = self.source(node), self.shape(node.args[0]) or [], self.shape(node) or []
        if src is not None and (src.dim != 1 or len(shape) < 3 or len(out) != len(shape) or out[1] != shape[1]):
            raise self.error(node, f"'{_op_name(node)}' changing the channel dim")
        return src

    def reshape(self, node: fx.Node) -> _Chan | None:
        src, shape, out = self.source(node), self.shape(node.args[0]), self.shape(node)
        if src is None:
            return None
        mapped = None if shape is None or out is None else reshape_channels(shape, src.dim, out)
        if mapped is None:
            raise self.error(node, f"'{_op_name(node)}' splitting or moving the channel dim")
        dim, inner, outer = mapped
        return _Chan(dim, src.ids.repeat_interleave(inner).repeat(outer))

    def permute(self, node: fx.Node) -> _Chan | None:
        src, ndim = self.source(node), len(self.shape(node.args[0]) or [])
        if src is None:
            return None
        op, rest = _op_name(node), list(node.args[1:])
        if op == "permute":
            dims = rest[0] if len(rest) == 1 and isinstance(rest[0], (tuple, list)) else rest or node.kwargs["dims"]
            return _Chan([int(d) % ndim for d in dims].index(src.dim), src.ids)
        a, b = (0, 1) if op == "t" else (int(rest[0]) % ndim, int(rest[1]) % ndim)
        return _Chan({a: b, b: a}.get(src.dim, src.dim), src.ids)

    def reduce(self, node: fx.Node, dims: Any = None, keep: bool | None = None) -> _Chan | None:
        """A reduction (or softmax: ``keep``) along ``dims``: fine unless the channel dim is among them."""
        src, ndim = self.source(node), len(self.shape(node.args[0]) or [])
        if dims is None:
            dims = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
        if keep is None:
            keep = "softmax" in _op_name(node) or (node.args[2] if len(node.args) > 2 else node.kwargs.get("keepdim"))
        if src is None:
            return None
        if not isinstance(dims, (int, tuple, list)):
            raise self.error(node, f"'{_op_name(node)}' over all dims")
        dims = {int(d) % ndim for d in (dims if isinstance(dims, (tuple, list)) else [dims])}
        if src.dim in dims:
            raise self.error(node, f"'{_op_name(node)}' over the channel dim")
        return _Chan(src.dim if keep else src.dim - sum(d < src.dim for d in dims), src.ids)

    def cat(self, node: fx.Node) -> _Chan:
        parts = list(node.args[0]) if node.args else list(node.kwargs["tensors"])
        out = self.shape(node)
        dim = int(node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)) % len(out)
        states = [self.state.get(n) if isinstance(n, fx.Node) else None for n in parts]
        dims = {st.dim for st in states if st is not None}
        if dims == {dim}:                 # along the channel dim: offsets
            ids = [st.ids if st is not None else self.new(self.shape(n)[dim], frozen=True)
                   for n, st in zip(parts, states)]
            return _Chan(dim, torch.cat(ids))
        if len(dims) != 1:
            raise self.error(node, "'cat' of tensors with channels on different dims")
        return self.elementwise(node)     # along another dim: the parts' channels are the same channels

    def getitem(self, node: fx.Node) -> _Chan | None:
        src, shape = self.source(node), self.shape(node.args[0])
        if src is None or shape is None:
            return None
        d = index_dim(node.args[1], len(shape), src.dim)
        if d is None:
            raise self.error(node, "indexing into the channel dim")
        return _Chan(d, src.ids)

    def groups(self) -> list[ChannelGroup]:
        """Unfrozen element roots, clustered by the members they touch, in producer order."""
        frozen = {self.find(e) for e in self.frozen}
        touches: dict[int, list[tuple[tuple[str, str], int]]] = {}
        for key, ids in self.members.items():
            for pos, e in enumerate(ids.tolist()):
                root = self.find(e)
                if root not in frozen:
                    touches.setdefault(root, []).append((key, pos))
        by_members: dict[tuple[tuple[str, str], ...], list[int]] = {}
        for root, hits in touches.items():
            by_members.setdefault(tuple(dict.fromkeys(k for k, _ in hits)), []).append(root)
        return [self.group(keys, roots) for keys, roots in by_members.items()]

    def group(self, keys: tuple[tuple[str, str], ...], roots: list[int]) -> ChannelGroup:
        channel = {r: i for i, r in enumerate(roots)}
        members = []
        for name, kind in keys:
            ids = self.members[(name, kind)].tolist()
            pairs = [(p, channel[self.find(e)]) for p, e in enumerate(ids) if self.find(e) in channel]
            members.append(Member(name, kind, torch.tensor([p for p, _ in pairs]), torch.tensor([c for _, c in pairs])))
        return ChannelGroup(len(roots), tuple(members))


def _nodes(args: Any) -> list[fx.Node]:
    found: list[fx.Node] = []
    fx.node.map_arg(args, lambda n: found.append(n) or n)
    return list(dict.fromkeys(found))
