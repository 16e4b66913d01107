"""Which layers a low-rank config factorizes, and the dense weight each one applies."""
from __future__ import annotations

import logging

import torch
from torch import nn

from torchslim.core.errors import ConfigError
from torchslim.core.linear import canonical_linear_
from torchslim.lowrank.config import LowRankConfig
from torchslim.lowrank.module import LowRankLinear

log = logging.getLogger("torchslim.lowrank")


def effective_weight(module: nn.Module) -> torch.Tensor | None:
    """The ``[out, in]`` float weight ``module`` applies to its raw input: a plain ``nn.Linear``'s, or that of a
    float replacement standing for one (a pruned layer's masked weight, an equivalence-scaled layer's weight times
    its input scale); ``None`` for anything else (packed quantized layers: factorize before quantizing)."""
    if type(module) is nn.Linear:
        return module.weight.detach()
    stands_for = getattr(module, "stands_for", None)
    w = getattr(module, "weight", None)
    if not (isinstance(stands_for, type) and issubclass(stands_for, nn.Linear) and isinstance(w, nn.Parameter)
            and w.dim() == 2 and w.is_floating_point()):
        return None
    w = w.detach()
    mask = getattr(module, "mask", None)
    if isinstance(mask, torch.Tensor) and mask.shape == w.shape:
        w = w * mask
    scale = getattr(module, "input_scale", None)
    if isinstance(scale, torch.Tensor) and scale.shape == (w.shape[1],):
        w = w * scale.to(w.dtype)
    return w


def bias_of(module: nn.Module) -> torch.Tensor | None:
    b = getattr(module, "bias", None)
    return b.detach() if isinstance(b, torch.Tensor) else None


def _factor_names(model: nn.Module) -> set[str]:
    out = set()
    for name, m in model.named_modules():
        if isinstance(m, LowRankLinear):
            out |= {f"{name}.{child}" for child, _ in m.named_children()}
    return out


def selected_layers(model: nn.Module, config: LowRankConfig) -> dict[str, tuple[nn.Module, LowRankConfig]]:
    """``{name: (layer, per-layer config)}`` for the linear layers ``config.selector`` picks (overrides of ``None``
    skip a layer). The factors of an earlier factorization are skipped, with a warning; a selected layer that is not
    linear is an error, and so is selecting nothing."""
    factors = _factor_names(model)
    out, inside = {}, 0
    for name, module, cfg in config.selector.resolve(model, config):
        if not isinstance(cfg, LowRankConfig):
            raise ConfigError(f"a LowRankConfig selector override must be a LowRankConfig or null; "
                              f"'{name}' got a {type(cfg).__name__}")
        if name in factors:
            inside += 1
            continue
        if isinstance(module, LowRankLinear):
            raise ConfigError(f"'{name}' is already factorized (rank {module.rank})")
        module = canonical_linear_(model, name)          # Conv1D, nn.Linear subclasses -> plain nn.Linear
        if effective_weight(module) is None:
            if not any(True for _ in module.parameters(recurse=False)) and any(True for _ in module.children()):
                continue                                 # a container a broad rule matched
            raise ConfigError(f"LowRankConfig applies to linear layers (factorize before quantizing); "
                              f"'{name}' is a {type(module).__name__}")
        out[name] = (module, cfg)
    if inside:
        log.warning("LowRankConfig: %d factor layer(s) of earlier factorizations left as they are", inside)
    if not out:
        raise ConfigError("LowRankConfig: the selector matched no linear layer")
    return out
