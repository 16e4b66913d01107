"""Model flow: find the attention modules (architecture table), add an :class:`EfficientAttention` to each selected
one, and say what was converted. Importing this module registers the ``convert_attention_`` handler."""
from __future__ import annotations

import dataclasses
import logging

from torch import nn

from torchslim.attention.config import AttentionConfig, Method
from torchslim.attention.module import CHILD, EfficientAttention
from torchslim.core.archs import arch_of, find_blocks, resolve
from torchslim.core.context import ApplyContext
from torchslim.core.errors import ConfigError
from torchslim.core.registry import register_handler
from torchslim.core.resize import add_module, remove_added
from torchslim.core.state import state_of

log = logging.getLogger("torchslim.attention")


def attention_modules(model: nn.Module) -> dict[str, nn.Module]:
    """``{name: module}`` of every block's attention module (the one calling the attention function), by the
    architecture table's ``attention`` path."""
    spec = arch_of(model)
    blocks = find_blocks(model)                  # raises for an architecture without a table row
    out = {}
    for name, block in blocks:
        path = resolve(block, spec.attention)
        if path is not None:
            out[f"{name}.{path}"] = block.get_submodule(path)
    if not out:
        raise ConfigError(f"AttentionConfig: the {spec.name} table row names no attention module")
    return out


def head_dim(model: nn.Module) -> int:
    """Head width from the model config through the table row (an explicit head-dim field, else width / heads)."""
    spec, cfg = arch_of(model), getattr(model, "config", None)
    explicit = getattr(cfg, spec.config_head_dim, None) if spec.config_head_dim else None
    if isinstance(explicit, int) and explicit > 0:
        return explicit
    heads, width = getattr(cfg, spec.num_heads_attr, None), getattr(cfg, "hidden_size", None)
    if not (isinstance(heads, int) and isinstance(width, int) and heads > 0):
        raise ConfigError(f"AttentionConfig: cannot read the head width of {type(model).__name__} "
                          f"({spec.num_heads_attr}={heads}, hidden_size={width})")
    return width // heads


def selected_attention(model: nn.Module, config: AttentionConfig) -> dict[str, tuple[nn.Module, AttentionConfig]]:
    """The attention modules ``config.selector`` picks among those of the table (overrides: a config, or None to
    keep one exact); selecting none is an error."""
    found = attention_modules(model)
    out = {}
    for name, module, cfg in config.selector.resolve(model, config):
        if name not in found:
            continue
        if not isinstance(cfg, AttentionConfig):
            raise ConfigError(f"an AttentionConfig selector override must be an AttentionConfig or null; '{name}' "
                              f"got a {type(cfg).__name__}")
        out[name] = (module, cfg)
    if not out:
        raise ConfigError(f"AttentionConfig: the selector matched none of the {len(found)} attention modules "
                          f"(e.g. {next(iter(found))})")
    return out


def make_module(cfg: AttentionConfig, dim: int) -> EfficientAttention:
    return EfficientAttention(cfg.method.value, head_dim=dim, window=cfg.window, n_global=cfg.n_global,
                              block=cfg.block, proj_len=cfg.proj_len, max_length=cfg.max_length,
                              features=cfg.features, seed=cfg.seed)


@register_handler(AttentionConfig, uses=())
def _convert(model: nn.Module, config: AttentionConfig, ctx: ApplyContext) -> nn.Module:
    layers = selected_attention(model, config)
    dim = head_dim(model)
    replaced = 0
    for i, (name, (module, cfg)) in enumerate(layers.items()):
        if cfg.method is Method.LINFORMER and getattr(module, "is_causal", False):
            raise ConfigError(f"AttentionConfig: Linformer cannot be causal ('{name}' is a decoder's attention); "
                              "use sliding_window, block_sparse or performer")
        if isinstance(module._modules.get(CHILD), EfficientAttention):
            remove_added(model, f"{name}.{CHILD}")
            replaced += 1
        eff = make_module(_seeded(cfg, i), dim)
        p = next(module.parameters(), None)
        if p is not None:
            eff.to(device=p.device, dtype=p.dtype if eff.method == "linformer" else None)
        add_module(model, f"{name}.{CHILD}", eff)
    methods = sorted({c.method.value for _, c in layers.values()})
    ctx.record.metrics.update({"attention_converted": len(layers)})
    ctx.record.details.update({"methods": methods, "rule": config.rule(), "modules": sorted(layers)})
    log.info("AttentionConfig (%s): %d attention module(s) converted%s", config.rule(), len(layers),
             f" ({replaced} replacing an earlier conversion)" if replaced else "")
    if len(layers) < len(attention_modules(model)):
        log.warning("AttentionConfig: %d of %d attention modules keep full attention (not selected)",
                    len(attention_modules(model)) - len(layers), len(attention_modules(model)))
    return model


def _seeded(cfg: AttentionConfig, index: int) -> AttentionConfig:
    """Each layer draws its own Performer features (seed + layer index): independent estimators across layers."""
    return dataclasses.replace(cfg, seed=cfg.seed + index) if cfg.method is Method.PERFORMER else cfg


def converted(model: nn.Module) -> dict[str, EfficientAttention]:
    """``{attention module name: its EfficientAttention}`` of a converted model."""
    return {n[: -len(CHILD) - 1]: m for n, m in model.named_modules() if isinstance(m, EfficientAttention)
            and n in state_of(model).added}
