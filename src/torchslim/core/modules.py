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


class StandIn:
    """Mixin of packed replacement modules: model code that reads the replaced module's ``weight`` (T5 reads
    ``wo.weight.dtype`` on every forward) gets a read-only float view from :meth:`dense_weight`, cached until
    the module's tensors change. ``in_features``/``out_features`` (or conv geometry) stay attributes.
    (Selectors' type rules do not match packed modules: a second quantization must not re-select them;
    float replacements a later stage may compress, such as ``SparseLinear``, declare ``stands_for``.)"""

    def dense_weight(self) -> Any:
        raise NotImplementedError

    @property
    def weight(self) -> Any:
        import torch

        key = tuple((t.data_ptr(), t._version) for t in self.buffers(recurse=False))
        cached = self.__dict__.get("_weight_view")
        if cached is None or cached[0] != key:
            with torch.no_grad():
                cached = (key, self.dense_weight().detach())
            self.__dict__["_weight_view"] = cached
        return cached[1]


def is_tied_input_embedding(model: nn.Module, module: nn.Module) -> bool:
    """Whether ``module`` is ``model``'s input embedding and the model ties it to an output head (one table)."""
    config = getattr(model, "config", None)
    if not (getattr(config, "tie_word_embeddings", False) and hasattr(model, "get_output_embeddings")):
        return False
    return model.get_output_embeddings() is not None and model.get_input_embeddings() is module


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
