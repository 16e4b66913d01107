"""Typed, versioned configs.

Every technique's config is a dataclass that subclasses :class:`BaseConfig`. It validates
itself at construction (``validate``), serializes to ``{"_type", "_version", "_data"}`` and
back, and to JSON or YAML. Strings exist only at the edges: ``from_dict`` turns them into the
field's declared type (enums, ``torch.dtype``, nested configs, ``Selector``) once.
"""
from __future__ import annotations

import dataclasses
import enum
import json
import types
import typing
from pathlib import Path
from typing import Any, ClassVar

import torch

from torchslim.core.errors import ConfigError
from torchslim.core.io import atomic_file

_CONFIG_TYPES: dict[str, type[BaseConfig]] = {}


class BaseConfig:
    """Base class of every config. Subclasses are ``@dataclass``es.

    Class attributes:
        VERSION: bumped when a field changes meaning; ``migrate`` upgrades older dicts.
        family: the technique family whose verb accepts this config (``"quantization"``...).
    """

    VERSION: ClassVar[int] = 1
    family: ClassVar[str] = ""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        _CONFIG_TYPES[cls.__name__] = cls

    def __post_init__(self) -> None:
        self._coerce_enums()
        self.validate()

    def _coerce_enums(self) -> None:
        """Accept an enum field's value as its string (``importance="wanda"``), as the edges do."""
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            hint, value = hints.get(f.name), getattr(self, f.name)
            if isinstance(value, str) and isinstance(hint, type) and issubclass(hint, enum.Enum):
                setattr(self, f.name, _decode_scalar(value, hint, f"{type(self).__name__}.{f.name}"))

    def validate(self) -> None:
        """Raise :class:`ConfigError` on an invalid value. Override in subclasses."""

    @classmethod
    def migrate(cls, data: dict[str, Any], version: int) -> dict[str, Any]:
        """Upgrade ``data`` written by an older ``version`` of this config. Override when bumping VERSION."""
        return data

    # -- serialization -------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        data = {f.name: _encode(getattr(self, f.name)) for f in dataclasses.fields(self)}  # type: ignore[arg-type]
        return {"_type": type(self).__name__, "_version": self.VERSION, "_data": data}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> BaseConfig:
        return config_from_dict(d, expected=cls)

    def to_json(self, **kwargs: Any) -> str:
        return json.dumps(self.to_dict(), **kwargs)

    def to_yaml(self) -> str:
        import yaml

        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def save(self, path: str | Path) -> None:
        path = Path(path)
        text = self.to_yaml() if path.suffix in (".yaml", ".yml") else self.to_json(indent=2)
        with atomic_file(path) as f:
            f.write(text)

    @staticmethod
    def load(path: str | Path) -> BaseConfig:
        """Read a config from a JSON or YAML file."""
        return config_from_dict(read_mapping(path))


def read_mapping(path: str | Path) -> dict[str, Any]:
    """Parse a JSON or YAML file into a dict, with one-line errors."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    text = path.read_text()
    try:
        if path.suffix in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text)
        else:
            data = json.loads(text)
    except Exception as e:  # noqa: BLE001 - parser errors become one line
        raise ConfigError(f"{path}: not valid {path.suffix.lstrip('.') or 'JSON'}: {str(e).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    return data


def config_types() -> dict[str, type[BaseConfig]]:
    """All config classes known so far, by name."""
    return dict(_CONFIG_TYPES)


def config_from_dict(d: dict[str, Any], expected: type[BaseConfig] | None = None) -> BaseConfig:
    """Build a config from ``{"_type": ..., "_version": ..., "_data": {...}}``.

    A plain mapping without ``_type`` is accepted when ``expected`` names the class.
    """
    if not isinstance(d, dict):
        raise ConfigError(f"a config must be a mapping, got {type(d).__name__}")
    name = d.get("_type", expected.__name__ if expected else None)
    if name is None:
        raise ConfigError("config has no '_type' key; known types: " + ", ".join(sorted(_CONFIG_TYPES)))
    cls = _CONFIG_TYPES.get(name)
    if cls is None:
        raise ConfigError(f"unknown config type '{name}'; known types: " + ", ".join(sorted(_CONFIG_TYPES)))
    if expected is not None and not issubclass(cls, expected):
        raise ConfigError(f"expected a {expected.__name__}, got {name}")
    version = int(d.get("_version", cls.VERSION))
    if version > cls.VERSION:
        raise ConfigError(f"{name} version {version} is newer than this torchslim understands ({cls.VERSION})")
    data = d["_data"] if "_data" in d else {k: v for k, v in d.items() if not k.startswith("_")}
    data = cls.migrate(dict(data), version) if version < cls.VERSION else dict(data)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}  # type: ignore[arg-type]
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(f"unknown key '{unknown[0]}' for {name}; valid keys: {', '.join(fields)}")
    hints = typing.get_type_hints(cls)
    kwargs = {k: _decode(v, hints.get(k, Any), f"{name}.{k}") for k, v in data.items()}
    try:
        return cls(**kwargs)
    except TypeError as e:
        raise ConfigError(f"{name}: {e}") from None


# -- value encoding --------------------------------------------------------------------
def _encode(v: Any) -> Any:
    if isinstance(v, BaseConfig):
        return v.to_dict()
    if hasattr(v, "to_dict") and callable(v.to_dict):
        return v.to_dict()
    if isinstance(v, enum.Enum):
        return v.value
    if isinstance(v, torch.dtype):
        return str(v).removeprefix("torch.")
    if isinstance(v, (list, tuple)):
        return [_encode(x) for x in v]
    if isinstance(v, dict):
        return {str(k): _encode(x) for k, x in v.items()}
    if v is None or isinstance(v, (bool, int, float, str)):
        return v
    raise ConfigError(f"cannot serialize a value of type {type(v).__name__}: {v!r}")


def _decode(v: Any, hint: Any, where: str) -> Any:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(hint)
        if v is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _decode(v, a, where)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if errors else f"{where}: bad value {v!r}")
    if hint is Any or v is None:
        return v
    if origin in (list, tuple):
        args = typing.get_args(hint)
        inner = args[0] if args else Any
        if not isinstance(v, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {v!r}")
        out = [_decode(x, inner, where) for x in v]
        return tuple(out) if origin is tuple else out
    if origin is dict:
        args = typing.get_args(hint)
        inner = args[1] if len(args) == 2 else Any
        if not isinstance(v, dict):
            raise ConfigError(f"{where}: expected a mapping, got {v!r}")
        return {k: _decode(x, inner, where) for k, x in v.items()}
    if isinstance(hint, type):
        return _decode_scalar(v, hint, where)
    return v


def _decode_scalar(v: Any, hint: type, where: str) -> Any:
    if issubclass(hint, enum.Enum):
        if isinstance(v, hint):
            return v
        try:
            return hint(v)
        except ValueError:
            raise ConfigError(f"{where}: '{v}' is not one of {', '.join(str(m.value) for m in hint)}") from None
    if issubclass(hint, BaseConfig):
        return v if isinstance(v, BaseConfig) else config_from_dict(v, expected=hint)
    if hint is torch.dtype:
        if isinstance(v, torch.dtype):
            return v
        dt = getattr(torch, str(v).removeprefix("torch."), None)
        if not isinstance(dt, torch.dtype):
            raise ConfigError(f"{where}: '{v}' is not a torch dtype")
        return dt
    if hasattr(hint, "from_dict") and isinstance(v, dict):
        return hint.from_dict(v)
    if hint is float and isinstance(v, (int, float)) and not isinstance(v, bool):
        return float(v)
    if hint in (int, float, str, bool) and not isinstance(v, hint):
        raise ConfigError(f"{where}: expected {hint.__name__}, got {v!r}")
    return v
