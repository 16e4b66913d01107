"""Registry of replacement modules that an artifact can rebuild.

A technique's replacement module (a quantized linear, a sparse linear, ...) registers itself
with :func:`register_module_format` and implements two methods:

* ``torchslim_layer_info(self) -> dict`` with at least ``technique``, ``config`` (a config
  dict) and ``storage`` (how its tensors are stored); the artifact manifest records it per
  layer, and evaluation reports show it (plus ``kernel`` where one is chosen);
* ``from_layer_info(cls, original: nn.Module, info: dict) -> nn.Module`` (classmethod):
  an empty module with the right tensor shapes and dtypes, built in place of ``original``
  when an artifact is loaded; its ``state_dict`` is then filled from the artifact.

Registering also adds the class to the table of module kinds (:mod:`torchslim.core.kinds`)
as a kind that structured pruning cannot slice (prune before quantizing).
"""
from __future__ import annotations

from typing import Any

from torch import nn

from torchslim.core.errors import ArtifactError
from torchslim.core.kinds import ModuleKind, register_kind
from torchslim.core.state import state_of

_MODULE_FORMATS: dict[str, type[nn.Module]] = {}


def register_module_format(cls: type[nn.Module]) -> type[nn.Module]:
    for method in ("torchslim_layer_info", "from_layer_info"):
        if not callable(getattr(cls, method, None)):
            raise TypeError(f"{cls.__name__} must define {method}() to be a module format")
    _MODULE_FORMATS[cls.__name__] = cls
    register_kind(ModuleKind(cls.__name__, cls, lambda m: dict(m.torchslim_layer_info()), None,
                             why_not="a compressed replacement module (prune before quantizing; it is rebuilt "
                                     "from its layer info, not from a spec)"))
    return cls


def module_format(name: Any) -> type[nn.Module]:
    if not isinstance(name, str) or name not in _MODULE_FORMATS:
        raise ArtifactError(
            f"artifact uses module format {str(name)[:80]!r}, which this torchslim does not know "
            f"(known: {', '.join(sorted(_MODULE_FORMATS)) or 'none'})"
        )
    return _MODULE_FORMATS[name]


def record_setting(model: nn.Module, config: Any) -> None:
    """Record a model-level setting (a config applied to the whole model rather than by swapping
    layers, e.g. a KV-cache scheme) so artifacts save it and re-apply it on load. One per config type."""
    state_of(model).settings[type(config).__name__] = config


def drop_setting(model: nn.Module, config_type: type) -> None:
    """Forget the recorded model-level setting of ``config_type`` (when a technique is removed)."""
    state_of(model).settings.pop(config_type.__name__, None)


def model_settings(model: nn.Module) -> list[Any]:
    """The model-level settings recorded on ``model``, in the order they were first applied."""
    return list(state_of(model).settings.values())


def layer_infos(model: nn.Module) -> dict[str, dict[str, Any]]:
    """``{module name: layer info}`` for every replacement module in ``model`` (with the history
    entry that produced it, as ``stage``, when known)."""
    stages = state_of(model).layer_stage
    out = {}
    for name, m in model.named_modules():
        info = getattr(m, "torchslim_layer_info", None)
        if callable(info):
            out[name] = {"module": type(m).__name__, **info()}
            if name in stages:
                out[name]["stage"] = stages[name]
    return out
