"""One dataclass <-> JSON codec, used by configs, reports, recipes and artifact records.

:func:`encode` turns typed values into JSON values (enums by value, dtypes by name, configs
and other objects with ``to_dict`` through it, dataclasses field by field). :func:`decode`
does the reverse against a type hint, naming the field path of any bad value
(``GPTQConfig.weight.granularity.size: expected int, got 'x'``).
"""
from __future__ import annotations

import dataclasses
import enum
import math
import types
import typing
from typing import Any

import torch

from torchslim.core.errors import ConfigError

MAX_SHOWN = 80   # characters of a bad value quoted in an error


def shown(v: Any) -> str:
    """``repr(v)``, cut to :data:`MAX_SHOWN` characters (errors never print a huge value)."""
    text = repr(v)
    return text if len(text) <= MAX_SHOWN else text[:MAX_SHOWN - 3] + "..."


def encode(v: Any) -> Any:
    """A JSON value for ``v``."""
    if hasattr(v, "to_dict") and callable(v.to_dict) and not isinstance(v, type):
        return v.to_dict()
    if isinstance(v, enum.Enum):
        return v.value
    if isinstance(v, torch.dtype):
        return str(v).removeprefix("torch.")
    if dataclasses.is_dataclass(v) and not isinstance(v, type):
        return {f.name: encode(getattr(v, f.name)) for f in dataclasses.fields(v)}
    if isinstance(v, (list, tuple)):
        return [encode(x) for x in v]
    if isinstance(v, dict):
        return {str(k): encode(x) for k, x in v.items()}
    if v is None or isinstance(v, (bool, int, float, str)):
        return v
    raise ConfigError(f"cannot serialize a value of type {type(v).__name__}: {shown(v)}")


def jsonable(value: Any) -> Any:
    """``value`` with tuples as lists, non-finite floats as ``None`` and anything else not JSON-native as ``str``."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


def decode(v: Any, hint: Any, where: str, lenient: bool = False) -> Any:
    """``v`` (from JSON/YAML) as a value of type ``hint``; ``where`` names the field in errors.

    ``lenient``: plain dataclasses (not configs) ignore keys they do not know (records written by a
    newer minor version, such as evaluation reports)."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return _decode_union(v, typing.get_args(hint), where, lenient)
    if hint is Any or (v is None and hint is type(None)):
        return v
    if v is None:
        raise ConfigError(f"{where}: expected {_name(hint)}, got null")
    if origin in (list, tuple):
        args = [a for a in typing.get_args(hint) if a is not Ellipsis]
        if not isinstance(v, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {shown(v)}")
        if origin is tuple and len(args) > 1 and len(args) == len(typing.get_args(hint)):
            if len(v) != len(args):
                raise ConfigError(f"{where}: expected {len(args)} values, got {len(v)}")
            return tuple(decode(x, a, f"{where}[{i}]", lenient) for i, (x, a) in enumerate(zip(v, args)))
        inner = args[0] if args else Any
        out = [decode(x, inner, f"{where}[{i}]", lenient) for i, x in enumerate(v)]
        return tuple(out) if origin is tuple else out
    if origin is dict:
        args = typing.get_args(hint)
        inner = args[1] if len(args) == 2 else Any
        if not isinstance(v, dict):
            raise ConfigError(f"{where}: expected a mapping, got {shown(v)}")
        return {k: decode(x, inner, f"{where}.{k}", lenient) for k, x in v.items()}
    if isinstance(hint, type):
        return decode_scalar(v, hint, where, lenient)
    return v


def _decode_union(v: Any, args: tuple, where: str, lenient: bool) -> Any:
    if v is None and type(None) in args:
        return None
    options = [a for a in args if a is not type(None)]
    errors = []
    for a in options:
        try:
            return decode(v, a, where, lenient)
        except ConfigError as e:
            errors.append(str(e))
    if len(options) == 1:
        raise ConfigError(errors[0])
    # a config union (Format = IntFormat | NF4 | ...): the member named by _type explains best
    typed = isinstance(v, dict) and isinstance(v.get("_type"), str)
    named = [e for a, e in zip(options, errors) if typed and getattr(a, "__name__", None) == v["_type"]]
    if named:
        raise ConfigError(named[0])
    raise ConfigError(f"{where}: {shown(v)} is not one of {', '.join(_name(a) for a in options)}")


def _name(hint: Any) -> str:
    return getattr(hint, "__name__", str(hint))


def decode_scalar(v: Any, hint: type, where: str, lenient: bool = False) -> Any:
    if issubclass(hint, enum.Enum):
        if isinstance(v, hint):
            return v
        try:
            return hint(v)
        except (ValueError, TypeError):
            raise ConfigError(f"{where}: {shown(v)} is not one of {', '.join(str(m.value) for m in hint)}") from None
    from_config = getattr(hint, "from_config_dict", None)     # a BaseConfig (core.config): a typed, versioned config
    if from_config is not None:
        return v if isinstance(v, hint) else from_config(v, where=where)
    if hint is torch.dtype:
        if isinstance(v, torch.dtype):
            return v
        dt = getattr(torch, str(v).removeprefix("torch."), None) if isinstance(v, str) else None
        if not isinstance(dt, torch.dtype):
            raise ConfigError(f"{where}: {shown(v)} is not a torch dtype")
        return dt
    if isinstance(v, hint):
        if hint is int and isinstance(v, bool):
            raise ConfigError(f"{where}: expected int, got {shown(v)}")
        return v
    if hasattr(hint, "from_dict"):
        if not isinstance(v, dict):
            raise ConfigError(f"{where}: expected a mapping for {hint.__name__}, got {shown(v)}")
        try:
            return hint.from_dict(v)
        except ConfigError as e:
            raise ConfigError(f"{where}: {e}") from None
    if dataclasses.is_dataclass(hint):
        return decode_dataclass(hint, v, where, lenient=lenient)
    if hint is float and isinstance(v, (int, float)) and not isinstance(v, bool):
        return float(v)
    if hint in (int, float, str, bool):
        raise ConfigError(f"{where}: expected {hint.__name__}, got {shown(v)}")
    return v


def decode_dataclass(cls: type, data: Any, where: str, *, lenient: bool = False) -> Any:
    """An instance of dataclass ``cls`` from a mapping, decoding every field by its type hint
    (``lenient``: unknown keys are ignored, here and in nested plain dataclasses)."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping, got {shown(data)}")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields), key=str)
    if unknown and not lenient:
        raise ConfigError(f"{where}: unknown key {shown(unknown[0])}; valid keys: {', '.join(fields)}")
    missing = [n for n, f in fields.items() if n not in data
               and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    if missing:
        raise ConfigError(f"{where}.{missing[0]} is missing")
    hints = typing.get_type_hints(cls)
    kwargs = {k: decode(v, hints.get(k, Any), f"{where}.{k}", lenient) for k, v in data.items() if k in fields}
    try:
        return cls(**kwargs)
    except TypeError as e:
        raise ConfigError(f"{where}: {e}") from None
