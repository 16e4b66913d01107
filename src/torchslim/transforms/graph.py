"""Small torch.fx helpers shared by the graph transforms: trace a model, find module chains.

Transforms only *read* the traced graph: they find which module feeds which, then change the
original model in place with :func:`torchslim.core.surgery.replace_module`, so the model keeps
its class, its ``forward`` and its parameter names (and artifacts of it still load).
"""
from __future__ import annotations

from collections import Counter
from typing import Any

import torch.fx as fx
from torch import nn

from torchslim.core.errors import TorchSlimError
from torchslim.core.modules import register_module_format


class _Tracer(fx.Tracer):
    """torch.nn modules and torchslim replacement modules are leaves (never traced into);
    identities (including merged-away modules) vanish from the graph."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        if isinstance(m, nn.Identity):
            return False
        if callable(getattr(m, "torchslim_layer_info", None)):
            return True
        return super().is_leaf_module(m, qualname)


def trace(model: nn.Module, what: str = "this transform") -> fx.Graph:
    """The fx graph of ``model.forward`` (leaf modules appear as ``call_module`` nodes)."""
    try:
        return _Tracer().trace(model)
    except Exception as e:  # noqa: BLE001 - any tracing failure is reported the same way
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise TorchSlimError(
            f"{what} needs a torch.fx-traceable model, and {type(model).__name__} is not ({first[:160]})"
        ) from None


def single_consumer(graph: fx.Graph, name: str) -> str | None:
    """The module that alone consumes the output of module ``name``, else ``None``.

    Both must be called exactly once in the graph, and the consumer must take that output as its
    only input: then ``b(a(x))`` can be merged into one module without changing anything else.
    """
    calls = Counter(n.target for n in graph.nodes if n.op == "call_module")
    if calls[name] != 1:
        return None
    node = next(n for n in graph.nodes if n.op == "call_module" and n.target == name)
    users = list(node.users)
    if len(users) == 1 and users[0].op == "call_module" and calls[users[0].target] == 1 \
            and users[0].args == (node,) and not users[0].kwargs:
        return str(users[0].target)
    return None


def module_chains(model: nn.Module, graph: fx.Graph, first: type | tuple[type, ...],
                  second: type | tuple[type, ...]) -> list[tuple[str, str]]:
    """``(a, b)`` module names where ``a`` (a ``first``) feeds only ``b`` (a ``second``).

    See :func:`single_consumer` for what "feeds only" means."""
    modules = dict(model.named_modules())
    pairs = []
    for name, module in modules.items():
        if name and isinstance(module, first):
            user = single_consumer(graph, name)
            if user is not None and isinstance(modules.get(user), second):
                pairs.append((name, user))
    return pairs


@register_module_format
class FoldedAway(nn.Identity):
    """Placeholder for a module whose work was merged into another one (a BatchNorm folded into
    its conv, a ReLU fused into its int8 conv). Recorded in artifacts so they rebuild the same model."""

    def __init__(self, technique: str = "fold", into: str = "", was: str = ""):
        super().__init__()
        self.technique, self.into, self.was = technique, into, was

    def torchslim_layer_info(self) -> dict[str, Any]:
        return {"technique": self.technique, "config": None, "storage": f"none (merged into '{self.into}')",
                "into": self.into, "was": self.was}

    @classmethod
    def from_layer_info(cls, original: nn.Module, info: dict[str, Any]) -> FoldedAway:
        return cls(info.get("technique", "fold"), info.get("into", ""), info.get("was", ""))

    def extra_repr(self) -> str:
        return f"{self.was} merged into '{self.into}'"
