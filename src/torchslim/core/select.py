"""The one layer selector shared by every technique.

A rule is one of:
  * ``"model.layers.0.mlp.down_proj"``: exact module name;
  * ``"re:.*\\.(q|k|v)_proj"``: regular expression, matched in full against the module name;
  * ``nn.Linear`` (or ``"type:Linear"`` at the edges): module type, ``isinstance``; ``LinearLike``
    (``"type:LinearLike"``, the default) matches ``nn.Linear`` and Hugging Face's ``Conv1D``;
  * ``callable(name, module) -> bool``.

A module is selected when it matches any ``include`` rule and no ``exclude`` rule.
``overrides`` maps rules to a per-layer value (a config, or ``None`` to skip the layer);
precedence: exact name > regex > type > callable, then the order given.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Mapping, Union

from torch import nn

from torchslim.core.errors import ConfigError
from torchslim.core.linear import LinearLike

Rule = Union[str, type, Callable[[str, nn.Module], bool]]
_SKIP = object()


def _resolve_type(name: str) -> type:
    import torch.nn as tnn

    short = name.removeprefix("nn.").removeprefix("torch.nn.")
    if short == "LinearLike":
        return LinearLike
    cls = getattr(tnn, short, None)
    if cls is None and short == "Conv1D":
        from transformers.pytorch_utils import Conv1D as cls  # noqa: N813
    if not (isinstance(cls, type) and (issubclass(cls, nn.Module) or cls is LinearLike)):
        raise ConfigError(f"unknown module type '{name}' in selector rule")
    return cls


def _parse(rule: Rule) -> Rule:
    if isinstance(rule, str) and rule.startswith("type:"):
        return _resolve_type(rule[5:])
    if isinstance(rule, str) and rule.startswith("re:"):
        try:
            re.compile(rule[3:])
        except re.error as e:
            raise ConfigError(f"bad regular expression in selector rule '{rule}': {e}") from None
    if not (isinstance(rule, (str, type)) or callable(rule)):
        raise ConfigError(f"a selector rule must be a name, 're:regex', a module type or a callable, got {rule!r}")
    return rule


def _rank(rule: Rule) -> int:
    if isinstance(rule, str):
        return 1 if rule.startswith("re:") else 0
    return 2 if isinstance(rule, type) else 3


def rule_matches(rule: Rule, name: str, module: nn.Module) -> bool:
    if isinstance(rule, str):
        return re.fullmatch(rule[3:], name) is not None if rule.startswith("re:") else rule == name
    if isinstance(rule, type):
        # a replacement module that stands in for a type (a pruned SparseLinear for nn.Linear) matches it too
        stands_for = getattr(module, "stands_for", None)
        return isinstance(module, rule) or (isinstance(stands_for, type) and issubclass(stands_for, rule))
    return bool(rule(name, module))


def _rule_to_str(rule: Rule) -> str:
    if isinstance(rule, str):
        return rule
    if isinstance(rule, type):
        return f"type:{rule.__name__}"
    raise ConfigError("a selector with a callable rule cannot be serialized; use names, 're:' or types")


@dataclass(frozen=True)
class Selector:
    include: tuple[Rule, ...] = (LinearLike,)
    exclude: tuple[Rule, ...] = ()
    overrides: Mapping[Rule, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        inc = (self.include,) if isinstance(self.include, (str, type)) or callable(self.include) else self.include
        exc = (self.exclude,) if isinstance(self.exclude, (str, type)) or callable(self.exclude) else self.exclude
        object.__setattr__(self, "include", tuple(_parse(r) for r in inc))
        object.__setattr__(self, "exclude", tuple(_parse(r) for r in exc))
        object.__setattr__(self, "overrides", {_parse(k): v for k, v in dict(self.overrides).items()})

    def matches(self, name: str, module: nn.Module) -> bool:
        return any(rule_matches(r, name, module) for r in self.include) and not any(
            rule_matches(r, name, module) for r in self.exclude
        )

    def override_for(self, name: str, module: nn.Module, default: Any = None) -> Any:
        """The per-layer value of the highest-precedence matching override, else ``default``."""
        hits = [(i, r) for i, r in enumerate(self.overrides) if rule_matches(r, name, module)]
        if not hits:
            return default
        _, best = min(hits, key=lambda ir: (_rank(ir[1]), ir[0]))
        return self.overrides[best]

    def select(self, model: nn.Module) -> list[tuple[str, nn.Module]]:
        """Modules of ``model`` this selector picks, in definition order (the root is never picked)."""
        return [(n, m) for n, m in model.named_modules() if n and self.matches(n, m)]

    def resolve(self, model: nn.Module, default: Any) -> Iterator[tuple[str, nn.Module, Any]]:
        """Yield ``(name, module, value)`` for selected modules, skipping those overridden to ``None``."""
        for name, module in self.select(model):
            value = self.override_for(name, module, default)
            if value is not None:
                yield name, module, value

    # -- edges ---------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        from torchslim.core.codec import encode

        return {
            "include": [_rule_to_str(r) for r in self.include],
            "exclude": [_rule_to_str(r) for r in self.exclude],
            "overrides": {_rule_to_str(k): encode(v) for k, v in self.overrides.items()},
        }

    def to_short_dict(self) -> dict[str, Any]:
        """The form recipe files use: empty ``exclude``/``overrides`` left out, override configs short."""
        out: dict[str, Any] = {"include": [_rule_to_str(r) for r in self.include]}
        if self.exclude:
            out["exclude"] = [_rule_to_str(r) for r in self.exclude]
        if self.overrides:                      # a config, or None (the layer skipped)
            out["overrides"] = {_rule_to_str(k): None if v is None else v.to_short_dict()
                                for k, v in self.overrides.items()}
        return out

    @classmethod
    def from_dict(cls, d: Any) -> Selector:
        from torchslim.core.codec import shown
        from torchslim.core.config import BaseConfig, config_from_dict

        if not isinstance(d, Mapping):
            raise ConfigError(f"a selector must be a mapping with include/exclude/overrides, got {shown(d)}")
        unknown = set(d) - {"include", "exclude", "overrides"}
        if unknown:
            raise ConfigError(f"unknown selector key {shown(sorted(map(str, unknown))[0])}; "
                              "valid keys: include, exclude, overrides")
        overrides = d.get("overrides") or {}
        if not isinstance(overrides, Mapping):
            raise ConfigError(f"selector overrides must map rules to configs (or null), got {shown(overrides)}")

        def value(rule: Any, v: Any) -> Any:
            if v is None or isinstance(v, BaseConfig):
                return v
            if isinstance(v, dict):
                return config_from_dict(v, where=f"selector override {shown(rule)}")
            raise ConfigError(f"selector override {shown(rule)} must be a config mapping or null, got {shown(v)}")

        return cls(
            include=_rules(d.get("include", ["type:LinearLike"]), "include"),
            exclude=_rules(d.get("exclude", ()), "exclude"),
            overrides={_rule_key(k): value(k, v) for k, v in overrides.items()},
        )


def _rules(value: Any, key: str) -> tuple[str, ...]:
    """Rules of a selector field from YAML/JSON: a string or a list of strings."""
    from torchslim.core.codec import shown

    items = [value] if isinstance(value, str) else value
    if not isinstance(items, (list, tuple)) or not all(isinstance(r, str) for r in items):
        raise ConfigError(f"selector {key} must be a rule or a list of rules (strings), got {shown(value)}")
    return tuple(items)


def _rule_key(rule: Any) -> str:
    from torchslim.core.codec import shown

    if not isinstance(rule, str):
        raise ConfigError(f"a selector override rule must be a string, got {shown(rule)}")
    return rule
