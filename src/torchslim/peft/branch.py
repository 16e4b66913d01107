"""The one mechanism of every parameter-efficient method: a small module added to a layer
(:func:`torchslim.core.resize.add_module`) that changes what the layer computes through hooks.

A :class:`Branch` lives as a child of the layer it adapts (``q_proj.lora_default``), so the layer's own
tensors keep their names and layout, whatever the layer is (``nn.Linear``, GPT-2's ``Conv1D``, a
convolution, a packed int4/int8 layer, a sparse layer, a structurally pruned layer). It registers its hooks
when attached (on add, on artifact load, and when its layer is replaced by a quantized or rebuilt one:
:func:`torchslim.core.surgery.replace_module` carries it over), so artifacts and model surgery need no
knowledge of adapters. A branch belongs to one named adapter; several adapters may adapt one layer and
:func:`torchslim.peft.set_adapter` switches between them without touching the base.
"""
from __future__ import annotations

import re
from typing import Any, ClassVar

import torch
from torch import nn

from torchslim.core.errors import ConfigError

ADAPTER_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,63}")


def check_adapter_name(name: Any) -> str:
    if not isinstance(name, str) or not ADAPTER_NAME.fullmatch(name):
        raise ConfigError(f"an adapter name must be a letter then letters, digits or '_' (at most 64), got {name!r}")
    return name


class Branch(nn.Module):
    """Base of added adapter modules. Subclasses set ``method`` and implement :meth:`on_output` (a forward
    hook: the layer's input and output in, the new output out) and/or :meth:`on_input` (a forward pre-hook:
    the layer's input in, the new input out). A disabled branch (another adapter active) or one whose
    update was merged into the layer leaves the layer's computation alone."""

    method: ClassVar[str] = ""

    def __init__(self, adapter: str = "default", enabled: bool = True) -> None:
        super().__init__()
        self.adapter = check_adapter_name(adapter)
        self.enabled = bool(enabled)
        self.merged = False

    @property
    def active(self) -> bool:
        return self.enabled and not self.merged

    # -- hooks ------------------------------------------------------------------------------------
    def on_output(self, layer: nn.Module, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        return out

    def on_input(self, layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
        return x

    def _output_hook(self, layer: nn.Module, args: tuple, out: Any) -> Any:
        if not self.active or not args or not isinstance(out, torch.Tensor):
            return None
        return self.on_output(layer, args[0], out)

    def _input_hook(self, layer: nn.Module, args: tuple) -> Any:
        if not self.active or not args:
            return None
        return (self.on_input(layer, args[0]), *args[1:])

    def torchslim_attach(self, layer: nn.Module) -> None:
        if type(self).on_output is not Branch.on_output:
            layer.register_forward_hook(self._output_hook)
        if type(self).on_input is not Branch.on_input:
            layer.register_forward_pre_hook(self._input_hook)

    def torchslim_detach(self, layer: nn.Module) -> None:
        for hooks in (layer._forward_hooks, layer._forward_pre_hooks):
            for key, hook in list(hooks.items()):
                if getattr(hook, "__self__", None) is self:
                    del hooks[key]

    def describe(self) -> dict[str, Any]:
        """Constructor arguments (the artifact's record of this branch)."""
        return {"adapter": self.adapter, "enabled": self.enabled}

    def extra_repr(self) -> str:
        return f"adapter={self.adapter!r}" + ("" if self.enabled else ", disabled")


def branches(model: nn.Module, adapter: str | None = None, method: str | None = None) -> list[tuple[str, Branch]]:
    """``(name, branch)`` of the model's adapter branches, optionally of one adapter and/or method."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, Branch)
            and (adapter is None or m.adapter == adapter) and (method is None or m.method == method)]


def adapters(model: nn.Module) -> list[str]:
    """Names of the adapters on ``model``, in the order their first branch appears."""
    return list(dict.fromkeys(b.adapter for _, b in branches(model)))


def layer_name(branch_name: str) -> str:
    """The adapted layer of a branch (``a.q_proj.lora_default`` -> ``a.q_proj``)."""
    return branch_name.rpartition(".")[0]
