"""Record modules whose shapes a technique changed, so an artifact can rebuild them.

Structured pruning leaves ordinary modules (``nn.Linear``, ``nn.Conv2d``, norms...) with fewer
channels than the architecture's constructor would make. The technique calls
:func:`record_resized` for each module it rebuilt (and :func:`record_attribute` for plain
attributes that changed, such as an attention module's head count); the artifact stores
:func:`resize_spec` in its manifest, and on load :func:`apply_resize_spec` rebuilds those
modules, empty and of the recorded shapes, in the freshly built skeleton before the weights
are read. Only the module kinds in ``_KINDS`` can be recorded; anything else is an error at
record time, not at load time.
"""
from __future__ import annotations

from typing import Any, Callable

import torch
from torch import nn

from torchslim.core.errors import ArtifactError, TorchSlimError
from torchslim.core.surgery import get_module, replace_module


def _norm_shape(m: nn.Module) -> list[int]:
    return list(m.normalized_shape)


_KINDS: dict[str, tuple[type[nn.Module], Callable[[nn.Module], dict[str, Any]], Callable[..., nn.Module]]] = {
    "Linear": (nn.Linear, lambda m: {"in_features": m.in_features, "out_features": m.out_features,
                                     "bias": m.bias is not None},
               lambda d: nn.Linear(d["in_features"], d["out_features"], bias=d["bias"])),
    "Conv2d": (nn.Conv2d, lambda m: {"in_channels": m.in_channels, "out_channels": m.out_channels,
                                     "kernel_size": list(m.kernel_size), "stride": list(m.stride),
                                     "padding": list(m.padding) if not isinstance(m.padding, str) else m.padding,
                                     "dilation": list(m.dilation), "groups": m.groups, "bias": m.bias is not None,
                                     "padding_mode": m.padding_mode},
               lambda d: nn.Conv2d(d["in_channels"], d["out_channels"], tuple(d["kernel_size"]), tuple(d["stride"]),
                                   d["padding"] if isinstance(d["padding"], str) else tuple(d["padding"]),
                                   tuple(d["dilation"]), d["groups"], d["bias"], d["padding_mode"])),
    "BatchNorm2d": (nn.BatchNorm2d, lambda m: {"num_features": m.num_features, "eps": m.eps, "momentum": m.momentum,
                                               "affine": m.affine, "track_running_stats": m.track_running_stats},
                    lambda d: nn.BatchNorm2d(d["num_features"], d["eps"], d["momentum"], d["affine"],
                                             d["track_running_stats"])),
    "BatchNorm1d": (nn.BatchNorm1d, lambda m: {"num_features": m.num_features, "eps": m.eps, "momentum": m.momentum,
                                               "affine": m.affine, "track_running_stats": m.track_running_stats},
                    lambda d: nn.BatchNorm1d(d["num_features"], d["eps"], d["momentum"], d["affine"],
                                             d["track_running_stats"])),
    "LayerNorm": (nn.LayerNorm, lambda m: {"normalized_shape": _norm_shape(m), "eps": m.eps,
                                           "elementwise_affine": m.elementwise_affine, "bias": m.bias is not None},
                  lambda d: nn.LayerNorm(tuple(d["normalized_shape"]), d["eps"], d["elementwise_affine"],
                                         bias=d["bias"])),
    "Embedding": (nn.Embedding, lambda m: {"num_embeddings": m.num_embeddings, "embedding_dim": m.embedding_dim,
                                           "padding_idx": m.padding_idx},
                  lambda d: nn.Embedding(d["num_embeddings"], d["embedding_dim"], d["padding_idx"])),
}


def module_spec(m: nn.Module) -> dict[str, Any]:
    """``{"kind": ..., **constructor arguments}`` of a recordable module."""
    for kind, (cls, describe, _) in _KINDS.items():
        if type(m) is cls:
            return {"kind": kind, **describe(m)}
    raise TorchSlimError(f"cannot record a resized {type(m).__name__}: only {', '.join(_KINDS)} can be rebuilt")


def build_module(spec: dict[str, Any]) -> nn.Module:
    kind = spec.get("kind")
    if kind not in _KINDS:
        raise ArtifactError(f"artifact records a resized module of unknown kind {kind!r}")
    return _KINDS[kind][2](spec)


def _state(model: nn.Module) -> dict[str, Any]:
    state = getattr(model, "_torchslim_resized", None)
    if state is None:
        state = {"modules": {}, "attributes": {}}
        model._torchslim_resized = state
    return state


def record_resized(model: nn.Module, name: str) -> None:
    """Remember that module ``name`` of ``model`` now has non-default shapes (call after the swap)."""
    _state(model)["modules"][name] = module_spec(get_module(model, name))


def record_attribute(model: nn.Module, name: str, attr: str, value: Any) -> None:
    """Set ``model.<name>.<attr> = value`` and remember it (JSON-serializable ``value``)."""
    setattr(get_module(model, name), attr, value)
    _state(model)["attributes"].setdefault(name, {})[attr] = value


def forget_modules(model: nn.Module, prefix: str) -> None:
    """Drop records under ``prefix`` (a removed block)."""
    state = _state(model)
    for key in ("modules", "attributes"):
        state[key] = {n: v for n, v in state[key].items() if not (n == prefix or n.startswith(prefix + "."))}


def rename_prefix(model: nn.Module, old: str, new: str) -> None:
    """Move records from ``old.*`` to ``new.*`` (a block whose index changed)."""
    state = _state(model)
    for key in ("modules", "attributes"):
        state[key] = {(new + n[len(old):] if n == old or n.startswith(old + ".") else n): v
                      for n, v in state[key].items()}


def resize_spec(model: nn.Module) -> dict[str, Any]:
    """What :func:`apply_resize_spec` needs, refreshed from the model's current modules."""
    state = getattr(model, "_torchslim_resized", None)
    if not state:
        return {}
    modules = {}
    for name in state["modules"]:
        try:
            m = get_module(model, name)
        except TorchSlimError:
            continue
        # A later technique may have replaced the module (e.g. quantized it): then its own format rebuilds it.
        if any(type(m) is cls for cls, _, _ in _KINDS.values()):
            modules[name] = module_spec(m)
        else:
            modules[name] = state["modules"][name]
    return {"modules": modules, "attributes": dict(state["attributes"])}


def apply_resize_spec(model: nn.Module, spec: dict[str, Any]) -> None:
    """Rebuild the recorded modules (empty, recorded shapes) and set the recorded attributes."""
    if not spec:
        return
    with torch.device("meta"):
        built = {name: build_module(s) for name, s in spec.get("modules", {}).items()}
    for name, module in built.items():
        try:
            replace_module(model, name, module.to_empty(device="cpu"))
        except TorchSlimError:
            raise ArtifactError(f"artifact resizes '{name}', which the rebuilt {type(model).__name__} lacks") from None
    for name, attrs in spec.get("attributes", {}).items():
        for attr, value in attrs.items():
            try:
                setattr(get_module(model, name), attr, value)
            except TorchSlimError:
                raise ArtifactError(f"artifact sets {attr} on '{name}', which the rebuilt model lacks") from None
    model._torchslim_resized = {"modules": dict(spec.get("modules", {})),
                                "attributes": {k: dict(v) for k, v in spec.get("attributes", {}).items()}}
