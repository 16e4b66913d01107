"""Record modules whose shapes a technique changed, and modules it added, so an artifact can rebuild them.

Structured pruning leaves ordinary modules (``nn.Linear``, ``nn.Conv2d``, norms...) with fewer
channels than the architecture's constructor would make. The technique calls
:func:`record_resized` for each module it rebuilt (and :func:`record_attribute` for plain
attributes that changed, such as an attention module's head count). Techniques that *add*
modules (adapters, exit heads, projections) call :func:`add_module`. An added module that changes what its
parent computes (a LoRA branch adds to its parent's output) defines ``torchslim_attach(parent)``, which
registers its hooks, and ``torchslim_detach(parent)``; both are called here, on add, on load and on removal,
so a rebuilt model computes what the saved one did. The artifact stores
:func:`resize_spec` and :func:`added_spec` in its manifest; on load :func:`apply_resize_spec`
and :func:`apply_added_spec` rebuild those modules, empty and of the recorded shapes, in the
freshly built skeleton before the weights are read. Specs come from the one table of module
kinds (:mod:`torchslim.core.kinds`): a kind it cannot rebuild is an error at record time.
"""
from __future__ import annotations

from typing import Any, Callable

import torch
from torch import nn

from torchslim.core import kinds
from torchslim.core.errors import ArtifactError, TorchSlimError
from torchslim.core.state import state_of
from torchslim.core.surgery import get_module, parent_of, replace_module


def record_resized(model: nn.Module, name: str) -> None:
    """Remember that module ``name`` of ``model`` now has non-default shapes (call after the swap)."""
    state_of(model).resized["modules"][name] = kinds.describe(get_module(model, name))


def record_attribute(model: nn.Module, name: str, attr: str, value: Any) -> None:
    """Set ``model.<name>.<attr> = value`` and remember it (JSON-serializable ``value``)."""
    setattr(get_module(model, name), attr, value)
    state_of(model).resized["attributes"].setdefault(name, {})[attr] = value


def forget_modules(model: nn.Module, prefix: str) -> None:
    """Drop records under ``prefix`` (a removed block)."""
    state_of(model).forget(prefix)


def rename_prefix(model: nn.Module, old: str, new: str) -> None:
    """Move records from ``old.*`` to ``new.*`` (a block whose index changed)."""
    state_of(model).rename(old, new)


def add_module(model: nn.Module, name: str, module: nn.Module) -> nn.Module:
    """Attach ``module`` to ``model`` as ``name`` (``"model.layers.3.exit_head"``) and record it, so an
    artifact rebuilds it on load. Its kind (and its children's) must be in the module-kind table."""
    parent, attr = parent_of(model, name)
    if hasattr(parent, attr) and getattr(parent, attr) is not None:
        raise TorchSlimError(f"cannot add '{name}': {type(parent).__name__} already has '{attr}'")
    spec = kinds.describe(module)
    parent.add_module(attr, module)
    _call(module, "torchslim_attach", parent)
    state_of(model).added[name] = spec
    return module


def _call(module: nn.Module, method: str, parent: nn.Module) -> None:
    fn = getattr(module, method, None)
    if callable(fn):
        fn(parent)


def remove_added(model: nn.Module, name: str) -> nn.Module:
    """Detach an added module (a merged adapter, say) and forget its record."""
    parent, attr = parent_of(model, name)
    module = getattr(parent, attr)
    _call(module, "torchslim_detach", parent)
    delattr(parent, attr)
    state_of(model).forget(name)
    return module


def _refreshed(model: nn.Module, records: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for name, spec in records.items():
        try:
            m = get_module(model, name)
        except TorchSlimError:
            continue
        k = kinds.kind_of(m)
        # A later technique may have replaced the module (e.g. quantized it): then its own format rebuilds it.
        out[name] = kinds.describe(m) if k is not None and k.build is not None else spec
    return out


def resize_spec(model: nn.Module) -> dict[str, Any]:
    """What :func:`apply_resize_spec` needs, refreshed from the model's current modules."""
    r = state_of(model).resized
    if not r["modules"] and not r["attributes"]:
        return {}
    return {"modules": _refreshed(model, r["modules"]), "attributes": {k: dict(v) for k, v in r["attributes"].items()}}


def added_spec(model: nn.Module) -> dict[str, Any]:
    """``{name: spec}`` of the added modules still in the model, in the order they were added."""
    return _refreshed(model, state_of(model).added)


def _built(specs: dict[str, Any], bound: Callable[[int], None] | None) -> dict[str, nn.Module]:
    """Modules from specs: built on the meta device, their total bytes passed to ``bound`` (which raises when
    they are absurd), then allocated empty on the CPU."""
    built = {}
    with torch.device("meta"):
        for name, spec in specs.items():
            try:
                built[name] = kinds.build(spec)
            except ArtifactError as e:
                raise ArtifactError(f"artifact module '{name}': {e}") from None
    if bound is not None:
        bound(sum(t.numel() * t.element_size() for m in built.values() for t in (*m.parameters(), *m.buffers())))
    return {name: m.to_empty(device="cpu") for name, m in built.items()}


def apply_resize_spec(model: nn.Module, spec: dict[str, Any], bound: Callable[[int], None] | None = None) -> None:
    """Rebuild the recorded modules (empty, recorded shapes) and set the recorded attributes."""
    if not spec:
        return
    modules, attributes = spec.get("modules", {}), spec.get("attributes", {})
    if not isinstance(modules, dict) or not isinstance(attributes, dict):
        raise ArtifactError("artifact 'resized' record must map module names to specs")
    for name, module in _built(modules, bound).items():
        try:
            replace_module(model, name, module)
        except TorchSlimError:
            raise ArtifactError(f"artifact resizes '{name}', which the rebuilt {type(model).__name__} lacks") from None
    for name, attrs in attributes.items():
        if not isinstance(attrs, dict):
            raise ArtifactError(f"artifact 'resized' attributes of '{name}' must be a mapping")
        for attr, value in attrs.items():
            try:
                setattr(get_module(model, name), attr, value)
            except TorchSlimError:
                raise ArtifactError(f"artifact sets {attr} on '{name}', which the rebuilt model lacks") from None
    state_of(model).resized = {"modules": dict(modules), "attributes": {k: dict(v) for k, v in attributes.items()}}


def apply_added_spec(model: nn.Module, spec: dict[str, Any], bound: Callable[[int], None] | None = None) -> None:
    """Re-attach the recorded added modules (empty, recorded shapes) before the weights are read."""
    if not isinstance(spec, dict):
        raise ArtifactError("artifact 'added' record must map module names to specs")
    for name, module in _built(spec, bound).items():
        try:
            parent, attr = parent_of(model, name)
        except TorchSlimError:
            raise ArtifactError(f"artifact adds '{name}', whose parent the rebuilt {type(model).__name__} lacks") from None
        parent.add_module(attr, module)
        _call(module, "torchslim_attach", parent)
    state_of(model).added = dict(spec)
