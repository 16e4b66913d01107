"""Linear-like layers: ``nn.Linear``, its subclasses with the same math (Falcon's ``FalconLinear``) and
Hugging Face's ``Conv1D`` (GPT-2 and friends: the same affine map with the weight stored transposed).

Techniques work on plain ``nn.Linear`` layers. :func:`canonical_linear_` swaps a selected linear-like
layer for the plain ``nn.Linear`` computing exactly the same function (recording the swap when the
weight layout changes, so artifacts rebuild it), after which every quantizer and pruner applies.
:data:`LinearLike` is the selector type that matches all of them (the default of ``Selector``).
"""
from __future__ import annotations

import torch
from torch import nn

_CONV1D = "Conv1D"


def is_conv1d(m: nn.Module) -> bool:
    """A transformers ``Conv1D`` (weight ``[in, out]``, ``y = x @ W + b``), recognised without importing it."""
    return type(m).__name__ == _CONV1D and hasattr(m, "nf") and hasattr(m, "nx") and isinstance(
        getattr(m, "weight", None), torch.Tensor)


def swapped_from_conv1d(m: nn.Module) -> bool:
    """The plain ``nn.Linear`` :func:`canonical_linear_` put in place of a ``Conv1D`` (its weight is ``[out, in]``
    where the model's own files store ``[in, out]``)."""
    return type(m) is nn.Linear and getattr(getattr(m, "stands_for", None), "__name__", "") == _CONV1D


def is_linear_like(m: nn.Module) -> bool:
    return isinstance(m, nn.Linear) or is_conv1d(m)


class _LinearLikeMeta(type):
    def __instancecheck__(cls, obj: object) -> bool:
        return isinstance(obj, nn.Module) and is_linear_like(obj)

    def __subclasscheck__(cls, sub: type) -> bool:
        return isinstance(sub, type) and (issubclass(sub, nn.Linear) or sub.__name__ == _CONV1D)


class LinearLike(metaclass=_LinearLikeMeta):
    """Selector type matching ``nn.Linear`` (and subclasses) and ``Conv1D``: ``Selector(include=(LinearLike,))``
    or ``"type:LinearLike"`` in files. Replacement modules standing for ``nn.Linear`` match it too."""


def weight_matrix(m: nn.Module) -> torch.Tensor:
    """The weight of linear-like ``m`` as ``[out, in]`` (a transposed view for Conv1D)."""
    return m.weight.t() if is_conv1d(m) else m.weight


def out_in(m: nn.Module) -> tuple[int, int]:
    """``(out_features, in_features)`` of a linear-like module."""
    return (m.nf, m.nx) if is_conv1d(m) else (m.out_features, m.in_features)


def plain_linear(m: nn.Module) -> nn.Linear:
    """An ``nn.Linear`` with the same function as linear-like ``m`` (``m`` itself when it already is one)."""
    if type(m) is nn.Linear:
        return m
    if isinstance(m, nn.Linear):
        w, b = m.weight, m.bias
    elif is_conv1d(m):
        w, b = m.weight.t(), m.bias
    else:
        raise TypeError(f"{type(m).__name__} is not linear-like")
    new = nn.Linear(w.shape[1], w.shape[0], bias=b is not None, device=w.device, dtype=w.dtype)
    with torch.no_grad():
        new.weight.copy_(w)
        if b is not None:
            new.bias.copy_(b)
    new.weight.requires_grad_(m.weight.requires_grad)
    return new.train(m.training)


def canonical_linear_(model: nn.Module, name: str) -> nn.Module:
    """Replace linear-like module ``name`` by its plain ``nn.Linear`` equivalent and return that (other
    modules are returned unchanged). A swap that changes the weight layout (Conv1D) is recorded so an
    artifact rebuilds an ``nn.Linear`` there."""
    from torchslim.core.resize import record_resized
    from torchslim.core.surgery import get_module, replace_module

    m = get_module(model, name)
    if not is_linear_like(m) or type(m) is nn.Linear:
        return m
    new = plain_linear(m)
    new.stands_for = type(m)          # selector type rules naming the original type still match it
    replace_module(model, name, new)
    if is_conv1d(m):
        record_resized(model, name)
    return new
