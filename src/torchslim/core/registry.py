"""One registry, keyed by config type, for every technique family.

A technique registers a handler for its config class, saying which parts of the
:class:`~torchslim.core.context.ApplyContext` it reads::

    @register_handler(GPTQConfig, uses=("calibration",))
    def _gptq(model: nn.Module, config: GPTQConfig, ctx: ApplyContext) -> nn.Module: ...

The family's verb (``quantize_``, ``prune_``, ...) looks it up by ``type(config)`` (walking
the config's base classes, so one handler can serve a whole protocol such as training
transforms). :func:`apply_` times the handler, measures what it touched and appends an entry
to the model's history (:mod:`torchslim.core.state`).
"""
from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from typing import Any, Callable

from torch import nn

from torchslim.core.config import BaseConfig
from torchslim.core.context import ApplyContext
from torchslim.core.errors import ConfigError
from torchslim.core.state import Timer, count_params, move_state, snapshot, state_of, touched

log = logging.getLogger("torchslim")
Handler = Callable[[nn.Module, Any, ApplyContext], Any]
MODIFIES = ("layers", "weights", "settings")


@dataclass(frozen=True)
class HandlerEntry:
    func: Handler
    uses: frozenset[str]
    modifies: str        # "layers" (replaces/resizes modules), "weights" (trains in place), "settings"


_HANDLERS: dict[type[BaseConfig], HandlerEntry] = {}


def register_handler(config_type: type[BaseConfig], *, uses: tuple[str, ...] = (),
                     modifies: str = "layers") -> Callable[[Handler], Handler]:
    """Decorator: register ``func(model, config, ctx)`` as the handler of ``config_type``.

    ``uses`` names the context fields the handler reads (others given explicitly to a verb
    are reported as ignored); ``modifies`` says what the handler changes, so that a stage
    that changed nothing it should have is reported.
    """
    if not (isinstance(config_type, type) and issubclass(config_type, BaseConfig)):
        raise TypeError(f"register_handler expects a BaseConfig subclass, got {config_type!r}")
    unknown = set(uses) - set(ApplyContext.fields())
    if unknown or modifies not in MODIFIES:
        raise TypeError(f"register_handler: unknown context field {sorted(unknown)} or modifies={modifies!r}")

    def decorator(func: Handler) -> Handler:
        _HANDLERS[config_type] = HandlerEntry(func, frozenset(uses), modifies)
        return func

    return decorator


def get_entry(config: BaseConfig) -> HandlerEntry:
    for klass in type(config).__mro__:
        if klass in _HANDLERS:
            return _HANDLERS[klass]
    known = ", ".join(sorted(c.__name__ for c in _HANDLERS)) or "none"
    raise ConfigError(f"no technique is registered for {type(config).__name__}; registered: {known}")


def get_handler(config: BaseConfig) -> Handler:
    return get_entry(config).func


def registered() -> dict[type[BaseConfig], HandlerEntry]:
    return dict(_HANDLERS)


def apply_(model: nn.Module, config: BaseConfig, ctx: ApplyContext | None = None, *, family: str | None = None,
           record: bool = True, **kwargs: Any) -> nn.Module:
    """Apply ``config`` to ``model`` in place (and return it). ``family`` guards the verb used.

    Pass the context either as keyword arguments (``calibration=task``; unknown ones are an
    error) or as one :class:`ApplyContext`. ``record=False`` skips the history entry (used when
    an artifact re-applies a recorded setting on load).
    """
    if not isinstance(model, nn.Module):
        raise ConfigError(f"expected an nn.Module to compress, got {type(model).__name__}")
    if not isinstance(config, BaseConfig):
        raise ConfigError(f"expected a torchslim config, got {type(config).__name__}")
    if family is not None and config.family != family:
        raise ConfigError(
            f"{type(config).__name__} is a {config.family or 'generic'} config; it cannot be applied by the {family} verb"
        )
    entry = get_entry(config)
    if ctx is None:
        ctx = ApplyContext.from_kwargs(**kwargs)
        warn_unused(type(config).__name__, entry.uses, ctx.given())
    elif kwargs:
        raise ConfigError(f"pass the context as ctx= or as keyword arguments, not both (got {sorted(kwargs)[0]})")
    ctx = ctx.for_stage()
    state = state_of(model)
    before, params = snapshot(model), count_params(model)
    settings_before = dict(state.settings)
    with Timer() as timer:
        result = entry.func(model, config, ctx)
    out = model if result is None else result
    move_state(model, out)
    if record:
        _record(out, config, entry, ctx, before, params, timer.seconds, settings_before)
    return out


def warn_unused(name: str, uses: frozenset[str] | set[str], given: set[str]) -> None:
    """Warn about context fields given explicitly that no handler of the call reads."""
    unused = sorted(given - set(uses))
    if unused:
        warnings.warn(f"{name} does not use {', '.join(unused)}: ignored", stacklevel=4)


def _record(model: nn.Module, config: BaseConfig, entry: HandlerEntry, ctx: ApplyContext,
            before: dict[str, nn.Module], params: int, seconds: float, settings_before: dict[str, Any]) -> None:
    state = state_of(model)
    what, changed = touched(before, model, params)
    added = [n for n in state.added if n not in before and n not in changed]   # parameter-free added modules count too
    if added:
        changed = changed + added
        for n in added:
            t = type(model.get_submodule(n)).__name__
            what["by_type"][t] = what["by_type"].get(t, 0) + 1
        what["layers"] = len(changed)
    if state.settings != settings_before:
        what["model_settings"] = sorted(set(state.settings) ^ set(settings_before)) or [type(config).__name__]
    if entry.modifies == "layers" and not changed and "model_settings" not in what:
        log.warning("%s changed no layer of %s", type(config).__name__, type(model).__name__)
    elif entry.modifies == "layers" and any(n not in state.added for n in changed):
        _report_coverage(config, before, set(changed), what)   # modules only added (attention kernels) replace none
    h = state.add_entry(config.family or "generic", type(config).__name__, config_dict(config), touched=what,
                        seconds=seconds, metrics=dict(ctx.record.metrics), details=dict(ctx.record.details))
    for name in changed:
        state.layer_stage[name] = h.index
    log.info("%s: %d layer(s) changed in %.1f s", type(config).__name__, len(changed), seconds)


def _report_coverage(config: BaseConfig, before: dict[str, nn.Module], changed: set[str], what: dict) -> None:
    """Say how many of the model's weight layers (linear-like, convolutions, and layers an earlier stage replaced:
    pruned, quantized) the stage changed, and what it produced; loudly when it is fewer than half (a selector that
    misses most of a model is rarely what the user meant)."""
    from torch.nn.modules.conv import _ConvNd

    from torchslim.core.linear import is_linear_like

    def weight_layer(m: nn.Module) -> bool:
        return is_linear_like(m) or isinstance(m, _ConvNd) or getattr(m, "stands_for", None) is not None \
            or callable(getattr(m, "torchslim_layer_info", None))

    layers = {n: m for n, m in before.items() if n and (weight_layer(m) or n in changed)}  # + embeddings it packed
    if not layers:
        return
    kept: dict[str, int] = {}
    for n, m in layers.items():
        if n not in changed:
            kept[type(m).__name__] = kept.get(type(m).__name__, 0) + 1
    done = len(layers) - sum(kept.values())
    if kept:
        what["not_changed"] = kept
    made = what.get("by_type") or {}
    produced = f" ({', '.join(f'{c} {t}' for t, c in sorted(made.items(), key=lambda kv: -kv[1]))})" if made else ""
    rest = ", ".join(f"{c} {t}" for t, c in sorted(kept.items(), key=lambda kv: -kv[1]))
    by_design = bool(getattr(config, "partial_by_design", False))     # e.g. structured pruning of MLP neurons only
    why = "outside the config's targets" if by_design else "not selected, or not supported"
    msg = "%s changed %d of %d weight layers%s" + (f"; not changed: {rest} ({why})" if rest else "")
    few = done < len(layers) / 2 and not _named_and_done(config, changed) and not by_design
    log.log(logging.WARNING if few else logging.INFO, msg, type(config).__name__, done, len(layers), produced)


def _named_and_done(config: BaseConfig, changed: set[str]) -> bool:
    """True when the config's selector lists its layers by exact name and every one of them changed: a few
    layers of many is then what the user (or a tuned recipe) asked for, not a selector that missed."""
    sel = getattr(config, "selector", None) or getattr(getattr(config, "weight", None), "selector", None)
    include = getattr(sel, "include", None)
    if not include or not all(isinstance(r, str) and not r.startswith(("re:", "type:")) for r in include):
        return False
    return set(include) <= changed


def config_dict(config: BaseConfig) -> dict[str, Any]:
    """``config.to_dict()``, or a stand-in naming why it cannot be serialized (a callable selector rule)."""
    try:
        return config.to_dict()
    except ConfigError as e:
        return {"_type": type(config).__name__, "_version": config.VERSION, "_unserializable": str(e)}
