"""Trainable forms of packed layers, registered by the technique that owns the layer type, so a technique that
trains layers it did not make (block-wise reconstruction) swaps them without importing their family.

``to_train(layer)`` returns a module computing what ``layer`` computes with trainable parameters (a packed int4
layer becomes a fake-quantized layer with latent weights and learned step sizes); ``back(trained, config)``
returns the packed layer the trained one becomes. A layer type nobody registered trains as it is (plain float
layers) or, without float parameters, stays frozen."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from torch import nn


@dataclass(frozen=True)
class TrainableForm:
    to_train: Callable[[nn.Module], nn.Module]
    back: Callable[[nn.Module, Any], nn.Module]
    quantizer_params: str = ""      # regex of the trained form's parameter names that are quantizer state
    # the packed layer of the same format and kernel holding a new float weight ([out, in], or a conv's shape)
    # with freshly fitted scales (an adapter merged into a quantized base); None: not supported
    requantize: Callable[[nn.Module, Any], nn.Module] | None = None


_FORMS: dict[type, TrainableForm] = {}
_TRAINED: dict[type, TrainableForm] = {}


def register_trainable(packed: type, trained: type, form: TrainableForm) -> None:
    """``packed`` layers train as ``form.to_train`` makes them (instances of ``trained``) and pack back by
    ``form.back``."""
    _FORMS[packed] = form
    _TRAINED[trained] = form


def form_of(layer: nn.Module) -> TrainableForm | None:
    """The registered form of a packed layer (exact type or a subclass), or None."""
    for cls in type(layer).__mro__:
        if cls in _FORMS:
            return _FORMS[cls]
    return None


def trained_form_of(layer: nn.Module) -> TrainableForm | None:
    """The form a trained layer came from (so it can pack back), or None for an ordinary layer."""
    for cls in type(layer).__mro__:
        if cls in _TRAINED:
            return _TRAINED[cls]
    return None
