"""Model surgery: find, walk and replace submodules by their dotted names."""
from __future__ import annotations

import contextlib
from typing import Iterator

import torch
from torch import nn

from torchslim.core.errors import TorchSlimError


def get_module(model: nn.Module, name: str) -> nn.Module:
    """The submodule called ``name`` (``""`` is the model itself)."""
    try:
        return model.get_submodule(name) if name else model
    except AttributeError:
        raise TorchSlimError(f"{type(model).__name__} has no submodule '{name}'") from None


def parent_of(model: nn.Module, name: str) -> tuple[nn.Module, str]:
    """``(parent module, attribute name)`` of the submodule ``name``."""
    if not name:
        raise TorchSlimError("the root module has no parent")
    parent_name, _, attr = name.rpartition(".")
    return get_module(model, parent_name), attr


def replace_module(model: nn.Module, name: str, new: nn.Module) -> nn.Module:
    """Put ``new`` where ``name`` is and return the module that was there. Modules attached to the old one
    through hooks (an adapter's branch on a layer) move to ``new``, so a layer quantized, sparsified or
    rebuilt from an artifact keeps its adapters."""
    parent, attr = parent_of(model, name)
    old = getattr(parent, attr, None)
    if old is None:
        raise TorchSlimError(f"{type(model).__name__} has no submodule '{name}'")
    if new is not old:
        _carry_attached(old, new)
    setattr(parent, attr, new)
    return old


def _carry_attached(old: nn.Module, new: nn.Module) -> None:
    for attr, child in list(old.named_children()):
        if not callable(getattr(child, "torchslim_attach", None)) or child is new:
            continue
        if attr in new._modules or hasattr(new, attr):
            raise TorchSlimError(f"cannot move '{attr}' onto the {type(new).__name__} replacing a "
                                 f"{type(old).__name__}: it already has one")
        child.torchslim_detach(old)
        delattr(old, attr)
        new.add_module(attr, child)
        child.torchslim_attach(new)


def stacked_bias(layers: list[nn.Module]) -> torch.Tensor | None:
    """The bias of layers concatenated along their outputs: each layer's bias (float32), zeros where a layer has
    none; ``None`` when none of them has one."""
    if all(getattr(l, "bias", None) is None for l in layers):
        return None
    return torch.cat([l.bias.detach().float() if l.bias is not None else torch.zeros(l.out_features)
                      for l in layers])


def walk(model: nn.Module, types: tuple[type, ...] | type | None = None) -> Iterator[tuple[str, nn.Module]]:
    """Named submodules (root excluded), optionally only those of ``types``."""
    for n, m in model.named_modules():
        if n and (types is None or isinstance(m, types)):
            yield n, m


def module_names(model: nn.Module, types: tuple[type, ...] | type | None = None) -> list[str]:
    return [n for n, _ in walk(model, types)]


def model_device(model: nn.Module) -> torch.device:
    """Device of the model's first parameter (or buffer); CPU for a model without tensors."""
    for t in model.parameters():
        return t.device
    for t in model.buffers():
        return t.device
    return torch.device("cpu")


@contextlib.contextmanager
def meta_parameters() -> Iterator[None]:
    """Build modules with their parameters on the meta device (no memory) and their buffers real."""
    original = nn.Module.register_parameter

    def register(module: nn.Module, name: str, param: nn.Parameter | None) -> None:
        if param is not None and param.device.type != "meta":
            param = nn.Parameter(param.to("meta"), requires_grad=param.requires_grad)
        original(module, name, param)

    nn.Module.register_parameter = register
    try:
        yield
    finally:
        nn.Module.register_parameter = original
