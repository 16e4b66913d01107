"""One registry, keyed by config type, for every technique family.

A technique registers a handler for its config class::

    @register_handler(CastConfig)
    def _cast(model: nn.Module, config: CastConfig, **kwargs) -> nn.Module: ...

and the family's verb (``quantize_``, ``prune_``, ...) looks it up by ``type(config)``.
"""
from __future__ import annotations

from typing import Any, Callable

from torch import nn

from torchslim.core.config import BaseConfig
from torchslim.core.errors import ConfigError

Handler = Callable[..., nn.Module]
_HANDLERS: dict[type[BaseConfig], Handler] = {}


def register_handler(config_type: type[BaseConfig]) -> Callable[[Handler], Handler]:
    """Decorator: register ``func(model, config, **kwargs)`` as the handler of ``config_type``."""
    if not (isinstance(config_type, type) and issubclass(config_type, BaseConfig)):
        raise TypeError(f"register_handler expects a BaseConfig subclass, got {config_type!r}")

    def decorator(func: Handler) -> Handler:
        _HANDLERS[config_type] = func
        return func

    return decorator


def get_handler(config: BaseConfig) -> Handler:
    for klass in type(config).__mro__:
        if klass in _HANDLERS:
            return _HANDLERS[klass]
    known = ", ".join(sorted(c.__name__ for c in _HANDLERS)) or "none"
    raise ConfigError(f"no technique is registered for {type(config).__name__}; registered: {known}")


def registered() -> dict[type[BaseConfig], Handler]:
    return dict(_HANDLERS)


def apply_(model: nn.Module, config: BaseConfig, *, family: str | None = None, **kwargs: Any) -> nn.Module:
    """Apply ``config`` to ``model`` in place (and return it). ``family`` guards the verb used."""
    if not isinstance(config, BaseConfig):
        raise ConfigError(f"expected a torchslim config, got {type(config).__name__}")
    if family is not None and config.family != family:
        raise ConfigError(
            f"{type(config).__name__} is a {config.family or 'generic'} config; it cannot be applied by the {family} verb"
        )
    result = get_handler(config)(model, config, **kwargs)
    return model if result is None else result
